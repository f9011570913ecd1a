"""The benchmark's report: ``bench.json`` (everything), ``bench.md`` (tables), ``bench.png`` (plots)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

SHORT_NAMES = {
    "gaussian_noise": "gauss",
    "shot_noise": "shot",
    "impulse_noise": "impul",
    "defocus_blur": "defoc",
    "glass_blur": "glass",
    "motion_blur": "motn",
    "zoom_blur": "zoom",
    "snow": "snow",
    "frost": "frost",
    "fog": "fog",
    "brightness": "brit",
    "contrast": "contr",
    "elastic_transform": "elast",
    "pixelate": "pixel",
    "jpeg_compression": "jpeg",
}


def write_report(result: dict[str, Any], out: Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "bench.json", json.dumps(result, indent=2) + "\n")
    _write(out / "bench.md", markdown(result))
    plot(result, out / "bench.png")


def _write(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def error_table(result: dict[str, Any], protocol: str) -> list[list[str]]:
    """Header row, then per method: error % per corruption and the mean."""
    corruptions = result["config"]["corruptions"]
    header = ["method", *[SHORT_NAMES.get(name, name) for name in corruptions], "mean"]
    rows = [header]
    for method in result["config"]["methods"]:
        errors = {
            cell["corruption"]: cell["error_percent"]
            for cell in result["results"]
            if cell["method"] == method and cell["protocol"] == protocol
        }
        label = method
        if method == "eata" and result["fisher"].startswith("not measured"):
            label = "eata (as ETA)"
        mean = result["mean_error_percent"][protocol][method]
        rows.append([label, *[f"{errors[name]:.1f}" for name in corruptions], f"**{mean:.1f}**"])
    return rows


def speed_table(result: dict[str, Any]) -> list[list[str]]:
    """Per method, over all its cells: images/s, step time and peak GPU memory."""
    rows = [["method", "protocol", "images/s", "step ms", "peak GPU MiB"]]
    for method in result["config"]["methods"]:
        for protocol in result["config"]["protocols"]:
            cells = [c for c in result["results"] if c["method"] == method and c["protocol"] == protocol]
            images = sum(c["images"] for c in cells)
            seconds = sum(c["images"] / c["images_per_second"] for c in cells if c["images_per_second"] > 0)
            steps_ms = [c["step_ms"] for c in cells]
            memory = [c["peak_gpu_memory_mb"] for c in cells if c["peak_gpu_memory_mb"] is not None]
            rows.append(
                [
                    method,
                    protocol,
                    f"{images / seconds:.0f}" if seconds else "-",
                    f"{sum(steps_ms) / len(steps_ms):.0f}" if steps_ms else "-",
                    f"{max(memory):.0f}" if memory else "n/a (CPU)",
                ]
            )
    return rows


def _markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    config = result["config"]
    parts = [
        "# Benchmark",
        "",
        f"Model `{result['model']['path']}` ({result['model']['architecture']}), data `{config['data']}`, "
        f"severity {config['severity']}, {result['images_per_corruption']} images per corruption, "
        f"batch {config['batch_size']}, seed {config['seed']}, on {result['machine']['device']} "
        f"(torch {result['machine']['torch']}); {result['seconds']:.0f} s in all.",
        "",
        f"EATA's Fisher information: {result['fisher']}.",
        "",
    ]
    for protocol in config["protocols"]:
        parts += [f"## Online error (%), protocol `{protocol}`", "", _markdown_table(error_table(result, protocol)), ""]
    parts += ["## Speed during the benchmark", "", _markdown_table(speed_table(result)), ""]
    parts += _speed_markdown(result["speed"])
    counts: dict[str, int] = {}
    for cell in result["results"]:
        for note, count in cell["notes"].items():
            if not note.startswith("same run"):
                key = f"{cell['method']} · {cell['protocol']}: {note}"
                counts[key] = counts.get(key, 0) + count
    if counts:
        parts += ["## Events", "", *[f"- {key} ({count} batches)" for key, count in sorted(counts.items())], ""]
    return "\n".join(parts)


def _speed_markdown(speed: dict[str, Any]) -> list[str]:
    lines = ["## Step time against the floor", ""]
    if isinstance(speed.get("gpu"), str):
        lines += [f"GPU: {speed['gpu']}.", ""]
    for section in ("gpu", "cpu"):
        measured = speed.get(section)
        if not isinstance(measured, dict):
            continue
        lines += [f"{section.upper()} ({measured['device']}), median of {measured['repeats']} steps:", ""]
        rows = [["method", "batch", "step ms", "forward ms", "forward+backward ms", "step / (fwd+bwd)"]]
        for row in measured["step_against_floor"]:
            rows.append(
                [
                    row["method"],
                    str(row["batch_size"]),
                    f"{row['step_ms']:.1f}",
                    f"{row['forward_ms']:.1f}",
                    f"{row['forward_backward_ms']:.1f}",
                    f"{row['step_over_forward_backward']:.2f}",
                ]
            )
        lines += [_markdown_table(rows), ""]
        rows = [["method", "batch", "images", "adapt images/s", "step-only images/s", "ratio"]]
        for row in measured["end_to_end"]:
            rows.append(
                [
                    row["method"],
                    str(row["batch_size"]),
                    str(row["images"]),
                    f"{row['end_to_end_images_per_second']:.0f}",
                    f"{row.get('step_only_images_per_second', math.nan):.0f}",
                    f"{row.get('end_to_end_over_step_only', math.nan):.2f}",
                ]
            )
        lines += ["End to end (`adapt` over the PNG folder, with history) against the step alone:", ""]
        lines += [_markdown_table(rows), ""]
    return lines


def plot(result: dict[str, Any], path: Path) -> None:
    """Error per corruption per method (one panel per protocol) and images/s per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = result["config"]
    protocols, methods, corruptions = config["protocols"], config["methods"], config["corruptions"]
    widths = [3] * len(protocols) + [1]
    figure, axes = plt.subplots(
        1, len(widths), figsize=(6 * len(protocols) + 4, 4.5), gridspec_kw={"width_ratios": widths}
    )
    positions = range(len(corruptions))
    for axis, protocol in zip(axes, protocols, strict=False):
        for method in methods:
            errors = {
                c["corruption"]: c["error_percent"]
                for c in result["results"]
                if c["method"] == method and c["protocol"] == protocol
            }
            axis.plot(positions, [errors[name] for name in corruptions], marker="o", label=method)
        axis.set_xticks(list(positions), [SHORT_NAMES.get(name, name) for name in corruptions], rotation=60)
        axis.set_ylabel("online error (%)")
        axis.set_title(f"protocol: {protocol}")
        axis.grid(alpha=0.3)
    axes[0].legend()
    speed_axis = axes[-1]
    rates = []
    for method in methods:
        cells = [c for c in result["results"] if c["method"] == method and c["protocol"] == protocols[0]]
        seconds = sum(c["images"] / c["images_per_second"] for c in cells if c["images_per_second"] > 0)
        rates.append(sum(c["images"] for c in cells) / seconds if seconds else 0.0)
    speed_axis.bar(methods, rates, color="tab:gray")
    speed_axis.set_ylabel("images/s")
    speed_axis.set_title(result["machine"]["device"].split(",")[0])
    speed_axis.tick_params(axis="x", rotation=45)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
