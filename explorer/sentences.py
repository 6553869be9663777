"""A trace's sentences as character spans: Thought Anchors' segmentation rule, with a few repairs.

Thought Anchors (Bogdan, Macar, Nanda and Conmy 2025) split the thinking of a trace into sentences
("chunks"): inside `<think>...</think>`, a sentence ends at ".", "?" or "!" followed by a space or a
newline, or at a blank line. `segment` does the same and returns each sentence's span in the trace's
text, leading and trailing whitespace left out, so `text[start:end]` is the sentence.

The region that is segmented:
- from just after the first `<think>` (the prompt before it has no sentences); a trace without
  `<think>` is segmented from its start (a bare generation, or OpenR1-Math-220k's text without the tag);
- to the first `</think>` after that, or to the end of the trace when there is none (a truncated trace).
  **Text after `</think>` has no sentences**: the answer paragraph and `\\boxed{}` after the thinking are
  left out, as in Thought Anchors, so sentence scores and sentence tags are about the thinking only.

Where this differs from the plain rule (each is what a reader would call one sentence):
- abbreviations do not end a sentence: "e.g.", "i.e.", "Dr.", "Mr.", "vs.", "cf.", "approx." and the
  others in `ABBREVIATIONS` (matched case-insensitively, after a non-letter);
- a list item's number at the start of a line ("1. ") does not end a sentence, so
  "1. Multiply 3 by 4." is one sentence, not "1." and the rest;
- nothing inside `\\boxed{...}`, `\\( ... \\)`, `\\[ ... \\]` or `$$ ... $$` ends a sentence
  ("\\boxed{3. 5}", "\\[ x = 1. \\]" stay whole), except a blank line, which always does. Single `$` is not
  read as math: "$5. Then" is currency as often as it is math;
- closing quotes and brackets after the terminator stay with the sentence ('He said "no." Then' ends
  after the quote).
A decimal such as "3.5" never ends a sentence (the "." is not followed by whitespace), nor does a dot in
an equation such as "x = 2.5y". Terminators are ASCII, as in Thought Anchors; "…", "。" and other
scripts' full stops do not end a sentence. Offsets count Python characters (code points), like every
other span in a run (`explorer.labels`).

`SENTENCE_RULE_VERSION` is bumped whenever the same text is segmented differently; the stored
`corpus/sentences.parquet` records it and a stale or missing file is recomputed (`read_sentences`).
"""

from __future__ import annotations

import bisect
import re
from pathlib import Path
from typing import Collection, Iterable, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from explorer import artifacts
from explorer.prompts import THINK_CLOSE, THINK_OPEN
from explorer.runs import doc_id_filter, documents_path

SENTENCE_RULE_VERSION = 1
SENTENCE_COLUMNS = ("doc_id", "sentence_index", "start", "end")
RULE_VERSION_KEY = b"sentence_rule_version"
"""Parquet key-value metadata of `sentences.parquet`: the rule version it was made with."""
BATCH_ROWS = 256

ABBREVIATIONS: tuple[str, ...] = (
    "e.g.", "i.e.", "cf.", "vs.", "viz.", "approx.", "resp.", "et al.", "fig.", "figs.", "eq.", "eqs.",
    "dr.", "mr.", "mrs.", "ms.", "prof.", "st.", "jr.", "sr.",
)
"""Words whose final "." does not end a sentence ("etc." is not one: it ends sentences as often as not)."""

# A terminator, closing quotes or brackets, then whitespace; or a blank line.
_BOUNDARY = re.compile(r"[.?!][\"')\]}\u2019\u201d]*(?=\s)|\n[ \t\r\f\v]*\n")
_ABBREVIATION = re.compile(
    r"(?<![A-Za-z])(?:" + "|".join(re.escape(a) for a in ABBREVIATIONS) + r")$", re.IGNORECASE
)
_ENUMERATOR = re.compile(r"[ \t]*\d{1,3}\.")
"""A line that so far holds only a number and a dot: a list item's enumerator ("1. ")."""
_MATH_OPEN = re.compile(r"\\boxed\{|\\\(|\\\[|\$\$")
_MATH_CLOSE = {"\\(": "\\)", "\\[": "\\]", "$$": "$$"}


class Sentence(NamedTuple):
    """One sentence: `text[start:end]`."""

    start: int
    end: int


def think_region(text: str) -> tuple[int, int]:
    """The part of `text` that is segmented: after the first `<think>` (or from the start, without one),
    up to the first `</think>` after it (or to the end, without one)."""
    open_at = text.find(THINK_OPEN)
    start = 0 if open_at < 0 else open_at + len(THINK_OPEN)
    close_at = text.find(THINK_CLOSE, start)
    return start, len(text) if close_at < 0 else close_at


def _protected(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Character ranges of `text[start:end]` in which no terminator ends a sentence: `\\boxed{...}` (to its
    matching brace), `\\( \\)`, `\\[ \\]` and `$$ $$`. An unclosed one runs to the end of the region."""
    ranges = []
    position = start
    while True:
        match = _MATH_OPEN.search(text, position, end)
        if match is None:
            return ranges
        opener = match.group()
        if opener == "\\boxed{":
            depth, i = 1, match.end()
            while i < end and depth:
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                i += 1
            close = i
        else:
            found = text.find(_MATH_CLOSE[opener], match.end(), end)
            close = end if found < 0 else found + len(_MATH_CLOSE[opener])
        ranges.append((match.start(), close))
        position = close


def _is_boundary(text: str, match: re.Match[str], region_start: int, protected: list[tuple[int, int]]) -> bool:
    if match.group().startswith("\n"):
        return True  # a blank line always ends a sentence
    dot = match.start()
    inside = bisect.bisect_right(protected, (dot, len(text) + 1)) - 1  # the last range starting at or before it
    if inside >= 0 and dot < protected[inside][1]:
        return False
    if text[dot] != ".":
        return True
    if _ABBREVIATION.search(text, max(region_start, dot - 8), dot + 1):
        return False
    line_start = max(region_start, text.rfind("\n", 0, dot) + 1)
    return _ENUMERATOR.fullmatch(text, line_start, dot + 1) is None


def segment(text: str) -> list[Sentence]:
    """The sentences of a trace's thinking (see the module docstring), in order, as character spans."""
    region_start, region_end = think_region(text)
    protected = _protected(text, region_start, region_end)
    sentences = []
    piece_start = region_start
    for match in _BOUNDARY.finditer(text, region_start, region_end):
        if not _is_boundary(text, match, region_start, protected):
            continue
        _append_stripped(text, piece_start, match.end(), sentences)
        piece_start = match.end()
    _append_stripped(text, piece_start, region_end, sentences)
    return sentences


def _append_stripped(text: str, start: int, end: int, sentences: list[Sentence]) -> None:
    piece = text[start:end]
    stripped = piece.strip()
    if stripped:
        lead = len(piece) - len(piece.lstrip())
        sentences.append(Sentence(start + lead, start + lead + len(stripped)))


def sentences_frame(documents: Iterable[tuple[str, str]]) -> pd.DataFrame:
    """The sentences of `(doc_id, text)` pairs: doc_id, sentence_index (from 0 in each document), start,
    end."""
    doc_ids: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    counts: list[int] = []
    for doc_id, text in documents:
        spans = segment(text)
        doc_ids.append(doc_id)
        counts.append(len(spans))
        starts.extend(s.start for s in spans)
        ends.extend(s.end for s in spans)
    counts_arr = np.asarray(counts, dtype=np.int64)
    index = np.arange(int(counts_arr.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts_arr) - counts_arr, counts_arr)
    return pd.DataFrame(
        {
            "doc_id": np.repeat(np.asarray(doc_ids, dtype=object), counts_arr),
            "sentence_index": index.astype(np.int32),
            "start": np.asarray(starts, dtype=np.int64),
            "end": np.asarray(ends, dtype=np.int64),
        },
        columns=list(SENTENCE_COLUMNS),
    )


def sentences_path(run_dir: Path) -> Path:
    return Path(run_dir) / artifacts.CORPUS_DIR / artifacts.SENTENCES_FILE


def iter_document_texts(run_dir: Path) -> Iterable[tuple[str, str]]:
    """Every document of the run as `(doc_id, text)`, in corpus order, a row group's worth at a time."""

    parquet = pq.ParquetFile(documents_path(run_dir))
    for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=["doc_id", "text"]):
        yield from zip(batch.column("doc_id").to_pylist(), batch.column("text").to_pylist())


def compute_sentences(run_dir: Path) -> pd.DataFrame:
    """Segment every document of the run (what `read_sentences` does when the stored file is missing)."""
    return sentences_frame(iter_document_texts(run_dir))


def stored_rule_version(path: Path) -> int | None:
    """The rule version `sentences.parquet` at `path` was made with, or None when there is none."""
    if not path.is_file():
        return None
    metadata = pq.read_schema(path).metadata or {}
    value = metadata.get(RULE_VERSION_KEY)
    return int(value) if value is not None else None


def sentences_are_current(run_dir: Path) -> bool:
    return stored_rule_version(sentences_path(run_dir)) == SENTENCE_RULE_VERSION


def read_sentences(run_dir: Path, doc_ids: Collection[str] | None = None) -> pd.DataFrame:
    """The run's sentences: doc_id, sentence_index, start, end (character offsets into the document's text);
    with `doc_ids`, only those documents'.

    Read from `corpus/sentences.parquet`, which the corpus stage writes. A run built before sentences
    existed, or with an older segmentation rule, has them computed from `documents.parquet` here (a few
    seconds for the demo's 20,000 traces; `python -m precompute labels --out RUN --list` stores them).
    """
    if sentences_are_current(run_dir):
        return pd.read_parquet(sentences_path(run_dir), filters=doc_id_filter(doc_ids))
    frame = compute_sentences(run_dir)
    return frame if doc_ids is None else frame[frame["doc_id"].isin(set(doc_ids))].reset_index(drop=True)


def sentences_table(frame: pd.DataFrame) -> pa.Table:
    """`frame` as the Arrow table `sentences.parquet` holds, with the rule version in its metadata."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return table.replace_schema_metadata({**(table.schema.metadata or {}), RULE_VERSION_KEY: str(SENTENCE_RULE_VERSION)})
