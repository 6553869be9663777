"""The run's DuckDB file (`runs/<run>/explorer.duckdb`, `explorer.runs.database_path`): opening, atomic
writes, the schema version, and the SAE tables. `explorer.feature_db` reads and writes the feature
index's tables, `explorer.steering_store` the steering results and `explorer.injection_store` the
token-injection test's; no other code runs SQL.
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

Every read goes through one boundary: `open_read_only` and `read_cursor`. Opening checks that the file is a
readable file, that DuckDB can open it, that it is as long as its header says (a file cut short is found
here, not at the first read of a lost block) and that its schema version is this code's. Any DuckDB or
OS error of a read, at the open or later, becomes `DatabaseError` (explorer.errors), whose message says
which file, what is wrong with it (damaged, unreadable, not a file, another schema version) and what to
do; `problem` says which of those it is.

Every statement takes its values as `?` parameters.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import duckdb

from explorer.errors import DatabaseError, is_out_of_space, out_of_space_message
from explorer.fault_points import checkpoint
from explorer.sae_metrics import TrainingCurvePoint
from explorer.schema import CORE_TABLES, FEATURE_TABLES, MIGRATIONS, READABLE_VERSIONS, SCHEMA_VERSION

ENGINE_ERROR = duckdb.Error
"""DuckDB's own error (a damaged file, a failed query): callers that show it catch this instead of
importing duckdb, which only the store modules do."""
Connection = duckdb.DuckDBPyConnection
"""A connection to the run's file (`open_read_only`), for annotations outside the store modules."""




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
        _remove_leftover_copies(db_path)
        fd, name = tempfile.mkstemp(prefix=f".{db_path.name}.tmp-", dir=db_path.parent)
        os.close(fd)
        tmp = Path(name)
        tmp.unlink()  # DuckDB refuses an empty file; it creates its own
        try:
            if os.path.lexists(db_path):
                _open_checked(db_path, "written", check_version=False).close()  # a damaged file is refused here
                shutil.copy2(db_path, tmp)
                checkpoint("database:copied")
            con = duckdb.connect(str(tmp))
            try:
                _ensure_schema(con, db_path)
                con.execute("BEGIN TRANSACTION")
                yield con
                con.execute("COMMIT")
                con.execute("CHECKPOINT")  # everything in the main file: no WAL left behind
            finally:
                con.close()
            checkpoint("database:written")
            os.replace(tmp, db_path)
        except (duckdb.Error, OSError) as err:
            if is_out_of_space(err):
                raise DatabaseError(
                    out_of_space_message(err, str(db_path)), path=db_path, problem=DatabaseError.OUT_OF_SPACE
                ) from err
            raise
        finally:
            for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
                leftover.unlink(missing_ok=True)


def _remove_leftover_copies(db_path: Path) -> None:
    """Temporary copies a killed writer left (only a writer holding the lock makes one, and we hold it)."""
    for leftover in db_path.parent.glob(f".{db_path.name}.tmp-*"):
        leftover.unlink(missing_ok=True)


def _ensure_schema(con: duckdb.DuckDBPyConnection, db_path: Path) -> None:
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", ["schema_info"]
    ).fetchone()[0]
    if exists:
        row = con.execute("SELECT schema_version FROM schema_info").fetchone()
        while row is not None and row[0] in MIGRATIONS and row[0] < SCHEMA_VERSION:
            for statement in MIGRATIONS[row[0]]:
                con.execute(statement)
            row = (row[0] + 1,)
        if row is not None and row[0] != SCHEMA_VERSION:
            raise schema_version_error(db_path, row[0], "written")
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
    """A shared read-only connection to a file that passed the checks above; read through `read_cursor`, a
    cursor per query (a bare `.cursor()` starts in DuckDB's in-memory catalog, not the file's). Raises
    `DatabaseError` saying what is wrong and what to do."""
    return _open_checked(Path(db_path), "read")


def _open_checked(db_path: Path, action: str, *, check_version: bool = True) -> duckdb.DuckDBPyConnection:
    _check_file(db_path, action)
    # `duckdb.connect(path)` shares one database instance per path within a process: while any connection
    # to a file is open, a new one reads the file that was there when the first opened, not the one a stage
    # has since put in its place. An in-memory instance of its own that attaches the file reads what is there.
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"ATTACH ? AS {ATTACHED} (READ_ONLY)", [str(db_path)])
        con.execute(f"USE {ATTACHED}")
        _check_length(con, db_path, action)
        if check_version:
            version = _schema_version(con)
            if version is not None and version not in READABLE_VERSIONS:
                raise schema_version_error(db_path, version, action)
    except BaseException as err:
        con.close()
        if isinstance(err, duckdb.Error):
            raise _read_error(db_path, err, action) from err
        raise
    return con


ATTACHED = "run"
"""The name a read-only connection gives the run's file."""


def _use_attached(cursor: duckdb.DuckDBPyConnection) -> None:
    """A cursor starts in the in-memory catalog: point it at the attached file, when there is one."""
    try:
        cursor.execute(f"USE {ATTACHED}")
    except duckdb.Error:  # a connection opened some other way (a plain `duckdb.connect(path)`)
        pass


def _check_file(db_path: Path, action: str) -> None:
    """A regular file this process can read, or a `DatabaseError` that says what is there instead."""
    try:
        mode = os.stat(db_path).st_mode
    except FileNotFoundError:
        raise DatabaseError(
            f"`{db_path}` does not exist: build the run first ({_build_command(db_path)}).",
            path=db_path, problem=DatabaseError.MISSING,
        ) from None
    except OSError as err:
        raise _read_error(db_path, err, action) from err
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise DatabaseError(
            f"`{db_path}` is {kind}, not the run's database file, so it cannot be {action}. Move it aside "
            f"(`mv {db_path} {db_path}.moved`) and rebuild the database: {_build_command(db_path)}.",
            path=db_path, problem=DatabaseError.NOT_A_FILE,
        )
    try:
        with open(db_path, "rb") as handle:
            handle.read(1)
    except OSError as err:
        raise _read_error(db_path, err, action) from err


def _check_length(con: duckdb.DuckDBPyConnection, db_path: Path, action: str) -> None:
    """DuckDB writes whole blocks after a fixed header, so a file that ends inside a block, or holds fewer
    blocks than its header counts in use, lost its end (a copy that stopped, a disk that filled up)."""
    block_size, used_blocks = con.execute(
        "SELECT block_size, used_blocks FROM pragma_database_size() WHERE database_name = current_database()"
    ).fetchone()
    size = db_path.stat().st_size
    blocks, remainder = divmod(size - HEADER_BYTES, int(block_size))
    if remainder or blocks < int(used_blocks):
        raise DatabaseError(
            _damaged_message(
                db_path, f"it is cut short: {size:,} bytes, not the {HEADER_BYTES:,}-byte header and whole "
                f"{int(block_size):,}-byte blocks ({int(used_blocks):,} in use) DuckDB writes", action,
            ),
            path=db_path, problem=DatabaseError.DAMAGED,
        )


HEADER_BYTES = 3 * 4096
"""DuckDB's file header and its two database headers, before the first block."""


def _schema_version(con: duckdb.DuckDBPyConnection) -> int | None:
    if not has_table(con, "schema_info"):
        return None
    row = con.execute("SELECT schema_version FROM schema_info").fetchone()
    return None if row is None else int(row[0])


def _run_of(db_path: Path) -> Path:
    return Path(db_path).parent


def _build_command(db_path: Path) -> str:
    """The command that rebuilds the run's database from its other outputs, with the run's own profile."""
    run = _run_of(db_path)
    return f"`python -m precompute build --profile {run / 'profile.json'} --out {run}`"


def _damaged_message(db_path: Path, detail: str, action: str = "read") -> str:
    return (
        f"`{db_path}` is damaged and cannot be {action}: {detail}. Move it aside and rebuild it: "
        f"`mv {db_path} {db_path}.damaged`, then {_build_command(db_path)} (each trained SAE's report comes back "
        "from its folder and the feature index is rebuilt; stored steering results need `python -m precompute "
        "steer` again)."
    )


def schema_version_error(db_path: Path, version: int, action: str = "read") -> DatabaseError:
    """The file's schema version is not this code's: say which is older and what to run."""
    run = _run_of(db_path)
    if version < SCHEMA_VERSION:
        if version in MIGRATIONS:
            remedy = (
                "A stage that writes it brings it up to date, for example "
                f"`python -m precompute index --profile {run / 'profile.json'} --out {run} --force`."
            )
        else:
            remedy = (
                f"No migration reaches version {SCHEMA_VERSION} from it: move it aside "
                f"(`mv {db_path} {db_path}.v{version}`) and rebuild it with {_build_command(db_path)}."
            )
        age = "an older"
    else:
        age = "a newer"
        remedy = (
            f"Update this checkout (`git pull`) to read it, or move it aside (`mv {db_path} {db_path}.v{version}`) "
            f"and rebuild it with this code: {_build_command(db_path)}."
        )
    return DatabaseError(
        f"`{db_path}` has schema version {version}, written by {age} version of this code; this code "
        f"{'reads' if action == 'read' else 'writes'} version {SCHEMA_VERSION}, so it cannot be {action}. {remedy}",
        path=db_path, problem=DatabaseError.SCHEMA,
    )


_DAMAGE_WORDS = ("not a valid duckdb database", "could not read enough bytes", "corrupt", "checksum",
                 "failed to deserialize", "serialization", "invalid block", "out of range")
"""How DuckDB words a file whose bytes are not what it wrote."""


def _read_error(db_path: Path | None, err: BaseException, action: str = "read") -> DatabaseError:
    """`err`, a DuckDB or OS error of reading `db_path`, as the project's error."""
    where = db_path if db_path is not None else "The run's database"
    detail = f"{type(err).__name__}: {err}"
    if isinstance(err, DatabaseError):
        return err
    if is_out_of_space(err):
        return DatabaseError(out_of_space_message(err, str(where)), path=db_path, problem=DatabaseError.OUT_OF_SPACE)
    if isinstance(err, OSError):
        fix = f"`ls -l {where}` shows its owner, mode and where a link points; `chmod a+r {where}` lets every user read it"
        if db_path is not None:
            fix += f", or move it aside and rebuild it: {_build_command(db_path)}"
        return DatabaseError(
            f"`{where}` cannot be {action} by this user ({err.strerror or detail}). Check it: {fix}.",
            path=db_path, problem=DatabaseError.UNREADABLE,
        )
    text = str(err).lower()
    if "lock" in text and "conflicting" in text:
        return DatabaseError(
            f"`{where}` cannot be {action}: another process has it open for writing ({detail}). Wait for that "
            "process to finish (the stages write a copy, so this is another program), then reload.",
            path=db_path, problem=DatabaseError.UNREADABLE,
        )
    if isinstance(err, (duckdb.CatalogException, duckdb.BinderException)) and db_path is not None:
        return DatabaseError(
            f"`{db_path}` does not hold the tables of schema version {SCHEMA_VERSION} that this code reads ({detail}): "
            f"it was changed by hand or by other code. Move it aside (`mv {db_path} {db_path}.other`) and rebuild "
            f"it: {_build_command(db_path)}.",
            path=db_path, problem=DatabaseError.SCHEMA,
        )
    if db_path is None:
        return DatabaseError(f"The run's database cannot be {action}: it is damaged ({detail}).",
                             problem=DatabaseError.DAMAGED)
    if not any(words in text for words in _DAMAGE_WORDS):
        detail = f"DuckDB says {detail}"
    return DatabaseError(_damaged_message(db_path, detail, action), path=db_path, problem=DatabaseError.DAMAGED)


def connection_path(con: duckdb.DuckDBPyConnection) -> Path | None:
    """The file `con` reads, or None (in memory, or not answerable)."""
    try:
        row = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchone()
    except duckdb.Error:
        return None
    return Path(row[0]) if row and row[0] else None


@contextlib.contextmanager
def read_cursor(db: duckdb.DuckDBPyConnection | Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A cursor on `db` (a connection, or a path opened read-only for the block): the one way every read
    runs its SQL. Any DuckDB or OS error inside the block becomes a `DatabaseError` naming the file."""
    connection = db if isinstance(db, duckdb.DuckDBPyConnection) else None
    try:
        if connection is not None:
            cursor = connection.cursor()
            _use_attached(cursor)
            try:
                yield cursor
            finally:
                cursor.close()
            return
        con = open_read_only(Path(db))
        try:
            yield con
        finally:
            con.close()
    except (duckdb.Error, OSError) as err:
        raise _read_error(connection_path(connection) if connection is not None else Path(db), err) from err


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
