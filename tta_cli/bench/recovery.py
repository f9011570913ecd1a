"""The guard's rollbacks in a benchmark run, without a history on disk.

``tta-cli adapt`` carries out a rollback through the run's history; the benchmark keeps the
same two targets in memory: the source state, and ``last-good``, promoted by the guard's own
rule (a step's state once ``confirm_steps`` more steps passed every check).
"""

from __future__ import annotations

from typing import Any

from tta_cli.engine import Adapter
from tta_cli.engine.adapter import StepResult


class InMemoryRecovery:
    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter
        self.states: dict[str, dict[str, Any]] = {"source": adapter.state_dict()}
        self.states["last-good"] = self.states["source"]
        self.pending: dict[int, dict[str, Any]] = {}
        self.rollbacks = 0

    def after_step(self, result: StepResult) -> None:
        """Roll back on the guard's verdict, or keep the step's state as a last-good candidate."""
        guard = self.adapter.guard
        if result.verdict.action == "rollback":
            self.adapter.load_state_dict(self.states[result.verdict.target])
            guard.reset()
            self.pending.clear()
            self.rollbacks += 1
            return
        if not guard.config.enabled or not result.verdict.ok:
            return
        self.pending[result.step] = self.adapter.state_dict()
        confirmed = guard.promote(result.step, str(result.step))
        if confirmed is not None:
            self.states["last-good"] = self.pending[confirmed[0]]
            for step in [step for step in self.pending if step <= confirmed[0]]:
                del self.pending[step]
