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


def test_labels_must_be_class_indices_or_unlabeled() -> None:
    images = np.zeros((2, 8, 8, 3), np.uint8)
    framing, preprocess = Framing((8, 8)), Preprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert batch_of(images, framing, preprocess, labels=[2, -1], num_classes=3).labels.tolist() == [2, -1]
    for labels in ([0, 3], [0, -5]):
        with pytest.raises(UsageError, match=f"Label {labels[1]} is not a class index"):
            batch_of(images, framing, preprocess, labels=labels, num_classes=3)


def test_float_arrays_are_taken_as_values_in_zero_to_one_like_float_tensors() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 8, 8, 3)).astype(np.uint8)
    framing, preprocess = Framing((8, 8)), Preprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    expected = batch_of(pixels, framing, preprocess).images
    as_floats = batch_of(pixels.astype(np.float32) / 255, framing, preprocess).images
    torch.testing.assert_close(as_floats, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "images",
    [
        np.full((1, 8, 8, 3), 200.0, np.float32),  # a float image in [0, 255]
        np.full((1, 8, 8, 3), np.nan, np.float32),
        torch.full((1, 3, 8, 8), 2.0),
        np.full((1, 8, 8, 3), 300, np.int64),
    ],
    ids=["float-in-0-255", "nan", "tensor-above-1", "int-above-255"],
)
def test_pixel_values_outside_their_type_s_range_are_one_sentence(images: Images) -> None:
    with pytest.raises(UsageError, match=r"Pixel values of \w+ images lie in"):
        batch_of(images, Framing((8, 8)), Preprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
