"""The append-only history of a run: steps, events, snapshots and aliases.

    RUN_DIR/history.db                      SQLite in WAL mode
    RUN_DIR/snapshots/<sha256>.safetensors  adaptation state, content-addressed

A snapshot file is written and renamed into place before the row that names it is
committed, and each step's row, snapshot reference and ``current`` alias are committed in
one transaction; so a process killed at any instant leaves a database that opens and a
``current`` whose file exists. Nothing here deletes a step or an event; only the retention
policy removes old snapshot files that no alias, event or recent step needs.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from safetensors.torch import load, save

from tta_cli.errors import TTAError, UsageError
from tta_cli.events import Event, EventKind, SkippedInput
from tta_cli.files import write_atomic
from tta_cli.history.state import dumps_skeleton, flatten_state, unflatten_state

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY, started REAL NOT NULL, method TEXT NOT NULL,
    bundle_sha256 TEXT NOT NULL, config TEXT NOT NULL, resumed_from_step INTEGER
);
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY, step INTEGER NOT NULL, parent TEXT, created REAL NOT NULL,
    bytes INTEGER NOT NULL, pruned INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS steps (
    id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL, step INTEGER NOT NULL, time REAL NOT NULL,
    batch_size INTEGER NOT NULL, position INTEGER NOT NULL, losses TEXT NOT NULL, update_norm REAL,
    entropy REAL, majority_fraction REAL, labeled INTEGER NOT NULL, correct INTEGER NOT NULL, verdict TEXT NOT NULL,
    snapshot_id TEXT, diagnostics TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS steps_by_step ON steps(step);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, run_id INTEGER, step INTEGER NOT NULL, time REAL NOT NULL,
    kind TEXT NOT NULL, detail TEXT NOT NULL, snapshot_id TEXT
);
CREATE TABLE IF NOT EXISTS skipped_inputs (
    id INTEGER PRIMARY KEY, run_id INTEGER, step INTEGER NOT NULL, input_id TEXT NOT NULL, reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT PRIMARY KEY, snapshot_id TEXT NOT NULL, step INTEGER NOT NULL, time REAL NOT NULL
);
"""


class StepRecord(BaseModel):
    """One adaptation step as the history keeps it."""

    step: int
    time: float
    batch_size: int
    position: int  # stream position after the batch's last input
    losses: dict[str, float]
    update_norm: float | None
    entropy: float | None  # mean over the batch, before the update (None when not finite)
    majority_fraction: float
    labeled: int = 0
    correct: int = 0
    verdict: str = "ok"
    snapshot_id: str | None = None
    diagnostics: dict[str, Any] = {}

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labeled if self.labeled else None


class EventRecord(BaseModel):
    step: int
    time: float
    kind: str
    detail: str
    snapshot_id: str | None = None


class SnapshotRef(BaseModel):
    id: str
    step: int


class HistoryStore:
    DB = "history.db"
    SNAPSHOTS = "snapshots"

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.snapshot_dir = self.run_dir / self.SNAPSHOTS
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.run_dir / self.DB, timeout=30, isolation_level=None)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a killed process; only a power cut may lose the last commits.
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as error:
            self.db.close()
            raise UsageError(
                f"Could not open the history {self.run_dir / self.DB} ({error}); restore the run directory from a copy "
                "or start a new run."
            ) from error
        self.run_id: int | None = None

    @classmethod
    def open(cls, run_dir: Path) -> HistoryStore:
        """Open an existing run's history; a folder without one is a one-sentence error."""
        if not (Path(run_dir) / cls.DB).is_file():
            raise UsageError(f"{run_dir} is not a run directory (it has no {cls.DB}).")
        return cls(run_dir)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The block's writes, committed together or not at all; a block inside another joins
        it (a step's events, row and rollback are one commit). SQLite's own failure (a full
        disk, a file it may not write) is one sentence naming the history."""
        if self.db.in_transaction:
            yield self.db
            return
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
                self.db.execute("COMMIT")
            except BaseException:
                # On some errors (a full disk) SQLite has rolled back already; a second
                # ROLLBACK would fail and hide the reason.
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as error:
            raise TTAError(f"Could not write the history {self.run_dir / self.DB}: {error}.") from error

    # -- writing ----------------------------------------------------------------------------

    def begin_run(self, method: str, bundle_sha256: str, config: str, resumed_from_step: int | None = None) -> int:
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO runs (started, method, bundle_sha256, config, resumed_from_step) VALUES (?, ?, ?, ?, ?)",
                (time.time(), method, bundle_sha256, config, resumed_from_step),
            )
        if cursor.lastrowid is None:
            raise RuntimeError("SQLite gave no row id for the run just inserted.")
        self.run_id = cursor.lastrowid
        return self.run_id

    def write_snapshot(self, state: dict[str, Any], step: int, parent: str | None) -> str:
        """Store ``state`` (nested dicts of tensors and plain values); returns its sha256 id."""
        tensors, skeleton = flatten_state(state)
        payload = save(tensors, metadata={"skeleton": dumps_skeleton(skeleton)})
        snapshot_id = hashlib.sha256(payload).hexdigest()
        path = self.snapshot_path(snapshot_id)
        if not path.exists():
            write_atomic(path, payload)
        self.db.execute(
            "INSERT INTO snapshots (id, step, parent, created, bytes) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET pruned = 0",
            (snapshot_id, step, parent, time.time(), len(payload)),
        )
        return snapshot_id

    def record_step(self, record: StepRecord, aliases: tuple[str, ...] = ("current",)) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO steps (run_id, step, time, batch_size, position, losses, update_norm, entropy, "
                "majority_fraction, labeled, correct, verdict, snapshot_id, diagnostics) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    self.run_id,
                    record.step,
                    record.time,
                    record.batch_size,
                    record.position,
                    json.dumps(record.losses),
                    record.update_norm,
                    record.entropy,
                    record.majority_fraction,
                    record.labeled,
                    record.correct,
                    record.verdict,
                    record.snapshot_id,
                    json.dumps(record.diagnostics),
                ),
            )
            if record.snapshot_id is not None:
                for name in aliases:
                    self._set_alias(db, name, record.snapshot_id, record.step)

    def record_events(self, step: int, events: Iterable[Event], snapshot_id: str | None = None) -> None:
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO events (run_id, step, time, kind, detail, snapshot_id) VALUES (?, ?, ?, ?, ?, ?)",
                [(self.run_id, step, time.time(), event.kind.value, event.detail, snapshot_id) for event in events],
            )

    def record_skipped(self, step: int, inputs: Iterable[SkippedInput]) -> None:
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO skipped_inputs (run_id, step, input_id, reason) VALUES (?, ?, ?, ?)",
                [(self.run_id, step, skipped.input_id, skipped.reason) for skipped in inputs],
            )

    def set_alias(self, name: str, snapshot_id: str, step: int) -> None:
        with self.transaction() as db:
            self._set_alias(db, name, snapshot_id, step)

    def rollback(self, target: SnapshotRef, reason: str, at_step: int | None = None) -> None:
        """Point ``current`` at ``target`` and record why, in one transaction. Deletes nothing."""
        step = self.last_step() if at_step is None else at_step
        with self.transaction() as db:
            self._set_alias(db, "current", target.id, target.step)
            db.execute(
                "INSERT INTO events (run_id, step, time, kind, detail, snapshot_id) VALUES (?, ?, ?, ?, ?, ?)",
                (self.run_id, step, time.time(), EventKind.ROLLBACK.value, reason, target.id),
            )

    @staticmethod
    def _set_alias(db: sqlite3.Connection, name: str, snapshot_id: str, step: int) -> None:
        db.execute(
            "INSERT INTO aliases (name, snapshot_id, step, time) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET snapshot_id = excluded.snapshot_id, step = excluded.step, "
            "time = excluded.time",
            (name, snapshot_id, step, time.time()),
        )

    # -- reading ----------------------------------------------------------------------------

    def snapshot_path(self, snapshot_id: str) -> Path:
        return self.snapshot_dir / f"{snapshot_id}.safetensors"

    def load_snapshot(self, snapshot_id: str) -> dict[str, Any]:
        path = self.snapshot_path(snapshot_id)
        if not path.is_file():
            raise UsageError(f"Snapshot {snapshot_id[:12]} was removed by the retention policy.")
        payload = path.read_bytes()
        if hashlib.sha256(payload).hexdigest() != snapshot_id:
            raise UsageError(f"Snapshot file {path} is corrupt (its sha256 does not match its name).")
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            skeleton = json.loads(handle.metadata()["skeleton"])
        return unflatten_state(load(payload), skeleton)

    def aliases(self) -> dict[str, SnapshotRef]:
        rows = self.db.execute("SELECT name, snapshot_id, step FROM aliases ORDER BY name").fetchall()
        return {name: SnapshotRef(id=snapshot_id, step=step) for name, snapshot_id, step in rows}

    def resolve(self, selector: str) -> SnapshotRef:
        """An alias name, a snapshot id (or a unique prefix of at least 6 characters), or a step
        number; digits name a step when it has a snapshot, else a snapshot whose id they begin."""
        aliases = self.aliases()
        if selector in aliases:
            return self._available(aliases[selector])
        if selector.isdigit():
            step = int(selector)
            row = self.db.execute(
                "SELECT snapshot_id FROM steps WHERE step = ? AND snapshot_id IS NOT NULL ORDER BY id DESC LIMIT 1",
                (step,),
            ).fetchone()
            if row is None and step == 0 and "source" in aliases:
                return aliases["source"]
            if row is not None:
                return self._available(SnapshotRef(id=row[0], step=step))
        rows = []
        if len(selector) >= 6:  # digits too: a snapshot id may begin with them
            rows = self.db.execute("SELECT id, step FROM snapshots WHERE id LIKE ?", (selector + "%",)).fetchall()
        if len(rows) == 1:
            return self._available(SnapshotRef(id=rows[0][0], step=rows[0][1]))
        if len(rows) > 1:
            raise UsageError(f"Snapshot prefix {selector!r} is ambiguous; give more characters.")
        if selector.isdigit():
            raise UsageError(f"Step {int(selector)} has no snapshot in this run; see 'tta-cli history' for the steps.")
        raise UsageError(f"{selector!r} is not a step, snapshot or alias of this run (aliases: {', '.join(aliases)}).")

    def _available(self, ref: SnapshotRef) -> SnapshotRef:
        if not self.snapshot_path(ref.id).is_file():
            kept = self.db.execute(
                "SELECT step FROM snapshots WHERE pruned = 0 ORDER BY abs(step - ?) LIMIT 3", (ref.step,)
            ).fetchall()
            nearest = ", ".join(str(step) for (step,) in kept)
            raise UsageError(f"The snapshot of step {ref.step} was pruned; the nearest kept steps are {nearest}.")
        return ref

    def steps(self, last: int | None = None) -> list[StepRecord]:
        query = (
            "SELECT step, time, batch_size, position, losses, update_norm, entropy, majority_fraction, labeled, "
            "correct, verdict, snapshot_id, diagnostics FROM steps ORDER BY id"
        )
        rows = self.db.execute(query).fetchall()
        if last is not None:
            rows = rows[-last:] if last > 0 else []
        return [
            StepRecord(
                step=row[0],
                time=row[1],
                batch_size=row[2],
                position=row[3],
                losses=json.loads(row[4]),
                update_norm=row[5],
                entropy=row[6],
                majority_fraction=row[7],
                labeled=row[8],
                correct=row[9],
                verdict=row[10],
                snapshot_id=row[11],
                diagnostics=json.loads(row[12]),
            )
            for row in rows
        ]

    def events(self) -> list[EventRecord]:
        rows = self.db.execute("SELECT step, time, kind, detail, snapshot_id FROM events ORDER BY id").fetchall()
        return [EventRecord(step=r[0], time=r[1], kind=r[2], detail=r[3], snapshot_id=r[4]) for r in rows]

    def skipped_inputs(self) -> list[SkippedInput]:
        rows = self.db.execute("SELECT input_id, reason FROM skipped_inputs ORDER BY id").fetchall()
        return [SkippedInput(input_id, reason) for input_id, reason in rows]

    def last_step(self) -> int:
        row = self.db.execute("SELECT step FROM steps ORDER BY id DESC LIMIT 1").fetchone()
        return row[0] if row else 0

    def stream_position(self) -> int:
        row = self.db.execute("SELECT position FROM steps ORDER BY id DESC LIMIT 1").fetchone()
        return row[0] if row else 0

    def totals(self) -> dict[str, float]:
        """Sums over every recorded step: images, labeled, correct, entropy × batch size and the
        images of steps with a recorded entropy (SQLite stores a NaN as NULL)."""
        row = self.db.execute(
            "SELECT count(*), coalesce(sum(batch_size), 0), coalesce(sum(labeled), 0), coalesce(sum(correct), 0), "
            "coalesce(sum(entropy * batch_size), 0), "
            "coalesce(sum(CASE WHEN entropy IS NOT NULL THEN batch_size END), 0) FROM steps"
        ).fetchone()
        skipped = self.db.execute("SELECT count(*) FROM skipped_inputs").fetchone()[0]
        keys = ("steps", "images", "labeled", "correct", "entropy_sum", "entropy_images")
        return dict(zip(keys, row, strict=True)) | {"skipped": skipped}

    def run_durations(self) -> list[float]:
        """Seconds from each invocation's start to its last recorded step."""
        rows = self.db.execute(
            "SELECT runs.started, max(steps.time) FROM runs JOIN steps ON steps.run_id = runs.id GROUP BY runs.id"
        ).fetchall()
        return [end - start for start, end in rows]

    def latest_run_id(self) -> int | None:
        row = self.db.execute("SELECT max(id) FROM runs").fetchone()
        return row[0]

    def bundle_sha256(self) -> str:
        return self.db.execute("SELECT bundle_sha256 FROM runs ORDER BY id LIMIT 1").fetchone()[0]

    def first_config(self) -> str:
        row = self.db.execute("SELECT config FROM runs ORDER BY id LIMIT 1").fetchone()
        if row is None:
            raise UsageError(f"{self.run_dir} has a history but no run was recorded in it.")
        return row[0]

    # -- retention --------------------------------------------------------------------------

    def prune(self, keep_last: int, keep_every: int, pending: Iterable[str] = ()) -> int:
        """Remove snapshot files no longer needed: keep those of the last ``keep_last`` steps,
        of every ``keep_every``-th step, any that an alias or event names, and the ``pending``
        ones (the guard's candidates for ``last-good``, which an alias may name later). Returns
        the number removed."""
        keep = set(pending)
        keep |= {snapshot_id for (snapshot_id,) in self.db.execute("SELECT snapshot_id FROM aliases")}
        keep |= {sid for (sid,) in self.db.execute("SELECT snapshot_id FROM events WHERE snapshot_id IS NOT NULL")}
        horizon = self.last_step() - keep_last
        candidates = self.db.execute(
            "SELECT id, step FROM snapshots WHERE pruned = 0 AND step <= ? AND step % ? != 0", (horizon, keep_every)
        ).fetchall()
        removed = [snapshot_id for snapshot_id, _ in candidates if snapshot_id not in keep]
        with self.transaction() as db:
            db.executemany("UPDATE snapshots SET pruned = 1 WHERE id = ?", [(sid,) for sid in removed])
        # Files go only after the rows say so: a crash in between leaves rows that are
        # marked pruned with files still present, never rows that point at nothing.
        for snapshot_id in removed:
            self.snapshot_path(snapshot_id).unlink(missing_ok=True)
        return len(removed)

    def store_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.run_dir.glob(f"{self.SNAPSHOTS}/*.safetensors")) + sum(
            path.stat().st_size for path in self.run_dir.glob(f"{self.DB}*")
        )


class RunLock:
    """An exclusive lock on a run directory for the processes that write to it.

    ``flock`` is released by the kernel when its holder dies, so a killed run never leaves a
    stale lock behind.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / "lock"
        self._handle: Any = None

    def __enter__(self) -> RunLock:
        self._handle = self.path.open("a+")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.close()
            raise UsageError(
                f"Run {self.path.parent} is in use by another tta-cli process; wait for it to finish or stop it."
            ) from None
        return self

    def __exit__(self, *exc_info: object) -> None:
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
