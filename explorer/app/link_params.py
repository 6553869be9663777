"""One rule for a link's parameters on every page (`?run=`, `?sae=`, `?doc=`, `?feature=`, `?token=`,
`?score=`): a value the page cannot follow gets one warning that names the parameter, its value (cut to
`VALUE_CHARS` characters, as code) and what the page shows instead, and leaves the URL, so the next rerun
does not warn again. A valid value is followed without a word."""

from __future__ import annotations

import streamlit as st

from explorer.feature_views import parse_feature_id

VALUE_CHARS = 40
"""A value is shown up to this many characters (a longer one ends in "…")."""


def shorten(value: str, limit: int = VALUE_CHARS) -> str:
    """`value` cut to `limit` characters, the last one "…" when it was longer."""
    return value if len(value) <= limit else value[: limit - 1] + "…"


def as_code(value: str) -> str:
    """`value`, shortened, safe inside a Markdown code span: backticks and line breaks would end it."""
    return shorten(value).replace("`", "'").replace("\n", "↵").replace("\r", "")


def warn_bad_param(name: str, value: object, problem: str, instead: str, *, drop: bool = True) -> None:
    """The page's warning about the link's `name=value`: what is wrong with it (`problem`, after the
    value) and what is shown instead; the parameter leaves the URL unless `drop` is False (a page that
    writes its own value back)."""
    st.warning(f"The link's `{name}={as_code(str(value))}` {problem}; showing {instead} instead.")
    if drop and name in st.query_params:
        del st.query_params[name]


def parse_index(name: str, value: str | None, *, problem: str, instead: str) -> int | None:
    """A whole number from 0 up, from the link's `name`; None when it is missing, or after the warning
    when it is not one (`problem` says what the number is for)."""
    if value is None:
        return None
    number = parse_feature_id(value)  # a whole number, or None
    if number is None or number < 0:
        warn_bad_param(name, value, problem, instead)
        return None
    return number



def linked_feature(value: str | None, sae_id: str, d_sae: int, instead: str) -> int | None:
    """The link's `?feature=` when SAE `sae_id` (of `d_sae` features) has it; None when the link has none,
    or after the warning."""
    if value is None:
        return None
    feature = parse_feature_id(value)
    if feature is None:
        warn_bad_param("feature", value, f"is not a feature id (a whole number from 0 to {d_sae - 1})", instead)
        return None
    if not 0 <= feature < d_sae:
        warn_bad_param("feature", value, f"names no feature of SAE `{sae_id}` (ids run from 0 to {d_sae - 1})", instead)
        return None
    return feature
