"""The app in a real browser: start `streamlit run app.py`, visit every page and a deep link in
headless Chromium, check that no Streamlit exception element shows, and save a screenshot of each.

Screenshots go to `test-artifacts/screenshots/` (git-ignored) so a person can look at them.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from precompute.cli import main
from tests.app.indexed_runs import SAE_ID, indexed_runs_root
from tests.hub_fixtures import mini_qwen2_dir  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
# Flags that let Chromium run as root on a closed network (stack-notes.md).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (`make browser`)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def indexed_run(tmp_path_factory, mini_qwen2_dir):  # noqa: F811
    """A tiny model, SAE and feature index (tests/app/indexed_runs.py)."""
    return indexed_runs_root(tmp_path_factory, mini_qwen2_dir) / "mini"


@pytest.fixture(scope="module")
def server(tmp_path_factory, indexed_run):
    """The app on a runs folder holding `demo` (a corpus only) and `mini` (the indexed run)."""
    runs = tmp_path_factory.mktemp("runs")
    assert main(["corpus", "--n-traces", "200", "--out", str(runs / "demo")]) == 0
    shutil.copytree(indexed_run, runs / "mini")
    port = free_port()
    env = {**os.environ, "EXPLORER_RUNS_DIR": str(runs)}
    command = [
        sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
        "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
    ]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("streamlit did not answer /_stcore/health within 60 s")
    yield url
    process.terminate()
    process.wait(timeout=20)


@pytest.fixture(scope="module")
def browser_page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        yield page
        browser.close()


def visit(page, url: str, expected_text: str, screenshot: str) -> None:
    page.goto(url)
    page.get_by_text(expected_text, exact=False).first.wait_for(timeout=60_000)
    page.wait_for_load_state("networkidle")
    assert page.locator("[data-testid='stException']").count() == 0
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
        ("/Features?run=mini", "Type a feature id", "features.png"),
        ("/Candidates?run=mini", "Lead-lag profiles of the top features", "candidates.png"),
        ("/Features?run=mini&feature=100000", "does not exist", "features-unknown-id.png"),
    ],
)
def test_page_renders_without_exception(server, browser_page, path, expected_text, screenshot):
    visit(browser_page, server + path, expected_text, screenshot)


def test_deep_link_opens_the_linked_trace_with_marked_phrases(server, browser_page):
    visit(browser_page, server + "/Corpus?doc=synth-000016", "Solve this math problem", "corpus-deep-link.png")
    from explorer.synthetic import generate_traces

    linked_problem = generate_traces(17)[16].record.metadata["problem_text"]
    assert browser_page.get_by_text(f"Problem: {linked_problem}", exact=False).count() == 1
    marks = browser_page.locator("mark")
    assert marks.count() > 7  # the legend's 8 marks plus the trace's phrases
    assert "synth-000016" in browser_page.url


def test_a_card_link_opens_the_card_and_its_example_in_live(server, browser_page, indexed_run):
    from explorer.database import database_path
    from explorer.feature_db import read_candidates

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
