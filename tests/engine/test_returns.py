"""θ's return to the source when the images turn back towards the source's."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.engine.test_build import group_norm_bundle, group_norm_net  # noqa: F401 (a fixture)
from tta_cli.engine.build import build_adapter
from tta_cli.engine.methods import get_method
from tta_cli.engine.returns import SourceReturn
from tta_cli.errors import UsageError
from tta_cli.events import EventKind
from tta_cli.models import load_bundle
from tta_cli.models.typicality import Typicality, measure_typicality, shallow_layers
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


def test_the_typicality_of_a_model_without_batch_norm_is_measured_at_its_group_norm_layers() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.Conv2d(8, 8, 1), nn.GroupNorm(2, 8))
    assert shallow_layers(model) == [model[1]]
    assert len(measured(model, torch.Generator().manual_seed(0)).loc) == 1


def test_a_stream_that_stays_shifted_never_returns_and_one_back_at_the_source_does() -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    model = group_norm_net(3)
    watch = SourceReturn(model, measured(model, generator))
    assert not any(watch.due(noisy_images(16, generator)) for _ in range(10))
    assert watch.due(source_images(16, generator)), "the first clean batch after the noise"
    assert watch.count == 1, "the record starts afresh from that batch"


def test_the_batch_that_returns_is_predicted_by_the_source_state(group_norm_bundle: Path) -> None:  # noqa: F811
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
    clean = source_images(16, generator)
    probabilities, events = step(clean)
    assert events == [EventKind.RESET]
    with torch.no_grad():
        assert torch.allclose(probabilities, source(clean).softmax(dim=1), atol=1e-6)
    adapter.close()


def test_return_is_a_variant_of_methods_that_update() -> None:
    assert get_method("mgtta-nomem+return").return_to_source
    assert not get_method("mgtta-nomem").return_to_source
    with pytest.raises(UsageError, match="no update"):
        get_method("norm+return")
