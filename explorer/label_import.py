"""Making label sets: sentence tags from a labeller (JSONL, or Thought Anchors' folders), phrase lists and
regular expressions. Nothing here writes: `precompute.label_store` stores what these return.

Sentence tags (docs/labels.md gives the JSONL format with an example):
- a trace maps to the run's document whose `doc_id` is its trace id; failing that, to the document whose
  text, ignoring whitespace, equals the trace's text, or else contains it or is contained in it (the
  shorter at least half the longer);
- a sentence given by `text` is found in that document ignoring whitespace, searching on from the previous
  sentence (then from the start), so a labeller's re-spaced or re-wrapped sentence still lands; one given by
  `start`/`end` counts characters of the trace's `text` (of the document's, without one); one given by
  `index` is that sentence of the run's segmentation (`explorer.sentences`);
- each tag becomes a sentence set `<prefix>:<tag>` over the documents the traces map to.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from explorer.label_sets import (
    SENTENCE,
    SPAN,
    SPAN_COLUMNS,
    LabelSet,
    LabelSetData,
    LabelSetError,
    as_spans,
    off_line,
    on_line,
    union,
    check_name,
)
from explorer.sentences import iter_document_texts, segment, think_region
from explorer.runs import read_document_texts
from explorer.runs import read_documents

TAG_PATTERN = re.compile(r"[\w.+-]+")
"""A tag: letters (any script), digits and `_ . + -`."""


@dataclass
class TaggedSentence:
    """One sentence a labeller tagged: given by `text`, by `start`/`end`, or by `index` (exactly one)."""

    tags: list[str]
    text: str | None = None
    start: int | None = None
    end: int | None = None
    index: int | None = None
    where: str = ""
    """Where it was read from, for messages ("tags.jsonl:3, sentence 2")."""


@dataclass
class TaggedTrace:
    trace_id: str
    sentences: list[TaggedSentence]
    texts: list[str] = field(default_factory=list)
    """The trace's text as the labeller had it (for finding its document when the id is not a doc_id), best first."""
    where: str = ""


@dataclass
class ImportReport:
    """What an import did, for the command's summary."""

    n_traces: int = 0
    matched_by_id: int = 0
    matched_by_text: int = 0
    unmatched_traces: list[str] = field(default_factory=list)
    n_sentences: int = 0
    n_placed: int = 0
    unplaced: list[str] = field(default_factory=list)
    """One line per sentence (chunk) that could not be placed: where it came from and its text."""
    sentences_per_tag: dict[str, int] = field(default_factory=dict)


def _non_negative_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse_sentence(entry: Any, where: str) -> TaggedSentence:
    if not isinstance(entry, dict):
        raise LabelSetError(f"{where}: a sentence must be an object with `tags` and `text`, `start`/`end` or `index`.")
    tags = entry.get("tags")
    if not isinstance(tags, list) or not all(isinstance(t, str) and TAG_PATTERN.fullmatch(t) for t in tags):
        raise LabelSetError(
            f"{where}: `tags` must be a list of tag names (letters, digits, `_ . + -`), got {tags!r}."
        )
    given = [key for key in ("text", "index") if key in entry] + (["start/end"] if "start" in entry or "end" in entry else [])
    if len(given) != 1:
        raise LabelSetError(f"{where}: give the sentence by exactly one of `text`, `start`/`end` or `index` (got {given or 'none'}).")
    if "text" in entry and not isinstance(entry["text"], str):
        raise LabelSetError(f"{where}: `text` must be a string.")
    if "index" in entry and not _non_negative_int(entry["index"]):
        raise LabelSetError(f"{where}: `index` must be a sentence number (0, 1, ...), got {entry['index']!r}.")
    if given == ["start/end"] and not (
        _non_negative_int(entry.get("start")) and _non_negative_int(entry.get("end")) and entry["start"] < entry["end"]
    ):
        raise LabelSetError(f"{where}: `start` and `end` must be character offsets with start < end, got "
                            f"{entry.get('start')!r} and {entry.get('end')!r}.")
    return TaggedSentence(
        tags=list(dict.fromkeys(tags)), text=entry.get("text"), start=entry.get("start"), end=entry.get("end"),
        index=entry.get("index"), where=where,
    )


def read_tag_jsonl(path: Path) -> list[TaggedTrace]:
    """Parse a sentence-tag JSONL file (docs/labels.md, "Sentence tags: the JSONL format")."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise LabelSetError(f"Cannot read {path}: {err}") from err
    traces = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise LabelSetError(f"{where}: not JSON ({err.msg}).") from err
        if not isinstance(record, dict):
            raise LabelSetError(f"{where}: each line must be an object with `trace_id` and `sentences`.")
        trace_id = record.get("trace_id")
        if not isinstance(trace_id, (str, int)) or isinstance(trace_id, bool) or str(trace_id) == "":
            raise LabelSetError(f"{where}: `trace_id` is missing (a document's doc_id, or any id with `text`).")
        sentences = record.get("sentences")
        if not isinstance(sentences, list):
            raise LabelSetError(f"{where}: `sentences` must be a list.")
        text = record.get("text")
        if text is not None and not isinstance(text, str):
            raise LabelSetError(f"{where}: `text` must be the trace's text (a string).")
        traces.append(
            TaggedTrace(
                str(trace_id),
                [_parse_sentence(s, f"{where}, sentence {i}") for i, s in enumerate(sentences)],
                [text] if text else [],
                where,
            )
        )
    if not traces:
        raise LabelSetError(f"{path} is empty: no trace to import (one JSON object per line; docs/labels.md).")
    return traces


def read_thought_anchors(folder: Path) -> list[TaggedTrace]:
    """The traces under `folder` in Thought Anchors' layout: every folder holding `chunks_labeled.json`
    (`folder` itself, or any below it), with `base_solution.json` beside it. The trace id is the folder's
    path below `folder` (its name when it is `folder`); its texts are `full_cot`, then `solution`."""
    folder = Path(folder)
    chunk_files = sorted(folder.rglob("chunks_labeled.json"))
    if not chunk_files:
        raise LabelSetError(f"{folder} holds no chunks_labeled.json: not in the Thought Anchors layout (docs/labels.md).")
    traces = []
    for chunk_file in chunk_files:
        trace_dir = chunk_file.parent
        trace_id = trace_dir.relative_to(folder).as_posix() if trace_dir != folder else folder.name
        try:
            chunks = json.loads(chunk_file.read_text(encoding="utf-8"))
            base_file = trace_dir / "base_solution.json"
            base = json.loads(base_file.read_text(encoding="utf-8")) if base_file.is_file() else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise LabelSetError(f"{trace_dir}: unreadable ({err}).") from err
        if not isinstance(chunks, list) or not all(isinstance(c, dict) and isinstance(c.get("chunk"), str) for c in chunks):
            raise LabelSetError(f"{chunk_file}: expected a list of objects with `chunk` and `function_tags`.")
        chunks = sorted(chunks, key=lambda c: c.get("chunk_idx", 0))
        sentences = [
            _parse_sentence(
                {"text": c["chunk"], "tags": c.get("function_tags") or []},
                f"{chunk_file}, chunk {c.get('chunk_idx', i)}",
            )
            for i, c in enumerate(chunks)
        ]
        texts = [base[key] for key in ("full_cot", "solution") if isinstance(base.get(key), str) and base[key].strip()]
        traces.append(TaggedTrace(trace_id, sentences, texts, str(trace_dir)))
    return traces


def _squeezed(text: str) -> tuple[str, np.ndarray]:
    """`text` without whitespace, and where each remaining character came from."""
    positions = np.fromiter((m.start() for m in re.finditer(r"\S", text)), dtype=np.int64)
    return "".join(text[p] for p in positions), positions


def _match_documents(run_dir: Path, traces: list[TaggedTrace], report: ImportReport) -> dict[str, str]:
    """Each trace's document id (doc_id = trace id, else by text ignoring whitespace); unmatched traces are
    left out and listed in `report`."""

    doc_ids = set(read_documents(run_dir, columns=["doc_id"])["doc_id"])
    matched = {t.trace_id: t.trace_id for t in traces if t.trace_id in doc_ids}
    report.matched_by_id = len(matched)
    pending = [t for t in traces if t.trace_id not in matched and t.texts]
    if pending:
        wanted = {t.trace_id: [re.sub(r"\s+", "", x) for x in t.texts] for t in pending}
        exact = {key: trace_id for trace_id, keys in wanted.items() for key in keys}
        found: dict[str, str] = {}
        for doc_id, text in iter_document_texts(run_dir):
            key = re.sub(r"\s+", "", text)
            if key in exact and exact[key] not in found:
                found[exact[key]] = doc_id
                continue
            for trace_id, keys in wanted.items():
                if trace_id not in found and any(_contained(k, key) for k in keys):
                    found[trace_id] = doc_id
        matched.update(found)
        report.matched_by_text = len(found)
    report.unmatched_traces = [f"{t.where}: trace {t.trace_id!r}" for t in traces if t.trace_id not in matched]
    by_doc: dict[str, str] = {}
    for trace_id, doc_id in matched.items():
        if doc_id in by_doc:
            raise LabelSetError(f"Traces {by_doc[doc_id]!r} and {trace_id!r} both map to document {doc_id!r}.")
        by_doc[doc_id] = trace_id
    return matched


def _contained(a: str, b: str) -> bool:
    """Whether one of two whitespace-free texts contains the other, the shorter being at least half the
    longer (a document that adds a prompt to the trace, or lacks the trace's prompt; not a stray sentence)."""
    short, long = sorted((a, b), key=len)
    return bool(short) and 2 * len(short) >= len(long) and short in long


def _place(trace: TaggedTrace, doc_text: str, doc_id: str, report: ImportReport) -> list[tuple[int, int, list[str]]]:
    """The trace's sentences as spans of `doc_text`; those that cannot be placed go to `report.unplaced`."""
    placed = []
    squeezed: tuple[str, np.ndarray] | None = None
    sentences: list | None = None
    shift: int | None = None
    cursor = 0
    for sentence in trace.sentences:
        report.n_sentences += 1
        span: tuple[int, int] | None = None
        problem = ""
        if sentence.index is not None:
            sentences = segment(doc_text) if sentences is None else sentences
            if sentence.index < len(sentences):
                span = tuple(sentences[sentence.index])
            else:
                problem = f"sentence index {sentence.index}, but document {doc_id!r} has {len(sentences)} sentences"
        elif sentence.start is not None:
            if shift is None:  # offsets count characters of the trace's text when the line gives it
                shift = 0 if not trace.texts or trace.texts[0] == doc_text else doc_text.find(trace.texts[0])
            if shift < 0:
                problem = (f"given by start/end, but the trace's `text` is not in document {doc_id!r} as written "
                           "(give this trace's sentences by text instead)")
            elif sentence.end + shift > len(doc_text):
                problem = f"characters {sentence.start}-{sentence.end}, past the end of document {doc_id!r}"
            else:
                span = (sentence.start + shift, sentence.end + shift)
        else:
            if squeezed is None:
                squeezed = _squeezed(doc_text)
                cursor = int(np.searchsorted(squeezed[1], think_region(doc_text)[0]))
            key = re.sub(r"\s+", "", sentence.text)
            at = squeezed[0].find(key, cursor) if key else -1
            if key and at < 0:
                at = squeezed[0].find(key)
            if at >= 0:
                span = (int(squeezed[1][at]), int(squeezed[1][at + len(key) - 1]) + 1)
                cursor = at + len(key)
            else:
                problem = "text not found in document " + repr(doc_id) + f": {_quote(sentence.text)}"
        if span is None:
            report.unplaced.append(f"{sentence.where}: {problem}")
            continue
        report.n_placed += 1
        placed.append((span[0], span[1], sentence.tags))
    return placed


def _quote(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def import_sentence_tags(
    run_dir: Path, prefix: str, traces: list[TaggedTrace], *, source: str, strict: bool
) -> tuple[list[LabelSetData], ImportReport]:
    """One sentence set per tag, named `<prefix>:<tag>`, from `traces` placed in the run's documents.

    `strict` (the JSONL importer's default): an unknown trace or a sentence that cannot be placed stops the
    import with a message listing them. Otherwise (the Thought Anchors layout) they are left out and listed
    in the report; at least one trace must match. Either way nothing is written here.
    """
    check_name(prefix)
    report = ImportReport(n_traces=len(traces))
    ids = [t.trace_id for t in traces]
    duplicates = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) < len(ids) else []
    if duplicates:
        raise LabelSetError(f"Trace ids appear twice: {', '.join(map(repr, duplicates[:10]))}.")
    matched = _match_documents(run_dir, traces, report)
    if report.unmatched_traces and (strict or not matched):
        raise LabelSetError(
            f"{len(report.unmatched_traces)} of {len(traces)} traces match no document of {run_dir} (by doc_id, or by "
            "text ignoring whitespace):\n  " + "\n  ".join(report.unmatched_traces[:10])
            + ("\n  ..." if len(report.unmatched_traces) > 10 else "")
        )

    texts = read_document_texts(run_dir, matched.values())
    by_tag: dict[str, list[tuple[str, int, int]]] = {}
    for trace in traces:
        if trace.trace_id not in matched:
            continue
        doc_id = matched[trace.trace_id]
        for start, end, tags in _place(trace, texts[doc_id], doc_id, report):
            for tag in tags:
                by_tag.setdefault(tag, []).append((doc_id, start, end))
    if report.unplaced and strict:
        raise LabelSetError(
            f"{len(report.unplaced)} tagged sentences are not in their trace:\n  " + "\n  ".join(report.unplaced[:10])
            + ("\n  ..." if len(report.unplaced) > 10 else "")
        )
    if not by_tag:
        why = "none of its tagged sentences could be placed" if report.unplaced else "every sentence's `tags` list is empty"
        raise LabelSetError(f"No tagged sentence to import from {source}: {why}.")
    documents = sorted(matched.values())
    sets = []
    for tag in sorted(by_tag):
        spans = as_spans(pd.DataFrame(by_tag[tag], columns=SPAN_COLUMNS)).drop_duplicates(ignore_index=True)
        report.sentences_per_tag[tag] = len(spans)
        name = f"{prefix}:{tag}"
        sets.append(
            LabelSetData(
                LabelSet(name, SENTENCE, source, f"sentences tagged {tag!r}"),
                spans, documents, {"tag": tag, "import": _report_dict(report)},
            )
        )
    return sets, report


def _report_dict(report: ImportReport) -> dict[str, Any]:
    return {
        "n_traces": report.n_traces, "matched_by_id": report.matched_by_id, "matched_by_text": report.matched_by_text,
        "n_unmatched_traces": len(report.unmatched_traces), "n_sentences": report.n_sentences,
        "n_placed": report.n_placed, "n_unplaced": len(report.unplaced),
    }


# ----------------------------------------------------------------------------------------------------
# User-defined sets: a phrase list or regular expressions


def _pattern_lines(path: Path, what: str) -> list[tuple[int, str]]:
    """The non-blank, non-comment (`#`) lines of `path` with their line numbers."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise LabelSetError(f"Cannot read {path}: {err}") from err
    kept = [(n, line.strip()) for n, line in enumerate(lines, start=1) if line.strip() and not line.strip().startswith("#")]
    if not kept:
        raise LabelSetError(f"{path} is empty: no {what} in it (one a line; lines starting with # are comments).")
    return kept


def phrase_pattern(phrases: Iterable[str]) -> re.Pattern[str]:
    """One case-insensitive regex for `phrases`, longest first (so the longest phrase at a position wins),
    each on word boundaries where it starts or ends with a letter or digit."""
    def bounded(phrase: str) -> str:
        head = r"(?<!\w)" if phrase[0].isalnum() else ""
        tail = r"(?!\w)" if phrase[-1].isalnum() else ""
        return head + re.escape(phrase) + tail

    ordered = sorted(set(phrases), key=lambda p: (-len(p), p))
    return re.compile("|".join(bounded(p) for p in ordered), re.IGNORECASE)


def read_phrase_file(path: Path) -> re.Pattern[str]:
    return phrase_pattern(line for _, line in _pattern_lines(path, "phrases"))


def read_regex_file(path: Path) -> list[re.Pattern[str]]:
    patterns = []
    for number, line in _pattern_lines(path, "regular expressions"):
        try:
            patterns.append(re.compile(line, re.MULTILINE))
        except re.error as err:
            raise LabelSetError(f"{path}:{number}: bad regular expression {line!r}: {err}.") from err
    return patterns


def match_label_set(
    run_dir: Path, name: str, patterns: Sequence[re.Pattern[str]], *, source: str, description: str
) -> LabelSetData:
    """A span set of every non-empty match of `patterns` in every document; matches that overlap or touch
    (of two expressions, or `\\d` on "42") become one span."""
    check_name(name)
    rows = []
    documents = []
    for doc_id, text in iter_document_texts(run_dir):
        documents.append(doc_id)
        for pattern in patterns:
            rows.extend((doc_id, m.start(), m.end()) for m in pattern.finditer(text) if m.end() > m.start())
    spans = pd.DataFrame(rows, columns=SPAN_COLUMNS)
    if len(spans):
        ids, [(starts, ends)] = on_line([spans])
        spans = off_line(ids, *union(starts, ends))
    return LabelSetData(LabelSet(name, SPAN, source, description), as_spans(spans), documents, {"n_patterns": len(patterns)})
