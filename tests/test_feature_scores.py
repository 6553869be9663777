"""Scores from the index totals against brute-force implementations, hand-checked cases, and the
planted lead-lag features; logit lens and nearest features against dense computations."""

from __future__ import annotations

import math

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
    IntervalSampleAccumulator,
    IntervalSampleConfig,
    LeadLagAccumulator,
    LeadLagConfig,
    LogBins,
    ReasonScoreAccumulator,
    ReasonScoreConfig,
    ReasoningVocab,
    TokenCountAccumulator,
    TokenCountConfig,
    WithinTokenAccumulator,
    WithinTokenConfig,
    hash_priority,
)
from explorer.feature_scores import (
    REASON_EPS,
    Auroc,
    LogitLens,
    auroc_from_counts,
    auroc_from_histograms,
    compute_backtracking_auroc,
    compute_document_contrast,
    compute_lead_lag,
    compute_reason_score,
    compute_token_baseline,
    compute_token_control,
    compute_within_token_auroc,
    concat_reason_totals,
    logit_lens,
    nearest_features,
    promotes_tokens,
    select_interval_samples,
    top_phrase_token_ids,
)
from explorer.lexicon import GROUPS, NOTEBOOK_GROUPS
from tests.test_feature_aggregates import (
    CONTROL_TOKENS,
    REASON_VOCAB,
    SINGLE_BOUNDS,
    SMALL_BINS,
    VOCAB_SIZE,
    Corpus,
    bin_of,
    brute_reasoning_positions,
    make_corpus,
    run,
    single_pass,
    valid_entries,
)

G = len(GROUPS)


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return make_corpus()


def brute_auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Rank AUROC by counting pairs: P(pos > neg) + 1/2 P(pos == neg)."""
    if len(pos) == 0 or len(neg) == 0:
        return math.nan
    pos, neg = np.asarray(pos, dtype=np.float64)[:, None], np.asarray(neg, dtype=np.float64)[None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


# --------------------------------------------------------------------------------------------------
# AUROC
# --------------------------------------------------------------------------------------------------


def test_auroc_from_counts_on_hand_counts():
    # Positives {1, 2, 2}, negatives {0, 1}: pairs won 1/2 + 1 + 1 + 1 + 1 + 1 = 5.5 of 6 (value bins).
    assert auroc_from_counts(torch.tensor([0, 1, 2]), torch.tensor([1, 1, 0])).auroc.item() == pytest.approx(5.5 / 6)
    result = auroc_from_histograms(torch.tensor([[5, 0, 3]]), torch.tensor([[5, 2, 1]]))
    # Zero bin exact; bin 2 holds 3 x 1 pairs that may be ordered either way.
    assert result.error_bound.item() == pytest.approx(0.5 * 3 / 64)
    assert math.isnan(auroc_from_histograms(torch.tensor([0, 0]), torch.tensor([3, 1])).auroc.item())


@pytest.mark.parametrize("bins", [LogBins(), SMALL_BINS], ids=["default_bins", "coarse_bins"])
def test_backtracking_auroc_matches_brute_force_within_its_bound(corpus, bins):
    F = corpus.acts_CTF.shape[2]
    evidence = single_pass(lambda: BacktrackingEvidenceAccumulator(EvidenceConfig(F, bins)), corpus)
    scores = compute_backtracking_auroc(evidence)
    acts = corpus.acts_CTF[corpus.valid_CT]  # [tokens, F]
    group = corpus.group_ids_CT[corpus.valid_CT]
    notebook = np.isin(group, [GROUPS.index(g) for g in NOTEBOOK_GROUPS])
    cases = [(scores.any_F, group >= 0), (scores.notebook_F, notebook)]
    for g in range(G):
        cases.append((Auroc(scores.group_FG.auroc[:, g], scores.group_FG.error_bound[:, g]), group == g))
    worst_error = 0.0
    for result, positive in cases:
        for f in range(F):
            exact = brute_auroc(acts[positive, f], acts[~positive, f])
            got, bound = result.auroc[f].item(), result.error_bound[f].item()
            if math.isnan(exact):
                assert math.isnan(got)
                continue
            # The tolerance is the bound the histogram itself gives (pairs sharing a non-zero bin).
            assert abs(got - exact) <= bound + 1e-12
            worst_error = max(worst_error, abs(got - exact))
    if bins == SMALL_BINS:
        assert worst_error > 0  # the coarse bins really do lose order, and the bound covers it


def test_auroc_is_exact_when_no_bin_is_shared():
    # Negatives are all zero (the exact bin) or far below the positives: the bound is 0.
    pos, neg = np.array([0.0, 0.0, 3.0, 5.0, 40.0]), np.array([0.0] * 7 + [0.01, 0.2])
    bins = LogBins()
    hist = lambda v: torch.bincount(bins.index(torch.tensor(v, dtype=torch.float32)), minlength=bins.n_bins)
    result = auroc_from_histograms(hist(pos), hist(neg))
    assert result.error_bound.item() == 0
    assert result.auroc.item() == pytest.approx(brute_auroc(pos, neg), abs=1e-15)


# --------------------------------------------------------------------------------------------------
# ReasonScore
# --------------------------------------------------------------------------------------------------


def test_reason_score_on_a_hand_checked_window():
    """T = 12: BOS, then 'wait' (token 3) at t=2 and 'hmm' (token 7) at t=7.
    Widened to t-1..t+2: wait covers {1,2,3,4}, hmm covers {6,7,8,9}; P = those 8 tokens, N = {5,10,11}.
    f0: 1.0 at t=2 and t=7  -> mu_wait = mu_hmm = 1/4, mu+ = 2/8, mu- = 0, H = 1
    f1: 2.0 at t=2, 3.0 at t=10 -> mu_wait = 1/2, mu_hmm = 0, mu+ = 2/8, mu- = 1, H = 0
    f2: 0.5 at t=5          -> mu+ = 0, mu- = 1/6, H = 0
    sum mu+ = 1/2, sum mu- = 7/6, so scores: 0.5 * 1 - 0 = 0.5;  0.5 * 0 - 6/7;  0 - 1/7.
    The BOS token's activation of 100 is ignored."""
    tokens = torch.tensor([[0, 1, 3, 1, 1, 1, 1, 7, 1, 1, 1, 1]])
    valid = torch.ones(1, 12, dtype=torch.bool)
    valid[0, 0] = False
    acts = torch.zeros(1, 12, 3)
    acts[0, 0, :] = 100.0
    acts[0, 2, 0] = acts[0, 7, 0] = 1.0
    acts[0, 2, 1], acts[0, 10, 1] = 2.0, 3.0
    acts[0, 5, 2] = 0.5
    no_labels = torch.full((1, 12), -1, dtype=torch.int8)
    no_starts = torch.zeros(1, 12, dtype=torch.bool)
    batch = ActivationBatch(acts, tokens, valid, no_labels, torch.tensor([True]), torch.tensor([0]), no_starts)
    vocab = ReasoningVocab.from_mapping({"wait": [[3]], "hmm": [[7]]})
    totals = ReasonScoreAccumulator(ReasonScoreConfig(3, vocab)).update(batch).finalise()
    assert (totals.count_pos, totals.count_neg, totals.count_R.tolist()) == (8, 3, [4, 4])
    assert totals.mean_pos_F.tolist() == [0.25, 0.25, 0.0]
    assert totals.mean_neg_F.tolist() == pytest.approx([0.0, 1.0, 1 / 6])
    scores = compute_reason_score(totals, alpha=0.7)
    assert scores.score_F.tolist() == pytest.approx([0.5, -6 / 7, -1 / 7], abs=1e-9)
    assert scores.entropy_F.tolist() == pytest.approx([1.0, 0.0, 0.0], abs=1e-9)
    # The reference code's epsilon (1e-12 in each denominator) moves the one-group feature by ~1e-8.
    reference = compute_reason_score(totals, alpha=0.7, eps=REASON_EPS).score_F
    assert reference.tolist() == pytest.approx([0.5, -6 / 7, -1 / 7], abs=1e-7)
    assert reference[1].item() != scores.score_F[1].item()


def test_reason_score_alpha_on_hand_totals():
    # mu_r = (3, 1): p = (3/4, 1/4), H = 0.811278 (in bits, so already divided by log 2).
    from explorer.feature_aggregates import ReasonTotals

    mean_pos_F = torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64)
    mean_neg_F = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)
    mean_FR = torch.tensor([[1.0, 1.0], [2.0, 0.0], [3.0, 1.0]], dtype=torch.float64)
    totals = ReasonTotals(mean_pos_F, mean_neg_F, mean_FR, 10, 10, torch.tensor([5, 5]), ("a", "b"), 0)
    h = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    for alpha in (0.7, 1.0):
        got = compute_reason_score(totals, alpha=alpha).score_F.tolist()
        assert got == pytest.approx([1 / 4, -1 / 2, 2 / 4 * h**alpha - 1 / 2], abs=1e-9)


def direct_reason_score(corpus: Corpus, vocab: ReasoningVocab, alpha: float) -> np.ndarray:
    """The paper's formula (docs/index-math.md), straight from dense activations and brute-force token sets."""
    mask, groups = brute_reasoning_positions(corpus.token_ids_CT, corpus.valid_CT, vocab)
    acts = corpus.acts_CTF.astype(np.float64)
    mu_pos = acts[mask].mean(0)
    mu_neg = acts[corpus.valid_CT & ~mask].mean(0)
    mu_FR = np.stack([acts[groups[r]].mean(0) for r in range(len(vocab.names))], 1)
    total_FR = mu_FR.sum(1, keepdims=True)
    p = np.divide(mu_FR, total_FR, out=np.zeros_like(mu_FR), where=total_FR > 0)
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0.0)
    H = -plogp.sum(1) / np.log(len(vocab.names))
    return mu_pos / mu_pos.sum() * H**alpha - mu_neg / mu_neg.sum()


@pytest.mark.parametrize("alpha", [0.7, 1.0])
def test_reason_score_matches_the_formula_on_random_activations(corpus, alpha):
    F = corpus.acts_CTF.shape[2]
    totals = single_pass(lambda: ReasonScoreAccumulator(ReasonScoreConfig(F, REASON_VOCAB)), corpus)
    got = compute_reason_score(totals, alpha=alpha).score_F.numpy()
    assert np.allclose(got, direct_reason_score(corpus, REASON_VOCAB, alpha), rtol=1e-6, atol=1e-9)


def test_reason_totals_of_feature_chunks_concatenate_to_the_whole(corpus):
    F = corpus.acts_CTF.shape[2]
    whole = single_pass(lambda: ReasonScoreAccumulator(ReasonScoreConfig(F, REASON_VOCAB)), corpus)
    parts = []
    for lo, hi in [(5, F), (0, 5)]:  # given out of order on purpose
        sliced = Corpus(corpus.acts_CTF[:, :, lo:hi].copy(), *corpus[1:])
        acc = ReasonScoreAccumulator(ReasonScoreConfig(hi - lo, REASON_VOCAB, feature_offset=lo))
        parts.append(run(lambda: acc, sliced.batches(SINGLE_BOUNDS)).finalise())
    joined = concat_reason_totals(parts)
    assert torch.equal(compute_reason_score(joined).score_F, compute_reason_score(whole).score_F)
    with pytest.raises(ValueError, match="not contiguous"):
        concat_reason_totals([parts[0], parts[0]])


# --------------------------------------------------------------------------------------------------
# Lead-lag
# --------------------------------------------------------------------------------------------------


def planted_lead_corpus(n_contexts: int = 40, T: int = 64, seed: int = 3) -> Corpus:
    """Feature 0 rises 4 tokens before every phrase start (offsets -4..-1), feature 1 fires only on
    the phrase's first token, feature 2 is unrelated noise."""
    rng = np.random.default_rng(seed)
    acts = np.zeros((n_contexts, T, 3), dtype=np.float32)
    start = np.zeros((n_contexts, T), dtype=bool)
    for c in range(n_contexts):
        for s in (int(rng.integers(10, 30)), int(rng.integers(44, 60))):  # starts >= 14 apart
            start[c, s] = True
            acts[c, s - 4 : s, 0] = 2.0
            acts[c, s, 1] = 2.0
    noise = rng.random((n_contexts, T)) < 0.1
    acts[:, :, 2] = np.where(noise, rng.random((n_contexts, T)), 0.0)
    valid = np.ones((n_contexts, T), dtype=bool)
    valid[:, 0] = False
    groups = np.where(start, GROUPS.index("interjection"), -1).astype(np.int8)
    return Corpus(
        acts, rng.integers(1, VOCAB_SIZE, (n_contexts, T)), valid, groups, rng.random(n_contexts) < 0.5,
        np.arange(n_contexts, dtype=np.int64), start,
    )


def test_lead_lag_scores_a_planted_leader_and_not_a_detector():
    planted = planted_lead_corpus()
    totals = run(lambda: LeadLagAccumulator(LeadLagConfig(3)), planted.batches([0, 15, 40])).finalise()
    scores = compute_lead_lag(totals)
    leads, share = scores.leads_score_F.tolist(), scores.lead_share_F.tolist()
    assert leads[0] > 1.0 and share[0] > 0.4  # half the pre-window sits at the peak
    assert abs(leads[1]) < 0.25 and abs(share[1]) < 0.05  # the detector: ~0
    assert abs(leads[2]) < 0.25
    assert -4 <= scores.peak_offset_F[0].item() <= -1 and scores.peak_offset_F[1].item() == 0
    # The profile itself: the leader sits at 2.0 from -4 to -1 (other starts are >= 14 tokens away).
    offsets = totals.offsets_O.tolist()
    assert totals.mean_OF[[offsets.index(o) for o in (-4, -3, -2, -1)], 0].tolist() == [2.0] * 4
    assert totals.mean_OF[offsets.index(0), 1].item() == 2.0


# --------------------------------------------------------------------------------------------------
# Document contrast
# --------------------------------------------------------------------------------------------------


def test_document_contrast_separates_a_feature_of_backtracking_traces():
    planted = planted_lead_corpus()
    acts = planted.acts_CTF.copy()
    acts[:, :, 2] = np.where(planted.doc_flag_C[:, None], acts[:, :, 2], 0.0)  # noise only in traces that backtrack
    planted = planted._replace(acts_CTF=acts)
    totals = run(lambda: DocumentContrastAccumulator(DocumentContrastConfig(3)), planted.batches([0, 40])).finalise()
    contrast = compute_document_contrast(totals)
    assert contrast.mean_without_F[2].item() == 0 and contrast.mean_delta_F[2].item() > 0
    assert contrast.window_max_delta_F[2].item() > 0 and contrast.active_share_without_F[2].item() == 0
    assert abs(contrast.mean_delta_F[0].item()) < 1e-12  # the same in both kinds of trace


# --------------------------------------------------------------------------------------------------
# Token-detector controls
# --------------------------------------------------------------------------------------------------


def test_token_baseline_matches_brute_force(corpus):
    counts = single_pass(lambda: TokenCountAccumulator(TokenCountConfig(VOCAB_SIZE)), corpus)
    tokens = corpus.token_ids_CT[corpus.valid_CT]
    group = corpus.group_ids_CT[corpus.valid_CT]
    for groups in (GROUPS, NOTEBOOK_GROUPS, ("doubt",)):
        positive = np.isin(group, [GROUPS.index(g) for g in groups])
        baseline = compute_token_baseline(counts, groups)
        singles = [brute_auroc((tokens == t)[positive], (tokens == t)[~positive]) for t in range(VOCAB_SIZE)]
        assert baseline.best_token_id == int(np.argmax(singles))
        assert baseline.best_token_auroc == pytest.approx(max(singles), abs=1e-12)
        ratio = {t: positive[tokens == t].mean() for t in np.unique(tokens)}
        score = np.array([ratio[t] for t in tokens])
        assert baseline.identity_auroc == pytest.approx(brute_auroc(score[positive], score[~positive]), abs=1e-12)
        assert baseline.identity_auroc >= baseline.best_token_auroc - 1e-12


def test_top_phrase_token_ids_skips_tokens_never_seen_outside():
    from explorer.feature_aggregates import TokenCountTotals

    in_GV = torch.zeros(G, 6, dtype=torch.int64)
    in_GV[0] = torch.tensor([0, 9, 5, 5, 7, 1])
    out_V = torch.tensor([4, 0, 3, 2, 1, 8])
    # Token 1 is the most frequent in phrases but never outside; 2 and 3 tie, lower id first.
    assert top_phrase_token_ids(TokenCountTotals(in_GV, out_V), n=3) == (4, 2, 3)


def test_within_token_auroc_matches_brute_force(corpus):
    F = corpus.acts_CTF.shape[2]
    within = single_pass(lambda: WithinTokenAccumulator(WithinTokenConfig(F, CONTROL_TOKENS)), corpus)
    result = compute_within_token_auroc(within)
    inside = corpus.group_ids_CT >= 0
    weights, weighted = [], np.zeros(F)
    for k, tok in enumerate(CONTROL_TOKENS):
        is_tok = corpus.valid_CT & (corpus.token_ids_CT == tok)
        pos, neg = corpus.acts_CTF[is_tok & inside], corpus.acts_CTF[is_tok & ~inside]
        weight = len(pos) if len(pos) and len(neg) else 0
        assert result.weight_K[k].item() == weight
        weights.append(weight)
        for f in range(F):
            exact = brute_auroc(pos[:, f], neg[:, f])
            got, bound = result.auroc_FK.auroc[f, k].item(), result.auroc_FK.error_bound[f, k].item()
            assert (math.isnan(exact) and math.isnan(got)) or abs(got - exact) <= bound + 1e-12
            if weight:
                weighted[f] += weight * exact
    assert sum(weights) > 0
    assert np.all(np.abs(result.auroc_F.numpy() - weighted / sum(weights)) <= result.error_bound_F.numpy() + 1e-12)


def test_token_control_margins():
    from explorer.feature_scores import TokenBaseline, WithinTokenAuroc

    baseline = TokenBaseline(5, 0.8, 0.9)
    within = WithinTokenAuroc(torch.tensor([0.5, 0.7]), torch.zeros(2), None, torch.ones(1), torch.tensor([5]))
    control = compute_token_control(torch.tensor([0.95, 0.85]), baseline, within)
    assert control.margin_over_best_token_F.tolist() == pytest.approx([0.15, 0.05])
    assert control.margin_over_identity_F.tolist() == pytest.approx([0.05, -0.05])


# --------------------------------------------------------------------------------------------------
# Interval samples
# --------------------------------------------------------------------------------------------------


def brute_intervals(max_value: float, hist_H: np.ndarray, bins: LogBins, n: int, scheme: str) -> np.ndarray:
    """Interval of each bin, by the documented rule, one bin at a time."""
    rep = bins.representative_values().numpy()
    nonzero = hist_H[1:].astype(np.float64)
    out = np.full(bins.n_bins, -1)
    for b in range(1, bins.n_bins):
        if scheme == "linear":
            j = math.ceil(rep[b] / (max_value / n)) - 1 if max_value > 0 else n - 1
        else:
            middle = (nonzero[: b - 1].sum() + nonzero[b - 1] / 2) / max(nonzero.sum(), 1)
            j = math.floor(middle * n)
        out[b] = min(max(j, 0), n - 1)
    return out


@pytest.mark.parametrize("scheme", ["linear", "quantile"])
def test_interval_samples_are_the_lowest_priorities_of_each_interval(corpus, scheme):
    F, n, per = corpus.acts_CTF.shape[2], 4, 3
    bins = SMALL_BINS
    batches = corpus.batches(SINGLE_BOUNDS)
    config = IntervalSampleConfig(F, bins, per_bin=per, feature_offset=10)
    sketch = run(lambda: IntervalSampleAccumulator(config), batches).finalise()
    stats = run(lambda: ActivationStatsAccumulator(ActivationStatsConfig(F, bins)), batches).finalise()
    selection = select_interval_samples(sketch, stats, n_intervals=n, per_interval=per, scheme=scheme)

    c, t, f, v = valid_entries(corpus)
    ctx = corpus.context_ids_C[c]
    prio = hash_priority(torch.from_numpy(ctx), torch.from_numpy(t), torch.from_numpy(f + 10)).numpy()
    b = bin_of(v, bins)
    expected_samples, expected_bounds = [], []
    lower, upper = bins.lower_edges().numpy(), bins.upper_edges().numpy()
    for feature in range(F):
        table = brute_intervals(stats.max_F[feature].item(), stats.hist_FH[feature].numpy(), bins, n, scheme)
        mine = np.nonzero(f == feature)[0]
        for j in range(n):
            rows = [i for i in mine if table[b[i]] == j]
            chosen = sorted(rows, key=lambda i: (prio[i], ctx[i], t[i]))[:per]
            for rank, i in enumerate(chosen):
                expected_samples.append((feature + 10, j, rank, float(v[i]), int(ctx[i]), int(t[i])))
            if rows:
                in_bins = sorted({b[i] for i in rows})
                low, high = float(lower[in_bins[0]]), float(upper[in_bins[-1]])
                expected_bounds.append((feature + 10, j, low, high, len(rows)))
    assert list(zip(*(x.tolist() for x in selection.samples[:6]))) == expected_samples
    assert list(zip(*(x.tolist() for x in selection.bounds))) == expected_bounds


# --------------------------------------------------------------------------------------------------
# Logit lens, nearest features
# --------------------------------------------------------------------------------------------------


def test_logit_lens_matches_the_dense_product():
    gen = torch.Generator().manual_seed(0)
    W_dec, W_U = torch.randn(37, 8, generator=gen), torch.randn(8, 50, generator=gen)
    gamma = torch.rand(8, generator=gen) + 0.5
    for weight in (None, gamma):
        lens = logit_lens(W_dec, W_U, k=4, final_norm_weight_D=weight, chunk_size=5)
        dense = (W_dec.double() * (1 if weight is None else weight.double())) @ W_U.double()
        order = torch.argsort(dense, dim=1, descending=True)
        assert torch.equal(lens.top_token_ids_FK, order[:, :4])
        assert torch.equal(lens.bottom_token_ids_FK, order.flip(1)[:, :4])
        assert torch.allclose(lens.top_logits_FK.double(), dense.gather(1, order[:, :4]), atol=1e-5)
        assert torch.allclose(lens.bottom_logits_FK.double(), dense.gather(1, order.flip(1)[:, :4]), atol=1e-5)
    # Folding gamma into W_U is the same thing as passing it.
    folded = logit_lens(W_dec, gamma[:, None] * W_U, k=4, chunk_size=5)
    assert torch.equal(folded.top_token_ids_FK, logit_lens(W_dec, W_U, k=4, final_norm_weight_D=gamma).top_token_ids_FK)


def test_nearest_features_match_dense_cosine():
    gen = torch.Generator().manual_seed(1)
    W_dec = torch.randn(20, 6, generator=gen)
    W_dec[7] = 0.0  # a dead decoder row
    near = nearest_features(W_dec, k=3, chunk_size=6)
    unit = W_dec.double() / W_dec.double().norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = unit @ unit.T
    cos.fill_diagonal_(-math.inf)
    order = torch.argsort(cos, dim=1, descending=True)[:, :3]
    rows = [r for r in range(20) if r != 7]  # row 7's neighbours all tie at 0
    assert torch.equal(near.feature_ids_FK[rows], order[rows])
    assert torch.allclose(near.cosine_FK[rows].double(), cos.gather(1, order)[rows], atol=1e-6)
    assert (near.feature_ids_FK != torch.arange(20)[:, None]).all()
    assert near.cosine_FK[7].abs().max().item() == 0


def test_promotes_tokens():
    top = torch.tensor([[5, 9, 2], [1, 2, 3], [7, 8, 5]])
    lens = LogitLens(top, torch.zeros(3, 3), top, torch.zeros(3, 3))
    result = promotes_tokens(lens, [5, 6])
    assert result.promotes_F.tolist() == [True, False, True] and result.best_rank_F.tolist() == [0, -1, 2]
    assert promotes_tokens(lens, [5], k=2).promotes_F.tolist() == [True, False, False]
