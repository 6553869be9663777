"""Backtracking labels: lexicon phrases as character spans, and their token positions.

Matching rule (docs/labels.md says why):
- **the notebook's six groups** match as the notebook matched them: case-insensitive substrings of
  the trace (straight apostrophes, as written in the lists; no word boundaries), so a document has a
  span from the six groups exactly when the notebook's `has_backtracking` is true
  (`notebook_has_backtracking`);
- **interjections** match case-insensitively on word boundaries ("wait" does not fire inside "await")
  and only where no notebook phrase is: "Hmm, wait, let me check" is one `reconsideration` span, and
  "hold on second thought" keeps its `mistake` span ("on second thought");
- overlaps among the six groups are resolved leftmost-longest: scanning left to right, at each position
  the longest phrase that matches there wins, and scanning resumes after it. So "Wait, that's not right"
  is one `correction` span ("Wait, that's not"), not also a `mistake` span ("that's not right");
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

from explorer.lexicon import GROUPS, LEXICON, NOTEBOOK_GROUPS, NOTEBOOK_PHRASES, phrase_group

LABEL_RULE_VERSION = 2
"""Bumped when the same lexicon labels a text differently (2: the notebook's substring rule for its six
groups, interjections only where no notebook phrase is); part of the corpus stage's config."""
NO_GROUP = -1
"""Value of a token's group index when it lies in no backtracking phrase."""
WORD_BOUNDARY_GROUPS: tuple[str, ...] = tuple(g for g in GROUPS if g not in NOTEBOOK_GROUPS)
"""Groups matched on word boundaries (the interjections); the notebook's groups match as substrings."""


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


def _word_pattern(phrase: str) -> str:
    """The phrase, ending on a word boundary (the start's boundary is checked once, before the alternation)."""
    tail = r"(?!\w)" if phrase[-1].isalnum() else ""
    return re.escape(phrase) + tail


def _alternation(phrases: Sequence[str], word_boundaries: bool) -> tuple[re.Pattern[str], tuple[str, ...]]:
    """One regex for `phrases` (lower case, matched against lower-cased text), longest first, so at
    any position the longest phrase that matches there wins."""
    ordered = tuple(sorted(set(phrases), key=lambda p: (-len(p), p)))
    body = "|".join(
        f"(?P<p{i}>{_word_pattern(p) if word_boundaries else re.escape(p)})" for i, p in enumerate(ordered)
    )
    # A look-ahead on the possible first letters rejects most positions before the alternation is tried.
    first_letters = re.escape("".join(sorted({p[0] for p in ordered})))
    assert all(p[0].isalpha() for p in ordered), "every phrase starts with a letter (the boundary below)"
    start = r"(?<!\w)" if word_boundaries else ""
    return re.compile(rf"{start}(?=[{first_letters}])(?:{body})"), ordered


@lru_cache(maxsize=None)
def _regex(groups: tuple[str, ...], word_boundaries: bool) -> tuple[re.Pattern[str], tuple[str, ...]]:
    return _alternation([p for g in groups for p in LEXICON[g]], word_boundaries)


def _lowered(text: str) -> tuple[str, list[int] | None]:
    """`text` lower-cased as the notebook did (`str.lower`), and where each of its characters came from
    (None when lower-casing kept every character in place, as it does for all but a few letters such
    as "İ")."""
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered, None
    pieces = [c.lower() for c in text]
    origin = [i for i, piece in enumerate(pieces) for _ in piece] + [len(text)]
    return "".join(pieces), origin


def _matches(text: str, groups: tuple[str, ...], word_boundaries: bool) -> list[PhraseSpan]:
    regex, phrases = _regex(groups, word_boundaries)
    lowered, origin = _lowered(text)
    spans = []
    for match in regex.finditer(lowered):
        phrase = phrases[int(match.lastgroup[1:])]
        start, end = match.span() if origin is None else (origin[match.start()], origin[match.end()])
        spans.append(PhraseSpan(start, end, phrase_group(phrase), phrase))
    return spans


def label_text(text: str) -> list[PhraseSpan]:
    """All backtracking phrases in `text`, as non-overlapping spans in text order."""
    spans = _matches(text, NOTEBOOK_GROUPS, word_boundaries=False)
    words = _matches(text, WORD_BOUNDARY_GROUPS, word_boundaries=True)
    if not spans:
        return words
    starts = np.array([s.start for s in spans])
    ends = np.array([s.end for s in spans])
    spans += [w for w in words if not np.any((starts < w.end) & (ends > w.start))]
    return sorted(spans)


def notebook_has_backtracking(text: str) -> bool:
    """The notebook's own document label, exactly: a phrase of its six lists is a substring of the
    lower-cased text. `label_text` finds a span of the six groups exactly when this is true."""
    lowered = text.lower()
    return any(phrase in lowered for phrase in NOTEBOOK_PHRASES)


def word_boundary_has_backtracking(text: str) -> bool:
    """The six lists matched on word boundaries instead: false where a phrase only occurs inside a
    longer word ("Actually, I shouldn't" holds "actually, i should"). `precompute corpus` reports the
    documents where this differs from the notebook's rule."""
    regex, _ = _regex(NOTEBOOK_GROUPS, True)
    return regex.search(_lowered(text)[0]) is not None


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
