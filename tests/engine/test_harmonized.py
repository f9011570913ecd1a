from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import write_image_folder
from tta_cli.config import AdaptConfig
from tta_cli.engine import adapt
from tta_cli.history import HistoryStore, read_history


@pytest.mark.parametrize("harmonizer", ["gh++", "sam-gs", "pcgrad"])
def test_harmonized_runs_record_the_conflict(bundle_path: Path, tmp_path: Path, harmonizer: str) -> None:
    data = write_image_folder(tmp_path / "data", per_class=6)
    run = tmp_path / "run"
    config = AdaptConfig(model=bundle_path, source=data, run=run, method="harmonized", harmonizer=harmonizer)
    config.batch_size = 6
    adapt(config)
    history = read_history(run)
    diagnostics = history["steps"][0]["diagnostics"]
    assert {"cosine", "weight_1", "weight_2", "grad_norm_1", "grad_norm_2"} <= diagnostics.keys()
    assert set(history["steps"][0]["losses"]) == {"entropy", "alignment"}
    assert 0 <= history["conflict_fraction"] <= 1


def test_sam_gs_state_is_snapshotted_and_restored(bundle_path: Path, tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", per_class=6)
    run = tmp_path / "run"
    # Harmonizing on every step, so that SAM-GS's own state moves on every step.
    method = "harmonized+harmonize1"
    adapt(AdaptConfig(model=bundle_path, source=data, run=run, method=method, harmonizer="sam-gs", batch_size=6))
    store = HistoryStore.open(run)
    state_2 = store.load_snapshot(store.resolve("2").id)["harmonizer"]
    state_3 = store.load_snapshot(store.resolve("3").id)["harmonizer"]
    source = store.load_snapshot(store.resolve("source").id)["harmonizer"]
    assert state_2["steps"] == 2 and state_3["steps"] == 3 and source["steps"] == 0
    assert not torch.equal(state_2["momentum"], state_3["momentum"])
