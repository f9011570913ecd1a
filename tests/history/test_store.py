"""The history store on its own: transactions and retention."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tta_cli.engine.session import Session
from tta_cli.errors import TTAError, UsageError
from tta_cli.history import HistoryStore, StepRecord, rollback


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


def test_retention_keeps_the_states_the_guard_may_still_confirm_as_last_good(bundle_path: Path, tmp_path: Path) -> None:
    # Fewer recent snapshots kept than the guard waits before confirming one: a pruned
    # candidate would become a last-good that no rollback can load.
    settings = {"history": {"keep_last": 2, "keep_every": 4}, "guard": {"confirm_steps": 5}}
    session = Session.start(bundle_path, tmp_path / "run", method="tent", device="cpu", **settings)
    generator = torch.Generator().manual_seed(0)
    with session:
        for _ in range(16):
            session.adapt(torch.rand(2, 3, 32, 32, generator=generator))
            last_good = session.store.aliases()["last-good"]
            assert session.store.load_snapshot(last_good.id)["params"], f"last-good of step {last_good.step}"
        assert last_good.step > 0
        assert session.store.prune(keep_last=2, keep_every=4) > 0, "retention still removes old snapshots"


def test_a_rollback_to_an_alias_whose_file_is_gone_is_refused_and_moves_nothing(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path)
    store.begin_run("tent", "sha", "config")
    kept = store.write_snapshot({"params": {"w": torch.zeros(2)}}, step=1, parent=None)
    gone = store.write_snapshot({"params": {"w": torch.ones(2)}}, step=2, parent=kept)
    store.set_alias("current", kept, 1)
    store.set_alias("last-good", gone, 2)
    store.snapshot_path(gone).unlink()  # as the retention of earlier versions could leave it
    store.close()
    with pytest.raises(UsageError, match="snapshot of step 2 was pruned"):
        rollback(tmp_path, "last-good")
    reopened = HistoryStore.open(tmp_path)
    assert reopened.aliases()["current"].id == kept
    reopened.close()


def test_digits_name_a_step_and_else_a_snapshot_whose_id_begins_with_them(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path)
    store.begin_run("tent", "sha", "config")
    first = store.write_snapshot({"params": {"w": torch.zeros(2)}}, step=1, parent=None)
    store.record_step(record(1, snapshot_id=first))
    digits = next(
        snapshot_id
        for value in range(1, 1000)
        if (snapshot_id := store.write_snapshot({"params": {"w": torch.full((2,), value)}}, 2, first))[:6].isdigit()
    )
    assert store.resolve("1").id == first
    assert store.resolve(digits[:6]).id == digits
    with pytest.raises(UsageError, match="Step 7 has no snapshot"):
        store.resolve("7")
    store.close()


def test_a_history_that_is_not_a_database_is_one_sentence(tmp_path: Path) -> None:
    (tmp_path / HistoryStore.DB).write_bytes(b"not SQLite" * 100)
    with pytest.raises(UsageError, match=r"history .*history\.db \(file is not a database\); restore"):
        HistoryStore.open(tmp_path)


def test_the_mean_entropy_counts_only_the_images_of_steps_that_have_one(tmp_path: Path) -> None:
    """SQLite stores a NaN as NULL: those images have no entropy to average, not an entropy of 0."""
    from tta_cli.history import summarize

    store = HistoryStore(tmp_path)
    store.begin_run("tent", "sha", "config")
    store.record_step(record(1, batch_size=10, entropy=float("nan")))
    store.record_step(record(2, batch_size=10, entropy=1.0))
    assert summarize(store, "tent", "cpu").mean_entropy == 1.0
    store.close()


def test_rollback_of_a_folder_that_is_not_a_run_leaves_nothing_in_it(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a run directory"):
        rollback(tmp_path, "source")
    assert list(tmp_path.iterdir()) == []
