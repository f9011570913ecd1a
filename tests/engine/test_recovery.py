"""The guard's verdicts carried out: in memory (a benchmark) and through a run's history."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.bench.test_protocols import theta
from tta_cli.bench.protocols import bench_adapter
from tta_cli.engine import get_method
from tta_cli.engine.adapter import StepResult
from tta_cli.engine.guard import OK, Verdict
from tta_cli.engine.recovery import MemoryKeeper, Recovery
from tta_cli.models import load_bundle


def test_memory_recovery_returns_to_the_target_of_the_verdict(bundle_path: Path) -> None:
    bundle = load_bundle(bundle_path)
    adapter = bench_adapter(bundle, get_method("tent+guard"), torch.device("cpu"))
    adapter.guard.config = adapter.guard.config.model_copy(update={"confirm_steps": 1})
    recovery = Recovery(adapter, MemoryKeeper(adapter))
    source = theta(adapter)
    probabilities, entropy = torch.full((1, 3), 1 / 3), torch.ones(1)

    def step(number: int, verdict: Verdict = OK) -> None:
        with torch.no_grad():
            adapter.params[0].add_(1.0)
        recovery.after_step(StepResult(number, probabilities, entropy, verdict=verdict))

    step(1)
    step(2)  # step 1's state is confirmed: last-good
    after_one = source.clone()
    after_one[: adapter.params[0].numel()] += 1
    step(3, Verdict("rollback", "test", target="last-good"))
    assert torch.equal(theta(adapter), after_one)
    step(4, Verdict("rollback", "test", target="source"))
    assert torch.equal(theta(adapter), source)
    adapter.close()
