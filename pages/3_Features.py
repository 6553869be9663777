"""Features: find a feature (by id, logit-lens token, top-example token, or a text it fires on) and
read its card. `?run=...&sae=...&feature=...` reproduces the view."""

import streamlit as st

from explorer import ui

st.set_page_config(page_title="Features · Backtracking feature explorer", layout="wide")
st.title("Feature browser")

run_dir, sae_id, db, index_run = ui.pick_indexed_sae_or_stop()

feature_id = ui.render_feature_finder(db, run_dir, sae_id, int(index_run["d_sae"]))
if feature_id is None:
    st.info("Type a feature id, or find one above. The **Candidates** page ranks features by their backtracking scores.")
    st.stop()
card = ui.load_feature_card(db, sae_id, feature_id)
if card is None:
    st.stop()
st.query_params["feature"] = str(feature_id)

vocabulary = ui.load_vocabulary(db)
ui.render_card_header(card, run_dir.name, index_run)
left, right = st.columns([3, 2])
with left:
    ui.render_top_examples(card, vocabulary, run_dir.name)
with right:
    ui.render_distribution_and_lens(card, run_dir.name)
ui.render_interval_samples(card, vocabulary, run_dir.name)
ui.render_backtracking_evidence(card, index_run)

st.subheader("Export")
ui.render_sae_vis_export(run_dir, sae_id, card)
