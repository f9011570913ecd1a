"""Plot the harm guard's signal against the true error of a run left to collapse, next to the
same run with the guard acting.

    python docs/bench/harm/plot.py WATCHED_RUN GUARDED_RUN docs/bench/harm/harm.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from tta_cli.history import read_history


def series(run: Path) -> tuple[list[int], list[float], list[float | None], list[int]]:
    history = read_history(run)
    steps = history["steps"]
    x = [step["step"] for step in steps]
    error = [100 * (1 - step["accuracy"]) for step in steps]
    plausibility = [step["diagnostics"].get("plausibility") for step in steps]
    rollbacks = [event["step"] for event in history["events"] if event["kind"] == "rollback"]
    return x, error, plausibility, rollbacks


def main() -> None:
    watched, guarded, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    x, error, plausibility, _ = series(watched)
    top.plot(x, error, color="tab:red", label="batch error, guard off (%)")
    gx, gerror, _, rollbacks = series(guarded)
    top.plot(gx, gerror, color="tab:green", label="batch error, guard on (%)")
    for step in rollbacks:
        top.axvline(step, color="tab:green", ls="--", lw=1)
    top.set_ylabel("error (%)")
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    bottom.plot(x, [float("nan") if p is None else p for p in plausibility], color="tab:blue", label="plausibility")
    bottom.axhline(0.7, color="grey", ls=":", label="harm_min (default 0.7)")
    bottom.set_ylabel("plausibility")
    bottom.set_xlabel("step")
    bottom.legend(fontsize=8)
    bottom.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    summary = {"watched": dict(zip(("step", "error", "plausibility"), (x, error, plausibility), strict=True))}
    summary["guarded"] = {"step": gx, "error": gerror, "rollbacks": rollbacks}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
