"""Features: find a feature (by id, logit-lens token, top-example token, or a text it fires on) and
read its card. `?run=...&sae=...&feature=...` reproduces the view."""

import streamlit as st

from explorer.app import card, finder, index_cache, pickers, sae_vis_dashboard

st.title("Feature browser")

run_dir, sae_id, db, index_run = pickers.pick_indexed_sae_or_stop()

feature_id = finder.render_feature_finder(db, run_dir, sae_id, int(index_run["d_sae"]))
if feature_id is None:
    st.info("Type a feature id, or find one above. The **Candidates** page ranks features by their backtracking scores.")
    st.stop()
feature_card = index_cache.load_feature_card(db, sae_id, feature_id)
if feature_card is None:
    st.stop()
st.query_params[finder.FEATURE_PARAM] = str(feature_id)

vocabulary = index_cache.load_vocabulary(db)
card.render_card(feature_card, vocabulary, run_dir.name, index_run)
card.render_token_injection(db, run_dir, sae_id, feature_id, vocabulary)

st.subheader("Export")
sae_vis_dashboard.render_sae_vis_export(run_dir, sae_id, feature_card)
