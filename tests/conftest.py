"""Shared fixtures: a tiny model bundle and small labeled image folders, made on the fly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tta_cli.models import build_architecture, prepare_bundle

CLASSES = ("cat", "dog", "ship")
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def write_image_folder(root: Path, per_class: int = 6, size: int = 32, seed: int = 0) -> Path:
    """``root/<class>/NNN.png``: images whose colour depends on the class, so they are learnable."""
    rng = np.random.default_rng(seed)
    for index, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for number in range(per_class):
            base = np.zeros((size, size, 3))
            base[..., index % 3] = 160
            pixels = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{number:03d}.png")
    return root


@pytest.fixture(scope="session", autouse=True)
def private_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """What the tests trust (``tta_cli.models.trust``) stays out of the user's configuration."""
    folder = tmp_path_factory.mktemp("config")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TTA_CLI_CONFIG", str(folder))
        yield folder


@pytest.fixture(scope="session")
def clean_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("clean"))


@pytest.fixture(scope="session")
def bundle_path(tmp_path_factory: pytest.TempPathFactory, clean_folder: Path) -> Path:
    """A ``tiny_resnet`` bundle with random weights (seeded): fast, and real in every part."""
    torch.manual_seed(0)
    model = build_architecture("tiny_resnet", len(CLASSES))
    weights = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_file(model.state_dict(), str(weights))
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    prepare_bundle("tiny_resnet", weights, clean_folder, out, mean=MEAN, std=STD, num_images=18, batch_size=6)
    return out
