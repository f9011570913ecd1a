"""Check an exported ONNX file against the PyTorch model it came from, with onnxruntime."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from tta_cli.errors import UsageError
from tta_cli.export.rebuild import model_device
from tta_cli.export.to_onnx import require_eval_mode

# onnxruntime and onnxruntime-gpu install the same ``onnxruntime`` module; the one installed
# last overwrites the other's files, which silently drops the CUDA provider.
ONNXRUNTIME_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")


class Parity(BaseModel):
    """How closely onnxruntime reproduced PyTorch's logits on the same images."""

    images: int
    max_abs_diff: float
    top1_agreement: float
    provider: str
    atol: float
    rtol: float = 0.0
    batch_sizes: list[int] = []
    """Every batch size onnxruntime ran (a file with a symbolic batch axis also one image alone)."""
    error: str | None = None
    """Why onnxruntime could not run the file on one of those batches."""
    passed: bool


def verify_onnx(
    path: Path, model: nn.Module, images: torch.Tensor, atol: float = 1e-4, rtol: float = 1e-4, chunk_size: int = 64
) -> Parity:
    """Run the ONNX file and ``model`` on the same ``images`` (normalised ``N×C×H×W``) in
    chunks, and a file with a symbolic batch axis also on the first image alone, as a camera
    sends them (a batch size baked into the graph shows there); it passes when onnxruntime runs
    every batch, no logit differs by more than ``atol + rtol·|logit|`` (as ``numpy.allclose``:
    a model with large logits is held to the same relative precision) and every top-1 agrees.

    PyTorch runs where the model lives; onnxruntime on CUDA when both it and PyTorch can, else
    on the CPU. A file with a fixed batch size is fed chunks of exactly that size.
    """
    require_eval_mode(model)
    if len(images) == 0:
        raise UsageError("Verifying an export needs at least one image.")
    session = open_session(Path(path))
    model_input = session.get_inputs()[0]
    fixed_batch = model_input.shape[0] if isinstance(model_input.shape[0], int) else None
    step = fixed_batch or chunk_size
    chunks = [images[start : start + step] for start in range(0, len(images), step)]
    alone = [images[:1]] if fixed_batch is None and len(images) > 1 else []
    device = model_device(model)
    differences, excesses, sizes = [], [], []
    agreeing, alone_agrees, error = 0, True, None
    with torch.no_grad():
        for index, chunk in enumerate(chunks + alone):
            chunk = chunk.float()
            expected = model(chunk.to(device)).float().cpu()
            try:
                actual = torch.from_numpy(run_session(session, model_input.name, chunk, fixed_batch))
            except Exception as failure:  # onnxruntime's errors derive from Exception directly
                error = f"a batch of {len(chunk)}: {first_line(failure)}"
                break
            sizes.append(len(chunk))
            # float64 so the difference itself adds no rounding; NaN propagates and fails the check.
            difference = (actual.double() - expected.double()).abs()
            differences.append(difference.max())
            excesses.append((difference - atol - rtol * expected.double().abs()).max())
            agreement = actual.argmax(dim=1) == expected.argmax(dim=1)
            if index < len(chunks):
                agreeing += int(agreement.sum())
            else:
                alone_agrees = bool(agreement.all())
    max_abs_diff = float(torch.stack(differences).max()) if differences else float("nan")
    within = bool(excesses) and bool(torch.stack(excesses).max() <= 0)
    return Parity(
        images=len(images),
        max_abs_diff=max_abs_diff,
        top1_agreement=agreeing / len(images),
        provider=session.get_providers()[0],
        atol=atol,
        rtol=rtol,
        batch_sizes=sorted(set(sizes), reverse=True),
        error=error,
        passed=error is None and within and agreeing == len(images) and alone_agrees,
    )


def first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def open_session(path: Path) -> Any:
    """An onnxruntime session on the chosen providers, with its warnings silenced."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    # Level 3 = errors only: node-placement warnings on CUDA are expected and say nothing here.
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=choose_providers(ort))
    except Exception as error:  # onnxruntime's errors derive from Exception directly
        raise UsageError(f"onnxruntime cannot load {path}: {first_line(error)}") from error


def choose_providers(ort: ModuleType) -> list[Any]:
    """CUDA when onnxruntime has the provider and PyTorch sees a GPU, with the CPU behind it.

    TF32 is turned off because the check compares float32 logits to 1e-4, which TF32
    convolutions (on by default on Ampere and newer) do not meet.
    """
    if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
        return [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def run_session(session: Any, input_name: str, images: torch.Tensor, fixed_batch: int | None) -> np.ndarray:
    """The first output for ``images``, padding with zeros up to a fixed batch size."""
    count = len(images)
    if fixed_batch is not None and count < fixed_batch:
        images = torch.cat([images, images.new_zeros(fixed_batch - count, *images.shape[1:])])
    outputs = session.run(None, {input_name: images.detach().cpu().contiguous().numpy()})
    return np.asarray(outputs[0])[:count]


def import_onnxruntime() -> ModuleType:
    try:
        import onnxruntime  # imported on use, so that a broken install is a clear error
    except ImportError as error:
        # Uninstalling one of the two packages deletes files the other one needs.
        message = onnxruntime_warning() or f"onnxruntime cannot be imported ({error}); reinstall onnxruntime-gpu."
        raise UsageError(message) from error
    return onnxruntime


def onnxruntime_warning() -> str | None:
    """A one-line warning when both onnxruntime and onnxruntime-gpu are installed."""
    installed = [name for name in ONNXRUNTIME_DISTRIBUTIONS if is_installed(name)]
    if len(installed) < len(ONNXRUNTIME_DISTRIBUTIONS):
        return None
    return (
        "Both onnxruntime and onnxruntime-gpu are installed and share one Python module, so the CUDA provider "
        "can silently disappear; run 'pip uninstall -y onnxruntime onnxruntime-gpu' and reinstall onnxruntime-gpu."
    )


def is_installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True
