"""The app in a real browser: start `streamlit run app.py`, visit every page and a deep link in
headless Chromium, check that no Streamlit exception element shows, and save a screenshot of each.

Screenshots go to `test-artifacts/screenshots/` (git-ignored) so a person can look at them.
"""

import re
import shutil
from pathlib import Path

import pytest

from precompute.cli import main
from tests.app.indexed_runs import HOOK, INJECTED_RUN, SAE_ID, indexed_runs_root
from tests.browser.streamlit_browser import HAVE_CHROMIUM, REPO, chromium_browser, open_page, serve_app, settle
from tests.hub_fixtures import mini_qwen2_dir  # noqa: F401  (fixture)

SCREENSHOTS = REPO / "test-artifacts" / "screenshots"

pytestmark = pytest.mark.skipif(not HAVE_CHROMIUM, reason="Debian's chromium is not installed (`make browser`)")


@pytest.fixture(scope="module")
def indexed_run(tmp_path_factory, mini_qwen2_dir):  # noqa: F811
    """A tiny model, SAE and feature index (tests/app/indexed_runs.py)."""
    return indexed_runs_root(tmp_path_factory, mini_qwen2_dir) / "mini"


@pytest.fixture(scope="module")
def server(tmp_path_factory, indexed_run):
    """The app on a runs folder holding `demo` (a corpus only), `mini` (the indexed run) and `injected`
    (the indexed run with the token-injection test)."""
    runs = tmp_path_factory.mktemp("runs")
    assert main(["corpus", "--n-traces", "200", "--out", str(runs / "demo")]) == 0
    shutil.copytree(indexed_run, runs / "mini")
    shutil.copytree(indexed_run.parent / INJECTED_RUN, runs / INJECTED_RUN)
    with serve_app(runs) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with chromium_browser() as browser:
        yield browser


@pytest.fixture(scope="module")
def browser_page(browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    yield page
    page.close()


def visit(page, url: str, expected_text: str, screenshot: str) -> None:
    open_page(page, url, expected_text)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / screenshot), full_page=True)


@pytest.mark.parametrize(
    "path, expected_text, screenshot",
    [
        ("/", "With backtracking", "home.png"),
        ("/Corpus", "Only traces with backtracking", "corpus.png"),
        ("/Corpus?doc=synth-000016", "Solve this math problem", "corpus-deep-link.png"),
        ("/Live", "This run has no SAE yet", "live-without-sae.png"),
        ("/Features", "This run has no SAE yet", "features-without-sae.png"),
        ("/Features?run=mini", "the top candidate", "features.png"),
        ("/Candidates?run=mini", "Lead-lag profiles of the top features", "candidates.png"),
        (f"/Candidates?run={INJECTED_RUN}", "Hide token-driven", "candidates-injected.png"),
        ("/Features?run=mini&feature=100000", "names no feature", "features-unknown-id.png"),
    ],
)
def test_page_renders_without_exception(server, browser_page, path, expected_text, screenshot):
    visit(browser_page, server + path, expected_text, screenshot)


def test_the_sidebar_lists_home_first_then_every_page(server, browser_page):
    from explorer.app.navigation import PAGES

    visit(browser_page, f"{server}/Corpus?run=mini", "Only traces with backtracking", "corpus-mini.png")
    entries = browser_page.locator('[data-testid="stSidebarNav"] a')
    assert entries.all_inner_texts() == [page.title for page in PAGES]
    assert entries.first.inner_text() == "Home"
    entries.first.click()
    browser_page.wait_for_function("document.title === 'Backtracking feature explorer'", timeout=60_000)
    browser_page.get_by_text("With backtracking").first.wait_for(timeout=60_000)


def test_deep_link_opens_the_linked_trace_with_marked_phrases(server, browser_page):
    visit(browser_page, server + "/Corpus?doc=synth-000016", "Solve this math problem", "corpus-deep-link.png")
    from explorer.synthetic import generate_traces

    linked_problem = generate_traces(17)[16].record.metadata["problem_text"]
    # Once in the trace, and once in its sentence view.
    assert browser_page.get_by_text(f"Problem: {linked_problem}", exact=False).count() >= 1
    marks = browser_page.locator("mark")
    assert marks.count() > 7  # the legend's 8 marks plus the trace's phrases
    assert "synth-000016" in browser_page.url


def test_a_card_link_opens_the_card_and_its_example_in_live(server, browser_page, indexed_run):
    from explorer.feature_db import read_candidates
    from explorer.runs import database_path

    db = database_path(indexed_run)
    feature = int(read_candidates(db, SAE_ID, min_density=1e-9, limit=1)["feature_id"][0])
    visit(browser_page, f"{server}/Features?run=mini&sae={SAE_ID}&feature={feature}", "Backtracking evidence", "feature-card.png")
    assert browser_page.get_by_text(f"Feature {feature}", exact=True).count() == 1
    assert browser_page.locator("span[title]").count() > 0  # per-token values on hover
    live_link = browser_page.get_by_text("open in Live").first
    href = live_link.get_attribute("href")
    assert href.startswith("Live?") and f"feature={feature}" in href
    visit(browser_page, f"{server}/{href}", "Top features over the text", "live-from-card.png")
    assert f"feature={feature}" in browser_page.url


def test_a_card_shows_its_token_injection_test_and_opens_an_example_in_live(server, browser_page, indexed_run):
    from explorer.injection_store import read_injection_verdicts
    from explorer.runs import database_path

    verdicts = read_injection_verdicts(database_path(indexed_run.parent / INJECTED_RUN), SAE_ID)
    feature = int(verdicts["feature_id"].iloc[0])
    visit(browser_page, f"{server}/Features?run={INJECTED_RUN}&sae={SAE_ID}&feature={feature}", "Token injection",
          "feature-card-injection.png")
    injected = browser_page.get_by_text("Injected: the same windows", exact=False).first
    injected.wait_for(timeout=60_000)
    injected.scroll_into_view_if_needed()
    browser_page.screenshot(path=str(SCREENSHOTS / "feature-card-injection-panel.png"))
    links = browser_page.locator('a[href*="text="]')
    assert links.count() == 9  # three windows per condition
    href = links.nth(3).get_attribute("href")  # the first injected window
    assert href.startswith("Live?") and f"feature={feature}" in href
    visit(browser_page, f"{server}/{href}", "Top features over the text", "live-from-injection.png")
    assert "text=" in browser_page.url


def test_two_sessions_running_live_at_once_each_get_their_own_result(server, browser, indexed_run):
    """Two browser sessions open Live on different traces at the same time (the server runs their
    scripts in two threads; `explorer.model_loading.MODEL_LOCK` serialises the model calls): each page shows
    its own trace's token count, top feature and per-token values, as a direct computation gives them."""
    from explorer import artifacts
    from explorer.live import compute_live_activations, compute_top_features
    from explorer.model_loading import load_model
    from explorer.runs import read_documents, read_run_summary
    from explorer.sae_loading import load_sae

    profile = read_run_summary(indexed_run).profile
    model = load_model(profile.model, device="cpu", n_ctx=profile.n_ctx)
    sae = load_sae(indexed_run / artifacts.SAES_DIR / SAE_ID).sae
    documents = read_documents(indexed_run, columns=["doc_id", "text"])
    expected = {}
    for doc_id, text in zip(documents["doc_id"], documents["text"]):
        live = compute_live_activations(model, sae, HOOK, text)
        top = compute_top_features(live, k=1)[0].feature_id
        if not expected or (len(expected) == 1 and top not in {e[1] for e in expected.values()}):
            expected[doc_id] = (len(live.token_ids), top, live.acts_TF[:, top].tolist())
        if len(expected) == 2:
            break
    if len(expected) < 2:  # every trace has the same top feature: still two different texts
        doc_id = documents["doc_id"].iloc[1]
        live = compute_live_activations(model, sae, HOOK, documents["text"].iloc[1])
        top = compute_top_features(live, k=1)[0].feature_id
        expected[doc_id] = (len(live.token_ids), top, live.acts_TF[:, top].tolist())

    contexts = [browser.new_context(viewport={"width": 1400, "height": 1400}) for _ in expected]
    try:
        pages = [context.new_page() for context in contexts]
        for page, doc_id in zip(pages, expected):  # both start before either is waited for
            page.goto(f"{server}/Live?run=mini&sae={SAE_ID}&doc={doc_id}", wait_until="commit")
        for page, (doc_id, (n_tokens, feature, values)) in zip(pages, expected.items()):
            try:
                page.get_by_text("Top features over the text").first.wait_for(timeout=60_000)
                settle(page)
            finally:
                page.screenshot(path=str(SCREENSHOTS / f"live-concurrent-{doc_id}.png"), full_page=True)
            assert page.locator("[data-testid='stException']").count() == 0
            caption = page.get_by_text(re.compile(r"^\d+ tokens on ")).first.inner_text()
            assert int(caption.split()[0]) == n_tokens, (doc_id, caption)
            assert int(page.get_by_label("Feature", exact=True).input_value()) == feature, doc_id
            titles = page.locator("span[title^='token ']").evaluate_all("spans => spans.map(s => s.title)")
            shown = [float(t.split(": ")[1]) for t in titles]
            assert len(shown) == n_tokens
            assert shown == pytest.approx(values, abs=1.5e-3), doc_id
    finally:
        for context in contexts:
            context.close()
