"""Fixtures shared by the engine's tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import MEAN, STD
from tests.models.factories import group_norm_net
from tta_cli.models import prepare_bundle


@pytest.fixture(scope="module")
def group_norm_bundle(tmp_path_factory: pytest.TempPathFactory, clean_folder: Path) -> Path:
    """A bundle of ``group_norm_net``, prepared on the clean folder."""
    root = tmp_path_factory.mktemp("gn")
    torch.manual_seed(0)
    save_file(group_norm_net(3).state_dict(), str(root / "weights.safetensors"))
    out = root / "bundle"
    prepare_bundle(
        "tests.models.factories:group_norm_net",
        root / "weights.safetensors",
        clean_folder,
        out,
        MEAN,
        STD,
        num_images=12,
    )
    return out
