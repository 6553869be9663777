"""Traces with their labelled backtracking phrases marked (Corpus, Live), their sentences with their tags
(and a feature's activation in each, in Live), two label sets compared on a trace, and the Corpus page's
trace picker: a page of doc ids at a time, opened on the page that lists a linked `?doc=`."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd
import streamlit as st

from explorer.app.label_cache import load_comparison, load_document_spans, load_label_set_names, load_sentence_tags
from explorer.app.run_cache import load_document_text
from explorer.corpus_views import PAGE_SIZE, agreement_marks, page_count, page_of, page_rows, sentence_table
from explorer.html import AGREEMENT_COLOURS, ERROR_STEP_COLOUR, GROUP_COLOURS, Mark, highlight_html, legend_html
from explorer.runs import read_error_steps, read_phrases

DOC_PARAM = "doc"
DOC_PAGE_KEY = "doc_page"
"""Session key of the Corpus page's page number (a deep link's `?doc=` opens the page that lists it)."""
ONLY_BACKTRACKING_KEY = "only_backtracking"
"""Session key of the Corpus page's "only traces with backtracking" filter."""


def backtracks_or_unknown(documents: pd.DataFrame, doc_id: str | None) -> bool:
    """Whether the filter should start on: yes, unless `doc_id` (the link's) is a trace without backtracking."""
    row = documents.loc[documents["doc_id"] == doc_id, "has_backtracking"]
    return bool(row.iloc[0]) if len(row) else True


def render_document_picker(shown: pd.DataFrame, wanted: str | None) -> str:
    """A page number and a select box of that page's doc ids; the chosen doc id. `wanted` (the URL's
    `?doc=`) is chosen where the page lists it, and a fresh session opens on its page."""
    n_pages = page_count(len(shown))
    if DOC_PAGE_KEY not in st.session_state:
        st.session_state[DOC_PAGE_KEY] = page_of(shown, wanted) or 1
    st.session_state[DOC_PAGE_KEY] = min(int(st.session_state[DOC_PAGE_KEY]), n_pages)  # the filter may shrink it
    left, right = st.columns([1, 3])
    page = left.number_input("Page", min_value=1, max_value=n_pages, step=1, key=DOC_PAGE_KEY,
                             help=f"{n_pages:,} pages of {PAGE_SIZE} traces")
    ids = page_rows(shown, int(page))["doc_id"].tolist()
    return right.selectbox("Trace", ids, index=ids.index(wanted) if wanted in ids else 0, key="doc_id")


def render_labelled_trace(run_dir: Path, doc_id: str) -> None:
    """One trace with its labelled phrases (and synthetic wrong steps) marked."""
    text = load_document_text(run_dir, doc_id)
    if text is None:
        st.warning(f"No document {doc_id!r} in this run.")
        return
    phrases = list(read_phrases(run_dir, doc_id).itertuples())
    errors = read_error_steps(run_dir, doc_id)
    wrong_steps = [Mark(int(e.start), int(e.end), ERROR_STEP_COLOUR, "wrong step, corrected later") for e in errors.itertuples()]
    render_phrases(text, phrases, wrong_steps)


def render_phrases(text: str, phrases: Iterable, extra_marks: Iterable[Mark] = ()) -> None:
    """`text` with its labelled phrases (anything with start, end, group, phrase) marked, and a legend."""
    marks = [Mark(int(p.start), int(p.end), GROUP_COLOURS[p.group], f"{p.group}: {p.phrase}") for p in phrases]
    st.html(legend_html())
    st.html(highlight_html(text, [*marks, *extra_marks]))


SENTENCE_COLUMNS = {
    "sentence": st.column_config.NumberColumn("#"),
    "text": st.column_config.TextColumn("sentence", width="large"),
    "tags": st.column_config.TextColumn("label sets", help="The label sets this sentence is positive for (docs/labels.md)"),
    "max_activation": st.column_config.NumberColumn("max", format="%.3f", help="The feature's maximum over the sentence's tokens"),
    "mean_activation": st.column_config.NumberColumn("mean", format="%.3f", help="The feature's mean over the sentence's tokens"),
}


def render_sentences(text: str, sentences: pd.DataFrame, token_offsets=None, token_values=None) -> None:
    """The sentence view: each sentence with its tags (and the feature's max and mean, given its values)."""
    if sentences is None or sentences.empty:
        st.info("No sentences in this text (a sentence ends at '.', '?' or '!' before a space, or at a blank line).")
        return
    table = sentence_table(text, sentences, token_offsets, token_values)
    st.dataframe(table, hide_index=True, width="stretch", column_config=SENTENCE_COLUMNS)


def render_document_sentences(run_dir: Path, doc_id: str) -> None:
    """The Corpus page's sentence view of one trace."""
    text = load_document_text(run_dir, doc_id)
    tags = load_sentence_tags(run_dir, doc_id)
    if text is not None and tags is not None:
        render_sentences(text, tags)


def render_agreement(run_dir: Path, doc_id: str) -> None:
    """Two label sets: their precision and recall against each other over the corpus, and both marked on
    the chosen trace."""
    names = load_label_set_names(run_dir)
    if len(names) < 2:
        st.info("This run has fewer than two label sets to compare.")
        return
    left, right = st.columns(2)
    a = left.selectbox("Label set A", names, index=0, key="agreement_a")
    b = right.selectbox("Label set B", names, index=min(1, len(names) - 1) if names[0] == a else 0, key="agreement_b")
    comparison = load_comparison(run_dir, a, b)
    if comparison is not None:
        st.dataframe(comparison, hide_index=True, width="stretch")
    text = load_document_text(run_dir, doc_id)
    spans_a, spans_b = load_document_spans(run_dir, a, doc_id), load_document_spans(run_dir, b, doc_id)
    if text is None or spans_a is None or spans_b is None:
        return
    legend = " ".join(
        f'<mark style="background:{AGREEMENT_COLOURS[key]}">{label}</mark>'
        for key, label in (("a", "A only"), ("b", "B only"), ("both", "both"))
    )
    st.html(legend)
    st.html(highlight_html(text, agreement_marks(spans_a, spans_b, (a, b))))
