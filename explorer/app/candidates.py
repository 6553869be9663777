"""The Candidates table with readable column labels and a one-line help per column (what the number
means: docs/schema.md, feature_backtracking_scores), its lead-lag grid, and the top candidate the
Features page opens on."""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import streamlit as st

from explorer.app.index_cache import FeatureDB, load_best_features_per_label, load_candidates, load_lead_lag_profiles
from explorer.feature_db import LABEL_METRICS
from explorer.feature_views import (
    INJECTION_COLUMN,
    LEAD_WINDOW,
    injection_verdict_help,
    lead_lag_grid,
    ranking_choices,
    split_ranking,
)

DEFAULT_RANKING = "auroc_notebook"
"""What the Candidates page ranks by until another score is chosen (the first of `ranking_choices`)."""
DENSITY_CHOICES = (0.0, 1e-5, 1e-4, 1e-3, 1e-2)
DEFAULT_MIN_DENSITY = 1e-4
"""The Candidates page's default minimum density: rarer features are left out."""

CANDIDATE_COLUMNS: dict[str, tuple[str, str]] = {
    "feature_id": ("feature", "The feature's index in the SAE."),
    "causal_effect": (
        "steering effect",
        "Backtracking phrases per 1,000 generated tokens, steered minus baseline, with its 95% CI, at the "
        "largest positive coefficient of the latest stored `add` run.",
    ),
    "steering_verdict": ("steering verdict", "Whether adding the feature raises or lowers backtracking (from that CI)."),
    INJECTION_COLUMN: ("token injection", injection_verdict_help()),
    "auroc_notebook": (
        "AUROC (six groups)",
        "Token-level AUROC: tokens inside a phrase of the notebook's six backtracking groups against all other "
        "tokens. 0.5 = chance, 1 = it tells them apart perfectly.",
    ),
    "auroc": ("AUROC (any phrase)", "The same AUROC with every labelled phrase, interjections (Wait, Hmm, ...) included."),
    "reason_score": (
        "ReasonScore",
        "Its share of all features' activation on reasoning words, weighted by how evenly it spreads over "
        "them, minus its share elsewhere (Galichin et al.). Higher = more specific to reasoning words.",
    ),
    "leads_score": (
        "leads (SDs)",
        f"Mean activation over offsets {LEAD_WINDOW[0]} to {LEAD_WINDOW[1]} before a phrase's first token, minus "
        "the feature's mean over all tokens, in its standard deviations. Above 0 = it rises before backtracking.",
    ),
    "lead_peak_offset": (
        "peak offset",
        "Token offset from a phrase's first token where its mean activation peaks (negative = before the phrase).",
    ),
    "doc_window_max_delta": (
        "window max: with − without",
        "Mean over context windows of the feature's largest activation in the window, in traces with "
        "backtracking minus traces without. Above 0 = it peaks higher in traces that backtrack.",
    ),
    "within_token_auroc": (
        "within-token AUROC",
        "AUROC between phrase and non-phrase uses of the same tokens. 0.5 = no better than the token itself.",
    ),
    "margin_over_identity": (
        "margin over token identity",
        "AUROC (six groups) minus the best AUROC any function of the token id alone reaches. At or below 0 = "
        "the token alone explains it as well.",
    ),
    "is_token_detector": (
        "token detector",
        "Ticked when the token explains it: margin over token identity ≤ 0 and within-token AUROC ≤ 0.6 "
        "(or undefined).",
    ),
    "promotes_wait": ("promotes Wait", "Ticked when a Wait-like token is among its top logit-lens tokens."),
    "density": ("density", "Share of the indexed (valid) tokens where the feature fires (activation above 0)."),
    "max_activation": ("max activation", "Its largest activation on the indexed tokens."),
    "top_logit_tokens": ("promotes (logit lens)", "The 5 tokens its decoder direction raises most, first the most."),
}
"""Label and help of each column of `explorer.feature_views.candidates_table`, beside the links and score."""


def candidates_column_config(ranking_label: str) -> dict[str, st.column_config.Column]:
    """`st.dataframe`'s column_config for the Candidates table ranked by `ranking_label`."""
    config = {name: st.column_config.Column(label, help=text) for name, (label, text) in CANDIDATE_COLUMNS.items()}
    config["card"] = st.column_config.LinkColumn("card", display_text="open card", help="The feature's card (Features page).")
    config["steer"] = st.column_config.LinkColumn(
        "steer", display_text="steer it", help="The Steering page with this feature chosen."
    )
    config["score"] = st.column_config.NumberColumn("score", format="%.4f", help=f"What the table is ranked by: {ranking_label}.")
    return config


def load_filtered_candidates(db: FeatureDB, sae_id: str, score: str, group: str | None, *, min_density: float,
                             hide_token_detectors: bool, limit: int, hidden: Sequence[int] = ()) -> pd.DataFrame | None:
    """`load_candidates` without the `hidden` features (the token-driven ones), still up to `limit` rows:
    it reads `limit` plus as many rows as are hidden, then drops them."""
    hidden = set(int(f) for f in hidden)
    ranked = load_candidates(db, sae_id, score, group, min_density=min_density,
                             hide_token_detectors=hide_token_detectors, limit=limit + len(hidden))
    if ranked is None or not hidden:
        return ranked
    return ranked[~ranked["feature_id"].isin(hidden)].head(limit).reset_index(drop=True)


def render_candidates_table(table: pd.DataFrame, sae_id: str, ranking: str) -> None:
    """The ranked table and a CSV download of it."""
    st.dataframe(table, hide_index=True, key="candidates_table",
                 column_config=candidates_column_config(ranking_choices()[ranking]))
    st.download_button("Download as CSV", data=table.to_csv(index=False), file_name=f"candidates_{sae_id}_{ranking}.csv",
                       mime="text/csv", key="candidates_csv")


def render_lead_lag_grid(db: FeatureDB, sae_id: str, top: pd.DataFrame) -> None:
    """The lead-lag profile of each of the `top` rows, titled with its score."""
    profiles = load_lead_lag_profiles(db, sae_id, top["feature_id"])
    if profiles is not None:
        titles = {int(r.feature_id): f"{int(r.feature_id)} ({r.score:.3f})" for r in top.itertuples(index=False)}
        st.plotly_chart(lead_lag_grid(profiles, list(titles), titles), width="stretch", key="lead_lag_grid")


def load_top_candidate(db: FeatureDB, sae_id: str) -> int | None:
    """The Candidates page's first row at its defaults (`DEFAULT_RANKING`, density at least
    `DEFAULT_MIN_DENSITY`, token detectors shown); None when no feature passes."""
    score, group = split_ranking(DEFAULT_RANKING)
    top = load_candidates(db, sae_id, score, group, min_density=DEFAULT_MIN_DENSITY, limit=1)
    return int(top["feature_id"].iloc[0]) if top is not None and not top.empty else None


def top_candidate_note(feature_id: int) -> str:
    """What the Features page says when it opens on the top candidate."""
    return (
        f"Showing feature {feature_id}, the top candidate: ranked first by {ranking_choices()[DEFAULT_RANKING]} "
        f"among features with density at least {DEFAULT_MIN_DENSITY:.0e} (the **Candidates** page's default "
        "ranking). Type another id, or find a feature below."
    )


def render_best_per_label(db: FeatureDB, min_density: float) -> None:
    """For each SAE of the run and each label set, its best feature: which hook carries a label best."""
    metric = st.radio("Best by", list(LABEL_METRICS), format_func=LABEL_METRICS.get, horizontal=True, key="best_by")
    best = load_best_features_per_label(db, metric, min_density)
    if best is None:
        return
    if best.empty:
        st.info("This run's index scored no label sets: add some with `python -m precompute labels --add`, "
                "then rebuild the index (`python -m precompute index --force`).")
        return
    st.dataframe(best, hide_index=True, width="stretch", column_config={
        "sae_id": st.column_config.TextColumn("SAE"),
        "hook_name": st.column_config.TextColumn("hook"),
        "layer": st.column_config.NumberColumn("layer"),
        "label": st.column_config.TextColumn("label set"),
        "feature_id": st.column_config.NumberColumn("best feature"),
        "token_auroc": st.column_config.NumberColumn("token AUROC", format="%.3f"),
        "sentence_auroc": st.column_config.NumberColumn("sentence AUROC", format="%.3f"),
        "leads_score": st.column_config.NumberColumn("leads", format="%.2f"),
        "density": st.column_config.NumberColumn("density", format="%.1e"),
    })
