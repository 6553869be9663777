"""The Features page's feature id: typed, taken from the link (`?feature=`), picked from a search (by
logit-lens token, by top-example token, or by the features that fire on a text), or, on a fresh visit
with no link, the top candidate."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd
import streamlit as st

from explorer.app.candidates import load_top_candidate, top_candidate_note
from explorer.app.index_cache import FeatureDB, find_features
from explorer.app.link_params import linked_feature
from explorer.app.model_cache import load_model_and_sae
from explorer.app.run_cache import load_run_summary
from explorer.feature_db import find_features_by_example_token, find_features_by_logit_token
from explorer.feature_views import card_href
from explorer.live import LiveInputError, compute_live_activations, compute_top_features

FEATURE_PARAM = "feature"
FEATURE_KEY = "feature_id"
"""Session key of the Features page's feature id (a number input; links set it through `?feature=`)."""
TOP_CANDIDATE_KEY = "feature_top_candidate"
"""Session key of the (SAE, feature) the page opened on as the top candidate."""


def render_feature_finder(db: FeatureDB, run_dir: Path, sae_id: str, d_sae: int) -> int | None:
    """The feature id to show, or None when there is none (the input was cleared)."""
    if FEATURE_KEY not in st.session_state:
        st.session_state[FEATURE_KEY] = _linked_or_top_candidate(db, sae_id, d_sae)
    feature = st.number_input(f"Feature id (0 to {d_sae - 1})", value=None, step=1, key=FEATURE_KEY,
                              placeholder="type an id, or find a feature below")
    if feature is not None and st.session_state.get(TOP_CANDIDATE_KEY) == (sae_id, int(feature)):
        st.info(top_candidate_note(int(feature)))
    run = run_dir.name
    with st.expander("Find a feature", expanded=feature is None):
        by_logit, by_example, by_text = st.tabs(["By logit-lens token", "By top-example token", "Fires on a text"])
        with by_logit:
            token = st.text_input("A token the feature promotes (its logit lens), e.g. Wait", key="find_logit_token")
            if token.strip():
                found = find_features(find_features_by_logit_token, db, sae_id, token)
                _render_found(found, run, sae_id, "pick_logit", lambda r: f"{r.feature_id} (rank {r.rank + 1}, logit {r.logit:.3f})")
        with by_example:
            token = st.text_input("A token the feature peaks on in its top examples, e.g. Wait", key="find_example_token")
            if token.strip():
                found = find_features(find_features_by_example_token, db, sae_id, token)
                _render_found(found, run, sae_id, "pick_example",
                              lambda r: f"{r.feature_id} ({r.n_examples} examples, max {r.max_activation:.3f})")
        with by_text:
            _render_fires_on_text(run_dir, sae_id)
    return int(feature) if feature is not None else None


def _linked_or_top_candidate(db: FeatureDB, sae_id: str, d_sae: int) -> int | None:
    """A fresh visit's feature: the link's, or the top candidate when the link names none (after a
    warning when it names one the SAE does not have)."""
    wanted = st.query_params.get(FEATURE_PARAM)
    if wanted is not None:
        top = load_top_candidate(db, sae_id)
        instead = f"the top candidate, feature {top}" if top is not None else "no feature"
        linked = linked_feature(wanted, sae_id, d_sae, instead)
        if linked is not None:
            return linked
    return _open_top_candidate(db, sae_id)


def _open_top_candidate(db: FeatureDB, sae_id: str) -> int | None:
    """The top candidate, remembered so the page can say why it shows it; None when no feature passes."""
    top = load_top_candidate(db, sae_id)
    if top is not None:
        st.session_state[TOP_CANDIDATE_KEY] = (sae_id, top)
    return top


def _open_picked(pick_key: str) -> None:
    picked = st.session_state.get(pick_key)
    if picked is not None:
        st.session_state[FEATURE_KEY] = int(picked)


def _render_found(found: pd.DataFrame | None, run: str, sae_id: str, pick_key: str, label: Callable) -> None:
    """Search results with a link per card, and a select box that opens one here."""
    if found is None:
        return
    if found.empty:
        st.caption("No feature found.")
        return
    table = found.copy()
    table.insert(1, "card", [card_href(run, sae_id, f) for f in table["feature_id"]])
    st.dataframe(table, hide_index=True, column_config={"card": st.column_config.LinkColumn("card", display_text="open")})
    ids = [int(f) for f in found["feature_id"]]
    labels = {int(r.feature_id): label(r) for r in found.itertuples(index=False)}
    st.selectbox("Open the card of", ids, index=None, format_func=lambda f: labels[f], key=pick_key,
                 on_change=_open_picked, args=(pick_key,), placeholder="pick a feature")


def _render_fires_on_text(run_dir: Path, sae_id: str) -> None:
    text = st.text_area("Text", key="find_text", height=120,
                        placeholder="Paste a chain of thought; the model and SAE run on it live.")
    if st.button("Find the features that fire", key="find_text_run"):
        summary = load_run_summary(run_dir)
        loaded = load_model_and_sae(run_dir, summary.profile, sae_id) if summary is not None else None
        if loaded is not None:
            try:
                live = compute_live_activations(*loaded, text)
            except LiveInputError as hint:
                st.info(str(hint))
            else:
                top = compute_top_features(live, k=20)
                st.session_state["find_text_found"] = (text, pd.DataFrame(
                    {"feature_id": [f.feature_id for f in top], "max_activation": [round(f.value, 3) for f in top],
                     "tokens_active": [f.n_active for f in top]}
                ))
    found = st.session_state.get("find_text_found")
    if found is not None and found[0] == text:
        _render_found(found[1], run_dir.name, sae_id, "pick_text",
                      lambda r: f"{r.feature_id} (max {r.max_activation:.3f} on {r.tokens_active} tokens)")
