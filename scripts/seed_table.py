"""Mean and spread over seeds of bench runs, and the learned update's ratio to the best hand-made
method, from OUT/seedS/BUNDLE/[METHOD/]bench.json as docs/bench/mgtta/seeds/run.sh writes them.

    python scripts/seed_table.py OUT > OUT/table.md

The spread is the range (largest minus smallest) over the seeds. The best hand-made method is the
one of Tent, EATA and SAR with the lowest mean error over the seeds; the learned update's ratio to
it and their difference in points are shown per seed too (the same images: a paired comparison),
and "beyond the spread" when the gap between the two means exceeds both methods' spreads. The
seed draws the images, their order and the corruptions' noise for every method alike, which moves
all of them together; so "beyond the paired spread" asks the same of the per-seed differences:
the learned update lower on every seed, by a mean gap larger than the differences' own range.
Last, for methods with two objectives, the share of their harmonizing steps whose gradients
conflict.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Annotated

import typer

from tta_cli.engine.methods import METHODS

HAND_MADE = ("tent", "eata", "sar")
LEARNED = ("mgtta", "mgtta-nomem")
FIRST = ("source", "norm", *HAND_MADE)
ORDER = (*FIRST, *(name for name in METHODS if name not in FIRST))


def load(out: Path) -> dict[str, dict[int, dict]]:
    """bundle → seed → one bench.json, merged over the runs in OUT/seedS/BUNDLE and its subfolders
    (one run per method, or one for several); their streams must be the same. A method's own
    subfolder comes after the bundle folder's run, so its figures replace that run's."""
    runs: dict[str, dict[int, dict]] = {}
    for path in sorted(out.glob("seed*/*/**/bench.json")):
        bundle_dir = next(parent for parent in path.parents if parent.parent.name.startswith("seed"))
        seed = int(bundle_dir.parent.name.removeprefix("seed"))
        bench = json.loads(path.read_text())
        merged = runs.setdefault(bundle_dir.name, {}).setdefault(
            seed, {**bench, "mean_error_percent": {}, "cosines": {}}
        )
        if streams(bench) != streams(merged):
            raise SystemExit(f"{path} measured other streams than the other runs of its seed and bundle.")
        for protocol, errors in bench["mean_error_percent"].items():
            merged["mean_error_percent"].setdefault(protocol, {}).update(errors)
        results = bench.get("results", [])
        for method in {cell["method"] for cell in results}:
            for protocol in bench["mean_error_percent"]:
                cells = [c for c in results if (c["method"], c["protocol"]) == (method, protocol)]
                if recorded := [value for cell in cells for value in cell.get("cosines") or []]:
                    merged["cosines"][protocol, method] = recorded
    return runs


def streams(bench: dict) -> tuple:
    """What defines a run's streams: images per corruption, batch size, severity, order, seed, corruptions."""
    settings = bench["config"]
    return (bench["images_per_corruption"], *(settings[name] for name in ("batch_size", "severity", "order", "seed")),
            settings["corruptions"])  # fmt: skip


def summary(values: list[float]) -> str:
    return f"{statistics.fmean(values):.2f} ± {max(values) - min(values):.2f}"


def main(out: Annotated[Path, typer.Argument(help="Folder with seedS/BUNDLE/[METHOD/]bench.json.")]) -> None:
    for bundle, by_seed in load(out).items():
        seeds = sorted(by_seed)
        first = by_seed[seeds[0]]
        protocols = list(first["mean_error_percent"])
        measured = [set(by_seed[seed]["mean_error_percent"][protocols[0]]) for seed in seeds]
        methods = sorted(set.intersection(*measured), key=ORDER.index)
        print(f"## {bundle}: seeds {', '.join(map(str, seeds))}\n")
        if partly := set.union(*measured) - set(methods):
            print(f"Not measured on every seed, left out: {', '.join(sorted(partly, key=ORDER.index))}.\n")
        print(
            f"{first['images_per_corruption']} images per corruption, batch {first['config']['batch_size']}, "
            f"severity {first['config']['severity']}. Mean online error (%) over the 15 corruptions: mean over "
            "the seeds ± range.\n"
        )
        print("| protocol | " + " | ".join(methods) + " |\n|---|" + "---|" * len(methods))
        errors = {
            protocol: {m: [by_seed[s]["mean_error_percent"][protocol][m] for s in seeds] for m in methods}
            for protocol in protocols
        }
        for protocol in protocols:
            print(f"| {protocol} | " + " | ".join(summary(errors[protocol][m]) for m in methods) + " |")
        print(
            "\n| protocol | learned | best of tent/eata/sar | ratio of means | ratio per seed "
            "| learned − best per seed | beyond the spread | beyond the paired spread |\n"
            "|---|---|---|---|---|---|---|---|"
        )
        for protocol in protocols:
            table = errors[protocol]
            if not any(m in table for m in HAND_MADE):
                continue
            best = min((m for m in HAND_MADE if m in table), key=lambda m: statistics.fmean(table[m]))
            for learned in (m for m in LEARNED if m in table):
                pairs = list(zip(table[learned], table[best], strict=True))
                ratios = [ours / theirs for ours, theirs in pairs]
                gaps = [ours - theirs for ours, theirs in pairs]
                differences = " / ".join(f"{difference:+.2f}" for difference in gaps)
                gap = statistics.fmean(table[best]) - statistics.fmean(table[learned])
                spread = max(max(v) - min(v) for v in (table[best], table[learned]))
                paired = max(gaps) < 0 and gap > max(gaps) - min(gaps)
                # One seed has no spread to be beyond.
                if len(pairs) < 2:
                    beyond = beyond_paired = "n/a (one seed)"
                else:
                    beyond, beyond_paired = ("yes" if gap > spread else "no"), ("yes" if paired else "no")
                print(
                    f"| {protocol} | {learned} {summary(table[learned])} | {best} {summary(table[best])} | "
                    f"{statistics.fmean(table[learned]) / statistics.fmean(table[best]):.3f} | "
                    f"{min(ratios):.3f}-{max(ratios):.3f} | {differences} | {beyond} | {beyond_paired} |"
                )
        conflicts(by_seed, seeds, protocols, methods)
        print()


def conflicts(by_seed: dict[int, dict], seeds: list[int], protocols: list[str], methods: list[str]) -> None:
    """The share of the steps that harmonized whose two gradients conflict (cosine below 0), per
    protocol and method with two objectives: per seed, and over all of them; and how far apart
    they point then (the median cosine of those steps: GH++ reweighs the losses by about
    ±(angle − 90°)/2 in radians: ±10 % at −0.2)."""
    rows = []
    for protocol in protocols:
        for method in methods:
            recorded = [by_seed[seed]["cosines"].get((protocol, method), []) for seed in seeds]
            if all(recorded):
                shares = " / ".join(f"{sum(c < 0 for c in values) / len(values):.0%}" for values in recorded)
                pooled = [value for values in recorded for value in values]
                share = sum(c < 0 for c in pooled) / len(pooled)
                apart = [c for c in pooled if c < 0]
                median = f"{statistics.median(apart):.2f}" if apart else "-"
                rows.append(f"| {protocol} | {method} | {len(pooled)} | {share:.0%} | {shares} | {median} |")
    if rows:
        print(
            "\nSteps whose two objectives' gradients conflict (cosine < 0; entropy and alignment, EATA's "
            "entropy and Fisher term), of the steps that harmonized, and their median cosine:\n"
        )
        print("| protocol | method | steps | in conflict | per seed | median cosine in conflict |")
        print("|---|---|---|---|---|---|")
        print("\n".join(rows))


if __name__ == "__main__":
    typer.run(main)
