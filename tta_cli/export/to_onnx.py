"""Write an eval-mode model as a checked ONNX file that carries its own preprocessing.

Exporter choice: ``torch.onnx.export(..., dynamo=True)``, the torch.export-based exporter.
The TorchScript exporter (``dynamo=False``) is deprecated since PyTorch 2.9 and warns that it
will be removed; on the zoo CNNs and torchvision's ResNet both gave the same graphs and the same
logits (within 1e-6 of PyTorch), so the supported path wins. We capture the graph ourselves with
``torch.export.export(strict=False)`` instead of letting ``torch.onnx.export`` try several
capture strategies: there is one capture path to reason about, and when an operator cannot be
converted the captured graph tells which module it came from.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

import onnx
import torch
from google.protobuf.message import DecodeError
from torch import nn

from tta_cli.errors import TTAError, UsageError
from tta_cli.export.rebuild import model_device
from tta_cli.files import write_atomic
from tta_cli.models import ModelSpec
from tta_cli.version import __version__

# The exporter notes at WARNING every torchvision operator it cannot register when torchvision
# is absent; image classifiers here need none of them.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
BATCH_AXIS = "batch"
# The torch.export-based exporter implements its operators at opset 18; asked for less, it
# quietly keeps 18 when converting down fails, so lower opsets are refused up front.
MIN_OPSET = 18
PREPROCESSING = (
    "resize to floor(input_size / crop_pct) (squash: exactly; center: keeping the aspect ratio until the image "
    "covers it) with the interpolation filter, cut the centre input_size; RGB (or grayscale: see channels), NCHW, "
    "float32, normalised as (pixel / 255 - mean) / std"
)

Simplify = Literal["onnxslim", "none"]


def export_onnx(
    model: nn.Module,
    spec: ModelSpec,
    out: Path,
    *,
    opset: int = 18,
    dynamic_batch: bool = True,
    batch_size: int = 1,
    simplify: Simplify = "onnxslim",
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Export ``model`` (in eval mode) to ``out`` and return ``out``.

    The input is ``images`` (``N×3×H×W``, normalised as the bundle says), the output
    ``logits``. With ``dynamic_batch`` the batch axis is symbolic and the graph is traced at
    batch 2, so nothing specialises on a batch of one; otherwise it is fixed at ``batch_size``.
    The file carries the spec (class names as JSON, input size and framing, mean, std, architecture), the
    tool's version and ``metadata`` as ONNX metadata. It is written only once it passed
    ``onnx.checker``, through a temporary file, so a failed export never leaves a half file.
    """
    if opset < MIN_OPSET:
        raise UsageError(f"ONNX opset {opset} is too old for the exporter; use --opset {MIN_OPSET} or newer.")
    require_eval_mode(model)
    entries = metadata_entries(spec, metadata or {})
    batch = 2 if dynamic_batch else batch_size
    example = torch.zeros(batch, spec.channels, *spec.input_size, device=model_device(model))
    program = capture_graph(model, example, dynamic_batch)
    proto = convert_to_onnx(program, opset)
    if dynamic_batch:
        name_batch_axis(proto)
    check_onnx(proto, "the exporter")
    if simplify == "onnxslim":
        proto = simplify_onnx(proto)
        check_onnx(proto, "onnxslim")
    write_metadata(proto, entries)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, proto.SerializeToString())
    return out


def require_eval_mode(model: nn.Module) -> None:
    """A module left in train mode would export batch statistics (BatchNorm) or dropout."""
    training = [name or type(model).__name__ for name, module in model.named_modules() if module.training]
    if training:
        raise ValueError(f"Export needs an eval-mode model; {training[0]!r} is in train mode.")


def capture_graph(model: nn.Module, example: torch.Tensor, dynamic_batch: bool) -> torch.export.ExportedProgram:
    """The model's graph as ``torch.export`` sees it, with a symbolic batch axis if asked."""
    dynamic_shapes = ({0: torch.export.Dim(BATCH_AXIS)},) if dynamic_batch else None
    try:
        return torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as error:  # torch.export fails with many types: UserError, guard errors, ...
        hint = "; if the model fixes its batch size, try --static-batch" if dynamic_batch else ""
        reason = _first_line(error)
        raise UsageError(f"PyTorch could not capture the model's graph for export ({reason}){hint}.") from error


def convert_to_onnx(program: torch.export.ExportedProgram, opset: int) -> onnx.ModelProto:
    """Translate the captured graph to ONNX; an operator without a translation is a UsageError
    that names it and the module it belongs to."""
    try:
        with warnings.catch_warnings():
            # torch.onnx's own code trips a pytree deprecation of the same torch release; it
            # says nothing about the user's model.
            warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec", category=FutureWarning)
            onnx_program = torch.onnx.export(
                program,
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                optimize=True,
                verbose=False,
            )
    except torch.onnx.errors.OnnxExporterError as error:
        raise UsageError(describe_conversion_failure(program, error)) from error
    if onnx_program is None:
        raise TTAError("torch.onnx.export returned no ONNX program.")
    proto = onnx_program.model_proto
    produced = _default_opset(proto)
    if produced != opset:
        raise UsageError(f"The exporter produced ONNX opset {produced} instead of {opset}; choose --opset {produced}.")
    return proto


def describe_conversion_failure(program: torch.export.ExportedProgram, error: BaseException) -> str:
    """One sentence naming the operator that failed to convert and the module it came from."""
    chain = list(_exception_chain(error))
    failed_node = None
    for link in chain:
        match = re.search(r"translating node %(\w+)", str(link))
        if match:
            failed_node = next((node for node in program.graph.nodes if node.name == match.group(1)), None)
            break
    if failed_node is None:
        return f"The ONNX exporter failed: {_first_line(chain[-1])}."
    return (
        f"The ONNX exporter has no translation for operator {failed_node.target} used in {_module_of(failed_node)}; "
        "replace it in the model with an operation ONNX supports."
    )


def name_batch_axis(proto: onnx.ModelProto) -> None:
    """Give the symbolic batch axis a readable name: a captured ExportedProgram calls it
    ``s77`` or similar, where runtimes and people expect ``batch``."""
    symbol = proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    if not symbol:
        return
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == symbol:
                dim.dim_param = BATCH_AXIS


def check_onnx(proto: onnx.ModelProto, made_by: str) -> None:
    """``onnx.checker`` with full shape inference; a failure is the exporter's fault, not the user's."""
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise TTAError(f"The ONNX model made by {made_by} fails onnx.checker: {_first_line(error)}.") from error


def simplify_onnx(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Fold constants and remove redundant nodes with onnxslim."""
    import onnxslim  # a heavy import, needed only when simplifying

    return onnxslim.slim(proto)


def metadata_entries(spec: ModelSpec, extra: Mapping[str, str]) -> dict[str, str]:
    """What a deployment needs to feed the model and name its outputs, plus ``extra``
    (bundle hash, snapshot id, step, ...). ``extra`` may not override the spec's entries."""
    entries = {
        "model_name": spec.name,
        "architecture": spec.architecture,
        "class_names": json.dumps(spec.class_names),
        "input_size": json.dumps(list(spec.input_size)),
        "crop_pct": json.dumps(spec.crop_pct),
        "crop_mode": spec.crop_mode,
        "interpolation": spec.interpolation,
        "channels": str(spec.channels),
        "mean": json.dumps(list(spec.mean)),
        "std": json.dumps(list(spec.std)),
        "preprocessing": PREPROCESSING,
        "tta_cli_version": __version__,
    }
    clashes = sorted(entries.keys() & extra.keys())
    if clashes:
        raise ValueError(f"Metadata key {clashes[0]!r} is written from the model spec and cannot be given.")
    return {**entries, **extra}


def write_metadata(proto: onnx.ModelProto, entries: Mapping[str, str]) -> None:
    """Replace the model's metadata_props by ``entries``."""
    del proto.metadata_props[:]
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=value)


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata_props of an ONNX file, as written by ``export_onnx``."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"ONNX file {path} does not exist.")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except DecodeError as error:
        raise UsageError(f"{path} is not an ONNX model.") from error
    return {entry.key: entry.value for entry in proto.metadata_props}


def _module_of(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "the model"
    path, type_name = list(stack.values())[-1]
    class_name = str(type_name).rsplit(".", 1)[-1]
    return f"module {path!r} ({class_name})" if path else f"the model's own forward ({class_name})"


def _default_opset(proto: onnx.ModelProto) -> int:
    return next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))


def _exception_chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return re.sub(r"\x1b\[[0-9;]*m", "", text).rstrip(".")
