"""The app's entry point (`streamlit run app.py`): the pages in `app_pages/`, listed in the sidebar with
Home first (explorer.app.navigation)."""

from explorer.app.navigation import run_app

run_app()
