"""Every page runs under Streamlit's AppTest without an exception, on a real (small) run folder, alone
and through the app's navigation."""

import importlib
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from explorer.app.navigation import PAGES as APP_PAGES
from precompute.cli import main

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "app.py", *(REPO / page.script for page in APP_PAGES)]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    assert main(["corpus", "--n-traces", "200", "--out", str(root / "demo")]) == 0
    return root


def app_test(page: Path, runs_root: Path, monkeypatch) -> AppTest:
    monkeypatch.setenv("EXPLORER_RUNS_DIR", str(runs_root))
    import explorer.artifacts

    importlib.reload(explorer.artifacts)  # the pickers read DEFAULT_RUNS_DIR when they run
    return AppTest.from_file(str(page), default_timeout=60)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_runs_without_exception(page, runs_dir, monkeypatch):
    at = app_test(page, runs_dir, monkeypatch)
    at.run()
    assert not at.exception
    assert at.sidebar.selectbox(key="run_picker").value == "demo"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_empty_state_explains_how_to_build(page, tmp_path, monkeypatch):
    at = app_test(page, tmp_path, monkeypatch)
    at.run()
    assert not at.exception
    assert "make demo-data" in at.info[0].value


def test_every_page_script_is_in_the_navigation():
    assert sorted(p.name for p in (REPO / "app_pages").glob("*.py")) == sorted(Path(p.script).name for p in APP_PAGES)


def test_the_app_opens_on_home_and_its_navigation_reaches_every_page(runs_dir, monkeypatch):
    at = app_test(REPO / "app.py", runs_dir, monkeypatch)
    at.run()
    assert not at.exception
    assert APP_PAGES[0].title == "Home"
    assert at.title[0].value == "Backtracking feature explorer"  # the default page is Home
    titles = {"Corpus": "Corpus", "Live": "Live activations", "Features": "Feature browser",
              "Candidates": "Backtracking candidates", "Steering": "Steering"}
    for page in APP_PAGES[1:]:
        at.switch_page(page.script).run()
        assert not at.exception, page
        assert at.title[0].value == titles[page.title]
        assert at.sidebar.selectbox(key="run_picker").value == "demo"


def test_home_shows_the_corpus_counts(runs_dir, monkeypatch):
    at = app_test(REPO / "app.py", runs_dir, monkeypatch)
    at.run()
    text = " ".join(m.value for m in at.markdown)
    assert "**Traces:** 200" in text


def test_corpus_page_marks_phrases_and_follows_the_url(runs_dir, monkeypatch):
    at = app_test(REPO / "app_pages" / "corpus.py", runs_dir, monkeypatch)
    at.run()
    second = at.selectbox(key="doc_id").options[1]
    # A shared link (?doc=...) opens a fresh session on that trace.
    linked = app_test(REPO / "app_pages" / "corpus.py", runs_dir, monkeypatch)
    linked.query_params["doc"] = second
    linked.run()
    assert linked.selectbox(key="doc_id").value == second
    html = " ".join(h.proto.body for h in at.get("html"))
    assert "<mark" in html
    at.toggle(key="only_backtracking").set_value(False).run()
    assert not at.exception


def test_corpus_page_lists_a_page_of_ids_and_opens_a_linked_trace_on_its_page(runs_dir, monkeypatch):
    import html

    from explorer.corpus_views import PAGE_SIZE
    from explorer.runs import read_document_text

    at = app_test(REPO / "app_pages" / "corpus.py", runs_dir, monkeypatch)
    at.session_state["only_backtracking"] = False  # all 200 traces: two pages
    at.query_params["doc"] = "synth-000150"
    at.run()
    assert not at.exception
    assert not at.warning
    assert at.number_input(key="doc_page").value == 2
    assert at.selectbox(key="doc_id").value == "synth-000150"
    assert len(at.selectbox(key="doc_id").options) == 200 - PAGE_SIZE
    shown = " ".join(h.proto.body for h in at.get("html"))
    assert html.escape(read_document_text(runs_dir / "demo", "synth-000150").split("\n")[0]) in shown  # its problem

    at.number_input(key="doc_page").set_value(1).run()
    assert at.selectbox(key="doc_id").options[:2] == ["synth-000000", "synth-000001"]
    assert len(at.selectbox(key="doc_id").options) == PAGE_SIZE
    assert at.selectbox(key="doc_id").value == "synth-000000"
    at.text_input(key="doc_search").set_value("SYNTH-00004").run()  # synth-000040 ... synth-000049, in any case
    assert at.selectbox(key="doc_id").options == [f"synth-00004{i}" for i in range(10)]
    assert not at.exception


def test_home_shows_the_sae_report_of_a_real_database(runs_dir, monkeypatch):
    from explorer.database import Provenance, SAETrainingReportRow, utc_now, write_sae_training_report
    from explorer.runs import database_path
    from explorer.sae_metrics import TrainingCurvePoint

    run = runs_dir / "demo"
    row = SAETrainingReportRow(
        "blocks.0.hook_mlp_out-standard-64", "blocks.0.hook_mlp_out", "standard", 16, 64, None, "tiny", "saes/x",
        "trained", 1000, 1.0, 500, 4000, 5.0, 0.1, 0.9, 0.0, 0.05, 0.1, 1.0, 1.1, 2.0, 0.9, utc_now(),
    )
    curve = [TrainingCurvePoint(1, 64, 3.0, 2.0, 1.0, 30.0, 0.5), TrainingCurvePoint(2, 128, 2.0, 1.5, 0.5, 20.0, 0.7)]
    provenance = Provenance(profile={"name": "demo"}, package_versions={}, corpus_hash="x")
    write_sae_training_report(database_path(run), row, curve, provenance)
    at = app_test(REPO / "app.py", runs_dir, monkeypatch)
    at.run()
    assert not at.exception
    assert at.dataframe[-1].value["sae_id"].tolist() == ["blocks.0.hook_mlp_out-standard-64"]
    assert at.selectbox(key="curve_sae").value == "blocks.0.hook_mlp_out-standard-64"


def test_corpus_page_shows_each_sentences_label_sets_and_two_sets_compared(runs_dir, monkeypatch):
    at = app_test(REPO / "app_pages" / "corpus.py", runs_dir, monkeypatch)
    at.run()
    assert not at.exception
    sentences = at.dataframe[1].value  # after the chosen trace's row
    assert {"text", "tags"} <= set(sentences.columns) and len(sentences) > 1
    assert any("tag:" in tags for tags in sentences["tags"])  # the synthetic corpus's own sentence tags
    at.toggle(key="compare_label_sets").set_value(True).run()
    at.selectbox(key="agreement_a").set_value("sentence:backtracking")
    at.selectbox(key="agreement_b").set_value("tag:uncertainty_management").run()
    assert not at.exception
    comparison = at.dataframe[2].value
    assert {"precision", "recall"} <= set(comparison.columns) and len(comparison) >= 1
    assert 0 < comparison["precision"].iloc[0] <= 1
    html = " ".join(h.proto.body for h in at.get("html"))
    assert "sentence:backtracking and tag:uncertainty_management" in html  # both sets mark a sentence
