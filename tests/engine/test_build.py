"""From a bundle and a method to an adapter."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tta_cli.config import AdaptConfig
from tta_cli.engine.build import adapter_for, build_adapter, default_method, has_batch_norm, resolve_method
from tta_cli.engine.methods import DEFAULT_METHOD, NO_BATCH_NORM_LEARNED_METHOD, NO_BATCH_NORM_METHOD, get_method
from tta_cli.errors import UsageError
from tta_cli.models import load_bundle
from tta_cli.models.typicality import Typicality


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
    bundle = load_bundle(with_generator)
    typicality = Typicality([torch.zeros(16)], [torch.ones(16)], 1.0)
    assert (
        default_method(replace(bundle, typicality=typicality)) == NO_BATCH_NORM_LEARNED_METHOD == "mgtta-nomem+return"
    )
    # Prepared on too few images to measure the typicality that θ's return needs: without it.
    assert bundle.typicality is None and default_method(bundle) == "mgtta-nomem"
    config = AdaptConfig(model=with_generator, source=tmp_path, run=tmp_path / "run")
    adapter = adapter_for(bundle, config, torch.device("cpu"))
    assert adapter.method.name == "mgtta-nomem" and adapter.guard.config.enabled
    with pytest.raises(UsageError, match=r"typicality .* 'tta-cli prepare'"):
        build_adapter(bundle, get_method("mgtta-nomem+return"), torch.device("cpu"))
