"""The Features and Candidates pages (and the Live page's links to and from them) on a miniature
indexed run: deep links reproduce a card, widgets drive it by key, broken links and databases get a
message, and token strings are shown as text."""

import importlib
import json
import shutil
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from explorer.feature_db import read_candidates, read_feature_card
from explorer.runs import database_path
from explorer.feature_views import INJECTION_COLUMN, NOT_TESTED, VERDICT_LABELS
from explorer.injection_store import read_injection_examples, read_injection_verdicts
from tests.app.indexed_runs import D_SAE, INJECTED_RUN, SAE_ID, UNINDEXED_SAE_ID, indexed_runs_root
from tests.hub_fixtures import mini_qwen2_dir  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[2]
FEATURES = REPO / "app_pages" / "features.py"
CANDIDATES = REPO / "app_pages" / "candidates.py"
LIVE = REPO / "app_pages" / "live.py"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mini_qwen2_dir):  # noqa: F811
    return indexed_runs_root(tmp_path_factory, mini_qwen2_dir)


@pytest.fixture(scope="module")
def best(runs):
    """The mini run's top candidate among the features that fire, and its card."""
    db = database_path(runs / "mini")
    feature = int(read_candidates(db, SAE_ID, min_density=1e-9, limit=1)["feature_id"][0])
    return read_feature_card(db, SAE_ID, feature)


def page(path: Path, runs: Path, monkeypatch, **params) -> AppTest:
    monkeypatch.setenv("EXPLORER_RUNS_DIR", str(runs))
    import explorer.artifacts

    importlib.reload(explorer.artifacts)  # the pickers read DEFAULT_RUNS_DIR when they run
    at = AppTest.from_file(str(path), default_timeout=120)
    for name, value in {"run": "mini", **params}.items():
        at.query_params[name] = str(value)
    return at


def html_bodies(at: AppTest) -> str:
    return " ".join(h.proto.body for h in at.get("html"))


def messages(at: AppTest) -> str:
    return " ".join(m.value for m in [*at.error, *at.info, *at.warning])


# --- Features ---------------------------------------------------------------------------------------


def test_a_deep_link_reproduces_the_card(runs, best, monkeypatch):
    f = best.feature_id
    linked = page(FEATURES, runs, monkeypatch, sae=SAE_ID, feature=f)
    linked.run()
    assert not linked.exception and not linked.error
    assert linked.number_input(key="feature_id").value == f
    assert linked.subheader[0].value == f"Feature {f}"
    assert linked.query_params["feature"] == [str(f)] or linked.query_params["feature"] == str(f)
    body = html_bodies(linked)
    assert "open in Live" in body and 'title="' in body and "outline" in body
    assert len(linked.get("plotly_chart")) == 4  # histogram, lead-lag, group AUROC, word shares
    evidence = linked.table[0].value
    assert "AUROC, six backtracking groups" in evidence.index and "Promotes Wait?" in evidence.index
    frames = [d.value for d in linked.dataframe]
    neighbours = next(f for f in frames if "card" in f.columns)
    assert neighbours["card"].str.startswith(f"Features?run=mini&sae={SAE_ID}&feature=").all()
    label_scores = next(f for f in frames if "sentence_auroc" in f.columns)  # the card's label-set table
    assert {"backtracking", "sentence:backtracking"} <= set(label_scores["label"])

    assert "top candidate" not in messages(linked)  # a linked card is not the page's own choice

    # The same card reached by typing the id in a fresh session.
    typed = page(FEATURES, runs, monkeypatch, sae=SAE_ID)
    typed.run()
    typed.number_input(key="feature_id").set_value(f).run()
    assert not typed.exception
    assert typed.subheader[0].value == f"Feature {f}"
    assert html_bodies(typed) == body
    assert typed.query_params["feature"] in ([str(f)], str(f))


def test_the_card_shows_its_top_tokens_and_a_note_for_an_older_index(runs, best, monkeypatch, tmp_path):
    at = page(FEATURES, runs, monkeypatch, sae=SAE_ID, feature=best.feature_id)
    at.run()
    assert not at.exception and not best.token_stats.empty
    tokens = next(d.value for d in at.dataframe if "mean activation" in d.value.columns)
    assert list(tokens["mean activation"]) == best.token_stats["mean_activation"].round(4).tolist()
    assert list(tokens["count"]) == list(best.token_stats["token_count"])
    labels = [m.label for m in at.metric]
    assert "Token entropy" in labels and f"Mass on top {best.token_dependence['top_k']} tokens" in labels

    old = tmp_path / "runs"
    shutil.copytree(runs / "mini", old / "mini", ignore=shutil.ignore_patterns("explorer.duckdb.lock"))
    con = duckdb.connect(str(database_path(old / "mini")))
    con.execute("DROP TABLE feature_token_stats")
    con.execute("DROP TABLE feature_token_dependence")
    con.close()
    older = page(FEATURES, old, monkeypatch, sae=SAE_ID, feature=best.feature_id)
    older.run()
    assert not older.exception and not older.error
    assert any("predates the token statistics" in c.value for c in older.caption)
    assert "Token entropy" not in [m.label for m in older.metric]


def test_without_a_feature_the_page_opens_on_the_top_candidate_and_says_so(runs, monkeypatch):
    top = read_candidates(database_path(runs / "mini"), SAE_ID, "auroc_notebook", min_density=1e-4, limit=1)
    f = int(top["feature_id"][0])  # the Candidates page's first row at its defaults
    at = page(FEATURES, runs, monkeypatch, sae=SAE_ID)
    at.run()
    assert not at.exception and not at.error
    assert at.number_input(key="feature_id").value == f
    assert at.subheader[0].value == f"Feature {f}"
    assert at.query_params["feature"] in ([str(f)], str(f))
    note = at.info[0].value
    assert f"Showing feature {f}, the top candidate" in note
    assert "Backtracking AUROC (the notebook's six groups)" in note and "density at least 1e-04" in note

    other = (f + 1) % D_SAE
    at.number_input(key="feature_id").set_value(other).run()
    assert not at.exception and at.subheader[0].value == f"Feature {other}"
    assert "top candidate" not in messages(at)
    at.number_input(key="feature_id").set_value(None).run()  # cleared: the page asks for an id
    assert not at.exception and "Type a feature id" in at.info[0].value


def test_unknown_ids_and_stale_links_get_a_message(runs, monkeypatch):
    at = page(FEATURES, runs, monkeypatch, sae=SAE_ID, feature=D_SAE + 5)
    at.run()
    assert not at.exception and not at.error
    warning = at.warning[0].value
    assert f"`feature={D_SAE + 5}` names no feature" in warning and f"0 to {D_SAE - 1}" in warning
    assert "showing the top candidate" in warning

    ranked = read_candidates(database_path(runs / "mini"), SAE_ID, limit=D_SAE)
    dead = ranked.loc[ranked["density"] == 0, "feature_id"]
    if len(dead):
        at = page(FEATURES, runs, monkeypatch, sae=SAE_ID, feature=int(dead.iloc[0]))
        at.run()
        assert not at.exception and "never fired" in " ".join(c.value for c in at.caption)

    at = page(FEATURES, runs, monkeypatch, sae=SAE_ID, feature="seven")
    at.run()
    assert not at.exception and "`feature=seven` is not a feature id" in at.warning[0].value

    at = page(FEATURES, runs, monkeypatch, sae="gone-sae", feature=1)
    at.run()
    assert not at.exception and "`sae=gone-sae` names no SAE of this run" in at.warning[0].value

    at = page(FEATURES, runs, monkeypatch, run="gone-run", sae=SAE_ID, feature=1)
    at.run()
    assert not at.exception and "`run=gone-run` names no run" in at.warning[0].value


@pytest.mark.parametrize("path", [FEATURES, CANDIDATES], ids=lambda p: p.name)
def test_missing_index_missing_and_corrupt_databases_get_a_message(path, runs, monkeypatch):
    cases = [
        ({"run": "mini", "sae": UNINDEXED_SAE_ID}, "precompute index"),
        ({"run": "noindex", "sae": SAE_ID}, "no database yet"),
        ({"run": "corrupt", "sae": SAE_ID}, "is damaged"),
    ]
    for params, expected in cases:
        at = page(path, runs, monkeypatch, **params, feature=1)
        at.run()
        assert not at.exception, params
        assert expected in messages(at), (params, messages(at))


def test_find_a_feature_by_logit_lens_and_example_token(runs, best, monkeypatch):
    at = page(FEATURES, runs, monkeypatch, sae=SAE_ID)
    at.run()
    top_token = best.logit_lens[best.logit_lens["direction"] == "top"]["token"].iloc[0]
    at.text_input(key="find_logit_token").input(top_token).run()
    assert not at.exception
    found = at.dataframe[0].value
    assert best.feature_id in set(found["feature_id"])
    picker = at.selectbox(key="pick_logit")
    picker.select_index(list(found["feature_id"]).index(best.feature_id)).run()
    assert not at.exception
    assert at.number_input(key="feature_id").value == best.feature_id
    assert at.subheader[0].value == f"Feature {best.feature_id}"

    at = page(FEATURES, runs, monkeypatch, sae=SAE_ID)
    at.run()
    from explorer.feature_db import read_vocabulary

    example = best.top_examples.iloc[0]
    peak = read_vocabulary(database_path(runs / "mini"))[int(example["token_ids"][example["position"] - example["first_position"]])]
    at.text_input(key="find_example_token").input(peak).run()
    assert not at.exception
    assert best.feature_id in set(at.dataframe[0].value["feature_id"])
    at.text_input(key="find_example_token").input("no-such-token-anywhere").run()
    assert "No feature found." in [c.value for c in at.caption]


def test_find_the_features_that_fire_on_a_text(runs, monkeypatch):
    at = page(FEATURES, runs, monkeypatch, sae=SAE_ID)
    at.run()
    at.text_area(key="find_text").input("First, 3 + 4 = 7.\nWait, that's not right: 3 + 4 = 8? No, 7. I made a mistake.").run()
    at.button(key="find_text_run").click().run()
    assert not at.exception
    found = at.dataframe[0].value
    assert len(found) > 0 and list(found["max_activation"]) == sorted(found["max_activation"], reverse=True)
    at.selectbox(key="pick_text").select_index(0).run()
    assert not at.exception
    assert at.number_input(key="feature_id").value == int(found["feature_id"][0])
    assert at.subheader[0].value == f"Feature {int(found['feature_id'][0])}"


def test_token_strings_with_markup_show_as_text(runs, best, monkeypatch):
    at = page(FEATURES, runs, monkeypatch, run="xss", sae=SAE_ID, feature=best.feature_id)
    at.run()
    assert not at.exception
    body = html_bodies(at)
    assert "<script" not in body and "<img" not in body
    assert "&lt;script&gt;" in body and "&lt;img src=x onerror=" in body
    # Tables get the strings as data, shown as text.
    promoted = at.dataframe[0].value
    assert promoted["token"].str.contains("<script>").any() or promoted["token"].str.contains("<img").any()


def test_the_sae_vis_export_builds_or_explains(runs, best, monkeypatch):
    at = page(FEATURES, runs, monkeypatch, sae=SAE_ID, feature=best.feature_id)
    at.run()
    at.button(key="sae_vis_build").click().run()
    assert not at.exception
    from explorer.sae_vis_export import sae_vis_available

    if sae_vis_available():
        assert not at.error and at.get("download_button"), messages(at)
    else:
        assert "sae-vis is not installed" in messages(at) or "sae-vis" in messages(at)


# --- Candidates -------------------------------------------------------------------------------------


def test_candidates_rank_filter_link_and_download(runs, monkeypatch):
    at = page(CANDIDATES, runs, monkeypatch, sae=SAE_ID)
    at.run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["score"]) == sorted(table["score"], reverse=True)
    assert (table["card"] == [f"Features?run=mini&sae={SAE_ID}&feature={f}" for f in table["feature_id"]]).all()
    assert at.get("download_button") and at.get("plotly_chart")

    at.selectbox(key="rank_by").set_value("group:correction").run()
    assert not at.exception
    by_group = at.dataframe[0].value
    assert list(by_group["score"]) == sorted(by_group["score"], reverse=True)
    assert at.query_params["score"] in (["group:correction"], "group:correction")

    at.select_slider(key="min_density").set_value(1e-2).run()
    at.toggle(key="hide_token_detectors").set_value(True).run()
    assert not at.exception
    filtered = at.dataframe[0].value if at.dataframe else None
    if filtered is not None:
        assert (filtered["density"] >= 1e-2).all() and not filtered["is_token_detector"].any()
    else:
        assert "No feature passes these filters" in at.info[0].value


def test_every_candidates_column_has_a_readable_label_and_help(runs, monkeypatch):
    at = page(CANDIDATES, runs, monkeypatch, sae=SAE_ID)
    at.run()
    assert not at.exception
    table = at.dataframe[0]
    config = json.loads(table.proto.columns)  # st.column_config as the browser gets it
    for name in table.value.columns:
        assert config.get(name, {}).get("help"), f"column {name!r} has no help"
        assert config[name].get("label"), f"column {name!r} has no label"
    window = config["doc_window_max_delta"]
    assert window["label"] == "window max: with − without"
    assert "in traces with backtracking minus traces without" in window["help"]
    identity = config["margin_over_identity"]
    assert identity["label"] == "margin over token identity" and "token id alone" in identity["help"]
    assert "Backtracking AUROC (the notebook's six groups)" in config["score"]["help"]

    at.selectbox(key="rank_by").set_value("reason_score").run()
    assert "ReasonScore" in json.loads(at.dataframe[0].proto.columns)["score"]["help"]


def test_a_candidates_link_reproduces_the_ranking(runs, monkeypatch):
    at = page(CANDIDATES, runs, monkeypatch, sae=SAE_ID, score="reason_score")
    at.run()
    assert not at.exception
    assert at.selectbox(key="rank_by").value == "reason_score"
    expected = read_candidates(database_path(runs / "mini"), SAE_ID, "reason_score", min_density=1e-4, limit=100)
    assert list(at.dataframe[0].value["feature_id"]) == list(expected["feature_id"])


# --- the token-injection test: the Candidates column and filter, the card's panel, links into Live ------


@pytest.fixture(scope="module")
def verdicts(runs):
    return read_injection_verdicts(database_path(runs / INJECTED_RUN), SAE_ID)


def test_candidates_show_the_injection_verdict_and_hide_token_driven(runs, verdicts, monkeypatch):
    assert {"token_driven", "context_dependent"} <= set(verdicts["verdict"])  # the fixture has both kinds
    at = page(CANDIDATES, runs, monkeypatch, run=INJECTED_RUN, sae=SAE_ID)
    at.run()
    assert not at.exception and not at.error
    table = at.dataframe[0]
    shown = table.value
    config = json.loads(table.proto.columns)[INJECTION_COLUMN]
    assert config["label"] == "token injection" and "d ≥ 0.8 and p < 0.01" in config["help"]
    readable = dict(zip(verdicts["feature_id"], verdicts["verdict"].map(VERDICT_LABELS)))
    for feature, verdict in zip(shown["feature_id"], shown[INJECTION_COLUMN]):
        assert verdict == readable.get(feature, NOT_TESTED)
    assert (shown[INJECTION_COLUMN] == "token-driven").any() and (shown[INJECTION_COLUMN] == NOT_TESTED).any()
    assert "precompute inject" not in " ".join(c.value for c in at.caption)

    at.toggle(key="hide_token_driven").set_value(True).run()
    assert not at.exception
    hidden = at.dataframe[0].value
    assert not (hidden[INJECTION_COLUMN] == "token-driven").any()
    kept = shown[shown[INJECTION_COLUMN] != "token-driven"]  # untested features (blank) stay
    assert list(hidden["feature_id"]) == list(kept["feature_id"])


def test_candidates_without_injection_results_say_how_to_add_them(runs, monkeypatch):
    at = page(CANDIDATES, runs, monkeypatch, sae=SAE_ID)  # the mini run: no injection tables in its file
    at.run()
    assert not at.exception and not at.error
    assert INJECTION_COLUMN not in at.dataframe[0].value.columns
    assert at.toggle(key="hide_token_driven").disabled
    assert any(f"python -m precompute inject --run {runs / 'mini'} --sae {SAE_ID}" in c.value for c in at.caption)


def test_the_card_of_an_injected_feature_shows_the_test(runs, verdicts, monkeypatch):
    row = verdicts.iloc[0]
    feature = int(row["feature_id"])
    at = page(FEATURES, runs, monkeypatch, run=INJECTED_RUN, sae=SAE_ID, feature=feature)
    at.run()
    assert not at.exception and not at.error
    assert "Token injection" in [h.value for h in at.subheader]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Verdict"] == VERDICT_LABELS[row["verdict"]]
    assert f"Cohen's d ({row['best_strategy']})" in metrics and "d minus null" in metrics
    charts = at.get("plotly_chart")
    assert len(charts) == 5  # the card's four, and Cohen's d per strategy
    figure = json.loads(charts[-1].proto.spec)
    assert [t["type"] for t in figure["data"]] == ["bar", "scatter"]
    assert sorted(s["y0"] for s in figure["layout"]["shapes"]) == [0.2, 0.5, 0.8]
    assert {"prepend", "append", "bigram_before", "trigram"} == set(figure["data"][0]["x"])
    headings = " ".join(m.value for m in at.markdown)
    assert "Baseline:" in headings and "Injected:" in headings and "Target:" in headings
    body = html_bodies(at)
    examples = read_injection_examples(database_path(runs / INJECTED_RUN), SAE_ID, feature)
    assert body.count(f"Live?run={INJECTED_RUN}&amp;sae={SAE_ID}&amp;text=") == len(examples) == 9


def test_a_card_without_injection_results_says_so(runs, verdicts, monkeypatch):
    untested = next(f for f in range(D_SAE) if f not in set(verdicts["feature_id"]))
    at = page(FEATURES, runs, monkeypatch, run=INJECTED_RUN, sae=SAE_ID, feature=untested)
    at.run()
    assert not at.exception and not at.error
    assert any(c.value.startswith("Not tested") and f"--features {untested}" in c.value for c in at.caption)
    assert len(at.get("plotly_chart")) == 4

    older = page(FEATURES, runs, monkeypatch, sae=SAE_ID, feature=int(verdicts["feature_id"].iloc[0]))
    older.run()  # the mini run's file has no injection tables
    assert not older.exception and not older.error
    assert any("No token-injection results" in c.value and "precompute inject --run" in c.value for c in older.caption)


def test_an_injection_example_opens_in_live(runs, verdicts, monkeypatch):
    feature = int(verdicts["feature_id"].iloc[0])
    example = read_injection_examples(database_path(runs / INJECTED_RUN), SAE_ID, feature)
    injected = example[example["condition"] == "injected"].iloc[0]
    at = page(LIVE, runs, monkeypatch, run=INJECTED_RUN, sae=SAE_ID, text=injected["text"], feature=feature, token=2)
    at.run()
    assert not at.exception and not at.warning
    assert at.text_area(key="live_text").value == injected["text"]
    assert at.number_input(key="live_feature").value == feature
    assert at.slider(key="live_position").value == 2
    at.text_area(key="live_text").input("Wait, that's not right.").run()
    assert not at.exception and "text" not in at.query_params


# --- Live: the card's "open in Live", and the top features with links to their cards -----------------


def first_window_example(runs: Path):
    """A (card, example) whose example lies in its document's first window, which Live runs whole."""
    db = database_path(runs / "mini")
    for f in read_candidates(db, SAE_ID, min_density=1e-9, limit=D_SAE)["feature_id"]:
        card = read_feature_card(db, SAE_ID, int(f))
        first = card.top_examples[card.top_examples["token_offset"] == 0]
        if len(first):
            return card, first.iloc[0]
    pytest.fail("no top example lies in a first window")


def test_open_an_example_in_live(runs, monkeypatch):
    card, example = first_window_example(runs)
    token = int(example["position"])
    at = page(LIVE, runs, monkeypatch, sae=SAE_ID, doc=example["doc_id"], feature=card.feature_id, token=token)
    at.run()
    assert not at.exception
    from explorer.runs import read_documents

    documents = read_documents(runs / "mini", columns=["doc_id", "text"]).set_index("doc_id")
    assert at.text_area(key="live_text").value == documents.loc[example["doc_id"], "text"]
    assert at.number_input(key="live_feature").value == card.feature_id
    assert at.slider(key="live_position").value == token
    # The card's value at the example's token is what Live computes there.
    shown = next(h.proto.body for h in at.get("html") if f'title="token {token}:' in h.proto.body)
    assert f'title="token {token}: {example["activation"]:.3f}"' in shown
    top = next(d.value for d in at.dataframe if "card" in d.value.columns)  # the right column's table
    assert {"auroc_notebook", "reason_score"} <= set(top.columns)
    assert top["card"].str.startswith(f"Features?run=mini&sae={SAE_ID}&feature=").all()

    # Editing the text drops the link from the URL.
    at.text_area(key="live_text").input("Wait, that's not right.").run()
    assert not at.exception and "doc" not in at.query_params


def test_a_live_link_beyond_the_context_says_so(runs, best, monkeypatch):
    example = best.top_examples.iloc[0]
    token = int(example["token_offset"]) + int(example["position"])
    at = page(LIVE, runs, monkeypatch, sae=SAE_ID, doc=example["doc_id"], feature=best.feature_id, token=token)
    at.run()
    assert not at.exception
    if token >= 64:
        assert "Live runs its first 64 tokens" in messages(at)


def test_a_stale_live_link_gets_a_warning(runs, monkeypatch):
    at = page(LIVE, runs, monkeypatch, sae=SAE_ID, doc="synth-999999", feature=1, token=3)
    at.run()
    assert not at.exception
    assert "synth-999999" in at.warning[0].value
