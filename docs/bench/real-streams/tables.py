"""Tables and the rounds plot of docs/benchmarks.md ("Real streams") from the bench.json files
that run.sh, run-mild.sh and run-rounds.sh write (with and without OUT=.../defaults and
OUT=.../weighted).

    python docs/bench/real-streams/tables.py
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).parent
PROTOCOLS = ("shuffled-b200", "sorted-b64", "dirichlet0.1-b64", "shuffled-b16")
SHORT = {"gaussian_noise": "gauss", "shot_noise": "shot", "impulse_noise": "impul", "defocus_blur": "defoc",
         "glass_blur": "glass", "motion_blur": "motn", "zoom_blur": "zoom", "snow": "snow", "frost": "frost",
         "fog": "fog", "brightness": "brit", "contrast": "contr", "elastic_transform": "elast",
         "pixelate": "pixel", "jpeg_compression": "jpeg"}  # fmt: skip


def cells(name: str) -> dict[str, dict[tuple[str, int], float]]:
    """method → (corruption, round) → error %, merged over the full run and the defaults' run."""
    merged: dict[str, dict[tuple[str, int], float]] = {}
    for folder in (HERE / name, HERE / "defaults" / name, HERE / "weighted" / name):
        path = folder / "bench.json"
        if path.is_file():
            for row in json.loads(path.read_text())["results"]:
                merged.setdefault(row["method"], {})[(row["corruption"], row["round"])] = row["error_percent"]
    return merged


def mean(values: dict[tuple[str, int], float]) -> float:
    return sum(values.values()) / len(values)


def worse_than_source(method: dict, source: dict) -> int:
    return sum(method[key] > source[key] for key in method)


def protocol_table() -> str:
    runs = {name: cells(name) for name in PROTOCOLS}
    methods = list(dict.fromkeys(method for run in runs.values() for method in run))
    lines = ["| method | " + " | ".join(PROTOCOLS) + " | cells worse than source |", "|---" * 6 + "|"]
    for method in methods:
        row, total = [], 0
        for name in PROTOCOLS:
            run = runs[name]
            if method not in run:
                row.append("not run")
                continue
            count = worse_than_source(run[method], run["source"])
            total += count
            row.append(f"{mean(run[method]):.1f} ({count})")
        lines.append(f"| {method} | " + " | ".join(row) + f" | {total} |")
    return "\n".join(lines)


def severity_table(severity: int) -> str:
    run = cells(f"severity{severity}")
    corruptions = list(dict.fromkeys(corruption for corruption, _ in run["source"]))
    lines = ["| method | " + " | ".join(SHORT[c] for c in corruptions) + " | mean | worse than source |"]
    lines.append("|---" * (len(corruptions) + 3) + "|")
    for method, values in run.items():
        errors = " | ".join(f"{values[(c, 1)]:.1f}" for c in corruptions)
        count = worse_than_source(values, run["source"])
        lines.append(f"| {method} | {errors} | {mean(values):.1f} | {count} |")
    return "\n".join(lines)


def rounds() -> str:
    run = cells("rounds")
    count = max(number for values in run.values() for _, number in values)
    lines = ["| method | " + " | ".join(str(n) for n in range(1, count + 1)) + " |", "|---" * (count + 1) + "|"]
    figure, axis = plt.subplots(figsize=(7, 4))
    for method, values in run.items():
        per_round = [
            sum(v for (_, n), v in values.items() if n == number) / sum(1 for _, n in values if n == number)
            for number in range(1, count + 1)
        ]
        lines.append(f"| {method} | " + " | ".join(f"{e:.1f}" for e in per_round) + " |")
        axis.plot(range(1, count + 1), per_round, marker="o", label=method)
    axis.set_xlabel("round of the 15-corruption sequence")
    axis.set_ylabel("mean online error (%)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(HERE / "rounds.png", dpi=110)
    return "\n".join(lines)


if __name__ == "__main__":
    print(protocol_table(), end="\n\n")
    for severity in (1, 3):
        print(severity_table(severity), end="\n\n")
    print(rounds())
