"""What the real-browser tests share: Debian's chromium, serving the app on a runs folder, and waiting
until a page has finished (its script run over and every element drawn, not a skeleton)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from explorer.build_runner import stop_process

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()
# Flags that let Chromium run as root on a closed network (no background downloads, updates or sync).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SERVER_START_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_app(runs_dir: Path) -> Iterator[str]:
    """`streamlit run app.py` on `runs_dir` (EXPLORER_RUNS_DIR); yields its URL once it answers."""
    with serve_app_process(runs_dir) as (url, _):
        yield url


@contextlib.contextmanager
def serve_app_process(runs_dir: Path, env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """`serve_app` in the environment `env` (default: this process's), yielding the server process too."""
    port = free_port()
    env = {**(os.environ if env is None else env), "EXPLORER_RUNS_DIR": str(runs_dir)}
    command = [
        sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
        "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
    ]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + SERVER_START_S
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                if time.time() > deadline or process.poll() is not None:
                    pytest.fail(f"streamlit did not answer /_stcore/health within {SERVER_START_S} s")
                time.sleep(0.5)
        yield url, process
    finally:
        stop_process(process, timeout_s=20)


@contextlib.contextmanager
def chromium_browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


# Streamlit draws an element it has not loaded the code of yet as a grey skeleton, and shows a running
# icon while the script runs; plotly charts draw their SVG a moment after they mount.
_SETTLED = """() => {
    const busy = document.querySelector(
        '[data-testid="stSkeleton"], [data-testid="stAppSkeleton"], [data-testid="stSkeletonElement"], '
        + '[data-testid="stStatusWidgetRunningIcon"], [data-testid="stStatusWidgetRunningManIcon"]');
    if (busy) return false;
    const charts = [...document.querySelectorAll('[data-testid="stPlotlyChart"]')];
    return charts.every(c => c.querySelector('.main-svg'));
}"""


def settle(page, timeout_ms: int = 60_000) -> None:
    """Wait until the page's script run is over and every element is drawn."""
    page.wait_for_function(_SETTLED, timeout=timeout_ms)
    page.wait_for_timeout(300)  # a last frame for fonts and canvases (data frames)
    page.wait_for_function(_SETTLED, timeout=timeout_ms)


def open_page(page, url: str, expected_text: str, timeout_ms: int = 60_000) -> None:
    """Go to `url`, wait for `expected_text` and for the page to settle; fail on a Streamlit exception."""
    page.goto(url)
    page.get_by_text(expected_text, exact=False).first.wait_for(timeout=timeout_ms)
    settle(page, timeout_ms)
    exceptions = page.locator("[data-testid='stException']")
    assert exceptions.count() == 0, exceptions.first.inner_text()
