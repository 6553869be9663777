"""A crash during a write: each stage that writes (corpus, train-sae, index, merge, steer) is killed with
SIGKILL at its named checkpoints (explorer.fault_points: no cleanup runs, as in a power cut or an OOM
kill). After each kill the previous output is intact, byte for byte, and readable; running the stage
again completes, and an index resumes from the progress it saved."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pandas as pd
import pytest

from explorer import artifacts
from explorer.database import read_sae_training_reports
from explorer.runs import database_path
from explorer.feature_db import read_feature_card, read_index_runs
from explorer.runs import read_document_list
from explorer.sae_loading import load_sae
from explorer.steering_store import read_steering_runs
from tests.faults.fault_runs import INDEX_FLAGS, STEER_FLAGS, STEERED_FEATURE, run_args, visible_hashes
from precompute import atomic
from tests.faults.stage_runner import run_stage


def killed(argv: list[str], point: str, tmp_path: Path) -> str:
    result = run_stage(argv, tmp_path / f"{point.replace(':', '_').replace('#', '_')}.log", kill_at=point)
    assert result.killed, f"the stage was not killed at {point} (exit {result.exitcode}):\n{result.output}"
    return result.output


def completed(argv: list[str], tmp_path: Path, name: str = "rerun") -> str:
    result = run_stage(argv, tmp_path / f"{name}.log")
    assert result.exitcode == 0, result.output
    return result.output


def test_a_killed_corpus_stage_leaves_the_previous_corpus(run_copy, tmp_path):
    argv = ["corpus", *run_args(run_copy, "--n-traces", "160")]  # a new corpus, so old and new differ
    before = visible_hashes(run_copy, leave_out=("profile.json",))  # the command saves its profile first
    for point in ("corpus:documents-written", "atomic-dir:written"):
        killed(argv, point, tmp_path)
        assert visible_hashes(run_copy, leave_out=("profile.json",)) == before, point
        assert len(read_document_list(run_copy)) == 150
    killed(argv, "atomic-dir:swapped", tmp_path)  # after the swap: the new corpus is whole
    assert len(read_document_list(run_copy)) == 160
    assert "up to date" in completed(argv, tmp_path)
    killed([*argv[:-2], "--n-traces", "150"], "atomic-dir:swapped", tmp_path)  # and back, leaving the old aside
    completed(["corpus", *run_args(run_copy, "--n-traces", "170")], tmp_path, "new-corpus")
    assert len(read_document_list(run_copy)) == 170
    assert not [p.name for p in run_copy.iterdir() if p.name.startswith(".corpus.")]  # the leftovers went


def test_a_killed_train_sae_stage_leaves_the_previous_sae_and_its_report(run_copy, sae_id, tmp_path):
    argv = ["train-sae", *run_args(run_copy, "--force")]
    sae_folder = run_copy / artifacts.SAES_DIR / sae_id
    db = database_path(run_copy)
    before, report = visible_hashes(run_copy), read_sae_training_reports(db)
    for point in ("train-sae:trained", "atomic-dir:written"):  # before the new folder is swapped in
        killed(argv, point, tmp_path)
        assert visible_hashes(run_copy) == before, point
        assert read_sae_training_reports(db) == report
        load_sae(sae_folder, device="cpu")
    for point in ("train-sae:folder-written", "database:copied", "database:written"):  # after it
        killed(argv, point, tmp_path)
        assert visible_hashes(run_copy)["explorer.duckdb"] == before["explorer.duckdb"], point
        assert read_sae_training_reports(db) == report
        load_sae(sae_folder, device="cpu")  # the new folder, whole
    completed(argv, tmp_path)
    (new_report,) = read_sae_training_reports(db)
    assert new_report.sae_id == sae_id and new_report.measured_at >= report[0].measured_at
    assert not [p.name for p in sae_folder.parent.iterdir() if p.name.startswith(".")]


def test_a_killed_index_leaves_the_previous_index_and_resumes_from_its_progress(run_copy, sae_id, tmp_path):
    argv = ["index", *run_args(run_copy, "--force", *INDEX_FLAGS, "--save-every", "0.00001")]
    db = database_path(run_copy)
    before, index_before = visible_hashes(run_copy), read_index_runs(db)
    card = read_feature_card(db, sae_id, STEERED_FEATURE)
    outputs = []
    for point in ("index:progress-saved#3", "index:pass-done", "database:copied", "database:written"):
        outputs.append(killed(argv, point, tmp_path))
        assert visible_hashes(run_copy) == before, point
        assert read_index_runs(db).equals(index_before)
        assert read_feature_card(db, sae_id, STEERED_FEATURE).top_examples.equals(card.top_examples)
    assert "resuming from" in outputs[1]  # the second run took up the first one's progress
    output = completed(argv, tmp_path)
    assert "resuming from" in output
    after = read_index_runs(db)
    assert after["n_tokens"].tolist() == index_before["n_tokens"].tolist()
    assert after["built_at"].iloc[0] > index_before["built_at"].iloc[0]
    resumed = read_feature_card(db, sae_id, STEERED_FEATURE)  # as if it had never been killed
    assert pd.Series(resumed.stats).equals(pd.Series(card.stats)) and resumed.top_examples.equals(card.top_examples)
    assert not list((run_copy / "index_partials").rglob("*.pt"))  # progress removed once written
    assert not [p.name for p in run_copy.iterdir() if p.name.startswith(".explorer.duckdb")]


def test_a_killed_merge_leaves_the_previous_index(run_copy, sae_id, tmp_path):
    for shard in ("0/2", "1/2"):
        completed(["index", *run_args(run_copy, *INDEX_FLAGS, "--shard", shard)], tmp_path, f"shard-{shard[0]}")
    argv = ["merge", *run_args(run_copy, "--sae", sae_id)]
    db = database_path(run_copy)
    before, index_before = visible_hashes(run_copy), read_index_runs(db)
    for point in ("merge:merged", "database:copied", "database:written"):
        killed(argv, point, tmp_path)
        assert visible_hashes(run_copy) == before, point
        assert read_index_runs(db).equals(index_before)
    completed(argv, tmp_path)
    assert read_index_runs(db)["n_shards"].tolist() == [2]


def test_a_killed_steer_leaves_the_stored_results(run_copy, sae_id, tmp_path):
    argv = ["steer", "--out", str(run_copy), "--sae", sae_id, *STEER_FLAGS, "--force"]
    db = database_path(run_copy)
    before, runs_before = visible_hashes(run_copy), read_steering_runs(db, sae_id, STEERED_FEATURE)
    for point in ("steer:generated", "database:copied", "database:written"):
        killed(argv, point, tmp_path)
        assert visible_hashes(run_copy) == before, point
        assert read_steering_runs(db, sae_id, STEERED_FEATURE) == runs_before
    completed(argv, tmp_path)
    (run,) = read_steering_runs(db, sae_id, STEERED_FEATURE)
    assert run.run_id == runs_before[0].run_id and run.created_at >= runs_before[0].created_at


def _killed_between_renames(target: Path, *, exchange_works: bool) -> int:
    """Replace `target` with `atomic_dir` in a forked child that is killed at its second `os.rename`,
    the moment the old two-rename swap had moved the old folder aside and not yet put the new one in
    place. Returns the child's exit status."""
    pid = os.fork()
    if pid == 0:  # the child: file operations only, then SIGKILL
        try:
            renames = []

            def rename(src, dst):
                renames.append(dst)
                if len(renames) == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
                real_rename(src, dst)

            real_rename = os.rename
            os.rename = rename
            if not exchange_works:
                atomic.exchange = lambda a, b: False
            with atomic.atomic_dir(target) as tmp:
                (tmp / "data.txt").write_text("new")
        finally:
            os._exit(0)
    return os.waitpid(pid, 0)[1]


def test_a_folder_is_never_missing_while_it_is_replaced(tmp_path):
    """The swap of a stage's folder is one step (renameat2's exchange): a kill at any moment leaves the
    old folder or the new one in place, never none."""
    target = tmp_path / "corpus"
    target.mkdir()
    (target / "data.txt").write_text("old")
    _killed_between_renames(target, exchange_works=True)
    assert (target / "data.txt").read_text() in ("old", "new")


def test_without_an_exchange_the_next_write_puts_the_old_folder_back(tmp_path):
    """Where the system cannot exchange two paths, a kill between the two renames leaves the old folder
    aside; the next write of the output puts it back before it starts, and a failed write keeps it."""
    target = tmp_path / "corpus"
    target.mkdir()
    (target / "data.txt").write_text("old")
    status = _killed_between_renames(target, exchange_works=False)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert not target.exists()
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(target):
            raise RuntimeError("the next write fails too")
    assert (target / "data.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["corpus"]
