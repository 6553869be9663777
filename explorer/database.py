"""The run's DuckDB file (`runs/<run>/explorer.duckdb`, `explorer.runs.database_path`): opening, atomic
writes, the schema version, and the SAE tables. `explorer.feature_db` reads and writes the feature
index's tables and `explorer.steering_store` the steering results; no other code runs SQL.
`explorer.schema` holds every table's CREATE TABLE statement.

Tables written here (docs/schema.md lists them all, with example queries):

- `schema_info`: one row. `schema_version`, when the file was created and last written (UTC), and the
  provenance of what it holds: the profile (JSON), package versions (JSON), the corpus hash and the
  SAE ids it has rows for.
- `sae_training_report`: one row per SAE (`sae_id`): what it is, where it came from, and its report on
  held-out tokens (explorer.sae_metrics defines each number).
- `sae_training_curve`: `(sae_id, step)`: loss, MSE, sparsity loss, L0 and explained variance logged
  during training.

Writes are atomic and serialised. `write_transaction` takes an exclusive lock (`explorer.duckdb.lock`),
copies the current file to a temporary sibling, lets the caller modify the copy, checkpoints it and
`os.replace`s it over the original: a reader sees the old file or the new one, never half a write, and
two stages writing their own tables one after the other both keep their rows. Readers use read-only
connections (`open_read_only`) and a cursor per query; a connection opened before a write keeps
seeing the file it opened, so reopen to see new rows.

Every statement takes its values as `?` parameters.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import duckdb

from explorer.errors import ExplorerError
from explorer.sae_metrics import TrainingCurvePoint
from explorer.schema import CORE_TABLES, FEATURE_TABLES, MIGRATIONS, SCHEMA_VERSION

ENGINE_ERROR = duckdb.Error
"""DuckDB's own error (a damaged file, a failed query): callers that show it catch this instead of
importing duckdb, which only the store modules do."""
Connection = duckdb.DuckDBPyConnection
"""A connection to the run's file (`open_read_only`), for annotations outside the store modules."""


class DatabaseError(ExplorerError, RuntimeError):
    """The run's DuckDB file is missing, unreadable or from another schema; the message says what to do."""


class Provenance(NamedTuple):
    """What made the file's contents; goes into `schema_info`."""

    profile: dict[str, Any]
    package_versions: dict[str, str]
    corpus_hash: str | None


class SchemaInfo(NamedTuple):
    schema_version: int
    created_at: datetime
    """UTC, naive."""
    updated_at: datetime
    """UTC, naive."""
    profile: dict[str, Any]
    package_versions: dict[str, str]
    corpus_hash: str | None
    sae_ids: tuple[str, ...]


class SAETrainingReportRow(NamedTuple):
    """One row of `sae_training_report`."""

    sae_id: str
    hook_name: str
    architecture: str
    d_in: int
    d_sae: int
    k: int | None
    model_name: str
    source: str
    """Where the SAE came from: `saes/<sae_id>` for one trained here, else the folder or release id."""
    source_kind: str
    """`trained`, `folder`, `checkpoint` or `pretrained`."""
    training_tokens: int | None
    train_seconds: float | None
    n_tokens: int
    n_sparsity_tokens: int
    l0: float
    mse: float
    explained_variance: float
    frac_dead: float
    frac_dense: float
    dense_threshold: float
    ce_loss_clean: float
    ce_loss_spliced: float
    ce_loss_zero_ablated: float
    ce_loss_recovered: float
    measured_at: datetime


_REPORT_COLUMNS = SAETrainingReportRow._fields
_CURVE_COLUMNS = ("sae_id", *TrainingCurvePoint._fields)


def utc_now() -> datetime:
    """Now, in UTC, without tzinfo (DuckDB TIMESTAMP)."""
    return datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)


# --- writing --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _exclusive_lock(db_path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not on POSIX: writes are still atomic, just not serialised
        yield
        return
    with open(db_path.with_name(db_path.name + ".lock"), "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


@contextlib.contextmanager
def write_transaction(db_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-write connection to a copy of `db_path`; on success the copy replaces it atomically.

    The schema is created (or checked) before the caller's statements run. On an exception the copy
    is deleted and `db_path` is untouched.
    """
    db_path = Path(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(db_path):
        fd, name = tempfile.mkstemp(prefix=f".{db_path.name}.tmp-", dir=db_path.parent)
        os.close(fd)
        tmp = Path(name)
        tmp.unlink()  # DuckDB refuses an empty file; it creates its own
        try:
            if db_path.exists():
                shutil.copy2(db_path, tmp)
            con = duckdb.connect(str(tmp))
            try:
                _ensure_schema(con, db_path)
                con.execute("BEGIN TRANSACTION")
                yield con
                con.execute("COMMIT")
                con.execute("CHECKPOINT")  # everything in the main file: no WAL left behind
            finally:
                con.close()
            os.replace(tmp, db_path)
        finally:
            for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
                leftover.unlink(missing_ok=True)


def _ensure_schema(con: duckdb.DuckDBPyConnection, db_path: Path) -> None:
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", ["schema_info"]
    ).fetchone()[0]
    if exists:
        row = con.execute("SELECT schema_version FROM schema_info").fetchone()
        if row is not None and row[0] in MIGRATIONS:
            for statement in MIGRATIONS[row[0]]:
                con.execute(statement)
            row = (SCHEMA_VERSION,)
        if row is not None and row[0] != SCHEMA_VERSION:
            raise DatabaseError(
                f"{db_path} has schema version {row[0]}, but this code writes version {SCHEMA_VERSION}. "
                "Rebuild the run (`python -m precompute build --force`) or use the matching code."
            )
    for statement in (*CORE_TABLES, *FEATURE_TABLES):
        con.execute(statement)


def write_provenance(con: duckdb.DuckDBPyConnection, provenance: Provenance) -> None:
    """Create or update the `schema_info` row (inside a `write_transaction`), and its SAE ids."""
    now = utc_now()
    sae_ids = [row[0] for row in con.execute("SELECT sae_id FROM sae_training_report ORDER BY sae_id").fetchall()]
    values = [
        json.dumps(provenance.profile, sort_keys=True),
        json.dumps(provenance.package_versions, sort_keys=True),
        provenance.corpus_hash,
        sae_ids,
    ]
    if con.execute("SELECT count(*) FROM schema_info").fetchone()[0] == 0:
        con.execute(
            "INSERT INTO schema_info (schema_version, created_at, updated_at, profile_json, package_versions_json, "
            "corpus_hash, sae_ids) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [SCHEMA_VERSION, now, now, *values],
        )
    else:
        con.execute(
            "UPDATE schema_info SET updated_at = ?, profile_json = ?, package_versions_json = ?, corpus_hash = ?, "
            "sae_ids = ?",
            [now, *values],
        )


def write_sae_training_report(
    db_path: Path,
    row: SAETrainingReportRow,
    curve: Sequence[TrainingCurvePoint],
    provenance: Provenance,
) -> None:
    """Replace `row.sae_id`'s report and curve, and update the provenance, in one atomic write."""
    curve_rows = sorted(curve, key=lambda point: point.step)
    with write_transaction(db_path) as con:
        con.execute("DELETE FROM sae_training_report WHERE sae_id = ?", [row.sae_id])
        con.execute("DELETE FROM sae_training_curve WHERE sae_id = ?", [row.sae_id])
        placeholders = ", ".join("?" for _ in _REPORT_COLUMNS)
        con.execute(
            f"INSERT INTO sae_training_report ({', '.join(_REPORT_COLUMNS)}) VALUES ({placeholders})",
            list(row),
        )
        if curve_rows:
            placeholders = ", ".join("?" for _ in _CURVE_COLUMNS)
            con.executemany(
                f"INSERT INTO sae_training_curve ({', '.join(_CURVE_COLUMNS)}) VALUES ({placeholders})",
                [[row.sae_id, *point] for point in curve_rows],
            )
        write_provenance(con, provenance)


# --- reading --------------------------------------------------------------------------------------


def open_read_only(db_path: Path) -> duckdb.DuckDBPyConnection:
    """A shared read-only connection; take a `.cursor()` per query."""
    db_path = Path(db_path)
    if not db_path.is_file():
        raise DatabaseError(f"{db_path} does not exist: build the run first (`python -m precompute build`).")
    try:
        return duckdb.connect(str(db_path), read_only=True)
    except duckdb.Error as err:
        raise DatabaseError(f"{db_path} could not be opened: {err}") from err


@contextlib.contextmanager
def read_cursor(db: duckdb.DuckDBPyConnection | Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A cursor of `db` (a connection, closed after use) or of a read-only connection to the file at `db`."""
    if isinstance(db, duckdb.DuckDBPyConnection):
        cursor = db.cursor()
        try:
            yield cursor
        finally:
            cursor.close()
        return
    con = open_read_only(Path(db))
    try:
        yield con.cursor()
    finally:
        con.close()


def has_table(cursor: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Whether the file holds `table` (tables are created on a file's first write of their kind)."""
    return bool(
        cursor.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]).fetchone()[0]
    )


def read_schema_info(db: duckdb.DuckDBPyConnection | Path) -> SchemaInfo | None:
    """The `schema_info` row, or None for a file that has none yet."""
    with read_cursor(db) as cursor:
        if not has_table(cursor, "schema_info"):
            return None
        row = cursor.execute(
            "SELECT schema_version, created_at, updated_at, profile_json, package_versions_json, corpus_hash, sae_ids "
            "FROM schema_info"
        ).fetchone()
    if row is None:
        return None
    version, created, updated, profile_json, versions_json, corpus_hash, sae_ids = row
    return SchemaInfo(
        schema_version=version,
        created_at=created,
        updated_at=updated,
        profile=json.loads(profile_json) if profile_json else {},
        package_versions=json.loads(versions_json) if versions_json else {},
        corpus_hash=corpus_hash,
        sae_ids=tuple(sae_ids or ()),
    )


def read_sae_ids(db: duckdb.DuckDBPyConnection | Path) -> list[str]:
    """The ids of the SAEs with a training report, sorted."""
    with read_cursor(db) as cursor:
        if not has_table(cursor, "sae_training_report"):
            return []
        return [row[0] for row in cursor.execute("SELECT sae_id FROM sae_training_report ORDER BY sae_id").fetchall()]


def read_sae_training_reports(db: duckdb.DuckDBPyConnection | Path) -> list[SAETrainingReportRow]:
    """Every SAE's report, sorted by id."""
    with read_cursor(db) as cursor:
        if not has_table(cursor, "sae_training_report"):
            return []
        rows = cursor.execute(
            f"SELECT {', '.join(_REPORT_COLUMNS)} FROM sae_training_report ORDER BY sae_id"
        ).fetchall()
    return [SAETrainingReportRow(*row) for row in rows]


def read_sae_training_report(db: duckdb.DuckDBPyConnection | Path, sae_id: str) -> SAETrainingReportRow | None:
    """One SAE's report, or None."""
    with read_cursor(db) as cursor:
        if not has_table(cursor, "sae_training_report"):
            return None
        row = cursor.execute(
            f"SELECT {', '.join(_REPORT_COLUMNS)} FROM sae_training_report WHERE sae_id = ?", [sae_id]
        ).fetchone()
    return SAETrainingReportRow(*row) if row is not None else None


def read_sae_training_curve(db: duckdb.DuckDBPyConnection | Path, sae_id: str) -> list[TrainingCurvePoint]:
    """One SAE's training curve, by step (empty for SAEs trained elsewhere)."""
    with read_cursor(db) as cursor:
        if not has_table(cursor, "sae_training_curve"):
            return []
        rows = cursor.execute(
            f"SELECT {', '.join(TrainingCurvePoint._fields)} FROM sae_training_curve WHERE sae_id = ? ORDER BY step",
            [sae_id],
        ).fetchall()
    return [TrainingCurvePoint(*row) for row in rows]
