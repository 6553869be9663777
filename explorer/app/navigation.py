"""The app's pages: the sidebar's entries (Home first), their scripts, titles and URL paths, and the
browser tab's title. The URL paths are what links between pages open (`explorer.feature_views`:
`Features?...`, `Live?...`, `Steering?...`), so a page keeps the path it had."""

from __future__ import annotations

from typing import NamedTuple

import streamlit as st

from explorer.feature_views import FEATURES_PAGE, LIVE_PAGE, STEERING_PAGE

APP_TITLE = "Backtracking feature explorer"
APP_ICON = "↩"


class AppPage(NamedTuple):
    script: str
    """The page's script, relative to the app's root (where app.py is)."""
    title: str
    """Its entry in the sidebar; also its URL path."""


PAGES = (
    AppPage("app_pages/home.py", "Home"),
    AppPage("app_pages/corpus.py", "Corpus"),
    AppPage("app_pages/live.py", LIVE_PAGE),
    AppPage("app_pages/features.py", FEATURES_PAGE),
    AppPage("app_pages/candidates.py", "Candidates"),
    AppPage("app_pages/steering.py", STEERING_PAGE),
)
"""In sidebar order; the first is the default page, at the app's root URL."""


def run_app() -> None:
    """Register the pages, set the page config of the chosen one and run it."""
    pages = [st.Page(p.script, title=p.title, url_path=p.title, default=i == 0) for i, p in enumerate(PAGES)]
    page = st.navigation(pages)
    tab_title = APP_TITLE if page.url_path == "" else f"{page.title} · {APP_TITLE}"
    st.set_page_config(page_title=tab_title, page_icon=APP_ICON, layout="wide")
    page.run()
