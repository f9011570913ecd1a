"""``tta-cli export`` on a run: any recorded state, verified, with the run's metadata."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_image_folder
from tta_cli.config import AdaptConfig
from tta_cli.engine import adapt
from tta_cli.errors import UsageError
from tta_cli.export import export_run, read_metadata
from tta_cli.history import HistoryStore
from tta_cli.streams import Framing
from tta_cli.streams.decode import decode_image


@pytest.fixture(scope="module")
def run(bundle_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export-run")
    data = write_image_folder(root / "data", per_class=12)
    run = root / "run"
    adapt(AdaptConfig(model=bundle_path, source=data, run=run, method="tent", batch_size=6, lr=5e-2))
    return run


def onnx_logits(path: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def test_two_steps_export_to_files_that_differ_as_their_states_do(run: Path, tmp_path: Path) -> None:
    first = export_run(run, tmp_path / "step1.onnx", "1", num_images=32)
    last = export_run(run, tmp_path / "step6.onnx", "6", num_images=32)
    for report in (first, last):
        assert report.parity is not None and report.parity.passed
        assert report.parity.max_abs_diff < 1e-4 and report.parity.top1_agreement == 1.0
    images = np.random.default_rng(0).normal(size=(5, 3, 32, 32)).astype(np.float32)
    assert not np.allclose(onnx_logits(first.out, images), onnx_logits(last.out, images), atol=1e-4)
    metadata = read_metadata(last.out)
    store = HistoryStore.open(run)
    assert metadata["tta_cli.step"] == "6"
    assert metadata["tta_cli.snapshot_id"] == store.resolve("6").id
    assert metadata["tta_cli.bundle_sha256"] == store.bundle_sha256()


def test_the_source_alias_gives_the_original_model(run: Path, bundle_path: Path, tmp_path: Path) -> None:
    import torch

    from tta_cli.models import load_bundle

    report = export_run(run, tmp_path / "source.onnx", "source", num_images=16)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = load_bundle(bundle_path).model(images).numpy()
    np.testing.assert_allclose(onnx_logits(report.out, images.numpy()), expected, atol=1e-5)


def test_target_statistics_and_clear_errors(run: Path, tmp_path: Path) -> None:
    report = export_run(run, tmp_path / "target.onnx", "current", bn_stats="target", num_images=24)
    assert read_metadata(report.out)["tta_cli.bn_stats"] == "target"
    with pytest.raises(UsageError, match="Step 42 has no snapshot"):
        export_run(run, tmp_path / "x.onnx", "42")
    with pytest.raises(UsageError, match="not a run directory"):
        export_run(tmp_path, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_cli_export(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    command = [sys.executable, "-m", "tta_cli", "export", str(run), "--out", str(out), "--num-images", "16"]
    ok = subprocess.run([*command, "--step", "3"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "top-1 agreement" in ok.stdout and out.is_file()
    both = subprocess.run([*command, "--step", "1", "--alias", "source"], capture_output=True, text=True)
    assert both.returncode == 2 and "at most one" in both.stderr


def test_a_failed_verification_writes_nothing_and_exits_1(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tta_cli.export import Parity, VerificationFailed, run_export

    def disagreeing(*args: object, **kwargs: object) -> Parity:
        return Parity(images=16, max_abs_diff=0.5, top1_agreement=0.9, provider="CPU", atol=1e-4, passed=False)

    monkeypatch.setattr(run_export, "verify_onnx", disagreeing)
    out = tmp_path / "bad.onnx"
    with pytest.raises(VerificationFailed, match="nothing was written") as caught:
        export_run(run, out, num_images=16)
    assert caught.value.exit_code == 1
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def robust_run(bundle_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export-robust-run")
    data = write_image_folder(root / "data", per_class=12)
    run = root / "run"
    adapt(AdaptConfig(model=bundle_path, source=data, run=run, method="tent", norm="robust", batch_size=6, lr=5e-2))
    return run


def test_a_robust_run_exports_its_smoothed_statistics(robust_run: Path, bundle_path: Path, tmp_path: Path) -> None:
    import torch

    from tta_cli.config import read_config
    from tta_cli.engine.build import adapter_for
    from tta_cli.models import load_bundle

    report = export_run(robust_run, tmp_path / "robust.onnx", num_images=24)
    assert report.bn_stats == "tracked" and read_metadata(report.out)["tta_cli.bn_stats"] == "tracked"
    assert report.parity is not None and report.parity.passed

    # The adapted model as it stood after the last step, switched to eval mode: it normalises
    # with the smoothed statistics and with no dependence on the batch.
    store = HistoryStore.open(robust_run)
    config = read_config(store.first_config())
    state = store.load_snapshot(store.resolve("current").id)
    store.close()
    bundle = load_bundle(bundle_path)
    adapter = adapter_for(bundle, config, torch.device("cpu"))
    adapter.load_state_dict(state)
    adapted = adapter.model.eval()
    source_mean = load_bundle(bundle_path).model.get_submodule("stage1.0.bn1").running_mean
    assert not torch.allclose(adapted.get_submodule("stage1.0.bn1").running_mean, source_mean)

    images = torch.randn(7, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = adapted(images).numpy()
        alone = adapted(images[:1]).numpy()
    np.testing.assert_allclose(onnx_logits(report.out, images.numpy()), expected, atol=1e-5)
    np.testing.assert_allclose(alone[0], expected[0], atol=1e-5)
    source_statistics = export_run(robust_run, tmp_path / "source.onnx", bn_stats="source", check=False)
    assert not np.allclose(onnx_logits(source_statistics.out, images.numpy()), expected, atol=1e-3)


def test_a_batch_statistics_run_exports_source_statistics_by_default(run: Path, tmp_path: Path) -> None:
    report = export_run(run, tmp_path / "tent.onnx", check=False)
    assert report.bn_stats == "source" and read_metadata(report.out)["tta_cli.bn_stats"] == "source"


def test_a_run_from_a_glob_verifies_against_its_own_last_images(bundle_path: Path, tmp_path: Path) -> None:
    """The images read again are the run's stream in the run's order (shuffled here), the last
    ``num_images`` before where it stopped."""
    import torch

    from tta_cli.export.run_export import _recent_images
    from tta_cli.models import load_bundle
    from tta_cli.streams import FolderStream, Preprocess, batches

    data = write_image_folder(tmp_path / "data", per_class=4)
    pattern = str(data / "*" / "*.png")
    run = tmp_path / "run"
    adapt(AdaptConfig(model=bundle_path, source=pattern, run=run, method="tent", order="shuffled", seed=3, limit=12))
    report = export_run(run, tmp_path / "model.onnx", num_images=8)
    assert report.parity is not None and report.parity.passed

    bundle = load_bundle(bundle_path)
    stream = FolderStream(pattern, bundle.spec.framing, bundle.spec.class_names, order="shuffled", seed=3)
    seen = torch.cat([batch.images for batch in batches(stream, 4, Preprocess(bundle.spec.mean, bundle.spec.std))])
    recent = _recent_images(bundle, pattern, 12, 8, "shuffled", 3)
    assert torch.equal(recent, seen[4:12])


def test_the_images_read_again_are_framed_as_the_bundle_says(bundle_path: Path, tmp_path: Path) -> None:
    import torch

    from tta_cli.export.run_export import _recent_images
    from tta_cli.models import load_bundle
    from tta_cli.streams import Preprocess

    bundle = load_bundle(bundle_path)
    framing = Framing((16, 24), 0.5, "center", "bicubic")
    framed = {"input_size": framing.size, "crop_pct": 0.5, "crop_mode": "center", "interpolation": "bicubic"}
    spec = bundle.spec.model_copy(update=framed)
    data = write_image_folder(tmp_path / "data", per_class=2, size=40)
    recent = _recent_images(replace(bundle, spec=spec), data, 6, 6)
    files = sorted(data.glob("*/*.png"))
    expected = Preprocess(spec.mean, spec.std)(np.stack([decode_image(path, framing) for path in files]))
    assert recent.shape == (6, 3, 16, 24) and torch.equal(recent, expected)


def test_a_source_that_is_not_images_asks_for_a_folder(bundle_path: Path, tmp_path: Path) -> None:
    from tta_cli.export.run_export import _recent_images
    from tta_cli.models import load_bundle

    video = tmp_path / "clip.mp4"
    video.write_bytes(b"frames, not images")
    with pytest.raises(UsageError, match="pass a folder with --images"):
        _recent_images(load_bundle(bundle_path), video, 10, 8)
    with pytest.raises(UsageError, match=r"does not exist\. Pass a folder of images"):
        _recent_images(load_bundle(bundle_path), tmp_path / "gone", 10, 8)


def test_export_reads_the_run_stream_with_the_run_settings(
    bundle_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tta_cli.export import run_export

    data = write_image_folder(tmp_path / "data", per_class=4)
    run = tmp_path / "run"
    adapt(
        AdaptConfig(
            model=bundle_path, source=data, run=run, method="tent", order="shuffled", seed=5, stride=2, batch_size=4
        )
    )
    seen = []
    real = run_export._recent_images

    def recording(*args):  # type: ignore[no-untyped-def]
        seen.append(args[1:])
        return real(*args)

    monkeypatch.setattr(run_export, "_recent_images", recording)
    export_run(run, tmp_path / "model.onnx", num_images=4)
    store = HistoryStore.open(run)
    position = store.stream_position()
    store.close()
    assert seen == [(str(data), position, 4, "shuffled", 5, 2)]
