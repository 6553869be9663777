"""The Corpus page's views as plain tables (no Streamlit): the documents' light columns filtered and cut
into pages, so that a corpus of 200,000 traces is browsed a page of ids at a time; a trace's sentences with
their tags (and a feature's activation in each, for Live); two label sets marked on one trace."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from explorer.feature_index import sentence_of_tokens
from explorer.html import AGREEMENT_COLOURS, Mark

PAGE_SIZE = 100
"""Documents per page of the Corpus page's listing."""


def filter_documents(documents: pd.DataFrame, *, only_backtracking: bool, id_contains: str = "") -> pd.DataFrame:
    """The documents (a `explorer.runs.read_document_list` table) that backtrack, when asked, and whose
    doc id contains `id_contains` (any case), in corpus order."""
    shown = documents[documents["has_backtracking"]] if only_backtracking else documents
    needle = id_contains.strip()
    if needle:
        shown = shown[shown["doc_id"].str.contains(needle, case=False, regex=False)]
    return shown


def page_count(n_documents: int, page_size: int = PAGE_SIZE) -> int:
    """Pages the listing has (at least 1)."""
    return max(1, math.ceil(n_documents / page_size))


def page_rows(documents: pd.DataFrame, page: int, page_size: int = PAGE_SIZE) -> pd.DataFrame:
    """Page `page` (from 1) of the listing."""
    start = (page - 1) * page_size
    return documents.iloc[start : start + page_size]


def page_of(documents: pd.DataFrame, doc_id: str | None, page_size: int = PAGE_SIZE) -> int | None:
    """The page (from 1) that lists `doc_id`, or None when the listing does not hold it."""
    positions = (documents["doc_id"] == doc_id).to_numpy().nonzero()[0]
    return int(positions[0]) // page_size + 1 if len(positions) else None


SENTENCE_PREVIEW = 160
"""Characters of a sentence the sentence view shows."""


def sentence_table(
    text: str, sentences: pd.DataFrame, token_offsets: Sequence[tuple[int, int]] | None = None,
    token_values: Sequence[float] | None = None,
) -> pd.DataFrame:
    """Each sentence (`sentences`: start, end, tags) with its text and tags, and, given a feature's
    activation on each token (`token_offsets`, `token_values`), its max and mean over the sentence's
    tokens (a token belongs to the sentence holding its last character, as in the index)."""
    rows = pd.DataFrame({
        "sentence": range(len(sentences)),
        "text": [text[int(a):int(b)][:SENTENCE_PREVIEW] for a, b in zip(sentences["start"], sentences["end"])],
        "tags": [", ".join(tags) for tags in sentences.get("tags", [[]] * len(sentences))],
    })
    if token_offsets is not None and token_values is not None and len(sentences):
        bounds = list(zip(sentences["start"].astype(int), sentences["end"].astype(int)))
        owner = sentence_of_tokens(np.asarray(token_offsets, dtype=np.int64).reshape(-1, 2), bounds)
        values = np.asarray(token_values, dtype=np.float64)
        inside = owner >= 0
        frame = pd.DataFrame({"sentence": owner[inside], "value": values[inside]}).groupby("sentence")["value"]
        rows["max_activation"] = rows["sentence"].map(frame.max())
        rows["mean_activation"] = rows["sentence"].map(frame.mean())
    return rows


def agreement_marks(spans_a: pd.DataFrame, spans_b: pd.DataFrame, names: tuple[str, str]) -> list[Mark]:
    """Non-overlapping marks for two label sets' spans on one text: where only A holds, only B, or both."""
    edges = sorted({int(x) for frame in (spans_a, spans_b) for x in (*frame["start"], *frame["end"])})
    marks = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_a = bool(((spans_a["start"] < hi) & (spans_a["end"] > lo)).any())
        in_b = bool(((spans_b["start"] < hi) & (spans_b["end"] > lo)).any())
        if in_a or in_b:
            which = "both" if in_a and in_b else ("a" if in_a else "b")
            title = {"both": f"{names[0]} and {names[1]}", "a": f"{names[0]} only", "b": f"{names[1]} only"}[which]
            marks.append(Mark(lo, hi, AGREEMENT_COLOURS[which], title))
    return marks
