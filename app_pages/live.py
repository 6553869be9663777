"""Live: type or paste a chain of thought and see each feature's activation on each token."""

import random

import streamlit as st

from explorer.app import live_links, model_cache, pickers, run_cache, traces
from explorer.html import activation_html
from explorer.live import EXAMPLE_TRACE, LiveInputError, compute_top_features, live_sentence_tags, wrap_in_prompt

st.title("Live activations")

run_dir, sae_id, summary = pickers.pick_sae_with_summary_or_stop()

link = live_links.read_live_link(run_dir)  # a card's "open in Live" (?doc= or ?text=, &feature=...&token=...), or ?feature=
if "live_text" not in st.session_state:
    st.session_state["live_text"] = link.text if link is not None and link.text is not None else EXAMPLE_TRACE
if st.button("Random trace from the corpus", key="random_trace"):
    documents = run_cache.load_document_list(run_dir)
    picked = run_cache.load_document_text(run_dir, random.choice(documents["doc_id"].tolist())) if documents is not None else None
    if picked is not None:
        st.session_state["live_text"] = picked
text = st.text_area("Chain of thought", key="live_text", height=220)
if link is not None and link.text is not None and text != link.text:
    live_links.drop_live_link()  # the text is no longer the linked trace
    link = None
wrap = st.checkbox("Wrap the text in the R1 prompt template (treat it as the problem)", key="wrap_prompt")
shown_text = wrap_in_prompt(text) if wrap else text

loaded = model_cache.load_model_and_sae(run_dir, summary.profile, sae_id)
if loaded is None:
    st.stop()
_, _, hook_name = loaded
try:  # once per text and SAE: moving the feature or token widgets below does not rerun the model
    live = model_cache.load_live_activations(run_dir, summary.profile, sae_id, hook_name, shown_text)
except LiveInputError as hint:
    st.info(str(hint))
    st.stop()

st.caption(f"{len(live.token_ids)} tokens on {live.device} in {live.seconds * 1000:.0f} ms · SAE `{sae_id}` at `{hook_name}`")
ran_text = shown_text[: live.n_chars_run]
if live.truncated:
    st.warning(f"The text has {live.n_text_tokens:,} tokens ({len(shown_text):,} characters); Live ran the first "
               f"{len(live.token_ids):,} (the model's context), and the views below show those: the other "
               f"{len(shown_text) - len(ran_text):,} characters are left out.")

top = compute_top_features(live, k=20)
if not top:
    st.info("No feature fires on this text.")
    st.stop()
left, right = st.columns([2, 1])
with right:
    st.subheader("Top features over the text")
    live_links.render_live_top_features(run_dir, sae_id, top)
with left:
    d_sae, n_tokens = live.acts_TF.shape[1], len(live.token_ids)
    linked_feature = link.feature_within(sae_id, d_sae) if link is not None else None
    feature = st.number_input("Feature", min_value=0, max_value=d_sae - 1, key="live_feature",
                              value=linked_feature if linked_feature is not None else top[0].feature_id)
    values = live.acts_TF[:, int(feature)].tolist()
    st.html(activation_html(live.token_texts, values, max(values)))
    linked_token = link.token_within(n_tokens) if link is not None else None
    position = st.slider("Token", 0, n_tokens - 1, key="live_position",
                         value=linked_token if linked_token is not None else n_tokens // 2)
    st.caption(f"Token {position}: {live.token_texts[position]!r}")
    at_token = compute_top_features(live, position=position)
    st.dataframe({"feature": [f.feature_id for f in at_token], "activation": [round(f.value, 3) for f in at_token]}, hide_index=True)

st.subheader("Labelled backtracking phrases")
traces.render_phrases(ran_text, live.phrases)

st.subheader(f"Sentences: feature {int(feature)} in each")
st.caption("Each sentence of the text the model ran (Thought Anchors' rule) with the lexicon's sentence label sets "
           "it is positive for, and the chosen feature's maximum and mean over its tokens.")
traces.render_sentences(ran_text, live_sentence_tags(ran_text, live.phrases), live.offsets, values)
