"""Store a run's sentences and label sets, atomically (`explorer.label_sets` reads them).

`corpus/label_sets/` is replaced as a whole: the new folder is assembled next to it (the sets kept are
copied, the new ones written), then renamed into place, so a failed or interrupted write leaves the run's
label sets as they were, and a reader never sees half of an import. The synthetic corpus's sentence tags
go through the same importer as any labeller's JSONL (`import_synthetic_tags`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd
import pyarrow.parquet as pq

from explorer import artifacts
from explorer.label_import import ImportReport, import_sentence_tags, read_tag_jsonl
from explorer.label_sets import (
    COVERAGE_FILE,
    FORMAT_VERSION,
    SET_FILE,
    SPANS_FILE,
    LabelSetData,
    LabelSetError,
    builtin_label_sets,
    label_sets_dir,
    set_folder_name,
    stored_label_sets,
)
from explorer.sentences import compute_sentences, read_sentences, sentences_are_current, sentences_path, sentences_table
from explorer.synthetic import GENERATOR_VERSION, SyntheticTrace, generate_traces, sentence_tags
from precompute.atomic import atomic_dir, atomic_file
from explorer.runs import read_documents

SYNTHETIC_TAG_PREFIX = "tag"
"""The demo's sentence tags are the sets `tag:<tag>`."""
SYNTHETIC_TAGS_VERSION = 1
"""Bumped when the generator tags the same lines differently; a run whose tags are older re-imports them."""
SYNTHETIC_TAGS_SOURCE = f"synthetic generator v{GENERATOR_VERSION}, tags v{SYNTHETIC_TAGS_VERSION} (jsonl)"


def ensure_sentences(run_dir: Path) -> bool:
    """Write `corpus/sentences.parquet` when it is missing or made with an older rule. Returns whether it
    wrote."""
    if sentences_are_current(run_dir):
        return False
    frame = compute_sentences(run_dir)
    with atomic_file(sentences_path(run_dir)) as tmp:
        pq.write_table(sentences_table(frame), tmp)
    print(f"  sentences: {len(frame):,} in {frame['doc_id'].nunique():,} documents -> {sentences_path(run_dir)}")
    return True


def write_label_sets(run_dir: Path, new: Sequence[LabelSetData], *, remove: Iterable[str] = ()) -> None:
    """Store `new` (replacing sets of the same names) and drop the stored sets named in `remove`, in one
    atomic replacement of `corpus/label_sets/`."""
    builtin = builtin_label_sets()
    clash = [d.label_set.name for d in new if d.label_set.name in builtin]
    if clash:
        raise LabelSetError(f"{', '.join(clash)}: built-in label set names; choose another name.")
    corpus_dir = Path(run_dir) / artifacts.CORPUS_DIR
    if not corpus_dir.is_dir():
        raise LabelSetError(f"No corpus in {run_dir}: run `python -m precompute corpus --out {run_dir}` first.")
    replaced = {d.label_set.name for d in new} | set(remove)
    stored = stored_label_sets(run_dir)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with atomic_dir(label_sets_dir(run_dir)) as tmp:
        for name, (_, folder, _) in stored.items():
            if name not in replaced:
                shutil.copytree(folder, tmp / folder.name)
        for data in new:
            folder = tmp / set_folder_name(data.label_set.name)
            folder.mkdir()
            data.spans.to_parquet(folder / SPANS_FILE, index=False)
            pd.DataFrame({"doc_id": sorted(data.documents)}, dtype=object).to_parquet(folder / COVERAGE_FILE, index=False)
            summary = {
                **data.label_set.__dict__,
                "n_documents": len(data.documents),
                "n_spans": len(data.spans),
                "n_positive_documents": int(data.spans["doc_id"].nunique()),
                "created_at": created,
                "format_version": FORMAT_VERSION,
                **data.details,
            }
            (folder / SET_FILE).write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")


def remove_label_sets(run_dir: Path, names: Iterable[str]) -> list[str]:
    """Drop the stored sets `names`; an unknown or built-in name is an error. Returns the names removed."""
    names = list(names)
    stored = stored_label_sets(run_dir)
    builtin = [n for n in names if n in builtin_label_sets()]
    if builtin:
        raise LabelSetError(f"{', '.join(builtin)}: built-in label sets are computed from the corpus, not stored.")
    unknown = [n for n in names if n not in stored]
    if unknown:
        raise LabelSetError(f"No stored label set {', '.join(map(repr, unknown))} in {run_dir} (stored: {', '.join(stored) or 'none'}).")
    write_label_sets(run_dir, [], remove=names)
    return names


def prefixed(run_dir: Path, prefix: str) -> list[str]:
    """The stored sets named `<prefix>:...`: those a tag import under `prefix` made."""
    return [name for name in stored_label_sets(run_dir) if name.startswith(prefix + ":")]


def import_tag_file(
    run_dir: Path, prefix: str, traces, *, source: str, strict: bool
) -> tuple[list[LabelSetData], ImportReport, list[str]]:
    """Import parsed tagged traces as the sets `<prefix>:<tag>`, replacing every set an earlier import under
    `prefix` made. Returns the sets, the report and the names of the earlier sets that were dropped."""
    sets, report = import_sentence_tags(run_dir, prefix, traces, source=source, strict=strict)
    earlier = prefixed(run_dir, prefix)
    write_label_sets(run_dir, sets, remove=earlier)
    return sets, report, [n for n in earlier if n not in {d.label_set.name for d in sets}]


# ----------------------------------------------------------------------------------------------------
# The synthetic corpus's sentence tags


def write_synthetic_tags_jsonl(traces: Iterable[SyntheticTrace], path: Path, sentences: pd.DataFrame | None = None) -> None:
    """The traces' sentence tags in the documented JSONL format, sentences by start/end (`sentences`: the
    run's, when the caller has them, else each trace is segmented here)."""
    by_doc = None
    if sentences is not None:
        by_doc = {doc_id: list(zip(group["start"].tolist(), group["end"].tolist())) for doc_id, group in sentences.groupby("doc_id", sort=False)}
    with open(path, "w", encoding="utf-8") as out:
        for trace in traces:
            spans = None if by_doc is None else by_doc.get(trace.record.doc_id, [])
            tagged = [{"start": s, "end": e, "tags": list(tags)} for s, e, tags in sentence_tags(trace, spans)]
            out.write(json.dumps({"trace_id": trace.record.doc_id, "sentences": tagged}) + "\n")


def synthetic_tags_are_current(run_dir: Path) -> bool:
    names = prefixed(run_dir, SYNTHETIC_TAG_PREFIX)
    stored = stored_label_sets(run_dir)
    return bool(names) and all(stored[n][0].source == SYNTHETIC_TAGS_SOURCE for n in names)


def import_synthetic_tags(run_dir: Path, n_traces: int, seed: int, traces: Sequence[SyntheticTrace] | None = None) -> None:
    """Import the synthetic corpus's sentence tags as `tag:<tag>` sets, through the JSONL importer: the
    generator's tags are written as a labeller's JSONL file, then read back like any other.

    `traces` are the corpus's generated traces when the caller has them; otherwise they are generated again
    (the same seed makes the same traces). Only the run's documents are imported (a balanced subset keeps
    fewer), and each generated text must be the document's, or the corpus is not this generator's.
    """

    documents = read_documents(run_dir, columns=["doc_id", "text"])
    texts = dict(zip(documents["doc_id"], documents["text"]))
    traces = generate_traces(n_traces, seed=seed) if traces is None else traces
    kept = [t for t in traces if t.record.doc_id in texts]
    if len(kept) != len(texts) or any(texts[t.record.doc_id] != t.record.text for t in kept):
        raise LabelSetError(
            f"The corpus of {run_dir} is not what the synthetic generator makes for seed {seed}: rebuild it with "
            f"`python -m precompute corpus --out {run_dir} --force`."
        )
    with tempfile.TemporaryDirectory(prefix="synthetic-tags-") as tmp:
        path = Path(tmp) / "sentence_tags.jsonl"
        write_synthetic_tags_jsonl(kept, path, read_sentences(run_dir))
        sets, report, _ = import_tag_file(
            run_dir, SYNTHETIC_TAG_PREFIX, read_tag_jsonl(path), source=SYNTHETIC_TAGS_SOURCE, strict=True
        )
    print(
        f"  sentence tags: {report.n_placed:,} sentences of {report.n_traces:,} traces -> "
        + ", ".join(f"{d.label_set.name} {len(d.spans):,}" for d in sets)
    )


def ensure_synthetic_tags(run_dir: Path, n_traces: int, seed: int, traces: Sequence[SyntheticTrace] | None = None) -> bool:
    """Import the synthetic tags unless the run has current ones. Returns whether it imported."""
    if synthetic_tags_are_current(run_dir):
        return False
    import_synthetic_tags(run_dir, n_traces, seed, traces)
    return True


def ensure_corpus_labels(
    run_dir: Path, *, synthetic: bool, n_traces: int, seed: int, traces: Sequence[SyntheticTrace] | None = None
) -> None:
    """What the corpus stage adds beside the corpus, whether it just wrote it or found it current: the
    sentences, and on a synthetic corpus the generator's sentence tags. Neither is part of the corpus stage's
    config, so adding them to an existing run rebuilds nothing after it (the demo LM, SAEs and index stay)."""
    ensure_sentences(run_dir)
    if synthetic:
        ensure_synthetic_tags(run_dir, n_traces, seed, traces)
