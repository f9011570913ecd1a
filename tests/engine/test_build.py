"""From a bundle and a method to an adapter."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from tests.conftest import MEAN, STD
from tta_cli.config import AdaptConfig
from tta_cli.engine.build import adapter_for, default_method, has_batch_norm, resolve_method
from tta_cli.engine.methods import DEFAULT_METHOD, NO_BATCH_NORM_LEARNED_METHOD, NO_BATCH_NORM_METHOD
from tta_cli.models import load_bundle, prepare_bundle


def group_norm_net(num_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.GroupNorm(2, 8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )


@pytest.fixture(scope="module")
def group_norm_bundle(tmp_path_factory: pytest.TempPathFactory, clean_folder: Path) -> Path:
    root = tmp_path_factory.mktemp("gn")
    torch.manual_seed(0)
    save_file(group_norm_net(3).state_dict(), str(root / "weights.safetensors"))
    out = root / "bundle"
    reference = "tests.engine.test_build:group_norm_net"
    prepare_bundle(reference, root / "weights.safetensors", clean_folder, out, MEAN, STD, num_images=12)
    return out


def test_auto_on_a_model_without_batch_norm_steps_on_its_norm_parameters(
    group_norm_bundle: Path, bundle_path: Path, tmp_path: Path
) -> None:
    assert not has_batch_norm(load_bundle(group_norm_bundle)) and has_batch_norm(load_bundle(bundle_path))
    assert default_method(load_bundle(group_norm_bundle)) == NO_BATCH_NORM_METHOD == "sar"
    assert default_method(load_bundle(bundle_path)) == DEFAULT_METHOD == resolve_method("auto").name
    config = AdaptConfig(model=group_norm_bundle, source=tmp_path, run=tmp_path / "run")
    adapter = adapter_for(load_bundle(group_norm_bundle), config, torch.device("cpu"))
    assert adapter.method.name == "sar" and adapter.params and adapter.guard.config.enabled
    # The GroupNorm affine parameters are what it adapts: no statistics to take from a batch.
    names = {name for name, param in adapter.model.named_parameters() if param.requires_grad}
    assert names and all(".weight" in name or ".bias" in name for name in names)


def test_auto_takes_the_learned_update_on_a_model_without_batch_norm_that_has_its_generator(
    group_norm_bundle: Path, tmp_path: Path
) -> None:
    from tta_cli.mgg import MetaGradientGenerator, save_generator

    with_generator = tmp_path / "with-generator"
    shutil.copytree(group_norm_bundle, with_generator)
    save_generator(MetaGradientGenerator(memory=False), with_generator / "mgg-no-memory.safetensors", {})
    assert default_method(load_bundle(with_generator)) == NO_BATCH_NORM_LEARNED_METHOD == "mgtta-nomem+return"
    config = AdaptConfig(model=with_generator, source=tmp_path, run=tmp_path / "run")
    adapter = adapter_for(load_bundle(with_generator), config, torch.device("cpu"))
    assert adapter.method.name == "mgtta-nomem+return" and adapter.guard.config.enabled
