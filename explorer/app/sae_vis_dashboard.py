"""The card's sae_vis export: a button that runs sae-vis on the model (seconds to minutes) and a
download button for the dashboard's HTML. sae-vis is optional: without it the page says how to
install it."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from explorer import sae_vis_export
from explorer.app.model_cache import load_model_and_sae
from explorer.app.run_cache import load_document_list, load_run_summary
from explorer.feature_db import FeatureCard
from explorer.feature_views import compute_sae_vis_tokens
from explorer.model_loading import MODEL_LOCK
from explorer.runs import read_document_texts

SAE_VIS_ROW_LEN, SAE_VIS_ROWS = 128, 64
"""Tokens per row and rows sae-vis runs on (the feature's own documents first)."""
SAE_VIS_KEY = "sae_vis_html"
"""Session key of the last dashboard built: ((run, SAE, feature), HTML)."""


def render_sae_vis_export(run_dir: Path, sae_id: str, card: FeatureCard) -> None:
    """A button that builds sae-vis's dashboard of this feature, then a download button for its HTML."""
    key = (run_dir.name, sae_id, card.feature_id)
    if st.button("Build the sae_vis dashboard (HTML)", key="sae_vis_build"):
        html_text = build_dashboard(run_dir, sae_id, card)
        if html_text is not None:
            st.session_state[SAE_VIS_KEY] = (key, html_text)
    built = st.session_state.get(SAE_VIS_KEY)
    if built is not None and built[0] == key:
        st.download_button("Download the sae_vis dashboard", data=built[1], mime="text/html", key="sae_vis_download",
                           file_name=f"sae_vis_{sae_id}_{card.feature_id}.html")


def build_dashboard(run_dir: Path, sae_id: str, card: FeatureCard) -> str | None:
    """The dashboard's HTML, or None after saying why not (sae-vis missing, no model, a failed run)."""
    try:
        sae_vis_export.require_sae_vis()
    except sae_vis_export.SaeVisExportError as err:
        st.info(str(err))
        return None
    summary = load_run_summary(run_dir)
    loaded = load_model_and_sae(run_dir, summary.profile, sae_id) if summary is not None else None
    documents = load_document_list(run_dir)
    if loaded is None or documents is None:
        return None
    model, sae, hook_name = loaded
    # The feature's own documents first, so its top examples are among sae-vis's tokens.
    first = list(dict.fromkeys(card.top_examples["doc_id"])) if not card.top_examples.empty else []
    order = list(dict.fromkeys([*first, *documents["doc_id"].head(2 * SAE_VIS_ROWS)]))[: 2 * SAE_VIS_ROWS]
    by_id = read_document_texts(run_dir, order)
    texts = [by_id[d] for d in order if d in by_id]
    row_len = min(SAE_VIS_ROW_LEN, summary.profile.n_ctx)
    try:
        with st.spinner("Running sae_vis on the model…"):
            tokens_BT = compute_sae_vis_tokens(model.tokenizer, list(texts), row_len, SAE_VIS_ROWS)
            with MODEL_LOCK:  # the model is shared by every session (st.cache_resource)
                return sae_vis_export.export_feature_dashboards(model, sae, hook_name, tokens_BT, [card.feature_id])
    except Exception as err:  # noqa: BLE001 - an optional third-party export: say what failed, no traceback
        st.error(f"sae_vis could not build the dashboard: {type(err).__name__}: {err}")
        return None
