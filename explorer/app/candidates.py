"""The Candidates table and its lead-lag grid, and the top candidate the Features page opens on."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from explorer.app.index_cache import FeatureDB, load_candidates, load_lead_lag_profiles
from explorer.feature_views import lead_lag_grid, ranking_choices, split_ranking

DEFAULT_RANKING = "auroc_notebook"
"""What the Candidates page ranks by until another score is chosen (the first of `ranking_choices`)."""
DENSITY_CHOICES = (0.0, 1e-5, 1e-4, 1e-3, 1e-2)
DEFAULT_MIN_DENSITY = 1e-4
"""The Candidates page's default minimum density: rarer features are left out."""


def render_candidates_table(table: pd.DataFrame, sae_id: str, ranking: str) -> None:
    """The ranked table and a CSV download of it."""
    st.dataframe(table, hide_index=True, key="candidates_table",
                 column_config={"card": st.column_config.LinkColumn("card", display_text="open card"),
                                "steer": st.column_config.LinkColumn("steer", display_text="steer it"),
                                "score": st.column_config.NumberColumn(format="%.4f")})
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
