"""Trace text as HTML, with labelled spans marked. Every character of the trace is escaped: traces
contain `<think>` and can contain anything, including `<script>`."""

from __future__ import annotations

import html
from typing import Iterable, NamedTuple

from explorer.lexicon import GROUPS

GROUP_COLOURS: dict[str, str] = {
    "mistake": "#f4a6a6",
    "correction": "#f7c59f",
    "reconsideration": "#f9e79f",
    "miscalculation": "#c5e1a5",
    "doubt": "#b3e5fc",
    "math_correction": "#d1c4e9",
    "interjection": "#f8bbd0",
}
ERROR_STEP_COLOUR = "#e0e0e0"
AGREEMENT_COLOURS = {"a": "#9ecae1", "b": "#fdae6b", "both": "#a1d99b"}
"""Two label sets on one trace: spans only the first marks, only the second, both."""
assert set(GROUP_COLOURS) == set(GROUPS)


class Mark(NamedTuple):
    """A character span to mark, with its CSS colour and hover title."""

    start: int
    end: int
    colour: str
    title: str


def highlight_html(text: str, marks: Iterable[Mark]) -> str:
    """`text` escaped, with each (non-overlapping) mark wrapped in a coloured `<mark>`, newlines kept."""
    pieces = []
    cursor = 0
    for mark in sorted(marks, key=lambda m: m.start):
        if mark.start < cursor:
            continue  # overlapping marks are skipped rather than nested
        pieces.append(html.escape(text[cursor : mark.start]))
        pieces.append(
            f'<mark style="background:{html.escape(mark.colour)}" title="{html.escape(mark.title)}">'
            f"{html.escape(text[mark.start : mark.end])}</mark>"
        )
        cursor = mark.end
    pieces.append(html.escape(text[cursor:]))
    body = "".join(pieces)
    return f'<div style="white-space: pre-wrap; font-family: monospace; line-height: 1.6">{body}</div>'


def legend_html() -> str:
    items = [f'<mark style="background:{c}">{html.escape(g)}</mark>' for g, c in GROUP_COLOURS.items()]
    items.append(f'<mark style="background:{ERROR_STEP_COLOUR}">wrong step (synthetic)</mark>')
    return " ".join(items)


def activation_html(token_texts: list[str], values: list[float], max_value: float, colour: str = "255, 140, 0") -> str:
    """Tokens with a background whose opacity is the activation over `max_value`; the value shows on
    hover. Every token is escaped."""
    scale = max_value if max_value > 0 else 1.0
    spans = []
    for i, (token, value) in enumerate(zip(token_texts, values)):
        alpha = min(max(value / scale, 0.0), 1.0)
        spans.append(
            f'<span style="background: rgba({colour}, {alpha:.3f})" title="token {i}: {value:.3f}">'
            f"{html.escape(token)}</span>"
        )
    return f'<div style="white-space: pre-wrap; font-family: monospace; line-height: 1.7">{"".join(spans)}</div>'


class ExampleHTML(NamedTuple):
    """One activating example for `examples_html`: a label cell, its tokens and their activations."""

    label: str
    token_texts: list[str]
    values: list[float]
    peak_index: int | None
    """The token the example was picked for (outlined), or None."""
    href: str | None = None
    """A relative link (e.g. to the Live page), or None."""
    link_text: str = "open in Live"


def _safe_href(href: str) -> str:
    """Relative links and http(s) only: anything with another scheme (`javascript:`) becomes `#`."""
    head = href.split("?", 1)[0].split("#", 1)[0]
    if ":" in head and not head.lower().startswith(("http://", "https://")):
        return "#"
    return html.escape(href, quote=True)


def context_html(
    token_texts: list[str], values: list[float], max_value: float, peak_index: int | None = None,
    colour: str = "255, 140, 0",
) -> str:
    """An example's tokens inline: background opacity is the activation over `max_value`, each token's
    value shows on hover, the peak token is outlined and newlines show as ↵. Every token is escaped."""
    scale = max_value if max_value > 0 else 1.0
    spans = []
    for i, (token, value) in enumerate(zip(token_texts, values)):
        alpha = min(max(value / scale, 0.0), 1.0)
        outline = "outline: 1px solid #444;" if i == peak_index else ""
        shown = html.escape(token.replace("\n", "↵"))
        spans.append(
            f'<span style="background: rgba({colour}, {alpha:.3f});{outline}" '
            f'title="{html.escape(repr(token), quote=True)}: {value:.3f}">{shown}</span>'
        )
    return "".join(spans)


def examples_html(examples: Iterable[ExampleHTML], max_value: float) -> str:
    """Activating examples as a table (label, tokens, link), one colour scale for all."""
    rows = []
    for ex in examples:
        link = f'<a href="{_safe_href(ex.href)}">{html.escape(ex.link_text)}</a>' if ex.href else ""
        rows.append(
            f'<tr><td style="white-space: nowrap; padding-right: 0.8em; vertical-align: top">{html.escape(ex.label)}</td>'
            f'<td style="width: 100%; white-space: pre-wrap; font-family: monospace; line-height: 1.7">'
            f"{context_html(ex.token_texts, ex.values, max_value, ex.peak_index)}</td>"
            f'<td style="white-space: nowrap; padding-left: 0.8em; vertical-align: top">{link}</td></tr>'
        )
    return f'<table style="border-collapse: collapse; font-size: 0.85em; width: 100%">{"".join(rows)}</table>'
