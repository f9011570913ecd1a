"""``tta-cli history --plot``: how the model moved over a run, and why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on devices and CI
import matplotlib.pyplot as plt

from tta_cli.errors import UsageError


def plot_history(history: dict[str, Any], out: Path) -> Path:
    """Entropy, online accuracy (when labeled), update norm, majority-class fraction, the harm
    guard's plausibility and, for two objectives, the cosine between their gradients per step,
    with guard events and rollbacks drawn as vertical lines on every panel."""
    steps = history["steps"]
    x = [step["step"] for step in steps]
    panels: list[tuple[str, list[float | None]]] = [
        ("mean entropy", [step["entropy"] for step in steps]),
        ("batch accuracy", [step["accuracy"] for step in steps]),
        ("update norm", [step["update_norm"] for step in steps]),
        ("majority-class fraction", [step["majority_fraction"] for step in steps]),
        ("cos(g1, g2)", [step["diagnostics"].get("cosine") for step in steps]),
        ("plausibility (harm guard)", [step["diagnostics"].get("plausibility") for step in steps]),
    ]
    panels = [(name, values) for name, values in panels if any(value is not None for value in values)]
    if not panels:
        raise UsageError("The run has no steps to plot yet.")
    figure, axes = plt.subplots(len(panels), 1, figsize=(9, 2.2 * len(panels)), sharex=True, squeeze=False)
    markers = {"rollback": ("tab:red", "rollback"), "skip": ("tab:orange", "skipped update")}
    for axis, (name, values) in zip(axes[:, 0], panels, strict=True):
        axis.plot(x, [float("nan") if value is None else value for value in values], lw=1.2)
        axis.set_ylabel(name, fontsize=8)
        axis.grid(alpha=0.3)
        labeled: set[str] = set()
        for event in history["events"]:
            if event["kind"] in markers:
                colour, label = markers[event["kind"]]
                axis.axvline(event["step"], color=colour, ls="--", lw=1, label=None if label in labeled else label)
                labeled.add(label)
        if labeled:
            axis.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("step")
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out
