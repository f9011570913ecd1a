"""``tta-cli distill`` end to end on the tiny teacher: the bundle, its record, resume, bad input."""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import write_image_folder
from tests.streams.test_folder import add_broken_files
from tests.test_cli import tta
from tta_cli.distill import DistillConfig, DistillProgress, distill
from tta_cli.distill.checkpoint import checkpoint_folder
from tta_cli.errors import UsageError
from tta_cli.models import load_bundle


def settings(run: Path, source: Path, out: Path, **overrides: Any) -> DistillConfig:
    values = {"run": run, "out": out, "student": "tiny_resnet", "source_data": source, "epochs": 2, "batch_size": 6}
    return DistillConfig.model_validate(values | {"device": "cpu"} | overrides)


@pytest.fixture(scope="module")
def student(teacher_run: Path, clean_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("students") / "student"
    distill(settings(teacher_run, clean_folder, out))
    return out


def weights(bundle: Path) -> dict[str, torch.Tensor]:
    return load_file(str(bundle / "weights.safetensors"))


def test_the_student_is_an_ordinary_bundle_with_its_record(student: Path, bundle_path: Path) -> None:
    loaded, teacher = load_bundle(student), load_bundle(bundle_path)
    assert loaded.spec.architecture == "tiny_resnet"
    for field in ("class_names", "input_size", "mean", "std", "crop_pct", "crop_mode", "interpolation"):
        assert getattr(loaded.spec, field) == getattr(teacher.spec, field)
    assert loaded.spec.name == "student" and loaded.source_stats
    record = json.loads((student / "distill.json").read_text())
    assert record["kd"] == "unikd" and record["settings"]["temperature"] == 4.0
    assert record["teacher"]["step"] == 2 and record["data"]["target_images"] == 12
    assert record["schedules"]["beta"] == "p"
    curves = record["curves"]
    for name in ("loss", "kd", "hint", "adversarial", "domain", "target_accuracy", "joint_weight"):
        assert len(curves[name]) == 2, name
    assert all(0 <= weight <= 1 for weight in curves["joint_weight"])
    # The feature discriminator learns: its accuracy is not the same from epoch to epoch.
    assert len(set(curves["feature_discriminator_accuracy"])) > 1
    assert not checkpoint_folder(student).exists()


def test_adapt_runs_on_the_student(student: Path, tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", per_class=2, seed=3)
    result = tta("adapt", "--model", student, "--source", data, "--run", tmp_path / "run", "--batch-size", "3")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["images_seen"] == 6


class Killed(Exception):
    pass


def test_resume_after_a_kill_ends_where_an_uninterrupted_run_does(
    student: Path, teacher_run: Path, clean_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "student"

    def kill_after_the_first_epoch(progress: DistillProgress) -> None:
        if progress.epoch_metrics is not None and progress.epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        distill(settings(teacher_run, clean_folder, out), on_progress=kill_after_the_first_epoch)
    assert not out.exists() and checkpoint_folder(out).is_dir()
    with pytest.raises(UsageError, match="continue it with --resume"):
        distill(settings(teacher_run, clean_folder, out))
    with pytest.raises(UsageError, match="epochs was 2, now 3"):
        distill(settings(teacher_run, clean_folder, out, epochs=3), resume=True)
    with pytest.raises(UsageError, match="names another state than when this distillation started"):
        distill(settings(teacher_run, clean_folder, out, selector="1"), resume=True)
    report = distill(settings(teacher_run, clean_folder, out, selector="2"), resume=True)  # "current" is step 2
    assert report.resumed_after_epoch == 1
    expected, resumed = weights(student), weights(out)
    assert expected.keys() == resumed.keys()
    for key, value in expected.items():
        assert torch.equal(value, resumed[key]), key
    curves = json.loads((out / "distill.json").read_text())["curves"]
    assert curves["loss"] == json.loads((student / "distill.json").read_text())["curves"]["loss"]


@pytest.mark.parametrize(("kd", "bn_stats"), [("plain", "target"), ("none", None)])
def test_the_baselines_and_another_teacher(
    kd: str, bn_stats: str | None, teacher_run: Path, clean_folder: Path, tmp_path: Path
) -> None:
    options = {"kd": kd, "epochs": 1, "augment": False, "selector": "1", "bn_stats": bn_stats}
    report = distill(settings(teacher_run, clean_folder, tmp_path / kd, **options))
    assert report.kd == kd and report.teacher_target_accuracy is not None
    record = json.loads((tmp_path / kd / "distill.json").read_text())
    assert record["teacher"]["step"] == 1 and record["teacher"]["bn_stats"] == (bn_stats or "source")
    assert ("kd" in record["curves"]) == (kd == "plain") and "feature_discriminator" not in record["curves"]


def test_unreadable_target_images_are_skipped_and_counted(
    teacher_run: Path, clean_folder: Path, tmp_path: Path
) -> None:
    target = write_image_folder(tmp_path / "target", per_class=2, seed=4)
    broken = add_broken_files(target)
    report = distill(settings(teacher_run, clean_folder, tmp_path / "out", target_data=target, epochs=1))
    assert report.target_images == 6 and report.skipped_images == len(broken)


def test_a_student_starts_from_a_trained_bundle(
    teacher_run: Path, bundle_path: Path, clean_folder: Path, tmp_path: Path
) -> None:
    # A step size far below the weights' scale: the student ends where it started (and not where a
    # fresh one of seed 1 would: the bundle's random weights are seed 0's).
    options = {"student": str(bundle_path), "kd": "plain", "epochs": 1, "augment": False, "lr": 1e-12, "seed": 1}
    distill(settings(teacher_run, clean_folder, tmp_path / "out", **options))
    record = json.loads((tmp_path / "out" / "distill.json").read_text())
    assert record["student"]["architecture"] == "tiny_resnet"
    assert record["student"]["started_from"]["bundle"] == str(bundle_path.resolve())
    started, ended = load_bundle(bundle_path), load_bundle(tmp_path / "out")
    assert ended.spec.architecture == "tiny_resnet"
    for (name, before), after in zip(started.model.named_parameters(), ended.model.parameters(), strict=True):
        torch.testing.assert_close(after, before, rtol=0, atol=1e-9, msg=name)


def test_a_student_bundle_must_take_the_teachers_input(
    teacher_run: Path, bundle_path: Path, clean_folder: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    shutil.copytree(bundle_path, other)
    spec = (other / "model.toml").read_text()
    (other / "model.toml").write_text(spec.replace("0.25", "0.3"))
    result = tta(
        "distill", teacher_run, "--student", other, "--source-data", clean_folder, "--out", tmp_path / "out",
        "--epochs", "1", "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "has std (0.3, 0.3, 0.3) where the teacher has (0.25, 0.25, 0.25)" in result.stderr.replace("\n", " ")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--student": "tiny_resnett"}, "Unknown architecture 'tiny_resnett'"),
        ({"RUN": "{empty}"}, "is not a run directory"),
        ({"--step": "1", "--alias": "current"}, "at most one of --step and --alias"),
        ({"--source-data": "{empty}"}, "must hold one sub-folder per class"),
        ({"--source-data": "{other_classes}"}, "found bird"),
        ({"--resume": ""}, "Nothing to resume"),
        ({"--batch-size": "0"}, "Option --batch-size"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_code_2(
    change: dict[str, str], message: str, teacher_run: Path, clean_folder: Path, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "other" / "bird").mkdir(parents=True)
    places = {"empty": tmp_path / "empty", "other_classes": tmp_path / "other"}
    options = {"--student": "tiny_resnet", "--source-data": str(clean_folder), "--out": str(tmp_path / "out")}
    options |= {key: value.format(**places) for key, value in change.items()}
    run = options.pop("RUN", str(teacher_run))
    arguments = [item for key, value in options.items() for item in (key, value) if item]
    result = tta("distill", run, *arguments, "--epochs", "1", "--device", "cpu")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 3
    assert not (tmp_path / "out").exists()


def test_the_command_line_defaults_are_the_library_defaults() -> None:
    from tta_cli import cli

    parameters = inspect.signature(cli.distill).parameters
    shared = [name for name, field in DistillConfig.model_fields.items() if not field.is_required()]
    assert {"epochs", "batch_size", "lr", "temperature", "kd", "bn_stats"} <= set(shared) & set(parameters)
    for name in set(shared) & set(parameters):
        assert parameters[name].default == DistillConfig.model_fields[name].default, name


@pytest.mark.parametrize("name", ["notes.txt", ".notes"])
def test_a_checkpoint_folder_holding_a_user_s_files_is_refused_not_removed(
    teacher_run: Path, clean_folder: Path, tmp_path: Path, name: str
) -> None:
    """The folder beside the bundle is removed when the distillation ends."""
    mine = tmp_path / "out.checkpoints" / name
    mine.parent.mkdir()
    mine.write_text("kept")
    result = tta(
        "distill", teacher_run, "--student", "tiny_resnet", "--source-data", clean_folder, "--out", tmp_path / "out",
        "--epochs", "1", "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 2 and f"holds {name}, which no distillation wrote" in result.stderr
    assert mine.read_text() == "kept" and not (tmp_path / "out").exists()
