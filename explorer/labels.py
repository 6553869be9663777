"""Backtracking labels: lexicon phrases as character spans, and their token positions.

Matching rule (documented in docs/labels.md):
- case-insensitive; a straight apostrophe in the lexicon also matches a curly one (’);
- a phrase only matches on word boundaries: "wait" does not fire inside "await";
- overlaps are resolved leftmost-longest: scanning left to right, at each position the longest phrase
  that matches there wins, and scanning resumes after it. So "Wait, that's not right" is one
  `correction` span ("Wait, that's not"), not also a `mistake` span ("that's not right");
- a phrase listed in two groups gets the first group in `explorer.lexicon.GROUPS` order.

Token positions come from the tokenizer's character offsets: a token is inside a span when its
character range overlaps the span. Special tokens (BOS, `<think>` added as special) have empty or
out-of-text offsets and are never inside a span.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple, Sequence

import numpy as np

from explorer.lexicon import GROUPS, LEXICON, NOTEBOOK_GROUPS, phrase_group

NO_GROUP = -1
"""Value of a token's group index when it lies in no backtracking phrase."""


class PhraseSpan(NamedTuple):
    """One labelled backtracking phrase: `text[start:end]`, matched by lexicon entry `phrase`."""

    start: int
    end: int
    group: str
    phrase: str


class TokenSpan(NamedTuple):
    """A labelled phrase in token positions: tokens `[start, end)` of one tokenised text."""

    start: int
    end: int
    group: str


def _phrase_pattern(phrase: str) -> str:
    body = re.escape(phrase).replace("'", "['’]")
    tail = r"(?!\w)" if phrase[-1].isalnum() else ""
    return body + tail


@lru_cache(maxsize=1)
def _lexicon_regex() -> tuple[re.Pattern[str], tuple[str, ...]]:
    # Longest phrase first: at any position the regex then takes the longest alternative.
    phrases = sorted({p for group in LEXICON.values() for p in group}, key=lambda p: (-len(p), p))
    assert all(p[0].isalpha() for p in phrases), "every phrase starts with a letter (word boundary below)"
    alternatives = "|".join(f"(?P<p{i}>{_phrase_pattern(p)})" for i, p in enumerate(phrases))
    # The word-boundary look-behind and a look-ahead on the possible first letters reject most
    # positions before the alternation is tried: about 14x faster on real traces.
    first_letters = "".join(sorted({p[0] for p in phrases}))
    pattern = rf"(?<!\w)(?=[{first_letters}])(?:{alternatives})"
    return re.compile(pattern, re.IGNORECASE), tuple(phrases)


def label_text(text: str) -> list[PhraseSpan]:
    """All backtracking phrases in `text`, as non-overlapping spans in text order."""
    regex, phrases = _lexicon_regex()
    spans = []
    for match in regex.finditer(text):
        phrase = phrases[int(match.lastgroup[1:])]
        spans.append(PhraseSpan(match.start(), match.end(), phrase_group(phrase), phrase))
    return spans


def has_backtracking(spans: Sequence[PhraseSpan], groups: Sequence[str] = NOTEBOOK_GROUPS) -> bool:
    """Whether any span belongs to `groups`. The default is the notebook's definition (six groups,
    interjections excluded)."""
    return any(span.group in groups for span in spans)


def group_counts(spans: Sequence[PhraseSpan]) -> dict[str, int]:
    """Number of spans per group, with every group present."""
    counts = dict.fromkeys(GROUPS, 0)
    for span in spans:
        counts[span.group] += 1
    return counts


def token_group_ids(offsets: Sequence[tuple[int, int]], spans: Sequence[PhraseSpan]) -> np.ndarray:
    """For each token, the index in `GROUPS` of the phrase it lies in, or `NO_GROUP`.

    `offsets[i]` is token i's `(char_start, char_end)`, as a fast tokenizer's `offset_mapping` gives.
    """
    ids = np.full(len(offsets), NO_GROUP, dtype=np.int8)  # [n_tokens]
    for token_span in token_spans(offsets, spans):
        ids[token_span.start : token_span.end] = GROUPS.index(token_span.group)
    return ids


def token_spans(offsets: Sequence[tuple[int, int]], spans: Sequence[PhraseSpan]) -> list[TokenSpan]:
    """Each phrase span as the range of tokens whose characters overlap it.

    A phrase that starts or ends inside a token (BPE merges across a phrase boundary) includes that
    token. A span that no token overlaps (text truncated before it) is dropped.
    """
    if not spans:
        return []
    offsets_arr = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)  # [n_tokens, 2]
    starts, ends = offsets_arr[:, 0], offsets_arr[:, 1]
    non_empty = ends > starts
    result = []
    for span in spans:
        overlaps = non_empty & (starts < span.end) & (ends > span.start)
        positions = np.flatnonzero(overlaps)
        if positions.size:
            result.append(TokenSpan(int(positions[0]), int(positions[-1]) + 1, span.group))
    return result
