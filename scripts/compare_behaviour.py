"""Compare two outputs of scripts/behaviour-baseline.sh: every benchmark error cell and every
row of the runs' predictions.csv must be identical. Prints each difference; exits 1 if any.

    python scripts/compare_behaviour.py BEFORE AFTER
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Annotated

import typer


def error_cells(bench: Path) -> dict[tuple[str, str, str, int], float]:
    results = json.loads(bench.read_text())["results"]
    return {(r["method"], r["protocol"], r["corruption"], r["round"]): r["error_percent"] for r in results}


def predictions(run: Path) -> list[list[str]]:
    with (run / "predictions.csv").open(newline="") as handle:
        return list(csv.reader(handle))


def main(
    before: Annotated[Path, typer.Argument(help="Output of scripts/behaviour-baseline.sh before the change.")],
    after: Annotated[Path, typer.Argument(help="The same after it.")],
) -> None:
    """Exit 1 if any error cell or prediction differs."""
    differences = 0
    for bench in sorted(before.glob("*/bench.json")):
        old, new = error_cells(bench), error_cells(after / bench.parent.name / "bench.json")
        for key in sorted(old.keys() | new.keys()):
            if old.get(key) != new.get(key):
                differences += 1
                print(f"{bench.parent.name} {key}: {old.get(key)} -> {new.get(key)}")
        print(f"{bench.parent.name}: {len(old)} error cells compared")
    for run in sorted(before.glob("adapt-*")):
        old_rows, new_rows = predictions(run), predictions(after / run.name)
        changed = sum(a != b for a, b in zip(old_rows, new_rows, strict=False)) + abs(len(old_rows) - len(new_rows))
        differences += changed
        print(f"{run.name}: {len(old_rows) - 1} predictions compared, {changed} differ")
    print("identical" if differences == 0 else f"{differences} differences")
    if differences:
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
