from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from tests.conftest import CLASSES, MEAN, STD
from tta_cli.errors import UsageError
from tta_cli.export import (
    build_export_model,
    export_onnx,
    onnxruntime_warning,
    read_metadata,
    verify_onnx,
)
from tta_cli.export.rebuild import BnStats, require_running_statistics
from tta_cli.export.to_onnx import metadata_entries
from tta_cli.files import write_atomic
from tta_cli.models import Bundle, ModelSpec, build_architecture, load_bundle, prepare_bundle
from tta_cli.streams import FolderStream, Framing, Preprocess, batches
from tta_cli.version import __version__

ATOL = 1e-4


@pytest.fixture(scope="module")
def bundle(bundle_path: Path) -> Bundle:
    return load_bundle(bundle_path)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """256 normalised images: random, so every logit and every class gets exercised."""
    return torch.randn(256, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def source_export(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    """The source model exported with the defaults (dynamic batch, onnxslim)."""
    model = build_export_model(bundle, None, "source")
    metadata = {"bundle_sha256": bundle.weights_sha256, "snapshot_id": "source-id", "step": "0"}
    out = export_onnx(model, bundle.spec, tmp_path_factory.mktemp("export") / "model.onnx", metadata=metadata)
    return out, model


def run_onnx(path: Path, images: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]


def pytorch_logits(model: nn.Module, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(images).numpy()


def adapted_state(model: nn.Module, scale: float, shift: float) -> dict[str, torch.Tensor]:
    """A state as a run would leave it: changed BatchNorm affine parameters and tracked statistics."""
    batchnorms = {name for name, module in model.named_modules() if isinstance(module, nn.BatchNorm2d)}
    changes = {
        "weight": lambda value: value * scale,
        "bias": lambda value: value + shift,
        "running_mean": lambda value: value + 5.0,
        "running_var": lambda value: value * 3.0,
    }
    state = {}
    for key, value in model.state_dict().items():
        module_name, _, tensor_name = key.rpartition(".")
        if module_name in batchnorms and tensor_name in changes:
            state[key] = changes[tensor_name](value)
    return state


def first_batchnorm(model: nn.Module) -> nn.BatchNorm2d:
    """``stage1.0.bn1`` normalises the stem convolution's output, which no BatchNorm precedes."""
    layer = model.get_submodule("stage1.0.bn1")
    assert isinstance(layer, nn.BatchNorm2d)
    return layer


def target_batches(clean_folder: Path) -> list[torch.Tensor]:
    stream = FolderStream(clean_folder, Framing((32, 32)), CLASSES)
    return [batch.images for batch in batches(stream, 6, Preprocess(MEAN, STD))]


def test_zoo_bundle_passes_checker_and_matches_pytorch(
    source_export: tuple[Path, nn.Module], images: torch.Tensor
) -> None:
    path, model = source_export
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    parity = verify_onnx(path, model, images, atol=ATOL)
    assert parity.passed
    assert parity.images == 256
    assert parity.max_abs_diff < ATOL
    assert parity.top1_agreement == 1.0
    assert parity.provider == "CPUExecutionProvider"


def test_source_export_is_the_original_model(
    source_export: tuple[Path, nn.Module], bundle: Bundle, images: torch.Tensor
) -> None:
    path, _ = source_export
    np.testing.assert_allclose(run_onnx(path, images[:32]), pytorch_logits(bundle.model, images[:32]), atol=ATOL)


def test_batch_axis_is_dynamic(source_export: tuple[Path, nn.Module], images: torch.Tensor) -> None:
    path, model = source_export
    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for size in (1, 7):
        batch = images[:size]
        np.testing.assert_allclose(run_onnx(path, batch), pytorch_logits(model, batch), atol=ATOL)


def test_static_batch_has_a_fixed_size_and_still_verifies(bundle: Bundle, images: torch.Tensor, tmp_path: Path) -> None:
    model = build_export_model(bundle, None, "source")
    path = export_onnx(model, bundle.spec, tmp_path / "static.onnx", dynamic_batch=False, batch_size=4, opset=20)
    proto = onnx.load(str(path))
    assert [dim.dim_value for dim in proto.graph.input[0].type.tensor_type.shape.dim] == [4, 3, 32, 32]
    assert [entry.version for entry in proto.opset_import if entry.domain == ""] == [20]
    with pytest.raises(Exception, match=r"(?i)dimension"):
        run_onnx(path, images[:7])
    # 10 images in chunks of 4: the last chunk is padded to the fixed size.
    parity = verify_onnx(path, model, images[:10])
    assert parity.passed and parity.images == 10


def test_metadata_round_trip(source_export: tuple[Path, nn.Module], bundle: Bundle) -> None:
    metadata = read_metadata(source_export[0])
    assert json.loads(metadata["class_names"]) == list(CLASSES)
    assert json.loads(metadata["input_size"]) == [32, 32]
    assert json.loads(metadata["crop_pct"]) == 1.0
    assert (metadata["crop_mode"], metadata["interpolation"]) == ("squash", "bilinear")
    assert json.loads(metadata["mean"]) == list(MEAN)
    assert json.loads(metadata["std"]) == list(STD)
    assert metadata["architecture"] == "tiny_resnet"
    assert metadata["model_name"] == bundle.spec.name
    assert metadata["bundle_sha256"] == bundle.weights_sha256
    assert metadata["snapshot_id"] == "source-id"
    assert metadata["step"] == "0"
    assert metadata["tta_cli_version"] == __version__


def test_metadata_carries_the_framing(bundle: Bundle) -> None:
    framed = {"input_size": (224, 224), "crop_pct": 0.875, "crop_mode": "center", "interpolation": "bicubic"}
    entries = metadata_entries(bundle.spec.model_copy(update=framed), {})
    assert json.loads(entries["input_size"]) == [224, 224] and json.loads(entries["crop_pct"]) == 0.875
    assert (entries["crop_mode"], entries["interpolation"]) == ("center", "bicubic")
    assert all(key in entries["preprocessing"] for key in ("crop_pct", "squash", "center", "interpolation"))


def test_metadata_cannot_override_the_spec(bundle: Bundle, tmp_path: Path) -> None:
    model = build_export_model(bundle, None, "source")
    with pytest.raises(ValueError, match="class_names"):
        export_onnx(model, bundle.spec, tmp_path / "model.onnx", metadata={"class_names": "[]"})
    assert not (tmp_path / "model.onnx").exists()


def test_read_metadata_of_a_file_that_is_not_onnx(tmp_path: Path) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"\xff\xfe not a protobuf")
    with pytest.raises(UsageError, match="not an ONNX model"):
        read_metadata(tmp_path / "junk.onnx")
    with pytest.raises(UsageError, match="does not exist"):
        read_metadata(tmp_path / "missing.onnx")


def test_two_states_give_two_exports_that_match_their_models(
    bundle: Bundle, images: torch.Tensor, tmp_path: Path
) -> None:
    states = {"a": adapted_state(bundle.model, 1.5, 0.0), "b": adapted_state(bundle.model, 1.0, 0.3)}
    models, outputs = {}, {}
    for name, state in states.items():
        models[name] = build_export_model(bundle, state, "source")
        path = export_onnx(models[name], bundle.spec, tmp_path / f"{name}.onnx")
        parity = verify_onnx(path, models[name], images[:64])
        assert parity.passed, parity
        outputs[name] = run_onnx(path, images[:32])
        # The state's affine parameters land exactly where PyTorch puts them; with
        # bn_stats="source" its tracked running statistics are ignored.
        reference = build_architecture("tiny_resnet", len(CLASSES))
        reference.load_state_dict(bundle.model.state_dict())
        reference.load_state_dict({k: v for k, v in state.items() if "running" not in k}, strict=False)
        np.testing.assert_allclose(outputs[name], pytorch_logits(reference.eval(), images[:32]), atol=ATOL)
    source = pytorch_logits(bundle.model, images[:32])
    assert np.abs(outputs["a"] - outputs["b"]).max() > 1e-2
    assert np.abs(outputs["a"] - source).max() > 1e-2
    # The check notices when a file and a model do not belong together.
    assert not verify_onnx(tmp_path / "a.onnx", models["b"], images[:32]).passed


def test_source_statistics_are_restored(bundle: Bundle) -> None:
    model = build_export_model(bundle, adapted_state(bundle.model, 1.5, 0.0), "source")
    layer, source_layer = first_batchnorm(model), first_batchnorm(bundle.model)
    torch.testing.assert_close(layer.running_mean, source_layer.running_mean)
    torch.testing.assert_close(layer.running_var, source_layer.running_var)
    torch.testing.assert_close(layer.weight, source_layer.weight * 1.5)


def test_state_that_does_not_fit_is_a_usage_error(bundle: Bundle) -> None:
    with pytest.raises(UsageError, match="does not have"):
        build_export_model(bundle, {"head.nonexistent": torch.zeros(3)}, "source")
    with pytest.raises(UsageError, match="shape"):
        build_export_model(bundle, {"head.bias": torch.zeros(5)}, "source")


@pytest.mark.parametrize("bn_stats", ["source", "tracked"])
def test_a_state_with_non_finite_values_is_refused(bundle: Bundle, bn_stats: BnStats) -> None:
    state = adapted_state(bundle.model, 1.5, 0.0)
    state["stage1.0.bn1.bias"] = torch.full_like(state["stage1.0.bn1.bias"], float("nan"))
    with pytest.raises(UsageError, match=r"'stage1\.0\.bn1\.bias' holds non-finite values"):
        build_export_model(bundle, state, bn_stats)


def test_non_finite_statistics_the_export_does_not_use_are_ignored(bundle: Bundle) -> None:
    state = adapted_state(bundle.model, 1.5, 0.0)
    state["stage1.0.bn1.running_var"] = torch.full_like(state["stage1.0.bn1.running_var"], float("inf"))
    model = build_export_model(bundle, state, "source")
    torch.testing.assert_close(first_batchnorm(model).running_var, first_batchnorm(bundle.model).running_var)


def test_target_statistics_are_reestimated_and_not_batch_dependent(
    bundle: Bundle, clean_folder: Path, images: torch.Tensor, tmp_path: Path
) -> None:
    target = target_batches(clean_folder)
    model = build_export_model(bundle, None, "target", target)
    assert not any(module.training for module in model.modules())
    layer, source_layer = first_batchnorm(model), first_batchnorm(bundle.model)
    assert layer.momentum == source_layer.momentum
    shift = layer.state_dict()["running_mean"] - source_layer.state_dict()["running_mean"]
    assert shift.abs().max() > 1e-2
    # Its input does not depend on other BatchNorm layers, so its statistics must be the
    # average over batches of each batch's mean and unbiased variance.
    stem = model.get_submodule("conv")
    with torch.no_grad():
        features = [stem(batch) for batch in target]
    expected_mean = torch.stack([feature.mean(dim=(0, 2, 3)) for feature in features]).mean(0)
    expected_var = torch.stack([feature.var(dim=(0, 2, 3)) for feature in features]).mean(0)
    torch.testing.assert_close(layer.running_mean, expected_mean, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(layer.running_var, expected_var, atol=1e-5, rtol=1e-4)

    path = export_onnx(model, bundle.spec, tmp_path / "target.onnx")
    assert verify_onnx(path, model, images[:64]).passed
    # Stored statistics only: one image's logits do not depend on what shares its batch.
    first, other, very_different = images[:1], images[1:2], images[2:3] * 5 + 3
    with_other = run_onnx(path, torch.cat([first, other]))
    with_very_different = run_onnx(path, torch.cat([first, very_different]))
    np.testing.assert_allclose(with_other[0], with_very_different[0], atol=1e-6)
    np.testing.assert_allclose(run_onnx(path, first)[0], with_other[0], atol=1e-5)


def test_tracked_statistics_come_from_the_state(bundle: Bundle) -> None:
    state = adapted_state(bundle.model, 1.0, 0.0)
    model = build_export_model(bundle, state, "tracked")
    torch.testing.assert_close(first_batchnorm(model).running_mean, state["stage1.0.bn1.running_mean"])
    without_statistics = {key: value for key, value in state.items() if "running" not in key}
    with pytest.raises(UsageError, match="no BatchNorm statistics"):
        build_export_model(bundle, without_statistics, "tracked")
    with pytest.raises(UsageError, match="none were given"):
        build_export_model(bundle, state, "target", [])
    with pytest.raises(UsageError, match="none were given"):
        build_export_model(bundle, state, "target")


def test_batchnorm_without_running_statistics_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(UsageError, match="keeps no running statistics"):
        require_running_statistics(model)


def test_a_model_in_train_mode_is_refused(bundle: Bundle, tmp_path: Path) -> None:
    model = build_export_model(bundle, None, "source")
    first_batchnorm(model).train()
    with pytest.raises(ValueError, match="eval-mode"):
        export_onnx(model, bundle.spec, tmp_path / "model.onnx")


class MedianPool(nn.Module):
    """Median of each channel's map: ``aten.median.dim`` has no ONNX translation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).median(dim=2).values


def test_unsupported_operator_is_a_usage_error_and_leaves_no_file(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), MedianPool(), nn.Linear(4, len(CLASSES))).eval()
    spec = ModelSpec(
        name="median",
        architecture="tests.export.test_export:MedianPool",
        class_names=list(CLASSES),
        input_size=(8, 8),
        mean=MEAN,
        std=STD,
        feature_layers=["0"],
    )
    fresh, previous = tmp_path / "fresh.onnx", tmp_path / "previous.onnx"
    previous.write_bytes(b"an earlier export")
    for out in (fresh, previous):
        with pytest.raises(UsageError, match=r"operator aten\.median\.dim used in module '1' \(MedianPool\)"):
            export_onnx(model, spec, out)
    assert not fresh.exists()
    assert previous.read_bytes() == b"an earlier export"
    assert [path.name for path in tmp_path.iterdir()] == ["previous.onnx"]


def test_a_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(_fd: int) -> None:
        raise OSError("disk full")

    previous = tmp_path / "model.onnx"
    previous.write_bytes(b"an earlier export")
    write_atomic(tmp_path / "other.onnx", b"\x00\x01")
    monkeypatch.setattr("tta_cli.files.os.fsync", fail)
    for out in (previous, tmp_path / "fresh.onnx"):
        with pytest.raises(OSError, match="disk full"):
            write_atomic(out, b"half an export")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.onnx", "other.onnx"]
    assert previous.read_bytes() == b"an earlier export"
    assert (tmp_path / "other.onnx").read_bytes() == b"\x00\x01"


def test_opset_below_18_is_refused(bundle: Bundle, tmp_path: Path) -> None:
    model = build_export_model(bundle, None, "source")
    with pytest.raises(UsageError, match="opset 17"):
        export_onnx(model, bundle.spec, tmp_path / "model.onnx", opset=17)


def test_without_simplification_the_export_verifies_and_agrees(
    source_export: tuple[Path, nn.Module], bundle: Bundle, images: torch.Tensor, tmp_path: Path
) -> None:
    slim_path, model = source_export
    plain_path = export_onnx(model, bundle.spec, tmp_path / "plain.onnx", simplify="none")
    assert verify_onnx(plain_path, model, images[:64]).passed
    np.testing.assert_allclose(run_onnx(plain_path, images[:32]), run_onnx(slim_path, images[:32]), atol=1e-5)


def test_onnxruntime_warning_when_both_packages_are_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tta_cli.export.verify.is_installed", lambda name: True)
    warning = onnxruntime_warning()
    assert warning is not None and "onnxruntime-gpu" in warning and "\n" not in warning
    monkeypatch.setattr("tta_cli.export.verify.is_installed", lambda name: name == "onnxruntime-gpu")
    assert onnxruntime_warning() is None


def import_torchvision_or_skip() -> ModuleType:
    """torchvision, or a skip: a wheel built for another torch build (e.g. the CUDA wheel with
    a CPU-only torch) fails at import with a RuntimeError, which importorskip would not catch."""
    try:
        return importlib.import_module("torchvision.models")
    except Exception as error:
        pytest.skip(f"torchvision is not usable here ({type(error).__name__}: {error})")


def test_torchvision_bundle_exports_and_verifies(clean_folder: Path, images: torch.Tensor, tmp_path: Path) -> None:
    import_torchvision_or_skip()
    torch.manual_seed(0)
    weights = tmp_path / "resnet18.safetensors"
    save_file(build_architecture("torchvision:resnet18", len(CLASSES)).state_dict(), str(weights))
    prepare_bundle(
        "torchvision:resnet18",
        weights,
        clean_folder,
        tmp_path / "bundle",
        MEAN,
        STD,
        input_size=(32, 32),
        num_images=18,
        batch_size=6,
    )
    bundle = load_bundle(tmp_path / "bundle")
    # The flags given win; the framing not given is that of resnet18's default weights (resize 256, crop 224).
    assert bundle.spec.input_size == (32, 32) and bundle.spec.mean == MEAN
    assert (bundle.spec.crop_mode, bundle.spec.crop_pct) == ("center", pytest.approx(224 / 256))
    model = build_export_model(bundle, None, "source")
    path = export_onnx(model, bundle.spec, tmp_path / "resnet18.onnx")
    parity = verify_onnx(path, model, images[:64])
    assert parity.passed, parity
    assert parity.top1_agreement == 1.0
    assert json.loads(read_metadata(path)["class_names"]) == list(CLASSES)
