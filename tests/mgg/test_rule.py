from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load, save, save_file

from tests.mgg.test_generator import make_generator
from tta_cli.errors import UsageError
from tta_cli.history.state import dumps_skeleton, flatten_state, unflatten_state
from tta_cli.mgg import MetaGradientGenerator, MGGRule, load_generator, read_metadata, save_generator


def gradients(count: int, size: int = 50, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(size, generator=generator) * 1e-2 for _ in range(count)]


def through_history(state: dict) -> dict:
    """What a snapshot gives back: flattened into safetensors and read again."""
    tensors, skeleton = flatten_state(state)
    payload = save(tensors, metadata={"skeleton": dumps_skeleton(skeleton)})
    return unflatten_state(load(payload), json.loads(dumps_skeleton(skeleton)))


def test_adam_features_are_normalised_gradient_and_first_moment() -> None:
    rule = MGGRule(make_generator())
    gradient = torch.tensor([2.0, -0.5])
    features = rule.features(gradient)
    # First step: m̂ = g and v̂ = g², so both features are sign(g) (up to ε).
    torch.testing.assert_close(features, torch.tensor([[1.0, 1.0], [-1.0, -1.0]]))
    features = rule.features(torch.tensor([0.0, 0.0]))
    assert features[:, 0].abs().max() == 0 and (features[:, 1] != 0).all()


def test_apply_moves_theta_by_at_most_the_step_size() -> None:
    rule = MGGRule(make_generator(), step_size=1e-3)
    params = [torch.nn.Parameter(torch.ones(20)), torch.nn.Parameter(torch.zeros(3, 10))]
    before = torch.cat([param.detach().flatten() for param in params])
    rule.apply(params, gradients(1)[0])
    moved = torch.cat([param.detach().flatten() for param in params]) - before
    assert 0 < moved.abs().max() <= 1e-3


def test_memory_is_carried_and_changes_across_steps() -> None:
    generator = make_generator()
    first, second = MGGRule(generator), MGGRule(generator)
    memories = []
    with torch.no_grad():
        for gradient in gradients(4):
            torch.testing.assert_close(first.direction(gradient), second.direction(gradient), rtol=0, atol=0)
            memories.append(first.memory.weight.clone())
    assert not torch.equal(memories[-2], memories[-1])
    assert not first.memory.weight.requires_grad

    # Same moments, forgotten memory: the output differs, so the memory matters.
    forgetful = MGGRule(generator)
    forgetful.load_state_dict(first.state_dict())
    forgetful.memory = None
    with torch.no_grad():
        gradient = gradients(1, seed=9)[0]
        assert not torch.equal(first.direction(gradient), forgetful.direction(gradient))


@pytest.mark.parametrize("memory", [True, False])
def test_state_round_trip_through_a_snapshot_is_bit_for_bit(memory: bool) -> None:
    generator = make_generator(memory=memory)
    params = [torch.nn.Parameter(torch.randn(50))]
    rule = MGGRule(generator)
    steps = gradients(6)
    for gradient in steps[:3]:
        rule.apply(params, gradient)
    saved_theta, saved_state = params[0].detach().clone(), through_history(rule.state_dict())
    assert saved_state["steps"] == 3 and ("memory" in saved_state) == memory
    for gradient in steps[3:]:
        rule.apply(params, gradient)
    continued = params[0].detach().clone()

    restored_params = [torch.nn.Parameter(saved_theta.clone())]
    restored = MGGRule(generator)
    restored.load_state_dict(saved_state)
    for gradient in steps[3:]:
        restored.apply(restored_params, gradient)
    assert torch.equal(restored_params[0].detach(), continued)
    for key, value in rule.state_dict().items():
        if torch.is_tensor(value):
            assert torch.equal(value, restored.state_dict()[key])


def test_loading_a_fresh_state_forgets_everything() -> None:
    rule = MGGRule(make_generator())
    fresh = rule.state_dict()
    for gradient in gradients(2):
        rule.direction(gradient)
    rule.load_state_dict(fresh)
    assert rule.steps == 0 and rule.memory is None and rule.first_moment is None


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    generator = make_generator()
    path = tmp_path / "mgg.safetensors"
    save_generator(generator, path, {"seed": 3, "held_out": ["spatter"]})
    loaded = load_generator(path)
    assert read_metadata(path) == {"held_out": ["spatter"], "seed": 3}
    for name, value in generator.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name])
    assert not any(param.requires_grad for param in loaded.parameters())
    assert not list(tmp_path.glob(".mgg*")), "no temporary file is left behind"
    assert path.stat().st_mode & 0o777 == 0o644


def test_load_generator_refuses_bad_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.safetensors"
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, str(foreign))
    truncated = tmp_path / "truncated.safetensors"
    save_generator(make_generator(), truncated, {})
    truncated.write_bytes(truncated.read_bytes()[:-40])
    wrong_shapes = tmp_path / "wrong.safetensors"
    save_generator(make_generator(), wrong_shapes, {})
    tensors = load(wrong_shapes.read_bytes())
    tensors["output.weight"] = torch.zeros(1, 9)
    with safe_open(str(wrong_shapes), framework="pt") as handle:
        header = handle.metadata()
    save_file(tensors, str(wrong_shapes), metadata=header)
    unknown_dtype = tmp_path / "dtype.safetensors"  # a dtype this torch has no name for
    header = json.dumps({"weight": {"dtype": "F8_E8M0", "shape": [1], "data_offsets": [0, 1]}}).encode()
    unknown_dtype.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00")
    for path in (missing, garbage, foreign, truncated, wrong_shapes, unknown_dtype):
        with pytest.raises(UsageError) as caught:
            load_generator(path)
        message = str(caught.value)
        assert str(path) in message and message.count(".") >= 1 and "\n" not in message


def test_an_anchored_rule_takes_back_its_pull_of_the_distance_from_the_source() -> None:
    generator = MetaGradientGenerator(anchored=True)
    with torch.no_grad():
        generator.pull_weight.fill_(0.25)
    anchor = torch.zeros(50)
    params = [torch.nn.Parameter(torch.full((20,), 4.0)), torch.nn.Parameter(torch.full((30,), -8.0))]
    # α = 0 isolates the pull: θ ← θ − ρ·(θ − θ_source).
    MGGRule(generator, step_size=0.0, anchor=anchor).apply(params, gradients(1)[0])
    assert torch.equal(params[0].detach(), torch.full((20,), 3.0))
    assert torch.equal(params[1].detach(), torch.full((30,), -6.0))


@pytest.mark.parametrize("weight", [0.0, -0.01])
def test_the_pull_is_learned_through_the_step(weight: float) -> None:
    generator = MetaGradientGenerator(anchored=True)
    with torch.no_grad():
        generator.pull_weight.fill_(weight)
    assert generator.pull().item() == 0.0  # clamped: a weight below 0 pulls nothing
    theta = torch.randn(50)
    rule = MGGRule(generator, step_size=1e-2, anchor=torch.zeros(50))
    rule.step(theta, gradients(1)[0]).square().sum().backward()
    # Pulling towards 0 shrinks ‖θ‖²: the gradient asks for more pull, from below 0 too.
    assert generator.pull_weight.grad is not None and generator.pull_weight.grad < 0


def test_an_anchored_generator_needs_an_anchor_and_keeps_its_pull_in_the_file(tmp_path: Path) -> None:
    generator = MetaGradientGenerator(anchored=True)
    with pytest.raises(ValueError, match="anchor"):
        MGGRule(generator)
    with torch.no_grad():
        generator.pull_weight.fill_(0.125)
    save_generator(generator, tmp_path / "mgg.safetensors", {})
    loaded = load_generator(tmp_path / "mgg.safetensors")
    assert loaded.anchored and float(loaded.pull()) == 0.125
    # Unanchored: no pull, whatever anchor is given.
    plain = MGGRule(make_generator(), anchor=torch.zeros(3))
    assert plain.anchor is None and float(plain.generator.pull()) == 0.0


def test_a_scaled_generator_multiplies_every_step_and_keeps_its_scale_in_the_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    plain = MetaGradientGenerator()
    scaled = MetaGradientGenerator(scaled=True)
    scaled.load_state_dict(plain.state_dict() | {"scale_weight": torch.tensor(math.log(3.0))})
    features = torch.randn(40, 2)
    assert torch.allclose(scaled(features)[0], 3 * plain(features)[0])
    # The step's size is learned through the step, as the pull is.
    rule = MGGRule(scaled, step_size=1e-2)
    rule.step(torch.randn(50), gradients(1)[0]).square().sum().backward()
    assert scaled.scale_weight is not None and scaled.scale_weight.grad is not None
    save_generator(scaled, tmp_path / "mgg.safetensors", {})
    loaded = load_generator(tmp_path / "mgg.safetensors")
    assert loaded.scaled and math.isclose(float(loaded.scale()), 3.0, rel_tol=1e-6)
    save_generator(plain, tmp_path / "plain.safetensors", {})
    assert not load_generator(tmp_path / "plain.safetensors").scaled


def test_a_generator_pre_trained_for_other_weights_is_refused(bundle_path: Path, tmp_path: Path) -> None:
    """A bundle re-made with new weights beside an old generator: its updates would be meant for another model."""
    import shutil

    from tta_cli.mgg import rule_for_bundle
    from tta_cli.models import load_bundle

    bundle_copy = tmp_path / "bundle"
    shutil.copytree(bundle_path, bundle_copy)
    bundle = load_bundle(bundle_copy)
    params = list(bundle.model.parameters())
    save_generator(make_generator(), bundle_copy / "mgg.safetensors", {"bundle_weights_sha256": "0" * 64})
    with pytest.raises(UsageError, match="pre-trained for other weights"):
        rule_for_bundle(bundle, params)
    save_generator(make_generator(), bundle_copy / "mgg.safetensors", {"bundle_weights_sha256": bundle.weights_sha256})
    assert isinstance(rule_for_bundle(bundle, params), MGGRule)
