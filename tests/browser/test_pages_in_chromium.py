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
def server(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    assert main(["corpus", "--n-traces", "200", "--out", str(runs / "demo")]) == 0
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
