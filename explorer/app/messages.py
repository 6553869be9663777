"""Errors shown as messages, never as tracebacks: a missing feature index is an info (a stage not run
yet), anything else an error; a DuckDB error says how to rebuild the database."""

from __future__ import annotations

from typing import Callable, TypeVar

import streamlit as st

from explorer.database import ENGINE_ERROR, DatabaseError
from explorer.feature_db import NoIndexError, UnknownFeatureError

T = TypeVar("T")

INDEX_ERRORS: tuple[type[BaseException], ...] = (UnknownFeatureError, NoIndexError, DatabaseError, ENGINE_ERROR)
"""What a read of the run's database raises with a message for a person."""
REBUILD_HINT = "Rebuild it with `python -m precompute build --force`."


def show_error(err: BaseException, prefix: str = "") -> None:
    """`err` as the page's message, after `prefix`."""
    if isinstance(err, NoIndexError):
        st.info(prefix + str(err))
    elif isinstance(err, ENGINE_ERROR):
        st.error(f"{prefix}The run's database could not be read ({type(err).__name__}: {err}). {REBUILD_HINT}")
    else:
        st.error(prefix + str(err))


def shown(call: Callable[..., T], *args, **kwargs) -> T | None:
    """`call(*args, **kwargs)`, or None after showing a database error (`INDEX_ERRORS`) as a message."""
    try:
        return call(*args, **kwargs)
    except INDEX_ERRORS as err:
        show_error(err)
        return None
