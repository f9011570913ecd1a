from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tta_cli.errors import UsageError
from tta_cli.streams import Framing, Images, Preprocess, batch_of


def test_images_leave_preprocessing_contiguous_so_group_norm_can_learn_from_them() -> None:
    """Arrays arrive height × width × channels; torch 2.13's CPU GroupNorm backward crashes the
    process on the channels-last tensor a plain permute gives."""
    images = np.random.default_rng(0).integers(0, 256, size=(8, 16, 16, 3), dtype=np.uint8)
    x = Preprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))(images)
    assert x.is_contiguous()
    layer = nn.Sequential(nn.Conv2d(3, 16, 3), nn.GroupNorm(4, 16))
    (gradient,) = torch.autograd.grad(layer(x).square().mean(), [layer[1].weight])
    assert torch.isfinite(gradient).all()


@pytest.mark.parametrize(
    "images",
    [torch.zeros(0, 3, 8, 8), np.zeros((0, 8, 8, 3), np.uint8), []],
    ids=["tensor", "array", "list"],
)
def test_an_empty_batch_is_one_sentence(images: Images) -> None:
    with pytest.raises(UsageError, match="at least one image"):
        batch_of(images, Framing((8, 8)), Preprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
