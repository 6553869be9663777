"""Streamlit caches and rendering helpers: the one module of `explorer` that imports Streamlit."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from explorer import artifacts
from explorer.html import ERROR_STEP_COLOUR, GROUP_COLOURS, Mark, highlight_html, legend_html
from explorer.runs import RunFolderError, RunSummary, find_runs, read_documents, read_error_steps, read_phrases, read_run_summary

RUN_PARAM = "run"


def render_run_picker(root: Path = artifacts.DEFAULT_RUNS_DIR) -> Path | None:
    """A sidebar select box of the run folders under `root`; the choice is kept in the URL (`?run=`)."""
    runs = find_runs(root)
    if not runs:
        return None
    names = [r.name for r in runs]
    wanted = st.query_params.get(RUN_PARAM)
    index = names.index(wanted) if wanted in names else (names.index("demo") if "demo" in names else 0)
    name = st.sidebar.selectbox("Run", names, index=index, key="run_picker")
    st.query_params[RUN_PARAM] = name
    return runs[names.index(name)]


def pick_run_or_stop() -> Path:
    """The run chosen in the sidebar; with no run at all, explain how to build one and stop the page."""
    run_dir = render_run_picker()
    if run_dir is None:
        render_empty_state()
        st.stop()
    return run_dir


def render_empty_state() -> None:
    st.info(
        "No run folder was found under `runs/`. Build the embedded demo (about 4 minutes on 2 CPU cores) with\n\n"
        "```\nmake demo-data\n```\n\nor a run of your own with\n\n"
        "```\npython -m precompute build --profile demo --dataset my_traces.json\n```\n\n"
        "then reload this page."
    )


@st.cache_data(show_spinner=False)
def cached_run_summary(run_dir: str, mtime: float) -> RunSummary:
    return read_run_summary(Path(run_dir))


def load_run_summary(run_dir: Path) -> RunSummary | None:
    """The run's summary, or None after showing the error (never a traceback)."""
    try:
        mtime = (run_dir / artifacts.PROFILE_FILE).stat().st_mtime
        return cached_run_summary(str(run_dir), mtime)
    except (RunFolderError, OSError) as err:
        st.error(str(err))
        return None


def render_loss_curve(train_report: dict) -> None:
    steps, losses = zip(*train_report["loss_curve"]) if train_report.get("loss_curve") else ((), ())
    fig = go.Figure(go.Scatter(x=list(steps), y=list(losses), mode="lines", name="train loss"))
    fig.update_layout(xaxis_title="step", yaxis_title="cross-entropy (nats/token)", height=300, margin=dict(t=20, b=40))
    st.plotly_chart(fig, width="stretch")


@st.cache_data(show_spinner=False)
def cached_documents(run_dir: str, mtime: float) -> pd.DataFrame:
    columns = ["doc_id", "has_backtracking", "has_interjection", "n_phrases", "is_correct", "problem_type", "n_chars"]
    return read_documents(Path(run_dir), columns=columns)


def load_documents(run_dir: Path) -> pd.DataFrame | None:
    try:
        mtime = (run_dir / artifacts.CORPUS_DIR / artifacts.STAGE_MANIFEST).stat().st_mtime
        return cached_documents(str(run_dir), mtime)
    except (RunFolderError, OSError) as err:
        st.error(f"{err}")
        return None


def render_labelled_trace(run_dir: Path, doc_id: str) -> None:
    """One trace with its labelled phrases (and synthetic wrong steps) marked."""
    documents = read_documents(run_dir, columns=["doc_id", "text"])
    match = documents[documents["doc_id"] == doc_id]
    if match.empty:
        st.warning(f"No document {doc_id!r} in this run.")
        return
    text = match["text"].iloc[0]
    phrases = list(read_phrases(run_dir, doc_id).itertuples())
    errors = read_error_steps(run_dir, doc_id)
    wrong_steps = [Mark(int(e.start), int(e.end), ERROR_STEP_COLOUR, "wrong step, corrected later") for e in errors.itertuples()]
    render_phrases(text, phrases, wrong_steps)


def render_phrases(text: str, phrases, extra_marks: list[Mark] = ()) -> None:
    """`text` with its labelled phrases (anything with start, end, group, phrase) marked, and a legend."""
    marks = [Mark(int(p.start), int(p.end), GROUP_COLOURS[p.group], f"{p.group}: {p.phrase}") for p in phrases]
    st.html(legend_html())
    st.html(highlight_html(text, [*marks, *extra_marks]))


def load_sae_reports(run_dir: Path) -> pd.DataFrame | None:
    """The run's SAE training reports as a table (None when the run has no database yet)."""
    from explorer.database import DatabaseError, database_path, read_sae_training_reports

    path = database_path(run_dir)
    if not path.is_file():
        return None
    try:
        rows = read_sae_training_reports(path)
    except DatabaseError as err:
        st.error(str(err))
        return None
    return pd.DataFrame(rows, columns=rows[0]._fields) if rows else None


def render_sae_training_curve(run_dir: Path, sae_id: str) -> None:
    from explorer.database import database_path, read_sae_training_curve

    curve = read_sae_training_curve(database_path(run_dir), sae_id)
    if not curve:
        st.caption("No training curve (this SAE was trained elsewhere).")
        return
    steps = [p.step for p in curve]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=steps, y=[p.loss for p in curve], name="loss", mode="lines"))
    fig.add_trace(go.Scatter(x=steps, y=[p.l0 for p in curve], name="L0", mode="lines", yaxis="y2"))
    fig.update_layout(
        xaxis_title="step",
        yaxis=dict(title="loss"),
        yaxis2=dict(title="L0", overlaying="y", side="right"),
        height=300,
        margin=dict(t=20, b=40),
    )
    st.plotly_chart(fig, width="stretch")


@st.cache_resource(show_spinner="Loading the model…")
def cached_model(model_source: str, n_ctx: int):
    """One model per process and source (`st.cache_resource`): every session shares it."""
    from explorer.model_loading import load_model

    return load_model(model_source, device="auto", n_ctx=n_ctx)


@st.cache_resource(show_spinner="Loading the SAE…")
def cached_sae(sae_dir: str, device: str):
    from explorer.sae_loading import load_sae

    return load_sae(sae_dir, device=device)


def load_model_and_sae(run_dir: Path, profile: dict, sae_id: str):
    """The run's model and one of its SAEs, checked against each other; None after showing the error."""
    from explorer.errors import user_facing_errors
    from explorer.runs import run_model_source
    from explorer.sae_loading import check_sae_fits_model

    try:
        model = cached_model(run_model_source(run_dir, profile), int(profile["n_ctx"]))
        loaded = cached_sae(str(run_dir / artifacts.SAES_DIR / sae_id), str(model.cfg.device))
        hook_name = check_sae_fits_model(loaded.sae, model, loaded.hook_name)
    except user_facing_errors() as err:
        st.error(str(err))
        return None
    return model, loaded.sae, hook_name


def render_sae_picker(run_dir: Path) -> str | None:
    """A sidebar select box of the run's SAEs (kept in the URL as `?sae=`); None when it has none."""
    from explorer.runs import list_sae_ids

    ids = list_sae_ids(run_dir)
    if not ids:
        st.info(f"This run has no SAE yet: `python -m precompute train-sae --out {run_dir}` trains one.")
        return None
    wanted = st.query_params.get("sae")
    sae_id = st.sidebar.selectbox("SAE", ids, index=ids.index(wanted) if wanted in ids else 0, key="sae_picker")
    st.query_params["sae"] = sae_id
    return sae_id


def read_document_text(run_dir: Path, doc_id: str) -> str:
    documents = read_documents(run_dir, columns=["doc_id", "text"])
    return str(documents.loc[documents["doc_id"] == doc_id, "text"].iloc[0])
