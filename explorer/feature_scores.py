"""Scores from the feature index's totals, and the weight-only feature views (logit lens, neighbours).

Pure functions on tensors: `explorer.feature_aggregates` accumulates totals over the corpus, these
functions turn them into the numbers the index stores. Definitions and error bounds:
docs/index-math.md.

Array names end in shape letters (`acts_BTF`: batch, tokens, features): docs/shapes.md.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple, Sequence

import torch
from torch import Tensor

from explorer.feature_aggregates import (
    ActivationStatsTotals,
    EvidenceTotals,
    DocumentTotals,
    LabelSetTotals,
    LeadLagTotals,
    ReasonTotals,
    SampleRecords,
    TokenCountTotals,
    TokenMassTotals,
    WithinTokenTotals,
    lexsort_indices,
    rank_within_runs,
)
from explorer.lexicon import GROUPS, NOTEBOOK_GROUPS

REASON_EPS = 1e-12
"""The reference code's epsilon in ReasonScore's denominators; `compute_reason_score(eps=REASON_EPS)`
reproduces that code, the default (0) is the formula as written."""


# --------------------------------------------------------------------------------------------------
# AUROC from histograms
# --------------------------------------------------------------------------------------------------


class Auroc(NamedTuple):
    """AUROC (ties count 1/2) and a bound on its error: |auroc - exact| <= error_bound."""

    auroc: Tensor
    error_bound: Tensor


def auroc_from_counts(pos_XH: Tensor, neg_XH: Tensor, exact_bins: int | None = None) -> Auroc:
    """AUROC of positives against negatives from counts over ordered bins (last dim, ascending values).

    Pairs in different bins are ordered exactly; pairs inside one bin count as ties (1/2). The first
    `exact_bins` bins each hold a single value (for `LogBins`, bin 0 = exact zeros), so their ties are
    real; `None` means every bin is a single value (exact counts per distinct value). Inside any
    other bin a pair is off by at most 1/2, so
    error_bound = 1/2 * sum over the other bins b of pos_b * neg_b / (P * N).
    NaN where there are no positives or no negatives.
    """
    pos, neg = pos_XH.to(torch.float64), neg_XH.to(torch.float64)
    n_pos, n_neg = pos.sum(-1), neg.sum(-1)
    neg_below = torch.cumsum(neg, -1) - neg
    wins = (pos * (neg_below + 0.5 * neg)).sum(-1)
    inexact = slice(0, 0) if exact_bins is None else slice(exact_bins, None)
    within = (pos[..., inexact] * neg[..., inexact]).sum(-1)
    pairs = n_pos * n_neg
    nan = torch.full_like(pairs, math.nan)
    return Auroc(
        torch.where(pairs > 0, wins / pairs.clamp_min(1), nan),
        torch.where(pairs > 0, 0.5 * within / pairs.clamp_min(1), nan),
    )


def auroc_from_histograms(pos_XH: Tensor, neg_XH: Tensor) -> Auroc:
    """AUROC from two histograms on the same `LogBins` (bin 0, exact zeros, is the only exact bin)."""
    return auroc_from_counts(pos_XH, neg_XH, exact_bins=1)


class BacktrackingAuroc(NamedTuple):
    """Token-level AUROC of each feature's activation: tokens inside labelled phrases against all
    other valid tokens."""

    any_F: Auroc
    """Inside a phrase of any group (interjections included)."""
    notebook_F: Auroc
    """Inside a phrase of the notebook's six groups (interjections count as 'other')."""
    group_FG: Auroc
    """Inside a phrase of group g against every other token, per group (GROUPS order)."""
    group_names: tuple[str, ...]


def auroc_for_groups(evidence: EvidenceTotals, groups: Sequence[str]) -> Auroc:
    """AUROC of tokens inside phrases of `groups` against all other valid tokens."""
    hist_FCH = evidence.hist_FCH
    in_class = torch.tensor([g in groups for g in GROUPS] + [False], device=hist_FCH.device)
    pos_FH = hist_FCH[:, in_class].sum(1)
    return auroc_from_histograms(pos_FH, hist_FCH.sum(1) - pos_FH)


def compute_backtracking_auroc(evidence: EvidenceTotals) -> BacktrackingAuroc:
    per_group = [auroc_for_groups(evidence, [g]) for g in GROUPS]
    return BacktrackingAuroc(
        auroc_for_groups(evidence, GROUPS),
        auroc_for_groups(evidence, NOTEBOOK_GROUPS),
        Auroc(torch.stack([a.auroc for a in per_group], 1), torch.stack([a.error_bound for a in per_group], 1)),
        GROUPS,
    )


# --------------------------------------------------------------------------------------------------
# ReasonScore
# --------------------------------------------------------------------------------------------------


class ReasonScores(NamedTuple):
    score_F: Tensor
    """ReasonScore_i = (mu+_i / sum_j mu+_j) * H_i**alpha - mu-_i / sum_j mu-_j."""
    entropy_F: Tensor
    """H_i: entropy of p_i^(r) = mu_i^(r) / sum_r mu_i^(r), divided by log |R| (1 when |R| = 1)."""
    group_share_FR: Tensor
    """p_i^(r), the per-group shares: which words the feature prefers (caveat 1)."""
    alpha: float


def compute_reason_score(totals: ReasonTotals, alpha: float = 0.7, eps: float = 0.0) -> ReasonScores:
    """ReasonScore exactly as in Galichin et al. 2025 (docs/index-math.md), over every feature in `totals`.

    alpha = 0.7 as in the paper (the reference code's default is 1). The sums over j run over all
    features, so pass totals covering the whole SAE (`concat_reason_totals` joins feature chunks).
    A ratio with a zero denominator is 0 (0 log 0 = 0 as usual). `eps=REASON_EPS` reproduces the
    reference code, which adds 1e-12 to the three denominators: for a feature seen in one group only
    its H is then about 3e-12 instead of 0, and H**0.7 turns that into a ~1e-8 shift of the score.
    """
    mean_FR = totals.mean_FR
    R = mean_FR.shape[1]
    share_FR = _ratio(mean_FR, mean_FR.sum(1, keepdim=True) + eps)
    log_share = torch.log(torch.where(share_FR > 0, share_FR, torch.ones_like(share_FR)))
    entropy = -(share_FR * log_share).sum(1)
    entropy = entropy / math.log(R) if R > 1 else torch.ones_like(entropy)
    positive = _ratio(totals.mean_pos_F, totals.mean_pos_F.sum() + eps)
    negative = _ratio(totals.mean_neg_F, totals.mean_neg_F.sum() + eps)
    return ReasonScores(positive * entropy**alpha - negative, entropy, share_FR, alpha)


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    denominator = torch.as_tensor(denominator, dtype=numerator.dtype, device=numerator.device)
    safe = torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator != 0, numerator / safe, torch.zeros_like(numerator))


def concat_reason_totals(parts: Sequence[ReasonTotals]) -> ReasonTotals:
    """Join totals of contiguous feature chunks (in any order) into totals over all their features."""
    parts = sorted(parts, key=lambda part: part.feature_offset)
    expected = parts[0].feature_offset
    for part in parts:
        if part.feature_offset != expected:
            raise ValueError(f"feature chunks not contiguous: expected offset {expected}, got {part.feature_offset}")
        corpus_key = (part.count_pos, part.count_neg, part.group_names)
        if corpus_key != (parts[0].count_pos, parts[0].count_neg, parts[0].group_names):
            raise ValueError("feature chunks were accumulated over different corpora or vocabularies")
        expected += part.mean_pos_F.shape[0]
    return ReasonTotals(
        torch.cat([p.mean_pos_F for p in parts]), torch.cat([p.mean_neg_F for p in parts]),
        torch.cat([p.mean_FR for p in parts]), parts[0].count_pos, parts[0].count_neg, parts[0].count_R,
        parts[0].group_names, parts[0].feature_offset,
    )


# --------------------------------------------------------------------------------------------------
# Lead-lag
# --------------------------------------------------------------------------------------------------


class LeadLagScores(NamedTuple):
    leads_score_F: Tensor
    """(pre_mean - baseline_mean) / baseline_std: how many baseline standard deviations the feature
    is raised over the `pre` offsets before phrase starts. 0 for a feature that never fires."""
    lead_share_F: Tensor
    """(pre_mean - baseline) / (peak - baseline): the share of the peak response already present
    before the phrase; 0 where the profile never rises above the baseline."""
    pre_mean_F: Tensor
    """Mean activation over all (start, offset) targets with offset in `pre`."""
    peak_offset_F: Tensor
    """Offset of the profile's maximum (the earliest on ties)."""
    delta_OF: Tensor
    """Profile minus baseline, per offset."""


def compute_lead_lag(totals: LeadLagTotals, pre: tuple[int, int] = (-8, -1)) -> LeadLagScores:
    """Scores of the lead-lag profile; `pre` is the inclusive offset range 'before the phrase'."""
    in_pre_O = (totals.offsets_O >= pre[0]) & (totals.offsets_O <= pre[1])
    n_pre = totals.count_O[in_pre_O].sum().to(torch.float64)
    pre_mean = totals.sum_OF[in_pre_O].sum(0) / n_pre.clamp_min(1)
    baseline, std = totals.baseline_mean_F, totals.baseline_std_F
    rise = pre_mean - baseline
    leads = torch.where(std > 0, rise / std.clamp_min(1e-300), torch.zeros_like(rise))
    profile_OF = torch.nan_to_num(totals.mean_OF, nan=-math.inf)
    peak_index = profile_OF.argmax(0)  # argmax returns the first maximum: the earliest offset
    peak_value = profile_OF.gather(0, peak_index[None]).squeeze(0)
    peak_rise = peak_value - baseline
    share = torch.where(peak_rise > 0, rise / peak_rise.clamp_min(1e-300), torch.zeros_like(rise))
    return LeadLagScores(leads, share, pre_mean, totals.offsets_O[peak_index], totals.mean_OF - baseline)


# --------------------------------------------------------------------------------------------------
# Label sets
# --------------------------------------------------------------------------------------------------


class LabelSetScores(NamedTuple):
    """Per feature and label set ([F, L]), as the lexicon's scores are computed."""

    token_auroc_FL: Auroc
    """Activations on tokens inside the label's spans against every other valid token."""
    sentence_auroc_FL: Auroc
    """Each sentence piece's maximum activation against whether it holds the label."""
    lead_lag: list[LeadLagScores]
    """Per label set, the lead-lag scores around its starts (`compute_lead_lag`)."""


def compute_label_set_scores(totals: LabelSetTotals, lead_lag: LeadLagTotals) -> LabelSetScores:
    """Token AUROC (negatives: the other valid tokens of the documents the set labels), sentence AUROC
    (negatives: the other sentence pieces of those documents) and the lead-lag scores around each
    label's starts, against the all-token baseline of `lead_lag`."""
    pos_FLH = totals.hist_pos_FLH
    token = auroc_from_histograms(pos_FLH, totals.hist_scope_FLH - pos_FLH)
    sentence_pos_FLH = totals.hist_sentence_pos_FLH
    sentence = auroc_from_histograms(sentence_pos_FLH, totals.hist_sentence_scope_FLH - sentence_pos_FLH)
    profiles = [
        compute_lead_lag(LeadLagTotals(
            totals.offsets_O, totals.mean_LOF[label], totals.sum_LOF[label], totals.count_LO[label],
            lead_lag.baseline_mean_F, lead_lag.baseline_std_F,
        ))
        for label in range(len(totals.labels))
    ]
    return LabelSetScores(token, sentence, profiles)


# --------------------------------------------------------------------------------------------------
# Document contrast
# --------------------------------------------------------------------------------------------------


class DocumentContrast(NamedTuple):
    mean_with_F: Tensor
    mean_without_F: Tensor
    mean_delta_F: Tensor
    """Mean activation per token, traces with backtracking minus traces without."""
    window_max_with_F: Tensor
    window_max_without_F: Tensor
    window_max_delta_F: Tensor
    """Mean of the per-window maximum, with minus without."""
    active_share_with_F: Tensor
    active_share_without_F: Tensor


def compute_document_contrast(totals: DocumentTotals) -> DocumentContrast:
    mean, wmax, share = totals.mean_FC, totals.window_max_mean_FC, totals.active_window_share_FC
    return DocumentContrast(
        mean[:, 1], mean[:, 0], mean[:, 1] - mean[:, 0],
        wmax[:, 1], wmax[:, 0], wmax[:, 1] - wmax[:, 0],
        share[:, 1], share[:, 0],
    )


# --------------------------------------------------------------------------------------------------
# Token-detector controls
# --------------------------------------------------------------------------------------------------


class TokenBaseline(NamedTuple):
    """What token identity alone achieves at telling phrase tokens from the rest."""

    best_token_id: int
    """The token t maximising the AUROC of the indicator 'token == t' (lowest id on ties)."""
    best_token_auroc: float
    """That AUROC: (1 + TPR - FPR) / 2 with TPR = in_t / P, FPR = out_t / N."""
    identity_auroc: float
    """The token-identity ceiling: AUROC of the score in_t / (in_t + out_t), the best any function of
    the current token id alone can reach. Exact (tokens with equal ratios tie)."""


def _positive_negative_V(totals: TokenCountTotals, groups: Sequence[str]) -> tuple[Tensor, Tensor]:
    in_group = torch.tensor([g in groups for g in GROUPS], device=totals.in_GV.device)
    pos_V = totals.in_GV[in_group].sum(0)
    return pos_V, totals.in_GV.sum(0) + totals.out_V - pos_V


def compute_token_baseline(totals: TokenCountTotals, groups: Sequence[str] = GROUPS) -> TokenBaseline:
    """Token-identity detectors for 'inside a phrase of `groups`' against all other valid tokens."""
    pos_V, neg_V = (x.to(torch.float64) for x in _positive_negative_V(totals, groups))
    n_pos, n_neg = pos_V.sum(), neg_V.sum()
    if n_pos == 0 or n_neg == 0:
        return TokenBaseline(-1, math.nan, math.nan)
    single_V = 0.5 * (1 + pos_V / n_pos - neg_V / n_neg)
    best = int(torch.argmax(single_V))
    seen = (pos_V + neg_V) > 0
    ratio = pos_V[seen] / (pos_V[seen] + neg_V[seen])
    levels, level_of = torch.unique(ratio, sorted=True, return_inverse=True)
    pos_L = torch.zeros_like(levels).index_add_(0, level_of, pos_V[seen])
    neg_L = torch.zeros_like(levels).index_add_(0, level_of, neg_V[seen])
    identity = auroc_from_counts(pos_L, neg_L).auroc  # each level is one exact value
    return TokenBaseline(best, float(single_V[best]), float(identity))


def top_phrase_token_ids(
    totals: TokenCountTotals, n: int = 16, min_outside: int = 1, groups: Sequence[str] = GROUPS
) -> tuple[int, ...]:
    """The `n` token ids most frequent inside phrases of `groups` among those that also occur at
    least `min_outside` times elsewhere (a token never seen outside, like " Wait", cannot be scored
    within its own identity). Ties: lower token id first. For `WithinTokenConfig.control_token_ids`."""
    pos_V, neg_V = _positive_negative_V(totals, groups)
    eligible = (pos_V > 0) & (neg_V >= min_outside)
    ids = torch.nonzero(eligible).flatten()
    order = torch.sort(pos_V[ids], descending=True, stable=True).indices  # ids ascending, so ties keep the lower id
    return tuple(int(i) for i in ids[order][:n])


class WithinTokenAuroc(NamedTuple):
    auroc_F: Tensor
    """Per feature, the AUROC inside the same token identity (in phrases vs outside), averaged over
    the control tokens weighted by their in-phrase count. NaN if no control token has both classes."""
    error_bound_F: Tensor
    """The same weighted average of the per-token error bounds (a bound on the average's error)."""
    auroc_FK: Auroc
    weight_K: Tensor
    token_ids_K: Tensor


def compute_within_token_auroc(totals: WithinTokenTotals) -> WithinTokenAuroc:
    pos_FKH, neg_FKH = totals.hist_FKCH[:, :, 1], totals.hist_FKCH[:, :, 0]
    per_token = auroc_from_histograms(pos_FKH, neg_FKH)
    F, K = pos_FKH.shape[:2]
    if F == 0 or K == 0:
        empty = torch.full((F,), math.nan, dtype=torch.float64, device=pos_FKH.device)
        return WithinTokenAuroc(empty, empty, per_token, torch.zeros(K, dtype=torch.float64), totals.token_ids_K)
    # Token counts do not depend on the feature: take them from the first feature's row.
    in_K, out_K = pos_FKH[0].sum(-1).to(torch.float64), neg_FKH[0].sum(-1).to(torch.float64)
    weight_K = torch.where((in_K > 0) & (out_K > 0), in_K, torch.zeros_like(in_K))
    total = weight_K.sum()

    def weighted(x_FK: Tensor) -> Tensor:
        if total == 0:
            return torch.full((F,), math.nan, dtype=torch.float64, device=x_FK.device)
        return (torch.nan_to_num(x_FK) * weight_K).sum(1) / total

    return WithinTokenAuroc(
        weighted(per_token.auroc), weighted(per_token.error_bound), per_token, weight_K, totals.token_ids_K
    )


class TokenControl(NamedTuple):
    """Is a feature more than a token detector? Positive margins say it beats token identity."""

    margin_over_best_token_F: Tensor
    """Feature AUROC minus the best single-token detector's AUROC."""
    margin_over_identity_F: Tensor
    """Feature AUROC minus the token-identity ceiling."""
    within_token_auroc_F: Tensor
    """Does the feature separate backtracking from ordinary uses of the SAME token? 0.5 = no."""
    baseline: TokenBaseline


def compute_token_control(feature_auroc_F: Tensor, baseline: TokenBaseline, within: WithinTokenAuroc) -> TokenControl:
    return TokenControl(
        feature_auroc_F - baseline.best_token_auroc,
        feature_auroc_F - baseline.identity_auroc,
        within.auroc_F,
        baseline,
    )


class TokenDependence(NamedTuple):
    """How much of each feature's activation is tied to a few token ids (from the token-mass sketch and
    the corpus's token counts). The reported tokens of feature f are the first `n_top_F[f]` columns."""

    token_FK: Tensor
    """int64: the top-k token ids by mean activation, among the tracked tokens seen >= min_count times; -1 past n_top."""
    count_FK: Tensor
    """int64: occurrences of each in the corpus (valid tokens)."""
    mass_FK: Tensor
    """float64: estimated activation mass on it (a lower bound; the truth is at most `error_F` more)."""
    mean_FK: Tensor
    """float64: mass / count, the mean activation on the token (zeros included); NaN past n_top."""
    n_top_F: Tensor
    """int64: tokens reported (<= top_k; fewer when fewer tracked tokens reach min_count)."""
    concentration_F: Tensor
    """Share of the feature's activation mass on its reported tokens, from the estimates: a lower bound."""
    concentration_upper_F: Tensor
    """The same with each reported token's mass raised by the error bound (capped at 1): an upper bound."""
    entropy_F: Tensor
    """Normalised entropy of the mass over the tracked tokens plus one bucket for the untracked rest."""
    n_tracked_F: Tensor
    total_F: Tensor
    error_F: Tensor
    exact_F: Tensor
    """bool: no decrement ever happened, so every figure above is exact."""


def compute_token_dependence(sketch: TokenMassTotals, counts: TokenCountTotals) -> TokenDependence:
    """Per feature: the top-k tokens by mean activation, the mass concentration on them, and the
    normalised entropy of the mass over token ids (docs/index-math.md, section 10)."""
    count_V = counts.in_GV.sum(0) + counts.out_V
    held_FC = sketch.token_FC >= 0
    count_FC = torch.where(held_FC, count_V.to(sketch.token_FC.device)[sketch.token_FC.clamp_min(0)], 0)
    mean_FC = sketch.mass_FC / count_FC.clamp_min(1).to(torch.float64)
    eligible_FC = held_FC & (count_FC >= sketch.min_count)
    rank_key_FC = torch.where(eligible_FC, mean_FC, torch.full_like(mean_FC, -math.inf))
    # Mean descending, then token id ascending (a strict order: the same choice on every run).
    order = lexsort_indices([rank_key_FC, sketch.token_FC], descending=[True, False])[:, : sketch.top_k]
    filled_FK = eligible_FC.gather(1, order)
    token_FK = torch.where(filled_FK, sketch.token_FC.gather(1, order), -1)
    mass_FK = torch.where(filled_FK, sketch.mass_FC.gather(1, order), 0.0)
    mean_FK = torch.where(filled_FK, mean_FC.gather(1, order), math.nan)
    n_top_F = filled_FK.sum(1)
    total_F, error_F = sketch.total_F, sketch.error_F
    fired_F = total_F > 0
    safe_total_F = torch.where(fired_F, total_F, 1.0)
    nan_F = torch.full_like(total_F, math.nan)
    concentration_F = torch.where(fired_F, mass_FK.sum(1) / safe_total_F, nan_F)
    upper_F = ((mass_FK.sum(1) + n_top_F * error_F) / safe_total_F).clamp(max=1.0)
    p_FX = torch.cat([sketch.mass_FC, sketch.untracked_F.clamp_min(0)[:, None]], dim=1) / safe_total_F[:, None]
    plogp_FX = torch.where(p_FX > 0, p_FX * torch.log(p_FX.clamp_min(1e-300)), 0.0)
    n_FX = (p_FX > 0).sum(1)
    entropy_F = torch.where(n_FX > 1, -plogp_FX.sum(1) / torch.log(n_FX.clamp_min(2).to(torch.float64)), 0.0)
    return TokenDependence(
        token_FK, torch.where(filled_FK, count_FC.gather(1, order), 0), mass_FK, mean_FK, n_top_F, concentration_F,
        torch.where(fired_F, upper_F, nan_F), torch.where(fired_F, entropy_F, nan_F), held_FC.sum(1), total_F,
        error_F, error_F == 0,
    )


# --------------------------------------------------------------------------------------------------
# Interval samples
# --------------------------------------------------------------------------------------------------


class IntervalSampleRecords(NamedTuple):
    """Sampled examples, sorted by (feature, interval, rank); interval 0 holds the lowest values."""

    feature_N: Tensor
    interval_N: Tensor
    rank_N: Tensor
    value_N: Tensor
    context_id_N: Tensor
    position_N: Tensor
    context_values_NL: Tensor | None = None
    """Each sample's context (`SampleRecords.context_values_NL`)."""


class IntervalBounds(NamedTuple):
    """Each non-empty interval's effective range [lower, upper) (unions of whole bins) and count."""

    feature_N: Tensor
    interval_N: Tensor
    lower_N: Tensor
    upper_N: Tensor
    count_N: Tensor


class IntervalSelection(NamedTuple):
    samples: IntervalSampleRecords
    bounds: IntervalBounds


def interval_of_bins(stats: ActivationStatsTotals, n_intervals: int, scheme: Literal["linear", "quantile"]) -> Tensor:
    """interval_FH[f, h]: the interval that bin h of feature f belongs to (-1 for the zero bin).

    linear: sae_vis-style equal-width intervals of (0, max]; a bin goes to the interval holding its
    representative value. quantile: intervals of equal counts of non-zero activations; a bin goes to
    the interval holding the cumulative share at its middle. Whole bins only, so samples stay exact.
    """
    hist_FH = stats.hist_FH.to(torch.float64)
    F, nb = hist_FH.shape
    if scheme == "linear":
        rep_H = stats.bins.representative_values().to(hist_FH.device)
        width_F = stats.max_F.to(torch.float64) / n_intervals
        ratio_FH = rep_H[None, :] / width_F.clamp_min(1e-300)[:, None]
        interval_FH = torch.ceil(ratio_FH) - 1
    elif scheme == "quantile":
        counts_FH = hist_FH[:, 1:]
        before_FH = torch.cumsum(counts_FH, 1) - counts_FH
        share_FH = (before_FH + counts_FH / 2) / counts_FH.sum(1, keepdim=True).clamp_min(1)
        zero_bin_F1 = torch.zeros(F, 1, dtype=torch.float64, device=hist_FH.device)  # overwritten below
        interval_FH = torch.cat([zero_bin_F1, torch.floor(share_FH * n_intervals)], 1)
    else:
        raise ValueError(f"unknown interval scheme {scheme!r}")
    interval_FH = interval_FH.clamp(0, n_intervals - 1).to(torch.int64)
    interval_FH[:, 0] = -1
    return interval_FH


def select_interval_samples(
    samples: SampleRecords,
    stats: ActivationStatsTotals,
    n_intervals: int = 10,
    per_interval: int = 4,
    scheme: Literal["linear", "quantile"] = "linear",
) -> IntervalSelection:
    """Up to `per_interval` examples per activation interval of each feature: the lowest hash
    priorities over the interval's bins, an exact uniform sample of its activations (see
    IntervalSampleAccumulator). `per_interval` above the sketch's per_bin is allowed but an interval
    of one bin then shows at most per_bin examples."""
    if samples.bins != stats.bins:
        raise ValueError("samples and statistics were accumulated on different bins")
    interval_FH = interval_of_bins(stats, n_intervals, scheme)
    F = interval_FH.shape[0]
    local_N = samples.feature_N - samples.feature_offset
    interval_N = interval_FH[local_N, samples.bin_N]
    group_N = local_N * n_intervals + interval_N
    order = lexsort_indices([group_N, samples.priority_N, samples.context_id_N, samples.position_N])
    rank = rank_within_runs(group_N[order])
    keep, rank = order[rank < per_interval], rank[rank < per_interval]
    records = IntervalSampleRecords(
        samples.feature_N[keep], interval_N[keep], rank,
        samples.value_N[keep], samples.context_id_N[keep], samples.position_N[keep],
        None if samples.context_values_NL is None else samples.context_values_NL[keep],
    )
    return IntervalSelection(records, _interval_bounds(stats, interval_FH, n_intervals, samples.feature_offset))


def _interval_bounds(
    stats: ActivationStatsTotals, interval_FH: Tensor, n_intervals: int, feature_offset: int
) -> IntervalBounds:
    device = interval_FH.device
    F, nb = interval_FH.shape
    filled_FH = (stats.hist_FH > 0) & (interval_FH >= 0)
    f_X, h_X = torch.nonzero(filled_FH, as_tuple=True)
    group_X = f_X * n_intervals + interval_FH[f_X, h_X]
    size = F * n_intervals
    low = torch.full((size,), nb, dtype=torch.int64, device=device).scatter_reduce_(0, group_X, h_X, "amin")
    high = torch.full((size,), -1, dtype=torch.int64, device=device).scatter_reduce_(0, group_X, h_X, "amax")
    count = torch.zeros(size, dtype=torch.int64, device=device).index_add_(0, group_X, stats.hist_FH[f_X, h_X])
    present = torch.nonzero(count > 0).flatten()
    lower_H, upper_H = stats.bins.lower_edges().to(device), stats.bins.upper_edges().to(device)
    return IntervalBounds(
        present // n_intervals + feature_offset, present % n_intervals,
        lower_H[low[present]], upper_H[high[present]], count[present],
    )


# --------------------------------------------------------------------------------------------------
# Weight-only views: logit lens, nearest features
# --------------------------------------------------------------------------------------------------


class LogitLens(NamedTuple):
    """Per feature, the k tokens its decoder direction promotes most and least (logits descending
    for the top, ascending for the bottom)."""

    top_token_ids_FK: Tensor
    top_logits_FK: Tensor
    bottom_token_ids_FK: Tensor
    bottom_logits_FK: Tensor


def logit_lens(
    W_dec_FD: Tensor,
    W_U_DV: Tensor,
    k: int = 10,
    final_norm_weight_D: Tensor | None = None,
    chunk_size: int = 256,
) -> LogitLens:
    """Top and bottom k tokens of `W_dec @ W_U`, `chunk_size` features at a time (the full matrix is
    24,576 x 151,936 floats, 15 GB; a chunk of 256 is 156 MB).

    Final norm: the residual stream passes the final RMSNorm/LayerNorm before W_U. Its division by
    the token's norm is one positive scalar per token, which rescales all of a direction's logits
    alike and leaves the ranking unchanged, so it is dropped. Its weight (gamma) is per dimension and
    does change the ranking: pass it as `final_norm_weight_D` and it multiplies the decoder direction
    elementwise first. TransformerLens with weight processing (`fold_ln=True`, the default of
    `from_pretrained`) has already folded gamma into W_U: pass None then. Norm bias and unembedding
    bias are the same for every feature and are left out (a direction's own effect on the logits).
    Computed in float32. Ties between equal logits are broken by torch.topk.
    """
    F = W_dec_FD.shape[0]
    W_U = W_U_DV.to(torch.float32)
    k = min(k, W_U.shape[1])
    parts: list[tuple[Tensor, ...]] = []
    for start in range(0, F, chunk_size):
        dirs_CD = W_dec_FD[start : start + chunk_size].to(device=W_U.device, dtype=torch.float32)
        if final_norm_weight_D is not None:
            dirs_CD = dirs_CD * final_norm_weight_D.to(dirs_CD)
        logits_CV = dirs_CD @ W_U
        top = torch.topk(logits_CV, k, dim=1)
        bottom = torch.topk(logits_CV, k, dim=1, largest=False)
        parts.append((top.indices, top.values, bottom.indices, bottom.values))
    if not parts:
        empty_i = torch.zeros((0, k), dtype=torch.int64, device=W_U.device)
        empty_f = torch.zeros((0, k), dtype=torch.float32, device=W_U.device)
        return LogitLens(empty_i, empty_f, empty_i, empty_f)
    return LogitLens(*(torch.cat(columns) for columns in zip(*parts)))


class NearestFeatures(NamedTuple):
    feature_ids_FK: Tensor
    """The k other features with the most similar decoder direction, most similar first."""
    cosine_FK: Tensor


def nearest_features(W_dec_FD: Tensor, k: int = 10, chunk_size: int = 1024) -> NearestFeatures:
    """Nearest features by decoder cosine similarity, `chunk_size` rows of the F x F matrix at a
    time. A feature is never its own neighbour; an all-zero decoder row has cosine 0 with everything."""
    W = W_dec_FD.to(torch.float32)
    F = W.shape[0]
    k = min(k, max(F - 1, 0))
    unit_FD = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    ids, cosines = [], []
    for start in range(0, F, chunk_size):
        sims_CF = unit_FD[start : start + chunk_size] @ unit_FD.T
        rows = torch.arange(sims_CF.shape[0], device=W.device)
        sims_CF[rows, rows + start] = -math.inf
        top = torch.topk(sims_CF, k, dim=1)
        ids.append(top.indices)
        cosines.append(top.values)
    if not ids:
        return NearestFeatures(torch.zeros((0, k), dtype=torch.int64), torch.zeros((0, k)))
    return NearestFeatures(torch.cat(ids), torch.cat(cosines))


class TokenPromotion(NamedTuple):
    promotes_F: Tensor
    """True where one of the feature's top logit-lens tokens is in the given set."""
    best_rank_F: Tensor
    """Rank (0 = top) of the first such token; -1 where none."""


def promotes_tokens(lens: LogitLens, token_ids: Sequence[int] | Tensor, k: int | None = None) -> TokenPromotion:
    """Does the logit lens promote these tokens (for example the ids of "Wait", " Wait", " wait")
    among each feature's top `k` (default: all the lens kept)?"""
    top_FK = lens.top_token_ids_FK if k is None else lens.top_token_ids_FK[:, :k]
    wanted = torch.as_tensor(
        token_ids if isinstance(token_ids, Tensor) else list(token_ids), dtype=torch.int64, device=top_FK.device
    )
    hit_FK = torch.isin(top_FK, wanted)
    promotes = hit_FK.any(1)
    first = torch.where(promotes, hit_FK.to(torch.int32).argmax(1), torch.full_like(promotes, -1, dtype=torch.int64))
    return TokenPromotion(promotes, first)
