"""Links into the Live page and out of it: a card's "open in Live" link (`?doc=...&feature=...&token=`,
built by `explorer.feature_views.live_href`), a text that is no corpus document (`?text=...&feature=
...&token=`: an injection example's window, `explorer.feature_views.live_text_href`) or a bare
`?feature=`, resolved against the run under the link rule (explorer.app.link_params), and the Live
page's top features with their scores and a link to each card."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

import streamlit as st

from explorer.app.index_cache import load_feature_scores
from explorer.app.link_params import linked_feature, parse_index, warn_bad_param
from explorer.app.run_cache import load_document_text
from explorer.feature_views import live_features_table
from explorer.live import FeatureScore

LIVE_LINK_PARAMS = ("doc", "text", "feature", "token")
MIDDLE_TOKEN = "the middle token"
TOP_FEATURE = "the text's top feature"


class LiveLink(NamedTuple):
    """A link into Live, resolved against the run: a card's "open in Live" (a trace or a text, a feature
    and the example's token), or just a feature to show on whatever text is typed."""

    doc_id: str | None
    text: str | None
    """The linked trace's text, or the link's own `text=` (None without either)."""
    feature: str | None
    """The link's `feature=` as given; `feature_within` checks it against the SAE."""
    token: int | None
    """The example's token, as a position in the document (BOS is 0)."""

    def feature_within(self, sae_id: str, d_sae: int) -> int | None:
        """The linked feature when the SAE has it; None without one, or after the warning."""
        return linked_feature(self.feature, sae_id, d_sae, TOP_FEATURE)

    def token_within(self, n_tokens: int) -> int | None:
        """The linked token when Live ran that far; beyond the model's context, None after saying so."""
        if self.token is not None and not 0 <= self.token < n_tokens:
            warn_bad_param("token", self.token, f"is past what Live ran: Live runs its first {n_tokens:,} tokens "
                           "(the model's context)", MIDDLE_TOKEN)
            return None
        return self.token


def read_live_link(run_dir: Path) -> LiveLink | None:
    """The Live page's link, or None without one. A document this run lacks, or a token that is not a
    position or has no document or text to point into, gets the link rule's warning and leaves the URL
    (the feature is checked against the SAE by `feature_within`). A `doc=` wins over a `text=`."""
    params = st.query_params
    doc_id, text, token = params.get("doc"), params.get("text"), None
    if doc_id is not None:
        text = load_document_text(run_dir, doc_id)
        if text is None:
            warn_bad_param("doc", doc_id, "names no trace of this run's corpus", "the example trace")
            doc_id = None
            if "token" in params:
                del params["token"]  # a position in the trace that is gone: said with it
    if "token" in params:
        if doc_id is None and text is None:
            warn_bad_param("token", params["token"], "is a position in a trace, but the link names no trace",
                           MIDDLE_TOKEN)
        else:
            token = parse_index("token", params["token"], problem="is not a token position (a whole number from 0)",
                                instead=MIDDLE_TOKEN)
    feature = params.get("feature")  # checked against the SAE once the model has run (`feature_within`)
    if doc_id is None and text is None and feature is None:
        return None
    return LiveLink(doc_id, text, feature, token)


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
