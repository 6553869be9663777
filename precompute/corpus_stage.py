"""Stage `corpus`: generate or import traces, label their backtracking phrases, write `corpus/`.

Synthetic traces keep the generator's exact labels (and the wrong step before each correction).
Imported traces are labelled with the lexicon (`explorer.labels.label_text`). A document's
`has_backtracking` is the notebook's own rule (`explorer.labels.notebook_has_backtracking`); where a trace
carries its own `has_backtracking`, the two are compared and every disagreement is explained, and so are
the documents where matching on word boundaries would say otherwise.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import NamedTuple

import pandas as pd
from tqdm.auto import tqdm

from explorer import artifacts
from explorer.config import CorpusSpec
from explorer.corpus import CorpusError, load_corpus
from explorer.fault_points import checkpoint
from explorer.correctness import is_correct
from explorer.label_audit import BoundaryDifference, LabelAgreement, audit_against_source, boundary_differences
from explorer.labels import LABEL_RULE_VERSION, PhraseSpan, group_counts, has_backtracking, label_text, notebook_has_backtracking
from explorer.lexicon import GROUPS, LEXICON, NOTEBOOK_GROUPS
from explorer.records import TraceRecord
from explorer.sampling import SamplingError, balanced_sample
from explorer.synthetic import GENERATOR_VERSION, generate_traces
from precompute.atomic import atomic_dir
from precompute.stages import (
    config_hash, print_config, print_rebuild, print_reuse, print_skip, read_manifest,
    settings_as_flags, stage_is_current, write_manifest
)
from precompute.label_store import ensure_corpus_labels

STAGE = "corpus"
MAX_LISTED = 10
"""Documents listed by name in the printed summary, per kind of difference."""
SYNTHETIC = "synthetic"
FLAGS = {"source": "--dataset", "n_traces": "--n-traces", "seed": "--seed", "balanced": "--balanced"}
"""The stage's settings that a command-line flag sets, by their name in the stage's config."""
INPUT_VERSIONS = ("lexicon_hash", "label_rule_version", "generator_version")
"""What the labels were made with besides the settings: a corpus made with other ones is stale."""
DOCUMENTS_ROW_GROUP_ROWS = 256
"""Documents per row group of documents.parquet: the app reads one document's text by reading the row
group that holds it (`explorer.runs.read_document_texts`), a few MB at OpenR1-Math-220k's trace lengths
rather than the whole text column."""


class LabelledCorpus(NamedTuple):
    records: list[TraceRecord]
    spans_by_doc: dict[str, list[PhraseSpan]]
    error_steps_by_doc: dict[str, list[tuple[int, int]]]
    """Synthetic only: character spans of the wrong step before each correction."""
    exact: bool
    """True when the labels were recorded by the generator rather than found by the lexicon."""
    synthetic_traces: tuple = ()
    """Synthetic only: the generated traces, whose sentence tags the stage imports (`precompute.label_store`)."""


class CorpusSummary(NamedTuple):
    n_documents: int
    n_with_backtracking: int
    n_with_interjection: int
    phrases_per_group: dict[str, int]
    agreement: LabelAgreement | None
    boundary_differences: list[BoundaryDifference]
    """Documents whose notebook label rests only on a phrase inside a longer word."""


def stage_config(spec: CorpusSpec) -> dict:
    config = {"source": spec.source, "n_traces": spec.n_traces, "seed": spec.seed, "balanced": spec.balanced}
    # A lexicon change invalidates the labels, so it is part of the stage's identity.
    config["lexicon_hash"] = config_hash({g: list(p) for g, p in LEXICON.items()})
    config["label_rule_version"] = LABEL_RULE_VERSION
    if spec.source == SYNTHETIC:  # so does a change to the generator
        config["generator_version"] = GENERATOR_VERSION
    return config


def reuse_corpus(run_dir: Path, named: CorpusSpec, dataset: str | None) -> bool:
    """For a later stage's command: whether the run's corpus is used as it was made, whatever its
    settings (printed, as flags where they differ from the profile's `named` ones). It is not when the
    run has none, when `--dataset` names another source, or when the lexicon, the label rule or the
    generator changed since it was made; then this prints why, and the caller builds it."""
    out_dir = Path(run_dir) / artifacts.CORPUS_DIR
    manifest = read_manifest(out_dir)
    recorded = (manifest or {}).get("config") or {}
    current = stage_config(CorpusSpec(source=str(recorded.get("source", SYNTHETIC))))
    if manifest is None or not (out_dir / artifacts.DOCUMENTS_FILE).is_file():
        reason = f"{run_dir} has no corpus"
    elif dataset is not None and recorded.get("source") != str(dataset):
        reason = f"the run's corpus was made from {recorded.get('source')}, not from --dataset {dataset}"
    elif any(recorded.get(key) != current.get(key) for key in INPUT_VERSIONS):
        reason = "the run's corpus was labelled with another lexicon, label rule or generator"
    else:
        print_reuse(STAGE, "the corpus made", out_dir, settings_as_flags(recorded, stage_config(named), FLAGS))
        return True
    print_rebuild(STAGE, reason)
    return False


def build_labelled_corpus(spec: CorpusSpec) -> LabelledCorpus:
    """Read or generate the traces named by `spec`, and label them."""
    if spec.source == SYNTHETIC:

        traces = generate_traces(spec.n_traces, seed=spec.seed)
        return LabelledCorpus(
            records=[t.record for t in traces],
            spans_by_doc={t.record.doc_id: list(t.phrase_spans) for t in traces},
            error_steps_by_doc={t.record.doc_id: list(t.error_spans) for t in traces},
            exact=True,
            synthetic_traces=tuple(traces),
        )
    records = load_corpus(spec.source, limit=spec.n_traces or None)
    spans_by_doc = {r.doc_id: label_text(r.text) for r in tqdm(records, desc="labelling", unit="doc")}
    return LabelledCorpus(records, spans_by_doc, {}, exact=False)


def balanced_subset(corpus: LabelledCorpus, n: int, seed: int) -> LabelledCorpus:
    """The notebook's balanced sample of `corpus`: n/2 correct traces that backtrack (six groups), n/2
    correct traces that don't, no problem twice."""
    correct = {r.doc_id: bool(_record_is_correct(r)) for r in corpus.records}
    backtracks = {r.doc_id: notebook_has_backtracking(r.text) for r in corpus.records}
    try:
        kept = balanced_sample(corpus.records, n, seed=seed, has_backtracking=backtracks, is_correct=correct)
    except SamplingError as err:
        raise CorpusError(f"{corpus.records[0].metadata.get('source', 'corpus')}: {err}") from err
    kept_ids = {r.doc_id for r in kept}
    return LabelledCorpus(
        records=kept,
        spans_by_doc={d: s for d, s in corpus.spans_by_doc.items() if d in kept_ids},
        error_steps_by_doc={d: s for d, s in corpus.error_steps_by_doc.items() if d in kept_ids},
        exact=corpus.exact,
    )


def _record_is_correct(record: TraceRecord) -> bool | None:
    if isinstance(record.metadata.get("is_correct"), bool):
        return record.metadata["is_correct"]
    truth = record.metadata.get("ground_truth", record.metadata.get("answer"))
    return is_correct(record.text, str(truth)) if truth not in (None, "") else None


def documents_frame(corpus: LabelledCorpus) -> pd.DataFrame:
    rows = []
    for record in corpus.records:
        spans = corpus.spans_by_doc.get(record.doc_id, [])
        source_label = record.metadata.get("has_backtracking")
        rows.append(
            {
                "doc_id": record.doc_id,
                "text": record.text,
                "n_chars": len(record.text),
                "has_backtracking": notebook_has_backtracking(record.text),
                "has_interjection": has_backtracking(spans, groups=("interjection",)),
                "n_phrases": len(spans),
                "is_correct": _record_is_correct(record),
                "problem_id": str(record.metadata.get("problem_id", record.metadata.get("uuid", record.doc_id))),
                "problem_type": str(record.metadata.get("problem_type", "")),
                "source_has_backtracking": source_label if isinstance(source_label, bool) else None,
                "metadata_json": json.dumps(record.metadata, default=str, ensure_ascii=False),
            }
        )
    return pd.DataFrame(rows).astype({"is_correct": "boolean", "source_has_backtracking": "boolean"})


def phrases_frame(corpus: LabelledCorpus) -> pd.DataFrame:
    rows = [
        {"doc_id": doc_id, "start": s.start, "end": s.end, "group": s.group, "phrase": s.phrase}
        for doc_id, spans in corpus.spans_by_doc.items()
        for s in spans
    ]
    return pd.DataFrame(rows, columns=["doc_id", "start", "end", "group", "phrase"])


def error_steps_frame(corpus: LabelledCorpus) -> pd.DataFrame:
    rows = [
        {"doc_id": doc_id, "start": start, "end": end, "correction_index": i}
        for doc_id, steps in corpus.error_steps_by_doc.items()
        for i, (start, end) in enumerate(steps)
    ]
    return pd.DataFrame(rows, columns=["doc_id", "start", "end", "correction_index"])


def summarise(corpus: LabelledCorpus, documents: pd.DataFrame) -> CorpusSummary:
    counts = dict.fromkeys(GROUPS, 0)
    for spans in corpus.spans_by_doc.values():
        for group, n in group_counts(spans).items():
            counts[group] += n
    # Synthetic metadata is computed from the same spans, so comparing would be a tautology.
    agreement = None if corpus.exact else audit_against_source(corpus.records, corpus.spans_by_doc)
    return CorpusSummary(
        n_documents=len(documents),
        n_with_backtracking=int(documents["has_backtracking"].sum()),
        n_with_interjection=int(documents["has_interjection"].sum()),
        phrases_per_group=counts,
        agreement=agreement if agreement is not None and agreement.n_with_source_label else None,
        boundary_differences=boundary_differences(corpus.records, corpus.spans_by_doc),
    )


def print_summary(summary: CorpusSummary) -> None:
    print(f"  documents: {summary.n_documents:,}")
    print(
        f"  with backtracking (notebook's six groups): {summary.n_with_backtracking:,}; "
        f"with an interjection: {summary.n_with_interjection:,}"
    )
    print("  phrases per group: " + ", ".join(f"{g} {n:,}" for g, n in summary.phrases_per_group.items()))
    differences = summary.boundary_differences
    print(
        f"  the notebook's substring rule and word-boundary matching agree on "
        f"{summary.n_documents - len(differences):,}/{summary.n_documents:,} documents"
    )
    for d in differences[:MAX_LISTED]:
        print(f"    - {d.doc_id}: only inside a longer word: " + "; ".join(repr(q) for q in d.quotes))
    if len(differences) > MAX_LISTED:
        print(f"    ... and {len(differences) - MAX_LISTED:,} more (corpus/{artifacts.CORPUS_SUMMARY_FILE})")
    agreement = summary.agreement
    if agreement is None:
        return
    print(
        f"  agreement with the source's own has_backtracking: {agreement.n_agree}/{agreement.n_with_source_label}"
    )
    for d in agreement.disagreements:
        print(
            f"    - {d.doc_id}: source {d.source_has_backtracking}, lexicon {d.lexicon_has_backtracking}: "
            f"{d.explanation}"
        )


def summary_dict(summary: CorpusSummary) -> dict:
    data = summary._asdict()
    agreement = summary.agreement
    data["agreement"] = None
    if agreement is not None:
        data["agreement"] = {
            "n_with_source_label": agreement.n_with_source_label,
            "n_agree": agreement.n_agree,
            "disagreements": [d._asdict() for d in agreement.disagreements],
        }
    data["boundary_differences"] = [d._asdict() for d in summary.boundary_differences]
    data["groups_in_has_backtracking"] = list(NOTEBOOK_GROUPS)
    data["has_backtracking_rule"] = "the notebook's: a phrase of the six lists is a substring of the lower-cased text"
    return data


def run_corpus_stage(spec: CorpusSpec, run_dir: Path, *, force: bool = False) -> Path:
    """Write `run_dir/corpus/` for `spec` unless it is already current. Returns the folder."""
    out_dir = Path(run_dir) / artifacts.CORPUS_DIR
    config = stage_config(spec)
    if not force and stage_is_current(out_dir, config):
        print_skip(STAGE, out_dir)
        _add_sentences_and_tags(spec, run_dir)
        return out_dir
    print_config(STAGE, config)
    started = time.time()
    corpus = build_labelled_corpus(spec)
    if spec.balanced:
        corpus = balanced_subset(corpus, spec.balanced, spec.seed)
    documents = documents_frame(corpus)
    summary = summarise(corpus, documents)
    with atomic_dir(out_dir) as tmp:
        documents.to_parquet(tmp / artifacts.DOCUMENTS_FILE, index=False, row_group_size=DOCUMENTS_ROW_GROUP_ROWS)
        checkpoint("corpus:documents-written")
        phrases_frame(corpus).to_parquet(tmp / artifacts.PHRASES_FILE, index=False)
        if corpus.error_steps_by_doc:
            error_steps_frame(corpus).to_parquet(tmp / artifacts.ERROR_STEPS_FILE, index=False)
        (tmp / artifacts.CORPUS_SUMMARY_FILE).write_text(json.dumps(summary_dict(summary), indent=2))
        write_manifest(tmp, STAGE, config, started, n_documents=summary.n_documents)
    print_summary(summary)
    _add_sentences_and_tags(spec, run_dir, corpus.synthetic_traces)
    print(f"  wrote {out_dir} in {time.time() - started:.1f}s", flush=True)
    return out_dir


def _add_sentences_and_tags(spec: CorpusSpec, run_dir: Path, traces: tuple = ()) -> None:
    """The corpus's sentences, and a synthetic corpus's sentence tags (added to a run built without them)."""

    ensure_corpus_labels(
        run_dir, synthetic=spec.source == SYNTHETIC, n_traces=spec.n_traces, seed=spec.seed, traces=traces or None
    )

