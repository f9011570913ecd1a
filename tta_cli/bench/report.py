"""The benchmark's report: ``bench.json`` (everything), ``bench.md`` (tables), ``bench.png`` (plots)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tta_cli.bench.orders import parse_order
from tta_cli.files import write_atomic

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
    write_atomic(out / "bench.json", json.dumps(result, indent=2) + "\n")
    write_atomic(out / "bench.md", markdown(result))
    plot(result, out / "bench.png")


def error_table(result: dict[str, Any], protocol: str) -> list[list[str]]:
    """Header row, then per method: error % per corruption (its mean over the rounds), the mean,
    and, where ``source`` ran, the cells in which the method made more errors than ``source``."""
    corruptions = result["config"]["corruptions"]
    worse = result["worse_than_source"]
    header = ["method", *[SHORT_NAMES.get(name, name) for name in corruptions], "mean"]
    rows = [header + (["worse than source"] if worse else [])]
    for method in result["config"]["methods"]:
        errors: dict[str, list[float]] = {}
        for cell in result["results"]:
            if cell["method"] == method and cell["protocol"] == protocol:
                errors.setdefault(cell["corruption"], []).append(cell["error_percent"])
        label = method
        if method == "eata" and not result["fisher_measured"]:
            label = "eata (as ETA)"
        mean = result["mean_error_percent"][protocol][method]
        row = [label, *[f"{sum(errors[name]) / len(errors[name]):.1f}" for name in corruptions], f"**{mean:.1f}**"]
        rows.append(row + ([str(worse[protocol][method])] if worse else []))
    return rows


def mixed_table(result: dict[str, Any]) -> list[list[str]]:
    """Header row, then per method that ran both ``reset`` and ``mixed``: interference / transfer %
    per corruption (round 1) and their means."""
    corruptions = result["config"]["corruptions"]
    rows = [["method", *[SHORT_NAMES.get(name, name) for name in corruptions], "mean"]]
    for method in result["config"]["methods"]:
        splits = {
            cell["corruption"]: cell["against_alone"]
            for cell in result["results"]
            if cell["method"] == method and "against_alone" in cell and cell["round"] == 1
        }
        if len(splits) < len(corruptions):
            continue
        pairs = [(splits[name]["interference_percent"], splits[name]["transfer_percent"]) for name in corruptions]
        means = [sum(values) / len(values) for values in zip(*pairs, strict=True)]
        rows.append([method, *[f"{i:.1f} / {t:.1f}" for i, t in pairs], f"**{means[0]:.1f} / {means[1]:.1f}**"])
    return rows


def round_table(result: dict[str, Any]) -> list[list[str]]:
    """Per method and protocol: the mean error % of each round."""
    rounds = result["config"]["rounds"]
    rows = [["method", "protocol", *[f"round {number}" for number in range(1, rounds + 1)]]]
    for method in result["config"]["methods"]:
        for protocol in result["config"]["protocols"]:
            errors = result["error_per_round"][protocol][method]
            rows.append([method, protocol, *[f"{error:.1f}" for error in errors]])
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
    rounds = config["rounds"]
    parts = [
        "# Benchmark",
        "",
        f"Model `{result['model']['path']}` ({result['model']['architecture']}), data `{config['data']}`, "
        f"severity {config['severity']}, {_stream_words(result)}, "
        f"batch {config['batch_size']}, {rounds} round{'s' if rounds > 1 else ''}, seed {config['seed']}, "
        f"on {result['machine']['device']} (torch {result['machine']['torch']}); {result['seconds']:.0f} s in all.",
        "",
        f"EATA's Fisher information: {result['fisher']}.",
        "",
    ]
    if rounds > 1:
        parts += [f"A corruption's error is its mean over the {rounds} rounds.", ""]
    if result["worse_than_source"]:
        parts += ["*worse than source*: the cells (corruption and round) with more errors than `source`.", ""]
    for protocol in config["protocols"]:
        parts += [f"## Online error (%), protocol `{protocol}`", "", _markdown_table(error_table(result, protocol)), ""]
    mixed = mixed_table(result)
    if len(mixed) > 1:
        parts += [
            "## Mixed against alone: interference / transfer (%)",
            "",
            "Per corruption, of its images: *interference*, right when its corruption was adapted to alone "
            "(`reset`) and wrong in the `mixed` stream; *transfer*, the reverse.",
            "",
            _markdown_table(mixed),
            "",
        ]
    if rounds > 1:
        parts += [
            "## Error per round (%)",
            "",
            "Only `continual` carries a method's state from one round to the next; under `reset`, and for a "
            "method that does not adapt, every round repeats the first.",
            "",
            _markdown_table(round_table(result)),
            "",
        ]
    parts += ["## Speed during the benchmark", "", _markdown_table(speed_table(result)), ""]
    parts += _speed_markdown(result["speed"])
    counts: dict[str, int] = {}
    for cell in result["results"]:
        if cell["copied_from"] is not None:
            continue
        for note, count in cell["notes"].items():
            key = f"{cell['method']} · {cell['protocol']}: {note}"
            counts[key] = counts.get(key, 0) + count
    if counts:
        parts += ["## Events", "", *[f"- {key} ({count} batches)" for key, count in sorted(counts.items())], ""]
    return "\n".join(parts)


def _stream_words(result: dict[str, Any]) -> str:
    """How many images each corruption's stream holds, and in which order they arrive."""
    order = parse_order(result["config"]["order"])
    count = result["images_per_corruption"]
    if order.kind == "video":
        return f"{count} frames per corruption ({count // order.frames} images as {order.frames} frames each)"
    return f"{count} images per corruption in `{result['config']['order']}` order"


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
    """Error per corruption per method (one panel per protocol; with several rounds, each
    corruption's mean over them), error per round under ``continual`` when there are several,
    cos(g1, g2) over the steps of the methods with two objectives, and images/s per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = result["config"]
    protocols, methods, corruptions = config["protocols"], config["methods"], config["corruptions"]
    with_rounds = config["rounds"] > 1 and "continual" in protocols
    with_cosines = any(c.get("cosines") for c in result["results"])
    widths = [3] * len(protocols) + [2] * with_rounds + [3] * with_cosines + [1]
    figure, axes = plt.subplots(
        1,
        len(widths),
        figsize=(6 * len(protocols) + 4 * with_rounds + 6 * with_cosines + 4, 4.5),
        gridspec_kw={"width_ratios": widths},
    )
    positions = range(len(corruptions))
    for axis, protocol in zip(axes, protocols, strict=False):
        for method in methods:
            errors: dict[str, list[float]] = {}
            for c in result["results"]:
                if c["method"] == method and c["protocol"] == protocol:
                    errors.setdefault(c["corruption"], []).append(c["error_percent"])
            means = [sum(errors[name]) / len(errors[name]) for name in corruptions]
            axis.plot(positions, means, marker="o", label=method)
        axis.set_xticks(list(positions), [SHORT_NAMES.get(name, name) for name in corruptions], rotation=60)
        axis.set_ylabel("online error (%)")
        axis.set_title(f"protocol: {protocol}")
        axis.grid(alpha=0.3)
    axes[0].legend()
    if with_rounds:
        rounds_axis = axes[len(protocols)]
        numbers = range(1, config["rounds"] + 1)
        for method in methods:
            rounds_axis.plot(numbers, result["error_per_round"]["continual"][method], marker="o", label=method)
        rounds_axis.set_xticks(list(numbers))
        rounds_axis.set_xlabel("round")
        rounds_axis.set_ylabel("online error (%)")
        rounds_axis.set_title("continual: error per round")
        rounds_axis.grid(alpha=0.3)
    if with_cosines:
        _plot_cosines(axes[-2], result, protocols[-1])
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


def _plot_cosines(axis: Any, result: dict[str, Any], protocol: str) -> None:
    """cos(g1, g2) per step through the stream of ``protocol``, corruption after corruption."""
    for method in result["config"]["methods"]:
        values = [
            value
            for cell in result["results"]
            if cell["method"] == method and cell["protocol"] == protocol
            for value in cell.get("cosines", [])
        ]
        if values:
            axis.plot(range(1, len(values) + 1), values, lw=1, label=method)
    axis.axhline(0, color="grey", lw=0.8, ls=":")
    axis.set_xlabel("step")
    axis.set_ylabel("cos(g1, g2)")
    axis.set_title(f"{protocol}: gradient conflict (< 0)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
