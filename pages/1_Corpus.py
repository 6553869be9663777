"""Corpus: browse the traces of a run with their labelled backtracking phrases marked."""

import streamlit as st

from explorer import ui

st.set_page_config(page_title="Corpus · Backtracking feature explorer", layout="wide")
st.title("Corpus")

run_dir = ui.pick_run_or_stop()
documents = ui.load_documents(run_dir)
if documents is None:
    st.stop()

only_backtracking = st.toggle("Only traces with backtracking", value=True, key="only_backtracking")
shown = documents[documents["has_backtracking"]] if only_backtracking else documents
st.caption(f"{len(shown):,} of {len(documents):,} traces")
if shown.empty:
    st.info("No trace matches.")
    st.stop()

ids = shown["doc_id"].tolist()
wanted = st.query_params.get("doc")
doc_id = st.selectbox("Trace", ids, index=ids.index(wanted) if wanted in ids else 0, key="doc_id")
st.query_params["doc"] = doc_id
st.dataframe(shown[shown["doc_id"] == doc_id], hide_index=True)
ui.render_labelled_trace(run_dir, doc_id)
