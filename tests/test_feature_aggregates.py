"""Feature-index accumulators against brute-force dense computations, and shard merges against a
single pass (bit for bit)."""

from __future__ import annotations

import io
import itertools
from typing import NamedTuple

import numpy as np
import pytest
import torch

from explorer.feature_aggregates import (
    ActivationBatch,
    ActivationStatsAccumulator,
    ActivationStatsConfig,
    BacktrackingEvidenceAccumulator,
    DocumentContrastAccumulator,
    DocumentContrastConfig,
    EvidenceConfig,
    ExactSum,
    FeatureIndexAccumulators,
    IndexConfig,
    IntervalSampleAccumulator,
    IntervalSampleConfig,
    LabelSetAccumulator,
    LabelSetConfig,
    LeadLagAccumulator,
    LeadLagConfig,
    LogBins,
    ReasonScoreAccumulator,
    ReasonScoreConfig,
    ReasoningVocab,
    TokenCountAccumulator,
    TokenCountConfig,
    TokenMassAccumulator,
    TokenMassConfig,
    TopKAccumulator,
    TopKConfig,
    WithinTokenAccumulator,
    WithinTokenConfig,
    build_reasoning_vocab,
    hash_priority,
    reasoning_positions,
    validate_batch,
)
from explorer.feature_scores import compute_token_dependence
from explorer.labels import NO_GROUP
from explorer.lexicon import GROUPS

G = len(GROUPS)
VOCAB_SIZE = 30
PAD = 0
REASON_VOCAB = ReasoningVocab.from_mapping({"wait": [[3]], "let me": [[5, 6]], "hmm": [[7], [8]]})
CONTROL_TOKENS = (3, 5, 10, 11)
SMALL_BINS = LogBins(lo_exp=-2, hi_exp=2, per_decade=4)  # few bins: many activations share one


# --------------------------------------------------------------------------------------------------
# A small corpus with planted ties, invalid tokens carrying large activations, and phrases
# --------------------------------------------------------------------------------------------------


class Corpus(NamedTuple):
    """Dense numpy arrays over all C context windows (the brute-force side)."""

    acts_CTF: np.ndarray
    token_ids_CT: np.ndarray
    valid_CT: np.ndarray
    group_ids_CT: np.ndarray
    doc_flag_C: np.ndarray
    context_ids_C: np.ndarray
    start_CT: np.ndarray
    sentence_CT: np.ndarray | None = None
    label_bits_CT: np.ndarray | None = None
    label_start_bits_CT: np.ndarray | None = None
    sentence_label_bits_CT: np.ndarray | None = None
    label_scope_C: np.ndarray | None = None

    def batch(self, lo: int, hi: int) -> ActivationBatch:
        return ActivationBatch(
            torch.from_numpy(self.acts_CTF[lo:hi].copy()),
            torch.from_numpy(self.token_ids_CT[lo:hi].copy()),
            torch.from_numpy(self.valid_CT[lo:hi].copy()),
            torch.from_numpy(self.group_ids_CT[lo:hi].copy()),
            torch.from_numpy(self.doc_flag_C[lo:hi].copy()),
            torch.from_numpy(self.context_ids_C[lo:hi].copy()),
            torch.from_numpy(self.start_CT[lo:hi].copy()),
            *(None if a is None else torch.from_numpy(a[lo:hi].copy())
              for a in (self.sentence_CT, self.label_bits_CT, self.label_start_bits_CT, self.sentence_label_bits_CT,
                        self.label_scope_C)),
        )

    def batches(self, bounds) -> list[ActivationBatch]:
        return [self.batch(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]


def make_corpus(n_contexts: int = 18, T: int = 40, F: int = 12, seed: int = 0) -> Corpus:
    rng = np.random.default_rng(seed)
    # Sparse activations over many decades (underflow and overflow bins too), half of them drawn from
    # a few exact values so that ties are common.
    fires = rng.random((n_contexts, T, F)) < 0.25
    continuous = np.exp(rng.normal(0, 2.5, (n_contexts, T, F)))
    discrete = rng.choice([0.5, 1.0, 2.0, 3.0], (n_contexts, T, F))
    values = np.where(rng.random((n_contexts, T, F)) < 0.5, continuous, discrete)
    acts = np.where(fires, values, 0.0).astype(np.float32)
    acts[:, :, F - 1] = 0.0  # a dead feature
    # Planted exact ties for the top-k: feature 0 peaks at 50 in two windows (twice in one of them).
    acts[:, :, 0] = np.minimum(acts[:, :, 0], 20.0)
    acts[3, 10, 0] = acts[3, 20, 0] = acts[7, 5, 0] = 50.0

    token_ids = rng.integers(1, VOCAB_SIZE, (n_contexts, T))
    valid = np.ones((n_contexts, T), dtype=bool)
    valid[:, 0] = False  # BOS
    for c in range(0, n_contexts, 4):  # some windows end in padding
        valid[c, T - 5 :] = False
        token_ids[c, T - 5 :] = PAD
    # A "let me" (5, 6) that runs into the padding must not match.
    token_ids[0, T - 6], token_ids[0, T - 5] = 5, 6
    acts[~valid] = 100.0  # invalid tokens carry large activations: any leak shows

    group_ids = np.full((n_contexts, T), NO_GROUP, dtype=np.int8)
    start = np.zeros((n_contexts, T), dtype=bool)
    for c in range(n_contexts):
        for _ in range(3):
            s, length = int(rng.integers(1, T - 4)), int(rng.integers(1, 5))
            group_ids[c, s : s + length] = rng.integers(0, G)
            start[c, s] = True
    context_ids = (1000 + 7 * rng.permutation(n_contexts)).astype(np.int64)
    doc_flag = rng.random(n_contexts) < 0.5
    # Sentences: runs of 3-9 tokens, numbered from a window-dependent first index, with gaps (-1).
    sentence = np.full((n_contexts, T), -1, dtype=np.int64)
    for c in range(n_contexts):
        t, k = 1, int(rng.integers(0, 50))
        while t < T:
            length = int(rng.integers(3, 10))
            sentence[c, t : t + length] = k
            t, k = t + length + int(rng.integers(0, 2)), k + 1
    # Label sets: label 0 marks whole sentences (a sentence-level set), label 1 short spans, label 2 nothing.
    label_bits = np.zeros((n_contexts, T), dtype=np.int64)
    label_start = np.zeros((n_contexts, T), dtype=np.int64)
    for c in range(n_contexts):
        for k in np.unique(sentence[c][sentence[c] >= 0]):
            if rng.random() < 0.3:
                where = np.flatnonzero(sentence[c] == k)
                label_bits[c, where] |= 1
                label_start[c, where[0]] |= 1
        for _ in range(2):
            s, length = int(rng.integers(0, T - 3)), int(rng.integers(1, 4))
            label_bits[c, s : s + length] |= 2
            label_start[c, s] |= 2
    # A sentence is positive for label 0 when it is one of its sentences, for label 1 when a span touches it.
    sentence_bits = label_bits & 1
    for c in range(n_contexts):
        for k in np.unique(sentence[c][(sentence[c] >= 0) & ((label_bits[c] & 2) > 0)]):
            sentence_bits[c, sentence[c] == k] |= 2
    scope = np.where(np.arange(n_contexts) % 3 == 0, 0b101, 0b111)  # label 1 labels two windows in three
    return Corpus(
        acts, token_ids.astype(np.int64), valid, group_ids, doc_flag, context_ids, start, sentence, label_bits,
        label_start, sentence_bits, scope.astype(np.int64),
    )


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return make_corpus()


SINGLE_BOUNDS = [0, 6, 12, 18]
SHARD_BOUNDS = [[0, 4, 7], [7, 12], [12, 15, 18]]  # other batch sizes than the single pass


def run(make, batches):
    acc = make()
    for batch in batches:
        acc.update(batch)
    return acc


def single_pass(make, corpus: Corpus):
    """Totals of one pass over `corpus` in batches of 6 windows."""
    return run(make, corpus.batches(SINGLE_BOUNDS)).finalise()


def bin_of(values: np.ndarray, bins: LogBins) -> np.ndarray:
    """Brute-force bin index: 0 for zero, else 1 + the number of edges <= value."""
    edges = bins.edges().numpy()
    return np.where(values > 0, 1 + np.digitize(values.astype(np.float64), edges, right=False), 0)


def valid_entries(corpus: Corpus):
    """(c, t, f, value) of every non-zero activation on a valid token."""
    c, t, f = np.nonzero((corpus.acts_CTF > 0) & corpus.valid_CT[:, :, None])
    return c, t, f, corpus.acts_CTF[c, t, f]


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


def test_log_bins_layout_and_edges():
    bins = LogBins()
    edges = bins.edges()
    assert bins.n_bins == 8 * 16 + 3 and edges.shape == (8 * 16 + 1,)
    # Decimal arithmetic gives the exact decade edges.
    assert edges[0].item() == 1e-4 and edges[16 * 4].item() == 1.0 and edges[-1].item() == 1e4
    values = torch.tensor([0.0, 1e-7, 1e-4, 1.0, np.nextafter(1.0, 0.0), 9999.0, 1e4, 1e30])
    idx = bins.index(values)
    assert idx[0] == 0 and idx[1] == 1 and idx[2] == 2  # zero, underflow, first regular bin
    assert idx[3] == 2 + 64 and idx[4] == 2 + 63  # lower edges are inclusive
    assert idx[6] == idx[7] == bins.n_bins - 1  # overflow
    assert (bins.lower_edges()[idx[3]] == 1.0).item()
    rng = np.random.default_rng(1)
    v = np.exp(rng.normal(0, 6, 2000)).astype(np.float32)
    assert np.array_equal(bins.index(torch.from_numpy(v)).numpy(), bin_of(v, bins))


def test_exact_sum_is_independent_of_grouping():
    values = torch.from_numpy(np.exp(np.random.default_rng(2).normal(0, 3, 5000)).astype(np.float32))
    index = torch.from_numpy(np.random.default_rng(3).integers(0, 3, 5000))
    whole = ExactSum((3,), "cpu")
    whole.add(index, values)
    parts = [ExactSum((3,), "cpu") for _ in range(4)]
    for part, chunk in zip(parts, torch.arange(5000).tensor_split(4)):
        part.add(index[chunk], values[chunk])
    merged = parts[2]
    for part in (parts[0], parts[3], parts[1]):
        merged.merge(part)
    assert torch.equal(merged.units, whole.units) and torch.equal(merged.frac, whole.frac)
    exact = np.zeros(3)
    np.add.at(exact, index.numpy(), values.numpy().astype(np.float64))
    # Rounding: at most 2**-25 per summand.
    assert np.all(np.abs(whole.to_float64().numpy() - exact) <= 5000 * 2.0**-25)


def test_hash_priority_is_deterministic_and_spread():
    ctx = torch.arange(200).repeat_interleave(50)
    pos = torch.arange(50).repeat(200)
    feat = torch.full_like(ctx, 7)
    p1, p2 = hash_priority(ctx, pos, feat), hash_priority(ctx.clone(), pos.clone(), feat.clone())
    assert torch.equal(p1, p2)
    assert p1.min() >= 0 and p1.max() < 2**31
    assert p1.unique().numel() > 0.99 * p1.numel()
    # Roughly uniform: each quarter of the range holds about a quarter of the priorities.
    quarters = torch.bincount(p1 // 2**29, minlength=4).float() / p1.numel()
    assert torch.all((quarters - 0.25).abs() < 0.03)
    assert not torch.equal(p1, hash_priority(ctx, pos, feat + 1))


def test_validate_batch_rejects_contract_breaks(corpus):
    batch = corpus.batch(0, 3)
    validate_batch(batch)
    with pytest.raises(ValueError, match="non-negative"):
        validate_batch(batch._replace(acts_BTF=-batch.acts_BTF))
    with pytest.raises(ValueError, match="non-negative"):
        validate_batch(batch._replace(acts_BTF=batch.acts_BTF * np.nan))
    with pytest.raises(ValueError, match="unique"):
        validate_batch(batch._replace(context_ids_B=torch.tensor([4, 4, 5])))
    with pytest.raises(ValueError, match="bool"):
        validate_batch(batch._replace(valid_BT=batch.valid_BT.long()))
    with pytest.raises(ValueError, match="features"):
        TopKAccumulator(TopKConfig(n_features=5)).update(batch)


# --------------------------------------------------------------------------------------------------
# Each accumulator against brute force
# --------------------------------------------------------------------------------------------------


def test_top_k_matches_brute_force(corpus):
    k, F = 5, corpus.acts_CTF.shape[2]
    records = single_pass(lambda: TopKAccumulator(TopKConfig(F, k, feature_offset=100)), corpus)
    expected = []
    for f in range(F):
        candidates = []
        for c in range(len(corpus.context_ids_C)):
            acts_T = np.where(corpus.valid_CT[c], corpus.acts_CTF[c, :, f], 0.0)
            if acts_T.max() > 0:
                candidates.append((-acts_T.max(), corpus.context_ids_C[c], int(np.argmax(acts_T))))
        for rank, (neg_value, ctx, pos) in enumerate(sorted(candidates)[:k]):
            expected.append((f + 100, rank, -neg_value, ctx, pos))
    got = list(zip(*(x.tolist() for x in records[:5])))
    assert_contexts_match(corpus, records.feature_N - 100, records.context_id_N, records.position_N, records.context_values_NL)
    assert [(f, r, np.float32(v), c, p) for f, r, v, c, p in got] == [
        (f, r, np.float32(v), c, p) for f, r, v, c, p in expected
    ]
    # The planted tie: windows 3 and 7 both peak at 50; the lower context id ranks first, and window
    # 3 (peak reached twice) is represented by its first position.
    top0 = [row for row in got if row[0] == 100][:2]
    tied = sorted([(corpus.context_ids_C[3], 10), (corpus.context_ids_C[7], 5)])
    assert [(c, p) for _, _, v, c, p in top0] == tied and all(v == 50.0 for _, _, v, _, _ in top0)
    assert not any(row[0] == 100 + F - 1 for row in got)  # the dead feature has no examples


def test_interval_sketch_matches_brute_force(corpus):
    F, m = corpus.acts_CTF.shape[2], 3
    config = IntervalSampleConfig(F, SMALL_BINS, m, feature_offset=40)
    got = single_pass(lambda: IntervalSampleAccumulator(config), corpus)
    c, t, f, v = valid_entries(corpus)
    ctx = corpus.context_ids_C[c]
    prio = hash_priority(torch.from_numpy(ctx), torch.from_numpy(t), torch.from_numpy(f + 40)).numpy()
    b = bin_of(v, SMALL_BINS)
    expected = []
    for key in sorted(set(zip(f.tolist(), b.tolist()))):
        rows = np.nonzero((f == key[0]) & (b == key[1]))[0]
        for i in sorted(rows, key=lambda i: (prio[i], ctx[i], t[i]))[:m]:
            expected.append((int(f[i]) + 40, int(b[i]), int(prio[i]), float(v[i]), int(ctx[i]), int(t[i])))
    assert list(zip(*(x.tolist() for x in got[:6]))) == expected
    assert_contexts_match(corpus, got.feature_N - 40, got.context_id_N, got.position_N, got.context_values_NL)


def assert_contexts_match(corpus, feature_N, context_id_N, position_N, values_NL, before=32, after=8) -> None:
    """Each kept entry's context, as read during the pass, against the corpus: the feature on positions
    `position - before .. position + after` of its window, 0 outside it and on invalid tokens."""
    assert values_NL.shape == (len(feature_N), before + 1 + after)
    row_of = {int(c): i for i, c in enumerate(corpus.context_ids_C)}
    T = corpus.acts_CTF.shape[1]
    for f, c, p, got_L in zip(feature_N.tolist(), context_id_N.tolist(), position_N.tolist(), values_NL.numpy()):
        row = row_of[c]
        expected_L = np.zeros(before + 1 + after, dtype=np.float32)
        for j, t in enumerate(range(p - before, p + after + 1)):
            if 0 <= t < T and corpus.valid_CT[row, t]:
                expected_L[j] = corpus.acts_CTF[row, t, f]
        np.testing.assert_array_equal(got_L, expected_L)
        assert got_L[before] > 0  # the entry itself


def test_activation_stats_match_brute_force(corpus):
    F = corpus.acts_CTF.shape[2]
    totals = single_pass(lambda: ActivationStatsAccumulator(ActivationStatsConfig(F)), corpus)
    acts = np.where(corpus.valid_CT[:, :, None], corpus.acts_CTF, 0.0)
    n_valid = int(corpus.valid_CT.sum())
    assert totals.n_valid == n_valid
    assert np.array_equal(totals.active_count_F.numpy(), (acts > 0).sum((0, 1)))
    assert np.array_equal(totals.max_F.numpy(), acts.max((0, 1)).astype(np.float32))
    sums = acts.astype(np.float64).sum((0, 1))
    assert np.allclose(totals.sum_F.numpy(), sums, rtol=0, atol=acts.size * 2.0**-25)
    assert np.allclose(totals.density_F.numpy(), (acts > 0).sum((0, 1)) / n_valid)
    assert np.isnan(totals.mean_nonzero_F[F - 1])
    bins = LogBins()
    hist = np.zeros((F, bins.n_bins), dtype=np.int64)
    for f in range(F):
        hist[f] = np.bincount(bin_of(corpus.acts_CTF[:, :, f][corpus.valid_CT], bins), minlength=bins.n_bins)
    assert np.array_equal(totals.hist_FH.numpy(), hist)
    assert (totals.hist_FH.sum(1) == n_valid).all()


def test_backtracking_evidence_matches_brute_force(corpus):
    F = corpus.acts_CTF.shape[2]
    totals = single_pass(lambda: BacktrackingEvidenceAccumulator(EvidenceConfig(F, SMALL_BINS)), corpus)
    class_CT = np.where(corpus.group_ids_CT >= 0, corpus.group_ids_CT, G)
    inside = corpus.valid_CT & (class_CT < G)
    assert np.allclose(totals.mean_in_any_F.numpy(), corpus.acts_CTF[inside].astype(np.float64).mean(0), atol=1e-7)
    outside = corpus.valid_CT & (class_CT == G)
    assert np.allclose(totals.mean_out_F.numpy(), corpus.acts_CTF[outside].astype(np.float64).mean(0), atol=1e-7)
    for cls in range(G + 1):
        tokens = corpus.valid_CT & (class_CT == cls)
        assert totals.count_C[cls] == tokens.sum()
        sums = corpus.acts_CTF[tokens].astype(np.float64).sum(0)
        assert np.allclose(totals.sum_FC[:, cls].numpy(), sums, rtol=0, atol=1e-5)
        for f in range(F):
            hist = np.bincount(bin_of(corpus.acts_CTF[:, :, f][tokens], SMALL_BINS), minlength=SMALL_BINS.n_bins)
            assert np.array_equal(totals.hist_FCH[f, cls].numpy(), hist)


def brute_reasoning_positions(token_ids, valid, vocab: ReasoningVocab, widen=(1, 2)):
    """Loop version: mark each matched token, widen it, keep valid tokens."""
    B, T = token_ids.shape
    groups = np.zeros((len(vocab.names), B, T), dtype=bool)
    for r, sequences in enumerate(vocab.sequences):
        for b in range(B):
            for s in range(T):
                for seq in sequences:
                    L = len(seq)
                    if s + L <= T and tuple(token_ids[b, s : s + L]) == seq and valid[b, s : s + L].all():
                        for t_matched in range(s, s + L):
                            lo, hi = max(0, t_matched - widen[0]), min(T - 1, t_matched + widen[1])
                            groups[r, b, lo : hi + 1] = True
    groups &= valid[None]
    return groups.any(0), groups


def test_reasoning_positions_match_brute_force(corpus):
    tokens, valid = torch.from_numpy(corpus.token_ids_CT), torch.from_numpy(corpus.valid_CT)
    for widen in [(1, 2), (0, 0), (3, 1)]:
        got = reasoning_positions(tokens, REASON_VOCAB, valid, widen)
        mask, groups = brute_reasoning_positions(corpus.token_ids_CT, corpus.valid_CT, REASON_VOCAB, widen)
        assert np.array_equal(got.mask_BT.numpy(), mask) and np.array_equal(got.group_mask_RBT.numpy(), groups)
    # "let me" running into padding does not match; a real one at the window's end is cut, not wrapped.
    T = corpus.token_ids_CT.shape[1]
    assert not reasoning_positions(tokens[:1], REASON_VOCAB, valid[:1]).group_mask_RBT[1, 0, T - 8 :].any()
    row = torch.tensor([[5, 6, 1, 1, 1, 1, 5, 6]])
    hit = reasoning_positions(row, REASON_VOCAB).group_mask_RBT[1, 0].tolist()
    assert hit == [True, True, True, True, False, True, True, True]


def test_build_reasoning_vocab_groups_spellings():
    table = {"wait": [1], " wait": [2], "Wait": [3], " Wait": [4]}
    table.update({"let me": [5, 6], " let me": [7, 6], "Let me": [8, 6], " Let me": [9, 6]})
    vocab = build_reasoning_vocab(lambda s: table[s], ["wait", "let me"])
    assert vocab.names == ("wait", "let me")
    assert set(vocab.sequences[0]) == {(1,), (2,), (3,), (4,)} and (7, 6) in vocab.sequences[1]


def test_reason_score_sums_match_brute_force(corpus):
    F = corpus.acts_CTF.shape[2]
    totals = single_pass(lambda: ReasonScoreAccumulator(ReasonScoreConfig(F, REASON_VOCAB)), corpus)
    mask, groups = brute_reasoning_positions(corpus.token_ids_CT, corpus.valid_CT, REASON_VOCAB)
    acts = corpus.acts_CTF.astype(np.float64)
    negative = corpus.valid_CT & ~mask
    assert totals.count_pos == mask.sum() and totals.count_neg == negative.sum()
    assert np.allclose(totals.mean_pos_F.numpy(), acts[mask].mean(0), atol=1e-7)
    assert np.allclose(totals.mean_neg_F.numpy(), acts[negative].mean(0), atol=1e-7)
    for r in range(len(REASON_VOCAB.names)):
        assert totals.count_R[r] == groups[r].sum()
        assert np.allclose(totals.mean_FR[:, r].numpy(), acts[groups[r]].mean(0), atol=1e-7)


def test_lead_lag_sums_match_brute_force(corpus):
    F, T = corpus.acts_CTF.shape[2], corpus.acts_CTF.shape[1]
    totals = single_pass(lambda: LeadLagAccumulator(LeadLagConfig(F, -6, 3)), corpus)
    offsets = list(range(-6, 4))
    sums, counts = np.zeros((len(offsets), F)), np.zeros(len(offsets), dtype=np.int64)
    for c, s in zip(*np.nonzero(corpus.start_CT & corpus.valid_CT)):
        for o, offset in enumerate(offsets):
            t = s + offset
            if 0 <= t < T and corpus.valid_CT[c, t]:  # skipped, not wrapped, at the window's edge
                counts[o] += 1
                sums[o] += corpus.acts_CTF[c, t]
    assert np.array_equal(totals.count_O.numpy(), counts)
    assert np.allclose(totals.sum_OF.numpy(), sums, atol=1e-5)
    valid_acts = corpus.acts_CTF[corpus.valid_CT].astype(np.float64)
    assert np.allclose(totals.baseline_mean_F.numpy(), valid_acts.mean(0), atol=1e-7)
    assert np.allclose(totals.baseline_std_F.numpy(), valid_acts.std(0), rtol=1e-6, atol=1e-6)


def test_document_contrast_matches_brute_force(corpus):
    F = corpus.acts_CTF.shape[2]
    totals = single_pass(lambda: DocumentContrastAccumulator(DocumentContrastConfig(F)), corpus)
    acts = np.where(corpus.valid_CT[:, :, None], corpus.acts_CTF, 0.0).astype(np.float64)
    for cls in (0, 1):
        windows = corpus.doc_flag_C == bool(cls)
        tokens = corpus.valid_CT & windows[:, None]
        assert totals.token_count_C[cls] == tokens.sum() and totals.window_count_C[cls] == windows.sum()
        assert np.allclose(totals.mean_FC[:, cls].numpy(), acts[tokens].mean(0), atol=1e-7)
        window_max = acts[windows].max(1)  # [windows, F]
        assert np.allclose(totals.window_max_mean_FC[:, cls].numpy(), window_max.mean(0), atol=1e-7)
        assert np.allclose(totals.active_window_share_FC[:, cls].numpy(), (window_max > 0).mean(0))


def test_token_counts_and_within_token_histograms_match_brute_force(corpus):
    F = corpus.acts_CTF.shape[2]
    counts = single_pass(lambda: TokenCountAccumulator(TokenCountConfig(VOCAB_SIZE)), corpus)
    within = single_pass(lambda: WithinTokenAccumulator(WithinTokenConfig(F, CONTROL_TOKENS, SMALL_BINS)), corpus)
    in_GV, out_V = np.zeros((G, VOCAB_SIZE), dtype=np.int64), np.zeros(VOCAB_SIZE, dtype=np.int64)
    for c, t in zip(*np.nonzero(corpus.valid_CT)):
        g, tok = corpus.group_ids_CT[c, t], corpus.token_ids_CT[c, t]
        if g >= 0:
            in_GV[g, tok] += 1
        else:
            out_V[tok] += 1
    assert np.array_equal(counts.in_GV.numpy(), in_GV) and np.array_equal(counts.out_V.numpy(), out_V)
    for k, tok in enumerate(CONTROL_TOKENS):
        for cls in (0, 1):
            tokens = corpus.valid_CT & (corpus.token_ids_CT == tok) & ((corpus.group_ids_CT >= 0) == bool(cls))
            for f in range(F):
                hist = np.bincount(bin_of(corpus.acts_CTF[:, :, f][tokens], SMALL_BINS), minlength=SMALL_BINS.n_bins)
                assert np.array_equal(within.hist_FKCH[f, k, cls].numpy(), hist)


def test_invalid_tokens_change_nothing(corpus):
    """Whatever sits on invalid tokens (activations, token ids, labels) leaves every state unchanged."""
    scrambled = corpus._replace(
        acts_CTF=np.where(corpus.valid_CT[:, :, None], corpus.acts_CTF, 7.5).astype(np.float32),
        token_ids_CT=np.where(corpus.valid_CT, corpus.token_ids_CT, 3),
        group_ids_CT=np.where(corpus.valid_CT, corpus.group_ids_CT, 2).astype(np.int8),
        start_CT=corpus.start_CT | ~corpus.valid_CT,
    )
    a = run(lambda: FeatureIndexAccumulators(index_config(corpus)), corpus.batches(SINGLE_BOUNDS))
    b = run(lambda: FeatureIndexAccumulators(index_config(corpus)), scrambled.batches(SINGLE_BOUNDS))
    assert_states_equal(a.state_dict(), b.state_dict())


# --------------------------------------------------------------------------------------------------
# Shards merge into exactly the single pass
# --------------------------------------------------------------------------------------------------


LABELS = ("sentences", "spans", "empty")


def test_label_sets_match_brute_force(corpus):
    """Token histograms inside each label's spans, each sentence piece's maximum against its label, and
    the mean activation around each label's starts, against a direct count over the dense corpus."""
    F, nb = corpus.acts_CTF.shape[2], SMALL_BINS.n_bins
    totals = single_pass(lambda: LabelSetAccumulator(LabelSetConfig(F, LABELS, SMALL_BINS, -4, 2)), corpus)
    acts = np.where(corpus.valid_CT[:, :, None], corpus.acts_CTF, 0.0)
    valid = corpus.valid_CT
    in_scope_LC = [((corpus.label_scope_C >> label) & 1).astype(bool) for label in range(len(LABELS))]
    for label in range(len(LABELS)):
        scope = valid & in_scope_LC[label][:, None]
        inside = ((corpus.label_bits_CT >> label) & 1).astype(bool) & scope
        assert int(totals.count_pos_L[label]) == inside.sum() and int(totals.count_scope_L[label]) == scope.sum()
        for f in range(F):
            for mask, hist in ((inside, totals.hist_pos_FLH), (scope, totals.hist_scope_FLH)):
                expected = np.bincount(bin_of(acts[:, :, f][mask], SMALL_BINS), minlength=nb)
                np.testing.assert_array_equal(hist[f, label].numpy(), expected)
    assert int(totals.count_pos_L[2]) == 0 and totals.hist_pos_FLH[:, 2].sum() == 0
    assert 0 < int(totals.count_scope_L[1]) < int(totals.count_scope_L[0])
    # Sentence pieces: (window, sentence) over valid tokens; positive by the sentence bits, in scope by the window.
    piece_max, piece_bits = {}, {}
    for c, t in zip(*np.nonzero(valid & (corpus.sentence_CT >= 0))):
        key = (c, corpus.sentence_CT[c, t])
        piece_max[key] = np.maximum(piece_max.get(key, np.zeros(F)), acts[c, t])
        piece_bits[key] = piece_bits.get(key, 0) | int(corpus.sentence_label_bits_CT[c, t])
    assert totals.n_sentences == len(piece_max)
    keys = list(piece_max)
    maxima = np.array([piece_max[k] for k in keys])
    for label in range(len(LABELS)):
        scope = np.array([in_scope_LC[label][c] for c, _ in keys])
        positive = np.array([(piece_bits[k] >> label) & 1 for k in keys], dtype=bool) & scope
        assert int(totals.count_sentence_scope_L[label]) == scope.sum()
        assert int(totals.count_sentence_pos_L[label]) == positive.sum()
        for f in range(F):
            for mask, hist in ((positive, totals.hist_sentence_pos_FLH), (scope, totals.hist_sentence_scope_FLH)):
                expected = np.bincount(bin_of(maxima[mask, f], SMALL_BINS), minlength=nb)
                np.testing.assert_array_equal(hist[f, label].numpy(), expected)
    assert int(totals.count_sentence_pos_L[0]) > 10 and int(totals.count_sentence_pos_L[2]) == 0
    # Lead-lag: activations at offset o from a valid start, inside the window, on valid targets.
    offsets = list(range(-4, 3))
    for label in range(2):
        starts = ((corpus.label_start_bits_CT >> label) & 1).astype(bool) & valid & in_scope_LC[label][:, None]
        for o, offset in enumerate(offsets):
            values = [acts[c, t + offset] for c, t in zip(*np.nonzero(starts)) if 0 <= t + offset < acts.shape[1] and valid[c, t + offset]]
            assert int(totals.count_LO[label, o]) == len(values)
            np.testing.assert_allclose(totals.sum_LOF[label, o].numpy(), np.sum(values, axis=0), rtol=1e-6, atol=1e-5)


def index_config(corpus: Corpus) -> IndexConfig:
    return IndexConfig(
        n_features=corpus.acts_CTF.shape[2], vocab_size=VOCAB_SIZE, feature_offset=24, k=4, bins=SMALL_BINS,
        samples_per_bin=2, reasoning_vocab=REASON_VOCAB, control_token_ids=CONTROL_TOKENS, min_offset=-8, max_offset=3,
        labels=LABELS,
    )


ACCUMULATORS = {
    "top_k": lambda F: TopKAccumulator(TopKConfig(F, k=4)),
    "samples": lambda F: IntervalSampleAccumulator(IntervalSampleConfig(F, SMALL_BINS, per_bin=2)),
    "stats": lambda F: ActivationStatsAccumulator(ActivationStatsConfig(F)),
    "evidence": lambda F: BacktrackingEvidenceAccumulator(EvidenceConfig(F)),
    "reason": lambda F: ReasonScoreAccumulator(ReasonScoreConfig(F, REASON_VOCAB)),
    "lead_lag": lambda F: LeadLagAccumulator(LeadLagConfig(F)),
    "documents": lambda F: DocumentContrastAccumulator(DocumentContrastConfig(F)),
    "token_counts": lambda F: TokenCountAccumulator(TokenCountConfig(VOCAB_SIZE)),
    "within_token": lambda F: WithinTokenAccumulator(WithinTokenConfig(F, CONTROL_TOKENS)),
    "label_sets": lambda F: LabelSetAccumulator(LabelSetConfig(F, LABELS, SMALL_BINS, -4, 2)),
    "token_mass": lambda F: TokenMassAccumulator(TokenMassConfig(F, capacity=VOCAB_SIZE)),  # exact: bit for bit
}


def assert_states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def round_trip(state: dict) -> dict:
    """Through a shard file: torch.save, then a weights-only load (plain tensors only)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("name", [*ACCUMULATORS, "all"])
def test_three_shards_merge_into_the_single_pass_in_any_order(corpus, name):
    F = corpus.acts_CTF.shape[2]
    if name == "all":
        make, cls = (lambda: FeatureIndexAccumulators(index_config(corpus))), FeatureIndexAccumulators
    else:
        make, cls = (lambda: ACCUMULATORS[name](F)), type(ACCUMULATORS[name](F))
    single = run(make, corpus.batches(SINGLE_BOUNDS)).state_dict()
    shards = [round_trip(run(make, corpus.batches(bounds)).state_dict()) for bounds in SHARD_BOUNDS]
    for order in itertools.permutations(range(3)):
        merged = cls.from_state_dict(shards[order[0]])
        for i in order[1:]:
            merged.merge(cls.from_state_dict(shards[i]))
        assert_states_equal(merged.state_dict(), single)
    # A tree of merges too: a + (b + c).
    tail = cls.from_state_dict(shards[1]).merge(cls.from_state_dict(shards[2]))
    assert_states_equal(cls.from_state_dict(shards[0]).merge(tail).state_dict(), single)


def test_merge_refuses_a_different_configuration(corpus):
    F = corpus.acts_CTF.shape[2]
    with pytest.raises(ValueError, match="cannot merge"):
        TopKAccumulator(TopKConfig(F, k=4)).merge(TopKAccumulator(TopKConfig(F, k=5)))
    with pytest.raises(ValueError, match="not a"):
        TopKAccumulator.from_state_dict(ActivationStatsAccumulator(ActivationStatsConfig(F)).state_dict())


def test_state_round_trip_keeps_the_configuration(corpus):
    acc = run(lambda: FeatureIndexAccumulators(index_config(corpus)), corpus.batches(SINGLE_BOUNDS))
    again = FeatureIndexAccumulators.from_state_dict(round_trip(acc.state_dict()))
    assert again.config == acc.config
    assert all(isinstance(v, torch.Tensor) for v in acc.state_dict().values())
    assert_states_equal(again.state_dict(), acc.state_dict())


def test_empty_batch_is_a_no_op(corpus):
    F = corpus.acts_CTF.shape[2]
    acc = run(lambda: FeatureIndexAccumulators(index_config(corpus)), corpus.batches(SINGLE_BOUNDS))
    before = acc.state_dict()
    acc.update(corpus.batch(0, 0))
    assert_states_equal(acc.state_dict(), before)


# --------------------------------------------------------------------------------------------------
# The token-mass sketch (weighted Misra-Gries) against brute force
# --------------------------------------------------------------------------------------------------


def skewed_corpus(seed: int = 1, n_contexts: int = 18, T: int = 60, F: int = 6, vocab: int = 200) -> Corpus:
    """Zipf-distributed token ids, and features that prefer a few tokens: heavy hitters and a long tail."""
    rng = np.random.default_rng(seed)
    token_ids = np.minimum(rng.zipf(1.3, (n_contexts, T)), vocab - 1).astype(np.int64)
    preferred_FV = rng.random((F, vocab)) < 0.05
    fires = rng.random((n_contexts, T, F)) < np.where(preferred_FV[:, token_ids].transpose(1, 2, 0), 0.9, 0.15)
    acts = np.where(fires, rng.exponential(1.0, (n_contexts, T, F)), 0.0).astype(np.float32)
    acts[:, :, F - 1] = 0.0  # a dead feature
    valid = np.ones((n_contexts, T), dtype=bool)
    valid[:, 0] = False
    acts[~valid] = 100.0  # invalid tokens must not count
    base = make_corpus(n_contexts, T, F, seed)
    return base._replace(acts_CTF=acts, token_ids_CT=token_ids, valid_CT=valid)


def brute_token_mass(corpus: Corpus, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """mass_FV (float64 sums of each feature's activations per token id) and count_V, valid tokens only."""
    valid = corpus.valid_CT
    ids = corpus.token_ids_CT[valid]
    acts = corpus.acts_CTF[valid].astype(np.float64)
    mass_FV = np.zeros((acts.shape[1], vocab))
    for f in range(acts.shape[1]):
        np.add.at(mass_FV[f], ids, acts[:, f])
    return mass_FV, np.bincount(ids, minlength=vocab)


def brute_dependence(mass_V: np.ndarray, count_V: np.ndarray, top_k: int, min_count: int):
    """(top token ids by mean, concentration, normalised entropy) of one feature, from exact sums."""
    seen = np.flatnonzero((mass_V > 0) & (count_V >= min_count))
    mean = mass_V[seen] / count_V[seen]
    top = seen[np.lexsort((seen, -mean))][:top_k]
    total = mass_V.sum()
    p = mass_V[mass_V > 0] / total
    entropy = -(p * np.log(p)).sum() / np.log(len(p)) if len(p) > 1 else 0.0
    return top, (mass_V[top].sum() / total if total > 0 else np.nan), entropy


def token_mass_run(corpus: Corpus, capacity: int, bounds=SINGLE_BOUNDS, top_k: int = 5, min_count: int = 2):
    F = corpus.acts_CTF.shape[2]
    return run(lambda: TokenMassAccumulator(TokenMassConfig(F, capacity, top_k, min_count)), corpus.batches(bounds))


def test_token_mass_sketch_is_exact_when_the_capacity_holds_every_token():
    corpus, vocab = skewed_corpus(), 200
    mass_FV, count_V = brute_token_mass(corpus, vocab)
    assert (mass_FV > 0).sum(1).max() > 30  # features fire on many distinct tokens
    sketch = token_mass_run(corpus, capacity=vocab).finalise()
    counts = run(lambda: TokenCountAccumulator(TokenCountConfig(vocab)), corpus.batches(SINGLE_BOUNDS)).finalise()
    dep = compute_token_dependence(sketch, counts)
    assert not sketch.error_F.any() and not sketch.untracked_F.any() and dep.exact_F.all()
    for f in range(mass_FV.shape[0]):
        held = sketch.token_FC[f] >= 0
        got = np.zeros(vocab)
        got[sketch.token_FC[f][held].numpy()] = sketch.mass_FC[f][held].numpy()
        np.testing.assert_allclose(got, mass_FV[f], rtol=1e-6, atol=1e-6)
        assert int(dep.n_tracked_F[f]) == int((mass_FV[f] > 0).sum())
        assert float(sketch.total_F[f]) == pytest.approx(mass_FV[f].sum(), rel=1e-9, abs=1e-6)
        top, concentration, entropy = brute_dependence(mass_FV[f], count_V, top_k=5, min_count=2)
        n = int(dep.n_top_F[f])
        assert dep.token_FK[f, :n].tolist() == top.tolist()
        assert dep.count_FK[f, :n].tolist() == count_V[top].tolist()
        np.testing.assert_allclose(dep.mean_FK[f, :n].numpy(), mass_FV[f, top] / count_V[top], rtol=1e-6)
        if mass_FV[f].sum() == 0:  # the dead feature
            assert n == 0 and np.isnan(float(dep.concentration_F[f])) and np.isnan(float(dep.entropy_F[f]))
            continue
        assert float(dep.concentration_F[f]) == pytest.approx(concentration, rel=1e-6)
        assert float(dep.concentration_upper_F[f]) == pytest.approx(concentration, rel=1e-6)
        assert float(dep.entropy_F[f]) == pytest.approx(entropy, rel=1e-6)


@pytest.mark.parametrize("capacity", [1, 4, 12])
def test_token_mass_sketch_with_few_counters_stays_within_its_bound(capacity):
    corpus, vocab = skewed_corpus(), 200
    mass_FV, _ = brute_token_mass(corpus, vocab)
    sketch = token_mass_run(corpus, capacity).finalise()
    assert sketch.error_F.max() > 0  # the sketch had to forget
    tol = 1e-5
    for f in range(mass_FV.shape[0]):
        held = sketch.token_FC[f] >= 0
        ids, est, error = sketch.token_FC[f][held].numpy(), sketch.mass_FC[f][held].numpy(), float(sketch.error_F[f])
        assert len(set(ids.tolist())) == len(ids) <= capacity
        assert np.all(est <= mass_FV[f, ids] + tol) and np.all(est >= mass_FV[f, ids] - error - tol)
        assert set(np.flatnonzero(mass_FV[f] > error + tol)) <= set(ids.tolist())  # heavy hitters are tracked
        assert error <= mass_FV[f].sum() / (capacity + 1) + tol  # the Misra-Gries bound
        assert float(sketch.untracked_F[f]) == pytest.approx(mass_FV[f].sum() - est.sum(), abs=1e-4)


@pytest.mark.parametrize("capacity", [4, 200])
def test_token_mass_shards_merge_within_the_bound_of_the_whole(capacity):
    corpus, vocab = skewed_corpus(), 200
    mass_FV, _ = brute_token_mass(corpus, vocab)
    single = token_mass_run(corpus, capacity)
    shards = [round_trip(token_mass_run(corpus, capacity, bounds).state_dict()) for bounds in SHARD_BOUNDS]
    merged = TokenMassAccumulator.from_state_dict(shards[2])
    for i in (0, 1):
        merged.merge(TokenMassAccumulator.from_state_dict(shards[i]))
    if capacity >= vocab:  # exact: bit for bit
        assert_states_equal(merged.state_dict(), single.state_dict())
        return
    totals = merged.finalise()
    torch.testing.assert_close(totals.total_F, single.finalise().total_F, rtol=0, atol=0)
    for f in range(mass_FV.shape[0]):
        held = totals.token_FC[f] >= 0
        ids, est, error = totals.token_FC[f][held].numpy(), totals.mass_FC[f][held].numpy(), float(totals.error_F[f])
        assert np.all(est <= mass_FV[f, ids] + 1e-5) and np.all(est >= mass_FV[f, ids] - error - 1e-5)
        assert set(np.flatnonzero(mass_FV[f] > error + 1e-5)) <= set(ids.tolist())
        assert error <= mass_FV[f].sum() / (capacity + 1) + 1e-5


def test_token_mass_state_round_trip():
    corpus = skewed_corpus()
    acc = token_mass_run(corpus, capacity=4)
    again = TokenMassAccumulator.from_state_dict(round_trip(acc.state_dict()))
    assert again.config == acc.config
    assert_states_equal(again.state_dict(), acc.state_dict())
    with pytest.raises(ValueError, match="cannot merge"):
        acc.merge(token_mass_run(corpus, capacity=5))
