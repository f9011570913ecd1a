"""``--method mgtta``: the engine applies the bundle's Meta Gradient Generator, and rollback
restores its memory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import write_image_folder
from tta_cli.config import AdaptConfig
from tta_cli.engine import adapt
from tta_cli.errors import UsageError
from tta_cli.history import HistoryStore, read_history
from tta_cli.mgg import MetaGradientGenerator, save_generator


@pytest.fixture
def bundle_with_mgg(bundle_path: Path, tmp_path: Path) -> Path:
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_path, bundle)
    torch.manual_seed(0)
    save_generator(MetaGradientGenerator(), bundle / "mgg.safetensors", {"note": "untrained, for tests"})
    return bundle


def test_mgtta_adapts_and_snapshots_the_generator_memory(bundle_with_mgg: Path, tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", per_class=4)
    run = tmp_path / "run"
    summary = adapt(AdaptConfig(model=bundle_with_mgg, source=data, run=run, method="mgtta", batch_size=4))
    assert summary.steps == 3
    history = read_history(run)
    assert all(step["update_norm"] > 0 for step in history["steps"])
    assert {"cosine", "weight_1", "weight_2"} <= history["steps"][0]["diagnostics"].keys()
    store = HistoryStore.open(run)
    after_1 = store.load_snapshot(store.resolve("1").id)["update_rule"]
    after_3 = store.load_snapshot(store.resolve("3").id)["update_rule"]
    assert after_1["steps"] == 1 and after_3["steps"] == 3
    assert not torch.equal(after_1["memory"]["weight"], after_3["memory"]["weight"])


def test_mgtta_without_a_generator_is_one_clear_error(bundle_path: Path, tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", per_class=1)
    with pytest.raises(UsageError, match=r"has no mgg\.safetensors; pre-train one"):
        adapt(AdaptConfig(model=bundle_path, source=data, run=tmp_path / "run", method="mgtta"))
    assert not (tmp_path / "run").exists()


def test_a_run_does_not_resume_with_a_generator_pre_trained_again(bundle_with_mgg: Path, tmp_path: Path) -> None:
    """Its moments and memory were the former generator's; the bundle's weights did not change."""
    from tta_cli.engine import resume

    data = write_image_folder(tmp_path / "data", per_class=4)
    run = tmp_path / "run"
    adapt(AdaptConfig(model=bundle_with_mgg, source=data, run=run, method="mgtta", batch_size=4, max_frames=8))
    torch.manual_seed(1)
    save_generator(MetaGradientGenerator(), bundle_with_mgg / "mgg.safetensors", {"note": "pre-trained again"})
    with pytest.raises(UsageError, match="another Meta Gradient Generator"):
        resume(run)
