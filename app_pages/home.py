"""Home: what is loaded, and what each page is for."""

import streamlit as st

from explorer.app import home, pickers

st.title("Backtracking feature explorer")
st.caption("Find the SAE features that carry backtracking (\"Wait, I made a mistake\") in reasoning models.")

run_dir, summary = pickers.pick_summary_or_stop()
home.render_run_and_corpus(run_dir, summary)
home.render_demo_model(summary)
home.render_saes(run_dir)
home.render_index_runs(run_dir)
home.render_page_guide()
