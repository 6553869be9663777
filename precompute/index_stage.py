"""Stages `index` and `merge`: the feature index of an SAE, written into the run's DuckDB file.

    index [--sae ID] [--tokens N] [--batch-size B]     one pass, then the tables (atomic); without
                                                       --sae, each SAE of the run whose index is not current
    index --shard i/n                                  one shard's partial: index_partials/<sae>/shard-i-of-n.pt
    merge [--sae ID]                                   combine the n partials, then the tables

A single run is the merge of one shard, so both paths share `finish_index`: finalise the totals,
compute the scores, cut every kept example's context (kept by the accumulators during the pass, so
there is no second forward), compute the weight-only views, and write every table in one atomic
transaction. The merged database equals a
single run's (tests/test_index_stage.py). docs/scaling.md says how to run shards on several GPUs.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, NamedTuple

import numpy as np
import torch

from explorer import feature_tables as tables
from explorer.config import Profile
from explorer.database import utc_now
from explorer.fault_points import checkpoint
from explorer.feature_aggregates import FeatureIndexAccumulators, IndexConfig, build_reasoning_vocab
from explorer.feature_db import read_index_runs, write_feature_index
from explorer.feature_index import (
    MAX_LABEL_SETS,
    CorpusDocument,
    LabelSetInput,
    WINDOWING_VERSION,
    IndexInputError,
    PassProgress,
    Window,
    contexts_from_values,
    limit_tokens,
    make_windows,
    run_index_pass,
    with_labels,
)
from explorer.feature_scores import logit_lens, nearest_features, select_interval_samples, top_phrase_token_ids
from explorer.feature_tables import LabelSetInfo
from explorer.label_sets import (
    BUILT_IN,
    LabelSet,
    read_label_documents,
    read_label_sets,
    read_label_spans,
    read_sentence_labels,
    stored_label_sets,
)
from explorer.labels import PhraseSpan
from explorer.sentences import read_sentences
from explorer.model_loading import load_run_model
from explorer.runs import (
    DOCUMENT_BATCH_ROWS,
    RunFolderError,
    corpus_content_hash,
    count_documents,
    database_path,
    iter_documents,
    iter_phrases,
    list_sae_ids,
    main_sae_id,
    sae_dir,
)
from explorer.sae_loading import check_sae_fits_model, load_sae, stop_layer_for_hook
from precompute.atomic import atomic_file
from precompute.stages import package_versions, print_config, provenance, sae_fingerprint

STAGE = "index"
PARTIALS_DIR = "index_partials"
DEFAULT_SAVE_EVERY_S = 600.0
"""How often the first pass saves its progress (`--save-every`, in minutes on the command line)."""
N_INTERVALS = 10
PER_INTERVAL = 4
LOGIT_LENS_K = 10
NEIGHBOURS_K = 10
N_CONTROL_TOKENS = 16


class IndexInputs(NamedTuple):
    model: Any
    sae: Any
    sae_id: str
    hook_name: str
    stop_at_layer: int
    """The forward runs blocks 0 .. stop_at_layer - 1: up to the hook's block, no further."""
    windows: list[Window]
    n_documents: int
    config: IndexConfig
    corpus_hash: str
    label_infos: dict[str, LabelSetInfo] = {}
    """The label sets scored (`config.labels`): kind and source of each."""
    labels_fingerprint: str = ""
    """`IndexLabels.fingerprint` of those label sets."""


def choose_sae_id(run_dir: Path, sae_id: str | None, hook_name: str | None = None) -> str:
    """`sae_id`, checked; None: the run's main SAE (the one at `hook_name`, the profile's hook)."""
    available = list_sae_ids(run_dir)
    if sae_id is None:
        if not available:
            raise RunFolderError(f"No SAE in {run_dir}: run `python -m precompute train-sae --out {run_dir}` first.")
        return main_sae_id(run_dir, hook_name, available)
    if sae_id not in available:
        raise RunFolderError(
            f"No SAE {sae_id!r} in {run_dir}/saes (have: {', '.join(available) or 'none'}). "
            "Train one with `train-sae` or import one with `sae-report --sae SOURCE`."
        )
    return sae_id


class CorpusReader:
    """A run's corpus documents with their labelled phrases, read `batch_rows` documents at a time as
    they are iterated, in corpus order: `make_windows` stops iterating once its token budget is met,
    so an index of 40M tokens never reads the rest of OpenR1-Math-220k's 3 GB of text.

    Phrases are read alongside, as far as the documents read so far need: each document says how many
    it has (`n_phrases`), and the corpus stage writes them in document order, so only a batch or two
    is held at a time (in another order, those read ahead wait in memory for their documents).

    With `label_sets` (`scored_label_sets`), each batch's documents also carry those sets' spans and
    positive sentences and the run's sentences (`explorer.feature_index.with_labels`), read for that
    batch's documents only (`read_index_labels`): the label store is read no further than the corpus."""

    def __init__(
        self, run_dir: Path, *, batch_rows: int = DOCUMENT_BATCH_ROWS, label_sets: dict[str, LabelSet] | None = None
    ) -> None:
        self.run_dir = Path(run_dir)
        self.batch_rows = batch_rows
        self.label_sets = label_sets
        self.n_documents = count_documents(run_dir)
        self.rows_read = 0
        """Documents read from the file so far (whole batches)."""
        self.labelled_doc_ids: list[str] = []
        """With `label_sets`: the documents whose labels were read so far (those of the batches read)."""

    def __len__(self) -> int:
        return self.n_documents

    def __iter__(self) -> Iterator[CorpusDocument]:
        columns = ["doc_id", "text", "has_backtracking", "n_phrases"]
        phrases = iter_phrases(self.run_dir)
        waiting: dict[str, list[PhraseSpan]] = {}
        for batch in iter_documents(self.run_dir, columns, batch_rows=self.batch_rows):
            self.rows_read += len(batch["doc_id"])
            documents = []
            for doc_id, text, flag, n_phrases in zip(*(batch[c] for c in columns)):
                while len(waiting.get(doc_id, ())) < n_phrases:
                    more = next(phrases, None)
                    if more is None:
                        break
                    for row in zip(more["doc_id"], more["start"], more["end"], more["group"], more["phrase"]):
                        waiting.setdefault(row[0], []).append(PhraseSpan(int(row[1]), int(row[2]), row[3], row[4]))
                documents.append(CorpusDocument(doc_id, text, sorted(waiting.pop(doc_id, [])), bool(flag)))
            if self.label_sets is not None:
                labels = read_index_labels(self.run_dir, batch["doc_id"], self.label_sets)
                self.labelled_doc_ids.extend(batch["doc_id"])
                documents = with_labels(documents, labels.label_sets, labels.sentences)
            yield from documents


def corpus_documents(run_dir: Path, label_sets: dict[str, LabelSet] | None = None) -> CorpusReader:
    """The run's corpus as `make_windows` reads it: documents and their phrases (and with `label_sets`, their
    labels), a batch at a time."""
    return CorpusReader(run_dir, label_sets=label_sets)


class IndexLabels(NamedTuple):
    """The run's label sets and sentences as the index takes them."""

    label_sets: list[LabelSetInput]
    infos: dict[str, LabelSetInfo]
    sentences: dict[str, list[tuple[int, int]]]


def _by_document(frame, columns: tuple[str, ...]) -> dict[str, list]:
    """doc_id -> the rows' `columns` (as tuples, or values for one column), in the frame's order."""
    if frame.empty:
        return {}
    values = list(zip(*(frame[c].tolist() for c in columns))) if len(columns) > 1 else frame[columns[0]].tolist()
    grouped: dict[str, list] = {}
    for doc_id, value in zip(frame["doc_id"].tolist(), values):
        grouped.setdefault(doc_id, []).append(value)
    return grouped


def scored_label_sets(run_dir: Path, *, note: bool = False) -> dict[str, LabelSet]:
    """The label sets an index scores: the run's, the built-in ones first, then the stored ones, at most
    `MAX_LABEL_SETS` (with `note`, the rest are printed as left out)."""
    sets = read_label_sets(run_dir)
    if note and len(sets) > MAX_LABEL_SETS:
        print(f"  the index scores at most {MAX_LABEL_SETS} label sets; left out: {', '.join(list(sets)[MAX_LABEL_SETS:])}",
              flush=True)
    return {name: sets[name] for name in list(sets)[:MAX_LABEL_SETS]}


def read_index_labels(
    run_dir: Path, doc_ids: Collection[str] | None = None, sets: dict[str, LabelSet] | None = None
) -> IndexLabels:
    """The label sets the index scores (`sets`, default `scored_label_sets`) with their positive spans, the
    documents they label and their positive sentences, and the run's sentences (docs/labels.md). With
    `doc_ids`, of those documents only: the stored files are read with a filter on doc_id, so the rows of
    other documents are never loaded (`CorpusReader` reads them a batch of documents at a time)."""
    sets = scored_label_sets(run_dir) if sets is None else sets
    sentences = read_sentences(run_dir, doc_ids).sort_values(["doc_id", "sentence_index"], kind="stable")
    inputs, infos = [], {}
    for name, label_set in sets.items():
        built_in = label_set.source == BUILT_IN
        positives = read_sentence_labels(run_dir, name, sentences, doc_ids)
        inputs.append(LabelSetInput(
            name, label_set.kind, label_set.source,
            _by_document(read_label_spans(run_dir, name, doc_ids), ("start", "end")),
            documents=None if built_in else frozenset(read_label_documents(run_dir, name, doc_ids)),
            positive_sentences=_by_document(positives[positives["positive"]], ("sentence_index",)),
        ))
        infos[name] = LabelSetInfo(label_set.kind, label_set.source)
    return IndexLabels(inputs, infos, _by_document(sentences, ("start", "end")))


def labels_fingerprint(run_dir: Path) -> str:
    """What an index's label-set scores depend on besides the corpus: the label sets it scores (names,
    kinds, sources) and the stored sets' files. A set added, removed or re-imported changes it."""
    sets = scored_label_sets(run_dir)
    names = list(sets)
    digest = hashlib.sha256(json.dumps([[n, sets[n].kind, sets[n].source] for n in names]).encode())
    for name, (_, folder, _) in sorted(stored_label_sets(run_dir).items()):
        if name in names:
            for path in sorted(folder.iterdir()):
                digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def load_inputs(
    profile: Profile, run_dir: Path, sae_id: str | None, max_tokens: int | None, *, progress: bool = True
) -> IndexInputs:
    """Model, SAE (checked against the model), the corpus's windows and the pass configuration."""
    sae_id = choose_sae_id(run_dir, sae_id, profile.hook_name)
    label_sets = scored_label_sets(run_dir, note=True)
    documents = corpus_documents(run_dir, label_sets)
    if not len(documents):
        raise IndexInputError(f"The corpus of {run_dir} is empty: nothing to index.")
    model = load_run_model(run_dir, profile)
    loaded = load_sae(sae_dir(run_dir, sae_id), device=str(next(model.parameters()).device), dtype=profile.dtype)
    hook_name = check_sae_fits_model(loaded.sae, model, loaded.hook_name or profile.hook_name, model_name=profile.model)
    stop_at_layer = stop_layer_for_hook(hook_name)
    if stop_at_layer is None:
        raise IndexInputError(f"Cannot tell which layer {hook_name!r} belongs to; the index needs a blocks.<n>. hook.")
    # The documents carry their labels, read a batch at a time as the windows need them.
    windows = make_windows(model.tokenizer, documents, profile.n_ctx, progress=progress, max_tokens=max_tokens)
    windows, notice = limit_tokens(windows, max_tokens)
    if notice:
        print(f"  {notice}", flush=True)
    n_valid = int(sum(w.valid.sum() for w in windows))
    k = profile.index.top_k
    if n_valid == 0:
        raise IndexInputError(f"The corpus of {run_dir} has no text tokens to index.")
    if len(windows) < k:
        raise IndexInputError(
            f"The corpus gives {len(windows)} context windows ({n_valid:,} text tokens), fewer than top-k = {k}: "
            "every feature needs k windows to choose its examples from. Use a larger corpus or --tokens, "
            "or a smaller index.top_k in the profile."
        )
    vocab_size = model.cfg.d_vocab
    controls = top_phrase_token_ids(tables.count_tokens(windows, vocab_size), N_CONTROL_TOKENS)
    config = IndexConfig(
        n_features=loaded.d_sae,
        vocab_size=vocab_size,
        k=k,
        reasoning_vocab=build_reasoning_vocab(lambda s: model.tokenizer.encode(s, add_special_tokens=False)),
        control_token_ids=controls,
        min_offset=-profile.index.context_before,
        max_offset=profile.index.context_after,
        context_before=profile.index.context_before,
        context_after=profile.index.context_after,
        labels=tuple(label_sets),
        token_capacity=profile.index.token_capacity,
        token_top_k=profile.index.token_top_k,
        token_min_count=profile.index.token_min_count,
    )
    return IndexInputs(
        model, loaded.sae, sae_id, hook_name, stop_at_layer, windows, len({w.doc_id for w in windows}), config,
        corpus_content_hash(run_dir), {name: LabelSetInfo(s.kind, s.source) for name, s in label_sets.items()},
        labels_fingerprint(run_dir),
    )


def stage_settings(profile: Profile, inputs: IndexInputs, batch_size: int, n_shards: int) -> dict[str, Any]:
    return {
        "sae_id": inputs.sae_id,
        "hook_name": inputs.hook_name,
        "d_sae": inputs.config.n_features,
        "windows": len(inputs.windows),
        "tokens": sum(len(w.token_ids) for w in inputs.windows),
        "context_size": profile.n_ctx,
        "top_k": inputs.config.k,
        "context": f"{profile.index.context_before} before, {profile.index.context_after} after",
        "batch_size": batch_size,
        "shards": n_shards,
        "device": str(next(inputs.model.parameters()).device),
        "corpus_hash": inputs.corpus_hash,
    }


def partial_path(run_dir: Path, sae_id: str, shard: tuple[int, int]) -> Path:
    return Path(run_dir) / PARTIALS_DIR / sae_id / f"shard-{shard[0]}-of-{shard[1]}.pt"


def progress_path(run_dir: Path, sae_id: str, shard: tuple[int, int]) -> Path:
    """Where an unfinished first pass keeps its progress (`--save-every`)."""
    return Path(run_dir) / PARTIALS_DIR / sae_id / f"progress-{shard[0]}-of-{shard[1]}.pt"


def load_progress(path: Path, identity: dict[str, Any]) -> PassProgress | None:
    """The saved progress at `path` if it was made for exactly `identity` (corpus, plan, settings);
    a stale one is removed with a note."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, weights_only=False)
        stale = saved["identity"] != identity
        if not stale:  # saved by this version of the accumulators (an older one's state is refused)
            FeatureIndexAccumulators.from_state_dict(saved["progress"]["state"])
    except Exception as err:  # a damaged file, or an older version's: start again rather than fail
        print(f"  ignoring unreadable progress {path} ({type(err).__name__})", flush=True)
        stale = True
    if stale:
        print(f"  removing progress {path}: it was saved for another corpus, SAE or setting", flush=True)
        path.unlink()
        return None
    return PassProgress(**saved["progress"])


def run_index(
    profile: Profile, run_dir: Path, *, sae_id: str | None = None, max_tokens: int | None = None,
    batch_size: int = 8, shard: tuple[int, int] = (0, 1), progress: bool = True,
    save_every_s: float = DEFAULT_SAVE_EVERY_S, should_stop: Callable[[], bool] | None = None,
) -> Path:
    """Index one SAE (or one shard of it). Returns the database (or the partial) written.

    The first pass saves its progress every `save_every_s` seconds (0: never) under `index_partials/`;
    run again after an interruption and it resumes from there, ending with the same index.
    """
    run_dir = Path(run_dir)
    max_tokens = max_tokens if max_tokens is not None else (profile.index.n_tokens or None)
    inputs = load_inputs(profile, run_dir, sae_id, max_tokens, progress=progress)
    print_config(STAGE, stage_settings(profile, inputs, batch_size, shard[1]))
    saved_at = progress_path(run_dir, inputs.sae_id, shard)
    identity = {
        "corpus_hash": inputs.corpus_hash, "sae": sae_fingerprint(run_dir, inputs.sae_id), "batch_size": batch_size,
        "max_tokens": max_tokens, "n_windows": len(inputs.windows), "config": inputs.config.to_dict(),
        "dtype": profile.dtype,
    }
    resume = load_progress(saved_at, identity)
    if resume is not None:
        print(f"  resuming from {saved_at}: {resume.batches_done:,} batches ({resume.n_tokens:,} tokens) done", flush=True)

    def save(state: PassProgress) -> None:
        with atomic_file(saved_at) as tmp:
            torch.save({"identity": identity, "progress": state._asdict()}, tmp)
        checkpoint("index:progress-saved")

    result = run_index_pass(
        inputs.model, inputs.sae, inputs.hook_name, inputs.stop_at_layer, inputs.windows, inputs.config,
        batch_size=batch_size, shard=shard, progress=progress, resume=resume,
        save_progress=save if save_every_s > 0 else None, save_every_s=save_every_s, should_stop=should_stop,
    )
    checkpoint("index:pass-done")
    print(
        f"  pass: {result.n_tokens:,} tokens in {result.seconds:.1f}s "
        f"({result.n_tokens / max(result.seconds, 1e-9):,.0f} tokens/s)", flush=True,
    )
    meta = {
        "sae_id": inputs.sae_id, "shard": list(shard), "n_tokens": result.n_tokens, "n_windows": result.n_windows,
        "seconds": result.seconds, "batch_size": batch_size, "corpus_hash": inputs.corpus_hash,
        "n_corpus_windows": len(inputs.windows), "max_tokens": max_tokens,
    }
    if shard[1] > 1:
        path = partial_path(run_dir, inputs.sae_id, shard)
        with atomic_file(path) as tmp:
            torch.save({"meta": meta, "state": {k: v.cpu() for k, v in result.accumulators.state_dict().items()}}, tmp)
        saved_at.unlink(missing_ok=True)
        print(f"  wrote shard {shard[0]}/{shard[1]} to {path}; combine with `python -m precompute merge`", flush=True)
        return path
    written = finish_index(profile, run_dir, inputs, result.accumulators, [meta], progress=progress)
    saved_at.unlink(missing_ok=True)
    return written


def merge_partials(profile: Profile, run_dir: Path, *, sae_id: str | None = None, progress: bool = True) -> Path:
    """Combine every shard partial of `sae_id` and write the tables, as a single run would (the
    partials carry their kept examples' contexts)."""
    run_dir = Path(run_dir)
    sae_id = choose_sae_id(run_dir, sae_id, profile.hook_name)
    folder = Path(run_dir) / PARTIALS_DIR / sae_id
    inputs, merged, metas = load_merged_partials(profile, run_dir, sae_id, folder, progress=progress)
    checkpoint("merge:merged")
    return finish_index(profile, run_dir, inputs, merged, metas, progress=progress)


def load_merged_partials(
    profile: Profile, run_dir: Path, sae_id: str, folder: Path, *, progress: bool = True
) -> tuple[IndexInputs, FeatureIndexAccumulators, list[dict[str, Any]]]:
    """The n shard partials of `folder`, checked against each other and the run's corpus, merged."""
    paths = sorted(folder.glob("shard-*-of-*.pt")) if folder.is_dir() else []
    if not paths:
        raise RunFolderError(f"No shard partials in {folder}: run `python -m precompute index --shard i/n` first.")
    parts = [torch.load(p, map_location="cpu", weights_only=True) for p in paths]
    metas = [p["meta"] for p in parts]
    n = metas[0]["shard"][1]
    have = sorted(m["shard"][0] for m in metas if m["shard"][1] == n)
    if len(metas) != n or have != list(range(n)):
        raise RunFolderError(
            f"{folder} holds shards {[tuple(m['shard']) for m in metas]}; a merge needs exactly shards 0..{n - 1} of {n}."
        )
    if len({(m["corpus_hash"], m["batch_size"], m["n_corpus_windows"]) for m in metas}) != 1:
        raise RunFolderError(f"The partials in {folder} were built from different corpora, batch sizes or --tokens.")
    inputs = load_inputs(profile, run_dir, sae_id, metas[0]["max_tokens"], progress=progress)
    if len(inputs.windows) != metas[0]["n_corpus_windows"] or metas[0]["corpus_hash"] != inputs.corpus_hash:
        raise RunFolderError(f"The partials in {folder} were built from another corpus than {run_dir}'s.")
    try:
        states = [FeatureIndexAccumulators.from_state_dict(part["state"]) for part in parts]
    except ValueError as err:
        raise RunFolderError(
            f"The partials in {folder} cannot be merged: {err}. Rebuild them with "
            "`python -m precompute index --shard i/n` for every shard."
        ) from None
    merged = states[0]
    for state in states[1:]:
        merged.merge(state)
    if merged.config != inputs.config:
        raise RunFolderError(f"The partials in {folder} were built with another index configuration.")
    print(f"== merge == {len(parts)} shards of {sae_id}", flush=True)
    device = next(inputs.model.parameters()).device
    return inputs, FeatureIndexAccumulators.from_state_dict(merged.state_dict(), device), metas


def select_examples(accumulators: FeatureIndexAccumulators):
    """Finalise the totals and choose the interval samples: the same choice on every call."""
    totals = accumulators.finalise()
    selection = select_interval_samples(totals.samples, totals.stats, N_INTERVALS, PER_INTERVAL, scheme="quantile")
    return totals, selection


def finish_index(
    profile: Profile, run_dir: Path, inputs: IndexInputs, accumulators: FeatureIndexAccumulators,
    metas: list[dict[str, Any]], *, batch_size: int | None = None, progress: bool = True,
) -> Path:
    """Finalise the totals and write every table of the SAE's index in one atomic transaction."""
    started = time.perf_counter()
    batch_size = batch_size or metas[0]["batch_size"]
    totals, selection = select_examples(accumulators)
    cut = {"before": profile.index.context_before, "after": profile.index.context_after}
    ex, sm = totals.examples, selection.samples
    ex_contexts = contexts_from_values(inputs.windows, ex.context_id_N, ex.position_N, ex.context_values_NL, **cut)
    sm_contexts = contexts_from_values(inputs.windows, sm.context_id_N, sm.position_N, sm.context_values_NL, **cut)
    with torch.no_grad():
        lens = logit_lens(inputs.sae.W_dec.detach().float(), inputs.model.W_U.detach().float(), k=LOGIT_LENS_K)
        nearest = nearest_features(inputs.sae.W_dec.detach(), k=NEIGHBOURS_K)
    tokenizer = inputs.model.tokenizer
    wait_ids = tables.wait_like_token_ids(tokenizer)
    sae_id = inputs.sae_id
    stats, histograms = tables.activation_stats_rows(sae_id, totals)
    scores = tables.score_rows(sae_id, totals, lens, wait_ids)
    frames = {
        "index_contexts": tables.context_rows(sae_id, inputs.windows),
        "feature_activation_stats": stats,
        "feature_histograms": histograms,
        "feature_top_examples": tables.example_rows(sae_id, totals, ex_contexts),
        "feature_interval_samples": tables.interval_sample_rows(sae_id, selection, sm_contexts),
        "feature_logit_lens": tables.logit_lens_rows(sae_id, lens),
        "feature_neighbours": tables.neighbour_rows(sae_id, nearest),
        **scores,
        **tables.label_set_rows(sae_id, totals, inputs.label_infos),
        **tables.token_dependence_rows(sae_id, totals),
    }
    n_tokens = sum(m["n_tokens"] for m in metas)
    pass_seconds = max(m["seconds"] for m in metas)  # shards run side by side
    seconds = pass_seconds + time.perf_counter() - started
    run_row = {
        "sae_id": sae_id,
        "hook_name": inputs.hook_name,
        "d_sae": inputs.config.n_features,
        "n_tokens": n_tokens,
        "n_valid_tokens": int(totals.stats.n_valid),
        "n_windows": sum(m["n_windows"] for m in metas),
        "n_documents": inputs.n_documents,
        "n_shards": len(metas),
        "context_size": profile.n_ctx,
        "top_k": inputs.config.k,
        "context_before": profile.index.context_before,
        "context_after": profile.index.context_after,
        "corpus_hash": inputs.corpus_hash,
        "config_json": json.dumps(
            {"index": inputs.config.to_dict(), "batch_size": batch_size, "max_tokens": metas[0].get("max_tokens"),
             "windowing": WINDOWING_VERSION, "sae_fingerprint": sae_fingerprint(run_dir, sae_id),
             "labels": inputs.labels_fingerprint,
             "dtype": profile.dtype,
             "intervals": N_INTERVALS,
             "per_interval": PER_INTERVAL, "interval_scheme": "quantile", "versions": package_versions()},
            sort_keys=True, default=str,
        ),
        **scores.run_facts,
        "wait_token_ids": wait_ids,
        "device": str(next(inputs.model.parameters()).device),
        "seconds": round(seconds, 3),
        "tokens_per_second": round(n_tokens / max(pass_seconds, 1e-9), 1),
        "built_at": utc_now(),
    }
    vocabulary = tables.vocabulary_rows(tokenizer, inputs.model.cfg.d_vocab)
    db_path = database_path(run_dir)
    write_feature_index(db_path, sae_id, run_row, frames, vocabulary, provenance(profile, run_dir, STAGE))
    print(
        f"  wrote the index of {sae_id} ({inputs.config.n_features:,} features, {n_tokens:,} tokens) to {db_path} "
        f"in {seconds:.1f}s", flush=True,
    )
    return db_path


def index_is_current(profile: Profile, run_dir: Path) -> bool:
    """Whether the database already holds a current index (`current_index_ids`) of every SAE of the run:
    then `build` skips the stage."""
    sae_ids = list_sae_ids(run_dir)
    return bool(sae_ids) and set(sae_ids) <= current_index_ids(profile, run_dir)


def sae_ids_to_index(profile: Profile, run_dir: Path) -> list[str]:
    """The run's SAEs in the order `index` takes them: the main SAE (at the profile's hook) first."""
    sae_ids = list_sae_ids(run_dir)
    main = main_sae_id(run_dir, profile.hook_name, sae_ids)
    return [main, *(sae_id for sae_id in sae_ids if sae_id != main)] if main else []


def current_index_ids(profile: Profile, run_dir: Path) -> set[str]:
    """The run's SAEs whose index the database holds built from the current corpus and the SAE's
    current weights, with the profile's index settings, windows cut the current way, and the run's
    current label sets."""
    db_path = database_path(run_dir)
    sae_ids = list_sae_ids(run_dir)
    if not db_path.is_file() or not sae_ids:
        return set()
    try:
        runs = read_index_runs(db_path)
    except Exception:
        return set()
    if runs.empty:
        return set()
    corpus_hash = corpus_content_hash(run_dir)
    wanted = (
        profile.index.top_k, profile.index.context_before, profile.index.context_after, profile.index.n_tokens or None,
        WINDOWING_VERSION, profile.dtype, labels_fingerprint(run_dir),
        (profile.index.token_capacity, profile.index.token_top_k, profile.index.token_min_count),
    )

    def settings(row) -> tuple:
        config = json.loads(row.config_json)
        index = config.get("index", {})  # an index from before the token statistics has none of their settings
        return (
            row.top_k, row.context_before, row.context_after, config.get("max_tokens"), config.get("windowing", 1),
            config.get("dtype", "float32"), config.get("labels"),
            (index.get("token_capacity"), index.get("token_top_k"), index.get("token_min_count")),
        )

    def same_sae(row) -> bool:  # an SAE retrained under the same id makes its index stale
        return row.sae_id in sae_ids and json.loads(row.config_json).get("sae_fingerprint") == sae_fingerprint(run_dir, row.sae_id)

    return {
        row.sae_id for row in runs.itertuples()
        if row.corpus_hash == corpus_hash and settings(row) == wanted and same_sae(row)
    }

