"""SQLite store: one file, many runs, crash-safe.

The file is opened in WAL mode; every finished epoch (its steps, its end-of-epoch
measurements and its summary row) is written in one transaction, so a process
killed at any moment leaves a readable store holding every epoch committed
before the kill. Per-sample and per-step arrays are stored as little-endian
binary blobs (float32 per-sample losses, float64 step columns), so reading a
run back gives the same numbers bit for bit.

Example
-------
>>> from losslens.store import Store
>>> with Store("losslens.db") as store:            # doctest: +SKIP
...     for row in store.list_runs():
...         print(row["id"], row["name"], row["n_epochs"])
"""

from __future__ import annotations

import functools
import json
import math
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np

from .record import Epoch, Measurement, Run, Steps, _jsonable

__all__ = ["Store", "StoreError", "SCHEMA_VERSION"]

#: Version of the on-disk schema; bumped on every incompatible change.
#: Version 2: the end-of-epoch estimate of imported logs has its own measurement kind
#: (``end_of_epoch_estimate``, formerly ``train_mode`` with source "estimated"); :meth:`Store._migrate` upgrades
#: a version-1 store when it is opened.
F = TypeVar("F", bound=Callable[..., Any])

#: Version 3: ``measurements.weights``, the per-sample weights (token counts) of weighted measurements.
SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS losslens_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    experiment TEXT,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    meta TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_name ON runs(name);
CREATE TABLE IF NOT EXISTS epochs (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    train_loss REAL,
    penalty REAL,
    n_steps INTEGER NOT NULL,
    n_samples INTEGER NOT NULL,
    position REAL,
    seconds REAL,
    probe_seconds REAL,
    metrics TEXT NOT NULL,
    PRIMARY KEY (run_id, epoch)
);
CREATE TABLE IF NOT EXISTS measurements (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    kind TEXT NOT NULL,
    mean REAL,
    sem REAL,
    n INTEGER NOT NULL,
    source TEXT NOT NULL,
    per_sample BLOB,
    weights BLOB,
    PRIMARY KEY (run_id, epoch, kind)
);
CREATE TABLE IF NOT EXISTS steps (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    chunk INTEGER NOT NULL,
    n INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (run_id, epoch, chunk)
);
"""


def _readable(what: str) -> Callable[[F], F]:
    """Turn a damaged file's error while reading (a corrupted page, a dropped table, bad JSON or a bad blob) into
    one ``StoreError`` naming the store and what was being read."""
    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(self: "Store", *args: Any, **kwargs: Any) -> Any:
            try:
                return fn(self, *args, **kwargs)
            except (sqlite3.DatabaseError, ValueError, TypeError, KeyError, IndexError) as exc:
                raise StoreError(f"store {str(self.path)!r}: {what} could not be read ({type(exc).__name__}: "
                                 f"{exc}); the file may be damaged") from exc
        return wrapper  # type: ignore[return-value]
    return deco


class StoreError(RuntimeError):
    """A store file cannot be used (wrong schema, not a losslens store, unknown run)."""


def _real(x: Any) -> float:
    """SQLite stores NaN as NULL: map it back."""
    return math.nan if x is None else float(x)


def _steps_blob(steps: Steps) -> bytes:
    cols = np.vstack([steps.position, steps.loss, steps.batch_size, steps.penalty, steps.span]).astype("<f8")
    return cols.tobytes()


def _steps_from_blob(epoch: int, n: int, blob: bytes) -> Steps:
    cols = np.frombuffer(blob, dtype="<f8").reshape(5, n).astype(np.float64)
    return Steps(np.full(n, epoch, dtype=np.int64), cols[0], cols[1], cols[2], cols[3], cols[4])


class Store:
    """A losslens store in one SQLite file.

    Parameters
    ----------
    path : str or os.PathLike
        File to open or create. Its parent directory must exist.
    read_only : bool or None
        None (default): read-only when the file exists and this process may not write it or its folder (a
        read-only share, another user's results); True: never write. A read-only store reads every run (older
        schema versions are translated while reading) and refuses writes with a ``StoreError``.

    Raises
    ------
    StoreError
        If the file exists but is not a losslens store, or was written by a
        newer schema version than this losslens reads.

    Notes
    -----
    Many processes may open (and create) one store at once, e.g. the jobs of a hyper-parameter sweep: the schema
    is created in one ``BEGIN IMMEDIATE`` transaction (the others wait for it, up to 30 s), and the switch to
    write-ahead logging is retried while another process holds the file.
    """

    def __init__(self, path: str | os.PathLike[str], read_only: bool | None = None) -> None:
        self.path = Path(path)
        if not self.path.parent.exists():
            raise StoreError(f"store {str(self.path)!r}: directory {str(self.path.parent)!r} does not exist")
        if read_only is None:
            read_only = self.path.exists() and not (os.access(self.path, os.W_OK)
                                                   and os.access(self.path.parent, os.W_OK))
        self.read_only = bool(read_only)
        try:
            if not self.read_only:
                try:
                    self._open_writable()
                except sqlite3.OperationalError as exc:   # a read-only mount, even for root
                    if not (self.path.exists() and ("readonly" in str(exc) or "unable to open" in str(exc))):
                        raise
                    self._conn.close()
                    self.read_only = True
            if self.read_only:
                self._open_read_only()
            self._conn.execute("PRAGMA foreign_keys=ON")
        except (sqlite3.DatabaseError, ValueError, TypeError, KeyError, IndexError) as exc:  # a damaged file
            conn = getattr(self, "_conn", None)
            if conn is not None:
                conn.close()
            raise StoreError(f"store {str(self.path)!r} is not a usable SQLite file: {exc}") from exc

    def _open_writable(self) -> None:
        self._conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
        self._conn.execute("PRAGMA busy_timeout=30000")
        self._init_schema()
        self._wal()
        self._conn.execute("PRAGMA synchronous=NORMAL")

    def _open_read_only(self) -> None:
        """Read without any write or lock that could wait for a writer (WAL readers do not block). In a folder this
        process cannot write, and with no write-ahead log beside the file, open it immutable (SQLite could not
        create its shared-memory file there)."""
        if not self.path.exists():
            raise StoreError(f"store {str(self.path)!r} does not exist (opened read-only)")
        immutable = (not os.access(self.path.parent, os.W_OK)
                     and not Path(str(self.path) + "-wal").exists())
        uri = f"{self.path.resolve().as_uri()}?mode=ro" + ("&immutable=1" if immutable else "")
        self._conn = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None)
        self._check_schema(writable=False)

    # -- housekeeping -------------------------------------------------------------------
    def _wal(self, seconds: float = 30.0) -> None:
        """Switch to write-ahead logging; retried while another process holds the file (it may switch it)."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                mode = self._conn.execute("PRAGMA journal_mode").fetchone()[0]
                if str(mode).lower() == "wal":
                    return
                time.sleep(0.01)

    def _init_schema(self) -> None:
        """Create the tables (a new store) or check and migrate them, in one transaction."""
        with self._tx():
            tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables and "losslens_info" not in tables:
                raise StoreError(f"store {str(self.path)!r} is an SQLite file but not a losslens store")
            if not tables:
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        self._conn.execute(stmt)
            self._check_schema(writable=True)

    def _check_schema(self, writable: bool) -> None:
        if not writable:
            tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "losslens_info" not in tables:
                raise StoreError(f"store {str(self.path)!r} is an SQLite file but not a losslens store")
        row = self._conn.execute("SELECT value FROM losslens_info WHERE key='schema_version'").fetchone()
        try:
            version = int(row[0]) if row is not None else None
        except (TypeError, ValueError):
            raise StoreError(f"store {str(self.path)!r}: schema version {row[0]!r} is not a number") from None
        if version is None:
            if writable:
                self._conn.execute("INSERT INTO losslens_info(key, value) VALUES ('schema_version', ?)",
                                   (str(SCHEMA_VERSION),))
            return
        if version > SCHEMA_VERSION:
            raise StoreError(f"store {str(self.path)!r} has schema version {version}, newer than this losslens "
                             f"reads ({SCHEMA_VERSION}); upgrade losslens")
        if version < SCHEMA_VERSION and writable:
            self._migrate(version)

    def _migrate(self, version: int) -> None:
        """Upgrade an older store in place, inside the opening transaction (all or nothing)."""
        if version < 2:
            self._conn.execute("UPDATE measurements SET kind='end_of_epoch_estimate' "
                               "WHERE kind='train_mode' AND source='estimated'")
        if version < 3 and self._weights_col() == "NULL":
            self._conn.execute("ALTER TABLE measurements ADD COLUMN weights BLOB")
        self._conn.execute("UPDATE losslens_info SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))

    def _tx(self) -> "_Transaction":
        if self.read_only:
            raise StoreError(f"store {str(self.path)!r} is open read-only (this process may not write it or its "
                             "folder): nothing can be recorded in it")
        return _Transaction(self._conn)

    def close(self) -> None:
        """Close the connection (committed data stays on disk)."""
        self._conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------
    def create_run(self, name: str, meta: dict[str, Any] | None = None, experiment: str | None = None,
                   status: str = "running") -> int:
        """Insert a new run and return its id. Names may repeat; ids do not."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"run name must be a non-empty string, got {name!r}")
        now = time.time()
        with self._tx():
            cur = self._conn.execute(
                "INSERT INTO runs(name, experiment, status, created, updated, meta) VALUES (?,?,?,?,?,?)",
                (name, experiment, status, now, now, json.dumps(_jsonable(meta or {}))),
            )
            return int(cur.lastrowid)

    def update_meta(self, run_id: int, meta: dict[str, Any]) -> None:
        """Replace a run's metadata."""
        with self._tx():
            self._conn.execute(
                "UPDATE runs SET meta=?, updated=? WHERE id=?", (json.dumps(_jsonable(meta)), time.time(), run_id)
            )

    def set_status(self, run_id: int, status: str) -> None:
        """Set a run's status (``running``, ``finished``, ``imported``)."""
        with self._tx():
            self._conn.execute("UPDATE runs SET status=?, updated=? WHERE id=?", (status, time.time(), run_id))

    def append_epoch(self, run_id: int, epoch: Epoch, steps: Steps | None = None) -> None:
        """Commit one finished epoch, its measurements and its steps in one transaction.

        Writing the same epoch twice replaces it.
        """
        with self._tx():
            self._write_epoch(run_id, epoch, steps)
            self._conn.execute("UPDATE runs SET updated=? WHERE id=?", (time.time(), run_id))

    def _write_epoch(self, run_id: int, epoch: Epoch, steps: Steps | None) -> None:
        c = self._conn
        c.execute(
            "INSERT OR REPLACE INTO epochs(run_id, epoch, train_loss, penalty, n_steps, n_samples, position,"
            " seconds, probe_seconds, metrics) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (run_id, epoch.index, epoch.train_loss, epoch.penalty, int(epoch.n_steps), int(epoch.n_samples),
             epoch.position, epoch.seconds, epoch.probe_seconds, json.dumps(epoch.metrics)),
        )
        c.execute("DELETE FROM measurements WHERE run_id=? AND epoch=?", (run_id, epoch.index))
        for m in epoch.measurements.values():
            blob = None if m.values is None else np.asarray(m.values, dtype="<f4").tobytes()
            wblob = None if m.weights is None else np.asarray(m.weights, dtype="<f4").tobytes()
            c.execute(
                "INSERT INTO measurements(run_id, epoch, kind, mean, sem, n, source, per_sample, weights)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (run_id, epoch.index, m.kind, m.mean, m.sem, int(m.n), m.source, blob, wblob),
            )
        if steps is not None and len(steps):
            c.execute("DELETE FROM steps WHERE run_id=? AND epoch=?", (run_id, epoch.index))
            c.execute(
                "INSERT INTO steps(run_id, epoch, chunk, n, data) VALUES (?,?,?,?,?)",
                (run_id, epoch.index, 0, len(steps), _steps_blob(steps)),
            )

    def save_run(self, run: Run) -> int:
        """Write a whole run (e.g. an imported log) in one transaction; sets ``run.id``."""
        run.id = self.create_run(run.name, run.meta, run.experiment, status=run.status)
        with self._tx():
            for e in run.epochs:
                self._write_epoch(run.id, e, run.steps.for_epoch(e.index))
            # steps of epochs without an Epoch row (e.g. a partial last epoch)
            known = {e.index for e in run.epochs}
            for ep in np.unique(run.steps.epoch):
                if int(ep) not in known:
                    part = run.steps.for_epoch(int(ep))
                    self._conn.execute(
                        "INSERT OR REPLACE INTO steps(run_id, epoch, chunk, n, data) VALUES (?,?,?,?,?)",
                        (run.id, int(ep), 0, len(part), _steps_blob(part)),
                    )
        return run.id

    def merge_from(self, other: "Store") -> list[int]:
        """Copy every run of ``other`` into this store (new ids; names, experiments, status, creation time and
        data kept). A run is identified by its name, experiment and creation time: one already here (copied by
        an earlier merge, or given twice) is not copied again, so seed counts never inflate.

        Returns
        -------
        list of int
            The new ids of the runs copied, in ``other``'s order.

        Raises
        ------
        StoreError
            If ``other`` is this very file.
        """
        if other.path.resolve() == self.path.resolve():
            raise StoreError(f"cannot merge store {str(self.path)!r} into itself")
        have = {(r[0], r[1], r[2]) for r in self._conn.execute("SELECT name, experiment, created FROM runs")}
        ids = []
        for row in other.list_runs():
            key = (row["name"], row["experiment"], row["created"])
            if key in have:   # the same run, copied before (a re-run of merge, or the same source twice)
                continue
            new_id = self.save_run(other.load_run(row["id"]))
            with self._tx():   # keep the run's identity: its creation time travels with it
                self._conn.execute("UPDATE runs SET created=? WHERE id=?", (row["created"], new_id))
            have.add(key)
            ids.append(new_id)
        return ids

    def delete_run(self, run_id: int) -> None:
        """Remove a run and everything recorded for it."""
        with self._tx():
            for table in ("measurements", "epochs", "steps"):
                self._conn.execute(f"DELETE FROM {table} WHERE run_id=?", (run_id,))
            self._conn.execute("DELETE FROM runs WHERE id=?", (run_id,))

    def truncate_run(self, run_id: int, start_epoch: int) -> int:
        """Delete the epochs with index >= ``start_epoch`` (and their measurements and steps) of a run.

        Used when a run resumes from a checkpoint taken before its last recorded epochs: the epochs from
        ``start_epoch`` on are trained again and recorded again. Returns the number of epochs deleted.
        """
        with self._tx():
            n = self._conn.execute("SELECT COUNT(*) FROM epochs WHERE run_id=? AND epoch>=?",
                                   (run_id, start_epoch)).fetchone()[0]
            for table in ("measurements", "epochs", "steps"):
                self._conn.execute(f"DELETE FROM {table} WHERE run_id=? AND epoch>=?", (run_id, start_epoch))
            self._conn.execute("UPDATE runs SET updated=? WHERE id=?", (time.time(), run_id))
        return int(n)

    # -- reading ---------------------------------------------------------------------------
    @_readable("the list of runs")
    def list_runs(self) -> list[dict[str, Any]]:
        """One dict per run: id, name, experiment, status, created, n_epochs, last validation loss."""
        rows = self._conn.execute(
            "SELECT r.id, r.name, r.experiment, r.status, r.created, "
            " (SELECT COUNT(*) FROM epochs e WHERE e.run_id=r.id),"
            " (SELECT m.mean FROM measurements m WHERE m.run_id=r.id AND m.kind='validation'"
            "  ORDER BY m.epoch DESC LIMIT 1)"
            " FROM runs r ORDER BY r.id"
        ).fetchall()
        return [
            {"id": r[0], "name": r[1], "experiment": r[2], "status": r[3], "created": r[4], "n_epochs": r[5],
             "last_val_loss": _real(r[6])}
            for r in rows
        ]

    @_readable("the experiment's runs")
    def load_experiment(self, experiment: str) -> list[Run]:
        """Every run of one experiment (runs created with the same ``experiment`` name), oldest first.

        Raises
        ------
        StoreError
            If no run has that experiment name; the message lists the experiments in the store.
        """
        ids = [r[0] for r in self._conn.execute("SELECT id FROM runs WHERE experiment=? ORDER BY id", (experiment,))]
        if not ids:
            names = sorted({r["experiment"] for r in self.list_runs() if r["experiment"]})
            raise StoreError(f"no experiment {experiment!r} in store {str(self.path)!r} "
                             f"(experiments: {', '.join(names) or 'none'})")
        return [self.load_run(i) for i in ids]

    @_readable("the experiment's metadata")
    def experiment_metas(self, experiment: str, before: int | None = None) -> list[dict[str, Any]]:
        """Metadata of the runs of one experiment (oldest first), optionally only those with id < ``before``."""
        rows = self._conn.execute(
            "SELECT id, meta FROM runs WHERE experiment=? AND id < ? ORDER BY id",
            (experiment, before if before is not None else 2 ** 62),
        ).fetchall()
        return [{"id": r[0], **json.loads(r[1])} for r in rows]

    @_readable("the run's id")
    def resolve(self, ref: int | str) -> int:
        """Run id for ``ref``: an id, or a name (the newest run of that name).

        Raises
        ------
        StoreError
            If no run matches; the message lists the runs in the store.
        """
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            row = self._conn.execute("SELECT id FROM runs WHERE id=?", (int(ref),)).fetchone()
            if row:
                return int(row[0])
        if isinstance(ref, str):
            row = self._conn.execute("SELECT id FROM runs WHERE name=? ORDER BY id DESC LIMIT 1", (ref,)).fetchone()
            if row:
                return int(row[0])
        names = ", ".join(f"{r['id']}:{r['name']}" for r in self.list_runs()) or "none"
        raise StoreError(f"no run {ref!r} in store {str(self.path)!r} (runs: {names})")

    @_readable("the run")
    def load_run(self, ref: int | str, salvage: bool = False) -> Run:
        """Read a run back (by id or name) with every committed epoch, measurement and step.

        Parameters
        ----------
        salvage : bool
            For a damaged file: keep what can be read (rows before a corrupted page, rows that decode) and list
            what could not in ``run.meta["damaged_records"]`` (reported as ``recording.damaged_log``), instead
            of raising.

        Raises
        ------
        StoreError
            Unknown run, or (without ``salvage``) a damaged file; the message names the store.
        """
        if not salvage:
            return self._load_run_strict(ref)
        damage: list[str] = []
        run_id = self.resolve(ref)
        try:
            name, experiment, status, meta_text = self._conn.execute(
                "SELECT name, experiment, status, meta FROM runs WHERE id=?", (run_id,)).fetchone()
        except (sqlite3.DatabaseError, TypeError) as exc:
            raise StoreError(f"store {str(self.path)!r}: run {ref!r} could not be read ({exc}); the file is "
                             "damaged") from exc
        try:
            meta = json.loads(meta_text)
        except (TypeError, ValueError) as exc:
            meta = {}
            damage.append(f"the run's metadata ({exc})")

        def rows(what: str, sql: str) -> list[tuple]:
            out: list[tuple] = []
            try:
                for r in self._conn.execute(sql, (run_id,)):
                    out.append(r)
            except sqlite3.DatabaseError as exc:
                damage.append(f"{what} after the first {len(out)} rows ({exc})")
            return out

        measurements: dict[int, dict[str, Measurement]] = {}
        for row in rows("measurements", f"SELECT epoch, kind, mean, sem, n, source, per_sample, {self._weights_col()} "
                                         "FROM measurements WHERE run_id=? ORDER BY epoch"):
            try:
                m = self._measurement(row)
                measurements.setdefault(int(row[0]), {})[m.kind] = m
            except (TypeError, ValueError) as exc:
                damage.append(f"a measurement of epoch {row[0]} ({exc})")
        epochs = []
        for row in rows("epochs", "SELECT epoch, train_loss, penalty, n_steps, n_samples, position, seconds, "
                                  "probe_seconds, metrics FROM epochs WHERE run_id=? ORDER BY epoch"):
            try:
                epochs.append(self._epoch(row, measurements))
            except (TypeError, ValueError) as exc:
                damage.append(f"epoch {row[0]} ({exc})")
        parts = []
        for ep, n, blob in rows("step losses", "SELECT epoch, n, data FROM steps WHERE run_id=? ORDER BY epoch, "
                                               "chunk"):
            try:
                parts.append(_steps_from_blob(int(ep), int(n), blob))
            except (TypeError, ValueError) as exc:
                damage.append(f"the step losses of epoch {ep} ({exc})")
        if damage:
            meta["damaged_records"] = [f"store {self.path.name}: {d} could not be read" for d in damage]
        return Run(name=name, epochs=epochs, steps=Steps.concat(parts), meta=meta, id=run_id, status=status,
                   experiment=experiment)

    def _weights_col(self) -> str:
        """``weights``, or ``NULL`` in a store older than schema 3 opened read-only (not migrated)."""
        cols = {r[1] for r in self._conn.execute("PRAGMA table_info(measurements)")}
        return "weights" if "weights" in cols else "NULL"

    @staticmethod
    def _measurement(row: tuple) -> Measurement:
        _, kind, mean, sem, n, source, blob, wblob = row
        values = None if blob is None else np.frombuffer(blob, dtype="<f4").astype(np.float32)
        weights = None if wblob is None else np.frombuffer(wblob, dtype="<f4").astype(np.float32)
        if weights is not None and (values is None or weights.shape != values.shape):
            raise ValueError(f"the weights of measurement {kind!r} do not match its per-sample losses")
        if kind == "train_mode" and source == "estimated":   # schema 1, opened read-only (not migrated)
            kind = "end_of_epoch_estimate"
        return Measurement(kind, _real(mean), _real(sem), int(n), values, source, weights)

    @staticmethod
    def _epoch(row: tuple, measurements: dict[int, dict[str, Measurement]]) -> Epoch:
        ep = int(row[0])
        return Epoch(index=ep, train_loss=_real(row[1]), penalty=_real(row[2]), n_steps=int(row[3]),
                     n_samples=int(row[4]), position=_real(row[5]), measurements=measurements.get(ep, {}),
                     metrics=json.loads(row[8]), seconds=_real(row[6]), probe_seconds=_real(row[7]))

    def _load_run_strict(self, ref: int | str) -> Run:
        run_id = self.resolve(ref)
        name, experiment, status, meta = self._conn.execute(
            "SELECT name, experiment, status, meta FROM runs WHERE id=?", (run_id,)
        ).fetchone()
        measurements: dict[int, dict[str, Measurement]] = {}
        for row in self._conn.execute(
            f"SELECT epoch, kind, mean, sem, n, source, per_sample, {self._weights_col()} FROM measurements "
            "WHERE run_id=? ORDER BY epoch",
            (run_id,),
        ):
            m = self._measurement(row)
            measurements.setdefault(int(row[0]), {})[m.kind] = m
        epochs = [self._epoch(row, measurements) for row in self._conn.execute(
            "SELECT epoch, train_loss, penalty, n_steps, n_samples, position, seconds, probe_seconds, metrics"
            " FROM epochs WHERE run_id=? ORDER BY epoch",
            (run_id,),
        )]
        parts = [
            _steps_from_blob(int(ep), int(n), blob)
            for ep, n, blob in self._conn.execute(
                "SELECT epoch, n, data FROM steps WHERE run_id=? ORDER BY epoch, chunk", (run_id,)
            )
        ]
        return Run(name=name, epochs=epochs, steps=Steps.concat(parts), meta=json.loads(meta), id=run_id,
                   status=status, experiment=experiment)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on error (autocommit connection)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.depth_owner = False

    def __enter__(self) -> None:
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")
            self.depth_owner = True

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if not self.depth_owner:
            return
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")


def write_pending(store: "Store", run_id: int | None, pending: list, *, final: bool, holder: str, retry: str,
                  after_write: Any = None) -> None:
    """Write the finished epochs an adapter holds in ``pending`` (``(Epoch, Steps)`` pairs), in order, removing
    each once committed.

    A failed write (a full disk, a locked file) leaves it and the later ones in ``pending``: with ``final=False``
    a ``RuntimeWarning`` says they are kept and retried (``retry``: when), so training goes on; with
    ``final=True`` it raises. Nothing is dropped silently.

    Parameters
    ----------
    holder : str
        Where the user finds the unwritten epochs (e.g. ``"lens.run"``).
    after_write : callable, optional
        Called after each committed epoch (e.g. to write changed metadata), inside the same error handling.

    Raises
    ------
    StoreError
        With ``final=True``, when a write still fails; the message names the store.
    """
    import warnings

    while pending:
        ep, st = pending[0]
        try:
            store.append_epoch(run_id, ep, st)  # type: ignore[arg-type]
            if after_write is not None:
                after_write()
        except (sqlite3.Error, OSError, StoreError) as exc:
            msg = (f"store {str(store.path)!r}: could not write epoch {ep.index} ({exc}); "
                   f"{len(pending)} epoch(s) kept in memory")
            if final:
                raise StoreError(msg + f"; they are in {holder}") from exc
            warnings.warn(msg + f", retried at {retry}", RuntimeWarning, stacklevel=4)
            return
        pending.pop(0)
