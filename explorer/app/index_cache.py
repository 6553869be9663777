"""The run's database for the pages: one read-only connection per version of the file, shared by every
session, and cached reads of the feature index (index run, vocabulary, cards, candidates, lead-lag
profiles, scores), the SAE reports and the steering store.

A damaged database is said once per page: `report_database_problem`, which every page runs through its
run picker, opens the file (explorer.database checks it) and shows what is wrong at the top of the page.
Reads of a file found damaged (at the open, or by an earlier read of a lost block) return None without
a word, since the page has said it; any other failed read shows its message and returns None."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, NamedTuple, TypeVar

import pandas as pd
import streamlit as st

from explorer.app.messages import show_error
from explorer.database import (
    Connection,
    DatabaseError,
    SAETrainingReportRow,
    open_read_only,
    read_sae_training_curve,
    read_sae_training_reports,
)
from explorer.feature_db import (
    FeatureCard,
    NoIndexError,
    UnknownFeatureError,
    read_best_features_per_label,
    read_candidates,
    read_feature_card,
    read_feature_scores,
    read_index_run,
    read_index_runs,
    read_label_sets,
    read_lead_lag_profiles,
    read_vocabulary,
)
from explorer.injection_store import read_feature_injection, read_injection_examples, read_injection_run, read_injection_verdicts
from explorer.runs import database_path
from explorer.sae_metrics import TrainingCurvePoint
from explorer.steering_store import SteeringRun, StoredSteering, read_causal_effects, read_steering_result, read_steering_runs

T = TypeVar("T")
Stamp = tuple[int, int, int, int]
"""A version of the file: (inode, mtime_ns, size, mode). A stage replaces the file, which changes it; so
does a `chmod` that makes an unreadable file readable."""

_PROBLEMS: dict[str, tuple[Stamp, DatabaseError]] = {}
"""What is wrong with each version of a database, once an open or a read found it (every session's)."""


@st.cache_resource(show_spinner=False, max_entries=8)
def _read_only_connection(db_path: str, stamp: Stamp) -> Connection:
    """One read-only connection per version of the file, shared by every session (a cursor per
    query). A stage rewrites the file by replacing it, which changes the stamp: the next read opens
    the new file."""
    return open_read_only(Path(db_path))


class FeatureDB(NamedTuple):
    """The run's database as the cached reads key it: its path and its stamp."""

    path: str
    stamp: Stamp

    @property
    def con(self) -> Connection:
        return _read_only_connection(self.path, self.stamp)


def _stamp(path: Path) -> Stamp:
    try:
        stat = os.stat(path)
    except OSError:  # a link that leads nowhere: its own stat stands for it
        stat = os.lstat(path)
    return stat.st_ino, stat.st_mtime_ns, stat.st_size, stat.st_mode


def database_problem(run_dir: Path) -> DatabaseError | None:
    """What is wrong with the run's database (damaged, unreadable, not a file, another schema version),
    or None when it opens or is not there yet. Checked once per version of the file."""
    path = database_path(run_dir)
    if not os.path.lexists(path):
        return None
    db = FeatureDB(str(path), _stamp(path))
    known = _PROBLEMS.get(db.path)
    if known is not None and known[0] == db.stamp:
        return known[1]
    try:
        db.con
    except DatabaseError as err:
        _PROBLEMS[db.path] = (db.stamp, err)
        return err
    return None


def report_database_problem(run_dir: Path) -> None:
    """Say what is wrong with the run's database, if anything: once, at the top of every page."""
    problem = database_problem(run_dir)
    if problem is not None:
        show_error(problem)


def open_feature_db(run_dir: Path, *, quiet: bool = False) -> FeatureDB | None:
    """The run's database for the cached reads below. None when there is none (said, unless `quiet`)
    or it is damaged (said already by `report_database_problem`)."""
    path = database_path(run_dir)
    if not os.path.lexists(path):
        if not quiet:
            st.info(
                f"This run has no database yet, so no feature index. Build one with "
                f"`python -m precompute build --out {run_dir}` (the demo: `make demo-data`), or index an SAE "
                f"with `python -m precompute index --out {run_dir}`."
            )
        return None
    if database_problem(run_dir) is not None:
        return None
    return FeatureDB(str(path), _stamp(path))


def _read(call: Callable[..., T], db: FeatureDB, *args, quiet: bool = False) -> T | None:
    """`call(db, *args)`, or None: silently for a file known to be damaged; after showing the error
    otherwise (a missing index or feature only when not `quiet`; damage found by this read always, and
    remembered, so the next page says it at the top)."""
    known = _PROBLEMS.get(db.path)
    if known is not None and known[0] == db.stamp:
        return None
    try:
        return call(db, *args)
    except DatabaseError as err:
        _PROBLEMS[db.path] = (db.stamp, err)
        show_error(err)
    except (NoIndexError, UnknownFeatureError) as err:
        if not quiet:
            show_error(err)
    return None


@st.cache_data(show_spinner=False, max_entries=64)
def _cached_index_run(db: FeatureDB, sae_id: str) -> dict:
    return read_index_run(db.con, sae_id)


def load_index_run(db: FeatureDB, sae_id: str) -> dict | None:
    """What the index pass of `sae_id` covered (feature_index_runs), or None after saying how to build it."""
    return _read(_cached_index_run, db, sae_id)


@st.cache_data(show_spinner=False, max_entries=8)
def _cached_index_runs(db: FeatureDB) -> pd.DataFrame:
    return read_index_runs(db.con)


def load_index_runs(db: FeatureDB) -> pd.DataFrame | None:
    """Every SAE's index pass (feature_index_runs); empty when none was run."""
    return _read(_cached_index_runs, db)


@st.cache_data(show_spinner=False, max_entries=8)
def _cached_vocabulary(db: FeatureDB) -> list[str]:
    return read_vocabulary(db.con)


def load_vocabulary(db: FeatureDB) -> list[str]:
    return _read(_cached_vocabulary, db) or []


@st.cache_data(show_spinner=False, max_entries=512)
def _cached_card(db: FeatureDB, sae_id: str, feature_id: int) -> FeatureCard:
    return read_feature_card(db.con, sae_id, feature_id)


def load_feature_card(db: FeatureDB, sae_id: str, feature_id: int) -> FeatureCard | None:
    """The feature's card (explorer.feature_db.FeatureCard), or None after a clear message."""
    return _read(_cached_card, db, sae_id, int(feature_id))


@st.cache_data(show_spinner=False, max_entries=128)
def _cached_candidates(db: FeatureDB, sae_id: str, score: str, group: str | None, min_density: float,
                       hide_token_detectors: bool, limit: int) -> pd.DataFrame:
    return read_candidates(db.con, sae_id, score, group=group, min_density=min_density,
                           hide_token_detectors=hide_token_detectors, limit=limit)


def load_candidates(db: FeatureDB, sae_id: str, score: str, group: str | None = None, *, min_density: float = 0.0,
                    hide_token_detectors: bool = False, limit: int = 100) -> pd.DataFrame | None:
    """`explorer.feature_db.read_candidates`, cached; None after a clear message."""
    return _read(_cached_candidates, db, sae_id, score, group, float(min_density), bool(hide_token_detectors), int(limit))


@st.cache_data(show_spinner=False, max_entries=64)
def _cached_label_sets(db: FeatureDB, sae_id: str) -> list[str]:
    return read_label_sets(db.con, sae_id)["label"].tolist()


def load_label_set_names(db: FeatureDB, sae_id: str) -> list[str]:
    """The label sets the SAE's index scored; [] for none (or an index built before label sets)."""
    return _read(_cached_label_sets, db, sae_id) or []


@st.cache_data(show_spinner=False, max_entries=32)
def _cached_best_per_label(db: FeatureDB, metric: str, min_density: float) -> pd.DataFrame:
    return read_best_features_per_label(db.con, metric, min_density)


def load_best_features_per_label(db: FeatureDB, metric: str, min_density: float) -> pd.DataFrame | None:
    """`explorer.feature_db.read_best_features_per_label`, cached; None after a clear message."""
    return _read(_cached_best_per_label, db, metric, float(min_density))


@st.cache_data(show_spinner=False, max_entries=128)
def _cached_profiles(db: FeatureDB, sae_id: str, feature_ids: tuple[int, ...]) -> pd.DataFrame:
    return read_lead_lag_profiles(db.con, sae_id, list(feature_ids))


def load_lead_lag_profiles(db: FeatureDB, sae_id: str, feature_ids) -> pd.DataFrame | None:
    return _read(_cached_profiles, db, sae_id, tuple(int(f) for f in feature_ids))


def load_feature_scores(run_dir: Path, sae_id: str, feature_ids) -> pd.DataFrame:
    """Backtracking scores of a few features (the Live page's table); empty when the run has no
    database or no index for `sae_id`."""
    db = open_feature_db(run_dir, quiet=True)
    ids = [int(f) for f in feature_ids]
    scores = _read(lambda db: read_feature_scores(db.con, sae_id, ids), db, quiet=True) if db is not None else None
    return scores if scores is not None else pd.DataFrame()


def load_causal_effects(db: FeatureDB, sae_id: str) -> pd.DataFrame | None:
    """Steering results per feature (feature_id, causal_effect, steering_verdict) when the steering
    store holds some for `sae_id`; None otherwise."""
    effects = _read(lambda db: read_causal_effects(db.con, sae_id), db, quiet=True)
    if not effects:
        return None
    return pd.DataFrame(
        {
            "feature_id": list(effects),
            "causal_effect": [e.label() for e in effects.values()],
            "steering_verdict": [e.verdict for e in effects.values()],
        }
    )


class FeatureInjection(NamedTuple):
    """One feature's token-injection result (explorer.injection_store): its row per strategy, its
    verdict row (None when it was not tested) and its example windows."""

    strategies: pd.DataFrame
    verdict: dict | None
    examples: pd.DataFrame


@st.cache_data(show_spinner=False, max_entries=64)
def _cached_injection_verdicts(db: FeatureDB, sae_id: str) -> pd.DataFrame | None:
    if read_injection_run(db.con, sae_id).empty:
        return None
    return read_injection_verdicts(db.con, sae_id)


def load_injection_verdicts(db: FeatureDB, sae_id: str) -> pd.DataFrame | None:
    """The token-injection verdict of each tested candidate (feature_id, verdict, best_strategy, best_d,
    best_p, d_minus_null); None when the run has no injection results for `sae_id` (an older file
    without the tables included: `missing_injection_message` says how to add them) or its file is damaged."""
    return _read(_cached_injection_verdicts, db, sae_id, quiet=True)


@st.cache_data(show_spinner=False, max_entries=256)
def _cached_feature_injection(db: FeatureDB, sae_id: str, feature_id: int) -> FeatureInjection:
    verdicts = _cached_injection_verdicts(db, sae_id)
    row = verdicts[verdicts["feature_id"] == feature_id] if verdicts is not None else pd.DataFrame()
    return FeatureInjection(read_feature_injection(db.con, sae_id, feature_id),
                            row.iloc[0].to_dict() if not row.empty else None,
                            read_injection_examples(db.con, sae_id, feature_id))


def load_feature_injection(db: FeatureDB, sae_id: str, feature_id: int) -> FeatureInjection | None:
    """One feature's injection result (`FeatureInjection`; empty frames and no verdict when it was not
    tested), or None when the file is damaged (said at the top of the page)."""
    return _read(_cached_feature_injection, db, sae_id, int(feature_id), quiet=True)


def load_sae_reports(run_dir: Path) -> list[SAETrainingReportRow] | None:
    """The run's SAE training reports; None when it has no database or a damaged one."""
    db = open_feature_db(run_dir, quiet=True)
    return _read(lambda db: read_sae_training_reports(db.con), db) if db is not None else None


def load_sae_training_curve(run_dir: Path, sae_id: str) -> list[TrainingCurvePoint]:
    db = open_feature_db(run_dir, quiet=True)
    return (_read(lambda db: read_sae_training_curve(db.con, sae_id), db) if db is not None else None) or []


def load_stored_runs(run_dir: Path, sae_id: str, feature_id: int) -> list[SteeringRun] | None:
    """The stored steering runs of a feature (newest first); [] when the run has no database, None
    when it has a damaged one (said at the top of the page)."""
    if not os.path.lexists(database_path(run_dir)):
        return []
    db = open_feature_db(run_dir, quiet=True)
    return _read(lambda db: read_steering_runs(db.con, sae_id, feature_id), db) if db is not None else None


def load_stored_result(run_dir: Path, run_id: str) -> StoredSteering | None:
    """A stored run read back, or None after showing why not."""
    db = open_feature_db(run_dir, quiet=True)
    return _read(lambda db: read_steering_result(db.con, run_id), db) if db is not None else None


def find_features(find: Callable[..., pd.DataFrame], db: FeatureDB, sae_id: str, token: str) -> pd.DataFrame | None:
    """A search of the index (`explorer.feature_db.find_features_by_...`), or None after saying why not."""
    return _read(lambda db: find(db.con, sae_id, token), db)
