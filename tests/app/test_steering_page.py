"""The Steering page on a tiny run (miniature Qwen2, 20 synthetic traces, a random SAE): it follows
`?feature=`, generates, plots, stores the result and shows it back; bad input gets a message."""

import importlib
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from explorer.runs import database_path
from explorer.steering_store import read_causal_effects, read_steering_runs
from tests.hub_fixtures import mini_qwen2_dir  # noqa: F401  (fixture)
from tests.test_steering import build_tiny_steering_run

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "app_pages" / "steering.py"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, mini_qwen2_dir):  # noqa: F811
    runs = tmp_path_factory.mktemp("runs")
    return runs, build_tiny_steering_run(runs, mini_qwen2_dir)


def steering_app(runs: Path, monkeypatch, feature: int | None = None) -> AppTest:
    monkeypatch.setenv("EXPLORER_RUNS_DIR", str(runs))
    import explorer.artifacts

    importlib.reload(explorer.artifacts)  # the pickers read DEFAULT_RUNS_DIR when they run
    at = AppTest.from_file(str(PAGE), default_timeout=120)
    if feature is not None:
        at.query_params["feature"] = str(feature)
    return at


def test_page_follows_the_feature_link_and_has_no_result_yet(tiny_run, monkeypatch):
    runs, _ = tiny_run
    at = steering_app(runs, monkeypatch, feature=7)
    at.run()
    assert not at.exception
    assert at.number_input(key="steer_feature").value == 7
    assert "No stored steering result for feature 7" in at.info[0].value


def test_generate_shows_plot_texts_and_stores_the_result(tiny_run, monkeypatch):
    runs, run_dir = tiny_run
    at = steering_app(runs, monkeypatch, feature=3)
    at.run()
    at.text_input(key="steer_coefs").set_value("-6, 6")
    at.number_input(key="steer_n").set_value(2)
    at.number_input(key="steer_max_tokens").set_value(6)
    at.text_area(key="steer_prompt").set_value("What is <b>2</b> + 2?")
    at.button(key="steer_run").click().run()
    assert not at.exception, at.exception
    assert not at.error
    assert any("Feature 3: **add +6**" in m.value for m in at.markdown)
    assert at.dataframe[0].value["condition"].tolist() == ["baseline", "add -6", "add +6"]
    assert len(at.get("plotly_chart")) == 2  # this generation, and the stored run read back
    bodies = " ".join(h.proto.body for h in at.get("html"))
    assert "&lt;b&gt;2&lt;/b&gt;" in bodies and "<b>2</b>" not in bodies  # the prompt is escaped
    runs_stored = read_steering_runs(database_path(run_dir), "mini-sae", 3)
    assert len(runs_stored) == 1 and runs_stored[0].coefs == (-6.0, 6.0) and runs_stored[0].prompt_source == "page"
    assert 3 in read_causal_effects(database_path(run_dir), "mini-sae")
    at.selectbox(key="fresh_coef").set_value(-6.0).run()
    assert not at.exception

    # A fresh session on the same feature sees the stored result.
    later = steering_app(runs, monkeypatch, feature=3)
    later.run()
    assert not later.exception and not later.info
    assert later.dataframe[0].value["condition"].tolist() == ["baseline", "add -6", "add +6"]


def test_bad_input_gets_a_message_not_a_traceback(tiny_run, monkeypatch):
    runs, _ = tiny_run
    at = steering_app(runs, monkeypatch)
    at.run()
    at.text_input(key="steer_coefs").set_value("lots")
    at.button(key="steer_run").click().run()
    assert not at.exception
    assert "Coefficients must be numbers" in at.error[0].value
    at.text_input(key="steer_coefs").set_value("4")
    at.text_area(key="steer_prompt").set_value("   ")
    at.button(key="steer_run").click().run()
    assert not at.exception
    assert "The prompt is empty" in at.error[0].value
    at.button(key="steer_stop").click().run()
    assert not at.exception
