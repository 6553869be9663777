"""The feature card and the candidates list as plain tables, figures, HTML and links (no Streamlit).

The app package (`explorer.app`: `card`, `candidates`, `live_links`) renders what this module builds
from the read API's records (`explorer.feature_db`). Every link is relative to the app's root, so it
works behind any host or base path: `Features?run=demo&sae=...&feature=504` reproduces a card.

Array names end in shape letters (`acts_BTF`: batch, tokens, features): docs/shapes.md.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence
from urllib.parse import urlencode

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from explorer.feature_db import LABEL_METRICS, RANKING_SCORES, label_ranking_key, tokens_to_text
from explorer.feature_index import CorpusDocument, make_windows
from explorer.html import GROUP_COLOURS, ExampleHTML
from explorer.injection import STRATEGIES, VERDICT_RULES, VERDICTS
from explorer.lexicon import GROUPS
from explorer.sae_vis_export import token_rows

FEATURES_PAGE = "Features"
LIVE_PAGE = "Live"
STEERING_PAGE = "Steering"
LEAD_WINDOW = (-8, -1)
"""Offsets the leads score averages over (explorer.feature_scores.compute_lead_lag)."""
GROUP_SCORE_PREFIX = "group:"
"""Ranking keys `group:<name>` rank by the AUROC of one lexicon group."""


# --- links ----------------------------------------------------------------------------------------


def card_href(run: str, sae_id: str, feature_id: int) -> str:
    """A relative link that opens a feature's card."""
    return f"{FEATURES_PAGE}?{urlencode({'run': run, 'sae': sae_id, 'feature': int(feature_id)})}"


def steer_href(run: str, sae_id: str, feature_id: int) -> str:
    """A relative link that opens the Steering page with this feature chosen."""
    return f"{STEERING_PAGE}?{urlencode({'run': run, 'sae': sae_id, 'feature': int(feature_id)})}"


def live_href(run: str, sae_id: str, doc_id: str, feature_id: int, token: int) -> str:
    """A relative link that opens the Live page on a corpus document, with the feature and the
    example's token (its position in the document) chosen."""
    query = {"run": run, "sae": sae_id, "doc": doc_id, "feature": int(feature_id), "token": int(token)}
    return f"{LIVE_PAGE}?{urlencode(query)}"


def live_text_href(run: str, sae_id: str, text: str, feature_id: int, token: int | None = None) -> str:
    """A relative link that opens the Live page on `text` itself (a window that is no corpus document:
    an injection example), with the feature and, when given, a token (its position, BOS 0) chosen."""
    query = {"run": run, "sae": sae_id, "text": text, "feature": int(feature_id)}
    if token is not None:
        query["token"] = int(token)
    return f"{LIVE_PAGE}?{urlencode(query)}"


def parse_feature_id(text: str | None) -> int | None:
    """A feature id from a URL parameter, or None when it is missing or not a whole number."""
    if text is None:
        return None
    try:
        return int(str(text).strip())
    except ValueError:
        return None


# --- ranking choices ------------------------------------------------------------------------------


def ranking_choices(label_sets: Sequence[str] = ()) -> dict[str, str]:
    """Ranking keys and labels: the RANKING_SCORES, the AUROC of each lexicon group, then each of the
    index's label sets by each of LABEL_METRICS."""
    groups = {f"{GROUP_SCORE_PREFIX}{g}": f"AUROC of one group: {g}" for g in GROUPS}
    labels = {
        label_ranking_key(label, metric): f"Label set {label}: {text}"
        for label in label_sets for metric, text in LABEL_METRICS.items()
    }
    return {**RANKING_SCORES, **groups, **labels}


def split_ranking(key: str) -> tuple[str, str | None]:
    """(score, group) for `read_candidates`: a `group:<name>` key ranks by that group's AUROC."""
    if key.startswith(GROUP_SCORE_PREFIX):
        return "auroc_notebook", key[len(GROUP_SCORE_PREFIX):]
    return key, None


# --- examples -------------------------------------------------------------------------------------


def example_rows(
    examples: pd.DataFrame, vocabulary: Sequence[str], run: str, sae_id: str, feature_id: int
) -> list[ExampleHTML]:
    """Top examples or quantile samples (read_feature_card's frames) as rows for `examples_html`,
    each with a link that opens its document in Live at the example's token."""
    rows = []
    for ex in examples.itertuples(index=False):
        peak = int(ex.position) - int(ex.first_position)
        doc_token = int(ex.token_offset) + int(ex.position)
        rank = f"#{int(ex.rank) + 1}" if "interval_index" not in examples.columns else f"q{int(ex.interval_index)}"
        rows.append(
            ExampleHTML(
                label=f"{rank} · {float(ex.activation):.3f} · {ex.doc_id}",
                token_texts=tokens_to_text(vocabulary, ex.token_ids),
                values=[float(v) for v in ex.activations],
                peak_index=peak,
                href=live_href(run, sae_id, str(ex.doc_id), feature_id, doc_token),
            )
        )
    return rows


def interval_groups(samples: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Quantile samples grouped by interval, highest first, each with a heading."""
    groups = []
    for index, rows in samples.groupby("interval_index", sort=False):
        first = rows.iloc[0]
        heading = (
            f"Interval {int(index)}: activations {first.interval_lower:.3g} to {first.interval_upper:.3g} "
            f"({int(first.interval_count):,} tokens)"
        )
        groups.append((heading, rows))
    return groups


# --- tables ---------------------------------------------------------------------------------------


def logit_lens_tables(logit_lens: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(promoted, suppressed) tokens: token (repr, so whitespace shows) and logit."""
    def side(direction: str) -> pd.DataFrame:
        rows = logit_lens[logit_lens["direction"] == direction]
        return pd.DataFrame({"token": [repr(t) for t in rows["token"]], "logit": rows["logit"].round(3).to_numpy()})

    return side("top"), side("bottom")


def token_stats_table(token_stats: pd.DataFrame) -> pd.DataFrame:
    """The card's top tokens by mean activation: token (repr, so whitespace shows), mean, count, mass."""
    return pd.DataFrame({
        "token": [repr(t) if isinstance(t, str) else f"<{i}>" for t, i in zip(token_stats["token"], token_stats["token_id"])],
        "mean activation": token_stats["mean_activation"].round(4).to_numpy(),
        "count": token_stats["token_count"].to_numpy(),
        "mass": token_stats["activation_sum"].round(3).to_numpy(),
    })


def neighbours_table(neighbours: pd.DataFrame, run: str, sae_id: str) -> pd.DataFrame:
    """Nearest features by decoder cosine, with a link to each card."""
    table = neighbours[["neighbour_id", "cosine", "density", "auroc_notebook"]].rename(
        columns={"neighbour_id": "feature", "auroc_notebook": "AUROC"}
    )
    table.insert(1, "card", [card_href(run, sae_id, f) for f in table["feature"]])
    return table.reset_index(drop=True)


def _fmt(value: Any, digits: int = 3, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _pm(value: Any, bound: Any) -> str:
    text = _fmt(value)
    return text if text == "n/a" or bound is None or math.isnan(bound) else f"{text} ± {bound:.1e}"


def evidence_table(scores: Mapping[str, Any], index_run: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The backtracking evidence of one feature: what was measured, the value, and how to read it."""
    if not scores:
        return pd.DataFrame(columns=["evidence", "value", "reading"])
    s = scores
    best = (index_run or {}).get("best_token_auroc")
    identity = (index_run or {}).get("identity_auroc")
    wait_rank = s.get("wait_logit_rank")
    rows = [
        ("AUROC, six backtracking groups", _pm(s["auroc_notebook"], s["auroc_notebook_error_bound"]),
         "tokens inside a labelled backtracking phrase vs all others; 0.5 = chance (± binning error bound)"),
        ("AUROC, any labelled phrase", _pm(s["auroc"], s["auroc_error_bound"]), "interjections (Wait, Hmm, ...) included"),
        ("Mean activation in / outside phrases", f"{_fmt(s['mean_in_phrases'])} / {_fmt(s['mean_outside'])}", ""),
        ("ReasonScore", _fmt(s["reason_score"], 5),
         f"reasoning-word specificity (Galichin et al.); entropy over the words {_fmt(s['reason_entropy'], 2)}"),
        ("Leads (baseline SDs)", _fmt(s["leads_score"], 3, signed=True),
         f"mean over offsets {LEAD_WINDOW[0]}..{LEAD_WINDOW[1]} before the phrase, minus the baseline; "
         f"share of the peak rise {_fmt(s['lead_share'], 2)}, peak at offset {s['lead_peak_offset']}"),
        ("Document contrast: window max", _fmt(s["doc_window_max_delta"], 3, signed=True),
         "mean per-window maximum in traces with backtracking minus without"),
        ("Document contrast: fires in", f"{_fmt(s['doc_active_share_with'], 2)} / {_fmt(s['doc_active_share_without'], 2)}",
         "share of windows where it fires, with / without backtracking"),
        ("Token control: within-token AUROC", _fmt(s["within_token_auroc"]),
         "phrase vs non-phrase uses of the same tokens; 0.5 = the token alone explains it"),
        ("Token control: margin over best token", _fmt(s["margin_over_best_token"], 3, signed=True),
         f"AUROC minus the best single-token detector's ({_fmt(best)})"),
        ("Token control: margin over token identity", _fmt(s["margin_over_identity"], 3, signed=True),
         f"AUROC minus the token-identity ceiling ({_fmt(identity)})"),
        ("Token detector?", "yes" if s["is_token_detector"] else "no",
         "yes when the token identity explains it (margin over identity <= 0 and within-token AUROC <= 0.6)"),
        ("Promotes Wait?", f"yes (logit-lens rank {int(wait_rank) + 1})" if s["promotes_wait"] and wait_rank is not None
         and not pd.isna(wait_rank) else ("yes" if s["promotes_wait"] else "no"),
         "a Wait-like token is among its top logit-lens tokens"),
    ]
    return pd.DataFrame(rows, columns=["evidence", "value", "reading"])


def candidates_table(
    candidates: pd.DataFrame, run: str, sae_id: str, effects: pd.DataFrame | None = None,
    verdicts: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """`read_candidates` rows with a card link per row, then after the score the steering columns
    (`effects`: feature_id, causal_effect, ...) when steering results exist and the token-injection
    verdict (`verdicts`: read_injection_verdicts; readable, `NOT_TESTED` for a feature not tested) when
    injection results exist."""
    table = candidates.copy()
    table.insert(1, "card", [card_href(run, sae_id, f) for f in table["feature_id"]])
    table.insert(2, "steer", [steer_href(run, sae_id, f) for f in table["feature_id"]])
    extra = []
    if effects is not None and not effects.empty:
        table = table.merge(effects, on="feature_id", how="left")
        extra += [c for c in effects.columns if c != "feature_id"]
    if verdicts is not None:
        readable = verdicts["verdict"].map(VERDICT_LABELS)
        table = table.merge(pd.DataFrame({"feature_id": verdicts["feature_id"], INJECTION_COLUMN: readable}),
                            on="feature_id", how="left")
        table[INJECTION_COLUMN] = table[INJECTION_COLUMN].fillna(NOT_TESTED)
        extra.append(INJECTION_COLUMN)
    order = ["feature_id", "card", "steer", "score", *extra]
    return table[order + [c for c in table.columns if c not in order]]


def token_driven_ids(verdicts: pd.DataFrame | None) -> list[int]:
    """The features whose injection verdict is token_driven (none without injection results)."""
    if verdicts is None or verdicts.empty:
        return []
    return [int(f) for f in verdicts.loc[verdicts["verdict"] == VERDICTS[0], "feature_id"]]


def live_features_table(
    top: Sequence[Any], scores: pd.DataFrame, run: str, sae_id: str
) -> pd.DataFrame:
    """The Live page's top features over the text (FeatureScore records) with their backtracking
    scores (read_feature_scores; empty when the SAE has no index) and a link to each card."""
    table = pd.DataFrame(
        {
            "feature": [f.feature_id for f in top],
            "max": [round(f.value, 3) for f in top],
            "tokens active": [f.n_active for f in top],
        }
    )
    table["card"] = [card_href(run, sae_id, f) for f in table["feature"]]
    if scores is not None and not scores.empty:
        columns = ["feature_id", "auroc_notebook", "reason_score", "leads_score", "is_token_detector", "density"]
        table = table.merge(scores[columns].rename(columns={"feature_id": "feature"}), on="feature", how="left")
    return table


# --- token injection ------------------------------------------------------------------------------

INJECTION_COLUMN = "injection_verdict"
NOT_TESTED = "not tested"
"""The verdict column's entry for a feature the inject stage did not test."""
"""The Candidates table's token-injection column (`candidates_table`)."""
VERDICT_LABELS = {
    "token_driven": "token-driven",
    "partially_token_driven": "partly token-driven",
    "weakly_token_driven": "weakly token-driven",
    "context_dependent": "context-dependent",
}
"""Each verdict of explorer.injection.VERDICTS as the app shows it."""
assert set(VERDICT_LABELS) == set(VERDICTS)
INJECTION_CONDITIONS = {
    "baseline": "Baseline: windows without backtracking, untouched",
    "injected": "Injected: the same windows with the feature's tokens put in (best strategy)",
    "target": "Target: windows that hold backtracking",
}
"""The conditions of injection_examples, in the order shown, with a heading each."""


def verdict_rules_text() -> str:
    """The verdict thresholds in words (explorer.injection.VERDICT_RULES), for help texts."""
    rules = [f"{VERDICT_LABELS[v]}: d ≥ {d} and p < {p}" for v, (d, p) in zip(VERDICTS, VERDICT_RULES)]
    return "; ".join(rules) + f"; {VERDICT_LABELS[VERDICTS[-1]]}: none of these"


def injection_verdict_help() -> str:
    """What the Candidates page's verdict column means."""
    return (
        "Token injection: the feature's top tokens (or the bigrams and trigrams where it fires) put into "
        "windows without backtracking; Cohen's d of its max activation against the same windows untouched, "
        f"from the strategy with the largest d. {verdict_rules_text()}. {NOT_TESTED.capitalize()}: not among "
        "the top candidates the inject stage tested."
    )


def _display_d(values: pd.Series, cap: float) -> tuple[list[float | None], list[str]]:
    """Values for bars (an infinite d drawn at +-cap, a NaN left out) and their text."""
    shown, text = [], []
    for v in values.astype(float):
        if math.isnan(v):
            shown.append(None)
            text.append("n/a")
        elif math.isinf(v):
            shown.append(math.copysign(cap, v))
            text.append("+∞" if v > 0 else "−∞")
        else:
            shown.append(v)
            text.append(f"{v:.2f}")
    return shown, text


def _threshold_labels(thresholds: list[float], cap: float) -> list[tuple[float, str]]:
    """A label per reference line, or one for all at the top line when the axis reaches past 3 (the
    lines are then a few pixels apart and their labels would overlap)."""
    if cap <= 3:
        return [(t, f"d = {t}") for t in thresholds]
    return [(thresholds[-1], "d = " + " / ".join(str(t) for t in thresholds))]


def injection_figure(strategies: pd.DataFrame) -> go.Figure:
    """Cohen's d of each injection strategy (bars, in the test's strategy order) and the null's d, the
    same strategy with random tokens of matched frequency (diamonds), with reference lines at the
    verdict thresholds (0.2, 0.5, 0.8). An infinite d (constant samples) is drawn at 1.2 times the
    largest finite one (at least 1.5) and labelled ∞; a NaN d is left out ("n/a")."""
    rows = strategies.assign(order=strategies["strategy"].map(lambda s: STRATEGIES.index(s) if s in STRATEGIES else 99))
    rows = rows.sort_values(["order", "strategy"], kind="stable")
    finite = pd.concat([rows["cohens_d"], rows["null_d"]]).astype(float)
    finite = finite[np.isfinite(finite)]
    cap = max(1.5, float(finite.abs().max()) * 1.2 if not finite.empty else 1.5)
    d, d_text = _display_d(rows["cohens_d"], cap)
    null, null_text = _display_d(rows["null_d"], cap)
    thresholds = sorted({rule[0] for rule in VERDICT_RULES})
    fig = go.Figure(
        [
            go.Bar(x=rows["strategy"], y=d, name="candidate's tokens", text=d_text, textposition="outside",
                   customdata=np.stack([rows["p_value"].astype(float), rows["transfer_ratio"].astype(float)], axis=-1),
                   marker_color="rgb(255, 140, 0)",
                   hovertemplate="%{x}: d %{text}, p %{customdata[0]:.2g}, transfer %{customdata[1]:.2f}<extra></extra>"),
            go.Scatter(x=rows["strategy"], y=null, name="null (random tokens, same frequency)", mode="markers",
                       text=null_text, marker=dict(symbol="diamond", size=10, color="rgb(90, 90, 90)"),
                       hovertemplate="%{x}: null d %{text}<extra></extra>"),
        ],
        layout=dict(
            title=dict(text="Cohen's d of injected vs baseline windows, per strategy", font_size=13),
            yaxis_title="Cohen's d", height=320, margin=dict(t=40, b=40, l=50, r=10),
            legend=dict(orientation="h", yanchor="bottom", y=1.0, x=1, xanchor="right", font_size=11),
            shapes=[_hline(t, "grey") for t in thresholds],
            annotations=[dict(x=1, y=t, xref="x domain", yref="y", text=text, showarrow=False, xanchor="right",
                              yanchor="bottom", font=dict(size=10, color="grey"))
                         for t, text in _threshold_labels(thresholds, cap)],
        ),
    )
    return fig


def injection_example_rows(
    examples: pd.DataFrame, vocabulary: Sequence[str], run: str, sae_id: str, feature_id: int
) -> dict[str, list[ExampleHTML]]:
    """One feature's injection example windows (read_injection_examples) as rows for `examples_html`,
    by condition in INJECTION_CONDITIONS' order, each with a link that opens its text in Live with the
    feature and the window's peak token chosen."""
    rows: dict[str, list[ExampleHTML]] = {}
    for ex in examples.itertuples(index=False):
        values = [float(v) for v in ex.activations]
        peak = int(np.argmax(values)) if values else None
        strategy = f" · {ex.strategy}" if ex.condition == "injected" and isinstance(ex.strategy, str) else ""
        rows.setdefault(str(ex.condition), []).append(
            ExampleHTML(
                label=f"#{int(ex.rank) + 1} · max {max(values, default=0.0):.3f}{strategy}",
                token_texts=tokens_to_text(vocabulary, ex.token_ids),
                values=values,
                peak_index=peak,
                href=live_text_href(run, sae_id, str(ex.text), feature_id, peak),
            )
        )
    return {c: rows[c] for c in [*INJECTION_CONDITIONS, *rows] if c in rows}


# --- figures --------------------------------------------------------------------------------------


def histogram_figure(histogram: pd.DataFrame) -> go.Figure:
    """Tokens per log-spaced activation bin, drawn as a filled outline on a log x axis (bars have no
    width there); the zeros, which dwarf everything else, are counted in the title instead."""
    nonzero = histogram[histogram["upper"] > 0]
    zeros = int(histogram.loc[histogram["upper"] <= 0, "count"].sum())
    n_tokens = int(histogram["count"].sum())
    fig = go.Figure()
    if not nonzero.empty:
        upper_H, count_H = nonzero["upper"].to_numpy(), nonzero["count"].to_numpy()
        lower_H = nonzero["lower"].to_numpy()
        lower_H = np.where(lower_H > 0, lower_H, upper_H / 2)  # the underflow bin starts at 0: no log
        zero_H = np.zeros_like(count_H)
        # Four corners per bin, bins in order: empty bins between them drop to zero.
        x = np.stack([lower_H, lower_H, upper_H, upper_H], axis=-1).ravel()
        y = np.stack([zero_H, count_H, count_H, zero_H], axis=-1).ravel()
        fig.add_trace(
            go.Scatter(
                x=x, y=y, mode="lines", fill="tozeroy", line=dict(color="rgb(255, 140, 0)", width=1),
                hovertemplate="activation %{x:.3g}: %{y:,} tokens in this bin<extra></extra>",
            )
        )
    share = 1 - zeros / n_tokens if n_tokens else float("nan")
    fig.update_layout(
        title=dict(text=f"Activations above zero: {n_tokens - zeros:,} of {n_tokens:,} tokens ({share:.3%})", font_size=13),
        xaxis=dict(title="activation", type="log"),
        yaxis=dict(title="tokens per bin"),
        height=260, margin=dict(t=40, b=40, l=50, r=10), showlegend=False,
    )
    return fig


def _vline(x: float, colour: str, dash: str = "solid", xref: str = "x", yref: str = "y domain") -> dict:
    # Layout shapes as plain dicts: plotly's add_vline/add_hline helpers cost ~10 ms each.
    return dict(type="line", x0=x, x1=x, y0=0, y1=1, xref=xref, yref=yref, line=dict(color=colour, width=1, dash=dash))


def _hline(y: float, colour: str, dash: str = "dot", xref: str = "x domain", yref: str = "y") -> dict:
    return dict(type="line", x0=0, x1=1, y0=y, y1=y, xref=xref, yref=yref, line=dict(color=colour, width=1, dash=dash))


def lead_lag_figure(lead_lag: pd.DataFrame, baseline_mean: float | None) -> go.Figure:
    """Mean activation at each offset from the start of a backtracking phrase, against the baseline
    (the mean over every valid token); the leads window is shaded."""
    shapes = [
        dict(type="rect", x0=LEAD_WINDOW[0] - 0.5, x1=LEAD_WINDOW[1] + 0.5, y0=0, y1=1, xref="x", yref="y domain",
             fillcolor="rgba(31, 119, 180, 0.08)", line_width=0, layer="below"),
        _vline(0, "rgb(214, 39, 40)"),
    ]
    annotations = [dict(x=0, y=1, xref="x", yref="y domain", text="phrase start", showarrow=False, xanchor="left",
                        font=dict(size=11, color="grey"))]
    if baseline_mean is not None and not math.isnan(baseline_mean):
        shapes.append(_hline(baseline_mean, "grey", "dash"))
        annotations.append(dict(x=1, y=baseline_mean, xref="x domain", yref="y", text="baseline", showarrow=False,
                                xanchor="right", yanchor="bottom", font=dict(size=11, color="grey")))
    n = int(lead_lag.loc[lead_lag["relative_position"] == 0, "n_targets"].sum()) if not lead_lag.empty else 0
    return go.Figure(
        go.Scatter(
            x=lead_lag["relative_position"], y=lead_lag["mean_activation"], mode="lines+markers", name="mean activation",
            customdata=lead_lag["n_targets"], marker_size=4,
            hovertemplate="offset %{x}: %{y:.4f} (%{customdata:,} phrase starts)<extra></extra>",
        ),
        layout=dict(
            title=dict(text=f"Lead-lag around {n:,} backtracking phrase starts", font_size=13),
            xaxis_title="token offset from the phrase's first token", yaxis_title="mean activation",
            height=300, margin=dict(t=40, b=40, l=50, r=10), showlegend=False, shapes=shapes, annotations=annotations,
        ),
    )


def group_auroc_figure(group_auroc: pd.DataFrame) -> go.Figure:
    """AUROC of each lexicon group's phrases, with its error bound; 0.5 is chance."""
    rows = group_auroc.set_index("group_name").reindex([g for g in GROUPS if g in set(group_auroc["group_name"])])
    return go.Figure(
        go.Bar(
            x=rows["auroc"], y=rows.index, orientation="h",
            error_x=dict(type="data", array=rows["error_bound"].fillna(0).to_numpy(), visible=True),
            marker_color=[GROUP_COLOURS.get(g, "#999") for g in rows.index],
            hovertemplate="%{y}: %{x:.3f}<extra></extra>",
        ),
        layout=dict(
            title=dict(text="AUROC per phrase group", font_size=13), xaxis=dict(title="AUROC", range=[0, 1]),
            yaxis=dict(autorange="reversed"), height=260, margin=dict(t=40, b=40, l=10, r=10),
            shapes=[_vline(0.5, "grey", "dot")],
        ),
    )


def word_shares_figure(word_shares: pd.DataFrame) -> go.Figure:
    """How a feature's activation on reasoning words splits across them (ReasonScore's entropy term)."""
    fig = go.Figure(go.Bar(x=word_shares["word"], y=word_shares["share"], hovertemplate="%{x}: %{y:.2f}<extra></extra>"))
    fig.update_layout(
        title=dict(text="Share of activation per reasoning word", font_size=13), yaxis=dict(title="share", range=[0, 1]),
        height=240, margin=dict(t=40, b=40, l=50, r=10),
    )
    return fig


def lead_lag_grid(
    profiles: pd.DataFrame, feature_ids: Sequence[int], titles: Mapping[int, str] | None = None, columns: int = 4
) -> go.Figure:
    """Small multiples: each feature's lead-lag profile (activation minus baseline) by offset, one
    panel per feature, its own y scale. Axes are laid out by hand: make_subplots costs ~10 ms a panel."""
    ids = [int(f) for f in feature_ids]
    rows = max(1, math.ceil(len(ids) / columns))
    by_feature = dict(tuple(profiles.groupby("feature_id"))) if not profiles.empty else {}
    fig_height = 200 * rows + 40
    gap_x, gap_y = 0.04, 70 / (fig_height - 70)  # room for the x ticks above and a panel's title below
    width, height = (1 - gap_x * (columns - 1)) / columns, (1 - gap_y * (rows - 1)) / rows
    traces, shapes, annotations, layout = [], [], [], {}
    for i, f in enumerate(ids):
        row, col = divmod(i, columns)
        axis = "" if i == 0 else str(i + 1)
        x0, y1 = col * (width + gap_x), 1 - row * (height + gap_y)
        layout[f"xaxis{axis}"] = dict(domain=[x0, x0 + width], anchor=f"y{axis}", tickfont_size=10)
        layout[f"yaxis{axis}"] = dict(domain=[y1 - height, y1], anchor=f"x{axis}", tickfont_size=10)
        annotations.append(dict(text=(titles or {}).get(f, f"feature {f}"), x=x0 + width / 2, y=y1, xref="paper",
                                yref="paper", showarrow=False, yanchor="bottom", font_size=11))
        shapes += [_vline(0, "rgb(214, 39, 40)", xref=f"x{axis}", yref=f"y{axis} domain"),
                   _hline(0, "grey", xref=f"x{axis} domain", yref=f"y{axis}")]
        profile = by_feature.get(f)
        if profile is not None:
            traces.append(go.Scatter(
                x=profile["relative_position"], y=profile["delta"], mode="lines", xaxis=f"x{axis}", yaxis=f"y{axis}",
                line=dict(width=1.5, color="rgb(31, 119, 180)"),
                hovertemplate=f"feature {f}, offset %{{x}}: %{{y:+.4f}}<extra></extra>",
            ))
    return go.Figure(traces, layout=dict(
        height=fig_height, showlegend=False, margin=dict(t=40, b=30, l=40, r=10), shapes=shapes,
        annotations=annotations, **layout,
    ))


# --- sae_vis --------------------------------------------------------------------------------------


def compute_sae_vis_tokens(tokenizer, texts: Sequence[str], row_len: int, max_rows: int):
    """`[rows, row_len]` token ids for sae-vis: each text cut into windows as the index cuts them (each
    window starts with BOS), the first `row_len` tokens of each window long enough, at most `max_rows`
    rows."""
    documents = [CorpusDocument(str(i), t, (), False) for i, t in enumerate(texts)]
    return token_rows(make_windows(tokenizer, documents, row_len, progress=False), row_len, max_rows)
