"""Export: rebuild an adapted model, write it as checked ONNX with its metadata, verify it."""

from tta_cli.export.rebuild import build_export_model, reestimate_batchnorm_statistics
from tta_cli.export.run_export import ExportReport, RecordedState, VerificationFailed, export_run, read_recorded_state
from tta_cli.export.to_onnx import export_onnx, read_metadata
from tta_cli.export.verify import Parity, onnxruntime_warning, verify_onnx

__all__ = [
    "ExportReport",
    "Parity",
    "RecordedState",
    "VerificationFailed",
    "build_export_model",
    "export_onnx",
    "export_run",
    "onnxruntime_warning",
    "read_metadata",
    "read_recorded_state",
    "reestimate_batchnorm_statistics",
    "verify_onnx",
]
