"""Snapshots restore the adaptation state exactly; rollback moves ``current`` and deletes nothing."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import CLASSES, MEAN, STD, write_image_folder
from tta_cli.config import AdaptConfig, WeightedNormConfig
from tta_cli.engine import adapt, resume
from tta_cli.engine.build import adapter_for
from tta_cli.errors import UsageError
from tta_cli.history import HistoryStore, RunLock, read_history, rollback
from tta_cli.models import load_bundle
from tta_cli.streams import FolderStream, Framing, Preprocess, batches


def tensors_of(state: object) -> list[torch.Tensor]:
    """Every tensor in a nested state, in a fixed order."""
    if torch.is_tensor(state):
        return [state]
    if isinstance(state, dict):
        return [t for key in sorted(state, key=str) for t in tensors_of(state[key])]
    if isinstance(state, list | tuple):
        return [t for item in state for t in tensors_of(item)]
    return []


def probe(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Predictions on a fixed batch without touching the live model's running statistics."""
    with torch.no_grad():
        return copy.deepcopy(model)(images).softmax(1)


@pytest.mark.parametrize("method", ["tent", "tent+robust", "norm+tbr", "tent+weighted"])
def test_rollback_restores_state_bit_for_bit(method: str, bundle_path: Path, tmp_path: Path) -> None:
    """With robust BN and TBR the smoothed statistics are part of the state: the next step's
    predictions from a restored step K are those the live run made from step K."""
    data = write_image_folder(tmp_path / "data", per_class=8, seed=1)
    # The test bundle's random weights predict alike with any statistics, which "weighted"
    # takes for a mild shift; here every step must adapt.
    never_mild = WeightedNormConfig(agreement=1.0)
    config = AdaptConfig(
        model=bundle_path, source=data, run=tmp_path / "run", method=method, lr=1e-2, weighted_norm=never_mild
    )
    adapter = adapter_for(load_bundle(bundle_path), config, torch.device("cpu"))
    store = HistoryStore(tmp_path / "history")
    fixed = next(
        batches(FolderStream(data, Framing((32, 32)), CLASSES, order="shuffled"), 12, Preprocess(MEAN, STD))
    ).images
    live_states, live_predictions, snapshot_of = {}, {}, {}
    stream = batches(FolderStream(data, Framing((32, 32)), CLASSES, order="shuffled", seed=4), 4, Preprocess(MEAN, STD))
    for batch in stream:
        step = adapter.step(batch).step
        snapshot_of[step] = store.write_snapshot(adapter.state_dict(), step, parent=None)
        live_states[step] = copy.deepcopy(adapter.state_dict())
        live_predictions[step] = probe(adapter.model, fixed)
    assert len(live_states) == 6
    assert not torch.equal(live_predictions[2], live_predictions[6])

    for step in (2, 4):
        adapter.load_state_dict(store.load_snapshot(snapshot_of[step]))
        restored = adapter.state_dict()
        if adapter.method.updates:
            assert restored["update_rule"]["state"], "the optimizer moments are part of the state"
        for mine, theirs in zip(tensors_of(restored), tensors_of(live_states[step]), strict=True):
            assert torch.equal(mine, theirs)
        assert torch.equal(probe(adapter.model, fixed), live_predictions[step])


def test_cli_rollback_moves_current_and_resume_continues(bundle_path: Path, tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", per_class=8)
    run = tmp_path / "run"
    adapt(AdaptConfig(model=bundle_path, source=data, run=run, method="tent", batch_size=4, limit=16))
    before = read_history(run)
    assert [step["step"] for step in before["steps"]] == [1, 2, 3, 4]
    assert before["aliases"]["current"]["step"] == 4

    result = subprocess.run(
        [sys.executable, "-m", "tta_cli", "rollback", str(run), "--to", "2"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    after = read_history(run)
    assert after["aliases"]["current"]["id"] == before["steps"][1]["snapshot_id"]
    assert after["events"][-1]["kind"] == "rollback" and "rollback to 2" in after["events"][-1]["detail"]
    assert after["steps"] == before["steps"], "rollback deletes nothing"

    # The run had reached its --limit: resuming records the resume and adapts nothing more.
    summary = resume(run)
    assert summary.images_seen == 16 and summary.steps == 4
    assert read_history(run)["events"][-1]["kind"] == "resume"


def test_resume_after_rollback_adapts_from_the_restored_state(bundle_path: Path, tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", per_class=8)
    run = tmp_path / "run"
    adapt(AdaptConfig(model=bundle_path, source=data, run=run, method="tent", batch_size=4, limit=12))
    rollback(run, "source")
    # The run's own settings stopped it after 12 images; let it see all 24 this time.
    store = HistoryStore.open(run)
    store.db.execute("UPDATE runs SET config = replace(config, 'limit = 12', 'limit = 24')")
    store.close()
    summary = resume(run)
    history = read_history(run)
    resumed = [step for step in history["steps"] if step["step"] > 3]
    assert [step["step"] for step in resumed] == [4, 5, 6]
    assert resumed[0]["position"] == 16
    assert summary.images_seen == 24
    rows = (run / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 24


def test_a_resumed_run_resets_to_its_source_not_to_where_it_resumed(bundle_path: Path, tmp_path: Path) -> None:
    """RDumb every step: each step is the source plus one update, resumed or not."""
    data = write_image_folder(tmp_path / "data", per_class=8)
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    adapt(AdaptConfig(model=bundle_path, source=data, run=whole, method="tent+reset1", batch_size=4, limit=24))
    adapt(AdaptConfig(model=bundle_path, source=data, run=resumed, method="tent+reset1", batch_size=4, limit=12))
    store = HistoryStore.open(resumed)
    store.db.execute("UPDATE runs SET config = replace(config, 'limit = 12', 'limit = 24')")
    store.close()
    resume(resumed)

    def params_at(run: Path, step: str) -> list[torch.Tensor]:
        store = HistoryStore.open(run)
        try:
            return tensors_of(store.load_snapshot(store.resolve(step).id)["params"])
        finally:
            store.close()

    for step in ("4", "5", "6"):
        for mine, theirs in zip(params_at(whole, step), params_at(resumed, step), strict=True):
            assert torch.equal(mine, theirs), step


def test_rollback_errors_are_clear(bundle_path: Path, tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", per_class=2)
    run = tmp_path / "run"
    adapt(AdaptConfig(model=bundle_path, source=data, run=run, method="tent", batch_size=2))
    with pytest.raises(UsageError, match="Step 99 has no snapshot"):
        rollback(run, "99")
    with pytest.raises(UsageError, match="not a step, snapshot or alias"):
        rollback(run, "yesterday")
    with pytest.raises(UsageError, match="not a run directory"):
        rollback(tmp_path, "source")


def test_a_second_writer_is_refused(bundle_path: Path, tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", per_class=2)
    run = tmp_path / "run"
    adapt(AdaptConfig(model=bundle_path, source=data, run=run, method="tent", batch_size=2))
    with RunLock(run):
        result = subprocess.run(
            [sys.executable, "-m", "tta_cli", "rollback", str(run), "--to", "source"], capture_output=True, text=True
        )
        assert result.returncode == 2 and "in use by another tta-cli process" in result.stderr
        with pytest.raises(UsageError, match="in use"):
            resume(run)


def test_history_command_json_table_and_plot(bundle_path: Path, tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", per_class=4)
    run = tmp_path / "run"
    adapt(AdaptConfig(model=bundle_path, source=data, run=run, method="tent", batch_size=3))
    as_json = subprocess.run(
        [sys.executable, "-m", "tta_cli", "history", str(run), "--json", "--last", "2"], capture_output=True, text=True
    )
    record = json.loads(as_json.stdout)
    assert [step["step"] for step in record["steps"]] == [3, 4]
    assert {"entropy", "update_norm", "majority_fraction", "verdict", "losses"} <= record["steps"][0].keys()
    plot = tmp_path / "history.png"
    table = subprocess.run(
        [sys.executable, "-m", "tta_cli", "history", str(run), "--plot", str(plot)], capture_output=True, text=True
    )
    assert table.returncode == 0, table.stderr
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"
    assert "aliases:" in table.stdout
