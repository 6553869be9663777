"""Fixtures of the fault-injection suite: the miniature run (built once per session by the real stages),
a fresh copy of it per test, and the app's pages under Streamlit's AppTest."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from explorer.runs import list_sae_ids
from tests.faults.fault_runs import RUN, build_fault_run, copy_run
from tests.hub_fixtures import mini_qwen2_dir  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[2]
PAGES = {
    "home": REPO / "app_pages" / "home.py",
    "corpus": REPO / "app_pages" / "corpus.py",
    "live": REPO / "app_pages" / "live.py",
    "features": REPO / "app_pages" / "features.py",
    "candidates": REPO / "app_pages" / "candidates.py",
    "steering": REPO / "app_pages" / "steering.py",
}


@pytest.fixture(scope="session")
def built_run(tmp_path_factory, mini_qwen2_dir) -> Path:  # noqa: F811
    """The fault run, built once; tests break copies of it (`run_copy`), never this folder."""
    run_dir = tmp_path_factory.mktemp("fault-run-source") / RUN
    build_fault_run(run_dir, mini_qwen2_dir)
    return run_dir


@pytest.fixture(scope="session")
def sae_id(built_run) -> str:
    return list_sae_ids(built_run)[0]


@pytest.fixture
def run_copy(built_run, tmp_path) -> Path:
    """A fresh copy of the fault run under `tmp_path/runs/`."""
    return copy_run(built_run, tmp_path / "runs")


def app_page(name: str, runs_root: Path, monkeypatch, **params) -> AppTest:
    """The page `name` of the app on the runs under `runs_root`, opened with the link's `params`."""
    monkeypatch.setenv("EXPLORER_RUNS_DIR", str(runs_root))
    import explorer.artifacts

    importlib.reload(explorer.artifacts)  # the pickers read DEFAULT_RUNS_DIR when they run
    at = AppTest.from_file(str(PAGES[name]), default_timeout=120)
    for key, value in params.items():
        at.query_params[key] = str(value)
    return at


def messages(at: AppTest) -> list[str]:
    """Every error, warning and info the page shows, in order."""
    return [m.value for m in [*at.error, *at.warning, *at.info]]
