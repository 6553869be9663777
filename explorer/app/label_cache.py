"""Cached reads of a run's label sets for the app: their names, one trace's sentence tags, two sets'
agreement. Keyed on the corpus's and the label-set folder's modification times, so an import or a
rebuilt corpus shows at once."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from explorer import artifacts
from explorer.app.messages import show_error
from explorer.errors import ExplorerError
from explorer.label_sets import (
    compare_label_sets,
    document_sentence_tags,
    label_sets_dir,
    read_label_sets,
    read_label_spans,
)


def _stamp(run_dir: Path) -> tuple[float, float]:
    documents = Path(run_dir) / artifacts.CORPUS_DIR / artifacts.DOCUMENTS_FILE
    folder = label_sets_dir(run_dir)
    return documents.stat().st_mtime, folder.stat().st_mtime if folder.exists() else 0.0


@st.cache_data(show_spinner=False, max_entries=8)
def _cached_names(run_dir: str, stamp: tuple[float, float]) -> list[str]:
    return list(read_label_sets(Path(run_dir)))


@st.cache_data(show_spinner=False, max_entries=64)
def _cached_sentence_tags(run_dir: str, stamp: tuple[float, float], doc_id: str) -> pd.DataFrame:
    return document_sentence_tags(Path(run_dir), doc_id)


@st.cache_data(show_spinner=False, max_entries=64)
def _cached_spans(run_dir: str, stamp: tuple[float, float], name: str, doc_id: str) -> pd.DataFrame:
    spans = read_label_spans(Path(run_dir), name)
    return spans[spans["doc_id"] == doc_id].reset_index(drop=True)


@st.cache_data(show_spinner=False, max_entries=32)
def _cached_comparison(run_dir: str, stamp: tuple[float, float], a: str, b: str) -> pd.DataFrame:
    return compare_label_sets(Path(run_dir), a, b)


def _shown(read, run_dir: Path, *args):
    """`read(run_dir, stamp, *args)`, or None after showing what went wrong."""
    try:
        return read(str(run_dir), _stamp(run_dir), *args)
    except (ExplorerError, OSError) as err:
        show_error(err)
        return None


def load_label_set_names(run_dir: Path) -> list[str]:
    """Every label set of the run (built in, then stored); [] after showing what went wrong."""
    return _shown(_cached_names, run_dir) or []


def load_sentence_tags(run_dir: Path, doc_id: str) -> pd.DataFrame | None:
    """One trace's sentences with the label sets each is positive for (`document_sentence_tags`)."""
    return _shown(_cached_sentence_tags, run_dir, doc_id)


def load_document_spans(run_dir: Path, name: str, doc_id: str) -> pd.DataFrame | None:
    """Label set `name`'s positive spans in one trace."""
    return _shown(_cached_spans, run_dir, name, doc_id)


def load_comparison(run_dir: Path, a: str, b: str) -> pd.DataFrame | None:
    """`compare_label_sets(a, b)`: precision and recall of one set against the other, over the corpus."""
    return _shown(_cached_comparison, run_dir, a, b)
