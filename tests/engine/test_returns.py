"""θ's return to the source when the images turn back towards the source's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.models.factories import group_norm_net
from tta_cli.engine.build import build_adapter
from tta_cli.engine.methods import get_method
from tta_cli.engine.returns import SourceReturn
from tta_cli.errors import UsageError
from tta_cli.events import EventKind
from tta_cli.models import load_bundle
from tta_cli.models.typicality import Typicality, measure_typicality
from tta_cli.models.zoo import ChannelLayerNorm
from tta_cli.streams import UNLABELED, Batch


def source_images(count: int, generator: torch.Generator) -> torch.Tensor:
    """Smooth images whose brightness varies from image to image: the source's kind."""
    brightness = torch.randn(count, 3, 1, 1, generator=generator)
    return brightness + 0.3 * torch.randn(count, 3, 8, 8, generator=generator)


def noisy_images(count: int, generator: torch.Generator) -> torch.Tensor:
    """The source's kind under strong sensor noise."""
    return source_images(count, generator) + 3 * torch.randn(count, 3, 8, 8, generator=generator)


def measured(model: nn.Module, generator: torch.Generator) -> Typicality:
    typicality = measure_typicality(model.eval(), (source_images(100, generator) for _ in range(4)))
    assert typicality is not None
    return typicality


def due(watch: SourceReturn, images: torch.Tensor) -> bool:
    """What the adapter asks before a batch: does it return? The batch joins the record."""
    moments = watch.moments(images)
    if moments is None:
        return False
    returns = watch.fits_source(moments)
    if returns:
        watch.load_state_dict({})
    watch.record(moments)
    return returns


def layer_norm_net(num_classes: int) -> nn.Module:
    """LayerNorm over each position's channels (ConvNeXt's, the zoo's airnet_ln)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        ChannelLayerNorm(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )


class Tokens(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


@pytest.mark.parametrize("network", [group_norm_net, layer_norm_net])
def test_a_stream_that_stays_shifted_never_returns_and_one_back_at_the_source_does(
    network: Callable[[int], nn.Module],
) -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    model = network(3)
    watch = SourceReturn(model, measured(model, generator))
    assert not any(due(watch, noisy_images(16, generator)) for _ in range(10))
    assert due(watch, source_images(16, generator)), "the first clean batch after the noise"
    assert watch.count == 1, "the record starts afresh from that batch"


def test_in_doubt_theta_returns() -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(3)
    model = group_norm_net(3)
    watch = SourceReturn(model, measured(model, generator))
    returns = sum(due(watch, source_images(16, generator)) for _ in range(200))
    assert returns > 120, "at the source's own images the few batches behind the record tip it to returning"


def test_a_batch_without_finite_moments_leaves_the_record_as_it_was() -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(4)
    model = group_norm_net(3)
    watch = SourceReturn(model, measured(model, generator))
    for _ in range(5):
        due(watch, noisy_images(16, generator))
    broken = noisy_images(16, generator)
    broken[0, 0, 0, 0] = float("nan")
    before = watch.state_dict()
    assert not due(watch, broken) and not due(watch, broken[:0])
    assert watch.count == before["count"] and torch.equal(watch.seen, before["seen"])
    assert due(watch, source_images(16, generator)), "a NaN must not stop every later return"


def test_a_model_whose_theta_changes_the_watched_input_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.InstanceNorm2d(8, affine=True), nn.GroupNorm(2, 8), nn.Flatten())
    with pytest.raises(UsageError, match="InstanceNorm2d before it"):
        SourceReturn(model, Typicality([torch.zeros(16)], [torch.ones(16)], 1.0))


def test_a_typicality_of_other_layers_is_refused() -> None:
    """A bundle prepared when LayerNorm layers did not count: measured at the GroupNorm alone."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), Tokens(), nn.LayerNorm(8), nn.LayerNorm(8))
    older = Typicality([torch.zeros(16)], [torch.ones(16)], 1.0)
    with pytest.raises(UsageError, match=r"add_typicality\.py"):
        SourceReturn(model, older)
    assert SourceReturn(model, Typicality([torch.zeros(16)] * 2, [torch.ones(16)] * 2, 1.0)).layer is model[1]


def test_the_batch_that_returns_is_predicted_by_the_source_state(group_norm_bundle: Path) -> None:
    generator = torch.Generator().manual_seed(2)
    loaded = load_bundle(group_norm_bundle)
    bundle = replace(loaded, typicality=measured(loaded.model, generator))
    source = group_norm_net(3)
    source.load_state_dict(loaded.model.state_dict())
    source.eval()
    method = replace(get_method("tent+return"), lr=0.1)
    adapter = build_adapter(bundle, method, torch.device("cpu"))

    def step(images: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
        labels = torch.full((len(images),), UNLABELED)
        result = adapter.step(Batch([""] * len(images), images, labels))
        return result.probabilities, [event.kind for event in result.events]

    for _ in range(5):
        _, events = step(noisy_images(16, generator))
        assert EventKind.RESET not in events
    before = adapter.state_dict()
    assert before["source_return"]["count"] == 5, "the record of what θ saw is part of its state"
    clean = source_images(16, generator)
    probabilities, events = step(clean)
    assert events == [EventKind.RESET]
    with torch.no_grad():
        assert torch.allclose(probabilities, source(clean).softmax(dim=1), atol=1e-6)
    assert adapter.state_dict()["source_return"]["count"] == 1, "afresh from the batch that returned"
    # A rollback to the state before the return brings back θ and what it had seen.
    adapter.load_state_dict(before)
    assert adapter.source_return is not None and adapter.source_return.count == 5
    adapter.close()


def test_return_is_a_variant_of_methods_that_update() -> None:
    assert get_method("mgtta-nomem+return").return_to_source
    assert not get_method("mgtta-nomem").return_to_source
    with pytest.raises(UsageError, match="no update"):
        get_method("norm+return")
