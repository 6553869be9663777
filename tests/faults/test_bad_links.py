"""Stale and malformed links: on every page, each parameter whose value is not valid gets one warning
that names the parameter, its value (cut to about 40 characters) and what the page shows instead; a
valid link is followed without a word. Also the Live page's bounds: a huge trace is rendered as far as
the model ran, with a note of what was left out."""

from __future__ import annotations

import pytest

from explorer.app.link_params import VALUE_CHARS, shorten
from explorer.runs import read_document_list
from tests.faults.conftest import app_page, messages
from tests.faults.fault_runs import RUN, STEERED_FEATURE, folder_hashes

LONG = "x" * 500 + "<script>alert(1)</script>"


def bad_link_warnings(at, name: str) -> list[str]:
    return [w.value for w in at.warning if f"`{name}=" in w.value]


def a_doc(run_dir, *, backtracking: bool) -> str:
    documents = read_document_list(run_dir)
    return str(documents.loc[documents["has_backtracking"] == backtracking, "doc_id"].iloc[0])


# (page, the link's parameters beside run and sae, the bad parameter, words of what is shown instead)
CASES = [
    ("home", {"run": "gone-run"}, "run", f"run `{RUN}`"),
    ("corpus", {"run": "gone-run"}, "run", f"run `{RUN}`"),
    ("corpus", {"doc": "nope"}, "doc", "trace `"),
    ("corpus", {"doc": LONG}, "doc", "trace `"),
    ("live", {"sae": "gone-sae"}, "sae", "SAE `"),
    ("live", {"doc": "nope", "feature": STEERED_FEATURE}, "doc", "the example trace"),
    ("live", {"feature": "abc"}, "feature", "the text's top feature"),
    ("live", {"feature": 999999}, "feature", "the text's top feature"),
    ("live", {"feature": -1}, "feature", "the text's top feature"),
    ("live", {"token": 5}, "token", "the middle token"),
    ("live", {"doc": "<doc>", "token": -5}, "token", "the middle token"),
    ("live", {"doc": "<doc>", "token": "abc"}, "token", "the middle token"),
    ("live", {"doc": "<doc>", "token": 10**9}, "token", "the middle token"),
    ("features", {"sae": "gone-sae"}, "sae", "SAE `"),
    ("features", {"feature": "abc"}, "feature", "the top candidate"),
    ("features", {"feature": 999999}, "feature", "the top candidate"),
    ("features", {"feature": LONG}, "feature", "the top candidate"),
    ("candidates", {"score": "bogus"}, "score", "Backtracking AUROC"),
    ("candidates", {"score": LONG}, "score", "Backtracking AUROC"),
    ("steering", {"feature": 999999}, "feature", "feature 0"),
    ("steering", {"feature": "abc"}, "feature", "feature 0"),
    ("steering", {"feature": -3}, "feature", "feature 0"),
]


@pytest.mark.parametrize("page, params, bad, instead", CASES,
                         ids=[f"{c[0]}-{'-'.join(f'{k}={str(v)[:8]}' for k, v in c[1].items())}" for c in CASES])
def test_a_bad_parameter_gets_one_warning_naming_it_its_value_and_what_is_shown(
    page, params, bad, instead, built_run, sae_id, monkeypatch
):
    params = {"run": RUN, "sae": sae_id, **params}
    params = {k: a_doc(built_run, backtracking=True) if v == "<doc>" else v for k, v in params.items()}
    at = app_page(page, built_run.parent, monkeypatch, **params)
    before = folder_hashes(built_run)
    at.run()
    assert not at.exception, at.exception
    assert folder_hashes(built_run) == before  # a bad link writes nothing
    warnings = bad_link_warnings(at, bad)
    assert len(warnings) == 1, messages(at)
    warning = warnings[0]
    assert f"`{bad}={shorten(str(params[bad]))}`" in warning, warning
    assert len(shorten(str(params[bad]))) <= VALUE_CHARS + 1
    assert instead in warning and "instead" in warning, warning
    assert "<script>" not in warning
    assert not at.error, [e.value for e in at.error]
    for name in {"run", "sae", "doc", "feature", "token", "score"} - {bad}:
        assert not bad_link_warnings(at, name), messages(at)


@pytest.mark.parametrize("page, params", [
    ("corpus", {"doc": "<doc>"}),
    ("corpus", {"doc": "<quiet doc>"}),
    ("live", {"doc": "<doc>", "feature": STEERED_FEATURE, "token": 5}),
    ("live", {"feature": STEERED_FEATURE}),
    ("features", {"feature": STEERED_FEATURE}),
    ("candidates", {"score": "reason_score"}),
    ("steering", {"feature": STEERED_FEATURE}),
])
def test_a_valid_link_is_followed_without_a_word(page, params, built_run, sae_id, monkeypatch):
    docs = {"<doc>": a_doc(built_run, backtracking=True), "<quiet doc>": a_doc(built_run, backtracking=False)}
    params = {"run": RUN, "sae": sae_id, **{k: docs.get(v, v) for k, v in params.items()}}
    at = app_page(page, built_run.parent, monkeypatch, **params)
    at.run()
    assert not at.exception and not at.error, messages(at)
    assert not any(bad_link_warnings(at, name) for name in ("run", "sae", "doc", "feature", "token", "score"))
    followed = {
        "corpus": lambda: at.selectbox(key="doc_id").value == params["doc"],
        "live": lambda: at.number_input(key="live_feature").value == STEERED_FEATURE,
        "features": lambda: at.number_input(key="feature_id").value == STEERED_FEATURE,
        "candidates": lambda: at.selectbox(key="rank_by").value == "reason_score",
        "steering": lambda: at.number_input(key="steer_feature").value == STEERED_FEATURE,
    }
    assert followed[page]()
    if page == "live" and "token" in params:
        assert at.slider(key="live_position").value == 5


def test_a_bad_value_warns_once_not_on_every_rerun(built_run, sae_id, monkeypatch):
    at = app_page("steering", built_run.parent, monkeypatch, run=RUN, sae=sae_id, feature="abc")
    at.run()
    assert len(bad_link_warnings(at, "feature")) == 1
    at.number_input(key="steer_feature").set_value(2).run()
    assert not at.exception and not bad_link_warnings(at, "feature")


def test_live_renders_what_it_ran_and_says_what_it_left_out(built_run, sae_id, monkeypatch):
    """A 500,000-character trace: the model runs its first n_ctx tokens, and the phrase view shows the
    text those tokens cover, not all 500,000 characters."""
    sentence = "Let me compute 12 * 7 = 84. Wait, that's not right, 12 * 7 = 84 is right. "
    huge = sentence * (500_000 // len(sentence) + 1)
    at = app_page("live", built_run.parent, monkeypatch, run=RUN, sae=sae_id)
    at.run()
    at.text_area(key="live_text").input(huge).run(timeout=300)
    assert not at.exception
    rendered = sum(len(h.proto.body) for h in at.get("html"))
    assert rendered < 60_000, rendered  # the run's 64 tokens, marked up: not the 500,000 characters
    note = " ".join(m.value for m in [*at.warning, *at.caption, *at.info])
    assert "left out" in note and f"{len(huge):,}" in note, note
