"""A full disk: a stage writes into less space than it needs (a file-size limit, as `ulimit -f` sets,
so a write past it fails with EFBIG as a full disk fails with ENOSPC). It fails with a message that says
so, without a traceback, and leaves the previous output as it was."""

from __future__ import annotations

import pytest

from explorer.database import read_sae_training_reports
from explorer.runs import database_path
from explorer.feature_db import read_index_runs
from explorer.runs import read_document_list
from explorer.steering_store import read_steering_runs
from tests.faults.fault_runs import INDEX_FLAGS, STEER_FLAGS, STEERED_FEATURE, run_args, visible_hashes
from tests.faults.stage_runner import run_stage

KIB = 1024


def command(stage: str, run_dir, sae_id: str) -> list[str]:
    return {
        "corpus": ["corpus", *run_args(run_dir, "--n-traces", "160")],
        "train-sae": ["train-sae", *run_args(run_dir, "--force")],
        "index": ["index", *run_args(run_dir, "--force", *INDEX_FLAGS, "--save-every", "0")],
        "steer": ["steer", "--out", str(run_dir), "--sae", sae_id, *STEER_FLAGS, "--force"],
    }[stage]


# (stage, the file-size limit given the database's size, what runs out): each limit lets the stage reach
# its own write and stops that write.
CASES = [
    ("corpus", lambda db_size: 16 * KIB, "documents.parquet"),
    ("train-sae", lambda db_size: 16 * KIB, "the SAE's weights"),
    ("index", lambda db_size: db_size + 64 * KIB, "DuckDB's write of the new index"),
    ("steer", lambda db_size: db_size // 2, "the copy of the database"),
]


@pytest.mark.parametrize("stage, limit, what", CASES, ids=[c[0] for c in CASES])
def test_a_stage_out_of_space_says_so_and_keeps_the_previous_output(stage, limit, what, run_copy, sae_id, tmp_path):
    db = database_path(run_copy)
    before = visible_hashes(run_copy, leave_out=("profile.json",))  # the command saves its (small) profile first
    result = run_stage(command(stage, run_copy, sae_id), tmp_path / "out.log", file_size_limit=limit(db.stat().st_size))
    assert result.exitcode == 2, result.output
    assert "Traceback" not in result.output, result.output
    assert "error: Ran out of space while writing" in result.output and "ulimit -f" in result.output, result.output
    assert "previous output is as it was" in result.output
    assert visible_hashes(run_copy, leave_out=("profile.json",)) == before, what
    assert not [p.name for p in run_copy.rglob(".*")], "a temporary was left behind"
    assert len(read_document_list(run_copy)) == 150
    assert read_index_runs(db)["sae_id"].tolist() == [sae_id]
    assert [r.sae_id for r in read_sae_training_reports(db)] == [sae_id]
    assert len(read_steering_runs(db, sae_id, STEERED_FEATURE)) == 1
