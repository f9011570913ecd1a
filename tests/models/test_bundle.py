from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tests.conftest import CLASSES, MEAN, STD, write_image_folder
from tests.models.factories import ViewFlattenNet, group_norm_net, two_layer
from tta_cli.errors import UsageError
from tta_cli.files import tomllib
from tta_cli.models import ModelSpec, build_architecture, load_bundle, prepare_bundle
from tta_cli.models.bundle import read_spec
from tta_cli.models.checkpoints import load_state_dict
from tta_cli.models.layout import same_in_channels_last
from tta_cli.models.typicality import MIN_IMAGES, shallow_layers
from tta_cli.models.zoo import ZOO
from tta_cli.streams import Framing


def test_prepare_writes_a_bundle_that_loads(bundle_path: Path) -> None:
    bundle = load_bundle(bundle_path)
    assert bundle.spec.class_names == list(CLASSES)
    assert bundle.spec.feature_layers == ["stage1", "stage2", "stage3"]
    mean, std = bundle.source_stats["stage3"]
    assert mean.shape == std.shape == (64,)
    assert torch.all(std > 0)
    assert not bundle.model.training


def test_source_stats_match_a_direct_measurement(bundle_path: Path, clean_folder: Path) -> None:
    from tta_cli.models.features import record_features
    from tta_cli.streams import FolderStream, Preprocess, batches

    bundle = load_bundle(bundle_path)
    stream = FolderStream(clean_folder, Framing((32, 32)), CLASSES)
    (batch,) = list(batches(stream, 100, Preprocess(MEAN, STD)))
    with record_features(bundle.model, ["stage2"]) as features, torch.no_grad():
        bundle.model(batch.images)
    mean, std = bundle.source_stats["stage2"]
    torch.testing.assert_close(mean, features["stage2"].mean(0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(std, features["stage2"].std(0), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("missing", ["model.toml", "weights.safetensors", "source_stats.safetensors"])
def test_bundle_with_a_missing_file_is_one_clear_error(bundle_path: Path, tmp_path: Path, missing: str) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(bundle_path, broken)
    (broken / missing).unlink()
    with pytest.raises(UsageError, match=missing.replace(".", r"\.") + "|model.toml"):
        load_bundle(broken)


def test_class_count_mismatch_is_reported(bundle_path: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(bundle_path, broken)
    toml = (broken / "model.toml").read_text().replace('"ship",', '"ship", "truck",')
    (broken / "model.toml").write_text(toml)
    with pytest.raises(UsageError, match="class count"):
        load_bundle(broken)


def test_pickle_checkpoint_is_refused_unless_trusted(tmp_path: Path) -> None:
    model = build_architecture("tiny_resnet", 3)
    checkpoint = tmp_path / "model.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, checkpoint)
    with pytest.raises(UsageError, match="--trust-pickle"):
        load_state_dict(checkpoint)
    state = load_state_dict(checkpoint, trust_pickle=True)
    assert state.keys() == model.state_dict().keys()


def test_prepare_refuses_weights_for_another_class_count(tmp_path: Path, clean_folder: Path) -> None:
    weights = tmp_path / "w.safetensors"
    from safetensors.torch import save_file

    save_file(build_architecture("tiny_resnet", 10).state_dict(), str(weights))
    with pytest.raises(UsageError, match="class count"):
        prepare_bundle("tiny_resnet", weights, clean_folder, tmp_path / "b", mean=MEAN, std=STD)


def test_a_convolutional_model_runs_channels_last_on_the_cpu_and_predicts_the_same(bundle_path: Path) -> None:
    bundle = load_bundle(bundle_path)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        stored = bundle.model(images)
        model = bundle.on(torch.device("cpu"))
        fast = model(images)
    assert bundle.channels_last
    convolutions = [param for param in model.parameters() if param.dim() == 4]
    assert convolutions and all(param.is_contiguous(memory_format=torch.channels_last) for param in convolutions)
    torch.testing.assert_close(fast, stored, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("factory", "expected"), [(two_layer, True), (group_norm_net, False), (ViewFlattenNet, False)])
def test_only_models_whose_layers_work_channels_last_and_predict_the_same_run_so(
    factory: Callable[[int], nn.Module], expected: bool
) -> None:
    # GroupNorm's channels-last backward pass crashes the process on some shapes; a view of a
    # channels-last feature map fails.
    assert same_in_channels_last(factory(3).eval(), 3, (32, 32)) is expected


def test_a_model_that_cannot_run_channels_last_stays_as_stored_and_adapts(tmp_path: Path, clean_folder: Path) -> None:
    from tta_cli.config import AdaptConfig
    from tta_cli.engine.build import adapter_for
    from tta_cli.streams import FolderStream, Framing, Preprocess, batches

    weights = tmp_path / "w.safetensors"
    save_file(ViewFlattenNet(len(CLASSES)).state_dict(), str(weights))
    architecture = "tests.models.factories:ViewFlattenNet"
    prepare_bundle(architecture, weights, clean_folder, tmp_path / "b", mean=MEAN, std=STD)
    bundle = load_bundle(tmp_path / "b")
    assert not bundle.channels_last
    config = AdaptConfig(model=tmp_path / "b", source=clean_folder, run=tmp_path / "run", method="tent")
    adapter = adapter_for(bundle, config, torch.device("cpu"))
    batch = next(batches(FolderStream(clean_folder, Framing((32, 32)), CLASSES), 8, Preprocess(MEAN, STD)))
    assert torch.isfinite(adapter.step(batch).entropy).all()


def test_architecture_references() -> None:
    assert isinstance(build_architecture("tests.models.factories:two_layer", 3), torch.nn.Module)
    with pytest.raises(UsageError, match="Unknown architecture"):
        build_architecture("no_such_net", 3)
    with pytest.raises(UsageError, match="not installed"):
        build_architecture("no_such_package_xyz.models:net", 3)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_models_classify_32px_images(name: str) -> None:
    if name == "wrn28_10":
        pytest.skip("36M parameters: too slow for a unit test")
    model = build_architecture(name, 7).eval()
    channels = 1 if name.endswith("_gray") else 3
    with torch.no_grad():
        assert model(torch.zeros(2, channels, 32, 32)).shape == (2, 7)
    norms = {"_gn": torch.nn.GroupNorm, "_ln": torch.nn.LayerNorm}
    norm = next((kind for suffix, kind in norms.items() if name.endswith(suffix)), torch.nn.BatchNorm2d)
    assert any(isinstance(m, norm) for m in model.modules())
    if norm is not torch.nn.BatchNorm2d:
        assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_weights_file_is_safetensors(bundle_path: Path) -> None:
    assert load_file(str(bundle_path / "weights.safetensors"))


def test_prepare_finds_feature_layers_of_a_model_that_names_none(tmp_path: Path, clean_folder: Path) -> None:
    from safetensors.torch import save_file

    reference = "tests.models.factories:two_layer"
    weights = tmp_path / "w.safetensors"
    save_file(build_architecture(reference, 3).state_dict(), str(weights))
    spec = prepare_bundle(reference, weights, clean_folder, tmp_path / "b", mean=MEAN, std=STD, num_images=9)
    assert spec.feature_layers == ["1", "2", "3"]  # the last three children with spatial outputs
    assert load_bundle(tmp_path / "b").source_stats["3"][0].shape == (8,)


def spec_with(**framing: Any) -> ModelSpec:
    return ModelSpec(
        name="framed", architecture="tiny_resnet", class_names=list(CLASSES), mean=MEAN, std=STD,
        feature_layers=["stage3"], **framing,
    )  # fmt: skip


def test_the_framing_survives_a_model_toml_round_trip(tmp_path: Path) -> None:
    spec = spec_with(input_size=(40, 48), crop_pct=0.875, crop_mode="center", interpolation="bicubic")
    tmp_path.joinpath("model.toml").write_text(tomli_w.dumps(spec.model_dump(mode="json")))
    again = read_spec(tmp_path)
    assert again == spec
    assert again.framing == Framing((40, 48), 0.875, "center", "bicubic")


def test_a_model_toml_written_before_framing_keeps_the_plain_resize() -> None:
    sample = Path(__file__).parents[2] / "sample_models" / "cifar10-airnet-ce"
    assert "crop" not in (sample / "model.toml").read_text()  # written before the framing fields
    assert read_spec(sample).framing == Framing((32, 32), 1.0, "squash", "bilinear")


@pytest.mark.parametrize(
    ("line", "message"),
    [("crop_pct = 1.5", r"crop_pct must be in \(0, 1\]"), ('crop_mode = "border"', "crop_mode")],
)
def test_a_framing_model_toml_cannot_follow_is_one_sentence(tmp_path: Path, line: str, message: str) -> None:
    text = tomli_w.dumps(spec_with().model_dump(mode="json", exclude={"crop_pct", "crop_mode"}))
    tmp_path.joinpath("model.toml").write_text(f"{line}\n{text}")
    with pytest.raises(UsageError, match=message):
        read_spec(tmp_path)


def test_prepare_measures_typicality_from_enough_clean_images(tmp_path: Path) -> None:
    few = load_bundle(prepare_bundle_from(write_image_folder(tmp_path / "few"), tmp_path / "few-bundle"))
    assert few.typicality is None, "a few images cannot place a 99th percentile"
    folder = write_image_folder(tmp_path / "many", per_class=-(-MIN_IMAGES // len(CLASSES)))
    bundle = load_bundle(prepare_bundle_from(folder, tmp_path / "bundle"))
    assert bundle.typicality is not None
    assert len(bundle.typicality.loc) == len(shallow_layers(bundle.model))
    assert 0 < bundle.typicality.limit < float("inf")


def prepare_bundle_from(folder: Path, out: Path) -> Path:
    torch.manual_seed(0)
    weights = out.parent / f"{out.name}.safetensors"
    save_file(build_architecture("tiny_resnet", len(CLASSES)).state_dict(), str(weights))
    prepare_bundle("tiny_resnet", weights, folder, out, mean=MEAN, std=STD, batch_size=50)
    return out


def test_prepare_never_writes_over_an_existing_folder(bundle_path: Path, tmp_path: Path, clean_folder: Path) -> None:
    """An older bundle's generator beside new weights would be used without a word."""
    existing = tmp_path / "existing"
    shutil.copytree(bundle_path, existing)
    (existing / "mgg.safetensors").write_bytes(b"a generator for the old weights")
    before = {path.name: path.read_bytes() for path in existing.iterdir()}
    weights = tmp_path / "w.safetensors"
    save_file(build_architecture("tiny_resnet", 3).state_dict(), str(weights))
    with pytest.raises(UsageError, match="already exists"):
        prepare_bundle("tiny_resnet", weights, clean_folder, existing, mean=MEAN, std=STD)
    assert {path.name: path.read_bytes() for path in existing.iterdir()} == before
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare_bundle("tiny_resnet", weights, clean_folder, str(empty), mean=MEAN, std=STD, num_images=9)
    assert load_bundle(empty).spec.name == "empty"
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]  # no staging left behind


@pytest.mark.parametrize(
    "mean, std", [((float("nan"),) * 3, STD), (MEAN, (0.25, float("inf"), 0.25)), (MEAN, (0.0,) * 3)]
)
def test_prepare_refuses_a_mean_or_std_that_is_not_finite_or_a_std_of_zero(
    tmp_path: Path, clean_folder: Path, mean: tuple[float, ...], std: tuple[float, ...]
) -> None:
    weights = tmp_path / "w.safetensors"
    save_file(build_architecture("tiny_resnet", 3).state_dict(), str(weights))
    with pytest.raises(UsageError, match=r"The input (mean and std must be finite numbers|std must be positive)"):
        prepare_bundle("tiny_resnet", weights, clean_folder, tmp_path / "b", mean=mean, std=std)
    assert not (tmp_path / "b").exists()


def test_a_model_toml_with_a_non_finite_mean_is_refused(bundle_path: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(bundle_path, broken)
    spec = tomllib.loads((broken / "model.toml").read_text())
    (broken / "model.toml").write_text(tomli_w.dumps(spec | {"mean": [float("nan"), 0.5, 0.5]}))
    with pytest.raises(UsageError, match="must be finite"):
        read_spec(broken)


@pytest.mark.parametrize("damaged", ["weights.safetensors", "source_stats.safetensors"])
def test_a_damaged_tensor_file_in_a_bundle_is_one_sentence(bundle_path: Path, tmp_path: Path, damaged: str) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(bundle_path, broken)
    payload = (broken / damaged).read_bytes()
    (broken / damaged).write_bytes(payload[: len(payload) // 2])  # a copy cut short
    with pytest.raises(UsageError, match=rf"{damaged} is not a readable safetensors file .*re-create it"):
        load_bundle(broken)
