"""``prepare``'s defaults from timm's and torchvision's pretrained configs, through stand-ins for
the two libraries (neither is installed here) that follow their documented interfaces."""

from __future__ import annotations

import enum
import sys
import types
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import CLASSES, MEAN, STD
from tests.models.factories import two_layer
from tta_cli.errors import UsageError
from tta_cli.models import load_bundle, prepare_bundle
from tta_cli.streams import Framing

TIMM_CONFIG = {
    "input_size": (3, 40, 48),
    "interpolation": "bicubic",
    "mean": (0.48145466, 0.4578275, 0.40821073),
    "std": (0.26862954, 0.26130258, 0.27577711),
    "crop_pct": 0.9,
    "crop_mode": "center",
}


def install(
    monkeypatch: pytest.MonkeyPatch,
    package: str,
    attributes: dict[str, Any],
    submodule: str,
    sub_attributes: dict[str, Any],
) -> None:
    """Put a fake ``package`` with ``package.submodule`` into ``sys.modules`` for one test."""
    parent, child = types.ModuleType(package), types.ModuleType(f"{package}.{submodule}")
    for module, values in ((parent, attributes), (child, sub_attributes)):
        for name, value in values.items():
            setattr(module, name, value)
    setattr(parent, submodule, child)
    monkeypatch.setitem(sys.modules, package, parent)
    monkeypatch.setitem(sys.modules, f"{package}.{submodule}", child)


def fake_timm(monkeypatch: pytest.MonkeyPatch, pretrained_cfg: dict[str, Any]) -> None:
    """``timm.create_model`` attaches the model's ``pretrained_cfg`` (also when not loading the
    weights); ``timm.data.resolve_model_data_config`` reads it and fills what it lacks with
    timm's defaults (timm/data/config.py, ``resolve_data_config``)."""

    def create_model(model_name: str, pretrained: bool = False, **kwargs: Any) -> torch.nn.Module:
        model = two_layer(kwargs["num_classes"])
        model.pretrained_cfg = pretrained_cfg  # type: ignore[assignment]
        return model

    def resolve_model_data_config(model: torch.nn.Module, args: Any = None, **options: Any) -> dict[str, Any]:
        cfg = cast(dict[str, Any], model.pretrained_cfg)
        return {
            "input_size": cfg.get("input_size", (3, 224, 224)),
            "interpolation": cfg.get("interpolation") or "bicubic",
            "mean": cfg.get("mean") or (0.485, 0.456, 0.406),
            "std": cfg.get("std") or (0.229, 0.224, 0.225),
            "crop_pct": cfg.get("crop_pct") or 0.875,
            "crop_mode": cfg.get("crop_mode") or "center",
        }

    install(
        monkeypatch,
        "timm",
        {"create_model": create_model},
        "data",
        {"resolve_model_data_config": resolve_model_data_config},
    )


class InterpolationMode(enum.Enum):
    """torchvision.transforms.InterpolationMode, in part."""

    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    LANCZOS = "lanczos"


def fake_torchvision(monkeypatch: pytest.MonkeyPatch, crop: int, resize: int, interpolation: InterpolationMode) -> None:
    """``torchvision.models.get_model_weights(name)`` is the weights enum; its ``DEFAULT``'s
    ``transforms()`` is an ``ImageClassification`` preset with ``crop_size`` and ``resize_size``
    as one-element lists, ``mean``, ``std`` and an ``InterpolationMode``."""

    class ImageClassification:
        def __init__(self) -> None:
            self.crop_size = [crop]
            self.resize_size = [resize]
            self.mean = [0.485, 0.456, 0.406]
            self.std = [0.229, 0.224, 0.225]
            self.interpolation = interpolation

    class Weights(enum.Enum):
        IMAGENET1K_V1 = "v1"

        def transforms(self) -> ImageClassification:
            return ImageClassification()

    Weights.DEFAULT = Weights.IMAGENET1K_V1  # type: ignore[attr-defined]

    def get_model(name: str, weights: Any = None, **kwargs: Any) -> torch.nn.Module:
        return two_layer(kwargs["num_classes"])

    def get_model_weights(name: str) -> type[Weights]:
        return Weights

    install(monkeypatch, "torchvision", {}, "models", {"get_model": get_model, "get_model_weights": get_model_weights})


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "weights.safetensors"
    save_file(two_layer(len(CLASSES)).state_dict(), str(path))
    return path


def prepare(architecture: str, weights: Path, data: Path, out: Path, **settings: Any) -> Framing:
    prepare_bundle(architecture, weights, data, out, num_images=6, batch_size=6, **settings)
    return load_bundle(out).spec.framing


def test_timm_s_pretrained_config_gives_the_defaults(
    monkeypatch: pytest.MonkeyPatch, weights: Path, clean_folder: Path, tmp_path: Path
) -> None:
    fake_timm(monkeypatch, TIMM_CONFIG)
    framing = prepare("timm:fake_vit", weights, clean_folder, tmp_path / "bundle")
    assert framing == Framing((40, 48), 0.9, "center", "bicubic")
    spec = load_bundle(tmp_path / "bundle").spec
    assert (spec.mean, spec.std) == (TIMM_CONFIG["mean"], TIMM_CONFIG["std"])


def test_timm_s_own_defaults_fill_what_the_config_lacks(
    monkeypatch: pytest.MonkeyPatch, weights: Path, clean_folder: Path, tmp_path: Path
) -> None:
    fake_timm(monkeypatch, {"input_size": (3, 36, 36)})
    framing = prepare("timm:old_net", weights, clean_folder, tmp_path / "bundle")
    assert framing == Framing((36, 36), 0.875, "center", "bicubic")


def test_flags_given_win_over_timm_s_config(
    monkeypatch: pytest.MonkeyPatch, weights: Path, clean_folder: Path, tmp_path: Path
) -> None:
    fake_timm(monkeypatch, TIMM_CONFIG)
    framing = prepare(
        "timm:fake_vit",
        weights,
        clean_folder,
        tmp_path / "bundle",
        mean=MEAN,
        std=STD,
        input_size=(32, 32),
        crop_pct=1.0,
        crop_mode="squash",
        interpolation="bilinear",
    )
    assert framing == Framing((32, 32))
    spec = load_bundle(tmp_path / "bundle").spec
    assert (spec.mean, spec.std) == (MEAN, STD)
    only_size = prepare("timm:fake_vit", weights, clean_folder, tmp_path / "sized", input_size=(24, 24))
    assert only_size == Framing((24, 24), 0.9, "center", "bicubic")


def test_torchvision_s_default_weights_give_centre_framing(
    monkeypatch: pytest.MonkeyPatch, weights: Path, clean_folder: Path, tmp_path: Path
) -> None:
    fake_torchvision(monkeypatch, crop=56, resize=64, interpolation=InterpolationMode.BILINEAR)
    framing = prepare("torchvision:fake_resnet", weights, clean_folder, tmp_path / "bundle")
    assert (framing.size, framing.crop_mode, framing.interpolation) == ((56, 56), "center", "bilinear")
    assert framing.crop_pct == pytest.approx(56 / 64) and framing.scale == (64, 64)
    assert load_bundle(tmp_path / "bundle").spec.mean == (0.485, 0.456, 0.406)


def test_a_hub_setting_tta_cli_cannot_follow_is_one_sentence_unless_overridden(
    monkeypatch: pytest.MonkeyPatch, weights: Path, clean_folder: Path, tmp_path: Path
) -> None:
    fake_torchvision(monkeypatch, crop=56, resize=64, interpolation=InterpolationMode.LANCZOS)
    with pytest.raises(UsageError, match="Interpolation 'lanczos' is not supported; use one of bilinear, bicubic"):
        prepare("torchvision:fake_vit", weights, clean_folder, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    framing = prepare("torchvision:fake_vit", weights, clean_folder, tmp_path / "bundle", interpolation="bicubic")
    assert framing.interpolation == "bicubic"


def test_other_architectures_need_mean_and_std(weights: Path, clean_folder: Path, tmp_path: Path) -> None:
    architecture = "tests.models.factories:two_layer"
    with pytest.raises(UsageError, match=r"Give --mean and --std for architecture 'tests\.models\.factories"):
        prepare(architecture, weights, clean_folder, tmp_path / "bundle", mean=MEAN)
    framing = prepare(architecture, weights, clean_folder, tmp_path / "bundle", mean=MEAN, std=STD)
    assert framing == Framing((32, 32))


def test_a_crop_pct_out_of_range_is_refused_before_any_work(weights: Path, clean_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"crop_pct must be in \(0, 1\]"):
        prepare("tiny_resnet", weights, clean_folder, tmp_path / "bundle", mean=MEAN, std=STD, crop_pct=1.2)
