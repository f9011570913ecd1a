"""Storage and rollback cost of the history store, with a real bundle's adaptation state.

    python scripts/bench_history_store.py --model sample_models/cifar10-airnet-ce --steps 10000 \
        --out docs/history_store.json

Each step records a row and a snapshot of the model's true state (θ, BatchNorm running
statistics, Adam moments) under the default retention policy; θ is perturbed between steps
instead of running a forward pass, since only the state's size and the store's work matter
here. Then ``rollback`` (lock, open, resolve, commit) and restoring a snapshot into the
adapter are timed; the medians are reported.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from tta_cli.config import HistoryConfig
from tta_cli.engine import get_method
from tta_cli.engine.build import build_adapter
from tta_cli.history import HistoryStore, StepRecord, rollback
from tta_cli.models import load_bundle


def measure(model: Path, steps: int, repeats: int) -> dict[str, Any]:
    bundle = load_bundle(model)
    with tempfile.TemporaryDirectory() as scratch:
        run = Path(scratch)
        adapter = build_adapter(bundle, get_method("tent"), torch.device("cpu"))
        if adapter.update_rule is None:
            raise RuntimeError("tent was built without an update rule, so the snapshots would hold no Adam moments.")
        # One real update so that the optimizer state has its moments.
        adapter.update_rule.apply(adapter.params, torch.randn(sum(p.numel() for p in adapter.params)))
        store = HistoryStore(run)
        store.begin_run("tent", bundle.weights_sha256, "")
        retention = HistoryConfig()
        source = store.write_snapshot(adapter.state_dict(), 0, None)
        for alias in ("source", "current", "last-good"):
            store.set_alias(alias, source, 0)
        started = time.perf_counter()
        for step in range(1, steps + 1):
            with torch.no_grad():
                for param in adapter.params:
                    param.add_(torch.randn_like(param), alpha=1e-4)
            snapshot_id = store.write_snapshot(adapter.state_dict(), step, store.aliases()["current"].id)
            store.record_step(
                StepRecord(
                    step=step,
                    time=time.time(),
                    batch_size=64,
                    position=64 * step,
                    losses={"entropy": 0.5},
                    update_norm=1e-3,
                    entropy=0.5,
                    majority_fraction=0.1,
                    snapshot_id=snapshot_id,
                )
            )
            if step % retention.keep_every == 0:
                store.prune(retention.keep_last, retention.keep_every)
        record_seconds = time.perf_counter() - started
        snapshot_bytes = store.db.execute("SELECT bytes FROM snapshots ORDER BY step DESC LIMIT 1").fetchone()[0]
        kept = store.db.execute("SELECT count(*) FROM snapshots WHERE pruned = 0").fetchone()[0]
        total_bytes = store.store_bytes()
        store.close()

        targets = [str(step) for step in range(steps - 50, steps)]
        rollback_seconds, restore_seconds = [], []
        for index in range(repeats):
            began = time.perf_counter()
            target = rollback(run, targets[index % len(targets)])
            rollback_seconds.append(time.perf_counter() - began)
            store = HistoryStore.open(run)
            began = time.perf_counter()
            adapter.load_state_dict(store.load_snapshot(target.id))
            restore_seconds.append(time.perf_counter() - began)
            store.close()
    return {
        "model": str(model),
        "steps": steps,
        "adapted_parameters": sum(p.numel() for p in adapter.params),
        "bytes_per_snapshot": snapshot_bytes,
        "snapshots_kept": kept,
        "store_bytes_total": total_bytes,
        "record_ms_per_step": 1000 * record_seconds / steps,
        "rollback_ms_median": 1000 * statistics.median(rollback_seconds),
        "restore_ms_median": 1000 * statistics.median(restore_seconds),
        "repeats": repeats,
        "retention": HistoryConfig().model_dump(),
    }
