"""The Home page's sections: the run, its corpus, the demo model, the SAEs, the feature index and a
guide to the other pages. The run's profile and reports are read as the stages wrote them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from explorer.app.index_cache import (
    database_problem,
    load_index_runs,
    load_sae_reports,
    load_sae_training_curve,
    open_feature_db,
)
from explorer.config import Profile
from explorer.runs import RunSummary, main_sae_id

SAE_COLUMNS = ["sae_id", "hook_name", "architecture", "d_sae", "l0", "mse", "explained_variance", "frac_dead",
               "frac_dense", "ce_loss_recovered", "n_tokens", "n_sparsity_tokens"]
INDEX_COLUMNS = ["sae_id", "d_sae", "n_tokens", "n_documents", "n_windows", "top_k", "device", "seconds",
                 "tokens_per_second", "built_at"]
PAGE_GUIDE = (
    "- **Corpus**: read any trace with its labelled backtracking phrases marked.\n"
    "- **Live**: type or paste a chain of thought and see each SAE feature's activation on each token.\n"
    "- **Features**: find a feature (by id, by a token it promotes or fires on, or by a text) and read its card: "
    "examples, histogram, logit lens, neighbours and backtracking evidence.\n"
    "- **Candidates**: features ranked by a backtracking score, with their lead-lag profiles.\n"
    "- **Steering**: add or clamp a feature while the model generates, and count how often it backtracks."
)


def run_facts(run_dir: Path, profile: Profile) -> str:
    """The run's folder, profile, model, hook and corpus source, as a Markdown list."""
    return (
        f"- **Folder:** `{run_dir}`\n- **Profile:** `{profile.name}`\n- **Model:** `{profile.model}`\n"
        f"- **Hook:** `{profile.hook_name}`\n- **Corpus:** `{profile.corpus.source}`"
    )


def corpus_facts(summary: RunSummary) -> str:
    """The corpus's counts (the corpus stage's summary), as a Markdown list."""
    corpus = summary.corpus_summary
    built = (summary.corpus_manifest or {}).get("finished_at", "?")
    return (
        f"- **Traces:** {corpus['n_documents']:,} (built {built})\n"
        f"- **With backtracking** (notebook's six groups): {corpus['n_with_backtracking']:,}\n"
        f"- **With an interjection** (Wait, Hmm, ...): {corpus['n_with_interjection']:,}"
    )


def model_facts(report: dict) -> str:
    """The demo model's size, training time and losses (train-lm's report), as a sentence."""
    return (
        f"{report['n_params']:,} parameters, {report['steps']:,} steps in {report['seconds']:.0f} s. "
        f"Final train loss {report['final_train_loss']:.3f}, held-out loss {report['heldout_loss']:.3f} nats/token."
    )


def render_run_and_corpus(run_dir: Path, summary: RunSummary) -> None:
    left, right = st.columns(2)
    with left:
        st.subheader("Run")
        st.markdown(run_facts(run_dir, summary.profile))
    with right:
        st.subheader("Corpus")
        if summary.corpus_summary is None:
            st.warning("The corpus stage has not run: `python -m precompute corpus`.")
        else:
            st.markdown(corpus_facts(summary))
            groups = summary.corpus_summary["phrases_per_group"]
            st.dataframe({"group": list(groups), "phrases": list(groups.values())}, hide_index=True)


def render_demo_model(summary: RunSummary) -> None:
    """The demo model's report, loss curve and a greedy sample (nothing for a run of a hub model)."""
    report = summary.train_report
    if report is None:
        return
    st.subheader("Demo model")
    st.markdown(model_facts(report))
    steps, losses = zip(*report["loss_curve"]) if report.get("loss_curve") else ((), ())
    fig = go.Figure(go.Scatter(x=list(steps), y=list(losses), mode="lines", name="train loss"))
    fig.update_layout(xaxis_title="step", yaxis_title="cross-entropy (nats/token)", height=300, margin=dict(t=20, b=40))
    st.plotly_chart(fig, width="stretch")
    with st.expander("Greedy sample from the demo model"):
        st.code(report["sample_text"], language=None)


def sae_reports_table(run_dir: Path) -> pd.DataFrame | None:
    """The run's SAE training reports as a table (None when the run has no database yet, or a damaged one)."""
    rows = load_sae_reports(run_dir)
    return pd.DataFrame(rows, columns=rows[0]._fields) if rows else None


def render_sae_training_curve(run_dir: Path, sae_id: str) -> None:
    curve = load_sae_training_curve(run_dir, sae_id)
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


def render_saes(run_dir: Path) -> None:
    """The SAEs' reports measured on held-out tokens, and one SAE's training curve."""
    saes = sae_reports_table(run_dir)
    if saes is None:
        return
    st.subheader("SAEs")
    st.caption(
        "Measured on held-out tokens: L0 (active features per token), explained variance, dead and dense "
        "features, and CE loss recovered (1 = splicing the SAE in costs nothing, 0 = as bad as zero-ablating the hook)."
    )
    st.dataframe(saes[SAE_COLUMNS], hide_index=True)
    ids = saes["sae_id"].tolist()
    sae_id = st.selectbox("Training curve of", ids, index=ids.index(main_sae_id(run_dir, sae_ids=ids)), key="curve_sae")
    render_sae_training_curve(run_dir, sae_id)


def render_index_runs(run_dir: Path) -> None:
    """What each SAE's index pass covered, or how to build the index (nothing more when the database is
    damaged: the page has said so at the top)."""
    if database_problem(run_dir) is not None:
        return
    st.subheader("Feature index")
    db = open_feature_db(run_dir, quiet=True)
    index_runs = load_index_runs(db) if db is not None else pd.DataFrame()
    if index_runs is None:  # a read that found damage, and said so
        return
    if index_runs.empty:
        st.info(f"No feature index yet: build it with `python -m precompute index --out {run_dir}` (or `make demo-data`).")
        return
    st.caption(
        "Every feature of each SAE, indexed in one streaming pass: top examples, quantile samples, histograms, "
        "logit lens, nearest features and backtracking scores (docs/schema.md)."
    )
    st.dataframe(index_runs[INDEX_COLUMNS], hide_index=True)


def render_page_guide() -> None:
    st.subheader("Pages")
    st.markdown(PAGE_GUIDE)
