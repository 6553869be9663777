"""The Corpus page's listing as plain tables (no Streamlit): the documents' light columns filtered, and cut
into pages, so that a corpus of 200,000 traces is browsed a page of ids at a time."""

from __future__ import annotations

import math

import pandas as pd

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
