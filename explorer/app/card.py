"""The feature card's sections: header with its headline numbers, top examples, distribution and logit
lens, quantile samples, the backtracking evidence, and the token-injection test (docs/injection.md). Every token string reaches HTML through
`explorer.html`, which escapes it."""

from __future__ import annotations

import math
from pathlib import Path

import streamlit as st

from explorer.app.index_cache import FeatureDB, load_feature_injection, load_injection_verdicts
from explorer.feature_db import FeatureCard
from explorer.feature_views import (
    INJECTION_CONDITIONS,
    VERDICT_LABELS,
    card_href,
    evidence_table,
    example_rows,
    group_auroc_figure,
    histogram_figure,
    injection_example_rows,
    injection_figure,
    interval_groups,
    lead_lag_figure,
    logit_lens_tables,
    neighbours_table,
    token_stats_table,
    verdict_rules_text,
    word_shares_figure,
)
from explorer.html import examples_html
from explorer.injection_store import missing_injection_message

TOP_EXAMPLES_SHOWN = 12
"""Top examples shown before the "more" expander."""


def render_card_header(card: FeatureCard, run: str, index_run: dict) -> None:
    s, stats = card.scores, card.stats
    st.subheader(f"Feature {card.feature_id}")
    st.markdown(f"[Link to this card]({card_href(run, card.sae_id, card.feature_id)}) · SAE `{card.sae_id}` at "
                f"`{index_run['hook_name']}` · {index_run['n_valid_tokens']:,} tokens indexed")
    cols = st.columns(6)
    cols[0].metric("Density", f"{stats['density']:.3%}", help="share of valid tokens where it fires")
    cols[1].metric("Max activation", f"{stats['max_activation']:.3f}")
    if s:
        cols[2].metric("AUROC (backtracking)", f"{s['auroc_notebook']:.3f}", help="the notebook's six groups; 0.5 = chance")
        cols[3].metric("ReasonScore", f"{s['reason_score']:.4f}")
        cols[4].metric("Leads (SDs)", f"{s['leads_score']:+.2f}", help="rise over offsets -8..-1 before a phrase")
        cols[5].metric("Token detector", "yes" if s["is_token_detector"] else "no")


def render_top_examples(card: FeatureCard, vocabulary: list[str], run: str) -> None:
    st.markdown("**Top examples** (hover a token for its activation; the peak is outlined)")
    if card.top_examples.empty:
        st.caption("This feature never fired on the indexed tokens.")
        return
    rows = example_rows(card.top_examples, vocabulary, run, card.sae_id, card.feature_id)
    max_activation = float(card.stats["max_activation"])
    st.html(examples_html(rows[:TOP_EXAMPLES_SHOWN], max_activation))
    if len(rows) > TOP_EXAMPLES_SHOWN:
        with st.expander(f"{len(rows) - TOP_EXAMPLES_SHOWN} more top examples"):
            st.html(examples_html(rows[TOP_EXAMPLES_SHOWN:], max_activation))


def render_token_dependence(card: FeatureCard) -> None:
    """Its top tokens by mean activation, how much of its mass they carry, and the entropy over tokens."""
    st.markdown("**Top tokens** (mean activation over every occurrence of the token)")
    dep = card.token_dependence
    if not dep:
        st.caption("This index predates the token statistics: rebuild it (`python -m precompute index --force`).")
        return
    if card.token_stats.empty:
        st.caption("No token occurs often enough where this feature fires.")
        return
    left, right = st.columns(2)
    approx = "" if dep["exact"] else "≥ "
    left.metric(f"Mass on top {dep['top_k']} tokens", f"{approx}{dep['concentration']:.1%}",
                help="share of the feature's activation mass on these tokens"
                + ("" if dep["exact"] else f"; at most {dep['concentration_upper']:.1%} (sketch bound)"))
    right.metric("Token entropy", f"{dep['normalized_entropy']:.3f}",
                 help="normalised entropy of its mass over token ids: 0 = one token, 1 = spread evenly")
    st.dataframe(token_stats_table(card.token_stats), hide_index=True)


def render_interval_samples(card: FeatureCard, vocabulary: list[str], run: str) -> None:
    with st.expander("Quantile samples: examples from each activation interval, not only the top"):
        if card.interval_samples.empty:
            st.caption("No samples: the feature never fired.")
        for heading, rows in interval_groups(card.interval_samples):
            st.caption(heading)
            st.html(examples_html(example_rows(rows, vocabulary, run, card.sae_id, card.feature_id),
                                  float(card.stats["max_activation"])))


def render_distribution_and_lens(card: FeatureCard, run: str) -> None:
    st.plotly_chart(histogram_figure(card.histogram), width="stretch", key="card_histogram")
    promoted, suppressed = logit_lens_tables(card.logit_lens)
    left, right = st.columns(2)
    left.markdown("**Promotes** (logit lens)")
    left.dataframe(promoted, hide_index=True)
    right.markdown("**Suppresses**")
    right.dataframe(suppressed, hide_index=True)
    st.markdown("**Nearest features** (decoder cosine)")
    st.dataframe(neighbours_table(card.neighbours, run, card.sae_id), hide_index=True,
                 column_config={"card": st.column_config.LinkColumn("card", display_text="open")})


def render_backtracking_evidence(card: FeatureCard, index_run: dict) -> None:
    st.subheader("Backtracking evidence")
    if not card.scores:
        st.info("This index has no backtracking scores for this feature.")
        return
    left, right = st.columns([3, 2])
    left.plotly_chart(lead_lag_figure(card.lead_lag, card.scores.get("baseline_mean")), width="stretch", key="card_lead_lag")
    right.plotly_chart(group_auroc_figure(card.group_auroc), width="stretch", key="card_group_auroc")
    left, right = st.columns([3, 2])
    left.table(evidence_table(card.scores, index_run).set_index("evidence"))
    right.plotly_chart(word_shares_figure(card.reason_word_shares), width="stretch", key="card_word_shares")


LABEL_SCORE_COLUMNS = {
    "label": st.column_config.TextColumn("label set"),
    "kind": st.column_config.TextColumn("kind", help="span: phrases or patterns; sentence: tags on whole sentences"),
    "token_auroc": st.column_config.NumberColumn(
        "token AUROC", format="%.3f", help="Activations on the label's tokens against every other token"),
    "sentence_auroc": st.column_config.NumberColumn(
        "sentence AUROC", format="%.3f", help="Each sentence's maximum activation against whether it holds the label"),
    "leads_score": st.column_config.NumberColumn(
        "leads", format="%.2f", help="Rise over the baseline 8 to 1 tokens before the label's starts, in baseline SDs"),
    "lead_peak_offset": st.column_config.NumberColumn("peak offset", help="Where the profile around the starts peaks"),
    "n_positive_tokens": st.column_config.NumberColumn("positive tokens"),
    "n_positive_sentences": st.column_config.NumberColumn("positive sentences"),
}
"""Labels and help of the card's label-set table (explorer.feature_db.read_feature_label_scores)."""


def render_label_set_scores(card: FeatureCard) -> None:
    """The feature's scores on every label set of the index, side by side."""
    if card.label_scores.empty:
        return
    st.subheader("Label sets")
    st.caption("The same feature scored against each label set of the index (docs/labels.md): the lexicon's "
               "phrases, its groups, sentence tags from a labeller, and any set added with `precompute labels`.")
    st.dataframe(card.label_scores, hide_index=True, column_config=LABEL_SCORE_COLUMNS, width="stretch")


def render_card(card: FeatureCard, vocabulary: list[str], run: str, index_run: dict) -> None:
    """The whole card, in the Features page's layout."""
    render_card_header(card, run, index_run)
    left, right = st.columns([3, 2])
    with left:
        render_top_examples(card, vocabulary, run)
        render_token_dependence(card)
    with right:
        render_distribution_and_lens(card, run)
    render_interval_samples(card, vocabulary, run)
    render_backtracking_evidence(card, index_run)
    render_label_set_scores(card)


def _number(value: float, digits: str) -> str:
    """A metric's value: n/a for a missing one, ∞ for an infinite d (both samples constant)."""
    return "n/a" if value is None or math.isnan(value) else f"{value:{digits}}".replace("inf", "∞")


def render_token_injection(db: FeatureDB, run_dir: Path, sae_id: str, feature_id: int, vocabulary: list[str]) -> None:
    """The token-injection test of the feature: its verdict and best strategy, Cohen's d per strategy
    against the null's, and three example windows per condition with a link into Live each; one line
    when the run or the feature has no result."""
    st.subheader("Token injection")
    verdicts = load_injection_verdicts(db, sae_id)
    if verdicts is None:
        st.caption(missing_injection_message(run_dir, sae_id))
        return
    result = load_feature_injection(db, sae_id, feature_id)
    if result is None:
        return
    if result.verdict is None:
        st.caption(f"Not tested: feature {feature_id} was not among the {len(verdicts):,} candidates the inject stage "
                   f"tested. Raise `--candidates`, or name it with `--features` (which replaces the SAE's injection "
                   f"results, so list every feature to keep): `python -m precompute inject --run {run_dir} "
                   f"--sae {sae_id} --features {feature_id}`.")
        return
    v = result.verdict
    st.caption("Does the feature fire on its own top tokens, put into text without backtracking? Its maximum "
               "activation per window, injected against the same windows untouched (docs/injection.md).")
    cols = st.columns(4)
    cols[0].metric("Verdict", VERDICT_LABELS.get(v["verdict"], v["verdict"]),
                   help=f"From the strategy with the largest d. {verdict_rules_text()}.")
    cols[1].metric(f"Cohen's d ({v['best_strategy']})", _number(v["best_d"], ".2f"),
                   help="Best strategy's d: injected windows against the same windows before injection (pooled SD)")
    cols[2].metric("p", _number(v["best_p"], ".2g"), help="Student's t-test, two-sided, of that strategy")
    cols[3].metric("d minus null", _number(v["d_minus_null"], "+.2f"),
                   help="That d minus the d of random tokens of matched corpus frequency injected the same way: "
                        "what the feature's own tokens carry beyond any tokens as frequent")
    if not result.strategies.empty:
        st.plotly_chart(injection_figure(result.strategies), width="stretch", key="card_injection")
    rows = injection_example_rows(result.examples, vocabulary, run_dir.name, sae_id, feature_id)
    scale = max((max(r.values, default=0.0) for group in rows.values() for r in group), default=0.0)
    for condition, group in rows.items():
        st.markdown(f"**{INJECTION_CONDITIONS.get(condition, condition)}**")
        st.html(examples_html(group, scale))
