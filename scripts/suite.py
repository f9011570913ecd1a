"""The development suite: bundles of different kinds × stream orders × shifts, each run with
the source model, test-batch normalisation, tent, SAR and the default (``auto``), and the
default once more with each mechanism of the "weighted" norm switched off (its ablation).

    python scripts/suite.py run --bundle B1 --bundle B2 --data CIFAR10/test --out docs/bench/suite
    python scripts/suite.py tables docs/bench/suite

``run`` writes one JSON line per bundle, order, shift, method and corruption to
``OUT/cells.jsonl``: the errors, the history's events and which images were predicted right
(``correct``: one bit per image in the stream's order, packed, in hex). It skips what is there,
so a killed run resumes; a line without ``correct`` (written before it was recorded) is run
again and replaced. Every stream is continual (no reset between corruptions), evaluated online.
``tables`` writes ``OUT/tables.md``: the suite table, the cells where the default is worse than
the source (and those worse beyond chance: a one-sided exact sign test on the images the two
predict differently), the default's share of the best method's gain per bundle, and the ablation.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer
from scipy.stats import binomtest

from tta_cli.bench.protocols import bench_method, run_method
from tta_cli.bench.streams import build_streams
from tta_cli.config import WeightedNormConfig
from tta_cli.corruptions import BEYOND, CORRUPTIONS
from tta_cli.engine import resolve_device
from tta_cli.engine.methods import Method
from tta_cli.models import Bundle, load_bundle

ORDERS = {
    "shuffled-b64": ("shuffled", 64),
    "sorted-b64": ("sorted", 64),
    "dirichlet0.1-b64": ("dirichlet:0.1", 64),
    "shuffled-b16": ("shuffled", 16),
}
SHIFTS = {
    "severity1": (CORRUPTIONS, 1),
    "severity3": (CORRUPTIONS, 3),
    "severity5": (CORRUPTIONS, 5),
    "collapse": (BEYOND, 5),  # the shifts beyond CIFAR-10-C have one strength
}
METHODS = ("source", "norm", "tent", "sar", "auto")
SWITCHES = (
    "deep_gate",
    "shrinkage",
    "jump",
    "return_on_fit",
    "return_on_one_class",
    "deferral",
)
"""The weighted norm's mechanisms (``WeightedNormConfig``); ``auto-without-X`` runs the default
with X off."""
RETURN = "return"
"""``auto-without-return``: the default of a bundle without BatchNorm without θ's return to the
source (``tta_cli.engine.returns``)."""
CELLS = "cells.jsonl"
SIGNIFICANCE = 0.05
"""The level of the sign test that calls a cell worse than the source beyond chance."""

app = typer.Typer(add_completion=False)


@app.command()
def run(
    bundle: Annotated[list[Path], typer.Option(help="A model bundle; repeat for several.")],
    data: Annotated[Path, typer.Option(help="Labeled clean folder (<class>/<image>) to corrupt.")],
    out: Annotated[Path, typer.Option(help="Folder for cells.jsonl.")],
    num_examples: Annotated[int, typer.Option(help="Images per corruption.")] = 200,
    orders: Annotated[str, typer.Option(help="Comma-separated names of ORDERS.")] = ",".join(ORDERS),
    shifts: Annotated[str, typer.Option(help="Comma-separated names of SHIFTS.")] = ",".join(SHIFTS),
    methods: Annotated[str, typer.Option(help="Comma-separated names of METHODS.")] = ",".join(METHODS),
    ablation: Annotated[bool, typer.Option(help="Also run the default with each mechanism off.")] = True,
    seed: int = 0,
    device: str = "cpu",
    cache_dir: Annotated[Path | None, typer.Option(help="Cache of corrupted streams.")] = None,
) -> None:
    """Run every cell not yet in OUT/cells.jsonl."""
    chosen = methods.split(",")
    unknown = set(chosen) - set(METHODS)
    if unknown:
        raise typer.BadParameter(f"{', '.join(sorted(unknown))} not in {', '.join(METHODS)}.")
    out.mkdir(parents=True, exist_ok=True)
    done = {_key(row) for row in _rows(out) if "correct" in row}
    target = resolve_device(device)
    for path in bundle:
        loaded = load_bundle(path)
        for shift in shifts.split(","):
            corruptions, severity = SHIFTS[shift]
            spec = loaded.spec
            built = build_streams(
                data, spec.class_names, corruptions, severity, spec.framing, num_examples, seed, cache_dir
            )
            for order in orders.split(","):
                kind, batch_size = ORDERS[order]
                streams = [stream.reordered(kind, seed) for stream in built]
                for name, method, weighted_norm in _variants(loaded, chosen, ablation):
                    cell = {"bundle": loaded.spec.name, "order": order, "shift": shift, "method": name}
                    if _key(cell) in done:
                        continue
                    torch.manual_seed(seed)
                    results = run_method(
                        loaded, method, streams, "continual", batch_size, target, weighted_norm=weighted_norm
                    )
                    rows = [
                        {**cell, "corruption": result.corruption, "images": result.images, "errors": result.errors}
                        | {"events": dict(result.notes), "correct": _pack(list(result.correct.values()))}
                        for result in results
                    ]
                    _replace(out, _key(cell), rows)
                    mean = np.mean([result.error_percent for result in results])
                    typer.echo(f"{loaded.spec.name} {order} {shift} {name}: {mean:.2f} % error")


def _variants(
    bundle: Bundle, methods: list[str], ablation: bool
) -> Iterator[tuple[str, Method, WeightedNormConfig | None]]:
    """Each method by name, then the default with each of its mechanisms off."""
    for name in methods:
        yield name, bench_method(name, bundle), None
    default = bench_method("auto", bundle)
    if ablation and default.norm == "weighted":
        for switch in SWITCHES:
            yield f"auto-without-{switch}", default, WeightedNormConfig(**{switch: False})
    if ablation and default.return_to_source:
        yield f"auto-without-{RETURN}", replace(default, return_to_source=False), None


def _key(row: dict[str, Any]) -> tuple[str, ...]:
    return row["bundle"], row["order"], row["shift"], row["method"]


def _pack(correct: list[bool]) -> str:
    return np.packbits(np.array(correct, dtype=bool)).tobytes().hex()


def _unpack(packed: str, images: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(packed), dtype=np.uint8), count=images).astype(bool)


def _replace(out: Path, key: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` as the cells of ``key``, instead of any written before (atomically)."""
    kept = [row for row in _rows(out) if _key(row) != key]
    path = out / CELLS
    partial = path.with_suffix(".partial")
    partial.write_text("".join(json.dumps(row) + "\n" for row in [*kept, *rows]))
    partial.replace(path)


def _rows(out: Path) -> list[dict[str, Any]]:
    path = out / CELLS
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []


@app.command()
def tables(out: Annotated[Path, typer.Argument(help="The folder `run` wrote.")]) -> None:
    """Write OUT/tables.md from OUT/cells.jsonl."""
    rows = _rows(out)
    if not rows:
        raise typer.BadParameter(f"{out / CELLS} holds no cells; `run` writes them.")
    error: dict[tuple[str, ...], dict[str, float]] = defaultdict(dict)
    for row in rows:
        error[_key(row)][row["corruption"]] = 100 * row["errors"] / row["images"]
    error = dict(error)  # a method a stream did not run is missing, not empty
    by_cell = {(*_key(row), row["corruption"]): row for row in rows}
    bundles = list(dict.fromkeys(row["bundle"] for row in rows))
    lines = ["# The development suite", "", f"Written by `python scripts/suite.py tables {out}`.", ""]
    lines += _suite_table(error, bundles)
    lines += _worse_table(error, bundles, by_cell)
    lines += _share_table(error, bundles)
    lines += _ablation_table(error, bundles)
    (out / "tables.md").write_text("\n".join(lines) + "\n")
    typer.echo("\n".join(lines))


def _mean(errors: dict[str, float]) -> float:
    return float(np.mean(list(errors.values())))


def _cells(error: dict[tuple[str, ...], dict[str, float]], bundle: str) -> Iterator[tuple[str, str]]:
    for order in ORDERS:
        for shift in SHIFTS:
            if (bundle, order, shift, "source") in error and (bundle, order, shift, "auto") in error:
                yield order, shift


def _best(error: dict[tuple[str, ...], dict[str, float]], bundle: str, order: str, shift: str) -> str:
    ran = [name for name in METHODS if (bundle, order, shift, name) in error]
    return min(ran, key=lambda name: _mean(error[bundle, order, shift, name]))


def _suite_table(error: dict[tuple[str, ...], dict[str, float]], bundles: list[str]) -> list[str]:
    lines = [
        "## Mean online error (%) per bundle, order and shift",
        "",
        "| bundle | order | shift | source | norm | tent | sar | default | best |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for bundle in bundles:
        for order, shift in _cells(error, bundle):
            means = " | ".join(
                f"{_mean(error[key]):.2f}" if (key := (bundle, order, shift, name)) in error else "–"
                for name in METHODS
            )
            lines.append(f"| {bundle} | {order} | {shift} | {means} | {_best(error, bundle, order, shift)} |")
    return [*lines, ""]


def _worse_table(
    error: dict[tuple[str, ...], dict[str, float]], bundles: list[str], rows: dict[tuple[str, ...], dict[str, Any]]
) -> list[str]:
    lines = [
        "## Cells (one corruption of one stream) where the default has more errors than the source",
        "",
        f"Beyond chance: a one-sided exact sign test, at {SIGNIFICANCE}, on the images that one of the two",
        "predicts right and the other wrong; each cell alone, and all cells of a bundle as one family",
        "(Holm's step-down correction: the chance that any cell is flagged while the default is nowhere",
        f"worse stays below {SIGNIFICANCE}). Each cell: error (%) of the source → the default, and p (n/a",
        "where a cell has no per-image record).",
        "",
        "| bundle | cells | worse | of them with per-image records | beyond chance, each cell alone "
        "| beyond chance, all cells (Holm) | which (source → default, p) |",
        "|---|---|---|---|---|---|---|",
    ]
    for bundle in bundles:
        total, worse, tested, significant, family = 0, [], 0, 0, []
        for order, shift in _cells(error, bundle):
            source, default = error[bundle, order, shift, "source"], error[bundle, order, shift, "auto"]
            total += len(default)
            for name, value in default.items():
                p = _sign_test(rows[bundle, order, shift, "source", name], rows[bundle, order, shift, "auto", name])
                if p is not None:
                    family.append(p)
                if value > source[name]:
                    tested += p is not None
                    significant += p is not None and p < SIGNIFICANCE
                    shown = "n/a" if p is None else f"{p:.2g}"
                    worse.append(f"{order} {shift} {name} {source[name]:.1f} → {value:.1f} ({shown})")
        lines.append(
            f"| {bundle} | {total} | {len(worse)} | {tested} | {significant} | {_holm(family, SIGNIFICANCE)} "
            f"| {'; '.join(worse)} |"
        )
    return [*lines, ""]


def _holm(p_values: list[float], level: float) -> int:
    """How many of the hypotheses Holm's step-down procedure rejects at family-wise ``level``:
    the k-th smallest p must lie below level / (m − k + 1), for it and every smaller one."""
    rejected = 0
    for rank, p in enumerate(sorted(p_values)):
        if p >= level / (len(p_values) - rank):
            break
        rejected += 1
    return rejected


def _sign_test(source: dict[str, Any], default: dict[str, Any]) -> float | None:
    """The chance that the default, no worse than the source, loses at least as many of the images
    they disagree on as it did; None without both per-image records."""
    if "correct" not in source or "correct" not in default:
        return None
    right = _unpack(source["correct"], source["images"])
    right_default = _unpack(default["correct"], default["images"])
    lost, won = int((right & ~right_default).sum()), int((~right & right_default).sum())
    return float(binomtest(lost, lost + won, 0.5, alternative="greater").pvalue) if lost + won else 1.0


def _share_table(error: dict[tuple[str, ...], dict[str, float]], bundles: list[str]) -> list[str]:
    lines = [
        "## The default's share of the best method's gain over the source, shuffled streams",
        "",
        "Gains summed over the shuffled orders (b64, b16) and every shift.",
        "",
        "| bundle | source − best (points, summed) | source − default | share |",
        "|---|---|---|---|",
    ]
    for bundle in bundles:
        best_gain = default_gain = 0.0
        for order, shift in _cells(error, bundle):
            if order.startswith("shuffled"):
                source = _mean(error[bundle, order, shift, "source"])
                best_gain += source - _mean(error[bundle, order, shift, _best(error, bundle, order, shift)])
                default_gain += source - _mean(error[bundle, order, shift, "auto"])
        share = f"{100 * default_gain / best_gain:.0f} %" if best_gain > 0 else "no gain to share"
        lines.append(f"| {bundle} | {best_gain:.2f} | {default_gain:.2f} | {share} |")
    return [*lines, ""]


def _ablation_table(error: dict[tuple[str, ...], dict[str, float]], bundles: list[str]) -> list[str]:
    lines = [
        "## Ablation: the default with one mechanism off (of the weighted norm, or θ's return)",
        "",
        "Mean error over the streams (order and shift) every variant ran, and the cells (one",
        "corruption of one stream) worse than the source.",
        "",
        "| bundle | variant | streams | mean error | cells worse than source |",
        "|---|---|---|---|---|",
    ]
    for bundle in bundles:
        ran = {key[3] for key in error if key[0] == bundle}
        variants = ["auto", *(name for switch in (*SWITCHES, RETURN) if (name := f"auto-without-{switch}") in ran)]
        # The cells every variant ran, so that the rows compare like with like.
        cells = [cell for cell in _cells(error, bundle) if all((bundle, *cell, name) in error for name in variants)]
        if not cells:
            continue
        for variant in variants:
            means = [_mean(error[bundle, order, shift, variant]) for order, shift in cells]
            worse = sum(
                value > error[bundle, order, shift, "source"][name]
                for order, shift in cells
                for name, value in error[bundle, order, shift, variant].items()
            )
            lines.append(f"| {bundle} | {variant} | {len(cells)} | {np.mean(means):.2f} | {worse} |")
    return [*lines, ""]


if __name__ == "__main__":
    app()
