"""Errors shown as messages, never as tracebacks: a missing feature index is an info (a stage not run
yet), anything else an error. A read of the run's database raises only `DatabaseError`, whose message
says which file, what is wrong and what to do (explorer.database is the one boundary that makes it)."""

from __future__ import annotations

import streamlit as st

from explorer.feature_db import NoIndexError


def show_error(err: BaseException, prefix: str = "") -> None:
    """`err` as the page's message, after `prefix`."""
    if isinstance(err, NoIndexError):
        st.info(prefix + str(err))
    else:
        st.error(prefix + str(err))
