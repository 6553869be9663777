"""The Streamlit app's helpers, one job per module. This package is the only part of `explorer` that
imports Streamlit; the pages (`app_pages/`, run by `app.py`) read widgets, call these modules and render.

- `navigation`: the pages in the sidebar (Home first), their titles and URL paths.
- `messages`: errors shown as messages, never as tracebacks.
- `pickers`: the sidebar's run and SAE pickers (`?run=`, `?sae=`); a damaged run database is said there.
- `link_params`: the one rule for a link's bad parameter: one warning, naming it, its value and what is
  shown instead.
- `empty_state`: no run yet: how to build one, and the button that builds the demo.
- `run_cache`: cached reads of the run folder (summary, documents, prompts).
- `index_cache`: the run's database, read-only and cached (cards, candidates, profiles, scores, SAE reports,
  stored steering results), and what is wrong with it, found once per version of the file.
- `model_cache`: the model and SAE, loaded once per process, and live activations.
- `home`: the Home page's sections.
- `traces`: traces with their labelled phrases marked; the Corpus page's trace picker.
- `finder`: the Features page's feature id: typed, linked, found, or the top candidate.
- `card`: the feature card's sections.
- `candidates`: the Candidates table (readable columns with help) and the top candidate.
- `sae_vis_dashboard`: the card's sae_vis export.
- `live_links`: links into Live from a card (`?doc=&feature=&token=`) and the Live page's top features.
- `steering_run`: the Steering page's run control and session state, and saving its results.
- `steering_views`: a steering result drawn: verdict, table, rate plot and texts side by side.
"""
