"""`explorer.database`: typed round trips, atomic and serialised writes, read-only readers."""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path

import duckdb
import pytest

from explorer.artifacts import DATABASE_FILE
from explorer.database import (
    DatabaseError,
    Provenance,
    SAETrainingReportRow,
    open_read_only,
    read_sae_ids,
    read_sae_training_curve,
    read_sae_training_report,
    read_sae_training_reports,
    read_schema_info,
    write_sae_training_report,
    write_transaction,
)
from explorer.runs import database_path
from explorer.sae_metrics import TrainingCurvePoint
from explorer.schema import SCHEMA_VERSION

PROVENANCE = Provenance(
    profile={"name": "demo", "n_ctx": 512}, package_versions={"duckdb": "2.0.1"}, corpus_hash="abc123"
)


def _row(sae_id: str = "blocks.1.hook_mlp_out-standard-1024", l0: float = 25.0) -> SAETrainingReportRow:
    return SAETrainingReportRow(
        sae_id=sae_id,
        hook_name="blocks.1.hook_mlp_out",
        architecture="standard",
        d_in=128,
        d_sae=1024,
        k=None,
        model_name="demo",
        source=f"saes/{sae_id}",
        source_kind="trained",
        training_tokens=768_000,
        train_seconds=58.3,
        n_tokens=35_553,
        n_sparsity_tokens=70_123,
        l0=l0,
        mse=15.57,
        explained_variance=0.845,
        frac_dead=0.001,
        frac_dense=0.077,
        dense_threshold=0.1,
        ce_loss_clean=0.546,
        ce_loss_spliced=0.562,
        ce_loss_zero_ablated=0.749,
        ce_loss_recovered=0.922,
        measured_at=datetime(2026, 1, 2, 3, 4, 5),
    )


# Out of order on purpose: the curve is stored and read by step.
CURVE = [
    TrainingCurvePoint(
        step=15, n_tokens=7680, loss=115.6, mse_loss=112.9, sparsity_loss=2.7, l0=626.7, explained_variance=0.1
    ),
    TrainingCurvePoint(
        step=1, n_tokens=512, loss=136.5, mse_loss=136.5, sparsity_loss=0.0, l0=510.7, explained_variance=-0.05
    ),
]


@pytest.fixture
def db(tmp_path) -> Path:
    return database_path(tmp_path)


def test_report_and_curve_round_trip(db):
    assert db.name == DATABASE_FILE
    write_sae_training_report(db, _row(), CURVE, PROVENANCE)
    assert read_sae_training_report(db, _row().sae_id) == _row()
    assert read_sae_training_reports(db) == [_row()]
    assert read_sae_training_curve(db, _row().sae_id) == sorted(CURVE, key=lambda p: p.step)
    assert read_sae_training_report(db, "nope") is None and read_sae_training_curve(db, "nope") == []
    info = read_schema_info(db)
    assert info.schema_version == SCHEMA_VERSION
    assert info.profile == PROVENANCE.profile and info.package_versions == PROVENANCE.package_versions
    assert info.corpus_hash == "abc123" and info.sae_ids == (_row().sae_id,)
    assert info.created_at <= info.updated_at


def test_several_saes_are_keyed_by_id_and_rewrites_replace(db):
    write_sae_training_report(db, _row("b-sae"), CURVE, PROVENANCE)
    first_created = read_schema_info(db).created_at
    write_sae_training_report(db, _row("a-sae"), [], PROVENANCE)
    write_sae_training_report(db, _row("b-sae", l0=9.0), CURVE[:1], PROVENANCE)
    assert read_sae_ids(db) == ["a-sae", "b-sae"]
    assert read_sae_training_report(db, "b-sae").l0 == 9.0
    assert [p.step for p in read_sae_training_curve(db, "b-sae")] == [15]
    info = read_schema_info(db)
    assert info.sae_ids == ("a-sae", "b-sae") and info.created_at == first_created


def test_another_stages_tables_survive_a_report_write(db):
    with write_transaction(db) as con:
        con.execute("CREATE TABLE feature_stats (sae_id VARCHAR, feature_id INTEGER, density DOUBLE)")
        con.execute("INSERT INTO feature_stats VALUES (?, ?, ?)", ["a-sae", 3, 0.01])
    write_sae_training_report(db, _row("a-sae"), CURVE, PROVENANCE)
    con = open_read_only(db)
    try:
        assert con.execute("SELECT feature_id, density FROM feature_stats").fetchall() == [(3, 0.01)]
    finally:
        con.close()


def test_a_failed_write_leaves_the_file_as_it_was(db):
    write_sae_training_report(db, _row(), CURVE, PROVENANCE)
    before = db.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        with write_transaction(db) as con:
            con.execute("DELETE FROM sae_training_report")
            raise RuntimeError("boom")
    assert db.read_bytes() == before
    assert read_sae_ids(db) == [_row().sae_id]
    assert sorted(p.name for p in db.parent.iterdir()) == [DATABASE_FILE, DATABASE_FILE + ".lock"]


def test_concurrent_writers_both_keep_their_rows(db):
    errors = []

    def write(sae_id: str) -> None:
        try:
            write_sae_training_report(db, _row(sae_id), CURVE, PROVENANCE)
        except Exception as err:  # surfaced by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(f"sae-{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert read_sae_ids(db) == [f"sae-{i}" for i in range(4)]


def test_readers_are_read_only_and_see_new_rows_after_reopening(db):
    write_sae_training_report(db, _row("a-sae"), CURVE, PROVENANCE)
    con = open_read_only(db)
    try:
        with pytest.raises(duckdb.Error, match="read-only"):
            con.execute("DELETE FROM sae_training_report")
        assert read_sae_ids(con) == ["a-sae"]
    finally:
        con.close()
    write_sae_training_report(db, _row("b-sae"), CURVE, PROVENANCE)
    con = open_read_only(db)
    try:
        assert read_sae_ids(con) == ["a-sae", "b-sae"]
    finally:
        con.close()


def test_a_reader_opened_after_a_write_sees_it_while_an_older_reader_is_open(db):
    """DuckDB shares one instance per path in a process: a plain reconnect while the old reader was open
    read the replaced file (the app, holding a connection per file version, kept showing the old index)."""
    write_sae_training_report(db, _row("a-sae"), CURVE, PROVENANCE)
    old = open_read_only(db)
    try:
        write_sae_training_report(db, _row("b-sae"), CURVE, PROVENANCE)
        assert read_sae_ids(db) == ["a-sae", "b-sae"]
        new = open_read_only(db)
        try:
            assert read_sae_ids(new) == ["a-sae", "b-sae"]
        finally:
            new.close()
        assert read_sae_ids(old) == ["a-sae"]  # the old reader still reads the file it opened
    finally:
        old.close()


def test_a_file_from_another_schema_version_is_refused(db):
    write_sae_training_report(db, _row(), CURVE, PROVENANCE)
    with write_transaction(db) as con:
        con.execute("UPDATE schema_info SET schema_version = ?", [SCHEMA_VERSION + 1])
    with pytest.raises(DatabaseError, match="schema version"):
        write_sae_training_report(db, _row(), CURVE, PROVENANCE)


def test_a_version_2_file_gains_the_sparsity_token_count_when_written(db):
    """Version 2 measured dead features on the report's own tokens: the migration says so."""
    write_sae_training_report(db, _row("old-sae"), CURVE, PROVENANCE)
    with write_transaction(db) as con:  # what a version-2 writer left
        con.execute("ALTER TABLE sae_training_report DROP COLUMN n_sparsity_tokens")
        con.execute("UPDATE schema_info SET schema_version = 2")
    write_sae_training_report(db, _row("new-sae"), CURVE, PROVENANCE)
    assert read_sae_training_report(db, "old-sae").n_sparsity_tokens == 35_553  # its n_tokens
    assert read_sae_training_report(db, "new-sae").n_sparsity_tokens == 70_123
    assert read_schema_info(db).schema_version == SCHEMA_VERSION


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DatabaseError, match="does not exist"):
        open_read_only(tmp_path / DATABASE_FILE)
    with pytest.raises(DatabaseError, match="does not exist"):
        read_sae_ids(tmp_path / DATABASE_FILE)


def test_a_version_3_file_is_read_as_it_is_and_marked_4_when_written(db):
    """Version 4 only adds the injection tables (created by their first write): a version-3 file reads."""
    write_sae_training_report(db, _row("old-sae"), CURVE, PROVENANCE)
    with write_transaction(db) as con:  # what a version-3 writer left
        con.execute("UPDATE schema_info SET schema_version = 3")
    assert read_schema_info(db).schema_version == 3
    assert read_sae_ids(db) == ["old-sae"]
    write_sae_training_report(db, _row("new-sae"), CURVE, PROVENANCE)
    assert read_schema_info(db).schema_version == SCHEMA_VERSION == 4
