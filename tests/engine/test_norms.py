"""Normalisation of test batches: RoTTA's robust BN and DELTA's TBR, by hand and through the engine."""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.bench.test_sar import entropy_method
from tests.conftest import CLASSES, MEAN, STD, write_image_folder
from tests.engine.test_adapter import first_batch, make_adapter
from tests.models.test_typicality import source_like
from tta_cli.bench.protocols import bench_adapter
from tta_cli.config import WeightedNormConfig, load_config
from tta_cli.engine.build import resolve_method
from tta_cli.engine.norms import NORMS, Prediction, WeightedNorm, use_norm
from tta_cli.engine.norms.weighted import ONE_CLASS
from tta_cli.errors import UsageError
from tta_cli.events import EventKind
from tta_cli.models import load_bundle
from tta_cli.models.typicality import Typicality, measure_typicality
from tta_cli.streams import FolderStream, Framing, Preprocess, batches

# One channel, four values: batch mean 2, biased variance (9 + 1 + 1 + 9) / 4 = 5.
VALUES = torch.tensor([-1.0, 1.0, 3.0, 5.0])


def one_channel_layer(mean: float, var: float, kind: type[nn.Module] = nn.BatchNorm2d) -> nn.Module:
    """A one-channel BatchNorm with source statistics ``mean, var`` and eps 0, for round numbers."""
    layer = kind(1, eps=0.0)
    layer.running_mean.fill_(mean)
    layer.running_var.fill_(var)
    return layer


def test_robust_bn_by_hand() -> None:
    layer = one_channel_layer(0.0, 1.0)
    use_norm(layer, "robust")
    out = layer(VALUES.view(4, 1, 1, 1)).flatten()
    # μ = 0.95·0 + 0.05·2 = 0.1; σ² = 0.95·1 + 0.05·5 = 1.2 (RoTTA's biased batch variance;
    # the unbiased 20/3 would give 1.2833).
    torch.testing.assert_close(layer.running_mean, torch.tensor([0.1]))
    torch.testing.assert_close(layer.running_var, torch.tensor([1.2]))
    assert int(layer.num_batches_tracked) == 1
    torch.testing.assert_close(out, (VALUES - 0.1) / math.sqrt(1.2))  # x = 5 → 4.4731
    # The eval-mode layer (the exported one) normalises with the statistics the batch left.
    layer.eval()
    torch.testing.assert_close(layer(VALUES.view(4, 1, 1, 1)).flatten(), out)


def test_robust_bn_keeps_the_batch_share_of_the_gradient() -> None:
    layer = one_channel_layer(0.0, 1.0, nn.BatchNorm1d)
    use_norm(layer, "robust")
    x = VALUES.view(4, 1).clone().requires_grad_()
    layer(x).sum().backward()
    assert x.grad is not None
    # Through μ = 0.1 + 0.05·mean(x) alone the gradient of Σ (x − μ)/σ would be (1 − 4·0.05/4)/σ;
    # σ² also depends on x, which moves each coordinate differently.
    assert not torch.allclose(x.grad, torch.full_like(x.grad, 0.95 / math.sqrt(1.2)))
    assert not torch.allclose(x.grad, torch.full_like(x.grad, 1 / math.sqrt(1.2)))


def test_tbr_by_hand() -> None:
    layer = one_channel_layer(1.0, 4.0)
    use_norm(layer, "tbr")
    x = VALUES.view(4, 1, 1, 1).clone().requires_grad_()
    out = layer(x)
    # (x − μ_b)/σ_b · σ_b/σ_ema + (μ_b − μ_ema)/σ_ema = (x − μ_ema)/σ_ema = (x − 1)/2.
    torch.testing.assert_close(out.flatten(), torch.tensor([-1.0, 0.0, 1.0, 2.0]))
    # Then μ_ema = 0.95·1 + 0.05·2 and σ_ema = 0.95·2 + 0.05·sqrt(5), stored as a variance.
    torch.testing.assert_close(layer.running_mean, torch.tensor([1.05]))
    torch.testing.assert_close(layer.running_var, torch.tensor([(1.9 + 0.05 * math.sqrt(5)) ** 2]))

    # The gradient flows through the batch statistics: Σ x̂ is 0 whatever x, so its gradient is
    # 0, where eval-mode normalisation with the same values gives 1/σ_ema = 0.5 per input.
    out.sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad.flatten(), torch.zeros(4))
    plain = one_channel_layer(1.0, 4.0).eval()
    y = x.detach().clone().requires_grad_()
    plain(y).sum().backward()
    assert y.grad is not None
    torch.testing.assert_close(y.grad.flatten(), torch.full((4,), 0.5))


def test_configuring_again_undoes_the_norm_and_keeps_the_state_dict_keys() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.BatchNorm1d(16))
    keys = list(model.state_dict())
    for norm in ("robust", "tbr"):
        use_norm(model, norm)
        assert all("forward" in layer.__dict__ for layer in (model[1], model[3]))
        assert list(model.state_dict()) == keys
    use_norm(model, "batch")
    assert model[1].training and "forward" not in model[1].__dict__
    use_norm(model, None)
    assert not model[3].training and "forward" not in model[3].__dict__
    with pytest.raises(UsageError, match="keeps no running statistics"):
        use_norm(nn.BatchNorm2d(2, track_running_stats=False), "tbr")


def stream_probabilities(bundle_path: Path, method: str, folder: Path, tmp_path: Path) -> torch.Tensor:
    adapter = make_adapter(bundle_path, method, tmp_path)
    stream = batches(FolderStream(folder, Framing((32, 32)), CLASSES), 4, Preprocess(MEAN, STD))
    return torch.cat([adapter.step(batch).probabilities for batch in stream])


def test_robust_stays_closer_to_the_source_on_a_class_sorted_stream(bundle_path: Path, tmp_path: Path) -> None:
    # Sorted by class, four images a batch: every batch holds one class.
    folder = write_image_folder(tmp_path / "sorted", per_class=8, seed=2)
    source = stream_probabilities(bundle_path, "source", folder, tmp_path)
    gaps = {
        method: (stream_probabilities(bundle_path, method, folder, tmp_path) - source).abs().sum(1).mean().item()
        for method in ("norm", "norm+robust", "norm+tbr")
    }
    assert gaps["norm+robust"] < gaps["norm"] / 3
    assert gaps["norm+tbr"] < gaps["norm"] / 3
    assert gaps["norm+robust"] > 1e-3, "the smoothed statistics still move the predictions"


def test_the_config_overrides_the_method_norm(bundle_path: Path, tmp_path: Path) -> None:
    config = load_config(None, {"model": bundle_path, "source": tmp_path, "method": "tent", "norm": "tbr"})
    method = resolve_method(config.method, config.norm)
    assert (method.name, method.norm, method.objectives) == ("tent+tbr", "tbr", ("entropy",))
    assert resolve_method(config.method).norm == "batch"
    assert resolve_method("source", config.norm).batch_statistics
    with pytest.raises(UsageError, match="norm"):
        load_config(None, {"model": bundle_path, "source": tmp_path, "norm": "layer"})
    for norm in NORMS:
        assert load_config(None, {"model": bundle_path, "source": tmp_path, "norm": norm}).norm == norm


@pytest.mark.parametrize("norm", ["batch", "robust", "tbr", "weighted"])
def test_a_second_look_at_the_batch_starts_from_the_same_statistics(
    bundle_path: Path, clean_folder: Path, norm: str
) -> None:
    """SAM with ρ = 0 re-evaluates the batch at the same θ: it must find the same gradient, and
    leave the statistics as one forward does."""
    batch = first_batch(clean_folder)
    thetas, statistics = {}, {}
    for update in ("step", "sam"):
        method = replace(entropy_method(update, 0.0), norm=norm)
        adapter = bench_adapter(load_bundle(bundle_path), method, torch.device("cpu"))
        adapter.step(batch)
        thetas[update] = torch.cat([p.detach().flatten() for p in adapter.params])
        statistics[update] = adapter.state_dict()["buffers"]
    torch.testing.assert_close(thetas["sam"], thetas["step"])
    for name, value in statistics["step"].items():
        assert torch.equal(statistics["sam"][name], value), name


def test_auto_is_the_measured_default(bundle_path: Path, tmp_path: Path) -> None:
    from tta_cli.engine.methods import DEFAULT_METHOD

    config = load_config(None, {"model": bundle_path, "source": tmp_path})
    assert config.method == "auto"
    assert resolve_method(config.method, config.norm).name == DEFAULT_METHOD == "norm+weighted"


def test_balanced_rate_follows_the_class_spread_of_recent_predictions() -> None:
    from tta_cli.engine.norms import balanced_rate

    assert balanced_rate(list(range(10)) * 6, 10, 100) == pytest.approx(0.5)  # every class: h = 1
    assert balanced_rate([3] * 64, 10, 100) == pytest.approx(0.05)  # one class: h = 0
    assert balanced_rate([0, 1] * 32, 10, 100) == pytest.approx(0.05)  # h = log 2 / log 10 < 0.5
    # Four classes: h = log 4 / log 10 = 0.602, rate = 0.05 + 0.45 · (0.204)² = 0.0687.
    assert balanced_rate([0, 1, 2, 3] * 16, 10, 100) == pytest.approx(
        0.05 + 0.45 * (2 * math.log(4) / math.log(10) - 1) ** 2
    )
    assert balanced_rate([], 10, 100) == 0.05
    # The first batches: a running mean in which the source counts as one batch.
    assert [balanced_rate([3] * 64, 10, seen) for seen in (0, 1, 2)] == pytest.approx([1 / 2, 1 / 3, 1 / 4])


def test_balanced_moves_fast_on_a_mixed_stream_and_slowly_on_one_class(bundle_path: Path) -> None:
    """The same batch moves the statistics further after a window of many classes."""
    from tta_cli.engine.norms.layers import batch_norm_layers, set_rate

    bundle = load_bundle(bundle_path)
    x = torch.randn(8, 3, 32, 32) * 3 + 1
    moved = {}
    for rate in (0.05, 0.5):
        model = copy.deepcopy(bundle.model)
        use_norm(model, "balanced")
        set_rate(batch_norm_layers(model), rate)
        first = next(module for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d))
        before = first.running_mean.clone()
        model(x)
        moved[rate] = (first.running_mean - before).norm().item()
    assert moved[0.5] == pytest.approx(10 * moved[0.05], rel=1e-4)


def six_layer_model() -> nn.Module:
    """Six BatchNorm layers: the first three are the shallow half."""
    return nn.Sequential(*[nn.BatchNorm2d(8) for _ in range(6)])


def test_weighted_counts_independent_batches_at_their_size() -> None:
    from tta_cli.engine.norms import WeightedNorm

    model = six_layer_model()
    weights = WeightedNorm(model)
    generator = torch.Generator().manual_seed(0)
    rates = [weights.observe(torch.randn(64, 8, 4, 4, generator=generator)) for _ in range(12)]
    # Before two batches: D = start = 4, so 64 images count as 16 against the prior's 64.
    assert rates[0] == pytest.approx(16 / 80)
    # Draws of one distribution: consecutive means differ by their sampling noise, D ≈ 1.
    assert weights.design_effect < 1.5
    assert rates[-1] == pytest.approx(64 / weights.design_effect / (64 / weights.design_effect + 64))
    deep = [layer.smoothing_rate for layer in list(model)[3:]]
    assert deep == pytest.approx([rates[-1] * (2 - weights.design_effect)] * 3)


def test_weighted_discounts_clustered_batches_and_freezes_the_deeper_half() -> None:
    """Batches that are clusters (each its own class) say little about the domain."""
    from tta_cli.engine.norms import WeightedNorm

    model = six_layer_model()
    # These clusters lie a source standard deviation apart, which ``jump`` would take for changes
    # of domain (``test_weighted_jumps_to_a_far_batch``).
    weights = WeightedNorm(model, WeightedNormConfig(jump=False))
    generator = torch.Generator().manual_seed(0)
    for _ in range(12):
        centre = torch.randn(1, 8, 1, 1, generator=generator)
        rate = weights.observe(centre + 0.5 * torch.randn(64, 8, 4, 4, generator=generator))
    assert weights.design_effect > 10
    assert rate < 64 / 10 / (64 / 10 + 64)
    assert [layer.smoothing_rate for layer in list(model)[:3]] == pytest.approx([rate] * 3)
    assert [layer.smoothing_rate for layer in list(model)[3:]] == [0.0] * 3
    # One change of domain among independent batches is an outlier, not a trend.
    weights.clear()
    for index in range(8):
        shift = 5.0 if index == 4 else 0.0
        weights.observe(shift + torch.randn(64, 8, 4, 4, generator=generator))
    assert weights.design_effect < 1.5


def test_weighted_jumps_to_a_far_batch() -> None:
    """A batch far beyond the statistics in use replaces them (rate 1); one near them does not."""
    from tta_cli.engine.norms import WeightedNorm

    model = six_layer_model()
    weights = WeightedNorm(model)
    generator = torch.Generator().manual_seed(0)

    def predict(shift: float) -> float:
        with weights.watch(), torch.no_grad():
            model(shift + torch.randn(64, 8, 4, 4, generator=generator))
        return float(model[0].smoothing_rate)

    assert predict(0.0) < 1 and not weights.jumped
    assert predict(3.0) == 1.0 and weights.jumped
    assert model[0].running_mean.mean() == pytest.approx(3.0, abs=0.1)
    # A jump is one batch's: the next batch of the new domain lies near the estimate it set.
    assert predict(3.0) < 1 and not weights.jumped


def test_weighted_learns_from_the_forward_that_predicts_only(
    bundle_path: Path, clean_folder: Path, tmp_path: Path
) -> None:
    """Another forward (a second look at the batch, a memory batch) does not count as the stream."""
    adapter = make_adapter(bundle_path, "tent+weighted", tmp_path)
    weights = adapter.norm
    assert isinstance(weights, WeightedNorm)
    batch = first_batch(clean_folder)
    adapter.step(batch)
    adapter.step(batch)
    assert len(weights.ratios) == 1
    adapter.model(batch.images)
    assert len(weights.ratios) == 1
    state = adapter.state_dict()["norm"]
    adapter.step(batch)
    assert len(weights.ratios) == 2
    adapter.load_state_dict({**adapter.state_dict(), "norm": state})
    assert weights.state_dict()["ratios"] == state["ratios"]
    adapter.load_state_dict({**adapter.state_dict(), "norm": {}})
    assert (len(weights.ratios), weights.previous, weights.design_effect) == (0, None, weights.settings.start)


def weighted_model() -> tuple[nn.Module, object]:
    """Six BatchNorm layers at source statistics (0, 1), normalising as "weighted"."""
    from tta_cli.engine.norms import WeightedNorm

    model = six_layer_model()
    return model, WeightedNorm(model)


def feed(model: nn.Module, weights: object, batch: torch.Tensor) -> torch.Tensor:
    with weights.watch(), torch.no_grad():  # type: ignore[attr-defined]
        return model(batch)


def test_weighted_keeps_the_source_statistics_for_a_shift_within_its_noise_on_clustered_batches() -> None:
    """Batches of one class each, in a domain that is the source's: the estimate's departure is
    the classes seen so far, within its error, and the layers normalise with the source's."""
    model, weights = weighted_model()
    generator = torch.Generator().manual_seed(0)
    for _ in range(12):
        centre = 0.3 * torch.randn(1, 8, 1, 1, generator=generator)
        feed(model, weights, centre + torch.randn(64, 8, 4, 4, generator=generator))
    assert weights.design_effect > 2 and weights.shrinkage == pytest.approx(5.0)  # type: ignore[attr-defined]
    first = model[0]
    stream = weights.estimates[0]  # type: ignore[attr-defined]
    assert not torch.equal(stream.mean, torch.zeros(8)), "the estimate moves"
    assert torch.equal(first.running_mean, torch.zeros(8)) and torch.equal(first.running_var, torch.ones(8))
    # A shift far beyond the noise is normalised with in full, clustered or not.
    for _ in range(30):
        centre = 3 + 0.3 * torch.randn(1, 8, 1, 1, generator=generator)
        feed(model, weights, centre + torch.randn(64, 8, 4, 4, generator=generator))
    # (Within 5 %: the jump to the new domain's first batch carries that clustered batch's error.)
    torch.testing.assert_close(first.running_mean, stream.mean, rtol=0.05, atol=0)
    assert first.running_mean.mean() > 0.5


def test_weighted_normalises_independent_batches_with_its_estimate() -> None:
    model, weights = weighted_model()
    generator = torch.Generator().manual_seed(0)
    for _ in range(6):
        feed(model, weights, 0.2 + torch.randn(64, 8, 4, 4, generator=generator))
    assert weights.design_effect < 1.5 and weights.shrinkage < 2.5  # type: ignore[attr-defined]
    # The first layer sees the shift (the later ones see its normalised output).
    torch.testing.assert_close(model[0].running_mean, weights.estimates[0].mean, rtol=0.02, atol=0)  # type: ignore[attr-defined]


def test_weighted_returns_to_the_source_when_a_batch_fits_it_better() -> None:
    """A strong shift, then the source's domain again: the estimates restart from the source's
    at once instead of unlearning the shift at the slow rate of clustered batches."""
    model, weights = weighted_model()
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        feed(model, weights, 2 + 0.2 * torch.randn(64, 8, 4, 4, generator=generator))
    assert weights.returns == 0  # type: ignore[attr-defined]
    assert model[0].running_var.mean() < 0.5
    feed(model, weights, torch.randn(64, 8, 4, 4, generator=generator))
    assert weights.returned and weights.returns == 1  # type: ignore[attr-defined]
    for stream in weights.estimates:  # type: ignore[attr-defined]
        assert (stream.mean - stream.source[0]).abs().max() < 0.2
    assert (model[0].running_var - 1).abs().max() < 0.5


def test_weighted_moves_nothing_outside_the_forward_that_predicts() -> None:
    model, weights = weighted_model()
    generator = torch.Generator().manual_seed(0)
    feed(model, weights, 1 + torch.randn(64, 8, 4, 4, generator=generator))
    state = copy.deepcopy(weights.state_dict())  # type: ignore[attr-defined]
    buffers = copy.deepcopy(model.state_dict())
    other = torch.randn(16, 8, 4, 4, generator=generator)
    expected = torch.nn.functional.batch_norm(
        other, model[0].running_mean, model[0].running_var, model[0].weight, model[0].bias, False, 0.0, model[0].eps
    )
    torch.testing.assert_close(model[0](other), expected)
    model(other)
    for name, value in model.state_dict().items():
        assert torch.equal(value, buffers[name]), name
    assert weights.state_dict()["estimates"][0]["mean"].equal(state["estimates"][0]["mean"])  # type: ignore[attr-defined]


def test_a_step_that_returns_to_the_source_says_so(bundle_path: Path, clean_folder: Path, tmp_path: Path) -> None:
    from tta_cli.config import AdaptConfig
    from tta_cli.engine.build import adapter_for
    from tta_cli.streams import Batch

    bundle = load_bundle(bundle_path)
    clean = first_batch(clean_folder)
    # The test bundle's random weights come with BatchNorm's initial statistics: measure them on
    # the clean batch, so that it is the source's domain.
    for layer in bundle.model.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.reset_running_stats()
            layer.momentum = None
    with torch.no_grad():
        bundle.model.train()(clean.images)
    bundle.model.eval()
    config = AdaptConfig(model=bundle_path, source=tmp_path, run=tmp_path / "run", method="tent+weighted")
    adapter = adapter_for(bundle, config, torch.device("cpu"))
    assert adapter.reference is not None and not adapter.reference.training, "the guard's reference runs in eval mode"
    dark = Batch(clean.ids, 0.1 * clean.images - 1.5, clean.labels)
    kinds = [[event.kind for event in adapter.step(batch).events] for batch in [dark] * 6 + [clean]]
    assert not any(EventKind.NORM_RETURN in step for step in kinds[:6])
    assert EventKind.NORM_RETURN in kinds[6]
    assert isinstance(adapter.norm, WeightedNorm) and adapter.norm.returns == 1
    assert make_adapter(bundle_path, "norm+weighted", tmp_path).reference is None, "nothing to compare without a step"


def test_weighted_returns_to_the_source_when_its_statistics_spread_one_class_less_confidently() -> None:
    """One class for a long time: the batches are independent draws, but normalising with
    their statistics removes the class; the source's statistics predict it, more confidently."""
    model, weights = weighted_model()
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):  # near the source's statistics (the bundle has no typicality to ask)
        feed(model, weights, 0.3 + torch.randn(64, 8, 4, 4, generator=generator))
    assert weights.source_divergence < 0.25  # type: ignore[attr-defined]
    used = copy.deepcopy(model.state_dict())
    confident = torch.tensor([[8.0, 0.0, 0.0]] * 64)
    uncertain = torch.tensor([[1.0, 0.5, 0.0]] * 64)

    assert weights.second_look(lambda: uncertain, confident).logits is confident  # type: ignore[attr-defined]
    for name, value in model.state_dict().items():
        assert torch.equal(value, used[name]), "kept: the buffers hold what normalised the batch"
    assert not weights.returned  # type: ignore[attr-defined]

    chosen = weights.second_look(lambda: confident, uncertain)  # type: ignore[attr-defined]
    assert torch.equal(chosen.logits, confident) and not chosen.learn
    assert weights.returned == ONE_CLASS and weights.returns == 1  # type: ignore[attr-defined]
    assert weights.agreement is None, "the deferral's averages restart with the estimates"  # type: ignore[attr-defined]
    for layer, stream in zip(model, weights.estimates, strict=True):  # type: ignore[attr-defined]
        assert torch.equal(layer.running_mean, stream.source[0]) and torch.equal(stream.mean, stream.source[0])


def test_a_confident_source_far_from_its_own_statistics_is_no_reason_to_return() -> None:
    """Without the bundle's typicality: a shift that makes the source collapse, confidently,
    lies far from the source's statistics at the first layer; a stream of one class of the
    source's domain does not."""
    confident = torch.tensor([[8.0, 0.0, 0.0]] * 64)
    uncertain = torch.tensor([[0.5, 1.0, 0.0]] * 64)  # another class: no mild shift
    generator = torch.Generator().manual_seed(0)
    for shift, returns in ((0.3, True), (3.0, False)):
        model = six_layer_model()
        weights = WeightedNorm(model)
        feed(model, weights, shift + torch.randn(64, 8, 4, 4, generator=generator))
        assert (weights.source_divergence <= 0.5) is returns
        prediction = weights.second_look(lambda: confident, uncertain)
        assert (weights.returns == 1) is returns and prediction.learn is not returns


def looked(model: nn.Module, batch: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """A second look that runs ``model`` on ``batch`` and predicts ``logits``."""
    model(batch)
    return logits


def scene_and_noise() -> tuple[nn.Module, Typicality | None, torch.Tensor, torch.Tensor]:
    """A source model with its typicality, a batch of one scene (typical images, far from the
    pooled statistics) and one under strong noise (atypical images, near them)."""
    generator = torch.Generator().manual_seed(0)
    source = six_layer_model().eval()
    source[0].running_var.fill_(5.0)
    typicality = measure_typicality(source, (source_like(100, generator) for _ in range(8)))
    scene = source_like(1, generator).expand(64, -1, -1, -1) + 0.1 * torch.randn(64, 8, 4, 4, generator=generator)
    return source, typicality, scene, source_like(64, generator, noise=3.0)


def test_a_collapse_is_told_from_one_scene_by_how_typical_its_images_are() -> None:
    """Source images vary in brightness (std 2 per channel) around 0. One scene lies far from
    the pooled statistics (divergence 2 at the first layer) but each of its images is typical;
    strong noise lies near them (0.25) but none of its images is. With the bundle's typicality
    the one-class return follows the images, not the batch's statistics."""
    confident = torch.tensor([[8.0, 0.0, 0.0]] * 64)
    uncertain = torch.tensor([[0.5, 1.0, 0.0]] * 64)
    source, typicality, scene, noisy = scene_and_noise()
    cases = ((scene, True, True), (noisy, True, False), (scene, False, False), (noisy, False, True))
    for batch, measured, returns in cases:
        model = copy.deepcopy(source)
        weights = WeightedNorm(model, typicality=typicality if measured else None)
        feed(model, weights, batch)
        assert (weights.source_divergence > 0.5) is (batch is scene)
        prediction = weights.second_look(functools.partial(looked, model, batch, confident), uncertain)
        assert (weights.returns == 1) is returns and prediction.learn is not returns


def test_weighted_defers_to_the_source_while_its_estimates_change_little_and_gain_nothing() -> None:
    """A mild shift: the estimates agree with the source's on nearly every prediction and do
    not make them more confident, so the source's statistics predict while the estimates go on;
    once they make the predictions clearly more confident, they predict again."""
    model, weights = weighted_model()
    generator = torch.Generator().manual_seed(0)
    feed(model, weights, 0.2 + torch.randn(64, 8, 4, 4, generator=generator))
    estimates = copy.deepcopy(weights.state_dict()["estimates"])  # type: ignore[attr-defined]
    logits = torch.randn(64, 3, generator=generator)
    source_logits = logits + 0.01 * torch.randn(64, 3, generator=generator)

    chosen = weights.second_look(lambda: source_logits, logits)  # type: ignore[attr-defined]
    assert torch.equal(chosen.logits, source_logits) and not chosen.learn
    assert weights.deferring and weights.returns == 0  # type: ignore[attr-defined]
    for layer, stream, estimate in zip(model, weights.estimates, estimates, strict=True):  # type: ignore[attr-defined]
        assert torch.equal(layer.running_mean, stream.source[0]), "the buffers hold what predicted"
        assert torch.equal(stream.mean, estimate["mean"]), "the estimates are kept"

    confident = 10 * logits
    for _ in range(4):
        feed(model, weights, 0.2 + torch.randn(64, 8, 4, 4, generator=generator))
        written = model[0].running_mean.clone()
        chosen = weights.second_look(lambda: source_logits, confident)  # type: ignore[attr-defined]
    assert torch.equal(chosen.logits, confident) and not weights.deferring  # type: ignore[attr-defined]
    assert torch.equal(model[0].running_mean, written)

    state = copy.deepcopy(weights.state_dict())  # type: ignore[attr-defined]
    weights.clear()  # type: ignore[attr-defined]
    assert weights.agreement is None and not weights.deferring  # type: ignore[attr-defined]
    weights.load_state_dict(state)  # type: ignore[attr-defined]
    assert (weights.agreement, weights.log_ratio) == (state["agreement"], state["log_ratio"])  # type: ignore[attr-defined]


def test_a_non_finite_entropy_leaves_the_deferral_averages_alone() -> None:
    _, weights = weighted_model()
    logits = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    weights.second_look(lambda: logits, logits)  # type: ignore[attr-defined]
    before = (weights.agreement, weights.log_ratio)  # type: ignore[attr-defined]
    broken = logits.clone()
    broken[0, 0] = float("nan")
    weights.second_look(lambda: logits, broken)  # type: ignore[attr-defined]
    assert (weights.agreement, weights.log_ratio) == before  # type: ignore[attr-defined]


NO_JUMP = WeightedNormConfig(jump=False)
"""The test bundle's statistics come from 18 images, so that its own batches lie far from them;
the tests of the other mechanisms need them taken as the source's domain."""


def test_a_deferral_across_a_reset_is_noted_once(bundle_path: Path, clean_folder: Path, tmp_path: Path) -> None:
    adapter = make_adapter(bundle_path, "norm+weighted+reset2", tmp_path, weighted_norm=NO_JUMP)
    batch = first_batch(clean_folder)
    kinds = [event.kind for _ in range(5) for event in adapter.step(batch).events]
    assert EventKind.RESET in kinds
    assert kinds.count(EventKind.DEFER) == 1 and EventKind.DEFER_END not in kinds


def test_a_step_on_a_mild_shift_says_so_and_takes_no_gradient_step(
    bundle_path: Path, clean_folder: Path, tmp_path: Path
) -> None:
    adapter = make_adapter(bundle_path, "tent+weighted", tmp_path, weighted_norm=NO_JUMP)
    batch = first_batch(clean_folder)
    before = torch.cat([param.detach().flatten() for param in adapter.params])
    # The test bundle's random weights predict about as uncertainly with any statistics.
    results = [adapter.step(batch) for _ in range(3)]
    assert [[event.kind for event in result.events] for result in results] == [[EventKind.DEFER], [], []]
    assert not any(result.losses for result in results)
    assert torch.equal(torch.cat([param.detach().flatten() for param in adapter.params]), before)


def test_a_step_whose_second_look_prefers_the_source_takes_no_gradient_step(
    bundle_path: Path, clean_folder: Path, tmp_path: Path
) -> None:
    adapter = make_adapter(bundle_path, "tent+weighted", tmp_path, weighted_norm=NO_JUMP)
    weights = adapter.norm
    assert isinstance(weights, WeightedNorm)

    def prefer_source(look_again, logits):  # type: ignore[no-untyped-def]
        weights._return(ONE_CLASS)
        return Prediction(look_again().detach(), learn=False, why_not="the source's statistics predicted the batch")

    weights.second_look = prefer_source  # type: ignore[method-assign]
    before = torch.cat([param.detach().flatten() for param in adapter.params])
    result = adapter.step(first_batch(clean_folder))
    assert [event.kind for event in result.events] == [EventKind.NORM_RETURN, EventKind.NO_UPDATE]
    assert torch.equal(torch.cat([param.detach().flatten() for param in adapter.params]), before)


def test_the_second_look_leaves_the_features_of_the_first_for_the_objectives(
    bundle_path: Path, clean_folder: Path, tmp_path: Path
) -> None:
    """The feature-alignment objective learns from the predicting forward's features, not from
    those of the second look (taken without gradient)."""
    never_mild = WeightedNormConfig(agreement=1.0)  # every step updates
    adapter = make_adapter(bundle_path, "harmonized+weighted", tmp_path, weighted_norm=never_mild)
    before = torch.cat([param.detach().flatten() for param in adapter.params])
    for _ in range(2):
        result = adapter.step(first_batch(clean_folder))
    assert set(result.losses) == {"entropy", "alignment"}
    assert not torch.equal(torch.cat([param.detach().flatten() for param in adapter.params]), before)


def test_a_typical_batch_the_source_sees_as_one_class_returns_when_the_estimates_lose_confidence() -> None:
    """A network whose estimates spread a batch of one clean class over the classes and lose a
    little confidence (ResNet-20 on birds): the source's predictions of typical images, most of
    them one class, say the stream shows one class. Not for atypical images (a collapse), nor
    where the estimates are the more confident (they correct a shift that the source answers with
    one class), nor where one class is no more than twice an even share of the batch."""
    source, typicality, scene, noisy = scene_and_noise()
    mostly = torch.tensor([[4.0, 0.0, 0.0, 0.0]] * 3 + [[0.0, 4.0, 0.0, 0.0]])  # 3 of 4: over half
    spread = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    less_sure, surer = 3.8 * spread, 8.0 * spread  # more entropy than the source's, and less
    cases = ((scene, mostly, less_sure, True), (noisy, mostly, less_sure, False), (scene, mostly, surer, False))
    for batch, source_logits, estimates, returns in (*cases, (scene, mostly[:, :2], less_sure[:, :2], False)):
        model = copy.deepcopy(source)
        weights = WeightedNorm(model, typicality=typicality)
        feed(model, weights, batch)
        prediction = weights.second_look(functools.partial(looked, model, batch, source_logits), estimates)
        assert (weights.returns == 1) is returns
        assert torch.equal(prediction.logits, source_logits if returns else estimates)
        assert weights.returned == (ONE_CLASS if returns else "")


@pytest.mark.parametrize("norm", ["robust", "tbr", "balanced"])
def test_the_guard_s_reference_normalises_as_the_model_does(bundle_path: Path, tmp_path: Path, norm: str) -> None:
    """Each smoothed norm's reference moves its BatchNorm statistics with the batch, as the model's
    layers do: a reference on the statistics of before the batch is the source, not a reference."""
    adapter = make_adapter(bundle_path, f"tent+{norm}+guard", tmp_path)
    assert adapter.reference is not None
    layers = [layer for layer in adapter.reference.modules() if isinstance(layer, nn.BatchNorm2d)]
    assert layers and all(layer.training and "forward" in layer.__dict__ for layer in layers)
