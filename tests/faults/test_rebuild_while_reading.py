"""Reading a run while `index --force` rewrites it: the app shows the old index or the new one, never an
error. The writer is paused at its checkpoints (explorer.fault_points) while the pages read, and then
run freely while a page is rerun as fast as it goes."""

from __future__ import annotations

import time

from explorer.runs import database_path
from explorer.feature_db import read_index_runs
from tests.faults.conftest import app_page, messages
from tests.faults.fault_runs import INDEX_FLAGS, RUN, STEERED_FEATURE, folder_hashes, run_args
from tests.faults.stage_runner import start_stage

PAGES = ("home", "features", "candidates")


def read_pages(runs_root, sae_id, monkeypatch) -> int:
    """Every page that reads the index, once: none may fail or err. Returns the tokens of the index Home
    lists (each rebuild below indexes another number of tokens, so old and new differ)."""
    n_tokens = None
    for name in PAGES:
        at = app_page(name, runs_root, monkeypatch, run=RUN, sae=sae_id, feature=STEERED_FEATURE)
        at.run()
        assert not at.exception and not at.error, (name, at.exception, messages(at))
        if name == "home":
            n_tokens = int(next(d.value for d in at.dataframe if "built_at" in d.value.columns)["n_tokens"].iloc[0])
    return n_tokens


def wait_for(path, process, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.is_alive(), "the stage ended before its checkpoint"
        assert time.monotonic() < deadline, f"no {path.name} after {timeout} s"
        time.sleep(0.02)


def index_force(run_dir, tokens: int) -> list[str]:
    return ["index", *run_args(run_dir, "--force", *INDEX_FLAGS, "--save-every", "0", "--tokens", str(tokens))]


def test_paused_mid_rebuild_the_pages_show_the_old_index_then_the_new_one(run_copy, sae_id, tmp_path, monkeypatch):
    old = int(read_index_runs(database_path(run_copy))["n_tokens"].iloc[0])
    assert read_pages(run_copy.parent, sae_id, monkeypatch) == old
    pause = tmp_path / "pause"
    pause.mkdir()
    # Mid-pass, and with the new file written beside the old one, just before it replaces it.
    for point, tokens in (("index:pass-done", 20_000), ("database:written", 30_000)):
        argv = index_force(run_copy, tokens)
        process = start_stage(argv, tmp_path / f"{point.replace(':', '_')}.log", pause_at=point, pause_dir=pause)
        wait_for(pause / f"{point}.reached", process)
        before = folder_hashes(run_copy)
        assert read_pages(run_copy.parent, sae_id, monkeypatch) == old, point
        assert folder_hashes(run_copy) == before  # reading touched nothing the writer had written
        (pause / f"{point}.go").touch()
        process.join(120)
        assert process.exitcode == 0, (tmp_path / f"{point.replace(':', '_')}.log").read_text()
        new = read_pages(run_copy.parent, sae_id, monkeypatch)
        assert new != old and abs(new - tokens) < 1_000, (point, old, new)
        old = new


def test_a_page_rerun_throughout_a_rebuild_never_errs(run_copy, sae_id, tmp_path, monkeypatch):
    old = int(read_index_runs(database_path(run_copy))["n_tokens"].iloc[0])
    process = start_stage(index_force(run_copy, 20_000), tmp_path / "index.log")
    seen = set()
    while process.is_alive():
        seen.add(read_pages(run_copy.parent, sae_id, monkeypatch))
    process.join()
    assert process.exitcode == 0, (tmp_path / "index.log").read_text()
    new = read_pages(run_copy.parent, sae_id, monkeypatch)
    assert new != old and seen <= {old, new}, (old, new, seen)
