"""Cached reads of a run folder: its summary, the corpus listing, one trace's text and the corpus
prompts. Each cache is keyed on the file's mtime, so a rebuilt run is read again."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from explorer import artifacts
from explorer.app.messages import show_error
from explorer.runs import (
    RunFolderError,
    RunSummary,
    read_corpus_prompts,
    read_document_list,
    read_document_text,
    read_run_summary,
    run_summary_stamp,
)

CORPUS_PROMPTS = 200
"""Prompts the Steering page offers from the corpus (its first ones, distinct)."""


@st.cache_data(show_spinner=False)
def _cached_run_summary(run_dir: str, stamp: tuple[int, ...]) -> RunSummary:
    return read_run_summary(Path(run_dir))


def load_run_summary(run_dir: Path) -> RunSummary | None:
    """The run's summary, or None after showing the error (never a traceback)."""
    try:
        return _cached_run_summary(str(run_dir), run_summary_stamp(run_dir))
    except (RunFolderError, OSError) as err:
        show_error(err)
        return None


def _documents_mtime(run_dir: Path) -> float:
    """What the corpus caches are keyed on: documents.parquet's mtime (OSError when there is none)."""
    return (Path(run_dir) / artifacts.CORPUS_DIR / artifacts.DOCUMENTS_FILE).stat().st_mtime


@st.cache_data(show_spinner=False, max_entries=8)
def _cached_document_list(run_dir: str, mtime: float) -> pd.DataFrame:
    return read_document_list(Path(run_dir))


def load_document_list(run_dir: Path) -> pd.DataFrame | None:
    """Every document's light columns, no text (`explorer.runs.read_document_list`); None after
    showing the error."""
    try:
        return _cached_document_list(str(run_dir), _documents_mtime(run_dir))
    except (RunFolderError, OSError) as err:
        show_error(err)
        return None


@st.cache_data(show_spinner=False, max_entries=64)
def _cached_document_text(run_dir: str, mtime: float, doc_id: str) -> str | None:
    return read_document_text(Path(run_dir), doc_id)


def load_document_text(run_dir: Path, doc_id: str) -> str | None:
    """One document's text, read alone (`explorer.runs.read_document_text`); None when the run has no
    such document or no corpus."""
    try:
        return _cached_document_text(str(run_dir), _documents_mtime(run_dir), doc_id)
    except (RunFolderError, OSError):
        return None


@st.cache_data(show_spinner=False)
def _cached_corpus_prompts(run_dir: str, mtime: float, n: int) -> list[str]:
    """The prompts of the run's first `2n` traces, at most `n` (distinct, in corpus order)."""
    return list(dict.fromkeys(read_corpus_prompts(Path(run_dir), max_documents=n * 2)))[:n]


def load_corpus_prompts(run_dir: Path) -> list[str]:
    """The run's corpus prompts, or [] when it has no corpus (the Steering page then offers its example)."""
    try:
        mtime = (run_dir / artifacts.CORPUS_DIR / artifacts.STAGE_MANIFEST).stat().st_mtime
        return _cached_corpus_prompts(str(run_dir), mtime, CORPUS_PROMPTS)
    except (OSError, RunFolderError):
        return []
