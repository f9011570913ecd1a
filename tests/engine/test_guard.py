from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from tests.conftest import write_image_folder
from tta_cli.config import AdaptConfig, GuardConfig
from tta_cli.engine import Adapter, StepResult, adapt
from tta_cli.engine.guard import Guard
from tta_cli.history import HistoryStore, read_history
from tta_cli.streams import Batch


def test_collapse_signals() -> None:
    guard = Guard(GuardConfig(entropy_ema_min=0.2, entropy_ema_momentum=0.5, majority_window=4), num_classes=3)
    assert guard.observe(torch.tensor([0, 1]), torch.tensor([1.0, 1.0])).ok
    verdict = guard.observe(torch.tensor([2, 0]), torch.tensor([0.0, 0.0]))  # EMA 0.5: still fine
    assert verdict.ok
    verdict = guard.observe(torch.tensor([1, 2]), torch.tensor([0.0, 0.0]))  # EMA 0.25
    assert verdict.ok
    verdict = guard.observe(torch.tensor([0, 1]), torch.tensor([0.1, 0.1]))  # EMA 0.175
    assert verdict.action == "rollback" and "entropy moving average 0.175" in verdict.reason

    guard = Guard(GuardConfig(majority_max=0.7, majority_window=4), num_classes=3)
    assert guard.observe(torch.tensor([1, 1, 1]), torch.ones(3)).ok  # window not full yet
    verdict = guard.observe(torch.tensor([1]), torch.ones(1))
    assert verdict.action == "rollback" and "100%" in verdict.reason
    assert guard.majority_fraction() == 1.0

    assert guard.observe(torch.tensor([0]), torch.tensor([float("nan")])).action == "rollback"
    assert guard.check_gradient(float("inf"), torch.zeros(3)).action == "skip"
    assert guard.check_gradient(1.0, torch.tensor([0.0, float("nan")])).action == "skip"
    assert guard.check_state([torch.tensor([float("nan")])]).action == "rollback"


def test_last_good_trails_by_confirm_steps() -> None:
    guard = Guard(GuardConfig(confirm_steps=2), num_classes=2)
    assert guard.promote(1, "a") is None
    assert guard.promote(2, "b") is None
    assert guard.promote(3, "c") == (1, "a")
    guard.reset()
    assert guard.promote(4, "d") is None


def test_a_disabled_guard_says_ok() -> None:
    guard = Guard(GuardConfig(enabled=False), num_classes=2)
    assert guard.observe(torch.tensor([0]), torch.tensor([float("nan")])).ok
    assert guard.check_gradient(float("nan"), torch.zeros(1)).ok


def test_nan_in_a_parameter_rolls_back_to_last_good(
    bundle_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original_step = Adapter.step

    def poisoned_step(self: Adapter, batch: Batch) -> StepResult:
        if self.step_count == 5:
            with torch.no_grad():
                self.params[0][0] = float("nan")
        return original_step(self, batch)

    monkeypatch.setattr(Adapter, "step", poisoned_step)
    data = write_image_folder(tmp_path / "data", per_class=8)
    run = tmp_path / "run"
    config = AdaptConfig(model=bundle_path, source=data, run=run, method="tent", batch_size=3)
    config.guard.confirm_steps = 2
    summary = adapt(config)
    assert summary.rollbacks == 1
    history = read_history(run)
    (event,) = [event for event in history["events"] if event["kind"] == "rollback"]
    assert event["step"] == 6 and "non-finite predictions" in event["detail"]
    assert event["snapshot_id"] == history["steps"][2]["snapshot_id"], "last-good was step 3 (5 - 2)"
    store = HistoryStore.open(run)
    final = store.load_snapshot(store.aliases()["current"].id)
    assert all(torch.isfinite(value).all() for value in final["params"].values())


def test_a_degenerate_stream_triggers_the_guard(bundle_path: Path, tmp_path: Path) -> None:
    for index in range(24):
        path = tmp_path / "data" / "cat" / f"{index:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(path)
    settings = tmp_path / "settings.toml"
    settings.write_text("[adapt.guard]\nmajority_window = 8\nmajority_max = 0.75\n")
    run = tmp_path / "run"
    data = tmp_path / "data"
    command = [sys.executable, "-m", "tta_cli", "adapt", "--model", str(bundle_path), "--source", str(data)]
    rollbacks, sources = {}, {}
    for method in ("tent", "norm+weighted"):
        run = tmp_path / f"run-{method}"
        result = subprocess.run(
            [*command, "--run", str(run), "--config", str(settings), "--batch-size", "4", "--method", method],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        history = json.loads(
            subprocess.run(
                [sys.executable, "-m", "tta_cli", "history", str(run), "--json"], capture_output=True, text=True
            ).stdout
        )
        rollbacks[method] = [event for event in history["events"] if event["kind"] == "rollback"]
        sources[method] = history["aliases"]["source"]["id"]
    assert rollbacks["tent"] and "one class took 100% of the last 8 predictions" in rollbacks["tent"][0]["detail"]
    assert rollbacks["tent"][0]["snapshot_id"] == sources["tent"]
    # Without gradient steps, one class is what the stream shows, not a collapse.
    assert rollbacks["norm+weighted"] == []


def test_harm_signal_is_the_source_plausibility_of_the_adapted_predictions() -> None:
    guard = Guard(GuardConfig(harm_min=0.7, harm_window=4), num_classes=3)
    source = torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1]])
    # Agreeing with the source: ratio 1. Window not yet full: no verdict on harm.
    assert guard.observe(torch.tensor([0, 0]), torch.ones(2), source).ok
    assert guard.plausibility() is None
    # Switching to the source's runner-up: (0.6 + 0.5 + 0.3 + 0.4) / (0.6 + 0.5 + 0.6 + 0.5) = 0.818.
    assert guard.observe(torch.tensor([1, 1]), torch.ones(2), source).ok
    assert guard.plausibility() == pytest.approx(1.8 / 2.2)
    # Moving to classes the source finds unlikely: the oldest batch leaves the window,
    # (0.3 + 0.4 + 0.1 + 0.1) / 2.2 = 0.41 < 0.7: back to the source.
    verdict = guard.observe(torch.tensor([2, 2]), torch.ones(2), source)
    assert guard.plausibility() == pytest.approx(0.9 / 2.2)
    assert verdict.action == "rollback" and verdict.target == "source" and "0.41 < 0.7" in verdict.reason
    guard.reset()
    assert guard.plausibility() is None


def test_harm_guard_returns_to_the_source_in_a_run(
    bundle_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A confident source model, and θ scrambled at step 3: the guard returns to the source."""
    confident = tmp_path / "bundle"
    shutil.copytree(bundle_path, confident)
    weights = load_file(confident / "weights.safetensors")
    weights["head.weight"] *= 100
    save_file(weights, confident / "weights.safetensors")
    original_step = Adapter.step

    def scrambling_step(self: Adapter, batch: Batch) -> StepResult:
        if self.step_count == 2:
            with torch.no_grad():
                for param in self.params:
                    param.copy_(torch.randn_like(param) * 10)
        return original_step(self, batch)

    monkeypatch.setattr(Adapter, "step", scrambling_step)
    data = write_image_folder(tmp_path / "data", per_class=8)
    run = tmp_path / "run"
    config = AdaptConfig(model=confident, source=data, run=run, method="tent", batch_size=3)
    config.guard = GuardConfig(harm_min=0.7, harm_window=6, entropy_ema_min=0, majority_max=1)
    adapt(config)
    history = read_history(run)
    rollbacks = [event for event in history["events"] if event["kind"] == "rollback"]
    assert rollbacks and "plausibility" in rollbacks[0]["detail"]
    assert rollbacks[0]["snapshot_id"] == history["aliases"]["source"]["id"]


def test_without_gradient_steps_one_class_is_a_collapse_only_where_the_source_saw_more() -> None:
    config = GuardConfig(majority_max=0.75, majority_window=8, entropy_ema_min=0)
    entropy = torch.ones(4)
    one_class, spread = torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 2, 0])
    # A camera on one scene: the source's predictions of the same inputs are one class too.
    guard = Guard(config, num_classes=3, compare_with_source=True)
    verdicts = [guard.observe(one_class, entropy, source_predictions=one_class) for _ in range(3)]
    assert all(verdict.ok for verdict in verdicts)
    # A normalisation that collapses: the source's predictions are spread.
    guard = Guard(config, num_classes=3, compare_with_source=True)
    verdicts = [guard.observe(one_class, entropy, source_predictions=spread) for _ in range(2)]
    assert verdicts[0].ok and verdicts[1].action == "rollback" and verdicts[1].target == "last-good"
    assert "one class took 100%" in verdicts[1].reason and "source's predictions of the same inputs: at most 50%" in (
        verdicts[1].reason
    )
    # Without the source's view of the same inputs there is nothing to compare with.
    guard = Guard(config, num_classes=3, compare_with_source=True)
    assert all(guard.observe(one_class, entropy).ok for _ in range(3))


def test_a_norm_without_gradient_steps_hands_the_guard_the_source_predictions(
    bundle_path: Path, clean_folder: Path, tmp_path: Path
) -> None:
    from tests.engine.test_adapter import first_batch, make_adapter

    batch = first_batch(clean_folder)
    for method in ("norm+robust", "norm+weighted"):
        adapter = make_adapter(bundle_path, method, tmp_path)
        assert adapter.guard.compare_with_source and adapter.guard.config.enabled
        before = adapter.state_dict()["buffers"]
        result = adapter.step(batch)
        assert len(adapter.guard.source_predictions) == len(batch) and "source_majority" in result.diagnostics
        if method == "norm+robust":
            # The source's look leaves the statistics as the predicting forward left them.
            again = make_adapter(bundle_path, method, tmp_path, guard={"enabled": False})
            again.step(batch)
            for name, value in again.state_dict()["buffers"].items():
                assert torch.equal(adapter.state_dict()["buffers"][name], value), name
            assert any(not torch.equal(before[name], value) for name, value in again.state_dict()["buffers"].items())
    assert not make_adapter(bundle_path, "tent", tmp_path).guard.compare_with_source


def test_the_reference_scores_one_batch_in_harm_every_and_the_first_after_a_reset() -> None:
    guard = Guard(GuardConfig(harm_every=3), num_classes=3)
    assert [guard.harm_due() for _ in range(7)] == [True, False, False, True, False, False, True]
    guard.harm_due()
    guard.reset()
    assert [guard.harm_due() for _ in range(4)] == [True, False, False, True]
    every = Guard(GuardConfig(harm_every=1), num_classes=3)
    assert all(every.harm_due() for _ in range(5))
