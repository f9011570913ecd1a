"""A run on a CUDA device predicts as on the CPU, and its history rolls back, resumes and exports.

Each test runs on the CPU too, so that what it checks is itself checked where there is no GPU;
the CUDA cases are marked ``cuda`` and skipped without one (``pytest -m cuda`` runs them alone).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.conftest import write_image_folder
from tests.engine.test_returns import measured, noisy_images, source_images
from tests.engine.test_session import pil_images
from tta_cli import Session
from tta_cli.engine.build import build_adapter
from tta_cli.engine.methods import get_method
from tta_cli.events import EventKind
from tta_cli.export.run_export import export_run
from tta_cli.models import load_bundle
from tta_cli.streams import UNLABELED, Batch

NO_CUDA = not torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(NO_CUDA, reason="needs CUDA")])]


@pytest.fixture(autouse=True)
def exact_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorFloat-32 convolutions (on by default; matrix products are not) would differ from the
    CPU's by more than the tolerance."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def adapted_state(session: Session) -> dict[str, torch.Tensor]:
    """θ and the normalisation statistics, on the CPU."""
    state = session.adapter.state_dict()
    return {name: value.detach().cpu() for name, value in (state["params"] | state["buffers"]).items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["tent", "harmonized", "auto"])
def test_a_run_on_the_device_predicts_as_on_the_cpu_and_its_history_serves_it(
    device: str, method: str, bundle_path: Path, tmp_path: Path
) -> None:
    images, _, _ = pil_images(write_image_folder(tmp_path / "data", per_class=4))
    batches = [images[start : start + 4] for start in range(0, 12, 4)]
    with Session.start(bundle_path, run=tmp_path / "on-cpu", method=method, device="cpu", lr=0.01) as session:
        expected = [session.adapt(batch).probabilities for batch in batches]
    run = tmp_path / device
    with Session.start(bundle_path, run=run, method=method, device=device, lr=0.01) as session:
        assert {param.device.type for param in session.adapter.model.parameters()} == {device}
        for batch, cpu_probabilities in zip(batches, expected, strict=True):
            probabilities = session.adapt(batch).probabilities
            assert probabilities.device.type == device
            torch.testing.assert_close(probabilities.cpu(), cpu_probabilities, atol=1e-4, rtol=1e-3)
        last = adapted_state(session)
        session.rollback("source")
    with Session.resume(run) as session:
        assert {param.device.type for param in session.adapter.model.parameters()} == {device}
        session.rollback("3")
        torch.testing.assert_close(adapted_state(session), last, atol=0, rtol=0)
        session.adapt(batches[0])
    report = export_run(run, tmp_path / "adapted.onnx", images=tmp_path / "data", num_images=8)
    assert report.parity is not None and report.parity.passed


@pytest.mark.parametrize("device", DEVICES)
def test_theta_returns_on_the_device_from_a_record_that_a_snapshot_brought_back(
    device: str, group_norm_bundle: Path
) -> None:
    generator = torch.Generator().manual_seed(7)
    loaded = load_bundle(group_norm_bundle)
    bundle = replace(loaded, typicality=measured(loaded.model, generator))
    adapter = build_adapter(bundle, replace(get_method("tent+return"), lr=0.1), torch.device(device))

    def step(images: torch.Tensor) -> list[EventKind]:
        labels = torch.full((len(images),), UNLABELED)
        batch = Batch([""] * len(images), images.to(device), labels.to(device))
        return [event.kind for event in adapter.step(batch).events]

    try:
        for _ in range(4):
            step(noisy_images(16, generator))
        # As the history stores it: on the CPU.
        saved = adapter.state_dict()
        stored = {key: value for key, value in saved.items() if key != "source_return"}
        stored["source_return"] = {"seen": saved["source_return"]["seen"].cpu(), "count": 4}
        adapter.load_state_dict(stored)
        assert EventKind.RESET in step(source_images(16, generator))
    finally:
        adapter.close()
