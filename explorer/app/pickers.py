"""The sidebar's run and SAE pickers, kept in the URL (`?run=`, `?sae=`), and what a page needs before
it can draw anything: each `pick_..._or_stop` stops the page after saying what is missing."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import streamlit as st

from explorer import artifacts
from explorer.app.empty_state import render_empty_state
from explorer.app.index_cache import FeatureDB, load_index_run, open_feature_db, report_database_problem
from explorer.app.link_params import warn_bad_param
from explorer.app.run_cache import load_run_summary
from explorer.runs import RunSummary, find_runs, list_sae_ids, main_sae_id

RUN_PARAM = "run"
SAE_PARAM = "sae"
RUN_PICKER_KEY = "run_picker"
SAE_PICKER_KEY = "sae_picker"

T = TypeVar("T")


def render_run_picker(root: Path | None = None) -> Path | None:
    """A sidebar select box of the run folders under `root` (default: `artifacts.DEFAULT_RUNS_DIR`);
    the choice is kept in the URL (`?run=`)."""
    root = artifacts.DEFAULT_RUNS_DIR if root is None else root
    runs = find_runs(root)
    if not runs:
        return None
    names = [r.name for r in runs]
    wanted = st.query_params.get(RUN_PARAM)
    index = names.index(wanted) if wanted in names else (names.index("demo") if "demo" in names else 0)
    if wanted is not None and wanted not in names and RUN_PICKER_KEY not in st.session_state:
        warn_bad_param(RUN_PARAM, wanted, f"names no run under `{root}`", f"run `{names[index]}`")
    name = st.sidebar.selectbox("Run", names, index=index, key=RUN_PICKER_KEY)
    st.query_params[RUN_PARAM] = name
    return runs[names.index(name)]


def render_sae_picker(run_dir: Path) -> str | None:
    """A sidebar select box of the run's SAEs (kept in the URL as `?sae=`), the run's main SAE (at its
    profile's hook) chosen by default; None when it has none."""
    ids = list_sae_ids(run_dir)
    if not ids:
        st.info(f"This run has no SAE yet: `python -m precompute train-sae --out {run_dir}` trains one.")
        return None
    wanted = st.query_params.get(SAE_PARAM)
    default = main_sae_id(run_dir, sae_ids=ids)
    if wanted is not None and wanted not in ids and SAE_PICKER_KEY not in st.session_state:
        warn_bad_param(SAE_PARAM, wanted, "names no SAE of this run", f"SAE `{default}`")
    index = ids.index(wanted if wanted in ids else default)
    sae_id = st.sidebar.selectbox("SAE", ids, index=index, key=SAE_PICKER_KEY)
    st.query_params[SAE_PARAM] = sae_id
    return sae_id


def pick_run_or_stop() -> Path:
    """The run chosen in the sidebar; with no run at all, explain how to build one and stop the page.
    A damaged run database is said here, once, at the top of every page."""
    run_dir = render_run_picker()
    if run_dir is None:
        render_empty_state()
        st.stop()
    report_database_problem(run_dir)
    return run_dir


def stop_if_none(value: T | None) -> T:
    """`value`, or stop the page when it is None (whoever returned None has said why)."""
    if value is None:
        st.stop()
    return value


def pick_summary_or_stop() -> tuple[Path, RunSummary]:
    """The sidebar's run and its summary (profile, corpus, model); the page stops when either is missing."""
    run_dir = pick_run_or_stop()
    return run_dir, stop_if_none(load_run_summary(run_dir))


def pick_sae_or_stop() -> tuple[Path, str]:
    """The sidebar's run and SAE; the page stops (after saying why) when either is missing."""
    run_dir = pick_run_or_stop()
    return run_dir, stop_if_none(render_sae_picker(run_dir))


def pick_sae_with_summary_or_stop() -> tuple[Path, str, RunSummary]:
    """The sidebar's run and SAE and the run's summary (profile, model); the page stops when any is missing."""
    run_dir, sae_id = pick_sae_or_stop()
    return run_dir, sae_id, stop_if_none(load_run_summary(run_dir))


def pick_indexed_sae_or_stop() -> tuple[Path, str, FeatureDB, dict]:
    """The sidebar's run and SAE, the run's database and the SAE's index; the page stops (after saying
    why) when any of them is missing."""
    run_dir, sae_id = pick_sae_or_stop()
    db = open_feature_db(run_dir)
    return run_dir, sae_id, db, stop_if_none(load_index_run(db, sae_id) if db is not None else None)
