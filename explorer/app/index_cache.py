"""The run's database for the pages: one read-only connection per version of the file, shared by every
session, and cached reads of the feature index (index run, vocabulary, cards, candidates, lead-lag
profiles, scores) and of the steering store's effects. A failed read shows a message and returns None."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pandas as pd
import streamlit as st

from explorer.app.messages import shown
from explorer.database import ENGINE_ERROR, Connection, DatabaseError, open_read_only
from explorer.feature_db import (
    FeatureCard,
    read_best_features_per_label,
    read_candidates,
    read_feature_card,
    read_feature_scores,
    read_index_run,
    read_label_sets,
    read_lead_lag_profiles,
    read_vocabulary,
)
from explorer.runs import database_path
from explorer.steering_store import read_causal_effects


@st.cache_resource(show_spinner=False, max_entries=8)
def _read_only_connection(db_path: str, stamp: tuple[int, int]) -> Connection:
    """One read-only connection per version of the file, shared by every session (a cursor per
    query). A stage rewrites the file by replacing it, which changes the stamp: the next read opens
    the new file."""
    return open_read_only(Path(db_path))


class FeatureDB(NamedTuple):
    """The run's database as the cached reads key it: its path and (mtime_ns, size)."""

    path: str
    stamp: tuple[int, int]

    @property
    def con(self) -> Connection:
        return _read_only_connection(self.path, self.stamp)


def open_feature_db(run_dir: Path, *, quiet: bool = False) -> FeatureDB | None:
    """The run's database for the cached reads below; None after saying why (unless `quiet`)."""
    path = database_path(run_dir)
    if not path.is_file():
        if not quiet:
            st.info(
                f"This run has no database yet, so no feature index. Build one with "
                f"`python -m precompute build --out {run_dir}` (the demo: `make demo-data`), or index an SAE "
                f"with `python -m precompute index --out {run_dir}`."
            )
        return None
    stat = path.stat()
    db = FeatureDB(str(path), (stat.st_mtime_ns, stat.st_size))
    if quiet:
        try:
            db.con
        except Exception:  # noqa: BLE001 - quiet callers (Live's score column) just go without
            return None
        return db
    return db if shown(lambda: db.con) is not None else None


@st.cache_data(show_spinner=False, max_entries=64)
def _cached_index_run(db: FeatureDB, sae_id: str) -> dict:
    return read_index_run(db.con, sae_id)


def load_index_run(db: FeatureDB, sae_id: str) -> dict | None:
    """What the index pass of `sae_id` covered (feature_index_runs), or None after saying how to build it."""
    return shown(_cached_index_run, db, sae_id)


@st.cache_data(show_spinner=False, max_entries=8)
def _cached_vocabulary(db: FeatureDB) -> list[str]:
    return read_vocabulary(db.con)


def load_vocabulary(db: FeatureDB) -> list[str]:
    return shown(_cached_vocabulary, db) or []


@st.cache_data(show_spinner=False, max_entries=512)
def _cached_card(db: FeatureDB, sae_id: str, feature_id: int) -> FeatureCard:
    return read_feature_card(db.con, sae_id, feature_id)


def load_feature_card(db: FeatureDB, sae_id: str, feature_id: int) -> FeatureCard | None:
    """The feature's card (explorer.feature_db.FeatureCard), or None after a clear message."""
    return shown(_cached_card, db, sae_id, int(feature_id))


@st.cache_data(show_spinner=False, max_entries=128)
def _cached_candidates(db: FeatureDB, sae_id: str, score: str, group: str | None, min_density: float,
                       hide_token_detectors: bool, limit: int) -> pd.DataFrame:
    return read_candidates(db.con, sae_id, score, group=group, min_density=min_density,
                           hide_token_detectors=hide_token_detectors, limit=limit)


def load_candidates(db: FeatureDB, sae_id: str, score: str, group: str | None = None, *, min_density: float = 0.0,
                    hide_token_detectors: bool = False, limit: int = 100) -> pd.DataFrame | None:
    """`explorer.feature_db.read_candidates`, cached; None after a clear message."""
    return shown(_cached_candidates, db, sae_id, score, group, float(min_density), bool(hide_token_detectors), int(limit))


@st.cache_data(show_spinner=False, max_entries=64)
def _cached_label_sets(db: FeatureDB, sae_id: str) -> list[str]:
    return read_label_sets(db.con, sae_id)["label"].tolist()


def load_label_set_names(db: FeatureDB, sae_id: str) -> list[str]:
    """The label sets the SAE's index scored; [] for none (or an index built before label sets)."""
    return shown(_cached_label_sets, db, sae_id) or []


@st.cache_data(show_spinner=False, max_entries=32)
def _cached_best_per_label(db: FeatureDB, metric: str, min_density: float) -> pd.DataFrame:
    return read_best_features_per_label(db.con, metric, min_density)


def load_best_features_per_label(db: FeatureDB, metric: str, min_density: float) -> pd.DataFrame | None:
    """`explorer.feature_db.read_best_features_per_label`, cached; None after a clear message."""
    return shown(_cached_best_per_label, db, metric, float(min_density))


@st.cache_data(show_spinner=False, max_entries=128)
def _cached_profiles(db: FeatureDB, sae_id: str, feature_ids: tuple[int, ...]) -> pd.DataFrame:
    return read_lead_lag_profiles(db.con, sae_id, list(feature_ids))


def load_lead_lag_profiles(db: FeatureDB, sae_id: str, feature_ids) -> pd.DataFrame | None:
    return shown(_cached_profiles, db, sae_id, tuple(int(f) for f in feature_ids))


def load_feature_scores(run_dir: Path, sae_id: str, feature_ids) -> pd.DataFrame:
    """Backtracking scores of a few features (the Live page's table); empty when the run has no
    database or no index for `sae_id`."""
    db = open_feature_db(run_dir, quiet=True)
    if db is None:
        return pd.DataFrame()
    try:
        return read_feature_scores(db.con, sae_id, [int(f) for f in feature_ids])
    except (DatabaseError, ENGINE_ERROR):
        return pd.DataFrame()


def load_causal_effects(db: FeatureDB, sae_id: str) -> pd.DataFrame | None:
    """Steering results per feature (feature_id, causal_effect, steering_verdict) when the steering
    store holds some for `sae_id`; None otherwise."""
    try:
        effects = read_causal_effects(db.con, sae_id)
    except Exception:  # noqa: BLE001 - a column we can go without must never break the page
        return None
    if not effects:
        return None
    return pd.DataFrame(
        {
            "feature_id": list(effects),
            "causal_effect": [e.label() for e in effects.values()],
            "steering_verdict": [e.verdict for e in effects.values()],
        }
    )
