"""The Python API: a caller's own loop hands batches to a Session, as ``tta-cli adapt`` does."""

from __future__ import annotations

import contextlib
import csv
import os
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import CLASSES, write_image_folder
from tta_cli import Session
from tta_cli.engine.adapter import StepResult
from tta_cli.engine.guard import Verdict
from tta_cli.errors import UsageError
from tta_cli.events import Event, EventKind
from tta_cli.history import HistoryStore
from tta_cli.streams import Batch

ROOT = Path(__file__).resolve().parents[2]


def pil_images(folder: Path) -> tuple[list[Image.Image], list[str], list[int]]:
    paths = sorted(folder.glob("*/*.png"))
    return (
        [Image.open(path) for path in paths],
        [path.name for path in paths],
        [CLASSES.index(p.parent.name) for p in paths],
    )


def test_a_session_records_what_adapt_records(bundle_path: Path, tmp_path: Path) -> None:
    images, ids, labels = pil_images(write_image_folder(tmp_path / "data", per_class=4))
    with Session.start(bundle_path, run=tmp_path / "run", method="tent") as session:
        for start in range(0, 12, 4):
            result = session.adapt(
                images[start : start + 4], ids=ids[start : start + 4], labels=labels[start : start + 4]
            )
        assert result.step == 3 and result.predictions.shape == (4,)
        assert session.class_names == list(CLASSES)
    summary = (tmp_path / "run" / "summary.json").read_text()
    assert '"images_seen": 12' in summary and '"labeled_images": 12' in summary
    with (tmp_path / "run" / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["id"] for row in rows] == ids and {row["step"] for row in rows} == {"1", "2", "3"}
    store = HistoryStore.open(tmp_path / "run")
    assert store.last_step() == 3 and store.stream_position() == 12
    store.close()


def test_tensors_and_arrays_of_the_input_size_are_taken_as_they_are(bundle_path: Path, tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    as_tensor = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    with Session.start(bundle_path, run=tmp_path / "run", method="norm") as session:
        batch_from_array = session.preprocess(pixels)
        from_tensor = session.adapt(as_tensor)
        torch.testing.assert_close(session.preprocess.tensor(as_tensor), batch_from_array)
        session.adapt(pixels)
        with pytest.raises(UsageError, match=r"N×3×32×32"):
            session.adapt(torch.zeros(2, 3, 16, 16))
        with pytest.raises(UsageError, match="ids"):
            session.adapt(pixels, ids=["one"])
    assert from_tensor.probabilities.shape == (4, len(CLASSES))


def test_rollback_and_resume_from_python(bundle_path: Path, tmp_path: Path) -> None:
    images, _, _ = pil_images(write_image_folder(tmp_path / "data", per_class=4))
    run = tmp_path / "run"
    with Session.start(bundle_path, run=run, method="tent", lr=0.1) as session:
        source = {name: value.clone() for name, value in session.adapter.named_params.items()}
        for start in range(0, 12, 4):
            session.adapt(images[start : start + 4])
        moved = session.adapter.state_dict()["params"]
        assert any(not torch.equal(moved[name], value) for name, value in source.items())
        target = session.rollback("source")
        assert target.step == 0
        for name, value in session.adapter.named_params.items():
            assert torch.equal(value, source[name]), name
    with Session.resume(run) as session:
        assert session.adapter.step_count == 3 and session.position == 12
        for name, value in session.adapter.named_params.items():
            assert torch.equal(value, source[name]), name
        assert session.adapt(images[:4]).step == 4


def test_a_step_is_recorded_whole_or_not_at_all(
    bundle_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed while the guard's rollback is being recorded leaves no half of its step:
    neither its events nor its row without the rollback that goes with them."""
    images, _, _ = pil_images(write_image_folder(tmp_path / "data", per_class=4))
    run = tmp_path / "run"
    with Session.start(bundle_path, run=run, method="tent") as session:
        session.adapt(images[:4])
        healthy = session.adapter.step

        def collapsing(batch: Batch) -> StepResult:
            result = healthy(batch)
            event = Event(EventKind.SKIP, "seen before the rollback")
            return replace(result, verdict=Verdict("rollback", "test", target="source"), events=[event])

        def killed(*args: object, **kwargs: object) -> None:
            raise KeyboardInterrupt

        monkeypatch.setattr(session.adapter, "step", collapsing)
        monkeypatch.setattr(session.store, "rollback", killed)
        with pytest.raises(KeyboardInterrupt):
            session.adapt(images[4:8])
    store = HistoryStore.open(run)
    assert store.last_step() == 1 and store.stream_position() == 4
    assert [event.step for event in store.events() if event.step > 1] == []
    store.close()


def test_a_run_in_use_is_refused(bundle_path: Path, tmp_path: Path) -> None:
    with Session.start(bundle_path, run=tmp_path / "run", method="norm"), pytest.raises(UsageError, match="in use"):
        Session.resume(tmp_path / "run")


def test_the_readme_snippet_runs(tmp_path: Path) -> None:
    """The README's "From Python" example, as a user copies it, on the shipped sample model."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## From Python", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert snippet is not None, "README.md shows no Python example under 'From Python'"
    (tmp_path / "sample_models").symlink_to(ROOT / "sample_models")
    with contextlib.chdir(tmp_path) if hasattr(contextlib, "chdir") else _chdir(tmp_path):
        exec(compile(snippet.group(1), "README.md", "exec"), {})
    assert (tmp_path / "runs" / "from-python" / "summary.json").is_file()
    assert (tmp_path / "runs" / "from-python.onnx").is_file()


@contextlib.contextmanager
def _chdir(path: Path):  # type: ignore[no-untyped-def]
    """contextlib.chdir for Python 3.10."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def test_a_run_records_its_folder_source_absolute_so_it_resumes_from_anywhere(
    bundle_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tta_cli.config import AdaptConfig, read_config
    from tta_cli.engine import adapt, resume

    write_image_folder(tmp_path / "data", per_class=4)
    monkeypatch.chdir(tmp_path)
    adapt(AdaptConfig(model=bundle_path, source="data", run="run", method="tent", batch_size=3))
    store = HistoryStore.open(tmp_path / "run")
    assert read_config(store.first_config()).source == str(tmp_path / "data")
    store.close()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert resume(tmp_path / "run").images_seen == 12  # the folder is found again, nothing left to read


def test_a_run_that_cannot_start_leaves_a_caller_s_model_without_hooks(bundle_path: Path, tmp_path: Path) -> None:
    from tta_cli.config import AdaptConfig
    from tta_cli.models import load_bundle

    bundle = load_bundle(bundle_path)
    taken = tmp_path / "run"
    taken.mkdir()
    (taken / "notes.txt").write_text("someone else's")
    config = AdaptConfig(model=bundle_path, source="python", run=taken, method="tent+weighted")
    with pytest.raises(UsageError):
        Session.create(config, bundle)
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in bundle.model.modules())
    assert (taken / "notes.txt").read_text() == "someone else's"
