"""The export check: a batch of one image, and tolerances relative to the logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from tta_cli.export import verify
from tta_cli.export.verify import verify_onnx

PIXELS = 3 * 4 * 4


def linear_model(scale: float) -> nn.Module:
    torch.manual_seed(0)
    head = nn.Linear(PIXELS, 5)
    with torch.no_grad():
        head.weight.mul_(scale)
    return nn.Sequential(nn.Flatten(), head).eval()


def write_linear_onnx(model: nn.Module, path: Path, reshape_to: list[int]) -> Path:
    """The model as a hand-written graph with a symbolic batch axis, its input reshaped to
    ``reshape_to`` (``[-1, PIXELS]`` is right; ``[2, -1]`` bakes a batch size of two in)."""
    head = model[1]
    initializers = [
        numpy_helper.from_array(np.array(reshape_to, np.int64), "shape"),
        numpy_helper.from_array(head.weight.detach().numpy().T.copy(), "weight"),
        numpy_helper.from_array(head.bias.detach().numpy(), "bias"),
    ]
    nodes = [
        helper.make_node("Reshape", ["input", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "weight", "bias"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])],
        initializers,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), str(path))
    return path


def test_a_graph_that_runs_only_at_the_export_batch_size_fails_on_one_image(tmp_path: Path) -> None:
    model = linear_model(1.0)
    images = torch.randn(2, 3, 4, 4)
    right = verify_onnx(write_linear_onnx(model, tmp_path / "right.onnx", [-1, PIXELS]), model, images, chunk_size=2)
    assert right.passed and right.batch_sizes == [2, 1] and right.error is None
    baked = verify_onnx(write_linear_onnx(model, tmp_path / "baked.onnx", [2, -1]), model, images, chunk_size=2)
    assert not baked.passed
    assert baked.error is not None and baked.error.startswith("a batch of 1:")


def test_large_logits_are_held_to_a_relative_precision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Logits in the hundreds: onnxruntime off by 2e-6 of each logit, as float32 kernels that sum
    # in another order are; that is 1e-4 and more in absolute terms.
    model = linear_model(300.0)
    path = write_linear_onnx(model, tmp_path / "model.onnx", [-1, PIXELS])
    running = verify.run_session

    def off_by_a_little(*args: object) -> np.ndarray:
        logits = running(*args)  # type: ignore[arg-type]
        return logits * (1 + 2e-6)

    monkeypatch.setattr(verify, "run_session", off_by_a_little)
    images = torch.randn(8, 3, 4, 4)
    parity = verify_onnx(path, model, images)
    assert parity.max_abs_diff > 1e-4
    assert parity.passed
    assert not verify_onnx(path, model, images, rtol=0.0).passed
