"""What a user does to a finished or stopped run: read it, and move its ``current`` state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tta_cli.history.store import HistoryStore, RunLock, SnapshotRef


def rollback(run_dir: Path, selector: str) -> SnapshotRef:
    """Point the run's ``current`` at a step, snapshot or alias, recording an event.

    Nothing is deleted; ``tta-cli adapt --resume`` then continues from the restored state.
    """
    store = HistoryStore.open(run_dir)  # a folder without a history: one sentence, and no lock file left in it
    try:
        with RunLock(run_dir):
            target = store.resolve(selector)
            store.rollback(target, f"user: rollback to {selector}")
    finally:
        store.close()
    return target


def read_history(run_dir: Path, last: int | None = None) -> dict[str, Any]:
    """Steps, events and aliases as plain data (what ``tta-cli history --json`` prints)."""
    store = HistoryStore.open(run_dir)
    try:
        steps = store.steps(last)
        cosines = [step.diagnostics["cosine"] for step in steps if "cosine" in step.diagnostics]
        return {
            "conflict_fraction": sum(cosine < 0 for cosine in cosines) / len(cosines) if cosines else None,
            "steps": [step.model_dump() | {"accuracy": step.accuracy} for step in steps],
            "events": [event.model_dump() for event in store.events()],
            "aliases": {name: ref.model_dump() for name, ref in store.aliases().items()},
            "store_bytes": store.store_bytes(),
        }
    finally:
        store.close()
