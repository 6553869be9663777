"""Candidates: features ranked by a backtracking score, with their lead-lag profiles and a link to
each card. `?run=...&sae=...&score=...` reproduces the ranking."""

import streamlit as st

from explorer import ui
from explorer.feature_views import candidates_table, lead_lag_grid, ranking_choices, split_ranking

st.set_page_config(page_title="Candidates · Backtracking feature explorer", layout="wide")
st.title("Backtracking candidates")

run_dir, sae_id, db, index_run = ui.pick_indexed_sae_or_stop()

choices = ranking_choices()
keys = list(choices)
wanted = st.query_params.get("score")
left, middle, right = st.columns([2, 1, 1])
ranking = left.selectbox("Rank by", keys, index=keys.index(wanted) if wanted in keys else 0,
                         format_func=choices.get, key="rank_by")
st.query_params["score"] = ranking
min_density = middle.select_slider("Minimum density", options=[0.0, 1e-5, 1e-4, 1e-3, 1e-2], value=1e-4,
                                   format_func=lambda d: f"{d:.0e}" if d else "0", key="min_density")
limit = right.number_input("Rows", min_value=10, max_value=5000, value=100, step=10, key="n_rows")
hide_detectors = st.toggle("Hide plain token detectors (the token alone explains the AUROC)", key="hide_token_detectors")

score, group = split_ranking(ranking)
candidates = ui.load_candidates(db, sae_id, score, group, min_density=min_density,
                                hide_token_detectors=hide_detectors, limit=int(limit))
if candidates is None:
    st.stop()
if candidates.empty:
    st.info("No feature passes these filters: lower the minimum density or show token detectors.")
    st.stop()

table = candidates_table(candidates, run_dir.name, sae_id, ui.load_causal_effects(db, sae_id))
st.caption(f"{len(table):,} features of {int(index_run['d_sae']):,}, best first by {choices[ranking]}.")
st.dataframe(table, hide_index=True, key="candidates_table",
             column_config={"card": st.column_config.LinkColumn("card", display_text="open card"),
                            "steer": st.column_config.LinkColumn("steer", display_text="steer it"),
                            "score": st.column_config.NumberColumn(format="%.4f")})
st.download_button("Download as CSV", data=table.to_csv(index=False), file_name=f"candidates_{sae_id}_{ranking}.csv",
                   mime="text/csv", key="candidates_csv")

st.subheader("Lead-lag profiles of the top features")
st.caption("Activation minus the feature's baseline at each token offset from the start of a backtracking phrase "
           "(red line: the phrase's first token).")
n_profiles = st.slider("Features", 4, 32, 12, step=4, key="n_profiles")
top = table.head(n_profiles)
profiles = ui.load_lead_lag_profiles(db, sae_id, top["feature_id"])
if profiles is not None:
    titles = {int(r.feature_id): f"{int(r.feature_id)} ({r.score:.3f})" for r in top.itertuples(index=False)}
    st.plotly_chart(lead_lag_grid(profiles, list(titles), titles), width="stretch", key="lead_lag_grid")
