"""The run's model and SAEs, loaded once per process and shared by every session (`st.cache_resource`),
checked against each other once, and the Live page's activations, computed once per text."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import streamlit as st

from explorer.app.messages import show_error
from explorer.config import Profile
from explorer.errors import ExplorerError
from explorer.live import LiveActivations, compute_live_activations
from explorer.model_loading import MODEL_LOCK, load_model
from explorer.runs import model_source, sae_dir
from explorer.sae_loading import LoadedSAE, check_sae_fits_model, load_sae

LIVE_CACHE_ENTRIES = 4
"""Live results kept (texts x SAEs, shared by every session): one is [n_ctx, d_sae] floats, about 200 MB
for the R1 profile's 2,048 tokens and 24,576 features."""


@st.cache_resource(show_spinner="Loading the model…")
def cached_model(model_source: str, n_ctx: int, dtype: str = "float32"):
    """One model per process, source and dtype (`st.cache_resource`): every session shares it."""
    return load_model(model_source, device="auto", dtype=dtype, n_ctx=n_ctx)


@st.cache_resource(show_spinner="Loading the SAE…")
def cached_sae(sae_dir: str, device: str, dtype: str = "float32") -> LoadedSAE:
    return load_sae(sae_dir, device=device, dtype=dtype)


class ModelAndSAEKey(NamedTuple):
    """What the model, SAE and live caches are keyed on: the run's model, its context, the SAE's folder
    and the dtype both run in (the run profile's)."""

    model_source: str
    n_ctx: int
    sae_dir: str
    dtype: str

    @classmethod
    def of_run(cls, run_dir: Path, profile: Profile, sae_id: str) -> ModelAndSAEKey:
        return cls(str(model_source(run_dir, profile)), profile.n_ctx, str(sae_dir(run_dir, sae_id)), profile.dtype)

    def model(self):
        return cached_model(self.model_source, self.n_ctx, self.dtype)

    def sae(self, device: str) -> LoadedSAE:
        return cached_sae(self.sae_dir, device, self.dtype)


@st.cache_data(show_spinner=False, max_entries=16)
def _cached_checked_hook(key: ModelAndSAEKey, hook_name: str | None) -> str:
    """The hook the SAE runs at on the model, checked once per model and SAE: the check runs the model (a
    2-token forward pass), which a 1.5B model on a CPU should not repeat on every rerun of a page."""
    model = key.model()
    loaded = key.sae(str(model.cfg.device))
    # An SAE whose config does not name its hook is used at the run's hook, as the index uses it.
    # The check runs the shared model with a cache hook: under the lock, or another session's live run
    # would read this pass's activations (the concurrency browser test).
    with MODEL_LOCK:
        return check_sae_fits_model(loaded.sae, model, loaded.hook_name or hook_name)


def load_model_and_sae(run_dir: Path, profile: Profile, sae_id: str):
    """(model, SAE, hook name): the run's model and one of its SAEs, checked against each other; None
    after showing the error."""
    key = ModelAndSAEKey.of_run(run_dir, profile, sae_id)
    try:
        model = key.model()
        loaded = key.sae(str(model.cfg.device))
        hook_name = _cached_checked_hook(key, profile.hook_name)
    except ExplorerError as err:
        show_error(err)
        return None
    return model, loaded.sae, hook_name


@st.cache_resource(show_spinner="Running the model on the text…", max_entries=LIVE_CACHE_ENTRIES)
def _cached_live_activations(key: ModelAndSAEKey, hook_name: str, text: str, max_tokens: int | None) -> LiveActivations:
    model = key.model()
    sae = key.sae(str(model.cfg.device)).sae
    return compute_live_activations(model, sae, hook_name, text, max_tokens=max_tokens)


def load_live_activations(run_dir: Path, profile: Profile, sae_id: str, hook_name: str, text: str,
                          *, max_tokens: int | None = None) -> LiveActivations:
    """`explorer.live.compute_live_activations` of `text`, run once per (model, SAE, hook, text, max
    tokens): the page's display widgets (feature, token) rerun the page, not the model. The result is
    shared, not copied (`st.cache_resource`): read it, never change it. Raises `LiveInputError`."""
    return _cached_live_activations(ModelAndSAEKey.of_run(run_dir, profile, sae_id), hook_name, text, max_tokens)
