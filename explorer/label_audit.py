"""Compare the notebook's document label with a corpus's own `has_backtracking` field, and with the
same lexicon matched on word boundaries.

Imported corpora (the notebook's JSON) often carry their own `has_backtracking`, made by another
rule or by hand. Where the two disagree, each case gets a sentence that says why, so a user can judge
which to trust. The notebook matched substrings, so "Actually, I shouldn't" counts as backtracking
("actually, i should"); `boundary_differences` lists the documents where that is all there is.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

from explorer.labels import PhraseSpan, label_text, notebook_has_backtracking, word_boundary_has_backtracking
from explorer.lexicon import NOTEBOOK_GROUPS
from explorer.records import TraceRecord


class LabelAgreement(NamedTuple):
    """How the lexicon's document labels compare with the source's over one corpus."""

    n_with_source_label: int
    n_agree: int
    disagreements: tuple["LabelDisagreement", ...]


class LabelDisagreement(NamedTuple):
    doc_id: str
    source_has_backtracking: bool
    lexicon_has_backtracking: bool
    explanation: str


def _quote(text: str, start: int, end: int, margin: int = 25) -> str:
    left = max(0, start - margin)
    right = min(len(text), end + margin)
    return ("…" if left else "") + text[left:right].replace("\n", " ") + ("…" if right < len(text) else "")


def explain_disagreement(record: TraceRecord, spans: Sequence[PhraseSpan]) -> str:
    """Why the lexicon and the source disagree on this record (assumes they do)."""
    notebook_spans = [s for s in spans if s.group in NOTEBOOK_GROUPS]
    if notebook_spans:
        found = "; ".join(f"{s.group} {record.text[s.start:s.end]!r} in {_quote(record.text, s.start, s.end)!r}" for s in notebook_spans)
        return f"the source says no backtracking, but the lexicon finds {found}"
    source_phrase = str(record.metadata.get("backtracking_phrase") or "").strip()
    reason = "the source says backtracking"
    if source_phrase:
        reason += f" (its phrase: {source_phrase!r})"
        if label_text(source_phrase):
            inner = ", ".join(f"{s.group} {s.phrase!r}" for s in label_text(source_phrase))
            reason += f", which contains only {inner}, outside the notebook's six groups"
        else:
            reason += ", which is not a phrase of the notebook's lexicon"
    interjections = [record.text[s.start:s.end] for s in spans if s.group not in NOTEBOOK_GROUPS]
    if interjections:
        reason += f"; the text has interjections only ({', '.join(repr(i) for i in interjections)})"
    else:
        reason += "; the text has no lexicon phrase at all"
    return reason


def audit_against_source(records: Sequence[TraceRecord], spans_by_doc: dict[str, Sequence[PhraseSpan]]) -> LabelAgreement:
    """Compare the notebook's `has_backtracking` (its substring rule) with each record's own field.

    Records without a boolean `has_backtracking` in their metadata are not counted.
    """
    n_labelled = n_agree = 0
    disagreements = []
    for record in records:
        source_label = record.metadata.get("has_backtracking")
        if not isinstance(source_label, bool):
            continue
        n_labelled += 1
        spans = spans_by_doc.get(record.doc_id, ())
        lexicon_label = notebook_has_backtracking(record.text)
        if lexicon_label == source_label:
            n_agree += 1
        else:
            disagreements.append(
                LabelDisagreement(record.doc_id, source_label, lexicon_label, explain_disagreement(record, spans))
            )
    return LabelAgreement(n_labelled, n_agree, tuple(disagreements))


class BoundaryDifference(NamedTuple):
    """A document the notebook's substring rule calls backtracking but word-boundary matching does not."""

    doc_id: str
    quotes: tuple[str, ...]
    """Each notebook phrase found inside a longer word, with some context."""


def boundary_differences(records: Sequence[TraceRecord], spans_by_doc: dict[str, Sequence[PhraseSpan]]) -> list[BoundaryDifference]:
    """The documents whose notebook label rests only on phrases inside longer words."""
    differences = []
    for record in records:
        text = record.text
        if not notebook_has_backtracking(text) or word_boundary_has_backtracking(text):  # the cheap test first
            continue
        inside = [
            s for s in spans_by_doc.get(record.doc_id, ())
            if s.group in NOTEBOOK_GROUPS
            and ((s.start > 0 and text[s.start - 1].isalnum()) or (s.end < len(text) and text[s.end].isalnum()))
        ]
        differences.append(BoundaryDifference(record.doc_id, tuple(_quote(text, s.start, s.end) for s in inside)))
    return differences
