"""Any model a user brings: grayscale inputs, other sizes, a factory in a file, clear refusals."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import CLASSES, MEAN, STD, write_image_folder
from tta_cli.errors import SourceNotFinite, UsageError
from tta_cli.models import load_bundle, prepare_bundle
from tta_cli.models.bundle import WEIGHTS_FILE
from tta_cli.streams import Preprocess

GRAY_MODEL = '''
from torch import nn


def gray_net(num_classes, height=28, width=20):
    """A BatchNorm CNN for one-channel HEIGHT×WIDTH images (its head needs that exact size)."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * (height // 2) * (width // 2), num_classes),
    )
'''


@pytest.fixture(scope="module")
def gray_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A one-channel 28×20 model from a file-path factory, prepared on a folder of RGB images."""
    root = tmp_path_factory.mktemp("gray")
    source = root / "model.py"
    source.write_text(GRAY_MODEL)
    data = write_image_folder(root / "data", per_class=6, size=24)
    sys.path.insert(0, str(root))
    try:
        import model as user_model  # type: ignore[import-not-found]

        torch.manual_seed(0)
        weights = root / "weights.safetensors"
        save_file(user_model.gray_net(len(CLASSES)).state_dict(), str(weights))
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("model", None)
    out = root / "bundle"
    prepare_bundle(
        f"{source}:gray_net", weights, data, out, mean=(0.5,), std=(0.25,), input_size=(28, 20), num_images=12
    )
    return out, data, weights


def test_a_grayscale_model_from_a_file_becomes_a_bundle(gray_bundle: tuple[Path, Path, Path]) -> None:
    bundle_path, _, _ = gray_bundle
    bundle = load_bundle(bundle_path)
    assert bundle.spec.channels == 1 and bundle.spec.input_size == (28, 20)
    assert bundle.spec.architecture == f"{bundle_path.parent / 'model.py'}:gray_net"


def test_frames_are_converted_to_the_models_channels() -> None:
    rgb = torch.tensor([[[[10, 200, 40]]]], dtype=torch.uint8).numpy()  # one 1×1 image
    gray = Preprocess((0.0,), (1 / 255,))(rgb)
    assert gray.shape == (1, 1, 1, 1)
    assert gray.item() == pytest.approx(0.299 * 10 + 0.587 * 200 + 0.114 * 40)


def test_a_grayscale_bundle_adapts_and_exports_with_parity(
    gray_bundle: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    bundle_path, data, _ = gray_bundle
    run, onnx_file = tmp_path / "run", tmp_path / "gray.onnx"
    adapt = cli(
        "adapt", "--model", bundle_path, "--source", data, "--run", run, "--method", "tent", "--batch-size", "6"
    )
    assert adapt.returncode == 0, adapt.stderr
    assert json.loads((run / "summary.json").read_text())["steps"] == 3
    export = cli("export", run, "--out", onnx_file, "--num-images", "18")
    assert export.returncode == 0, export.stderr
    import onnx

    metadata = {entry.key: entry.value for entry in onnx.load(str(onnx_file)).metadata_props}
    assert metadata["channels"] == "1" and json.loads(metadata["input_size"]) == [28, 20]
    assert "top-1 agreement" in export.stdout and "100.00%" in export.stdout


def test_a_model_that_rejects_the_declared_input_gives_one_sentence(
    gray_bundle: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, data, weights = gray_bundle
    architecture = f"{gray_bundle[0].parent / 'model.py'}:gray_net"
    with pytest.raises(UsageError, match=r"fails on a 3×28×20 input .*one mean and std value per input channel"):
        prepare_bundle(architecture, weights, data, tmp_path / "rgb", mean=MEAN, std=STD, input_size=(28, 20))
    result = cli(
        "prepare", "--arch", architecture, "--weights", weights, "--source-data", data, "--out", tmp_path / "small",
        "--mean", "0.5", "--std", "0.25", "--input-size", "32",
    )  # fmt: skip
    assert result.returncode == 2 and "fails on a 1×32×32 input" in result.stderr
    assert "Traceback" not in result.stderr


def test_mean_and_std_take_one_or_three_values(gray_bundle: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, data, weights = gray_bundle
    result = cli(
        "prepare", "--arch", "tiny_resnet", "--weights", weights, "--source-data", data, "--out", tmp_path / "x",
        "--mean", "0.5,0.5", "--std", "0.25,0.25",
    )  # fmt: skip
    assert result.returncode == 2 and "--mean takes 1 or 3 comma-separated numbers" in result.stderr


@pytest.mark.parametrize("where", ["weights", "statistics"])
def test_a_bundle_with_a_nan_is_refused_naming_the_tensor(bundle_path: Path, tmp_path: Path, where: str) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in bundle_path.iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    name = WEIGHTS_FILE if where == "weights" else "source_stats.safetensors"
    tensors = load_file(str(broken / name))
    key = sorted(key for key, value in tensors.items() if value.is_floating_point())[0]
    tensors[key].view(-1)[0] = math.nan
    save_file(tensors, str(broken / name))
    with pytest.raises(UsageError, match=rf"non-finite values in '{key}'"):
        load_bundle(broken)


def test_a_source_that_predicts_non_finite_values_ends_the_run_at_once(bundle_path: Path, tmp_path: Path) -> None:
    from tta_cli import Session

    images = torch.full((4, 3, 32, 32), 1.0)
    with Session.start(bundle_path, run=tmp_path / "run", method="norm") as session:
        last = list(session.adapter.model.modules())[-1]
        last.register_forward_hook(lambda module, inputs, output: output * math.inf)
        with pytest.raises(SourceNotFinite, match="as given predicts non-finite values"):
            session.adapt(images)
    assert (tmp_path / "run" / "summary.json").is_file()


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from tta_cli.cli import main; main()", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_the_factory_file_module_is_named_per_file(tmp_path: Path) -> None:
    from tta_cli.models import build_architecture

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "model.py").write_text(
            textwrap.dedent(f"""
            from torch import nn
            def net(num_classes):
                return nn.Linear({1 if folder == "a" else 2}, num_classes)
            """)
        )
    first = build_architecture(f"{tmp_path / 'a' / 'model.py'}:net", 3)
    second = build_architecture(f"{tmp_path / 'b' / 'model.py'}:net", 3)
    assert (first.in_features, second.in_features) == (1, 2)
    with pytest.raises(UsageError, match="does not exist"):
        build_architecture(f"{tmp_path / 'missing.py'}:net", 3)
    (tmp_path / "broken.py").write_text("def net(num_classes:\n")
    with pytest.raises(UsageError, match="not valid Python"):
        build_architecture(f"{tmp_path / 'broken.py'}:net", 3)
    # The file runs under its own __future__ imports, not those of the module that loads it.
    (tmp_path / "annotated.py").write_text(
        "from torch import nn\n\ndef net(num_classes: int):\n"
        "    model = nn.Linear(1, num_classes)\n    model.hint = net.__annotations__['num_classes']\n    return model\n"
    )
    assert build_architecture(f"{tmp_path / 'annotated.py'}:net", 3).hint is int


@pytest.mark.parametrize(
    ("source", "refusal"),
    [
        ("from layers import Block\n", r"failed at an import \(ModuleNotFoundError: No module named 'layers'\)"),
        ("from .layers import Block\n", r"failed at an import .*not files beside it"),
        ("raise RuntimeError('no GPU here')\n", r"running .*model.py failed \(RuntimeError: no GPU here\)"),
        ("def net(num_classes):\n    raise ValueError('bad width')\n", r"failed to build \(ValueError: bad width\)"),
        ("def net(classes):\n    pass\n", r"cannot be built with num_classes=3"),
        # tta-cli's own refusal, raised inside the user's factory, arrives as it was.
        (
            "from tta_cli.models import build_architecture\n\ndef net(num_classes):\n"
            "    return build_architecture('no_such_net', num_classes)\n",
            r"^Unknown architecture 'no_such_net'",
        ),
    ],
)
def test_what_fails_in_a_model_file_is_one_sentence(tmp_path: Path, source: str, refusal: str) -> None:
    from tta_cli.models import build_architecture

    (tmp_path / "model.py").write_text(source)
    with pytest.raises(UsageError, match=refusal):
        build_architecture(f"{tmp_path / 'model.py'}:net", 3)


def test_a_bundles_file_runs_only_once_trusted_here(
    gray_bundle: tuple[Path, Path, Path], bundle_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bundle from elsewhere, naming a file in its folder: refused until ``tta-cli trust``,
    and again once the file changes; its run exports, rebuilt from that folder."""
    gray, data, _ = gray_bundle
    copy = tmp_path / "copied"
    shutil.copytree(gray, copy)
    shutil.copy(gray.parent / "model.py", copy / "model.py")
    spec = (copy / "model.toml").read_text()
    (copy / "model.toml").write_text(spec.replace(str(gray.parent / "model.py"), "model.py"))
    monkeypatch.setenv("TTA_CLI_CONFIG", str(tmp_path / "elsewhere"))
    with pytest.raises(UsageError, match="does not trust"):
        load_bundle(copy)
    refused = cli("adapt", "--model", copy, "--source", data, "--run", tmp_path / "refused")
    assert refused.returncode == 2 and "tta-cli trust" in refused.stderr and "Traceback" not in refused.stderr
    trusted = cli("trust", copy)
    assert trusted.returncode == 0, trusted.stderr
    adapted = cli("adapt", "--model", copy, "--source", data, "--run", tmp_path / "run", "--batch-size", "6")
    assert adapted.returncode == 0, adapted.stderr
    exported = cli("export", tmp_path / "run", "--out", tmp_path / "model.onnx")
    assert exported.returncode == 0, exported.stderr
    with (copy / "model.py").open("a") as source:
        source.write("\nCHANGED = True\n")
    with pytest.raises(UsageError, match="changed since it was trusted"):
        load_bundle(copy)
    zoo = cli("trust", bundle_path)
    assert zoo.returncode == 0 and "nothing to trust" in zoo.stderr


def test_a_bundle_cannot_ship_a_module_of_its_own(
    gray_bundle: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run from the bundle's folder, Python would import a module beside model.toml: named as a
    module, a bundle's own code would skip the trust its file needs."""
    gray, _, _ = gray_bundle
    copy = tmp_path / "shipped"
    shutil.copytree(gray, copy)
    shutil.copy(gray.parent / "model.py", copy / "shipped_model.py")
    spec = (copy / "model.toml").read_text()
    (copy / "model.toml").write_text(spec.replace(f"{gray.parent / 'model.py'}:gray_net", "shipped_model:gray_net"))
    monkeypatch.syspath_prepend(str(copy))
    with pytest.raises(UsageError, match="lies in the bundle's own folder"):
        load_bundle(copy)
    assert "shipped_model" not in sys.modules
