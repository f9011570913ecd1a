"""The run directory's files: predictions that a resumed run trims back to its history."""

from __future__ import annotations

import csv
from pathlib import Path

from tta_cli.history import PredictionWriter


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def test_a_resumed_run_keeps_rows_whose_id_or_class_holds_a_comma_or_a_quote(tmp_path: Path) -> None:
    path = tmp_path / "predictions.csv"
    with PredictionWriter(path) as writer:
        writer.write([("a,1.png", "crane, bird", 0.9, 1, ""), ('say "hi".png', "dog", 0.8, 1, "dog")])
        writer.write([("b.png", "crane, bird", 0.7, 2, "")])
    with path.open("a", newline="") as handle:
        handle.write('"c,2.png",ship,0.5')  # a row a kill cut short
    with PredictionWriter(path, keep_through_step=1) as writer:
        writer.write([("d.png", "ship", 0.6, 2, "")])
    assert read_rows(path) == [
        list(PredictionWriter.FIELDS),
        ["a,1.png", "crane, bird", "0.90000", "1", ""],
        ['say "hi".png', "dog", "0.80000", "1", "dog"],
        ["d.png", "ship", "0.60000", "2", ""],
    ]
