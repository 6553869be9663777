"""The card's and the candidates' tables, figures, links and HTML (explorer.feature_views and the
example helpers of explorer.html), on small hand-made frames."""

import math
from urllib.parse import parse_qs

import numpy as np
import pandas as pd

from explorer import feature_views as fv
from explorer.html import ExampleHTML, context_html, examples_html


def test_links_encode_their_parameters():
    href = fv.card_href("my run", "sae&x=1", 7)
    page, query = href.split("?", 1)
    assert page == "Features" and parse_qs(query) == {"run": ["my run"], "sae": ["sae&x=1"], "feature": ["7"]}
    live = fv.live_href("demo", "s", "doc <1>", 3, 40)
    assert parse_qs(live.split("?", 1)[1]) == {"run": ["demo"], "sae": ["s"], "doc": ["doc <1>"], "feature": ["3"], "token": ["40"]}
    assert fv.parse_feature_id(" 12 ") == 12 and fv.parse_feature_id("x") is None and fv.parse_feature_id(None) is None


def test_rankings_split_into_score_and_group():
    choices = fv.ranking_choices()
    assert "auroc_notebook" in choices and "group:correction" in choices
    assert fv.split_ranking("reason_score") == ("reason_score", None)
    assert fv.split_ranking("group:doubt") == ("auroc_notebook", "doubt")


def test_example_tokens_are_escaped_and_carry_their_values():
    out = context_html(["<script>", " ok", "\n"], [2.0, 1.0, 0.0], max_value=2.0, peak_index=0)
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert "rgba(255, 140, 0, 1.000)" in out and "rgba(255, 140, 0, 0.500)" in out
    assert "outline" in out.split("</span>")[0] and "outline" not in out.split("</span>")[1]
    assert "title=\"&#x27;&lt;script&gt;&#x27;: 2.000\"" in out  # repr of the token, then its value
    assert "↵" in out


def test_example_rows_link_relative_only():
    rows = [
        ExampleHTML('<img src=x onerror="alert(1)">', ["a"], [1.0], 0, "Live?doc=1&feature=2"),
        ExampleHTML("x", ["b"], [0.0], None, "javascript:alert(1)"),
    ]
    out = examples_html(rows, 1.0)
    assert "<img" not in out and "&lt;img" in out
    assert 'href="Live?doc=1&amp;feature=2"' in out and 'href="#"' in out and "javascript:" not in out


def test_example_rows_point_at_the_document_token():
    examples = pd.DataFrame(
        {"rank": [0], "activation": [2.5], "doc_id": ["d1"], "position": [10], "first_position": [8],
         "token_offset": [512], "token_ids": [np.array([0, 1, 2, 0])], "activations": [np.array([0.0, 0.5, 2.5, 0.0])]}
    )
    (row,) = fv.example_rows(examples, ["a", "b", "c"], "demo", "s", 4)
    assert row.label == "#1 · 2.500 · d1" and row.peak_index == 2 and row.token_texts == ["a", "b", "c", "a"]
    assert parse_qs(row.href.split("?", 1)[1])["token"] == ["522"]  # window offset + position


def test_evidence_table_reads_nan_as_not_available():
    scores = {
        "auroc_notebook": 0.7, "auroc_notebook_error_bound": 1e-5, "auroc": math.nan, "auroc_error_bound": math.nan,
        "mean_in_phrases": 1.0, "mean_outside": 0.1, "reason_score": 0.001, "reason_entropy": 0.5, "leads_score": 1.5,
        "lead_share": 0.2, "lead_peak_offset": -3, "doc_window_max_delta": 0.4, "doc_active_share_with": 0.9,
        "doc_active_share_without": 0.3, "within_token_auroc": 0.8, "margin_over_best_token": 0.1,
        "margin_over_identity": 0.05, "is_token_detector": False, "promotes_wait": True, "wait_logit_rank": 2,
    }
    table = fv.evidence_table(scores, {"best_token_auroc": 0.6, "identity_auroc": 0.65}).set_index("evidence")
    assert table.loc["AUROC, six backtracking groups", "value"] == "0.700 ± 1.0e-05"
    assert table.loc["AUROC, any labelled phrase", "value"] == "n/a"
    assert table.loc["Leads (baseline SDs)", "value"] == "+1.500"
    assert table.loc["Promotes Wait?", "value"] == "yes (logit-lens rank 3)"
    assert table.loc["Token detector?", "value"] == "no"
    assert fv.evidence_table({}).empty


def test_histogram_leaves_zeros_to_the_title():
    histogram = pd.DataFrame({"bin": [0, 1, 40], "lower": [0.0, 0.0, 0.3], "upper": [0.0, 1e-4, 0.35], "count": [90, 4, 6]})
    fig = fv.histogram_figure(histogram)
    assert "10 of 100 tokens (10.000%)" in fig.layout.title.text
    (trace,) = fig.data
    assert list(trace.y) == [0, 4, 4, 0, 0, 6, 6, 0]
    assert trace.x[0] == 5e-5  # the underflow bin starts at 0, drawn from half its upper edge


def test_lead_lag_grid_has_a_panel_per_feature():
    profiles = pd.DataFrame(
        {"feature_id": [1, 1, 2, 2], "relative_position": [-1, 0, -1, 0], "mean_activation": [0, 1, 0, 2],
         "delta": [0.0, 1.0, 0.0, 2.0]}
    )
    fig = fv.lead_lag_grid(profiles, [1, 2, 3], {1: "one"}, columns=2)
    assert len(fig.data) == 2 and fig.data[1].xaxis == "x2" and fig.layout.xaxis3.domain is not None
    assert [a.text for a in fig.layout.annotations] == ["one", "feature 2", "feature 3"]


def test_candidates_table_links_rows_and_adds_steering_columns():
    candidates = pd.DataFrame({"feature_id": [5, 9], "score": [0.9, 0.8], "density": [0.01, 0.02]})
    effects = pd.DataFrame({"feature_id": [9], "causal_effect": ["+3.0/1k [+1.0, +5.0] at +8"], "steering_verdict": ["raises"]})
    table = fv.candidates_table(candidates, "demo", "s", effects)
    assert list(table.columns) == ["feature_id", "card", "steer", "score", "causal_effect", "steering_verdict", "density"]
    assert table["card"].tolist() == ["Features?run=demo&sae=s&feature=5", "Features?run=demo&sae=s&feature=9"]
    assert table["steer"].tolist() == ["Steering?run=demo&sae=s&feature=5", "Steering?run=demo&sae=s&feature=9"]
    assert pd.isna(table.loc[0, "causal_effect"]) and table.loc[1, "steering_verdict"] == "raises"
    assert "causal_effect" not in fv.candidates_table(candidates, "demo", "s", None).columns


def test_candidates_table_adds_the_injection_verdict_blank_when_untested():
    candidates = pd.DataFrame({"feature_id": [5, 9, 7], "score": [0.9, 0.8, 0.7], "density": [0.01, 0.02, 0.03]})
    verdicts = pd.DataFrame({"feature_id": [9, 5], "verdict": ["token_driven", "context_dependent"]})
    table = fv.candidates_table(candidates, "demo", "s", None, verdicts)
    assert list(table.columns) == ["feature_id", "card", "steer", "score", fv.INJECTION_COLUMN, "density"]
    assert table[fv.INJECTION_COLUMN].tolist()[:2] == ["context-dependent", "token-driven"]
    assert table.loc[2, fv.INJECTION_COLUMN] == fv.NOT_TESTED
    assert fv.INJECTION_COLUMN not in fv.candidates_table(candidates, "demo", "s").columns
    assert fv.token_driven_ids(verdicts) == [9] and fv.token_driven_ids(None) == []
    help_text = fv.injection_verdict_help()
    assert "token-driven: d ≥ 0.8 and p < 0.01" in help_text and "weakly token-driven: d ≥ 0.2 and p < 0.05" in help_text


def test_injection_figure_draws_d_the_null_and_the_thresholds():
    rows = pd.DataFrame({
        "strategy": ["trigram", "prepend", "append"],  # the test's order: prepend, append, ..., trigram
        "cohens_d": [0.3, math.inf, float("nan")], "null_d": [0.1, 0.05, -0.2],
        "p_value": [0.04, 0.0, float("nan")], "transfer_ratio": [0.2, 1.5, float("nan")],
    })
    fig = fv.injection_figure(rows)
    bars, null = fig.data
    assert bars.type == "bar" and list(bars.x) == ["prepend", "append", "trigram"]
    assert list(bars.text) == ["+∞", "n/a", "0.30"]
    assert bars.y[0] == 1.5  # infinite: drawn above the largest finite d and the thresholds
    assert bars.y[1] is None and bars.y[2] == 0.3
    assert null.mode == "markers" and list(null.y) == [0.05, -0.2, 0.1]
    assert sorted(s.y0 for s in fig.layout.shapes) == [0.2, 0.5, 0.8]
    assert sorted(a.text for a in fig.layout.annotations) == ["d = 0.2", "d = 0.5", "d = 0.8"]
    # with large d the lines sit a few pixels apart: one label for the three
    large = fv.injection_figure(rows.assign(cohens_d=[30.0, 20.0, 10.0]))
    assert [a.text for a in large.layout.annotations] == ["d = 0.2 / 0.5 / 0.8"]


def test_injection_examples_link_their_text_into_live_at_the_peak():
    examples = pd.DataFrame({
        "condition": ["target", "baseline", "injected"], "rank": [0, 0, 0], "strategy": [None, None, "prepend"],
        "text": ["b <x>", "a", "Wait a"], "token_ids": [[0, 1, 3], [0, 1], [0, 2, 1]],
        "activations": [[0.0, 0.5, 0.2], [0.0, 0.1], [0.0, 2.0, 0.3]],
    })
    rows = fv.injection_example_rows(examples, ["<bos>", "a", "Wait", "<x>"], "demo", "s", 4)
    assert list(rows) == ["baseline", "injected", "target"]
    injected = rows["injected"][0]
    assert injected.peak_index == 1 and "prepend" in injected.label and "max 2.000" in injected.label
    query = parse_qs(injected.href.split("?", 1)[1])
    assert injected.href.startswith("Live?") and query == {"run": ["demo"], "sae": ["s"], "text": ["Wait a"],
                                                            "feature": ["4"], "token": ["1"]}
    assert "&lt;x&gt;" in examples_html(rows["target"], 2.0)  # tokens escaped
