"""Label sets: named sets of character spans of a run's traces that are positive for a label.

A label set marks spans of traces as positive. Its `kind` says what it is about:
- `span`: the spans themselves (the lexicon's phrases, a phrase list's or a regular expression's
  matches);
- `sentence`: whole sentences (a labeller's sentence tags); its spans are the positive sentences'.

Every run has the built-in sets, computed from its corpus (`corpus/phrases.parquet`, `corpus/sentences.parquet`)
and never stored:
- `backtracking`: the notebook's six groups together (the lexicon's label, `has_backtracking`'s phrases);
- `group:<group>`: each lexicon group, `group:interjection` (bare "Wait", "Hmm", ...) included;
- `sentence:backtracking`: the sentences that contain a phrase of the six groups;
- `sentence:any_phrase`: the sentences that contain any lexicon phrase, interjections included.

Imported and user-defined sets are stored in `corpus/label_sets/` (written by `precompute.label_store`,
`python -m precompute labels`): one folder per set holding `label_set.json` (name, kind, source,
description, counts), `spans.parquet` (doc_id, start, end) and `documents.parquet` (doc_id: the documents
the set labels, positives and negatives; a labeller that tagged 40 traces says nothing about the rest).

Sentence-level reading (`sentence_positives`), the rule every consumer shares: a sentence of the run's
segmentation (`explorer.sentences`) is positive for a `span` set when a positive span overlaps it by at least
one character, and for a `sentence` set when the set's spans cover at least half of its characters (so a
labeller's sentence that straddles two of ours marks the one it mostly covers, and both when it covers
both; where the labeller used this segmentation, as the demo's tags do, it is exact).

Imports (sentence tags, phrase lists, regular expressions) are made by `explorer.label_import`.
`read_sentences` (the run's sentences, `explorer.sentences`) can be imported from here too.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Sequence

import numpy as np
import pandas as pd

from explorer import artifacts
from explorer.errors import ExplorerError
from explorer.lexicon import GROUPS, NOTEBOOK_GROUPS
from explorer.sentences import read_sentences
from explorer.runs import doc_id_filter, read_documents
from explorer.runs import read_phrases

SPAN = "span"
SENTENCE = "sentence"
KINDS = (SPAN, SENTENCE)
BUILT_IN = "built-in"
"""The `source` of the built-in sets."""
SET_FILE = "label_set.json"
SPANS_FILE = "spans.parquet"
COVERAGE_FILE = "documents.parquet"
SPAN_COLUMNS = ["doc_id", "start", "end"]
FORMAT_VERSION = 1

BACKTRACKING = "backtracking"
GROUP_PREFIX = "group:"
SENTENCE_PREFIX = "sentence:"
SENTENCE_BACKTRACKING = "sentence:backtracking"
SENTENCE_ANY_PHRASE = "sentence:any_phrase"
RESERVED_NAMES = ("backtracking", "group", "sentence")
"""Names a user set may not take (nor, for tag imports, use as their prefix): the built-ins'."""
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
"""A user set's name, and a tag import's prefix: letters, digits, `_ . + -` (no `:`, no glob characters)."""

THOUGHT_ANCHORS_TAGS: tuple[str, ...] = (
    "problem_setup",
    "plan_generation",
    "fact_retrieval",
    "active_computation",
    "uncertainty_management",
    "result_consolidation",
    "self_checking",
    "final_answer_emission",
)
"""The sentence-function taxonomy of Thought Anchors (Bogdan, Macar, Nanda and Conmy 2025); backtracking
lives in `uncertainty_management`. Imports accept any tag; the synthetic generator uses these."""


class LabelSetError(ExplorerError, ValueError):
    """Bad label-set input or a missing label set; the message says what and where."""


@dataclass(frozen=True)
class LabelSet:
    """A label set's identity. `kind` is "span" or "sentence"; `source` says where it came from
    ("built-in", "jsonl: tags.jsonl", "phrases: my_phrases.txt", ...)."""

    name: str
    kind: str
    source: str
    description: str


@dataclass
class LabelSetData:
    """A label set with its content, as an import makes it before it is stored."""

    label_set: LabelSet
    spans: pd.DataFrame
    """doc_id, start, end: the positive spans."""
    documents: list[str]
    """The documents it labels (its positives lie in these; every other span of these is negative)."""
    details: dict[str, Any] = field(default_factory=dict)
    """Anything else worth keeping in label_set.json (e.g. the import's counts)."""


# ----------------------------------------------------------------------------------------------------
# Built-in sets


def builtin_label_sets() -> dict[str, LabelSet]:
    sets = {
        BACKTRACKING: LabelSet(
            BACKTRACKING, SPAN, BUILT_IN,
            "phrases of the notebook's six lexicon groups (the lexicon's backtracking label)",
        )
    }
    for group in GROUPS:
        what = "bare interjections (wait, hmm, alternatively, hold on, oops)" if group not in NOTEBOOK_GROUPS else (
            f"phrases of the lexicon group {group!r}"
        )
        sets[GROUP_PREFIX + group] = LabelSet(GROUP_PREFIX + group, SPAN, BUILT_IN, what)
    sets[SENTENCE_BACKTRACKING] = LabelSet(
        SENTENCE_BACKTRACKING, SENTENCE, BUILT_IN, "sentences that contain a phrase of the notebook's six groups"
    )
    sets[SENTENCE_ANY_PHRASE] = LabelSet(
        SENTENCE_ANY_PHRASE, SENTENCE, BUILT_IN, "sentences that contain any lexicon phrase, interjections included"
    )
    return sets


def _builtin_spans(run_dir: Path, name: str, doc_ids: Collection[str] | None = None) -> pd.DataFrame:

    phrases = read_phrases(run_dir, doc_ids=doc_ids)
    if name == BACKTRACKING or name == SENTENCE_BACKTRACKING:
        phrases = phrases[phrases["group"].isin(NOTEBOOK_GROUPS)]
    elif name.startswith(GROUP_PREFIX):
        phrases = phrases[phrases["group"] == name[len(GROUP_PREFIX) :]]
    spans = as_spans(phrases)
    if name.startswith(SENTENCE_PREFIX):  # the sentences those phrases lie in
        sentences = read_sentences(run_dir, doc_ids)
        spans = as_spans(sentences[sentence_positives(sentences, spans, SPAN)])
    return spans


# ----------------------------------------------------------------------------------------------------
# Stored sets


def label_sets_dir(run_dir: Path) -> Path:
    return Path(run_dir) / artifacts.CORPUS_DIR / artifacts.LABEL_SETS_DIR


def set_folder_name(name: str) -> str:
    """The folder a stored set lives in: its name with `:` and anything unusual made safe, plus a short hash
    of the name (so two names never share a folder)."""
    import hashlib

    safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", name)[:80]
    return f"{safe}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def _read_set_json(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / SET_FILE).read_text(encoding="utf-8"))
        LabelSet(**{k: data[k] for k in ("name", "kind", "source", "description")})
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise LabelSetError(
            f"{folder / SET_FILE} is unreadable ({err}); remove that folder, or the set with "
            f"`python -m precompute labels --remove NAME`, and add it again."
        ) from err
    return data


def stored_label_sets(run_dir: Path) -> dict[str, tuple[LabelSet, Path, dict[str, Any]]]:
    """The run's stored sets by name: the set, its folder and its label_set.json."""
    root = label_sets_dir(run_dir)
    if not root.is_dir():
        return {}
    found = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        data = _read_set_json(folder)
        found[data["name"]] = (LabelSet(data["name"], data["kind"], data["source"], data["description"]), folder, data)
    return found


def read_label_sets(run_dir: Path) -> dict[str, LabelSet]:
    """Every label set of the run by name: the built-in ones first, then the stored ones by name."""
    return {**builtin_label_sets(), **{name: entry[0] for name, entry in stored_label_sets(run_dir).items()}}


def _unknown(run_dir: Path, name: str) -> LabelSetError:
    known = ", ".join(read_label_sets(run_dir))
    return LabelSetError(f"No label set {name!r} in {run_dir}. It has: {known}.")


def read_label_spans(run_dir: Path, name: str, doc_ids: Collection[str] | None = None) -> pd.DataFrame:
    """The positive spans of label set `name`: doc_id, start, end (character offsets into the document's
    text), sorted. For a sentence set, the spans of its positive sentences. With `doc_ids`, only those
    documents' spans are read."""
    if name in builtin_label_sets():
        return _builtin_spans(run_dir, name, doc_ids)
    stored = stored_label_sets(run_dir)
    if name not in stored:
        raise _unknown(run_dir, name)
    return as_spans(pd.read_parquet(stored[name][1] / SPANS_FILE, filters=doc_id_filter(doc_ids)))


def read_label_documents(run_dir: Path, name: str, doc_ids: Collection[str] | None = None) -> list[str]:
    """The documents label set `name` labels (every document of the run, for a built-in set), of `doc_ids`
    when given. Outside these a set says nothing: score it on these documents only."""
    if name in builtin_label_sets():
        return read_documents(run_dir, columns=["doc_id"], doc_ids=doc_ids)["doc_id"].tolist()
    stored = stored_label_sets(run_dir)
    if name not in stored:
        raise _unknown(run_dir, name)
    return pd.read_parquet(stored[name][1] / COVERAGE_FILE, filters=doc_id_filter(doc_ids))["doc_id"].tolist()


def read_sentence_labels(
    run_dir: Path, name: str, sentences: pd.DataFrame | None = None, doc_ids: Collection[str] | None = None
) -> pd.DataFrame:
    """The run's sentences in the documents set `name` labels, with `positive` (`sentence_positives`'s
    rule): doc_id, sentence_index, start, end, positive. With `doc_ids`, only those documents' (then
    `sentences`, when given, should be theirs too)."""
    sets = read_label_sets(run_dir)
    if name not in sets:
        raise _unknown(run_dir, name)
    sentences = read_sentences(run_dir, doc_ids) if sentences is None else sentences
    covered = sentences[sentences["doc_id"].isin(read_label_documents(run_dir, name, doc_ids))].reset_index(drop=True)
    covered["positive"] = sentence_positives(covered, read_label_spans(run_dir, name, doc_ids), sets[name].kind)
    return covered


# ----------------------------------------------------------------------------------------------------
# Interval arithmetic on spans of many documents


def as_spans(frame: pd.DataFrame) -> pd.DataFrame:
    spans = frame[SPAN_COLUMNS].astype({"doc_id": str, "start": "int64", "end": "int64"})
    return spans.sort_values(["doc_id", "start", "end"], kind="stable").reset_index(drop=True)


_STRIDE = np.int64(1) << np.int64(40)
"""Documents are laid end to end on one line, each `_STRIDE` characters apart."""


def on_line(frames: Sequence[pd.DataFrame]) -> tuple[pd.Index, list[tuple[np.ndarray, np.ndarray]]]:
    """Each frame's spans as positions on one line shared by all frames: document `ids[i]` starts at
    i * _STRIDE. Returns the ids and, per frame, its spans' starts and ends."""
    ids = pd.Index(pd.unique(np.concatenate([f["doc_id"].to_numpy(dtype=object) for f in frames])))
    result = []
    for frame in frames:
        offset = ids.get_indexer(frame["doc_id"].to_numpy(dtype=object)).astype(np.int64) * _STRIDE
        result.append((offset + frame["start"].to_numpy(np.int64), offset + frame["end"].to_numpy(np.int64)))
    return ids, result


def off_line(ids: pd.Index, starts: np.ndarray, ends: np.ndarray) -> pd.DataFrame:
    """Spans on the line of `on_line` back as doc_id, start, end."""
    doc = starts // _STRIDE
    return pd.DataFrame({"doc_id": ids[doc].to_numpy(dtype=object), "start": starts - doc * _STRIDE, "end": ends - doc * _STRIDE})


def union(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, disjoint intervals covering exactly what the given intervals cover."""
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    if not starts.size:
        return starts, ends
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    reach = np.maximum.accumulate(ends)
    new = np.ones(starts.size, dtype=bool)
    new[1:] = starts[1:] > reach[:-1]
    group = np.cumsum(new) - 1
    merged_ends = np.zeros(int(group[-1]) + 1, dtype=np.int64)
    np.maximum.at(merged_ends, group, ends)
    return starts[new], merged_ends


def _covered_length(query_starts, query_ends, union_starts, union_ends) -> np.ndarray:
    """For each query interval, how many of its characters the (disjoint, sorted) union covers."""
    if not union_starts.size:
        return np.zeros(len(query_starts), dtype=np.int64)
    cumulative = np.concatenate([[0], np.cumsum(union_ends - union_starts)])

    def covered_before(x: np.ndarray) -> np.ndarray:
        i = np.searchsorted(union_starts, x, side="right") - 1
        inside = np.clip(x - union_starts[np.maximum(i, 0)], 0, (union_ends - union_starts)[np.maximum(i, 0)])
        return np.where(i >= 0, cumulative[np.maximum(i, 0)] + inside, 0)

    return covered_before(np.asarray(query_ends)) - covered_before(np.asarray(query_starts))


def sentence_positives(sentences: pd.DataFrame, spans: pd.DataFrame, kind: str) -> np.ndarray:
    """For each row of `sentences` (doc_id, start, end), whether it is positive for a set of `kind` with
    positive `spans`: any overlap for a span set, at least half its characters covered for a sentence set."""
    _, [(sentence_starts, sentence_ends), (span_starts, span_ends)] = on_line([sentences, spans])
    covered = _covered_length(sentence_starts, sentence_ends, *union(span_starts, span_ends))
    if kind == SPAN:
        return covered > 0
    return (covered > 0) & (2 * covered >= sentence_ends - sentence_starts)


def spans_hit(spans: pd.DataFrame, others: pd.DataFrame) -> np.ndarray:
    """For each span of `spans`, whether a span of `others` overlaps it."""
    _, [(starts, ends), (other_starts, other_ends)] = on_line([spans, others])
    return _covered_length(starts, ends, *union(other_starts, other_ends)) > 0


# ----------------------------------------------------------------------------------------------------
# Agreement


def expand_names(run_dir: Path, pattern: str, sets: dict[str, LabelSet] | None = None) -> list[str]:
    """The set names `pattern` stands for: itself, or every name it matches as a glob (`tag:*`, `group:*`)."""
    sets = read_label_sets(run_dir) if sets is None else sets
    if pattern in sets:
        return [pattern]
    matches = [name for name in sets if fnmatch.fnmatchcase(name, pattern)]
    if not matches:
        raise _unknown(run_dir, pattern)
    return matches


def compare_label_sets(run_dir: Path, a: str, b: str, unit: str | None = None) -> pd.DataFrame:
    """Precision and recall of label set(s) `a` against `b`, the reference: one row per pair.

    `a` and `b` are names or globs (`group:*` gives a row per lexicon group, `tag:*` one per tag). Only the
    documents both sets label count. The unit (docs/labels.md, "Agreement"):
    - `sentence` (the default unless both are span sets): the run's sentences, each positive or not for each
      set (`sentence_positives`); precision = sentences positive for both / positive for `a`, recall = the
      same / positive for `b`;
    - `span` (the default for two span sets): a span of `a` counts as found when a span of `b` overlaps it;
      precision = `a`'s spans that a `b` span overlaps / `a`'s spans, recall = `b`'s spans that an `a` span
      overlaps / `b`'s spans.

    Columns: a, b, unit, n_documents, n_a, n_b, n_a_in_b, n_b_in_a, precision, recall (NaN when undefined).
    """
    if unit not in (None, SPAN, SENTENCE):
        raise LabelSetError(f"Unknown unit {unit!r}: use {SPAN!r} or {SENTENCE!r}.")
    sets = read_label_sets(run_dir)
    names_a, names_b = expand_names(run_dir, a, sets), expand_names(run_dir, b, sets)
    cache: dict[str, tuple[pd.DataFrame, set[str]]] = {}

    def content(name: str) -> tuple[pd.DataFrame, set[str]]:
        if name not in cache:
            cache[name] = (read_label_spans(run_dir, name), set(read_label_documents(run_dir, name)))
        return cache[name]

    sentences: pd.DataFrame | None = None
    rows = []
    for name_a in names_a:
        for name_b in names_b:
            pair_unit = unit or (SPAN if sets[name_a].kind == SPAN and sets[name_b].kind == SPAN else SENTENCE)
            (spans_a, docs_a), (spans_b, docs_b) = content(name_a), content(name_b)
            shared = docs_a & docs_b
            spans_a, spans_b = spans_a[spans_a["doc_id"].isin(shared)], spans_b[spans_b["doc_id"].isin(shared)]
            if pair_unit == SENTENCE:
                if sentences is None:
                    sentences = read_sentences(run_dir)
                units = sentences[sentences["doc_id"].isin(shared)]
                positive_a = sentence_positives(units, spans_a, sets[name_a].kind)
                positive_b = sentence_positives(units, spans_b, sets[name_b].kind)
                n_a, n_b = int(positive_a.sum()), int(positive_b.sum())
                n_a_in_b = n_b_in_a = int((positive_a & positive_b).sum())
            else:
                n_a, n_b = len(spans_a), len(spans_b)
                n_a_in_b, n_b_in_a = int(spans_hit(spans_a, spans_b).sum()), int(spans_hit(spans_b, spans_a).sum())
            rows.append(
                {
                    "a": name_a, "b": name_b, "unit": pair_unit, "n_documents": len(shared),
                    "n_a": n_a, "n_b": n_b, "n_a_in_b": n_a_in_b, "n_b_in_a": n_b_in_a,
                    "precision": n_a_in_b / n_a if n_a else float("nan"),
                    "recall": n_b_in_a / n_b if n_b else float("nan"),
                }
            )
    return pd.DataFrame(rows)


def check_name(name: str) -> None:
    """A user set's name (or a tag import's prefix) must be plain and not a built-in's."""
    if not NAME_PATTERN.fullmatch(name or ""):
        raise LabelSetError(
            f"Bad label set name {name!r}: use letters, digits and `_ . + -` (a tag import adds `:<tag>` itself)."
        )
    if name in RESERVED_NAMES:
        raise LabelSetError(f"{name!r} is a built-in label set's name (or prefix); choose another name.")


def document_sentence_tags(run_dir: Path, doc_id: str) -> pd.DataFrame:
    """One document's sentences with the label sets each is positive for (`sentence_positives`'s rule),
    among the sets that label the document: sentence_index, start, end, tags (a list of set names)."""
    sentences = read_sentences(run_dir)
    mine = sentences[sentences["doc_id"] == doc_id].sort_values("sentence_index").reset_index(drop=True)
    tags: list[list[str]] = [[] for _ in range(len(mine))]
    for name, label_set in read_label_sets(run_dir).items():
        if mine.empty or doc_id not in set(read_label_documents(run_dir, name)):
            continue
        spans = read_label_spans(run_dir, name)
        positive = sentence_positives(mine, spans[spans["doc_id"] == doc_id], label_set.kind)
        for i in np.flatnonzero(positive):
            tags[i].append(name)
    return mine.assign(tags=tags)[["sentence_index", "start", "end", "tags"]]
