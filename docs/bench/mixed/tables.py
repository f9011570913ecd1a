"""The tables of docs/benchmarks.md ("Mixed shifts: transfer and interference") from what
docs/bench/mixed/run.sh writes.

    python docs/bench/mixed/tables.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SHORT = {"gaussian_noise": "gauss", "shot_noise": "shot", "impulse_noise": "impul", "defocus_blur": "defoc",
         "glass_blur": "glass", "motion_blur": "motn", "zoom_blur": "zoom", "snow": "snow", "frost": "frost",
         "fog": "fog", "brightness": "brit", "contrast": "contr", "elastic_transform": "elast",
         "pixelate": "pixel", "jpeg_compression": "jpeg"}  # fmt: skip


def table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows[1:]])


def analysis(path: Path) -> None:
    result = json.loads(path.read_text())
    domains = list(result["domains"])
    print(f"### `analyze`: {', '.join(domains)}\n")
    sizes = {d["adapt_images"] + d["probe_images"] for d in result["domains"].values()}
    print(f"Images per domain: {', '.join(map(str, sorted(sizes)))}; batch {result['config']['batch_size']}.\n")
    rows = [["method", "domain", "before", "alone", "joint", "transfer", "interference", "loss lower / higher"]]
    for method, parts in result["methods"].items():
        accuracy = parts["accuracy"]
        for domain in domains:
            split = parts["split"][domain]
            rows.append([
                method, domain, f"{100 * accuracy['before'][domain]:.1f}",
                f"{100 * accuracy['alone'][domain][domain]:.1f}", f"{100 * accuracy['joint'][domain]:.1f}",
                f"{split['transfer_percent']:.1f}", f"{split['interference_percent']:.1f}",
                f"{split['loss_lower_jointly']} / {split['loss_higher_jointly']}",
            ])  # fmt: skip
    print(table(rows) + "\n")
    for method, parts in result["methods"].items():
        alone = parts["accuracy"]["alone"]
        rows = [["adapted on \\ probes of", *[SHORT.get(d, d) for d in domains]]]
        rows += [[a, *[f"{100 * alone[a][b]:.1f}" for b in domains]] for a in domains]
        rows.append(["joint", *[f"{100 * parts['accuracy']['joint'][b]:.1f}" for b in domains]])
        print(f"A→B probe accuracy (%), `{method}`:\n\n" + table(rows) + "\n")


def per_domain(runs: list[Path], batch: str) -> str:
    """Mixed-stream error / interference (%) per corruption, one column per method and weighting."""
    columns: dict[str, dict[str, str]] = {}
    for run in [run for run in runs if run.name.startswith(f"{batch}-")]:
        result = json.loads((run / "bench.json").read_text())
        weighted = result["config"]["domain_weighting"]
        for cell in result["results"]:
            if cell["protocol"] != "mixed" or (weighted and cell["method"] in ("source", "norm")):
                continue
            name = f"{cell['method']} {'on' if weighted else 'off'}"
            interference = cell["against_alone"]["interference_percent"]
            columns.setdefault(name, {})[cell["corruption"]] = f"{cell['error_percent']:.1f} / {interference:.1f}"
    corruptions = list(next(iter(columns.values())))
    rows = [["corruption", *columns]]
    rows += [[SHORT.get(c, c), *[column[c] for column in columns.values()]] for c in corruptions]
    return f"Mixed error / interference (%) per corruption, batch {batch[1:]}:\n\n" + table(rows)


def mixed(folder: Path) -> None:
    # Without the weighting first.
    runs = sorted((path.parent for path in folder.glob("b*-*/bench.json")), key=lambda run: "-no-" not in run.name)
    for batch in sorted({run.name.split("-")[0] for run in runs}, reverse=True):
        print(f"### Mixed stream, batch {batch[1:]}\n")
        rows = [["method", "weighting", "mixed error", "alone (reset) error", "interference", "transfer"]]
        for run in [run for run in runs if run.name.startswith(f"{batch}-")]:
            result = json.loads((run / "bench.json").read_text())
            weighting = "on" if result["config"]["domain_weighting"] else "off"
            for method in result["config"]["methods"]:
                cells = [c for c in result["results"] if c["method"] == method and c["protocol"] == "mixed"]
                if weighting == "on" and method in ("source", "norm"):
                    continue  # nothing of theirs is weighed: the same runs as without it
                means = [
                    sum(c["against_alone"][key] for c in cells) / len(cells)
                    for key in ("interference_percent", "transfer_percent")
                ]
                rows.append([
                    method, weighting, f"{result['mean_error_percent']['mixed'][method]:.2f}",
                    f"{result['mean_error_percent']['reset'][method]:.2f}", f"{means[0]:.2f}", f"{means[1]:.2f}",
                ])  # fmt: skip
        print(table(rows) + "\n")
        print(per_domain(runs, batch) + "\n")
        print(f"Per corruption (interference / transfer %), batch {batch[1:]}:\n")
        for run in [run for run in runs if run.name.startswith(f"{batch}-")]:
            section = (run / "bench.md").read_text().split("## Mixed against alone")[1].split("\n## ")[0]
            rows_md = [line for line in section.splitlines() if line.startswith("|")]
            print(f"`{run.name}`:\n\n" + "\n".join(rows_md) + "\n")


if __name__ == "__main__":
    out = Path(sys.argv[1])
    if (out / "analyze" / "analysis.json").is_file():
        analysis(out / "analyze" / "analysis.json")
    mixed(out)
