"""Turn the feature index's totals into the rows of its DuckDB tables (pandas DataFrames).

No SQL and no model here: `explorer.feature_index` supplies the totals and the example contexts,
`explorer.feature_scores` the scores, `explorer.feature_db` writes the frames. Column meanings:
docs/schema.md.

Array names end in shape letters (`acts_BTF`: batch, tokens, features): docs/shapes.md.
"""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from explorer.feature_aggregates import IndexTotals, TokenCountTotals
from explorer.feature_index import ExampleContexts, Window
from explorer.feature_scores import (
    IntervalSelection,
    LogitLens,
    NearestFeatures,
    compute_backtracking_auroc,
    compute_document_contrast,
    compute_label_set_scores,
    compute_lead_lag,
    compute_reason_score,
    compute_token_baseline,
    compute_token_dependence,
    compute_token_control,
    compute_within_token_auroc,
    promotes_tokens,
)
from explorer.lexicon import GROUPS, NOTEBOOK_GROUPS

WAIT_LIKE_WORDS = ("Wait", "wait", "Hmm", "hmm", "Actually", "actually", "Alternatively", "alternatively")
"""Tokens whose promotion by a feature's logit lens marks a 'Wait-like' feature."""

TOKEN_DETECTOR_WITHIN_AUROC = 0.6
"""A feature is flagged a plain token detector when it does not beat the token-identity ceiling and
separates phrase from non-phrase uses of the same tokens no better than this (or cannot be tested)."""


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _float_or_none(x: np.ndarray) -> np.ndarray:
    """float64 with NaN kept: DuckDB stores NaN, the read API turns it into None."""
    return np.asarray(x, dtype=np.float64)


def wait_like_token_ids(tokenizer) -> list[int]:
    """Single-token spellings of WAIT_LIKE_WORDS, with and without a leading space."""
    ids = set()
    for word in WAIT_LIKE_WORDS:
        for text in (word, " " + word):
            encoded = tokenizer.encode(text, add_special_tokens=False)
            if len(encoded) == 1:
                ids.add(int(encoded[0]))
    return sorted(ids)


def count_tokens(windows: Sequence[Window], vocab_size: int) -> TokenCountTotals:
    """Token counts inside each phrase group and outside all of them, from the windows alone (no model):
    the pre-pass that picks the within-token control tokens before the streaming pass starts."""
    in_GV = np.zeros((len(GROUPS), vocab_size), dtype=np.int64)
    out_V = np.zeros(vocab_size, dtype=np.int64)
    for w in windows:
        ids, groups = w.token_ids[w.valid], w.group_ids[w.valid]
        inside = groups >= 0
        np.add.at(out_V, ids[~inside], 1)
        np.add.at(in_GV, (groups[inside].astype(np.int64), ids[inside]), 1)
    return TokenCountTotals(torch.from_numpy(in_GV), torch.from_numpy(out_V))


def context_rows(sae_id: str, windows: Sequence[Window]) -> pd.DataFrame:
    return pd.DataFrame({
        "sae_id": sae_id,
        "context_id": np.array([w.context_id for w in windows], dtype=np.int64),
        "doc_id": [w.doc_id for w in windows],
        "token_offset": np.array([w.token_offset for w in windows], dtype=np.int32),
        "n_tokens": np.array([len(w.token_ids) for w in windows], dtype=np.int32),
        "has_backtracking": np.array([w.doc_has_backtracking for w in windows], dtype=bool),
    })


def vocabulary_rows(tokenizer, vocab_size: int) -> pd.DataFrame:
    """Each token id's text as it reads in context (byte-level BPE decoded), for tables and search."""
    ids = list(range(vocab_size))
    n_real = len(tokenizer)
    texts = [tokenizer.decode([i]) if i < n_real else f"<unused {i}>" for i in ids]
    return pd.DataFrame({"token_id": np.array(ids, dtype=np.int32), "token": texts})


def activation_stats_rows(sae_id: str, totals: IndexTotals) -> tuple[pd.DataFrame, pd.DataFrame]:
    s = totals.stats
    F = s.max_F.shape[0]
    stats = pd.DataFrame({
        "sae_id": sae_id,
        "feature_id": np.arange(F, dtype=np.int32),
        "density": _np(s.density_F).astype(np.float64),
        "active_count": _np(s.active_count_F).astype(np.int64),
        "max_activation": _np(s.max_F).astype(np.float64),
        "mean_nonzero": _float_or_none(_np(s.mean_nonzero_F)),
        "activation_sum": _np(s.sum_F).astype(np.float64),
    })
    hist = _np(s.hist_FH)
    f_idx, b_idx = np.nonzero(hist)
    lower, upper = _np(s.bins.lower_edges()), _np(s.bins.upper_edges())
    histograms = pd.DataFrame({
        "sae_id": sae_id,
        "feature_id": f_idx.astype(np.int32),
        "bin": b_idx.astype(np.int32),
        "lower": lower[b_idx],
        "upper": upper[b_idx],
        "count": hist[f_idx, b_idx].astype(np.int64),
    })
    return stats, histograms


def _example_columns(value_N, context_id_N, position_N, contexts: ExampleContexts) -> dict:
    """The columns every kept example has: its value, where it is, and its context."""
    return {
        "activation": _np(value_N).astype(np.float64),
        "context_id": _np(context_id_N).astype(np.int64),
        "position": _np(position_N).astype(np.int32),
        "first_position": contexts.first_position_N.astype(np.int32),
        "token_ids": contexts.token_ids,
        "activations": contexts.activations,
    }


def example_rows(sae_id: str, totals: IndexTotals, contexts: ExampleContexts) -> pd.DataFrame:
    ex = totals.examples
    return pd.DataFrame({
        "sae_id": sae_id,
        "feature_id": _np(ex.feature_N).astype(np.int32),
        "rank": _np(ex.rank_N).astype(np.int32),
        **_example_columns(ex.value_N, ex.context_id_N, ex.position_N, contexts),
    })


def interval_sample_rows(sae_id: str, selection: IntervalSelection, contexts: ExampleContexts) -> pd.DataFrame:
    s, b = selection.samples, selection.bounds
    bounds = pd.DataFrame({
        "feature_id": _np(b.feature_N).astype(np.int32),
        "interval_index": _np(b.interval_N).astype(np.int32),
        "interval_lower": _np(b.lower_N).astype(np.float64),
        "interval_upper": _np(b.upper_N).astype(np.float64),
        "interval_count": _np(b.count_N).astype(np.int64),
    })
    samples = pd.DataFrame({
        "sae_id": sae_id,
        "feature_id": _np(s.feature_N).astype(np.int32),
        "interval_index": _np(s.interval_N).astype(np.int32),
        "rank": _np(s.rank_N).astype(np.int32),
        **_example_columns(s.value_N, s.context_id_N, s.position_N, contexts),
    })
    merged = samples.merge(bounds, on=["feature_id", "interval_index"], how="left", validate="many_to_one")
    columns = ["sae_id", "feature_id", "interval_index", "rank", "interval_lower", "interval_upper", "interval_count",
               "activation", "context_id", "position", "first_position", "token_ids", "activations"]
    return merged[columns]


def logit_lens_rows(sae_id: str, lens: LogitLens) -> pd.DataFrame:
    frames = []
    for direction, ids_FK, logits_FK in (
        ("top", lens.top_token_ids_FK, lens.top_logits_FK),
        ("bottom", lens.bottom_token_ids_FK, lens.bottom_logits_FK),
    ):
        F, K = ids_FK.shape
        frames.append(pd.DataFrame({
            "sae_id": sae_id,
            "feature_id": np.repeat(np.arange(F, dtype=np.int32), K),
            "direction": direction,
            "rank": np.tile(np.arange(K, dtype=np.int32), F),
            "token_id": _np(ids_FK).reshape(-1).astype(np.int32),
            "logit": _np(logits_FK).reshape(-1).astype(np.float64),
        }))
    return pd.concat(frames, ignore_index=True)


def neighbour_rows(sae_id: str, nearest: NearestFeatures) -> pd.DataFrame:
    F, K = nearest.feature_ids_FK.shape
    return pd.DataFrame({
        "sae_id": sae_id,
        "feature_id": np.repeat(np.arange(F, dtype=np.int32), K),
        "rank": np.tile(np.arange(K, dtype=np.int32), F),
        "neighbour_id": _np(nearest.feature_ids_FK).reshape(-1).astype(np.int32),
        "cosine": _np(nearest.cosine_FK).reshape(-1).astype(np.float64),
    })


class LabelSetInfo(NamedTuple):
    """What the index records of a label set besides its counts."""

    kind: str
    """"span" or "sentence"."""
    source: str


def label_set_rows(
    sae_id: str, totals: IndexTotals, infos: Mapping[str, LabelSetInfo]
) -> dict[str, pd.DataFrame]:
    """`index_label_sets`, `feature_label_scores` and `feature_label_lead_lag` for every label set the
    pass scored (`IndexConfig.labels`)."""
    labels_totals = totals.label_sets
    labels = list(labels_totals.labels)
    scores = compute_label_set_scores(labels_totals, totals.lead_lag)
    F, L = totals.stats.max_F.shape[0], len(labels)
    features = np.arange(F, dtype=np.int32)
    offsets = _np(labels_totals.offsets_O).astype(np.int32)
    zero = list(offsets).index(0) if 0 in offsets else None
    sets = pd.DataFrame({
        "sae_id": sae_id,
        "label": pd.Series(labels, dtype=object),
        "kind": [infos[name].kind for name in labels],
        "source": [infos[name].source for name in labels],
        "n_positive_tokens": _np(labels_totals.count_pos_L).astype(np.int64),
        "n_scope_tokens": _np(labels_totals.count_scope_L).astype(np.int64),
        "n_sentences": _np(labels_totals.count_sentence_scope_L).astype(np.int64),
        "n_positive_sentences": _np(labels_totals.count_sentence_pos_L).astype(np.int64),
        "n_starts": _np(labels_totals.count_LO[:, zero]).astype(np.int64) if zero is not None else np.zeros(L, np.int64),
    })
    per_label = []
    profiles = []
    for label, name in enumerate(labels):
        lead = scores.lead_lag[label]
        per_label.append(pd.DataFrame({
            "sae_id": sae_id, "label": name, "feature_id": features,
            "token_auroc": _np(scores.token_auroc_FL.auroc[:, label]),
            "token_auroc_error_bound": _np(scores.token_auroc_FL.error_bound[:, label]),
            "sentence_auroc": _np(scores.sentence_auroc_FL.auroc[:, label]),
            "sentence_auroc_error_bound": _np(scores.sentence_auroc_FL.error_bound[:, label]),
            "leads_score": _np(lead.leads_score_F), "lead_share": _np(lead.lead_share_F),
            "lead_pre_mean": _np(lead.pre_mean_F), "lead_peak_offset": _np(lead.peak_offset_F).astype(np.int32),
        }))
        O = len(offsets)
        profiles.append(pd.DataFrame({
            "sae_id": sae_id, "label": name,
            "feature_id": np.repeat(features, O),
            "relative_position": np.tile(offsets, F),
            "mean_activation": _np(labels_totals.mean_LOF[label]).T.reshape(-1),
            "delta": _np(lead.delta_OF).T.reshape(-1),
            "n_targets": np.tile(_np(labels_totals.count_LO[label]).astype(np.int64), F),
        }))
    empty_scores = pd.DataFrame(columns=[
        "sae_id", "label", "feature_id", "token_auroc", "token_auroc_error_bound", "sentence_auroc",
        "sentence_auroc_error_bound", "leads_score", "lead_share", "lead_pre_mean", "lead_peak_offset",
    ])
    empty_profiles = pd.DataFrame(columns=[
        "sae_id", "label", "feature_id", "relative_position", "mean_activation", "delta", "n_targets",
    ])
    return {
        "index_label_sets": sets,
        "feature_label_scores": pd.concat(per_label, ignore_index=True) if per_label else empty_scores,
        "feature_label_lead_lag": pd.concat(profiles, ignore_index=True) if profiles else empty_profiles,
    }


def token_dependence_rows(sae_id: str, totals: IndexTotals) -> dict[str, pd.DataFrame]:
    """`feature_token_stats` (the top tokens of every feature that fires) and `feature_token_dependence`
    (every feature), from the token-mass sketch and the token counts of the same pass."""
    dep = compute_token_dependence(totals.token_mass, totals.token_counts)
    F, K = dep.token_FK.shape
    filled_FK = _np(dep.token_FK) >= 0
    f_idx, k_idx = np.nonzero(filled_FK)
    error_F = _np(dep.error_F).astype(np.float64)
    mass = _np(dep.mass_FK)[f_idx, k_idx].astype(np.float64)
    count = _np(dep.count_FK)[f_idx, k_idx].astype(np.int64)
    stats = pd.DataFrame({
        "sae_id": sae_id,
        "feature_id": f_idx.astype(np.int32),
        "rank": k_idx.astype(np.int32),
        "token_id": _np(dep.token_FK)[f_idx, k_idx].astype(np.int32),
        "token_count": count,
        "activation_sum": mass,
        "activation_sum_error": error_F[f_idx],
        "mean_activation": _np(dep.mean_FK)[f_idx, k_idx].astype(np.float64),
        "mean_activation_upper": (mass + error_F[f_idx]) / count,
    })
    dependence = pd.DataFrame({
        "sae_id": sae_id,
        "feature_id": np.arange(F, dtype=np.int32),
        "top_k": _np(dep.n_top_F).astype(np.int32),
        "concentration": _float_or_none(_np(dep.concentration_F)),
        "concentration_upper": _float_or_none(_np(dep.concentration_upper_F)),
        "normalized_entropy": _float_or_none(_np(dep.entropy_F)),
        "n_tokens_tracked": _np(dep.n_tracked_F).astype(np.int32),
        "activation_mass": _np(dep.total_F).astype(np.float64),
        "untracked_mass": _np(totals.token_mass.untracked_F).astype(np.float64),
        "sketch_error": error_F,
        "exact": _np(dep.exact_F).astype(bool),
    })
    return {"feature_token_stats": stats, "feature_token_dependence": dependence}


class ScoreTables(dict):
    """`feature_backtracking_scores`, `feature_group_auroc`, `feature_lead_lag`,
    `feature_reason_word_shares` frames, plus the corpus-level token baseline under `run_facts`."""


def score_rows(
    sae_id: str, totals: IndexTotals, lens: LogitLens, wait_token_ids: Sequence[int], reason_alpha: float = 0.7
) -> ScoreTables:
    F = totals.stats.max_F.shape[0]
    features = np.arange(F, dtype=np.int32)
    auroc = compute_backtracking_auroc(totals.evidence)
    reason = compute_reason_score(totals.reason, alpha=reason_alpha)
    lead = compute_lead_lag(totals.lead_lag)
    docs = compute_document_contrast(totals.documents)
    baseline = compute_token_baseline(totals.token_counts, NOTEBOOK_GROUPS)
    within = compute_within_token_auroc(totals.within_token)
    control = compute_token_control(auroc.notebook_F.auroc, baseline, within)
    promotion = promotes_tokens(lens, wait_token_ids)
    evidence = totals.evidence
    mean_FC = evidence.mean_FC
    in_notebook = torch.tensor([g in NOTEBOOK_GROUPS for g in GROUPS] + [False], device=mean_FC.device)
    count_C = evidence.count_C.to(torch.float64)
    in_sum = evidence.sum_FC[:, in_notebook].sum(1)
    in_count = count_C[in_notebook].sum()
    mean_in = in_sum / in_count if in_count > 0 else torch.full((F,), math.nan, dtype=torch.float64)
    margin_identity = _np(control.margin_over_identity_F)
    within_auroc = _np(control.within_token_auroc_F)
    detector = ~(margin_identity > 0) & ~(within_auroc > TOKEN_DETECTOR_WITHIN_AUROC)
    scores = pd.DataFrame({
        "sae_id": sae_id,
        "feature_id": features,
        "auroc": _np(auroc.any_F.auroc), "auroc_error_bound": _np(auroc.any_F.error_bound),
        "auroc_notebook": _np(auroc.notebook_F.auroc), "auroc_notebook_error_bound": _np(auroc.notebook_F.error_bound),
        "mean_in_phrases": _np(mean_in), "mean_outside": _np(mean_FC[:, -1]),
        "reason_score": _np(reason.score_F), "reason_entropy": _np(reason.entropy_F),
        "leads_score": _np(lead.leads_score_F), "lead_share": _np(lead.lead_share_F),
        "lead_pre_mean": _np(lead.pre_mean_F), "lead_peak_offset": _np(lead.peak_offset_F).astype(np.int32),
        "baseline_mean": _np(totals.lead_lag.baseline_mean_F), "baseline_std": _np(totals.lead_lag.baseline_std_F),
        "doc_mean_with": _np(docs.mean_with_F), "doc_mean_without": _np(docs.mean_without_F),
        "doc_mean_delta": _np(docs.mean_delta_F), "doc_window_max_delta": _np(docs.window_max_delta_F),
        "doc_active_share_with": _np(docs.active_share_with_F), "doc_active_share_without": _np(docs.active_share_without_F),
        "promotes_wait": _np(promotion.promotes_F).astype(bool),
        "wait_logit_rank": pd.array(np.where(_np(promotion.best_rank_F) >= 0, _np(promotion.best_rank_F), -1), dtype="Int32"),
        "margin_over_best_token": _np(control.margin_over_best_token_F),
        "margin_over_identity": margin_identity,
        "within_token_auroc": within_auroc,
        "is_token_detector": detector,
    })
    scores.loc[scores["wait_logit_rank"] < 0, "wait_logit_rank"] = pd.NA
    G = len(GROUPS)
    group = pd.DataFrame({
        "sae_id": sae_id,
        "feature_id": np.repeat(features, G),
        "group_name": np.tile(np.array(GROUPS, dtype=object), F),
        "auroc": _np(auroc.group_FG.auroc).reshape(-1),
        "error_bound": _np(auroc.group_FG.error_bound).reshape(-1),
        "mean_activation": _np(mean_FC[:, :G]).reshape(-1),
    })
    offsets = _np(totals.lead_lag.offsets_O).astype(np.int32)
    O = len(offsets)
    lead_lag = pd.DataFrame({
        "sae_id": sae_id,
        "feature_id": np.tile(features, O),
        "relative_position": np.repeat(offsets, F),
        "mean_activation": _np(totals.lead_lag.mean_OF).reshape(-1),
        "delta": _np(lead.delta_OF).reshape(-1),
        "n_targets": np.repeat(_np(totals.lead_lag.count_O).astype(np.int64), F),
    }).sort_values(["feature_id", "relative_position"], ignore_index=True)
    words = totals.reason.group_names
    R = len(words)
    shares = pd.DataFrame({
        "sae_id": sae_id,
        "feature_id": np.repeat(features, R),
        "word": np.tile(np.array(words, dtype=object), F),
        "mean_activation": _np(totals.reason.mean_FR).reshape(-1),
        "share": _np(reason.group_share_FR).reshape(-1),
    })
    out = ScoreTables(
        feature_backtracking_scores=scores,
        feature_group_auroc=group,
        feature_lead_lag=lead_lag,
        feature_reason_word_shares=shares,
    )
    out.run_facts = {
        "best_token_id": baseline.best_token_id if baseline.best_token_id >= 0 else None,
        "best_token_auroc": None if math.isnan(baseline.best_token_auroc) else baseline.best_token_auroc,
        "identity_auroc": None if math.isnan(baseline.identity_auroc) else baseline.identity_auroc,
        "control_token_ids": [int(i) for i in _np(totals.within_token.token_ids_K)],
        "reason_words": list(words),
    }
    return out
