"""Corpus: browse the traces of a run with their labelled backtracking phrases marked.

The listing holds the documents' light columns only, a page of ids at a time; the chosen trace's text is
read alone (a corpus such as OpenR1-Math-220k has about 3 GB of text)."""

import streamlit as st

from explorer.app import pickers, run_cache, traces
from explorer.app.link_params import warn_bad_param
from explorer.corpus_views import filter_documents

st.title("Corpus")

run_dir = pickers.pick_run_or_stop()
documents = run_cache.load_document_list(run_dir)
if documents is None:
    st.stop()

wanted = st.query_params.get(traces.DOC_PARAM)
if traces.ONLY_BACKTRACKING_KEY not in st.session_state:  # a linked trace without backtracking is listed too
    st.session_state[traces.ONLY_BACKTRACKING_KEY] = traces.backtracks_or_unknown(documents, wanted)
only_backtracking = st.toggle("Only traces with backtracking", key=traces.ONLY_BACKTRACKING_KEY)
id_contains = st.text_input("Doc id contains", key="doc_search", placeholder="part of a doc id, e.g. synth-0001")
shown = filter_documents(documents, only_backtracking=only_backtracking, id_contains=id_contains)
st.caption(f"{len(shown):,} of {len(documents):,} traces")
if shown.empty:
    st.info("No trace matches.")
    st.stop()

doc_id = traces.render_document_picker(shown, wanted)
if wanted is not None and wanted != doc_id and not (documents["doc_id"] == wanted).any():
    warn_bad_param(traces.DOC_PARAM, wanted, "names no trace of this run's corpus", f"trace `{doc_id}`")
st.query_params[traces.DOC_PARAM] = doc_id
st.dataframe(shown[shown["doc_id"] == doc_id], hide_index=True)
traces.render_labelled_trace(run_dir, doc_id)

st.subheader("Sentences and their label sets")
traces.render_document_sentences(run_dir, doc_id)
st.subheader("Two label sets compared")
st.caption("Precision and recall of A against B over the whole corpus (docs/labels.md, `labels --compare`), and "
           "both marked on this trace.")
if st.toggle("Compare two label sets (reads every set's spans once)", key="compare_label_sets"):
    traces.render_agreement(run_dir, doc_id)
