"""What a run leaves behind: its history store, snapshots, predictions and summary."""

from tta_cli.history.operations import read_history, rollback
from tta_cli.history.run_dir import PredictionWriter, RunDirectory, RunSummary, summarize
from tta_cli.history.store import EventRecord, HistoryStore, RunLock, SnapshotRef, StepRecord

__all__ = [
    "EventRecord",
    "HistoryStore",
    "PredictionWriter",
    "RunDirectory",
    "RunLock",
    "RunSummary",
    "SnapshotRef",
    "StepRecord",
    "read_history",
    "rollback",
    "summarize",
]
