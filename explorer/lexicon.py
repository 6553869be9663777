"""The backtracking phrase lexicon: the original notebook's six groups plus bare interjections.

The six groups are the notebook's `utils` lists, phrase for phrase and in its order (lower case; 74
phrases, two of them in two lists). `tests/test_labels.py` compares them with a copy typed from the
notebook, so an edit here cannot drift silently. The notebook's `has_backtracking` is true when any of
these phrases is a substring of the lower-cased trace (`explorer.labels.notebook_has_backtracking`).

`interjection` is not in the notebook's lexicon. These bare markers are what ReasonScore and most
backtracking work key on ("Wait", "Hmm", "Alternatively"). They are labelled as their own group, and
`has_backtracking` in the notebook's sense ignores them (see `NOTEBOOK_GROUPS`).
"""

from __future__ import annotations

MISTAKE = (
    "i made a mistake",
    "let me recalculate",
    "that's not right",
    "i need to correct",
    "let's try again",
    "i think i went wrong",
    "let's try another approach",
    "actually, i should",
    "wait, that's incorrect",
    "let me rethink",
    "on second thought",
    "i need to backtrack",
    "let me restart",
    "i made an error",
    "i think i made a mistake",
    "i think i made an error",
    "that doesn't seem right",
    "actually, i made a mistake in my calculation",
)

CORRECTION = (
    "hmm, that's not",
    "hmm, that doesn't",
    "hmm, this doesn't",
    "wait, that's not",
    "wait, that is not",
    "wait, this is not",
    "wait, that doesn't",
    "wait, that does not",
    "wait, this doesn't",
    "wait, this does not",
    "actually, that's not",
    "actually, that doesn't",
    "actually, this doesn't",
    "oh, that's not",
    "oh, that doesn't",
    "oh, this doesn't",
    "wait, that's not quite right",
)

RECONSIDERATION = (
    "let me reconsider",
    "let me think again",
    "on second thought",
    "let's reconsider",
    "let's think again",
    "thinking again",
    "reconsidering",
    "rethinking",
    "wait, let's determine",
    "hmm, wait, let me check",
    "hmm, i think i misunderstood the question",
)

MISCALCULATION = (
    "i made a calculation error",
    "i made a computational error",
    "i made an arithmetic error",
    "i miscalculated",
    "i miscounted",
    "i misunderstood",
    "i misinterpreted",
)

DOUBT = (
    "i'm not sure if",
    "i'm not convinced",
    "i'm skeptical",
    "i'm doubtful",
    "i'm uncertain",
    "i'm not confident",
    "i'm hesitant",
    "i'm not sure about",
    "i'm not certain",
)

MATH_CORRECTION = (
    "let me redo this calculation",
    "let me recalculate",
    "i need to redo",
    "i should redo",
    "i'll redo",
    "i must redo",
    "let me solve this again",
    "let me solve this differently",
    "let me approach this differently",
    "let me try a different approach",
    "actually, let me double-check",
    "wait, let me double-check",
)

INTERJECTION = (
    "wait",
    "hmm",
    "alternatively",
    "hold on",
    "oops",
)

# Order matters: it is the priority used when one phrase belongs to two groups
# ("on second thought" is in mistake and reconsideration, "let me recalculate" in mistake and
# math_correction; the earlier group wins, as the notebook listed them).
LEXICON: dict[str, tuple[str, ...]] = {
    "mistake": MISTAKE,
    "correction": CORRECTION,
    "reconsideration": RECONSIDERATION,
    "miscalculation": MISCALCULATION,
    "doubt": DOUBT,
    "math_correction": MATH_CORRECTION,
    "interjection": INTERJECTION,
}

GROUPS: tuple[str, ...] = tuple(LEXICON)
NOTEBOOK_GROUPS: tuple[str, ...] = GROUPS[:6]
NOTEBOOK_PHRASES: tuple[str, ...] = tuple(dict.fromkeys(p for g in NOTEBOOK_GROUPS for p in LEXICON[g]))
"""Every phrase of the notebook's six lists, once each (72 distinct phrases)."""


def phrase_group(phrase: str) -> str:
    """The group a phrase is labelled with: the first group (in `GROUPS` order) that lists it."""
    key = phrase.lower()
    for group, phrases in LEXICON.items():
        if key in phrases:
            return group
    raise KeyError(f"{phrase!r} is not in the backtracking lexicon")
