"""How typical of the source's images a batch looks to the shallow BatchNorm layers."""

from __future__ import annotations

import torch
from torch import nn

from tta_cli.models.typicality import (
    MIN_IMAGES,
    QUANTILE,
    Typicality,
    measure_typicality,
    recorded_moments,
    shallow_layers,
)
from tta_cli.models.zoo import ChannelLayerNorm


def source_like(count: int, generator: torch.Generator, noise: float = 1.0) -> torch.Tensor:
    """Images whose brightness per channel varies from image to image (std 2) around 0, with
    ``noise`` at every position: the source's images at ``noise`` 1."""
    brightness = 2 * torch.randn(count, 8, 1, 1, generator=generator)
    return brightness + noise * torch.randn(count, 8, 4, 4, generator=generator)


def model() -> nn.Module:
    return nn.Sequential(nn.BatchNorm2d(8), nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.BatchNorm2d(8)).eval()


def measured(generator: torch.Generator, network: nn.Module | None = None) -> Typicality:
    typicality = measure_typicality(network or model(), (source_like(100, generator) for _ in range(8)))
    assert typicality is not None
    return typicality


def test_the_limit_leaves_the_quantile_of_the_source_images_typical() -> None:
    generator = torch.Generator().manual_seed(0)
    network = model()
    typicality = measure_typicality(network, (source_like(100, generator) for _ in range(20)))
    assert typicality is not None and len(typicality.loc) == 2, "the shallow half of three layers is two"
    fresh = source_like(4000, generator)
    with torch.no_grad(), recorded_moments([network[0], network[2]]) as moments:
        network(fresh)
    within = float((typicality.scores(moments) <= typicality.limit).float().mean())
    assert abs(within - QUANTILE) < 0.01


def test_one_scene_is_typical_and_strong_noise_is_not() -> None:
    generator = torch.Generator().manual_seed(1)
    network = model()
    typicality = measured(generator, network)
    scene = source_like(1, generator).expand(64, -1, -1, -1) + 0.1 * torch.randn(64, 8, 4, 4, generator=generator)
    for batch, typical in ((scene, True), (source_like(64, generator, noise=3.0), False)):
        with torch.no_grad(), recorded_moments([network[0], network[2]]) as moments:
            network(batch)
        assert typicality.typical(moments) is typical


def test_typicality_survives_its_file_and_is_absent_where_not_measured() -> None:
    typicality = measured(torch.Generator().manual_seed(2))
    again = Typicality.from_tensors(typicality.tensors())
    assert again is not None and again.limit == typicality.limit
    for saved, loaded in zip(typicality.loc + typicality.scale, again.loc + again.scale, strict=True):
        assert torch.equal(saved, loaded)
    assert Typicality.from_tensors({"block1.mean": torch.zeros(3)}) is None


def test_no_typicality_without_batchnorm_over_images_or_without_enough_images() -> None:
    generator = torch.Generator().manual_seed(3)
    assert measure_typicality(nn.Sequential(nn.Conv2d(8, 8, 1)), [source_like(300, generator)]) is None
    flat = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(128)).eval()
    assert measure_typicality(flat, [source_like(300, generator)]) is None
    assert measure_typicality(model(), [source_like(MIN_IMAGES - 1, generator)]) is None


def test_the_typicality_of_a_model_without_batch_norm_is_measured_at_its_group_norm_layers() -> None:
    network = nn.Sequential(nn.Conv2d(8, 8, 3), nn.GroupNorm(2, 8), nn.Conv2d(8, 8, 1), nn.GroupNorm(2, 8))
    assert shallow_layers(network) == [network[1]]
    assert len(measured(torch.Generator().manual_seed(5), network.eval()).loc) == 1


class Tokens(nn.Module):
    """A map's positions as tokens, ``N×L×C``, as a vision transformer's patch embedding gives them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


class LayerNorm2d(nn.LayerNorm):
    """ConvNeXt's: a LayerNorm that takes a channels-first map and turns it itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def test_a_layer_norm_is_read_with_its_channels_last() -> None:
    """Over tokens (a transformer's) and over each position's channels (the zoo's airnet_ln, or
    ConvNeXt's LayerNorm2d, which turns the map itself) the moments are per channel, as at a
    BatchNorm over the same map; a LayerNorm over the whole ``C×H×W`` sees the map as it is."""
    generator = torch.Generator().manual_seed(7)
    images = source_like(300, generator)
    reference = measure_typicality(nn.Sequential(nn.BatchNorm2d(8)).eval(), [images])
    for network in (
        nn.Sequential(Tokens(), nn.LayerNorm(8), nn.Linear(8, 8), nn.LayerNorm(8)),
        nn.Sequential(ChannelLayerNorm(8), nn.Conv2d(8, 8, 1), ChannelLayerNorm(8)),
        nn.Sequential(nn.LayerNorm([8, 4, 4])),
        nn.Sequential(LayerNorm2d(8), nn.Conv2d(8, 8, 1), LayerNorm2d(8)),
    ):
        assert len(shallow_layers(network)) == 1
        typicality = measure_typicality(network.eval(), [images])
        assert typicality is not None and reference is not None
        assert torch.allclose(typicality.loc[0], reference.loc[0]), "the same moments of the same images"


def test_a_statistic_that_never_varies_adds_nothing_to_a_score() -> None:
    network = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)).eval()
    with torch.no_grad():
        network[0].weight[0].zero_()
        network[0].bias[0] = 0.5
    typicality = measured(torch.Generator().manual_seed(6), network)
    assert float(typicality.scale[0][0]) == 0 and float(typicality.weights(0)[0]) == 0
    assert typicality.limit < 10, "a dead channel does not make every score infinite"
