"""SAR: the sharpness-aware step through the engine's closure, and collapse recovery."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from tests.engine.test_adapter import first_batch, make_adapter
from tta_cli.bench.protocols import bench_adapter
from tta_cli.engine import Method
from tta_cli.events import EventKind
from tta_cli.models import load_bundle
from tta_cli.update import APPLIED, Outcome, SharpnessAware, make_optimizer_rule


def quartic(param: torch.Tensor) -> torch.Tensor:
    """L(θ) = Σ θ⁴ / 4, whose gradient θ³ differs between θ and θ + ε."""
    return (param**4).sum() / 4


def closure_for(param: torch.nn.Parameter, loss_value: float | None = None):
    def closure():
        with torch.enable_grad():
            loss = quartic(param)
            (gradient,) = torch.autograd.grad(loss, param)
        return (loss.item() if loss_value is None else loss_value), gradient

    return closure


def sam_step(rho: float, reset_below: float | None = None, loss_value: float | None = None):
    param = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    rule = SharpnessAware(make_optimizer_rule("sgd", [param], lr=0.1), [param], rho=rho, reset_below=reset_below)
    note = rule.apply([param], param.detach() ** 3, closure_for(param, loss_value))
    return param.detach(), note, rule


def test_sam_step_is_sgd_at_the_perturbed_point() -> None:
    theta = torch.tensor([1.0, 2.0])
    gradient = theta**3  # (1, 8)
    perturbed = theta + 0.05 * gradient / gradient.norm()  # (1.00620, 2.04961)
    expected = theta - 0.1 * perturbed**3
    after, note, _ = sam_step(rho=0.05)
    torch.testing.assert_close(after, expected)
    assert note == APPLIED
    plain = theta - 0.1 * gradient
    assert not torch.allclose(after, plain)


def test_sam_with_rho_zero_is_the_plain_step() -> None:
    after, _, _ = sam_step(rho=0.0)
    torch.testing.assert_close(after, torch.tensor([1.0, 2.0]) - 0.1 * torch.tensor([1.0, 8.0]))


def test_recovery_resets_to_the_source_when_the_loss_average_falls_below_the_threshold() -> None:
    after, note, rule = sam_step(rho=0.05, reset_below=0.2, loss_value=0.1)
    torch.testing.assert_close(after, torch.tensor([1.0, 2.0]))  # back to the source θ
    assert note.outcome is Outcome.RESET_TO_SOURCE and rule.loss_ema is None
    assert rule.base.optimizer.state_dict()["state"] == {}  # momentum forgotten too

    # Average 0.9·0.5 + 0.1·0.1 = 0.46 stays above 0.2: no reset.
    param = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    rule = SharpnessAware(make_optimizer_rule("sgd", [param], lr=0.1), [param], rho=0.05, reset_below=0.2)
    rule.apply([param], param.detach() ** 3, closure_for(param, 0.5))
    note = rule.apply([param], param.detach() ** 3, closure_for(param, 0.1))
    assert note == APPLIED and rule.loss_ema == pytest.approx(0.46)
    assert not torch.allclose(param.detach(), torch.tensor([1.0, 2.0]))


def entropy_method(update: str, rho: float) -> Method:
    options = {"rho": rho, "reset_below": None} if update == "sam" else {}
    return Method("test", "", True, ("entropy",), "sgd", 0.5, update=update, update_options=options)


@pytest.mark.parametrize("rho", [0.0, 0.05])
def test_the_engine_hands_sam_a_closure_over_the_same_batch(bundle_path: Path, clean_folder: Path, rho) -> None:
    batch = first_batch(clean_folder)
    thetas = {}
    for update in ("step", "sam"):
        bundle = load_bundle(bundle_path)
        adapter = bench_adapter(bundle, entropy_method(update, rho), torch.device("cpu"))
        adapter.step(batch)
        thetas[update] = torch.cat([p.detach().flatten() for p in adapter.params])
    if rho == 0:
        torch.testing.assert_close(thetas["sam"], thetas["step"])
    else:
        assert not torch.allclose(thetas["sam"], thetas["step"])


def test_sar_preset_is_sam_with_recovery_around_sgd(bundle_path: Path, tmp_path: Path) -> None:
    adapter = make_adapter(bundle_path, "sar", tmp_path)
    rule = adapter.update_rule
    assert isinstance(rule, SharpnessAware)
    assert (rule.rho, rule.reset_below, rule.ema_momentum) == (0.05, 0.2, 0.9)
    assert isinstance(rule.base.optimizer, torch.optim.SGD)
    assert [objective.name for objective in adapter.objectives] == ["reliable-entropy"]
    assert adapter.method.update == "sam"


def test_recovery_returns_the_smoothed_statistics_to_the_source_too(bundle_path: Path, clean_folder: Path) -> None:
    """SAR resets the model; with smoothed statistics they are part of it, not just θ."""
    method = Method(
        "test", "", True, ("entropy",), "sgd", 0.5, update="sam", update_options={"reset_below": 1e9}, norm="robust"
    )
    adapter = bench_adapter(load_bundle(bundle_path), method, torch.device("cpu"))
    source = copy.deepcopy(adapter.state_dict())
    result = adapter.step(first_batch(clean_folder))
    assert [event.kind for event in result.events] == [EventKind.RESET]
    for name, value in source["buffers"].items():
        assert torch.equal(adapter.state_dict()["buffers"][name], value), name
    for name, value in source["params"].items():
        assert torch.equal(adapter.named_params[name], value), name
