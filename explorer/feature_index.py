"""The streaming pass of the feature index: corpus -> context windows -> model (stopped at the hook
layer) -> SAE encode -> `FeatureIndexAccumulators`, batch by batch. Each kept example's context (the
feature's activations around it) is read from its batch when the example is kept, so one forward over
the corpus is all the index costs.

Memory is bounded: only one batch's `[B, T, F]` activation tensor exists at a time, on the model's
device; nothing of size tokens x features reaches the host.

Windows. Each document is tokenised once and cut into windows of at most `context_size` tokens, and
every window starts with BOS: the first is the document's BOS and its first `context_size - 1`
tokens, each later one a BOS and the next `context_size - 1`. The model never sees a mid-document
token at position 0: there Qwen models put attention-sink activations of huge norm, which the SAE
never saw in training and which would crowd the top-k lists and histograms. BOS is a special token,
so it is in no statistic. Position p of a window is token `token_offset + p` of the document (BOS is
its token 0); a later window's BOS stands for no token of the document, so the example contexts
leave it out. Each window has a global context id, in document order, so ids are the same whatever
the sharding, and top-k keeps at most one example per window (docs/index-math.md).

The batch plan. Windows are grouped by length into buckets (multiples of `LENGTH_BUCKET` tokens) and
cut into batches of `batch_size` windows, every batch padded to the shape `[batch_size, bucket]`.
The plan depends only on the corpus and the batch size, never on the shard: shard i of n takes
batches i, i + n, ... (and `fetch_example_contexts`, the independent check of the kept contexts,
re-forwards the very batches the pass saw). A window is therefore always computed in the same batch,
and its activations are bit-identical in a single run, in a shard, and in that check. That is what
makes shard-and-merge equal a single pass bit for bit (a CPU or GPU matmul over a differently shaped
batch may round differently).

Shape suffixes (`acts_BTF`: batch, tokens, features): docs/shapes.md.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from collections.abc import Iterable, Sized
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from explorer.errors import ExplorerError
from explorer.feature_aggregates import ActivationBatch, FeatureIndexAccumulators, IndexConfig
from explorer.labels import NO_GROUP, PhraseSpan, token_group_ids
from explorer.lexicon import GROUPS, NOTEBOOK_GROUPS

LENGTH_BUCKET = 64
"""Windows are padded up to a multiple of this many tokens (the bucket of their length)."""

WINDOWING_VERSION = 2
"""How documents are cut into windows: 1, BOS only at a document's start; 2, BOS at every window's
start. Recorded with each index, so that `build` redoes an index cut the old way."""

TOKENISE_CHUNK = 512
"""Documents handed to the tokenizer per call (its batch encoder runs them in parallel); the progress
bar moves by a chunk at a time."""


class IndexInputError(ExplorerError, ValueError):
    """Input the index cannot use (an empty corpus, too few tokens, a bad shard); the message says why."""


class Window(NamedTuple):
    """One context window of one document: BOS, then up to `context_size - 1` of its tokens.

    Position p of the window is token `token_offset + p` of the document, counting the document's own
    BOS as its token 0; in a later window position 0 is a BOS put there for the model
    (`bos_prefixed`), standing in for no token of the document.
    """

    context_id: int
    doc_id: str
    token_offset: int
    token_ids: np.ndarray  # [T_w] int64
    valid: np.ndarray  # [T_w] bool: False on BOS/EOS/special tokens
    group_ids: np.ndarray  # [T_w] int8
    phrase_start: np.ndarray  # [T_w] bool
    doc_has_backtracking: bool
    bos_prefixed: bool = False
    """Position 0 is a BOS added in front of a later window, not one of the document's tokens."""
    sentence_ids: np.ndarray | None = None
    """[T_w] int32: the index of the document's sentence each token lies in, -1 outside every sentence
    (BOS, text outside the sentences); None when the documents came without sentences."""
    label_bits: np.ndarray | None = None
    """[T_w] uint32: bit l set when the token overlaps a positive span of label set l."""
    label_start_bits: np.ndarray | None = None
    """[T_w] uint32: bit l set on the first token of each positive span of label set l."""
    sentence_label_bits: np.ndarray | None = None
    """[T_w] uint32: bit l set on the tokens of a sentence that is positive for label set l."""
    label_scope: int = 0
    """Bit l set when label set l labels this window's document (outside its documents a set says
    nothing, so they are neither positives nor negatives)."""


MAX_LABEL_SETS = 32
"""Label sets one index scores at most (their token masks are bits of a uint32)."""


@dataclass(frozen=True)
class CorpusDocument:
    doc_id: str
    text: str
    spans: Sequence[PhraseSpan]
    has_backtracking: bool
    sentences: Sequence[tuple[int, int]] = ()
    """The document's sentences as character spans [start, end), in order, not overlapping."""
    label_spans: Sequence[Sequence[tuple[int, int]]] = ()
    """Per label set of the index (in its order), this document's positive character spans."""
    positive_sentences: Sequence[Sequence[int]] = ()
    """Per label set, the indices (into `sentences`) of this document's positive sentences."""
    label_scope: int = 0
    """Bit l set when label set l labels this document."""


class LabelSetInput(NamedTuple):
    """A label set as the index takes it: the positive character spans of each document."""

    name: str
    kind: str
    """"span" (phrases, regular expressions) or "sentence" (tags on whole sentences)."""
    source: str
    spans: Mapping[str, Sequence[tuple[int, int]]]
    """doc_id -> positive [start, end) character spans; a document not listed has none."""
    documents: frozenset[str] | None = None
    """The documents the set labels (None: all); the others are left out of its scores."""
    positive_sentences: Mapping[str, Sequence[int]] = {}
    """doc_id -> indices of its positive sentences (`explorer.label_sets.sentence_positives`'s rule)."""


def with_labels(
    documents: Sequence[CorpusDocument], label_sets: Sequence[LabelSetInput],
    sentences: Mapping[str, Sequence[tuple[int, int]]] | None,
) -> list[CorpusDocument]:
    """The documents with their sentences and each label set's spans (in `label_sets` order) attached."""
    return [
        dataclasses.replace(
            doc,
            sentences=tuple(sentences.get(doc.doc_id, ())) if sentences is not None else doc.sentences,
            label_spans=tuple(tuple(ls.spans.get(doc.doc_id, ())) for ls in label_sets),
            positive_sentences=tuple(tuple(ls.positive_sentences.get(doc.doc_id, ())) for ls in label_sets),
            label_scope=sum(1 << i for i, ls in enumerate(label_sets) if ls.documents is None or doc.doc_id in ls.documents),
        )
        for doc in documents
    ]


def make_windows(
    tokenizer, documents: Iterable[CorpusDocument], context_size: int, *, progress: bool = True,
    max_tokens: int | None = None, label_sets: Sequence[LabelSetInput] = (),
    sentences: Mapping[str, Sequence[tuple[int, int]]] | None = None,
) -> list[Window]:
    """Tokenise every document and cut it into windows of at most `context_size` tokens, each one BOS
    and the document's next `context_size - 1` tokens (module docstring). A tokenizer without BOS
    gives plain cuts of `context_size` tokens. `tokenizer` must be a fast one (offsets).

    Context ids are assigned in document order, so they are the same whatever the sharding. With
    `max_tokens`, tokenising stops once the windows hold that many tokens (`limit_tokens` then cuts
    them exactly): an index of 40M tokens of a 1B-token corpus tokenises 40M, not 1B. `documents` is
    iterated `TOKENISE_CHUNK` at a time and no further than that, so a lazy reader of the corpus
    (`precompute.index_stage.CorpusReader`) reads no more of it than the windows need; the windows are
    the same as from a list of the same documents.

    With `label_sets` (at most `MAX_LABEL_SETS`) and `sentences` (doc_id -> character spans), each
    window also carries the sentence of each token and the label sets' token bits (`Window`).
    """
    if len(label_sets) > MAX_LABEL_SETS:
        raise IndexInputError(f"an index scores at most {MAX_LABEL_SETS} label sets, not {len(label_sets)}: choose fewer")
    bos = tokenizer.bos_token_id
    n_bos = 0 if bos is None else 1
    if context_size <= n_bos:
        raise IndexInputError(f"context windows need room for BOS and a token of text, not {context_size} tokens")
    special_ids = np.asarray(sorted(tokenizer.all_special_ids), dtype=np.int64)
    windows: list[Window] = []
    n_tokens = 0
    total = len(documents) if isinstance(documents, Sized) else None
    remaining = iter(documents)
    with tqdm(total=total, desc="tokenising", unit="doc", disable=not progress, smoothing=0.1) as bar:
        while chunk := list(itertools.islice(remaining, TOKENISE_CHUNK)):
            if label_sets or sentences is not None:
                chunk = with_labels(chunk, label_sets, sentences)
            made = _chunk_windows(tokenizer, chunk, context_size, bos, special_ids, first_context_id=len(windows))
            windows.extend(made)
            bar.update(len(chunk))
            n_tokens += sum(len(w.token_ids) for w in made)
            if max_tokens and n_tokens >= max_tokens:
                break
    return windows


def _chunk_windows(
    tokenizer, documents: Sequence[CorpusDocument], context_size: int, bos: int | None, special_ids: np.ndarray,
    *, first_context_id: int,
) -> list[Window]:
    """`make_windows` for one chunk of documents, vectorised: one tokenizer call for the chunk, its
    text tokens end to end in one flat array (X), and every window's tokens gathered from it into
    another (Y: the windows end to end), which is then cut into the windows."""
    # The tokenizer's own call rather than its backend's encode_batch: the call first resets the
    # truncation and padding an earlier call (transformer_lens's to_tokens) may have left on the backend.
    enc = tokenizer(
        [doc.text for doc in documents], add_special_tokens=False, return_offsets_mapping=True,
        return_attention_mask=False, return_token_type_ids=False, verbose=False,
    )
    n_Q = np.fromiter(map(len, enc["input_ids"]), dtype=np.int64, count=len(documents))  # text tokens per document
    first_Q = np.cumsum(n_Q) - n_Q  # each document's first token in X
    ids_X = np.fromiter(itertools.chain.from_iterable(enc["input_ids"]), dtype=np.int64, count=int(n_Q.sum()))
    group_X = np.full(len(ids_X), NO_GROUP, dtype=np.int8)
    for d, doc in enumerate(documents):
        if doc.spans:
            group_X[first_Q[d] : first_Q[d] + n_Q[d]] = token_group_ids(enc["offset_mapping"][d], doc.spans)
    # A phrase start: a backtracking token whose predecessor in the document is not in the same group.
    prev_X = np.roll(group_X, 1)
    prev_X[first_Q[n_Q > 0]] = NO_GROUP
    start_X = np.isin(group_X, [GROUPS.index(g) for g in NOTEBOOK_GROUPS]) & (group_X != prev_X)
    with_sentences = any(doc.sentences for doc in documents)
    with_labels = any(doc.label_spans for doc in documents)
    sentence_X = np.full(len(ids_X), -1, dtype=np.int32)
    label_X = np.zeros(len(ids_X), dtype=np.uint32)
    label_start_X = np.zeros(len(ids_X), dtype=np.uint32)
    sentence_label_X = np.zeros(len(ids_X), dtype=np.uint32)
    for d, doc in enumerate(documents):
        if not (doc.sentences or doc.label_spans) or not n_Q[d]:
            continue
        at = slice(first_Q[d], first_Q[d] + n_Q[d])
        offsets = np.asarray(enc["offset_mapping"][d], dtype=np.int64).reshape(-1, 2)
        if doc.sentences:
            sentence_X[at] = sentence_of_tokens(offsets, doc.sentences)
        for label, spans in enumerate(doc.label_spans):
            inside, starts = span_token_masks(offsets, spans)
            label_X[at] |= inside.astype(np.uint32) << np.uint32(label)
            label_start_X[at] |= starts.astype(np.uint32) << np.uint32(label)
        for label, positive in enumerate(doc.positive_sentences):
            if len(positive):
                in_positive = np.isin(sentence_X[at], np.asarray(positive, dtype=np.int32))
                sentence_label_X[at] |= in_positive.astype(np.uint32) << np.uint32(label)

    # Window k of a document: BOS, then its text tokens [k * step, (k + 1) * step).
    n_bos = 0 if bos is None else 1
    step = context_size - n_bos
    n_windows_Q = np.maximum(-(-n_Q // step), n_bos)  # an empty document still gives its BOS
    doc_W = np.repeat(np.arange(len(documents)), n_windows_Q)
    k_W = np.arange(len(doc_W)) - np.repeat(np.cumsum(n_windows_Q) - n_windows_Q, n_windows_Q)
    length_W = n_bos + np.minimum(step, n_Q[doc_W] - k_W * step)
    end_W = np.cumsum(length_W)
    window_Y = np.repeat(np.arange(len(doc_W)), length_W)
    position_Y = np.arange(len(window_Y)) - (end_W - length_W)[window_Y]
    text_Y = position_Y >= n_bos
    source = (first_Q[doc_W] + k_W * step)[window_Y][text_Y] + position_Y[text_Y] - n_bos  # text_Y's tokens in X
    ids_Y = np.full(len(window_Y), 0 if bos is None else bos, dtype=np.int64)
    ids_Y[text_Y] = ids_X[source]
    group_Y = np.full(len(window_Y), NO_GROUP, dtype=np.int8)
    group_Y[text_Y] = group_X[source]
    start_Y = np.zeros(len(window_Y), dtype=bool)
    start_Y[text_Y] = start_X[source]
    valid_Y = ~np.isin(ids_Y, special_ids)
    sentence_Y = label_Y = label_start_Y = sentence_label_Y = None
    if with_sentences:
        sentence_Y = np.full(len(window_Y), -1, dtype=np.int32)
        sentence_Y[text_Y] = sentence_X[source]
    if with_labels:
        label_Y, label_start_Y, sentence_label_Y = (np.zeros(len(window_Y), dtype=np.uint32) for _ in range(3))
        label_Y[text_Y], label_start_Y[text_Y] = label_X[source], label_start_X[source]
        sentence_label_Y[text_Y] = sentence_label_X[source]

    def cut(array: np.ndarray | None, start: int, end: int) -> np.ndarray | None:
        return None if array is None else array[start:end]

    windows = []
    for w, (d, k, start, end) in enumerate(zip(doc_W.tolist(), k_W.tolist(), (end_W - length_W).tolist(), end_W.tolist())):
        doc = documents[d]
        windows.append(Window(
            first_context_id + w, doc.doc_id, k * step, ids_Y[start:end], valid_Y[start:end], group_Y[start:end],
            start_Y[start:end], doc.has_backtracking, bos_prefixed=n_bos == 1 and k > 0,
            sentence_ids=cut(sentence_Y, start, end), label_bits=cut(label_Y, start, end),
            label_start_bits=cut(label_start_Y, start, end), sentence_label_bits=cut(sentence_label_Y, start, end),
            label_scope=doc.label_scope,
        ))
    return windows


def sentence_of_tokens(offsets: np.ndarray, sentences: Sequence[tuple[int, int]]) -> np.ndarray:
    """For each token (`offsets`: [n, 2] character spans), the index of the sentence holding its last
    character, or -1. The last character, because a token such as " The" begins on the space before
    its sentence."""
    bounds = np.asarray(sentences, dtype=np.int64).reshape(-1, 2)
    last_char = np.maximum(offsets[:, 1] - 1, offsets[:, 0])
    k = np.searchsorted(bounds[:, 0], last_char, side="right") - 1
    inside = (k >= 0) & (last_char < bounds[np.maximum(k, 0), 1]) & (offsets[:, 1] > offsets[:, 0])
    return np.where(inside, k, -1).astype(np.int32)


def span_token_masks(offsets: np.ndarray, spans: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Tokens whose characters overlap a span (as `labels.token_spans` decides for phrases), and the
    first such token of each span. `offsets`: [n, 2] character spans, in order."""
    inside = np.zeros(len(offsets), dtype=bool)
    first = np.zeros(len(offsets), dtype=bool)
    non_empty = np.flatnonzero(offsets[:, 1] > offsets[:, 0])
    if not len(spans) or not len(non_empty):
        return inside, first
    bounds = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    starts, ends = offsets[non_empty, 0], offsets[non_empty, 1]
    lo = np.searchsorted(ends, bounds[:, 0], side="right")  # the first token ending after the span starts
    hi = np.searchsorted(starts, bounds[:, 1], side="left")  # past the last token starting before it ends
    for a, b in zip(lo[lo < hi].tolist(), hi[lo < hi].tolist()):
        inside[non_empty[a:b]] = True
        first[non_empty[a]] = True
    return inside, first


def limit_tokens(windows: Sequence[Window], max_tokens: int | None) -> tuple[list[Window], str | None]:
    """The first windows (in context order) holding at least `max_tokens` tokens, and a notice when
    the corpus has fewer tokens than asked. `None` or 0 keeps everything."""
    available = sum(len(w.token_ids) for w in windows)
    if not max_tokens:
        return list(windows), None
    if max_tokens >= available:
        return list(windows), f"--tokens {max_tokens:,} is more than the corpus has: using all {available:,} tokens"
    kept, total = [], 0
    for w in windows:
        if total >= max_tokens:
            break
        kept.append(w)
        total += len(w.token_ids)
    return kept, None


# --- the batch plan ---------------------------------------------------------------------------------


class PlannedBatch(NamedTuple):
    index: int
    length: int
    """Padded length T of every row."""
    windows: tuple[int, ...]
    """Positions (in the window list) of the real rows; rows beyond them are padding."""


def plan_batches(windows: Sequence[Window], batch_size: int) -> list[PlannedBatch]:
    """Fixed-shape batches: windows bucketed by length, in context order within a bucket."""
    if batch_size < 1:
        raise IndexInputError(f"batch size must be at least 1, not {batch_size}")
    buckets: dict[int, list[int]] = {}
    for i, w in enumerate(windows):
        length = -(-len(w.token_ids) // LENGTH_BUCKET) * LENGTH_BUCKET
        buckets.setdefault(length, []).append(i)
    plan: list[PlannedBatch] = []
    for length in sorted(buckets):
        members = buckets[length]
        for start in range(0, len(members), batch_size):
            plan.append(PlannedBatch(len(plan), length, tuple(members[start : start + batch_size])))
    return plan


def parse_shard(text: str, environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """`"i/n"` -> (i, n), with 0 <= i < n. `"auto"` reads RANK and WORLD_SIZE, as torchrun sets them."""
    if text == "auto":
        env = os.environ if environ is None else environ
        if "RANK" not in env or "WORLD_SIZE" not in env:
            raise IndexInputError("--shard auto reads RANK and WORLD_SIZE (set by torchrun); neither is set")
        text = f"{env['RANK']}/{env['WORLD_SIZE']}"
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise IndexInputError(f"--shard takes i/n, for example 0/4, not {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise IndexInputError(f"--shard {text}: need 0 <= i < n")
    return i, n


def shard_batches(plan: Sequence[PlannedBatch], shard: tuple[int, int]) -> list[PlannedBatch]:
    i, n = shard
    return list(plan[i::n])


class BatchTensors(NamedTuple):
    ids_BT: Tensor
    valid_BT: Tensor
    group_BT: Tensor
    start_BT: Tensor
    n_real: int
    sentence_BT: Tensor | None = None
    label_bits_BT: Tensor | None = None
    label_start_bits_BT: Tensor | None = None
    sentence_label_bits_BT: Tensor | None = None
    label_scope_B: Tensor | None = None


def batch_tensors(windows: Sequence[Window], batch: PlannedBatch, batch_size: int, pad_id: int) -> BatchTensors:
    B, T = batch_size, batch.length
    ids_BT = torch.full((B, T), pad_id, dtype=torch.long)
    valid_BT = torch.zeros(B, T, dtype=torch.bool)
    group_BT = torch.full((B, T), NO_GROUP, dtype=torch.int8)
    start_BT = torch.zeros(B, T, dtype=torch.bool)
    members = [windows[i] for i in batch.windows]
    sentence_BT = torch.full((B, T), -1, dtype=torch.int64) if any(w.sentence_ids is not None for w in members) else None
    labelled = any(w.label_bits is not None for w in members)
    label_BT, label_start_BT, sentence_label_BT = (
        (torch.zeros(B, T, dtype=torch.int64) for _ in range(3)) if labelled else (None, None, None)
    )
    label_scope_B = torch.tensor([w.label_scope for w in members] + [0] * (B - len(members)), dtype=torch.int64)
    for b, w in enumerate(members):
        n = len(w.token_ids)
        ids_BT[b, :n] = torch.from_numpy(w.token_ids)
        valid_BT[b, :n] = torch.from_numpy(w.valid)
        group_BT[b, :n] = torch.from_numpy(w.group_ids)
        start_BT[b, :n] = torch.from_numpy(w.phrase_start)
        if sentence_BT is not None and w.sentence_ids is not None:
            sentence_BT[b, :n] = torch.from_numpy(w.sentence_ids.astype(np.int64))
        if labelled and w.label_bits is not None:
            label_BT[b, :n] = torch.from_numpy(w.label_bits.astype(np.int64))
            label_start_BT[b, :n] = torch.from_numpy(w.label_start_bits.astype(np.int64))
            sentence_label_BT[b, :n] = torch.from_numpy(w.sentence_label_bits.astype(np.int64))
    return BatchTensors(
        ids_BT, valid_BT, group_BT, start_BT, len(batch.windows), sentence_BT, label_BT, label_start_BT,
        sentence_label_BT, label_scope_B if labelled else None,
    )


@torch.no_grad()
def encode_windows(model, sae, hook_name: str, stop_at_layer: int, ids_BT: Tensor) -> Tensor:
    """SAE activations `[B, T, F]` at `hook_name`, with the forward running blocks
    `0 .. stop_at_layer - 1` only (`sae_loading.stop_layer_for_hook`: the hook's block + 1).

    Padding sits at the end of each row and attention is causal, so it does not change real tokens.
    """
    _, cache = model.run_with_cache(ids_BT, names_filter=hook_name, stop_at_layer=stop_at_layer)
    resid_BTD = cache[hook_name]
    return sae.encode(resid_BTD.to(sae.W_enc.dtype)).float().clamp_min(0)


def _pad_id(model) -> int:
    tokenizer = getattr(model, "tokenizer", None)
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None) if tokenizer is not None else None
        if value is not None:
            return int(value)
    return 0


def _forward_batches(
    model, sae, hook_name: str, stop_at_layer: int, windows: Sequence[Window], batches: Sequence[PlannedBatch],
    batch_size: int, *, desc: str, progress: bool,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[tuple[PlannedBatch, BatchTensors, Tensor]]:
    device = next(model.parameters()).device
    pad_id = _pad_id(model)
    bar = None
    if progress:
        total = sum(len(windows[i].token_ids) for b in batches for i in b.windows)
        bar = tqdm(total=total, unit="tok", unit_scale=True, desc=desc, smoothing=0.1)
    try:
        for batch in batches:
            if should_stop is not None and should_stop():
                raise KeyboardInterrupt
            tensors = batch_tensors(windows, batch, batch_size, pad_id)
            acts_BTF = encode_windows(model, sae, hook_name, stop_at_layer, tensors.ids_BT.to(device))
            yield batch, tensors, acts_BTF
            if bar is not None:
                bar.update(sum(len(windows[i].token_ids) for i in batch.windows))
    finally:
        if bar is not None:
            bar.close()


class PassResult(NamedTuple):
    accumulators: FeatureIndexAccumulators
    n_tokens: int
    n_windows: int
    seconds: float


class PassProgress(NamedTuple):
    """How far a first pass has got: the first `batches_done` batches of its shard, and what they added.
    Saved now and then by `run_index_pass`, so an interrupted pass resumes where it stopped."""

    batches_done: int
    n_tokens: int
    n_windows: int
    seconds: float
    state: dict[str, Tensor]
    """`FeatureIndexAccumulators.state_dict()`, on the CPU."""


def stream_index(
    model, sae, hook_name: str, stop_at_layer: int, windows: Sequence[Window], config: IndexConfig,
    *, batch_size: int = 8, shard: tuple[int, int] = (0, 1), max_tokens: int | None = None, progress: bool = True,
) -> tuple[FeatureIndexAccumulators, int]:
    """Feed the windows of shard `(i, n)` through the model and SAE into the accumulators.
    Returns the accumulators and the number of tokens seen. (`run_index_pass` with the defaults.)"""
    windows, notice = limit_tokens(windows, max_tokens)
    if notice:
        print(notice, flush=True)
    result = run_index_pass(model, sae, hook_name, stop_at_layer, windows, config, batch_size=batch_size, shard=shard, progress=progress)
    return result.accumulators, result.n_tokens


def run_index_pass(
    model, sae, hook_name: str, stop_at_layer: int, windows: Sequence[Window], config: IndexConfig,
    *, batch_size: int = 8, shard: tuple[int, int] = (0, 1), progress: bool = True,
    resume: PassProgress | None = None, save_progress: Callable[[PassProgress], None] | None = None,
    save_every_s: float = 600.0, should_stop: Callable[[], bool] | None = None,
) -> PassResult:
    """The first pass over the batches of shard `(i, n)` of the plan of `windows`.

    With `save_progress`, the pass hands its progress to it every `save_every_s` seconds (after the batch
    that crosses the mark); `resume` continues from such a progress, skipping the batches it holds. The
    accumulators merge exactly and see the batches in the same order, so a resumed pass ends with the
    same state as an uninterrupted one. `should_stop` (checked before each batch) interrupts the pass
    with KeyboardInterrupt, as Ctrl-C does.
    """
    if not windows:
        raise IndexInputError("the corpus is empty: no context windows to index")
    device = next(model.parameters()).device
    mine = shard_batches(plan_batches(windows, batch_size), shard)
    if resume is None:
        acc = FeatureIndexAccumulators(config, device)
        done, n_tokens, n_windows, previous_seconds = 0, 0, 0, 0.0
    else:
        acc = FeatureIndexAccumulators.from_state_dict(resume.state, device)
        if acc.config != config or resume.batches_done > len(mine):
            raise IndexInputError("the saved progress was made with another index configuration or batch plan")
        done, n_tokens, n_windows, previous_seconds = resume.batches_done, resume.n_tokens, resume.n_windows, resume.seconds
    t0 = last_save = time.perf_counter()
    for batch, t, acts_BTF in _forward_batches(
        model, sae, hook_name, stop_at_layer, windows, mine[done:], batch_size, desc=f"index {shard[0]}/{shard[1]}",
        progress=progress, should_stop=should_stop,
    ):
        n = t.n_real
        rows = [windows[i] for i in batch.windows]
        acc.update(
            ActivationBatch(
                acts_BTF=acts_BTF[:n],
                token_ids_BT=t.ids_BT[:n],
                valid_BT=t.valid_BT[:n],
                group_ids_BT=t.group_BT[:n],
                doc_has_backtracking_B=torch.tensor([w.doc_has_backtracking for w in rows], dtype=torch.bool),
                context_ids_B=torch.tensor([w.context_id for w in rows], dtype=torch.long),
                phrase_start_mask_BT=t.start_BT[:n],
                sentence_BT=None if t.sentence_BT is None else t.sentence_BT[:n],
                label_bits_BT=None if t.label_bits_BT is None else t.label_bits_BT[:n],
                label_start_bits_BT=None if t.label_start_bits_BT is None else t.label_start_bits_BT[:n],
                sentence_label_bits_BT=None if t.sentence_label_bits_BT is None else t.sentence_label_bits_BT[:n],
                label_scope_B=None if t.label_scope_B is None else t.label_scope_B[:n],
            ).to(device)
        )
        n_tokens += sum(len(w.token_ids) for w in rows)
        n_windows += n
        done += 1
        if save_progress is not None and done < len(mine) and time.perf_counter() - last_save >= save_every_s:
            seconds = previous_seconds + time.perf_counter() - t0
            save_progress(PassProgress(done, n_tokens, n_windows, seconds, {k: v.cpu() for k, v in acc.state_dict().items()}))
            last_save = time.perf_counter()
    return PassResult(acc, n_tokens, n_windows, previous_seconds + time.perf_counter() - t0)


# --- the context of each kept example --------------------------------------------------------------


class ExampleContexts(NamedTuple):
    """For each requested (feature, context_id, position): the tokens around it and the feature's
    activation on each of them (0 on special tokens, which the index leaves out). A context is a
    stretch of its document: it never holds the BOS put in front of a later window."""

    first_position_N: np.ndarray
    """Position in the window of each context's first token."""
    token_ids: list[list[int]]
    activations: list[list[float]]


def contexts_from_values(
    windows: Sequence[Window], context_id_N: Tensor, position_N: Tensor, values_NL: Tensor, *, before: int, after: int,
) -> ExampleContexts:
    """The contexts the accumulators kept during the pass (`context_values_NL`: the feature on positions
    `position - before .. position + after`), cut to the window's document tokens and given the
    window's token ids: the same contexts `fetch_example_contexts` reads with a second forward."""
    N = int(context_id_N.numel())
    if values_NL is None or values_NL.shape != (N, before + 1 + after):
        raise IndexInputError(f"need {N} kept contexts of {before + 1 + after} values, not {None if values_NL is None else tuple(values_NL.shape)}")
    window_of_context = {w.context_id: w for w in windows}
    first = np.zeros(N, dtype=np.int64)
    tokens: list[list[int]] = []
    acts: list[list[float]] = []
    values = values_NL.cpu().numpy()
    for n, (cid, pos) in enumerate(zip(context_id_N.tolist(), position_N.tolist())):
        w = window_of_context.get(cid)
        if w is None:
            raise IndexInputError(f"example context {cid} is not in this corpus: was the index built on another one?")
        lo, hi = max(pos - before, int(w.bos_prefixed)), min(pos + after, len(w.token_ids) - 1)
        first[n] = lo
        tokens.append(w.token_ids[lo : hi + 1].tolist())
        acts.append(values[n, lo - pos + before : hi - pos + before + 1].tolist())
    return ExampleContexts(first, tokens, acts)


def fetch_example_contexts(
    model, sae, hook_name: str, stop_at_layer: int, windows: Sequence[Window],
    feature_N: Tensor, context_id_N: Tensor, position_N: Tensor,
    *, before: int, after: int, batch_size: int = 8, shard: tuple[int, int] = (0, 1), progress: bool = True,
) -> ExampleContexts:
    """Re-forward the planned batches that hold a requested window and read each example's context.

    The index no longer needs this (its accumulators keep each example's context during the pass:
    `contexts_from_values`); it is the independent route the tests check those contexts against.
    The same batches as the first pass, so every value equals the one the first pass saw, bit for bit.
    With `shard=(i, n)` only the batches of shard i (those `shard_batches` gives it) are forwarded; the
    other requests keep an empty context (a fetched one holds at least the example's own token).
    """
    N = int(feature_N.numel())
    first = np.zeros(N, dtype=np.int64)
    tokens: list[list[int]] = [[] for _ in range(N)]
    acts: list[list[float]] = [[] for _ in range(N)]
    if N == 0:
        return ExampleContexts(first, tokens, acts)
    window_of_context = {w.context_id: i for i, w in enumerate(windows)}
    plan = plan_batches(windows, batch_size)
    batch_of_window = {i: (b.index, row) for b in plan for row, i in enumerate(b.windows)}
    requests: dict[int, list[int]] = {}
    context_np, position_np, feature_np = context_id_N.cpu().numpy(), position_N.cpu().numpy(), feature_N.cpu().numpy()
    for n in range(N):
        cid = int(context_np[n])
        if cid not in window_of_context:
            raise IndexInputError(f"example context {cid} is not in this corpus: was the index built on another one?")
        requests.setdefault(batch_of_window[window_of_context[cid]][0], []).append(n)
    needed = [plan[b] for b in sorted(requests) if b % shard[1] == shard[0]]
    offsets = torch.arange(-before, after + 1)
    for batch, t, acts_BTF in _forward_batches(
        model, sae, hook_name, stop_at_layer, windows, needed, batch_size, desc="example contexts", progress=progress
    ):
        idx = np.asarray(requests[batch.index])
        rows = torch.tensor([batch_of_window[window_of_context[int(context_np[n])]][1] for n in idx])
        pos_R = torch.from_numpy(position_np[idx].astype(np.int64))
        feat_R = torch.from_numpy(feature_np[idx].astype(np.int64))
        members = [windows[batch.windows[int(r)]] for r in rows]
        lengths_R = torch.tensor([len(w.token_ids) for w in members])
        lowest_R = torch.tensor([int(w.bos_prefixed) for w in members])  # the first document token
        grid_RL = pos_R[:, None] + offsets[None, :]
        inside_RL = (grid_RL >= lowest_R[:, None]) & (grid_RL < lengths_R[:, None])
        safe_RL = grid_RL.clamp(0, batch.length - 1)
        device = acts_BTF.device
        values_RL = acts_BTF[rows[:, None].to(device), safe_RL.to(device), feat_R[:, None].to(device)].cpu()
        valid_RL = t.valid_BT[rows[:, None], safe_RL]
        values_RL = torch.where(valid_RL, values_RL, torch.zeros_like(values_RL)).numpy()
        ids_RL = t.ids_BT[rows[:, None], safe_RL].numpy()
        inside_RL, grid_RL = inside_RL.numpy(), grid_RL.numpy()
        for r, n in enumerate(idx.tolist()):
            keep = inside_RL[r]
            first[n] = grid_RL[r][keep][0]
            tokens[n] = ids_RL[r][keep].tolist()
            acts[n] = values_RL[r][keep].tolist()
    return ExampleContexts(first, tokens, acts)
