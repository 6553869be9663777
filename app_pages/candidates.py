"""Candidates: features ranked by a backtracking score, with their lead-lag profiles and a link to
each card. `?run=...&sae=...&score=...` reproduces the ranking."""

import streamlit as st

from explorer.app import candidates, index_cache, pickers
from explorer.app.link_params import warn_bad_param
from explorer.feature_views import candidates_table, ranking_choices, split_ranking, token_driven_ids
from explorer.injection_store import missing_injection_message

st.title("Backtracking candidates")

run_dir, sae_id, db, index_run = pickers.pick_indexed_sae_or_stop()

choices = ranking_choices(index_cache.load_label_set_names(db, sae_id))
keys = list(choices)
wanted = st.query_params.get("score")
if wanted is not None and wanted not in keys and "rank_by" not in st.session_state:
    warn_bad_param("score", wanted, "is not a ranking this page offers", choices[candidates.DEFAULT_RANKING])
left, middle, right = st.columns([2, 1, 1])
ranking = left.selectbox("Rank by", keys, index=keys.index(wanted if wanted in keys else candidates.DEFAULT_RANKING),
                         format_func=choices.get, key="rank_by")
st.query_params["score"] = ranking
min_density = middle.select_slider("Minimum density", options=candidates.DENSITY_CHOICES,
                                   value=candidates.DEFAULT_MIN_DENSITY,
                                   format_func=lambda d: f"{d:.0e}" if d else "0", key="min_density")
limit = right.number_input("Rows", min_value=10, max_value=5000, value=100, step=10, key="n_rows")
hide_detectors = st.toggle("Hide plain token detectors (the token alone explains the AUROC)", key="hide_token_detectors")
verdicts = index_cache.load_injection_verdicts(db, sae_id)
hide_token_driven = st.toggle("Hide token-driven (the token-injection test's verdict; untested features stay)",
                              key="hide_token_driven", disabled=verdicts is None)
if verdicts is None:
    st.caption(missing_injection_message(run_dir, sae_id))

score, group = split_ranking(ranking)
ranked = candidates.load_filtered_candidates(db, sae_id, score, group, min_density=min_density,
                                             hide_token_detectors=hide_detectors, limit=int(limit),
                                             hidden=token_driven_ids(verdicts) if hide_token_driven else ())
if ranked is None:
    st.stop()
if ranked.empty:
    st.info("No feature passes these filters: lower the minimum density or show token detectors.")
    st.stop()

table = candidates_table(ranked, run_dir.name, sae_id, index_cache.load_causal_effects(db, sae_id), verdicts)
st.caption(f"{len(table):,} features of {int(index_run['d_sae']):,}, best first by {choices[ranking]}.")
candidates.render_candidates_table(table, sae_id, ranking)

st.subheader("Lead-lag profiles of the top features")
st.caption("Activation minus the feature's baseline at each token offset from the start of a backtracking phrase "
           "(red line: the phrase's first token).")
n_profiles = st.slider("Features", 4, 32, 12, step=4, key="n_profiles")
candidates.render_lead_lag_grid(db, sae_id, table.head(n_profiles))

st.subheader("Across SAEs: the best feature per label set")
st.caption("For each SAE of this run and each label set its index scored, the best feature (density at least the "
           "minimum above): which hook and layer carry a label best.")
candidates.render_best_per_label(db, min_density)
