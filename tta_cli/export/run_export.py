"""``tta-cli export``: one recorded state of a run → a verified ONNX file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel

from tta_cli.config import AdaptConfig, read_config
from tta_cli.engine.build import default_method, resolve_method
from tta_cli.engine.norms import SMOOTHED
from tta_cli.errors import ExitCode, TTAError, UsageError
from tta_cli.export.rebuild import BnStats, build_export_model
from tta_cli.export.to_onnx import Simplify, export_onnx
from tta_cli.export.verify import Parity, verify_onnx
from tta_cli.files import atomic_path
from tta_cli.history import HistoryStore, SnapshotRef
from tta_cli.models import Bundle, load_bundle
from tta_cli.streams import FolderStream, Preprocess, batches


class VerificationFailed(TTAError):
    """onnxruntime did not reproduce PyTorch within tolerance (exit code 1)."""

    exit_code = ExitCode.CHECK_FAILED


@dataclass
class RecordedState:
    """One recorded state of a run and what rebuilding its model needs (``build_export_model``)."""

    bundle: Bundle
    config: AdaptConfig
    snapshot: SnapshotRef
    state: dict[str, torch.Tensor]
    """The adapted parameters and the normalisation buffers the run tracked."""
    position: int
    """The run's stream position after its last step: how many of its source's inputs it read."""
    bn_stats: BnStats
    """The BatchNorm statistics the run normalised with where they are stored: "tracked" for a run
    with smoothed normalisation (``SMOOTHED``: "robust", "tbr", "balanced", "weighted"), else
    "source" (a run with "batch" normalisation used each batch's own, which no stored statistics
    reproduce)."""


def read_recorded_state(run_dir: Path, selector: str = "current", bundle_path: Path | None = None) -> RecordedState:
    """The state ``selector`` names (a step, snapshot id or alias) in the run at ``run_dir``, with
    the run's bundle (``bundle_path`` if it has moved) and configuration."""
    store = HistoryStore.open(run_dir)
    try:
        target = store.resolve(selector)
        snapshot = store.load_snapshot(target.id)
        config = read_config(store.first_config())
        position = store.stream_position()
        bundle = load_bundle(bundle_path or config.model)
        method = resolve_method(config.method, config.norm, default_method(bundle))
        if bundle.weights_sha256 != store.bundle_sha256():
            raise UsageError(f"Bundle {bundle.path} is not the one this run adapted; pass the right one with --bundle.")
    finally:
        store.close()
    bn_stats: BnStats = "tracked" if method.batch_statistics and method.norm in SMOOTHED else "source"
    state = snapshot["params"] | snapshot["buffers"]
    return RecordedState(bundle, config, target, state, position, bn_stats)


class ExportReport(BaseModel):
    out: Path
    snapshot_id: str
    step: int
    bn_stats: str
    parity: Parity | None


def export_run(
    run_dir: Path,
    out: Path,
    selector: str = "current",
    *,
    bundle_path: Path | None = None,
    images: Path | torch.Tensor | None = None,
    num_images: int = 256,
    opset: int = 18,
    dynamic_batch: bool = True,
    simplify: Simplify = "onnxslim",
    bn_stats: BnStats | None = None,
    check: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-4,
) -> ExportReport:
    """Export the state ``selector`` names (a step, snapshot id or alias) and, with ``check``,
    verify it against PyTorch on ``num_images`` images: ``images`` if given (a seeded draw from
    the folder), else the inputs the run saw last. The file appears at ``out`` only once it passed.

    ``bn_stats`` defaults to the statistics the run normalised with where they are stored
    (``RecordedState.bn_stats``)."""
    recorded = read_recorded_state(run_dir, selector, bundle_path)
    bundle, config, target, position = recorded.bundle, recorded.config, recorded.snapshot, recorded.position
    bn_stats = bn_stats or recorded.bn_stats
    needs_images = check or bn_stats == "target"
    recent = None
    if needs_images:
        if isinstance(images, torch.Tensor):  # preprocessed already (a Python session's)
            recent = images[-num_images:]
        elif images:  # drawn from the whole folder: its first images may all be one class
            recent = _recent_images(bundle, images, 0, num_images, order="shuffled")
        else:  # the run's own stream, in the run's order
            recent = _recent_images(
                bundle, config.source, position, num_images, config.order, config.seed, config.stride
            )
    model = build_export_model(bundle, recorded.state, bn_stats, _chunks(recent) if bn_stats == "target" else None)
    metadata = {
        "tta_cli.bundle_sha256": bundle.weights_sha256,
        "tta_cli.snapshot_id": target.id,
        "tta_cli.step": str(target.step),
        "tta_cli.bn_stats": bn_stats,
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    parity = None
    with atomic_path(out) as unverified:
        export_onnx(
            model,
            bundle.spec,
            unverified,
            opset=opset,
            dynamic_batch=dynamic_batch,
            simplify=simplify,
            metadata=metadata,
        )
        if check and recent is not None:
            parity = verify_onnx(unverified, model, recent, atol=atol, rtol=rtol)
            if parity.error is not None:
                raise VerificationFailed(
                    f"onnxruntime could not run the export on {parity.error}; nothing was written to {out}."
                )
            if not parity.passed:
                raise VerificationFailed(
                    f"onnxruntime differs from PyTorch (max |Δlogit| {parity.max_abs_diff:.2e}, beyond {atol:g} + "
                    f"{rtol:g}·|logit|, or top-1 agreement {parity.top1_agreement:.2%}); nothing was written to {out}."
                )
    return ExportReport(out=out, snapshot_id=target.id, step=target.step, bn_stats=bn_stats, parity=parity)


def _recent_images(
    bundle: Bundle,
    source: Path | str,
    position: int,
    count: int,
    order: str = "sorted",
    seed: int = 0,
    stride: int = 1,
) -> torch.Tensor:
    """Up to ``count`` readable images: those just before ``position`` in ``source`` read in
    ``order`` (the run's stream: the newest target data; another folder: from ``position`` 0 of
    its seeded shuffle). A run from a video, a camera or a network stream has no images to read
    again."""
    try:
        stream = FolderStream(source, bundle.spec.framing, bundle.spec.class_names, order, seed, stride=stride)
    except UsageError as error:
        raise UsageError(f"{error} Pass a folder of images to verify the export against with --images.") from error
    stream.start = max(0, min(position, len(stream)) - count)
    preprocess = Preprocess(bundle.spec.mean, bundle.spec.std)
    chunks = [batch.images for batch in batches(stream, 64, preprocess)]
    if not chunks:
        raise UsageError(f"No readable images in {source} to verify the export against; pass a folder with --images.")
    return torch.cat(chunks)[:count]


def _chunks(images: torch.Tensor | None, size: int = 64) -> list[torch.Tensor] | None:
    return None if images is None else list(images.split(size))
