"""Carrying out the guard's verdicts, the one way for ``adapt``, a Python session and ``bench``.

A rollback restores the state its target names (``last-good`` or ``source``) and lets the
guard start afresh. ``last-good`` trails the stream: a healthy step's state is a candidate,
confirmed once ``confirm_steps`` more steps passed every check (``Guard.promote``). Where the
states are kept is the keeper's business: the run's history on disk (``HistoryKeeper``), or
memory for a benchmark that writes no history (``MemoryKeeper``).
"""

from __future__ import annotations

from typing import Any, Protocol

from tta_cli.engine.adapter import Adapter, StepResult
from tta_cli.history import HistoryStore


class StateKeeper(Protocol):
    def restore(self, target: str, reason: str, step: int) -> dict[str, Any]:
        """The state ``target`` names, recording the rollback to it."""
        ...

    def candidate(self, step: int, snapshot_id: str | None) -> str | None:
        """Keep the state after a healthy step as a ``last-good`` candidate; its id, if kept."""
        ...

    def confirm(self, step: int, snapshot_id: str) -> None:
        """The candidate of ``step`` is now ``last-good``."""
        ...


class Recovery:
    def __init__(self, adapter: Adapter, keeper: StateKeeper) -> None:
        self.adapter, self.keeper = adapter, keeper

    def after_step(self, result: StepResult, snapshot_id: str | None = None) -> None:
        """Roll back on the guard's verdict, or keep the step's state (``snapshot_id`` where the
        caller already wrote it) as a ``last-good`` candidate."""
        verdict, guard = result.verdict, self.adapter.guard
        if verdict.action == "rollback":
            self.adapter.load_state_dict(self.keeper.restore(verdict.target, f"guard: {verdict.reason}", result.step))
            guard.reset()
            return
        if not verdict.ok:
            return
        confirmed = guard.promote(result.step, self.keeper.candidate(result.step, snapshot_id))
        if confirmed is not None:
            self.keeper.confirm(*confirmed)


class HistoryKeeper:
    """States in the run's history: snapshots the run loop wrote, aliases that name them."""

    def __init__(self, store: HistoryStore) -> None:
        self.store = store

    def restore(self, target: str, reason: str, step: int) -> dict[str, Any]:
        ref = self.store.aliases()[target]
        state = self.store.load_snapshot(ref.id)
        self.store.rollback(ref, reason, at_step=step)
        return state

    def candidate(self, step: int, snapshot_id: str | None) -> str | None:
        return snapshot_id

    def confirm(self, step: int, snapshot_id: str) -> None:
        self.store.set_alias("last-good", snapshot_id, step)


class MemoryKeeper:
    """States in memory: the source's, ``last-good``, and the candidates not yet confirmed
    (kept only while the guard is on: without it nothing rolls back)."""

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter
        self.states: dict[str, dict[str, Any]] = {"source": adapter.state_dict()}
        self.states["last-good"] = self.states["source"]
        self.pending: dict[int, dict[str, Any]] = {}

    def restore(self, target: str, reason: str, step: int) -> dict[str, Any]:
        self.pending.clear()
        return self.states[target]

    def candidate(self, step: int, snapshot_id: str | None) -> str | None:
        if not self.adapter.guard.config.enabled:
            return None
        self.pending[step] = self.adapter.state_dict()
        return str(step)

    def confirm(self, step: int, snapshot_id: str) -> None:
        self.states["last-good"] = self.pending[step]
        for kept in [kept for kept in self.pending if kept <= step]:
            del self.pending[kept]
