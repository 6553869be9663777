"""Links into the Live page and out of it: a card's "open in Live" link (`?doc=...&feature=...&token=`,
built by `explorer.feature_views.live_href`) resolved against the run, and the Live page's top features
with their scores and a link to each card."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

import streamlit as st

from explorer.app.index_cache import load_feature_scores
from explorer.app.run_cache import load_document_text
from explorer.feature_views import live_features_table, parse_feature_id
from explorer.live import FeatureScore

LIVE_LINK_PARAMS = ("doc", "feature", "token")


class LiveLink(NamedTuple):
    """A card's "open in Live" link, resolved."""

    doc_id: str
    text: str
    feature: int | None
    token: int | None
    """The example's token, as a position in the document (BOS is 0)."""

    def feature_within(self, d_sae: int) -> int | None:
        """The linked feature when the SAE has it."""
        return self.feature if self.feature is not None and 0 <= self.feature < d_sae else None

    def token_within(self, n_tokens: int) -> int | None:
        """The linked token when Live ran that far; beyond the model's context, None after saying so."""
        if self.token is not None and not 0 <= self.token < n_tokens:
            st.info(f"The linked example is at token {self.token:,} of the document; Live runs its first {n_tokens:,} tokens.")
            return None
        return self.token


def read_live_link(run_dir: Path) -> LiveLink | None:
    """The Live page's link, or None without one; a stale link (a document this run lacks) gets a
    warning and leaves the URL."""
    doc_id = st.query_params.get("doc")
    if doc_id is None:
        return None
    text = load_document_text(run_dir, doc_id)
    if text is None:
        st.warning(f"The link's document {doc_id!r} is not in this run's corpus (a stale link?); showing the example trace.")
        drop_live_link()
        return None
    return LiveLink(doc_id, text, parse_feature_id(st.query_params.get("feature")),
                    parse_feature_id(st.query_params.get("token")))


def drop_live_link() -> None:
    """Take the link's parameters out of the URL (the text box no longer holds the linked document)."""
    for name in LIVE_LINK_PARAMS:
        if name in st.query_params:
            del st.query_params[name]


def render_live_top_features(run_dir: Path, sae_id: str, top: Sequence[FeatureScore]) -> None:
    """The top features over the text with their backtracking scores (when the SAE is indexed) and a
    link to each card."""
    scores = load_feature_scores(run_dir, sae_id, [f.feature_id for f in top])
    table = live_features_table(top, scores, run_dir.name, sae_id)
    st.dataframe(table, hide_index=True, key="live_top_features",
                 column_config={"card": st.column_config.LinkColumn("card", display_text="open card"),
                                "auroc_notebook": st.column_config.NumberColumn("AUROC", format="%.3f"),
                                "reason_score": st.column_config.NumberColumn("ReasonScore", format="%.4f"),
                                "leads_score": st.column_config.NumberColumn("leads", format="%+.2f"),
                                "density": st.column_config.NumberColumn(format="%.4f")})
    if scores.empty:
        st.caption("No backtracking scores: this SAE has no feature index yet (`python -m precompute index`).")
