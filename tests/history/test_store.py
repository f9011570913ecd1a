"""The history store on its own: transactions and retention."""

from __future__ import annotations

from pathlib import Path

import pytest

from tta_cli.errors import TTAError
from tta_cli.history import HistoryStore, StepRecord


def record(step: int, **fields: object) -> StepRecord:
    values = {"time": 0.0, "batch_size": 1, "position": step, "losses": {}, "update_norm": None, "entropy": None}
    return StepRecord.model_validate({"step": step, "majority_fraction": 1.0} | values | fields)


def test_a_full_disk_is_one_sentence_with_sqlites_reason_and_the_history_still_opens(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path)
    store.begin_run("tent", "sha", "config")
    store.record_step(record(1))
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages + 2}")  # the database cannot grow: a full disk
    with pytest.raises(TTAError, match=r"history .*history\.db: database or disk is full\.$"):
        store.record_step(record(2, diagnostics={"note": "x" * 100_000}))
    assert not store.db.in_transaction
    store.close()
    reopened = HistoryStore.open(tmp_path)
    assert [step.step for step in reopened.steps()] == [1]
    reopened.close()
