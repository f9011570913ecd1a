"""The command line end to end, in a subprocess as a user runs it."""

from __future__ import annotations

import csv
import inspect
import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from tests.conftest import write_image_folder
from tests.streams.test_folder import add_broken_files


def tta(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tta_cli", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def test_adapt_writes_predictions_summary_and_config(bundle_path: Path, tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", per_class=5)
    broken = add_broken_files(data)
    run = tmp_path / "run"
    result = tta(
        "adapt", "--model", bundle_path, "--source", data, "--run", run, "--method", "tent", "--batch-size", "4"
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["images_seen"] == 15
    assert summary["images_skipped"] == len(broken)
    assert {entry["input_id"] for entry in summary["skipped"]} == broken
    assert summary["steps"] == 4 and summary["method"] == "tent" and summary["device"] == "cpu"
    assert 0 <= summary["online_accuracy"] <= 1 and summary["labeled_images"] == 15
    rows = list(csv.DictReader((run / "predictions.csv").open()))
    assert len(rows) == 15 and rows[0].keys() >= {"id", "class", "confidence", "step"}
    assert [int(row["step"]) for row in rows] == [1] * 4 + [2] * 4 + [3] * 4 + [4] * 3
    assert 'method = "tent"' in (run / "run.toml").read_text()
    assert "online accuracy" in result.stdout


def test_config_file_is_loaded_and_flags_override_it(bundle_path: Path, tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", per_class=2)
    config = tmp_path / "settings.toml"
    config.write_text(f'[adapt]\nmodel = "{bundle_path}"\nsource = "{data}"\nmethod = "norm"\nbatch_size = 2\n')
    run = tmp_path / "run"
    result = tta("adapt", "--config", config, "--run", run, "--batch-size", "3")
    assert result.returncode == 0, result.stderr
    resolved = (run / "run.toml").read_text()
    assert 'method = "norm"' in resolved and "batch_size = 3" in resolved


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "{missing}"], "does not exist"),
        (["--method", "tnet"], "Unknown method 'tnet'"),
        (["--method", "tent+memory0"], "memoryN with N ≥ 1"),
        (["--method", "norm+memory"], "makes no update"),
        (["--method", "tent+sharp"], "Unknown method variant 'sharp'"),
        (["--device", "cuda:7"], "cuda:7"),
        (["--model", "{missing}"], "does not exist"),
        (["--batch-size", "0"], "batch_size"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_code_2(
    bundle_path: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    data = write_image_folder(tmp_path / "data", per_class=1)
    base = {"--model": str(bundle_path), "--source": str(data), "--run": str(tmp_path / "run")}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value.format(missing=tmp_path / "missing")
    result = tta("adapt", *[item for pair in base.items() for item in pair])
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3


def test_a_path_the_system_refuses_is_one_sentence_naming_it(bundle_path: Path, tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", per_class=1)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = tta("adapt", "--model", bundle_path, "--source", data, "--run", blocker / "run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"Could not use {blocker}" in " ".join(result.stderr.split())
    assert blocker.read_text() == "not a folder"


def test_debug_shows_the_traceback(bundle_path: Path, tmp_path: Path) -> None:
    result = tta("--debug", "adapt", "--model", tmp_path / "nope", "--source", tmp_path, "--run", tmp_path / "r")
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_an_existing_run_is_never_overwritten(bundle_path: Path, tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", per_class=1)
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("precious")
    result = tta("adapt", "--model", bundle_path, "--source", data, "--run", run)
    assert result.returncode == 2 and "already exists" in result.stderr
    assert (run / "keep.txt").read_text() == "precious"


def test_prepare_refuses_a_pickle_checkpoint(tmp_path: Path, clean_folder: Path) -> None:
    import torch

    from tta_cli.models import build_architecture

    checkpoint = tmp_path / "model.pt"
    torch.save(build_architecture("tiny_resnet", 3).state_dict(), checkpoint)
    args = ["prepare", "--arch", "tiny_resnet", "--weights", checkpoint, "--source-data", clean_folder]
    args += ["--out", tmp_path / "bundle", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--num-images", "6"]
    refused = tta(*args)
    assert refused.returncode == 2 and "--trust-pickle" in refused.stderr
    assert not (tmp_path / "bundle").exists()
    accepted = tta(*args, "--trust-pickle")
    assert accepted.returncode == 0, accepted.stderr
    assert (tmp_path / "bundle" / "source_stats.safetensors").is_file()


def test_prepare_takes_the_framing_and_needs_mean_and_std_of_a_zoo_model(tmp_path: Path, clean_folder: Path) -> None:
    from safetensors.torch import save_file

    from tta_cli.models import build_architecture

    weights = tmp_path / "model.safetensors"
    save_file(build_architecture("tiny_resnet", 3).state_dict(), str(weights))
    args: list[str | Path] = ["prepare", "--arch", "tiny_resnet", "--weights", weights, "--source-data", clean_folder]
    args += ["--num-images", "6", "--input-size", "24,28"]
    framing = ["--crop-pct", "0.75", "--crop-mode", "center", "--interpolation", "bicubic"]
    refused = tta(*args, "--out", tmp_path / "refused", *framing)
    assert refused.returncode == 2 and "Give --mean and --std for architecture 'tiny_resnet'" in refused.stderr
    assert not (tmp_path / "refused").exists()
    accepted = tta(*args, "--out", tmp_path / "bundle", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", *framing)
    assert accepted.returncode == 0, accepted.stderr
    assert "input 24×28 by center crop 0.75 (bicubic)" in " ".join(accepted.stderr.split())
    assert "No typicality measured: it needs 200 readable clean images" in " ".join(accepted.stderr.split())
    text = (tmp_path / "bundle" / "model.toml").read_text()
    assert "crop_pct = 0.75" in text and 'crop_mode = "center"' in text and 'interpolation = "bicubic"' in text


def help_text(*command: str) -> str:
    """``--help`` of a command, one option per line: wide enough that Rich wraps nothing."""
    environment = {**os.environ, "COLUMNS": "300"}
    result = subprocess.run(
        [sys.executable, "-m", "tta_cli", *command, "--help"], capture_output=True, text=True, env=environment
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_adapt_help_lists_the_choices_and_the_configuration_s_defaults() -> None:
    text = help_text("adapt")
    for choices in ("<adam|sgd>", "<sum|gh|gh++|sam-gs|pcgrad|upgrad|mgda>", "<sorted|shuffled>"):
        assert choices in text
    assert "<batch|robust|tbr|balanced|weighted>" in text
    for default in ("(default 64)", "(default sorted)", "(default 0)", "(default 5)", "(default 1)", "(default on)"):
        assert default in text
    assert "default auto" in text


PREPARE = ["prepare", "--arch", "airnet", "--weights", "w", "--source-data", "d", "--out", "o"]


@pytest.mark.parametrize(
    "args",
    [
        ["adapt", "--optimizer", "lion"],
        ["adapt", "--norm", "layer"],
        ["adapt", "--order", "random"],
        ["adapt", "--harmonizer", "nash"],
        ["export", "run", "--out", "model.onnx", "--simplify", "onnxsim"],
        ["export", "run", "--out", "model.onnx", "--bn-stats", "batch"],
        ["train-mgg", "--model", "bundle", "--data", "data", "--harmonizer", "nash"],
        [*PREPARE, "--crop-mode", "border"],
        [*PREPARE, "--interpolation", "area"],
    ],
)
def test_an_unknown_choice_is_refused_before_any_work(args: list[str]) -> None:
    result = tta(*args)
    assert result.returncode == 2
    assert "is not one of" in " ".join(result.stderr.split()) and "Traceback" not in result.stderr


def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    result = tta("adapt", "--resume", tmp_path, "--batch-size", "8", "--no-guard")
    assert result.returncode == 2
    assert "--resume continues with the run's own settings; drop --batch-size, --no-guard." in result.stderr


def test_bench_options_default_to_the_bench_configuration() -> None:
    """The defaults are restated in the signature (reading ``BenchConfig`` would import torch for
    ``--help``); this keeps them equal."""
    from tta_cli.bench.run import BenchConfig
    from tta_cli.cli import bench

    for name, parameter in inspect.signature(bench).parameters.items():
        if parameter.default is inspect.Parameter.empty or parameter.default is None:
            continue
        default = BenchConfig.model_fields[name].get_default()
        option = parameter.default
        assert (tuple(option.split(",")) if isinstance(default, tuple) else option) == default, name


def test_the_command_line_starts_without_torch() -> None:
    """Typed choices are spelled out in tta_cli.config so that --help does not wait for torch."""
    code = "import sys, tta_cli.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_export_choices_are_the_exporter_s() -> None:
    from tta_cli.cli import export
    from tta_cli.export.rebuild import BnStats
    from tta_cli.export.to_onnx import Simplify

    def choices(option: str) -> tuple[object, ...]:
        annotated = typing.get_type_hints(export, include_extras=True)[option]
        values = typing.get_args(typing.get_args(annotated)[0])
        return typing.get_args(values[0]) if type(None) in values else values

    assert choices("simplify") == typing.get_args(Simplify)
    assert choices("bn_stats") == typing.get_args(BnStats)


def test_history_shows_bracketed_text_as_written_and_a_run_without_steps_has_nothing_to_plot(
    bundle_path: Path, tmp_path: Path
) -> None:
    from tta_cli import Session
    from tta_cli.events import Event, EventKind
    from tta_cli.history import HistoryStore

    run = tmp_path / "run"
    Session.start(bundle_path, run, method="tent").close()
    store = HistoryStore.open(run)
    store.record_events(0, [Event(EventKind.RESUME, "shots/[cam1] [/x]")])
    store.close()
    shown = tta("history", run)
    assert shown.returncode == 0, shown.stderr
    assert "shots/[cam1] [/x]" in shown.stdout
    plotted = tta("history", run, "--json", "--plot", tmp_path / "history.png")
    assert plotted.returncode == 2 and "The run has no steps to plot yet." in plotted.stderr
