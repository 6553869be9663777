"""Mergeable accumulators for the feature index: the computational core of one streaming pass.

No I/O, no model, no SQL. The streaming pass (model forward stopped at the hook layer, SAE encode)
hands each batch to the accumulators here as an `ActivationBatch`. Every accumulator

- keeps a bounded state: nothing grows with the corpus except the interval-sample sketch, which is
  bounded by `features x bins x per_bin`; no tokens x features matrix outlives one batch;
- `update(batch)` folds in one batch, on whatever device the accumulator lives on;
- `merge(other)` folds in another accumulator's state (a shard);
- `state_dict()` / `from_state_dict()` export and rebuild it as a flat dict of tensors (for a shard
  file), the configuration included;
- `finalise()` turns the state into totals (a NamedTuple of tensors). Scores are computed from the
  totals in `explorer.feature_scores`.

Exactness. A merge of shards equals a single pass bit for bit, whatever the shard order and the
batch sizes, because every state is made of integers (counts, histograms, fixed-point sums), maxima,
or selections under a strict total order. Float sums are not associative, so activation sums are kept
in fixed point (`ExactSum`): each activation is rounded to a multiple of 2**-24 once, then summed in
int64. One exception: the token-mass sketch (`TokenMassAccumulator`) is exact, and so merges bit for
bit, only for features that fire on at most its capacity of distinct token ids; for the others its
estimates depend on the order of the data, always within their stated bound. Definitions, binning,
tie handling and error bounds: docs/index-math.md.
Shape suffixes (`acts_BTF`: batch, tokens, features; `hist_FH`: features, bins): docs/shapes.md.

## The batch contract (what the streaming pass supplies)
`ActivationBatch` holds B context windows of T tokens and F features (all features of the SAE, or the
chunk `[feature_offset, feature_offset + F)` an accumulator was built for):
- `acts_BTF`: SAE feature activations, float (any float dtype; compared as float32), non-negative and
  finite (ReLU-family SAEs). A negative, NaN or infinite value raises `ValueError`.
- `token_ids_BT`: int64 token ids (< vocab_size where a vocabulary-sized accumulator is used).
- `valid_BT`: bool, True on real text tokens. False on BOS, EOS, other special tokens and padding:
  those tokens take part in no statistic at all (not as negatives, not in the density's
  denominator, not as lead-lag targets, not inside a ReasonScore match).
- `group_ids_BT`: int8 from `explorer.labels.token_group_ids`: the index in `GROUPS` of the labelled
  phrase a token lies in, or `NO_GROUP` (-1).
- `doc_has_backtracking_B`: bool, the document-level label of the trace each window comes from.
- `context_ids_B`: int64 >= 0, a global id per context window, unique across the whole corpus and
  all shards. Examples are reported as (context_id, position) and ties are broken by it.
- `phrase_start_mask_BT`: bool, True on the first token of each backtracking phrase (the lead-lag
  anchors; which groups count is the caller's choice). Starts on invalid tokens are ignored.
- optional, for the label sets (`LabelSetAccumulator`; None without them): `sentence_BT`, int64, the
  index in its document of the sentence each token lies in (-1 outside every sentence);
  `label_bits_BT`, int64, bit l set on tokens inside a positive span of label set l;
  `label_start_bits_BT`, int64, bit l set on the first token of each such span;
  `sentence_label_bits_BT`, int64, bit l set on the tokens of a sentence positive for label set l;
  `label_scope_B`, int64, bit l set when label set l labels the window's document (None: all do).

Each context window belongs to one document and is processed exactly once in the whole corpus (one
shard, one batch): a window is never split across batches. Windows do not wrap: offsets, widened
matches and multi-token matches stop at the window's edge.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from decimal import Decimal, localcontext
from functools import cached_property
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import torch
from torch import Tensor

from explorer.labels import NO_GROUP
from explorer.lexicon import GROUPS

FRAC_BITS = 24
"""Fixed-point resolution of `ExactSum`: every summand is rounded to a multiple of 2**-24."""

REASONSCORE_WORDS: tuple[str, ...] = (
    "alternatively", "hmm", "maybe", "wait", "perhaps", "let me", "therefore", "however", "but", "another",
)
"""The reasoning vocabulary of ReasonScore (Galichin et al. 2025): one group per word."""


# --------------------------------------------------------------------------------------------------
# The batch
# --------------------------------------------------------------------------------------------------


class ActivationBatch(NamedTuple):
    """One batch of B context windows x T tokens x F features. Contract: the module docstring."""

    acts_BTF: Tensor
    token_ids_BT: Tensor
    valid_BT: Tensor
    group_ids_BT: Tensor
    doc_has_backtracking_B: Tensor
    context_ids_B: Tensor
    phrase_start_mask_BT: Tensor
    sentence_BT: Tensor | None = None
    label_bits_BT: Tensor | None = None
    label_start_bits_BT: Tensor | None = None
    sentence_label_bits_BT: Tensor | None = None
    label_scope_B: Tensor | None = None

    def to(self, device: torch.device | str) -> ActivationBatch:
        return ActivationBatch(*(None if tensor is None else tensor.to(device) for tensor in self))


_OPTIONAL_BT = ("sentence_BT", "label_bits_BT", "label_start_bits_BT", "sentence_label_bits_BT")
"""The batch's optional [B, T] fields (sentences and label sets), each None or int64."""


def validate_batch(batch: ActivationBatch, n_features: int | None = None, n_groups: int = len(GROUPS)) -> None:
    """Raise `ValueError` when `batch` breaks the contract (shapes, dtypes, value ranges)."""
    if batch.acts_BTF.ndim != 3 or not batch.acts_BTF.is_floating_point():
        shape, dtype = tuple(batch.acts_BTF.shape), batch.acts_BTF.dtype
        raise ValueError(f"acts_BTF must be a 3-d float tensor, got {shape} {dtype}")
    B, T, F = batch.acts_BTF.shape
    if n_features is not None and F != n_features:
        raise ValueError(f"acts_BTF has {F} features, the accumulator was built for {n_features}")
    for name in ("token_ids_BT", "valid_BT", "group_ids_BT", "phrase_start_mask_BT", *_OPTIONAL_BT):
        if getattr(batch, name) is None:
            continue
        if tuple(getattr(batch, name).shape) != (B, T):
            raise ValueError(f"{name} must have shape {(B, T)}, got {tuple(getattr(batch, name).shape)}")
    for name in ("doc_has_backtracking_B", "context_ids_B", "label_scope_B"):
        if getattr(batch, name) is None:
            continue
        if tuple(getattr(batch, name).shape) != (B,):
            raise ValueError(f"{name} must have shape {(B,)}, got {tuple(getattr(batch, name).shape)}")
    for name in ("valid_BT", "phrase_start_mask_BT", "doc_has_backtracking_B"):
        if getattr(batch, name).dtype != torch.bool:
            raise ValueError(f"{name} must be bool, got {getattr(batch, name).dtype}")
    if batch.acts_BTF.numel() == 0:
        return
    lowest, highest = torch.aminmax(batch.acts_BTF)
    # NaN propagates through aminmax, so one check covers negative, NaN and infinite values.
    if not (bool(lowest >= 0) and bool(torch.isfinite(highest))):
        raise ValueError("acts_BTF must be finite and non-negative (a ReLU-family SAE's activations)")
    if bool((batch.group_ids_BT < NO_GROUP).any()) or bool((batch.group_ids_BT >= n_groups).any()):
        raise ValueError(f"group_ids_BT must be NO_GROUP ({NO_GROUP}) or an index below {n_groups}")
    if bool((batch.context_ids_B < 0).any()) or batch.context_ids_B.unique().numel() != B:
        raise ValueError("context_ids_B must be unique non-negative ids")


class PreparedBatch:
    """A validated batch on the accumulators' device, with its non-zero activations listed once.

    Every statistic here is a function of the non-zero activations on valid tokens (zeros only enter
    through token counts), so accumulators work on the N entries `(b_N, t_N, f_N, value_N)` rather
    than on the dense B x T x F tensor. Derived per-batch quantities are computed on first use and
    shared by all accumulators fed the same prepared batch.
    """

    def __init__(self, batch: ActivationBatch, device: torch.device | str, n_features: int | None = None):
        batch = batch.to(device)
        validate_batch(batch, n_features)
        self.batch = batch
        self.B, self.T, self.F = batch.acts_BTF.shape
        self.valid_BT = batch.valid_BT
        nonzero_N3 = torch.nonzero(batch.acts_BTF > 0)  # [N, 3]
        # Filtering invalid tokens after nonzero() avoids a second B x T x F mask.
        nonzero_N3 = nonzero_N3[batch.valid_BT[nonzero_N3[:, 0], nonzero_N3[:, 1]]]
        self.b_N, self.t_N, self.f_N = nonzero_N3.unbind(1)
        self.value_N = batch.acts_BTF[self.b_N, self.t_N, self.f_N].float()
        self._bin_cache: dict[LogBins, Tensor] = {}

    def bin_N(self, bins: LogBins) -> Tensor:
        if bins not in self._bin_cache:
            self._bin_cache[bins] = bins.index(self.value_N)
        return self._bin_cache[bins]

    def context_values(self, b_R: Tensor, t_R: Tensor, f_R: Tensor, before: int, after: int) -> Tensor:
        """`[R, before + 1 + after]` float32: feature `f_R` on positions `t_R - before .. t_R + after` of
        window `b_R`, 0 outside the window and on invalid tokens (BOS, padding, special tokens). The
        context an example keeps, read while its batch is at hand (no second forward)."""
        offsets_L = torch.arange(-before, after + 1, device=t_R.device)
        grid_RL = t_R[:, None] + offsets_L[None, :]
        inside_RL = (grid_RL >= 0) & (grid_RL < self.T)
        safe_RL = grid_RL.clamp(0, self.T - 1)
        b_R1 = b_R[:, None]
        values_RL = self.batch.acts_BTF[b_R1, safe_RL, f_R[:, None]].float()
        keep_RL = inside_RL & self.valid_BT[b_R1, safe_RL]
        return torch.where(keep_RL, values_RL, torch.zeros_like(values_RL))

    @cached_property
    def n_valid(self) -> Tensor:
        return self.valid_BT.sum()

    @cached_property
    def window_max_BF(self) -> Tensor:
        """Each feature's maximum over the valid tokens of each window (0 where it never fires)."""
        flat_N = self.b_N * self.F + self.f_N
        max_X = torch.zeros(self.B * self.F, dtype=torch.float32, device=self.value_N.device)
        return max_X.scatter_reduce_(0, flat_N, self.value_N, "amax").view(self.B, self.F)

    @cached_property
    def window_argmax_BF(self) -> Tensor:
        """The first (lowest) position where `window_max_BF` is reached; T where the feature never fires."""
        flat_N = self.b_N * self.F + self.f_N
        at_max_N = self.value_N == self.window_max_BF.view(-1)[flat_N]
        first_X = torch.full((self.B * self.F,), self.T, dtype=torch.int64, device=self.value_N.device)
        return first_X.scatter_reduce_(0, flat_N[at_max_N], self.t_N[at_max_N], "amin").view(self.B, self.F)


def prepare_batch(
    batch: ActivationBatch | PreparedBatch, device: torch.device | str, n_features: int | None = None
) -> PreparedBatch:
    if isinstance(batch, PreparedBatch):
        if n_features is not None and batch.F != n_features:
            raise ValueError(f"batch has {batch.F} features, the accumulator was built for {n_features}")
        return batch
    return PreparedBatch(batch, device, n_features)


# --------------------------------------------------------------------------------------------------
# Building blocks: configuration records, bins, exact sums, sorting, hashing
# --------------------------------------------------------------------------------------------------


class _Config:
    """A frozen dataclass that round-trips through JSON (tuples stay tuples, nested configs rebuild)."""

    _NESTED: dict[str, type] = {}  # field name -> nested config class

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        kwargs = {}
        for fld in fields(cls):
            if fld.name in data:
                nested = cls._NESTED.get(fld.name)
                value = data[fld.name]
                kwargs[fld.name] = nested.from_dict(value) if nested else _as_tuples(value)
        return cls(**kwargs)


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value


def _json_tensor(data: Mapping[str, Any]) -> Tensor:
    return torch.tensor(list(json.dumps(data, sort_keys=True).encode()), dtype=torch.uint8)


def _tensor_json(tensor: Tensor) -> dict[str, Any]:
    return json.loads(bytes(tensor.cpu().tolist()).decode())


@dataclass(frozen=True)
class LogBins(_Config):
    """Fixed log-spaced bins of activation values, chosen before the pass so histograms merge.

    Bin layout (`n_bins = n_regular + 3`), in increasing value:
    - 0: exactly zero;
    - 1: underflow, (0, 10**lo_exp);
    - 2 + i: [edge_i, edge_{i+1}) with edge_i = 10**(lo_exp + i / per_decade), i < n_regular;
    - n_regular + 2: overflow, [10**hi_exp, inf).
    Edges are computed in decimal arithmetic, so every machine (and every shard) gets the same floats.
    """

    lo_exp: int = -4
    """Lowest regular edge: 10**lo_exp."""
    hi_exp: int = 4
    """Highest regular edge: 10**hi_exp."""
    per_decade: int = 16
    """Bins per factor of 10; adjacent edges differ by a factor 10**(1/per_decade)."""

    def __post_init__(self):
        if self.hi_exp <= self.lo_exp or self.per_decade < 1:
            raise ValueError(f"bad LogBins {self}")

    @property
    def n_regular(self) -> int:
        return (self.hi_exp - self.lo_exp) * self.per_decade

    @property
    def n_bins(self) -> int:
        return self.n_regular + 3

    @cached_property
    def _edges_cpu(self) -> Tensor:
        with localcontext() as ctx:
            ctx.prec = 40
            values = [
                float(Decimal(10) ** (Decimal(self.lo_exp) + Decimal(i) / Decimal(self.per_decade)))
                for i in range(self.n_regular + 1)
            ]
        return torch.tensor(values, dtype=torch.float64)

    def edges(self, device: torch.device | str = "cpu") -> Tensor:
        """The n_regular + 1 regular edges, float64."""
        return self._edges_cpu.to(device)

    def index(self, values: Tensor) -> Tensor:
        """Bin index (int64) of each value; values must be >= 0."""
        values64 = values.to(torch.float64)  # exact for float32 inputs; compared against float64 edges
        regular = 1 + torch.bucketize(values64, self.edges(values.device), right=True)
        return torch.where(values64 > 0, regular, torch.zeros_like(regular))

    def lower_edges(self) -> Tensor:
        """Lower bound of each bin (float64, [n_bins]); bin 0 is the point 0."""
        edges = self._edges_cpu
        return torch.cat([torch.zeros(2, dtype=torch.float64), edges])

    def upper_edges(self) -> Tensor:
        """Upper bound of each bin (float64, [n_bins]); open except for bin 0 (the point 0)."""
        edges = self._edges_cpu
        return torch.cat([torch.zeros(1, dtype=torch.float64), edges, torch.tensor([math.inf], dtype=torch.float64)])

    def representative_values(self) -> Tensor:
        """A value standing for each bin (float64): geometric centre of regular bins, lo/2 for the
        underflow bin, the lower edge for the overflow bin, 0 for the zero bin."""
        lower, upper = self.lower_edges(), self.upper_edges()
        rep = torch.sqrt(lower * upper)
        rep[0] = 0.0
        rep[1] = upper[1] / 2
        rep[-1] = lower[-1]
        return rep


class ExactSum:
    """A tensor of sums kept exact in two int64 limbs: `units + frac * 2**-FRAC_BITS`.

    Each summand is split into its integer part (exact) and its fraction rounded to a multiple of
    2**-24, so integer addition makes the sum associative and commutative: any split into batches or
    shards gives the same limbs. After each addition the fraction limb is carried into the units limb
    and kept in [0, 2**24), so equal sums have equal limbs. Rounding error: at most 2**-25 per summand
    (none for float32 values >= 0.5, whose fractional bits already lie on the grid).
    """

    def __init__(self, shape: Sequence[int], device: torch.device | str):
        self.units = torch.zeros(tuple(shape), dtype=torch.int64, device=device)
        self.frac = torch.zeros(tuple(shape), dtype=torch.int64, device=device)

    def add(self, flat_index_N: Tensor, values_N: Tensor) -> None:
        """Add `values_N` at `flat_index_N` of the flattened sum (repeated indices accumulate)."""
        values64 = values_N.to(torch.float64)
        whole = torch.floor(values64)
        frac_q = torch.round((values64 - whole) * 2.0**FRAC_BITS).to(torch.int64)
        self.units.view(-1).index_add_(0, flat_index_N, whole.to(torch.int64))
        self.frac.view(-1).index_add_(0, flat_index_N, frac_q)
        self._carry()

    def merge(self, other: ExactSum) -> None:
        self.units += other.units.to(self.units.device)
        self.frac += other.frac.to(self.frac.device)
        self._carry()

    def _carry(self) -> None:
        carry = self.frac >> FRAC_BITS
        self.units += carry
        self.frac -= carry << FRAC_BITS

    def to_float64(self) -> Tensor:
        return self.units.to(torch.float64) + self.frac.to(torch.float64) * 2.0**-FRAC_BITS

    def state(self, name: str) -> dict[str, Tensor]:
        return {f"{name}.units": self.units, f"{name}.frac": self.frac}

    def load(self, state: Mapping[str, Tensor], name: str) -> None:
        self.units = state[f"{name}.units"].to(self.units.device, torch.int64).clone()
        self.frac = state[f"{name}.frac"].to(self.frac.device, torch.int64).clone()


def lexsort_indices(keys: Sequence[Tensor], descending: Sequence[bool] | None = None) -> Tensor:
    """Indices that sort along the last dim by `keys[0]`, then `keys[1]`, ... (most significant first).

    Stable sorts from the least significant key up: deterministic on every device, ties included.
    """
    descending = descending or [False] * len(keys)
    perm = torch.arange(keys[0].shape[-1], device=keys[0].device).expand_as(keys[0]).contiguous()
    for key, desc in zip(reversed(keys), reversed(descending)):
        idx = torch.sort(key.gather(-1, perm), dim=-1, stable=True, descending=desc).indices
        perm = perm.gather(-1, idx)
    return perm


def rank_within_runs(group_N: Tensor) -> Tensor:
    """For a sorted 1-d `group_N`, each element's rank inside its run of equal values (0, 1, ...)."""
    n = group_N.numel()
    positions = torch.arange(n, device=group_N.device)
    if n == 0:
        return positions
    new_run = torch.ones(n, dtype=torch.bool, device=group_N.device)
    new_run[1:] = group_N[1:] != group_N[:-1]
    run_start = torch.cummax(torch.where(new_run, positions, torch.zeros_like(positions)), dim=0).values
    return positions - run_start


_HASH_PRIME = 2**31 - 1
_HASH_MULT = 0x45D9F3B  # < 2**27, so products of 31-bit values stay below 2**58: no int64 overflow


def _mix31(x: Tensor) -> Tensor:
    # Xor-shift / multiply rounds on 31-bit values: a non-linear mix that only uses exact int64 ops.
    x = x ^ (x >> 16)
    x = (x * _HASH_MULT) % _HASH_PRIME
    x = x ^ (x >> 16)
    x = (x * _HASH_MULT) % _HASH_PRIME
    return x ^ (x >> 16)


def hash_priority(context_ids_N: Tensor, positions_N: Tensor, feature_ids_N: Tensor) -> Tensor:
    """A pseudo-random priority in [0, 2**31) for each (context, position, global feature id).

    It depends on nothing else (not the batch, shard or device), which makes a bottom-m sketch keyed
    by it mergeable and reproducible: the m lowest priorities of a set form a uniform random sample
    of it, and the m lowest of a union are among the union of each part's m lowest.
    """
    x = _mix31((context_ids_N % _HASH_PRIME + 0x3C6EF372) % _HASH_PRIME)
    x = _mix31((x + positions_N % _HASH_PRIME) % _HASH_PRIME)
    return _mix31((x + feature_ids_N % _HASH_PRIME) % _HASH_PRIME)


# --------------------------------------------------------------------------------------------------
# ReasonScore vocabulary
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReasoningVocab(_Config):
    """ReasonScore's vocabulary: groups of token-id sequences (a word may take several tokens)."""

    names: tuple[str, ...] = ()
    """Group names, for example REASONSCORE_WORDS."""
    sequences: tuple[tuple[tuple[int, ...], ...], ...] = ()
    """Per group, the token-id sequences that count as that word (spellings, leading space, case)."""

    def __post_init__(self):
        if len(self.names) != len(self.sequences):
            raise ValueError("ReasoningVocab needs one tuple of sequences per group name")

    @classmethod
    def from_mapping(cls, groups: Mapping[str, Sequence[Sequence[int]]]) -> ReasoningVocab:
        names = tuple(groups)
        sequences = tuple(tuple(sorted({tuple(int(i) for i in seq) for seq in groups[n] if len(seq)})) for n in names)
        return cls(names, sequences)


def build_reasoning_vocab(
    encode: Callable[[str], Sequence[int]], words: Sequence[str] = REASONSCORE_WORDS
) -> ReasoningVocab:
    """One group per word, holding the token ids of "word", " word", "Word" and " Word".

    `encode(text)` returns token ids without special tokens, for example
    `lambda s: tokenizer.encode(s, add_special_tokens=False)`. The reference code groups " A", "A",
    " a" and "a" the same way.
    """
    groups = {}
    for word in words:
        variants = {word, word.capitalize()}
        groups[word] = [encode(prefix + v) for v in sorted(variants) for prefix in ("", " ")]
    return ReasoningVocab.from_mapping(groups)


class ReasoningPositions(NamedTuple):
    """ReasonScore's token sets for one batch. `group_mask_RBT[r]` is group r's widened matches; groups
    can overlap after widening ("Hmm, wait"), which is why this is R masks and not one group id per
    token. `mask_BT` (the set P) is their union. Both exclude invalid tokens."""

    mask_BT: Tensor
    group_mask_RBT: Tensor


def reasoning_positions(
    token_ids_BT: Tensor,
    vocab: ReasoningVocab,
    valid_BT: Tensor | None = None,
    widen: tuple[int, int] = (1, 2),
) -> ReasoningPositions:
    """Where the reasoning vocabulary matches, widened to t-widen[0] .. t+widen[1] around every
    matched token (ReasonScore's P: t-1 .. t+2), inside each window and without wrapping.

    A match needs every one of its tokens valid (a padding id that happens to equal a vocabulary
    token does not match); invalid tokens are then removed from the widened sets.
    """
    B, T = token_ids_BT.shape
    device = token_ids_BT.device
    valid_BT = torch.ones_like(token_ids_BT, dtype=torch.bool) if valid_BT is None else valid_BT
    group_mask_RBT = torch.zeros((len(vocab.names), B, T), dtype=torch.bool, device=device)
    for r, sequences in enumerate(vocab.sequences):
        matched_BT = torch.zeros((B, T), dtype=torch.bool, device=device)
        for sequence in sequences:
            L = len(sequence)
            if L == 0 or L > T:
                continue
            seq_L = torch.tensor(sequence, dtype=token_ids_BT.dtype, device=device)
            starts_BW = (token_ids_BT.unfold(1, L, 1) == seq_L).all(-1) & valid_BT.unfold(1, L, 1).all(-1)
            for j in range(L):  # every token of a multi-token match is a matched token
                matched_BT[:, j : j + T - L + 1] |= starts_BW
        group_mask_RBT[r] = _widen(matched_BT, *widen) & valid_BT
    return ReasoningPositions(group_mask_RBT.any(0), group_mask_RBT)


def _widen(mask_BT: Tensor, before: int, after: int) -> Tensor:
    # A match at t' covers t' - before .. t' + after, so t is covered when a match lies in
    # t - after .. t + before. Shifts, not a roll: nothing wraps around the window.
    T = mask_BT.shape[1]
    out_BT = mask_BT.clone()
    for d in range(1, min(before, T - 1) + 1):
        out_BT[:, : T - d] |= mask_BT[:, d:]
    for d in range(1, min(after, T - 1) + 1):
        out_BT[:, d:] |= mask_BT[:, : T - d]
    return out_BT


# --------------------------------------------------------------------------------------------------
# The accumulator protocol
# --------------------------------------------------------------------------------------------------


class Accumulator:
    """Shared protocol: update / merge / state_dict / from_state_dict / finalise.

    Subclasses define `Config` (a frozen `_Config` dataclass), `_init_state()`, `update_prepared()`,
    `_merge_state()`, `_state()` (name -> tensor or ExactSum) and `finalise()`.
    """

    Config: type = _Config

    def __init__(self, config, device: torch.device | str = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self._init_state()

    def update(self, batch: ActivationBatch | PreparedBatch) -> Accumulator:
        self.update_prepared(prepare_batch(batch, self.device, self._batch_features()))
        return self

    def _batch_features(self) -> int | None:
        return getattr(self.config, "n_features", None)

    def merge(self, other: Accumulator) -> Accumulator:
        """Fold `other`'s state into this one (in place); returns self."""
        if type(other) is not type(self) or other.config != self.config:
            raise ValueError(
                f"cannot merge {type(other).__name__}({other.config}) into {type(self).__name__}({self.config})"
            )
        self._merge_state(other)
        return self

    def state_dict(self) -> dict[str, Tensor]:
        """The configuration (as JSON bytes) and the state, as a flat dict of tensors."""
        state = {"config": _json_tensor({"kind": type(self).__name__, **self.config.to_dict()})}
        for name, value in self._state().items():
            if isinstance(value, ExactSum):
                state.update(value.state(name))
            else:
                state[name] = value
        return state

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Tensor], device: torch.device | str = "cpu"):
        if "config" not in state:
            raise ValueError(f"no saved state of a {cls.__name__}: it was saved by an older version of the index")
        data = _tensor_json(state["config"])
        kind = data.pop("kind")
        if kind != cls.__name__:
            raise ValueError(f"state of a {kind}, not a {cls.__name__}")
        acc = cls(cls.Config.from_dict(data), device)
        try:
            for name, value in acc._state().items():
                if isinstance(value, ExactSum):
                    value.load(state, name)
                else:
                    setattr(acc, name, state[name].to(acc.device, value.dtype).clone())
        except KeyError as missing:
            raise ValueError(
                f"the saved state of a {kind} lacks {missing}: it was saved by an older version of the index"
            ) from None
        return acc

    def _init_state(self) -> None:
        raise NotImplementedError

    def update_prepared(self, p: PreparedBatch) -> None:
        raise NotImplementedError

    def _merge_state(self, other: Accumulator) -> None:
        raise NotImplementedError

    def _state(self) -> dict[str, Tensor | ExactSum]:
        raise NotImplementedError


def _add_histogram(hist_flat: Tensor, row_N: Tensor, bin_N: Tensor, zero_counts_X: Tensor, n_bins: int) -> None:
    """Count non-zero activations into a flat [X * n_bins] histogram whose zero bin holds every token
    of the row; `zero_counts_X` is the number of tokens per row in this batch. Each non-zero entry
    moves one count from its row's zero bin to its own bin, so the zero bin stays exact."""
    hist_XH = hist_flat.view(-1, n_bins)
    hist_XH[:, 0] += zero_counts_X
    ones_N = torch.ones_like(row_N)
    hist_flat.index_add_(0, row_N * n_bins + bin_N, ones_N)
    hist_flat.index_add_(0, row_N * n_bins, -ones_N)


def _count(index_N: Tensor, size: int) -> Tensor:
    if index_N.numel() == 0:
        return torch.zeros(size, dtype=torch.int64, device=index_N.device)
    return torch.bincount(index_N, minlength=size)


# --------------------------------------------------------------------------------------------------
# 1. Top-k examples
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopKConfig(_Config):
    n_features: int
    """Features in this accumulator's chunk."""
    k: int = 32
    """Examples kept per feature."""
    feature_offset: int = 0
    """Global id of the chunk's first feature."""
    context_before: int = 32
    """Tokens kept before each example (its context), and after it:"""
    context_after: int = 8


class ExampleRecords(NamedTuple):
    """Top-k examples, one row per (feature, rank), sorted by feature then rank (0 = highest)."""

    feature_N: Tensor
    rank_N: Tensor
    value_N: Tensor
    context_id_N: Tensor
    position_N: Tensor
    context_values_NL: Tensor | None = None
    """The feature on positions `position - before .. position + after` of the window, float32, 0
    outside the window and on invalid tokens (`PreparedBatch.context_values`)."""


class TopKAccumulator(Accumulator):
    """The k highest activations per feature, at most one per context window (the window's maximum).

    Order (a strict total order, so selection commutes with merging): value descending, then context
    id ascending, then position ascending; inside a window the first position reaching the maximum
    represents it. Windows where the feature never fires are not candidates.

    Each kept example also keeps its context: the feature's activation on the `context_before` tokens
    before it and `context_after` after it, read from the batch when the example enters the top k
    (`ctx_FKL`, F x k x L float32: 129 MB at 24,576 features, k 32, L 41). The tokens themselves are
    the window's, looked up at the end. So no second forward over the corpus is needed: at the real
    model's shapes every window holds some feature's example, and that second pass cost as much as the
    first.
    """

    Config = TopKConfig

    def _init_state(self):
        F, K = self.config.n_features, self.config.k
        self.value_FK = torch.full((F, K), -math.inf, dtype=torch.float32, device=self.device)
        self.context_FK = torch.full((F, K), -1, dtype=torch.int64, device=self.device)
        self.position_FK = torch.full((F, K), -1, dtype=torch.int64, device=self.device)
        L = self.config.context_before + 1 + self.config.context_after
        self.ctx_FKL = torch.zeros((F, K, L), dtype=torch.float32, device=self.device)

    def update_prepared(self, p: PreparedBatch) -> None:
        max_FB = p.window_max_BF.T
        fires_FB = max_FB > 0
        value_FB = torch.where(fires_FB, max_FB, torch.full_like(max_FB, -math.inf))
        context_FB = torch.where(fires_FB, p.batch.context_ids_B.to(torch.int64)[None, :], -1)
        position_FB = torch.where(fires_FB, p.window_argmax_BF.T, -1)
        order = self._select(value_FB, context_FB, position_FB)
        # Contexts: the kept ones move with their examples; the newcomers (column K + b) are read from batch row b.
        K = self.config.k
        self.ctx_FKL = self.ctx_FKL[torch.arange(order.shape[0], device=self.device)[:, None], order.clamp(max=K - 1)]
        from_batch_FK = order >= K
        self.ctx_FKL[from_batch_FK & (self.context_FK < 0)] = 0.0  # an empty slot keeps no context
        f_R, k_R = torch.nonzero(from_batch_FK & (self.context_FK >= 0), as_tuple=True)
        if f_R.numel():
            c = self.config
            self.ctx_FKL[f_R, k_R] = p.context_values(
                order[f_R, k_R] - K, self.position_FK[f_R, k_R], f_R, c.context_before, c.context_after
            )

    def _merge_state(self, other):
        order = self._select(*(x.to(self.device) for x in (other.value_FK, other.context_FK, other.position_FK)))
        ctx_FXL = torch.cat([self.ctx_FKL, other.ctx_FKL.to(self.device)], dim=1)
        self.ctx_FKL = ctx_FXL[torch.arange(order.shape[0], device=self.device)[:, None], order]

    def _select(self, value_FX: Tensor, context_FX: Tensor, position_FX: Tensor) -> Tensor:
        """Keep the k best of the current examples and the candidates; returns which column of
        [current k | candidates] each kept example came from, `[F, k]`."""
        value = torch.cat([self.value_FK, value_FX], dim=1)
        context = torch.cat([self.context_FK, context_FX], dim=1)
        position = torch.cat([self.position_FK, position_FX], dim=1)
        order = lexsort_indices([value, context, position], descending=[True, False, False])[:, : self.config.k]
        self.value_FK = value.gather(1, order)
        self.context_FK = context.gather(1, order)
        self.position_FK = position.gather(1, order)
        return order

    def _state(self):
        return {
            "value_FK": self.value_FK, "context_FK": self.context_FK, "position_FK": self.position_FK,
            "ctx_FKL": self.ctx_FKL,
        }

    def finalise(self) -> ExampleRecords:
        filled_FK = self.context_FK >= 0
        feature_F, rank_K = torch.meshgrid(
            torch.arange(self.config.n_features, device=self.device) + self.config.feature_offset,
            torch.arange(self.config.k, device=self.device),
            indexing="ij",
        )
        return ExampleRecords(
            feature_F[filled_FK], rank_K[filled_FK], self.value_FK[filled_FK],
            self.context_FK[filled_FK], self.position_FK[filled_FK], self.ctx_FKL[filled_FK],
        )


# --------------------------------------------------------------------------------------------------
# 2. Interval samples (bottom-m hash sketch per feature and bin)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntervalSampleConfig(_Config):
    n_features: int
    bins: LogBins = LogBins()
    """Shared with the activation histogram; intervals are chosen from these bins at finalise."""
    per_bin: int = 4
    """Samples kept per (feature, bin): the most an interval made of one bin can show."""
    feature_offset: int = 0
    context_before: int = 32
    """Tokens of context kept before each sample, and after it (as `TopKConfig`):"""
    context_after: int = 8
    _NESTED = {"bins": LogBins}


class SampleRecords(NamedTuple):
    """The sketch: per (feature, bin) the `per_bin` activations of lowest hash priority, sorted by
    (feature, bin, priority, context_id, position). `feature_N` holds global ids."""

    feature_N: Tensor
    bin_N: Tensor
    priority_N: Tensor
    value_N: Tensor
    context_id_N: Tensor
    position_N: Tensor
    feature_offset: int
    bins: LogBins
    context_values_NL: Tensor | None = None
    """Each sample's context, as `ExampleRecords.context_values_NL`."""


class IntervalSampleAccumulator(Accumulator):
    """A uniform random sample of each feature's non-zero activations in every bin, mergeable exactly.

    The max (and so sae_vis-style intervals of (0, max]) is only known at the end, so the sketch keeps,
    for every (feature, bin) of the fixed log bins, the `per_bin` activations with the lowest
    `hash_priority(context_id, position, feature)`. At finalise `feature_scores.select_interval_samples`
    maps bins to intervals and takes the lowest priorities over each interval's bins: the bottom-m of
    a union is contained in the union of the parts' bottom-m, so that is an exact uniform sample of the
    activations in the interval's bins. State size: at most features x bins x per_bin entries, only
    for bins a feature reaches; each keeps its context as the top-k examples do (`ctx_SL`, L float32),
    read from the batch when it enters the sketch.
    """

    Config = IntervalSampleConfig
    _FIELDS = ("feature_S", "bin_S", "priority_S", "context_S", "position_S")

    def _init_state(self):
        for name in self._FIELDS:
            setattr(self, name, torch.zeros(0, dtype=torch.int64, device=self.device))
        self.value_S = torch.zeros(0, dtype=torch.float32, device=self.device)
        L = self.config.context_before + 1 + self.config.context_after
        self.ctx_SL = torch.zeros((0, L), dtype=torch.float32, device=self.device)

    def update_prepared(self, p: PreparedBatch) -> None:
        context_N = p.batch.context_ids_B.to(torch.int64)[p.b_N]
        priority_N = hash_priority(context_N, p.t_N, p.f_N + self.config.feature_offset)
        n_kept = self.value_S.numel()
        keep = self._keep_lowest(p.f_N, p.bin_N(self.config.bins), priority_N, context_N, p.t_N, p.value_N)
        # Contexts: the kept ones stay; the newcomers (entry n_kept + n) are read from the batch's entry n.
        new = keep >= n_kept
        ctx_SL = torch.empty((keep.numel(), self.ctx_SL.shape[1]), dtype=torch.float32, device=self.device)
        ctx_SL[~new] = self.ctx_SL[keep[~new]]
        n_R = keep[new] - n_kept
        c = self.config
        ctx_SL[new] = p.context_values(p.b_N[n_R], p.t_N[n_R], p.f_N[n_R], c.context_before, c.context_after)
        self.ctx_SL = ctx_SL

    def _merge_state(self, other):
        keep = self._keep_lowest(*(getattr(other, name).to(self.device) for name in (*self._FIELDS, "value_S")))
        self.ctx_SL = torch.cat([self.ctx_SL, other.ctx_SL.to(self.device)])[keep]

    def _keep_lowest(self, feature, bin_, priority, context, position, value) -> Tensor:
        """Keep the lowest priorities of the current entries and the candidates; returns which entry
        of [current | candidates] each kept one came from."""
        feature = torch.cat([self.feature_S, feature])
        bin_ = torch.cat([self.bin_S, bin_])
        priority = torch.cat([self.priority_S, priority])
        context = torch.cat([self.context_S, context])
        position = torch.cat([self.position_S, position])
        value = torch.cat([self.value_S, value])
        group = feature * self.config.bins.n_bins + bin_
        # (group, priority) packed in one int64 key: priority < 2**31, group < 2**32.
        order = lexsort_indices([(group << 31) | priority, context, position])
        keep = order[rank_within_runs(group[order]) < self.config.per_bin]
        self.feature_S, self.bin_S, self.priority_S = feature[keep], bin_[keep], priority[keep]
        self.context_S, self.position_S, self.value_S = context[keep], position[keep], value[keep]
        return keep

    def _state(self):
        return {name: getattr(self, name) for name in (*self._FIELDS, "value_S", "ctx_SL")}

    def finalise(self) -> SampleRecords:
        return SampleRecords(
            self.feature_S + self.config.feature_offset, self.bin_S, self.priority_S, self.value_S,
            self.context_S, self.position_S, self.config.feature_offset, self.config.bins, self.ctx_SL,
        )


# --------------------------------------------------------------------------------------------------
# 3. Activation statistics
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActivationStatsConfig(_Config):
    n_features: int
    bins: LogBins = LogBins()
    _NESTED = {"bins": LogBins}


class ActivationStatsTotals(NamedTuple):
    n_valid: int
    """Valid tokens seen: the density's denominator."""
    active_count_F: Tensor
    """Valid tokens where the feature is > 0."""
    max_F: Tensor
    """Maximum activation (0 for a feature that never fires)."""
    sum_F: Tensor
    """Sum of activations, float64 (fixed-point exact, see ExactSum)."""
    mean_nonzero_F: Tensor
    """sum / active_count; NaN for a feature that never fires."""
    density_F: Tensor
    """active_count / n_valid."""
    hist_FH: Tensor
    """Counts per bin of `bins`, bin 0 = exact zeros; every row sums to n_valid."""
    bins: LogBins


class ActivationStatsAccumulator(Accumulator):
    """Histogram over the fixed log bins, density, max and mean of non-zero values, per feature."""

    Config = ActivationStatsConfig

    def _init_state(self):
        F, nb = self.config.n_features, self.config.bins.n_bins
        self.n_valid = torch.zeros((), dtype=torch.int64, device=self.device)
        self.active_F = torch.zeros(F, dtype=torch.int64, device=self.device)
        self.max_F = torch.zeros(F, dtype=torch.float32, device=self.device)
        self.sum_F = ExactSum((F,), self.device)
        self.hist_FH = torch.zeros((F, nb), dtype=torch.int64, device=self.device)

    def update_prepared(self, p: PreparedBatch) -> None:
        F = self.config.n_features
        self.n_valid += p.n_valid
        self.active_F += _count(p.f_N, F)
        self.max_F = torch.maximum(self.max_F, p.window_max_BF.amax(0) if p.B else self.max_F)
        self.sum_F.add(p.f_N, p.value_N)
        _add_histogram(self.hist_FH.view(-1), p.f_N, p.bin_N(self.config.bins), p.n_valid, self.config.bins.n_bins)

    def _merge_state(self, other):
        self.n_valid += other.n_valid.to(self.device)
        self.active_F += other.active_F.to(self.device)
        self.max_F = torch.maximum(self.max_F, other.max_F.to(self.device))
        self.sum_F.merge(other.sum_F)
        self.hist_FH += other.hist_FH.to(self.device)

    def _state(self):
        return {
            "n_valid": self.n_valid, "active_F": self.active_F, "max_F": self.max_F,
            "sum_F": self.sum_F, "hist_FH": self.hist_FH,
        }

    def finalise(self) -> ActivationStatsTotals:
        n_valid = int(self.n_valid)
        sum_F = self.sum_F.to_float64()
        active = self.active_F.to(torch.float64)
        mean_nonzero = torch.where(active > 0, sum_F / active.clamp_min(1), torch.full_like(sum_F, math.nan))
        return ActivationStatsTotals(
            n_valid, self.active_F.clone(), self.max_F.clone(), sum_F, mean_nonzero,
            active / max(n_valid, 1), self.hist_FH.clone(), self.config.bins,
        )


# --------------------------------------------------------------------------------------------------
# 4. Backtracking evidence: sums and histograms inside phrases (per group) and outside
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvidenceConfig(_Config):
    n_features: int
    bins: LogBins = LogBins()
    n_groups: int = len(GROUPS)
    """Phrase groups (GROUPS order); token class n_groups means 'outside every phrase'."""
    _NESTED = {"bins": LogBins}


class EvidenceTotals(NamedTuple):
    """Per feature and token class c (c < n_groups: inside a phrase of group c; c = n_groups: outside)."""

    count_C: Tensor
    """Valid tokens per class."""
    sum_FC: Tensor
    """Sum of activations per class, float64."""
    mean_FC: Tensor
    """sum / count (NaN for an empty class)."""
    hist_FCH: Tensor
    """Histogram per class over `bins` (bin 0 = exact zeros)."""
    bins: LogBins

    @property
    def mean_in_any_F(self) -> Tensor:
        """Mean activation inside a phrase of any group."""
        return self.sum_FC[:, :-1].sum(1) / self.count_C[:-1].sum().clamp_min(1)

    @property
    def mean_out_F(self) -> Tensor:
        """Mean activation outside every phrase."""
        return self.mean_FC[:, -1]


class BacktrackingEvidenceAccumulator(Accumulator):
    """Sums, counts and histograms of each feature's activation inside labelled phrases of each group
    and outside every phrase, on the shared bins. Any union of groups against all other tokens (the
    'any' class, the notebook's six groups, one group) is a sum of these classes, so every AUROC the
    index reports comes from one state."""

    Config = EvidenceConfig

    def _init_state(self):
        F, C, nb = self.config.n_features, self.config.n_groups + 1, self.config.bins.n_bins
        self.count_C = torch.zeros(C, dtype=torch.int64, device=self.device)
        self.sum_FC = ExactSum((F, C), self.device)
        self.hist_FCH = torch.zeros((F, C, nb), dtype=torch.int64, device=self.device)

    def update_prepared(self, p: PreparedBatch) -> None:
        C = self.config.n_groups + 1
        group_BT = p.batch.group_ids_BT.to(torch.int64)
        class_BT = torch.where(group_BT >= 0, group_BT, self.config.n_groups)
        count_C = _count(class_BT[p.valid_BT], C)
        self.count_C += count_C
        row_N = p.f_N * C + class_BT[p.b_N, p.t_N]
        self.sum_FC.add(row_N, p.value_N)
        zero_counts_X = count_C.repeat(self.config.n_features)  # rows are (feature, class)
        _add_histogram(self.hist_FCH.view(-1), row_N, p.bin_N(self.config.bins), zero_counts_X, self.config.bins.n_bins)

    def _merge_state(self, other):
        self.count_C += other.count_C.to(self.device)
        self.sum_FC.merge(other.sum_FC)
        self.hist_FCH += other.hist_FCH.to(self.device)

    def _state(self):
        return {"count_C": self.count_C, "sum_FC": self.sum_FC, "hist_FCH": self.hist_FCH}

    def finalise(self) -> EvidenceTotals:
        sum_FC = self.sum_FC.to_float64()
        count = self.count_C.to(torch.float64)
        mean_FC = torch.where(count > 0, sum_FC / count.clamp_min(1), torch.full_like(sum_FC, math.nan))
        return EvidenceTotals(self.count_C.clone(), sum_FC, mean_FC, self.hist_FCH.clone(), self.config.bins)


# --------------------------------------------------------------------------------------------------
# 5. ReasonScore sums
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReasonScoreConfig(_Config):
    n_features: int
    vocab: ReasoningVocab = ReasoningVocab()
    widen: tuple[int, int] = (1, 2)
    """P is widened to t - widen[0] .. t + widen[1] around each matched token (the paper: t-1..t+2)."""
    feature_offset: int = 0
    _NESTED = {"vocab": ReasoningVocab}


class ReasonTotals(NamedTuple):
    """Corpus-wide means for ReasonScore (float64). A mean over an empty set is 0, as in the
    reference code's running means."""

    mean_pos_F: Tensor
    """mu+: mean activation over P (valid tokens in any group's widened match)."""
    mean_neg_F: Tensor
    """mu-: mean over N (all other valid tokens)."""
    mean_FR: Tensor
    """mu^(r): mean over group r's widened matches."""
    count_pos: int
    count_neg: int
    count_R: Tensor
    group_names: tuple[str, ...]
    feature_offset: int


class ReasonScoreAccumulator(Accumulator):
    """Sums and counts over P, N and each vocabulary group r, over the whole corpus. Only sums are
    kept, so the score's normalisations over all features (sum_j mu+_j) are computed once, at the end,
    from corpus-wide means (caveat 2 of the research notes)."""

    Config = ReasonScoreConfig

    def _init_state(self):
        F, R = self.config.n_features, len(self.config.vocab.names)
        self.count_pos = torch.zeros((), dtype=torch.int64, device=self.device)
        self.count_neg = torch.zeros((), dtype=torch.int64, device=self.device)
        self.count_R = torch.zeros(R, dtype=torch.int64, device=self.device)
        self.sum_pos_F = ExactSum((F,), self.device)
        self.sum_neg_F = ExactSum((F,), self.device)
        self.sum_FR = ExactSum((F, R), self.device)

    def update_prepared(self, p: PreparedBatch) -> None:
        R = len(self.config.vocab.names)
        positions = reasoning_positions(p.batch.token_ids_BT, self.config.vocab, p.valid_BT, self.config.widen)
        in_pos_BT = positions.mask_BT
        self.count_pos += in_pos_BT.sum()
        self.count_neg += (p.valid_BT & ~in_pos_BT).sum()
        self.count_R += positions.group_mask_RBT.sum((1, 2))
        in_pos_N = in_pos_BT[p.b_N, p.t_N]
        self.sum_pos_F.add(p.f_N[in_pos_N], p.value_N[in_pos_N])
        self.sum_neg_F.add(p.f_N[~in_pos_N], p.value_N[~in_pos_N])
        r_idx, n_idx = positions.group_mask_RBT[:, p.b_N, p.t_N].nonzero(as_tuple=True)
        self.sum_FR.add(p.f_N[n_idx] * R + r_idx, p.value_N[n_idx])

    def _merge_state(self, other):
        self.count_pos += other.count_pos.to(self.device)
        self.count_neg += other.count_neg.to(self.device)
        self.count_R += other.count_R.to(self.device)
        self.sum_pos_F.merge(other.sum_pos_F)
        self.sum_neg_F.merge(other.sum_neg_F)
        self.sum_FR.merge(other.sum_FR)

    def _state(self):
        return {
            "count_pos": self.count_pos, "count_neg": self.count_neg, "count_R": self.count_R,
            "sum_pos_F": self.sum_pos_F, "sum_neg_F": self.sum_neg_F, "sum_FR": self.sum_FR,
        }

    def finalise(self) -> ReasonTotals:
        def mean(total: ExactSum, count: Tensor) -> Tensor:
            return total.to_float64() / count.to(torch.float64).clamp_min(1)

        return ReasonTotals(
            mean(self.sum_pos_F, self.count_pos), mean(self.sum_neg_F, self.count_neg), mean(self.sum_FR, self.count_R),
            int(self.count_pos), int(self.count_neg), self.count_R.clone(), self.config.vocab.names,
            self.config.feature_offset,
        )


# --------------------------------------------------------------------------------------------------
# 6. Lead-lag profile around phrase starts
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeadLagConfig(_Config):
    n_features: int
    min_offset: int = -32
    max_offset: int = 8


class LeadLagTotals(NamedTuple):
    offsets_O: Tensor
    """min_offset .. max_offset."""
    mean_OF: Tensor
    """Mean activation at each offset from a phrase start (NaN where no start had that offset)."""
    sum_OF: Tensor
    count_O: Tensor
    """(start, offset) pairs whose target token lies in the window and is valid."""
    baseline_mean_F: Tensor
    """Mean over all valid tokens."""
    baseline_std_F: Tensor
    """Population standard deviation over all valid tokens."""


def offset_targets(start_BT: Tensor, offsets: Sequence[int]) -> Tensor:
    """target_OBT[o, b, t]: token t of window b lies offsets[o] tokens from a start (windows do not wrap)."""
    B, T = start_BT.shape
    target_OBT = torch.zeros((len(offsets), B, T), dtype=torch.bool, device=start_BT.device)
    for o, offset in enumerate(offsets):
        if abs(offset) >= T:
            continue
        if offset >= 0:
            target_OBT[o, :, offset:] = start_BT[:, : T - offset]
        else:
            target_OBT[o, :, : T + offset] = start_BT[:, -offset:]
    return target_OBT


def add_around_starts(p: PreparedBatch, start_BT: Tensor, offsets: Sequence[int], sum_XF: ExactSum, row_offset: int) -> Tensor:
    """Add each activation at `offsets[o]` tokens from a valid start to row `row_offset + o` of
    `sum_XF`; returns the (start, offset) pairs counted per offset (valid targets only)."""
    target_OBT = offset_targets(start_BT & p.valid_BT, offsets) & p.valid_BT
    # Only entries near some start can contribute: filter before the [O, N] gather.
    near_N = target_OBT.any(0)[p.b_N, p.t_N]
    b_N, t_N, f_N, value_N = p.b_N[near_N], p.t_N[near_N], p.f_N[near_N], p.value_N[near_N]
    o_idx, n_idx = target_OBT[:, b_N, t_N].nonzero(as_tuple=True)
    sum_XF.add((row_offset + o_idx) * p.F + f_N[n_idx], value_N[n_idx])
    return target_OBT.sum((1, 2))


class LeadLagAccumulator(Accumulator):
    """Sums of activations at each offset from every phrase start, plus the baseline's first two
    moments. Offsets that leave the window are skipped, not wrapped; invalid targets are skipped."""

    Config = LeadLagConfig

    @property
    def offsets(self) -> list[int]:
        return list(range(self.config.min_offset, self.config.max_offset + 1))

    def _init_state(self):
        F, O = self.config.n_features, len(self.offsets)
        self.count_O = torch.zeros(O, dtype=torch.int64, device=self.device)
        self.sum_OF = ExactSum((O, F), self.device)
        self.n_valid = torch.zeros((), dtype=torch.int64, device=self.device)
        self.sum_F = ExactSum((F,), self.device)
        self.sumsq_F = ExactSum((F,), self.device)

    def update_prepared(self, p: PreparedBatch) -> None:
        self.n_valid += p.n_valid
        self.sum_F.add(p.f_N, p.value_N)
        self.sumsq_F.add(p.f_N, p.value_N.to(torch.float64) ** 2)
        self.count_O += add_around_starts(p, p.batch.phrase_start_mask_BT, self.offsets, self.sum_OF, row_offset=0)

    def _merge_state(self, other):
        self.count_O += other.count_O.to(self.device)
        self.sum_OF.merge(other.sum_OF)
        self.n_valid += other.n_valid.to(self.device)
        self.sum_F.merge(other.sum_F)
        self.sumsq_F.merge(other.sumsq_F)

    def _state(self):
        return {
            "count_O": self.count_O, "sum_OF": self.sum_OF, "n_valid": self.n_valid,
            "sum_F": self.sum_F, "sumsq_F": self.sumsq_F,
        }

    def finalise(self) -> LeadLagTotals:
        sum_OF = self.sum_OF.to_float64()
        count_O = self.count_O.to(torch.float64)[:, None]
        mean_OF = torch.where(count_O > 0, sum_OF / count_O.clamp_min(1), torch.full_like(sum_OF, math.nan))
        n = max(int(self.n_valid), 1)
        mean_F = self.sum_F.to_float64() / n
        var_F = (self.sumsq_F.to_float64() / n - mean_F**2).clamp_min(0)
        offsets = torch.tensor(self.offsets, dtype=torch.int64, device=self.device)
        return LeadLagTotals(offsets, mean_OF, sum_OF, self.count_O.clone(), mean_F, var_F.sqrt())


# --------------------------------------------------------------------------------------------------
# 7. Document-level contrast
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocumentContrastConfig(_Config):
    n_features: int


class DocumentTotals(NamedTuple):
    """Per feature and class (0: window of a trace without backtracking, 1: with)."""

    mean_FC: Tensor
    """Mean activation over the valid tokens of the class's windows."""
    window_max_mean_FC: Tensor
    """Mean over the class's windows of each window's maximum."""
    active_window_share_FC: Tensor
    """Share of the class's windows where the feature fires at least once."""
    token_count_C: Tensor
    window_count_C: Tensor


class DocumentContrastAccumulator(Accumulator):
    """Traces with backtracking against traces without. The unit is the context window (each window
    belongs to one document and carries its document's flag); a long trace cut into several windows
    contributes each window, so the 'max per document' is the max per window. Windows without valid
    tokens are skipped."""

    Config = DocumentContrastConfig

    def _init_state(self):
        F = self.config.n_features
        self.token_count_C = torch.zeros(2, dtype=torch.int64, device=self.device)
        self.window_count_C = torch.zeros(2, dtype=torch.int64, device=self.device)
        self.sum_FC = ExactSum((F, 2), self.device)
        self.window_max_sum_FC = ExactSum((F, 2), self.device)
        self.active_windows_FC = torch.zeros((F, 2), dtype=torch.int64, device=self.device)

    def update_prepared(self, p: PreparedBatch) -> None:
        F = self.config.n_features
        class_B = p.batch.doc_has_backtracking_B.to(torch.int64)
        self.token_count_C.index_add_(0, class_B, p.valid_BT.sum(1))
        self.window_count_C.index_add_(0, class_B, p.valid_BT.any(1).to(torch.int64))
        self.sum_FC.add(p.f_N * 2 + class_B[p.b_N], p.value_N)
        row_BF = torch.arange(F, device=self.device)[None, :] * 2 + class_B[:, None]
        self.window_max_sum_FC.add(row_BF.reshape(-1), p.window_max_BF.reshape(-1))
        fired_X = (p.window_max_BF > 0).reshape(-1).to(torch.int64)
        self.active_windows_FC.view(-1).index_add_(0, row_BF.reshape(-1), fired_X)

    def _merge_state(self, other):
        self.token_count_C += other.token_count_C.to(self.device)
        self.window_count_C += other.window_count_C.to(self.device)
        self.sum_FC.merge(other.sum_FC)
        self.window_max_sum_FC.merge(other.window_max_sum_FC)
        self.active_windows_FC += other.active_windows_FC.to(self.device)

    def _state(self):
        return {
            "token_count_C": self.token_count_C, "window_count_C": self.window_count_C, "sum_FC": self.sum_FC,
            "window_max_sum_FC": self.window_max_sum_FC, "active_windows_FC": self.active_windows_FC,
        }

    def finalise(self) -> DocumentTotals:
        def per(total_FC: Tensor, count_C: Tensor) -> Tensor:
            count = count_C.to(torch.float64)[None, :]
            return torch.where(count > 0, total_FC / count.clamp_min(1), torch.full_like(total_FC, math.nan))

        return DocumentTotals(
            per(self.sum_FC.to_float64(), self.token_count_C),
            per(self.window_max_sum_FC.to_float64(), self.window_count_C),
            per(self.active_windows_FC.to(torch.float64), self.window_count_C),
            self.token_count_C.clone(), self.window_count_C.clone(),
        )


# --------------------------------------------------------------------------------------------------
# 8. Token-detector controls
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenCountConfig(_Config):
    vocab_size: int
    n_groups: int = len(GROUPS)


class TokenCountTotals(NamedTuple):
    in_GV: Tensor
    """Valid tokens of each id inside phrases of each group."""
    out_V: Tensor
    """Valid tokens of each id outside every phrase."""


class TokenCountAccumulator(Accumulator):
    """Per token id, how often it lies inside phrases of each group and outside. Independent of the
    features (vocab-sized, not features x vocab): it gives the best single-token detector and the
    token-identity ceiling, and chooses the within-token control tokens. It needs no model, so a
    token-only pre-pass can run it before the streaming pass."""

    Config = TokenCountConfig

    def _batch_features(self):
        return None

    def _init_state(self):
        G, V = self.config.n_groups, self.config.vocab_size
        self.in_GV = torch.zeros((G, V), dtype=torch.int64, device=self.device)
        self.out_V = torch.zeros(V, dtype=torch.int64, device=self.device)

    def update_prepared(self, p: PreparedBatch) -> None:
        V = self.config.vocab_size
        token_N = p.batch.token_ids_BT[p.valid_BT].to(torch.int64)
        group_N = p.batch.group_ids_BT[p.valid_BT].to(torch.int64)
        if token_N.numel() and (bool((token_N < 0).any()) or bool((token_N >= V).any())):
            raise ValueError(f"token ids must lie in [0, {V})")
        inside_N = group_N >= 0
        self.in_GV.view(-1).index_add_(0, group_N[inside_N] * V + token_N[inside_N], torch.ones_like(token_N[inside_N]))
        self.out_V.index_add_(0, token_N[~inside_N], torch.ones_like(token_N[~inside_N]))

    def _merge_state(self, other):
        self.in_GV += other.in_GV.to(self.device)
        self.out_V += other.out_V.to(self.device)

    def _state(self):
        return {"in_GV": self.in_GV, "out_V": self.out_V}

    def finalise(self) -> TokenCountTotals:
        return TokenCountTotals(self.in_GV.clone(), self.out_V.clone())


@dataclass(frozen=True)
class WithinTokenConfig(_Config):
    n_features: int
    control_token_ids: tuple[int, ...] = ()
    """A small fixed set of token ids (for example `feature_scores.top_phrase_token_ids`, from a
    token-only pre-pass): the same set in every shard."""
    bins: LogBins = LogBins(per_decade=4)
    """Coarser than the main bins: the state is features x tokens x 2 x bins."""
    _NESTED = {"bins": LogBins}

    def __post_init__(self):
        if len(set(self.control_token_ids)) != len(self.control_token_ids):
            raise ValueError("control_token_ids must be distinct")


class WithinTokenTotals(NamedTuple):
    hist_FKCH: Tensor
    """Histogram per feature, control token, class (0: outside phrases, 1: inside any phrase)."""
    token_ids_K: Tensor
    bins: LogBins


class WithinTokenAccumulator(Accumulator):
    """Per feature and control token, the activation histogram on that token inside phrases and
    outside, to ask whether the feature separates backtracking from ordinary uses of the same token.
    Features x vocabulary would be 24,576 x 151,936; a fixed set of K tokens keeps it F x K x 2 x bins."""

    Config = WithinTokenConfig

    def _init_state(self):
        F, K, nb = self.config.n_features, len(self.config.control_token_ids), self.config.bins.n_bins
        self.hist_FKCH = torch.zeros((F, K, 2, nb), dtype=torch.int64, device=self.device)

    def update_prepared(self, p: PreparedBatch) -> None:
        K = len(self.config.control_token_ids)
        if K == 0:
            return
        control_K = torch.tensor(self.config.control_token_ids, dtype=torch.int64, device=self.device)
        match_BTK = p.batch.token_ids_BT.to(torch.int64)[..., None] == control_K
        slot_BT = torch.where(match_BTK.any(-1) & p.valid_BT, match_BTK.to(torch.int32).argmax(-1), -1)
        row_BT = slot_BT * 2 + (p.batch.group_ids_BT >= 0).to(torch.int64)  # (slot, class); < 0 if no slot
        counts_X = _count(row_BT[slot_BT >= 0], K * 2)
        row_N = row_BT[p.b_N, p.t_N]
        has_slot_N = slot_BT[p.b_N, p.t_N] >= 0
        row_N = p.f_N[has_slot_N] * (K * 2) + row_N[has_slot_N]
        bin_N = p.bin_N(self.config.bins)[has_slot_N]
        zero_counts_X = counts_X.repeat(self.config.n_features)  # rows are (feature, token, class)
        _add_histogram(self.hist_FKCH.view(-1), row_N, bin_N, zero_counts_X, self.config.bins.n_bins)

    def _merge_state(self, other):
        self.hist_FKCH += other.hist_FKCH.to(self.device)

    def _state(self):
        return {"hist_FKCH": self.hist_FKCH}

    def finalise(self) -> WithinTokenTotals:
        token_ids = torch.tensor(self.config.control_token_ids, dtype=torch.int64, device=self.device)
        return WithinTokenTotals(self.hist_FKCH.clone(), token_ids, self.config.bins)


# --------------------------------------------------------------------------------------------------
# 10. Label sets: token and sentence histograms, and lead-lag sums, per label set
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelSetConfig(_Config):
    n_features: int
    labels: tuple[str, ...] = ()
    """The label sets' names, in the order of the batch's label bits."""
    bins: LogBins = LogBins()
    min_offset: int = -32
    max_offset: int = 8
    _NESTED = {"bins": LogBins}


class LabelSetTotals(NamedTuple):
    """Per label set l (the order of `labels`) and feature. Everything but `n_sentences` counts only
    the documents the label set labels (its scope)."""

    labels: tuple[str, ...]
    count_pos_L: Tensor
    """Valid tokens inside a positive span of label set l (token level)."""
    hist_pos_FLH: Tensor
    """Histogram of activations on those tokens."""
    count_scope_L: Tensor
    """Valid tokens of the documents label set l labels."""
    hist_scope_FLH: Tensor
    """Histogram of activations on those tokens: the negatives are these minus the positives."""
    n_sentences: int
    """Sentence pieces seen: a sentence cut by a window edge counts once in each window."""
    count_sentence_scope_L: Tensor
    """Sentence pieces in label set l's documents."""
    count_sentence_pos_L: Tensor
    """Of those, the pieces of a sentence positive for label set l."""
    hist_sentence_scope_FLH: Tensor
    """Histogram of each sentence piece's maximum activation (valid tokens only), over the pieces in scope."""
    hist_sentence_pos_FLH: Tensor
    """The same over the positive pieces."""
    offsets_O: Tensor
    count_LO: Tensor
    """(start, offset) pairs per label set: a start is the first token of a positive span."""
    sum_LOF: Tensor
    """Sum of activations at each offset from label set l's starts, float64."""
    mean_LOF: Tensor
    bins: LogBins


class LabelSetAccumulator(Accumulator):
    """Everything the index scores each label set on, in one state: the token-level AUROC (activations
    inside the label's spans against the other valid tokens of the documents it labels), the
    sentence-level AUROC (each sentence's maximum activation against whether the sentence is positive),
    and the lead-lag profile around the label's starts. A sentence is read as pieces, one per window it
    lies in: a sentence cut by a window edge is two pieces (windows do not wrap, as everywhere in the
    index; docs/index-math.md).

    Per label set the state is F x bins x 4 counts and F x offsets fixed-point sums: about 110 MB at
    24,576 features and 131 bins."""

    Config = LabelSetConfig
    _COUNTS = ("count_pos_L", "hist_pos_FLH", "count_scope_L", "hist_scope_FLH", "n_sentences",
               "count_sentence_scope_L", "count_sentence_pos_L", "hist_sentence_scope_FLH", "hist_sentence_pos_FLH",
               "count_LO")

    @property
    def offsets(self) -> list[int]:
        return list(range(self.config.min_offset, self.config.max_offset + 1))

    def _init_state(self):
        F, L, nb, O = self.config.n_features, len(self.config.labels), self.config.bins.n_bins, len(self.offsets)
        for name in self._COUNTS:
            shape = {"L": (L,), "FLH": (F, L, nb), "LO": (L, O)}.get(name.rsplit("_", 1)[-1], ())
            setattr(self, name, torch.zeros(shape, dtype=torch.int64, device=self.device))
        self.sum_LOF = ExactSum((L * O, F), self.device)

    def update_prepared(self, p: PreparedBatch) -> None:
        L = len(self.config.labels)
        if L == 0:
            return
        batch = p.batch
        zeros_BT = torch.zeros_like(batch.token_ids_BT)
        label_L11 = torch.arange(L, device=self.device)[:, None, None]

        def bits(bits_BT: Tensor | None) -> Tensor:
            return ((zeros_BT if bits_BT is None else bits_BT)[None] >> label_L11) & 1 == 1

        scope_B = torch.full((p.B,), -1, dtype=torch.int64, device=self.device) if batch.label_scope_B is None else batch.label_scope_B
        scope_LBT = ((scope_B[None, :, None] >> label_L11) & 1 == 1) & p.valid_BT[None]
        inside_LBT = bits(batch.label_bits_BT) & scope_LBT
        self._add_tokens(p, scope_LBT, self.count_scope_L, self.hist_scope_FLH)
        self._add_tokens(p, inside_LBT, self.count_pos_L, self.hist_pos_FLH)
        starts_LBT = bits(batch.label_start_bits_BT) & scope_LBT
        O = len(self.offsets)
        for label in range(L):
            self.count_LO[label] += add_around_starts(p, starts_LBT[label], self.offsets, self.sum_LOF, label * O)
        if batch.sentence_BT is not None:
            positive_LBT = inside_LBT if batch.sentence_label_bits_BT is None else bits(batch.sentence_label_bits_BT)
            self._add_sentences(p, scope_LBT, positive_LBT & scope_LBT)

    def _add_tokens(self, p: PreparedBatch, mask_LBT: Tensor, count_L: Tensor, hist_FLH: Tensor) -> None:
        """Count the valid tokens of `mask_LBT` per label set, and their activations into `hist_FLH`."""
        L, F = len(self.config.labels), self.config.n_features
        n_L = mask_LBT.sum((1, 2))
        count_L += n_L
        l_idx, n_idx = mask_LBT[:, p.b_N, p.t_N].nonzero(as_tuple=True)
        bin_N = p.bin_N(self.config.bins)
        _add_histogram(hist_FLH.view(-1), p.f_N[n_idx] * L + l_idx, bin_N[n_idx], n_L.repeat(F), self.config.bins.n_bins)

    def _add_sentences(self, p: PreparedBatch, scope_LBT: Tensor, positive_LBT: Tensor) -> None:
        L, F, nb = len(self.config.labels), self.config.n_features, self.config.bins.n_bins
        sentence_BT = p.batch.sentence_BT
        member_BT = p.valid_BT & (sentence_BT >= 0)
        if not bool(member_BT.any()):
            return
        rows_b = torch.arange(p.B, device=self.device)[:, None].expand_as(sentence_BT)
        key_M = rows_b[member_BT] * (int(sentence_BT.max()) + 1) + sentence_BT[member_BT]
        pieces, piece_M = torch.unique(key_M, return_inverse=True)  # the pieces: (window, sentence) pairs
        P = len(pieces)
        piece_BT = torch.full_like(sentence_BT, -1)
        piece_BT[member_BT] = piece_M
        self.n_sentences += P

        def per_piece(mask_LBT: Tensor) -> Tensor:  # [L, P]: any member token of the piece in the mask
            hits_LP = torch.zeros((L, P), dtype=torch.int64, device=self.device)
            return hits_LP.index_add_(1, piece_M, mask_LBT[:, member_BT].to(torch.int64)) > 0

        # The maximum of each (piece, feature) that fires in it.
        piece_N = piece_BT[p.b_N, p.t_N]
        kept = piece_N >= 0
        key_U, inverse = torch.unique(piece_N[kept] * F + p.f_N[kept], return_inverse=True)
        max_U = torch.zeros(len(key_U), dtype=torch.float32, device=self.device)
        max_U.scatter_reduce_(0, inverse, p.value_N[kept], "amax")
        piece_U, f_U, bin_U = key_U // F, key_U % F, self.config.bins.index(max_U)
        for piece_LP, count_L, hist_FLH in (
            (per_piece(scope_LBT), self.count_sentence_scope_L, self.hist_sentence_scope_FLH),
            (per_piece(positive_LBT), self.count_sentence_pos_L, self.hist_sentence_pos_FLH),
        ):
            n_L = piece_LP.sum(1)
            count_L += n_L
            l_idx, u_idx = piece_LP[:, piece_U].nonzero(as_tuple=True)
            _add_histogram(hist_FLH.view(-1), f_U[u_idx] * L + l_idx, bin_U[u_idx], n_L.repeat(F), nb)

    def _merge_state(self, other):
        for name in self._COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name).to(self.device))
        self.sum_LOF.merge(other.sum_LOF)

    def _state(self):
        return {**{name: getattr(self, name) for name in self._COUNTS}, "sum_LOF": self.sum_LOF}

    def finalise(self) -> LabelSetTotals:
        L, O, F = len(self.config.labels), len(self.offsets), self.config.n_features
        sum_LOF = self.sum_LOF.to_float64().view(L, O, F)
        count_LO1 = self.count_LO.to(torch.float64)[:, :, None]
        mean_LOF = torch.where(count_LO1 > 0, sum_LOF / count_LO1.clamp_min(1), torch.full_like(sum_LOF, math.nan))
        return LabelSetTotals(
            self.config.labels, self.count_pos_L.clone(), self.hist_pos_FLH.clone(), self.count_scope_L.clone(),
            self.hist_scope_FLH.clone(), int(self.n_sentences), self.count_sentence_scope_L.clone(),
            self.count_sentence_pos_L.clone(), self.hist_sentence_scope_FLH.clone(), self.hist_sentence_pos_FLH.clone(),
            torch.tensor(self.offsets, dtype=torch.int64, device=self.device), self.count_LO.clone(), sum_LOF,
            mean_LOF, self.config.bins,
        )


# --------------------------------------------------------------------------------------------------
# 11. Token dependence: a mergeable heavy-hitters sketch of each feature's activation mass per token id
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenMassConfig(_Config):
    n_features: int
    capacity: int = 128
    """C: token ids tracked per feature (the Misra-Gries counters). Exact for a feature that fires on at
    most C distinct token ids; else every estimate is within the feature's decrement of the truth."""
    top_k: int = 16
    """Tokens reported per feature (highest mean activation first), and summed by the concentration."""
    min_count: int = 3
    """A token is reported only when it occurs at least this often in the corpus (a mean over one or two
    occurrences ranks noise first)."""

    def __post_init__(self):
        if self.capacity < 1 or self.top_k < 1 or self.min_count < 1:
            raise ValueError(f"bad TokenMassConfig {self}")


class TokenMassTotals(NamedTuple):
    """The sketch, per feature: its tracked token ids and their estimated activation mass (sum of the
    feature's activations on that token id), by estimated mass descending, then token id."""

    token_FC: Tensor
    """int64 token ids; -1 on an empty slot."""
    mass_FC: Tensor
    """float64 estimated mass, a lower bound: true - estimate lies in [0, error_F]; 0 on an empty slot."""
    error_F: Tensor
    """float64: the feature's total Misra-Gries decrement, the bound above (0: the sketch is exact)."""
    total_F: Tensor
    """float64: the feature's total activation mass, exact (fixed point, as `ActivationStatsTotals.sum_F`)."""
    untracked_F: Tensor
    """float64: total minus the tracked estimates, computed in fixed point (exactly 0 when exact)."""
    top_k: int
    min_count: int


def _fixed_point(values: Tensor) -> Tensor:
    """`values` (>= 0) as int64 multiples of 2**-FRAC_BITS, rounded as `ExactSum` rounds a summand."""
    return torch.round(values.to(torch.float64) * 2.0**FRAC_BITS).to(torch.int64)


class TokenMassAccumulator(Accumulator):
    """Per feature, the token ids carrying most of its activation mass, and how much: weighted
    Misra-Gries with C counters per feature, the mergeable form of Agarwal et al. 2012 ("Mergeable
    summaries"). Features x vocabulary would be 24,576 x 151,936 cells; this is F x C.

    Each batch's (feature, token) masses are summed, joined with the features' counters, and per feature
    the C largest are kept after subtracting the (C+1)-th largest from each; that amount is added to
    the feature's decrement. Merging two sketches is the same step. Every estimate then lies in
    [true - decrement, true], a token whose true mass exceeds the decrement is always tracked, and a
    feature firing on at most C distinct token ids is exact. Masses are int64 fixed point (2**-24, as
    `ExactSum`), so an exact sketch is the same bit for bit whatever the batches and shards; an inexact
    one depends on the order it saw the data in (its bound does not). docs/index-math.md, section 10.

    State: token ids and masses F x C int64, the decrement and the exact total per feature: 50 MB at
    24,576 features and C = 128."""

    Config = TokenMassConfig

    def _init_state(self):
        F, C = self.config.n_features, self.config.capacity
        self.token_FC = torch.full((F, C), -1, dtype=torch.int64, device=self.device)
        self.mass_FC = torch.zeros((F, C), dtype=torch.int64, device=self.device)
        self.error_F = torch.zeros(F, dtype=torch.int64, device=self.device)
        self.total_F = ExactSum((F,), self.device)

    def update_prepared(self, p: PreparedBatch) -> None:
        token_N = p.batch.token_ids_BT[p.b_N, p.t_N].to(torch.int64)
        if token_N.numel() and (bool((token_N < 0).any()) or bool((token_N >= 2**31).any())):
            raise ValueError("token ids must lie in [0, 2**31)")
        self.total_F.add(p.f_N, p.value_N)
        self._fold(p.f_N, token_N, _fixed_point(p.value_N))

    def _merge_state(self, other):
        held = other.token_FC.to(self.device) >= 0
        f_N, c_N = held.nonzero(as_tuple=True)
        self.error_F += other.error_F.to(self.device)
        self.total_F.merge(other.total_F)
        self._fold(f_N, other.token_FC.to(self.device)[f_N, c_N], other.mass_FC.to(self.device)[f_N, c_N])

    def _fold(self, f_N: Tensor, token_N: Tensor, mass_N: Tensor) -> None:
        """Add masses `mass_N` (fixed point) at (feature, token) pairs, then cut each touched feature back
        to C counters."""
        if f_N.numel() == 0:
            return
        F, C = self.config.n_features, self.config.capacity
        touched_F = torch.zeros(F, dtype=torch.bool, device=self.device)
        touched_F[f_N] = True
        rows_R = touched_F.nonzero().squeeze(1)
        token_RC, mass_RC = self.token_FC[rows_R], self.mass_FC[rows_R]
        r_M, c_M = (token_RC >= 0).nonzero(as_tuple=True)
        # One key per (feature, token): feature above bit 32, token below (token ids < 2**31).
        key_X = torch.cat([f_N << 32 | token_N, rows_R[r_M] << 32 | token_RC[r_M, c_M]])
        key_U, inverse_X = torch.unique(key_X, return_inverse=True)  # sorted: by feature, then token
        mass_U = torch.zeros(key_U.numel(), dtype=torch.int64, device=self.device)
        mass_U.index_add_(0, inverse_X, torch.cat([mass_N, mass_RC[r_M, c_M]]))
        f_U, token_U = key_U >> 32, key_U & 0xFFFFFFFF
        order = lexsort_indices([f_U, mass_U], descending=[False, True])  # ties: token id ascending
        f_U, token_U, mass_U = f_U[order], token_U[order], mass_U[order]
        rank_U = rank_within_runs(f_U)
        cut_F = torch.zeros(F, dtype=torch.int64, device=self.device)
        at_cut = rank_U == C
        cut_F[f_U[at_cut]] = mass_U[at_cut]  # the (C+1)-th largest; 0 for a feature with <= C tokens
        self.error_F += cut_F
        mass_U = mass_U - cut_F[f_U]
        keep = (rank_U < C) & (mass_U > 0)  # a prefix of each feature's run: the order is by mass
        self.token_FC[rows_R] = -1
        self.mass_FC[rows_R] = 0
        self.token_FC[f_U[keep], rank_U[keep]] = token_U[keep]
        self.mass_FC[f_U[keep], rank_U[keep]] = mass_U[keep]

    def _state(self):
        return {"token_FC": self.token_FC, "mass_FC": self.mass_FC, "error_F": self.error_F, "total_F": self.total_F}

    def finalise(self) -> TokenMassTotals:
        scale = 2.0**-FRAC_BITS
        total_q = (self.total_F.units << FRAC_BITS) + self.total_F.frac
        untracked_q = total_q - self.mass_FC.sum(1)
        return TokenMassTotals(
            self.token_FC.clone(), self.mass_FC.to(torch.float64) * scale, self.error_F.to(torch.float64) * scale,
            self.total_F.to_float64(), untracked_q.to(torch.float64) * scale, self.config.top_k, self.config.min_count,
        )


# --------------------------------------------------------------------------------------------------
# All of them at once: what the streaming pass drives
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexConfig(_Config):
    """Everything one feature-index pass accumulates, for one chunk of features."""

    n_features: int
    """Features in this chunk (all of the SAE's, or a slice)."""
    vocab_size: int
    """Model vocabulary size, for the token counts."""
    feature_offset: int = 0
    """Global id of the chunk's first feature."""
    k: int = 32
    """Top-k examples per feature."""
    bins: LogBins = LogBins()
    """Shared by the activation histogram, the evidence histograms and the interval samples."""
    samples_per_bin: int = 4
    reasoning_vocab: ReasoningVocab = ReasoningVocab()
    reason_widen: tuple[int, int] = (1, 2)
    control_token_ids: tuple[int, ...] = ()
    control_bins: LogBins = LogBins(per_decade=4)
    min_offset: int = -32
    max_offset: int = 8
    context_before: int = 32
    """Each kept example's context: tokens before it and after it (the card's example rows)."""
    context_after: int = 8
    labels: tuple[str, ...] = ()
    """The label sets scored (`LabelSetAccumulator`), in the order of the batch's label bits."""
    token_capacity: int = 128
    """Token ids tracked per feature by the token-mass sketch (`TokenMassConfig.capacity`)."""
    token_top_k: int = 16
    token_min_count: int = 3
    _NESTED = {"bins": LogBins, "reasoning_vocab": ReasoningVocab, "control_bins": LogBins}


class IndexTotals(NamedTuple):
    examples: ExampleRecords
    samples: SampleRecords
    stats: ActivationStatsTotals
    evidence: EvidenceTotals
    reason: ReasonTotals
    lead_lag: LeadLagTotals
    documents: DocumentTotals
    token_counts: TokenCountTotals
    within_token: WithinTokenTotals
    label_sets: LabelSetTotals
    token_mass: TokenMassTotals


class FeatureIndexAccumulators:
    """Every accumulator of the index, fed from one `PreparedBatch` per batch (the non-zero entries
    are listed once). State keys are `<member>.<key>` plus `config`."""

    def __init__(self, config: IndexConfig, device: torch.device | str = "cpu"):
        self.config = config
        self.device = torch.device(device)
        c = config
        self.members: dict[str, Accumulator] = {
            "examples": TopKAccumulator(
                TopKConfig(c.n_features, c.k, c.feature_offset, c.context_before, c.context_after), device
            ),
            "samples": IntervalSampleAccumulator(
                IntervalSampleConfig(
                    c.n_features, c.bins, c.samples_per_bin, c.feature_offset, c.context_before, c.context_after
                ),
                device,
            ),
            "stats": ActivationStatsAccumulator(ActivationStatsConfig(c.n_features, c.bins), device),
            "evidence": BacktrackingEvidenceAccumulator(EvidenceConfig(c.n_features, c.bins), device),
            "reason": ReasonScoreAccumulator(
                ReasonScoreConfig(c.n_features, c.reasoning_vocab, c.reason_widen, c.feature_offset), device
            ),
            "lead_lag": LeadLagAccumulator(LeadLagConfig(c.n_features, c.min_offset, c.max_offset), device),
            "documents": DocumentContrastAccumulator(DocumentContrastConfig(c.n_features), device),
            "token_counts": TokenCountAccumulator(TokenCountConfig(c.vocab_size), device),
            "within_token": WithinTokenAccumulator(
                WithinTokenConfig(c.n_features, c.control_token_ids, c.control_bins), device
            ),
            "label_sets": LabelSetAccumulator(
                LabelSetConfig(c.n_features, c.labels, c.bins, c.min_offset, c.max_offset), device
            ),
            "token_mass": TokenMassAccumulator(
                TokenMassConfig(c.n_features, c.token_capacity, c.token_top_k, c.token_min_count), device
            ),
        }

    def update(self, batch: ActivationBatch | PreparedBatch) -> FeatureIndexAccumulators:
        prepared = prepare_batch(batch, self.device, self.config.n_features)
        for member in self.members.values():
            member.update_prepared(prepared)
        return self

    def merge(self, other: FeatureIndexAccumulators) -> FeatureIndexAccumulators:
        if other.config != self.config:
            raise ValueError("cannot merge feature-index shards built with different configurations")
        for name, member in self.members.items():
            member.merge(other.members[name])
        return self

    def state_dict(self) -> dict[str, Tensor]:
        state = {"config": _json_tensor(self.config.to_dict())}
        for name, member in self.members.items():
            state.update({f"{name}.{key}": value for key, value in member.state_dict().items()})
        return state

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, Tensor], device: torch.device | str = "cpu"
    ) -> FeatureIndexAccumulators:
        index = cls(IndexConfig.from_dict(_tensor_json(state["config"])), device)
        for name, member in index.members.items():
            prefix = f"{name}."
            part = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
            index.members[name] = type(member).from_state_dict(part, device)
        return index

    def finalise(self) -> IndexTotals:
        return IndexTotals(**{name: member.finalise() for name, member in self.members.items()})
