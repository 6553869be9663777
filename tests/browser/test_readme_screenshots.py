"""The README's screenshots, taken in headless Chromium on the real demo (runs/demo, which `make test`
builds first): Home, Live, a feature card (the top backtracking candidate), its token-injection panel
and Candidates.

Every run checks the pages render without a Streamlit exception and saves the screenshots to
`test-artifacts/screenshots/readme/`. The committed copies in `docs/screenshots/` are written when
they are missing, or refreshed with `UPDATE_README_SCREENSHOTS=1`, so that `make test` does not
rewrite committed files on every run (the Live page's timing differs each time).
"""

import os
import shutil
from pathlib import Path

import pytest

from tests.browser.streamlit_browser import HAVE_CHROMIUM, REPO, chromium_browser, open_page, serve_app

RUNS = REPO / "runs"
DEMO = RUNS / "demo"
ARTIFACTS = REPO / "test-artifacts" / "screenshots" / "readme"
COMMITTED = REPO / "docs" / "screenshots"
VIEWPORT = {"width": 1280, "height": 900}
MIN_DENSITY = 1e-4
"""The Candidates page's default minimum density: the card shown is that page's first row."""


def demo_index():
    """(sae_id, top candidate feature) of the demo's feature index, or None without one."""
    from explorer.feature_db import read_candidates, read_index_runs
    from explorer.runs import database_path, main_sae_id

    path = database_path(DEMO)
    if not path.is_file():
        return None
    try:
        runs = read_index_runs(path)
        if runs.empty:
            return None
        sae_id = str(main_sae_id(DEMO, sae_ids=runs["sae_id"].tolist()))  # the profile's hook's, as the app opens
        candidates = read_candidates(path, sae_id, min_density=MIN_DENSITY, limit=1)
    except Exception:  # noqa: BLE001 - a half-built demo: nothing to photograph
        return None
    return (sae_id, int(candidates["feature_id"].iloc[0])) if not candidates.empty else None


INDEX = demo_index()
pytestmark = [
    pytest.mark.skipif(not HAVE_CHROMIUM, reason="Debian's chromium is not installed (`make browser`)"),
    pytest.mark.skipif(INDEX is None, reason="runs/demo has no feature index (`make demo-data`)"),
]


def save(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / name
    page.screenshot(path=str(shot), full_page=False)
    compress_png(shot)
    target = COMMITTED / name
    if os.environ.get("UPDATE_README_SCREENSHOTS") == "1" or not target.exists():
        COMMITTED.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)


def compress_png(path: Path) -> None:
    """A palette PNG (256 colours): a third of the size, the same to the eye for a web page."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


def scroll_to(page, text: str) -> None:
    """Scroll the app's main area so the element with `text` is at the top of the viewport."""
    page.get_by_text(text, exact=True).first.evaluate("e => e.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(300)


@pytest.fixture(scope="module")
def demo_page():
    with serve_app(RUNS) as url, chromium_browser() as browser:
        page = browser.new_page(viewport=VIEWPORT)
        yield url, page


def test_home(demo_page):
    url, page = demo_page
    open_page(page, f"{url}/?run=demo", "With backtracking")
    save(page, "home.png")


def test_live(demo_page):
    url, page = demo_page
    sae_id, _ = INDEX
    open_page(page, f"{url}/Live?run=demo&sae={sae_id}", "Top features over the text")
    assert page.locator("span[title^='token ']").count() > 100  # the example trace, highlighted
    scroll_to(page, "Wrap the text in the R1 prompt template (treat it as the problem)")
    save(page, "live.png")


def test_feature_card(demo_page):
    url, page = demo_page
    sae_id, feature = INDEX
    open_page(page, f"{url}/Features?run=demo&sae={sae_id}&feature={feature}", "Backtracking evidence")
    assert page.get_by_text(f"Feature {feature}", exact=True).count() == 1
    assert page.locator("span[title]").count() > 0
    scroll_to(page, f"Feature {feature}")
    save(page, "feature-card.png")


def test_candidates(demo_page):
    url, page = demo_page
    sae_id, _ = INDEX
    open_page(page, f"{url}/Candidates?run=demo&sae={sae_id}", "Lead-lag profiles of the top features")
    save(page, "candidates.png")


def test_token_injection_panel(demo_page):
    """The card's token-injection panel of the top candidate (the demo build tests it)."""
    url, page = demo_page
    sae_id, feature = INDEX
    open_page(page, f"{url}/Features?run=demo&sae={sae_id}&feature={feature}", "Token injection")
    scroll_to(page, "Token injection")
    assert page.locator(".js-plotly-plot").count() > 0  # the chart of d per strategy, among the card's figures
    save(page, "token-injection.png")
