"""A steering result drawn: the verdict per condition, the summary table, the rate plot and the
baseline and steered texts side by side (the Steering page, for a fresh generation and a stored one).

The computation is `explorer.steering`, the storage `explorer.steering_store`, the run control
`explorer.app.steering_run`. Every generated text reaches HTML through `explorer.html.highlight_html`,
which escapes it.
"""

from __future__ import annotations

import math
from typing import Sequence

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from explorer.html import GROUP_COLOURS, Mark, highlight_html, legend_html
from explorer.steering import ConditionSummary, SteeringResult, SteeringSample, condition_name, describe_effect
from explorer.steering_store import SteeringRun


def _estimate_text(mean: float, low: float, high: float) -> str:
    if math.isnan(low):
        return f"{mean:.2f}"
    return f"{mean:.2f} [{low:.2f}, {high:.2f}]"


def summary_frame(summaries: Sequence[ConditionSummary], mode: str) -> pd.DataFrame:
    """One row per condition: the rate with its 95% CI, the paired difference, length and `</think>`."""
    rows = []
    for s in summaries:
        d = s.rate_difference
        rows.append({
            "condition": condition_name(mode, s.coef),
            "n": s.rate.n,
            "phrases / 1k tokens [95% CI]": _estimate_text(s.rate.mean, s.rate.ci_low, s.rate.ci_high),
            "± sem": None if math.isnan(s.rate.sem) else round(s.rate.sem, 2),
            "vs baseline [95% CI]": "" if d is None else _estimate_text(d.mean, d.ci_low, d.ci_high),
            "without interjections": round(s.notebook_rate.mean, 2),
            "tokens (mean ± std)": f"{s.length.mean:.0f} ± {0 if math.isnan(s.length.std) else s.length.std:.0f}",
            "reached </think>": f"{s.think_close_share.mean:.0%}",
        })
    return pd.DataFrame(rows)


def render_verdict(summaries: Sequence[ConditionSummary], mode: str, feature_id: int) -> None:
    """One sentence per steered condition: does it raise or lower the backtracking rate (95% CI)?"""
    for s in summaries[1:]:
        d = s.rate_difference
        effect = describe_effect(d)
        text = (
            f"**{condition_name(mode, s.coef)}** {effect} backtracking"
            if effect in ("raises", "lowers", "no clear effect on")
            else f"**{condition_name(mode, s.coef)}**: {effect}"
        )
        if d is not None and not math.isnan(d.mean):
            text += f": {d.mean:+.2f} phrases per 1,000 tokens vs baseline"
            if not math.isnan(d.ci_low):
                text += f" (95% CI {d.ci_low:+.2f} to {d.ci_high:+.2f}, n = {d.n})"
        st.markdown(f"Feature {feature_id}: {text}.")


def render_rate_plot(summaries: Sequence[ConditionSummary], mode: str, key: str) -> None:
    """Backtracking rate against the coefficient (95% CI error bars), the baseline as a band."""
    steered = sorted((s for s in summaries if s.coef is not None), key=lambda s: s.coef)
    base = summaries[0].rate
    fig = go.Figure()
    xs = [s.coef for s in steered]
    if xs and not math.isnan(base.ci_low):
        fig.add_hrect(y0=base.ci_low, y1=base.ci_high, fillcolor="grey", opacity=0.15, line_width=0)
    if xs:
        fig.add_hline(y=base.mean, line_dash="dash", line_color="grey", annotation_text="baseline")
    fig.add_trace(go.Scatter(
        x=xs,
        y=[s.rate.mean for s in steered],
        mode="lines+markers",
        name="steered",
        error_y=dict(
            type="data",
            symmetric=False,
            array=[0 if math.isnan(s.rate.ci_high) else s.rate.ci_high - s.rate.mean for s in steered],
            arrayminus=[0 if math.isnan(s.rate.ci_low) else s.rate.mean - s.rate.ci_low for s in steered],
        ),
    ))
    fig.update_layout(
        xaxis_title="clamp value" if mode == "clamp" else "coefficient (x decoder direction)",
        yaxis_title="backtracking phrases / 1,000 tokens",
        height=320,
        margin=dict(t=20, b=40),
        showlegend=False,
    )
    st.plotly_chart(fig, width="stretch", key=f"{key}_plot")


def _phrase_marks(sample: SteeringSample) -> list[Mark]:
    return [Mark(p.start, p.end, GROUP_COLOURS[p.group], f"{p.group}: {p.phrase}") for p in sample.phrases]


def render_sample(title: str, sample: SteeringSample | None) -> None:
    st.markdown(f"**{title}**")
    if sample is None:
        st.caption("No sample.")
        return
    ending = "stopped (EOS)" if sample.stopped_at_eos else "hit the token limit"
    st.caption(
        f"{sample.n_tokens} tokens, {ending}, {sample.n_phrases} phrases ({sample.rate:.1f} / 1k)"
        + (", reached </think>" if sample.reached_think_close else "")
    )
    st.html(highlight_html(sample.text, _phrase_marks(sample)))


def render_side_by_side(
    prompts: Sequence[str],
    samples: Sequence[SteeringSample],
    coefs: Sequence[float],
    mode: str,
    key: str,
) -> None:
    """Pick a coefficient, prompt and sample; show the baseline and the steered text next to each other."""
    left, middle, right = st.columns(3)
    name = lambda c: condition_name(mode, c)  # noqa: E731
    coef = left.selectbox("Steered condition", list(coefs), format_func=name, key=f"{key}_coef")
    prompt_index = 0
    if len(prompts) > 1:
        prompt_index = middle.number_input("Prompt", 0, len(prompts) - 1, 0, key=f"{key}_prompt")
    indices = sorted({s.sample_index for s in samples if s.prompt_index == prompt_index})
    sample_index = right.selectbox("Sample", indices, key=f"{key}_sample") if indices else 0
    by_key = {(s.coef, s.prompt_index, s.sample_index): s for s in samples}
    with st.expander("Prompt", expanded=False):
        st.html(highlight_html(prompts[prompt_index], []))
    st.html(legend_html())
    base_col, steered_col = st.columns(2)
    with base_col:
        render_sample("Baseline", by_key.get((None, prompt_index, sample_index)))
    with steered_col:
        render_sample(condition_name(mode, coef), by_key.get((coef, prompt_index, sample_index)))


def render_result(
    prompts: Sequence[str],
    samples: Sequence[SteeringSample],
    summaries: Sequence[ConditionSummary],
    mode: str,
    feature_id: int,
    key: str,
) -> None:
    """Verdict, summary table, rate plot and the side-by-side texts of one steering result."""
    render_verdict(summaries, mode, feature_id)
    st.dataframe(summary_frame(summaries, mode), hide_index=True, key=f"{key}_table")
    render_rate_plot(summaries, mode, key)
    render_side_by_side(prompts, samples, [s.coef for s in summaries[1:]], mode, key)


def describe_run(run: SteeringRun) -> str:
    """A stored run in one line: when, mode and coefficients, size."""
    coefs = ", ".join(f"{c:+g}" for c in run.coefs)
    when = run.created_at.strftime("%Y-%m-%d %H:%M")
    size = f"{run.n_prompts} prompts x {run.n_samples} · <= {run.max_new_tokens} tokens"
    return f"{when} · {run.mode} {coefs} · {size}"


def render_generation(result: SteeringResult, sae_id: str, hook_name: str, feature_id: int) -> None:
    """A generation made on the page, with what it ran on."""
    st.subheader("This generation")
    st.caption(f"{result.n_generated_tokens:,} tokens in {result.seconds:.1f} s on {result.device} · at most "
               f"{result.max_new_tokens} new tokens · SAE `{sae_id}` at `{hook_name}`")
    render_result(result.prompts, result.samples, result.summaries, result.config.mode, feature_id, key="fresh")
