"""Streamlit caches and rendering helpers: the one module of `explorer` that imports Streamlit."""

from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from explorer import artifacts
from explorer.config import Profile
from explorer.html import ERROR_STEP_COLOUR, GROUP_COLOURS, Mark, highlight_html, legend_html
from explorer.runs import (
    RunFolderError,
    RunSummary,
    database_path,
    find_runs,
    model_source,
    read_document_list,
    read_document_text,
    read_document_texts,
    read_error_steps,
    read_phrases,
    read_run_summary,
    sae_dir,
)

RUN_PARAM = "run"


def render_run_picker(root: Path = artifacts.DEFAULT_RUNS_DIR) -> Path | None:
    """A sidebar select box of the run folders under `root`; the choice is kept in the URL (`?run=`)."""
    runs = find_runs(root)
    if not runs:
        return None
    names = [r.name for r in runs]
    wanted = st.query_params.get(RUN_PARAM)
    index = names.index(wanted) if wanted in names else (names.index("demo") if "demo" in names else 0)
    if wanted is not None and wanted not in names and "run_picker" not in st.session_state:
        st.warning(f"The link names run {wanted!r}, which is not under `{root}`; showing {names[index]!r} instead.")
    name = st.sidebar.selectbox("Run", names, index=index, key="run_picker")
    st.query_params[RUN_PARAM] = name
    return runs[names.index(name)]


def pick_run_or_stop() -> Path:
    """The run chosen in the sidebar; with no run at all, explain how to build one and stop the page."""
    run_dir = render_run_picker()
    if run_dir is None:
        render_empty_state()
        st.stop()
    return run_dir


BUILD_DEMO_KEY = "build_demo"
"""Key of the empty state's "Build the demo now" button."""
BUILD_LOG_LINES = 25
"""Output lines the build's progress box shows (the last ones)."""


def render_empty_state() -> None:
    """No run yet: how to build one, and a button that builds the demo here with its output shown."""
    runs_dir = Path(artifacts.DEFAULT_RUNS_DIR)
    st.info(
        f"No run folder was found under `{runs_dir}/`. Build the embedded demo (about 4 minutes on 2 CPU cores) "
        "and start the app with\n\n"
        "```\nmake demo\n```\n\n(`make demo-data` builds it without starting the app), or a run of your own with\n\n"
        "```\npython -m precompute build --profile demo --dataset my_traces.json\n```\n\n"
        "then reload this page. Or build the demo from here:"
    )
    if st.button("Build the demo now", key=BUILD_DEMO_KEY, type="primary",
                 help=f"runs `python -m precompute build --profile demo --out {runs_dir / 'demo'}`"):
        if _build_demo(runs_dir):
            st.rerun()


def _build_demo(runs_dir: Path) -> bool:
    """Run the demo build, its output streamed into a status box; True when it succeeded. A failure
    shows the tail of the output as an error (never a traceback)."""
    from explorer import build_runner

    if not build_runner.BUILD_LOCK.acquire(blocking=False):
        st.warning("A build is already running (started from another browser tab); reload this page when it is done.")
        return False
    command = build_runner.demo_build_command(runs_dir.resolve())
    stream = build_runner.CommandStream(command, cwd=Path(__file__).resolve().parents[1], tail_lines=BUILD_LOG_LINES)
    try:
        with st.status("Building the demo (a few minutes)…", expanded=True) as status:
            st.caption(f"`python {' '.join(command[1:])}`")
            log = st.empty()
            last_shown = 0.0
            for line in stream:
                now = time.monotonic()
                if now - last_shown > 0.25:  # a code block per line would flood the browser with deltas
                    log.code("\n".join(stream.tail), language=None)
                    last_shown = now
            log.code("\n".join(stream.tail), language=None)
            ok = stream.returncode == 0
            status.update(label="The demo is built." if ok else f"The build failed (exit code {stream.returncode}).",
                          state="complete" if ok else "error", expanded=not ok)
    finally:  # a rerun or a page change stops the script mid-build: stop the build with it
        stream.close()
        build_runner.BUILD_LOCK.release()
    if not ok:
        tail = "\n".join(stream.tail) or "(no output)"
        st.error(f"The demo build failed (exit code {stream.returncode}). The last lines of its output:\n\n"
                 f"```\n{tail}\n```\n\nRun `make demo-data` in a terminal to see it all.")
    return ok


@st.cache_data(show_spinner=False)
def cached_run_summary(run_dir: str, mtime: float) -> RunSummary:
    return read_run_summary(Path(run_dir))


def load_run_summary(run_dir: Path) -> RunSummary | None:
    """The run's summary, or None after showing the error (never a traceback)."""
    try:
        mtime = (run_dir / artifacts.PROFILE_FILE).stat().st_mtime
        return cached_run_summary(str(run_dir), mtime)
    except (RunFolderError, OSError) as err:
        st.error(str(err))
        return None


def render_loss_curve(train_report: dict) -> None:
    steps, losses = zip(*train_report["loss_curve"]) if train_report.get("loss_curve") else ((), ())
    fig = go.Figure(go.Scatter(x=list(steps), y=list(losses), mode="lines", name="train loss"))
    fig.update_layout(xaxis_title="step", yaxis_title="cross-entropy (nats/token)", height=300, margin=dict(t=20, b=40))
    st.plotly_chart(fig, width="stretch")


def _documents_mtime(run_dir: Path) -> float:
    """What the corpus caches are keyed on: documents.parquet's mtime (OSError when there is none)."""
    return (Path(run_dir) / artifacts.CORPUS_DIR / artifacts.DOCUMENTS_FILE).stat().st_mtime


@st.cache_data(show_spinner=False, max_entries=8)
def _cached_document_list(run_dir: str, mtime: float) -> pd.DataFrame:
    return read_document_list(Path(run_dir))


def load_document_list(run_dir: Path) -> pd.DataFrame | None:
    """Every document's light columns, no text (`explorer.runs.read_document_list`); None after
    showing the error."""
    try:
        return _cached_document_list(str(run_dir), _documents_mtime(run_dir))
    except (RunFolderError, OSError) as err:
        st.error(f"{err}")
        return None


@st.cache_data(show_spinner=False, max_entries=64)
def _cached_document_text(run_dir: str, mtime: float, doc_id: str) -> str | None:
    return read_document_text(Path(run_dir), doc_id)


def load_document_text(run_dir: Path, doc_id: str) -> str | None:
    """One document's text, read alone (`explorer.runs.read_document_text`); None when the run has no
    such document or no corpus."""
    try:
        return _cached_document_text(str(run_dir), _documents_mtime(run_dir), doc_id)
    except (RunFolderError, OSError):
        return None


DOC_PAGE_KEY = "doc_page"
"""Session key of the Corpus page's page number (a deep link's `?doc=` opens the page that lists it)."""


def render_document_picker(shown: pd.DataFrame, wanted: str | None) -> str:
    """A page number and a select box of that page's doc ids; the chosen doc id. `wanted` (the URL's
    `?doc=`) is chosen where the page lists it, and a fresh session opens on its page."""
    from explorer.corpus_views import PAGE_SIZE, page_count, page_of, page_rows

    n_pages = page_count(len(shown))
    if DOC_PAGE_KEY not in st.session_state:
        st.session_state[DOC_PAGE_KEY] = page_of(shown, wanted) or 1
    st.session_state[DOC_PAGE_KEY] = min(int(st.session_state[DOC_PAGE_KEY]), n_pages)  # the filter may shrink it
    left, right = st.columns([1, 3])
    page = left.number_input("Page", min_value=1, max_value=n_pages, step=1, key=DOC_PAGE_KEY,
                             help=f"{n_pages:,} pages of {PAGE_SIZE} traces")
    ids = page_rows(shown, int(page))["doc_id"].tolist()
    return right.selectbox("Trace", ids, index=ids.index(wanted) if wanted in ids else 0, key="doc_id")


def render_labelled_trace(run_dir: Path, doc_id: str) -> None:
    """One trace with its labelled phrases (and synthetic wrong steps) marked."""
    text = load_document_text(run_dir, doc_id)
    if text is None:
        st.warning(f"No document {doc_id!r} in this run.")
        return
    phrases = list(read_phrases(run_dir, doc_id).itertuples())
    errors = read_error_steps(run_dir, doc_id)
    wrong_steps = [Mark(int(e.start), int(e.end), ERROR_STEP_COLOUR, "wrong step, corrected later") for e in errors.itertuples()]
    render_phrases(text, phrases, wrong_steps)


def render_phrases(text: str, phrases, extra_marks: list[Mark] = ()) -> None:
    """`text` with its labelled phrases (anything with start, end, group, phrase) marked, and a legend."""
    marks = [Mark(int(p.start), int(p.end), GROUP_COLOURS[p.group], f"{p.group}: {p.phrase}") for p in phrases]
    st.html(legend_html())
    st.html(highlight_html(text, [*marks, *extra_marks]))


def load_sae_reports(run_dir: Path) -> pd.DataFrame | None:
    """The run's SAE training reports as a table (None when the run has no database yet)."""
    from explorer.database import DatabaseError, read_sae_training_reports

    path = database_path(run_dir)
    if not path.is_file():
        return None
    try:
        rows = read_sae_training_reports(path)
    except DatabaseError as err:
        st.error(str(err))
        return None
    return pd.DataFrame(rows, columns=rows[0]._fields) if rows else None


def render_sae_training_curve(run_dir: Path, sae_id: str) -> None:
    from explorer.database import read_sae_training_curve

    curve = read_sae_training_curve(database_path(run_dir), sae_id)
    if not curve:
        st.caption("No training curve (this SAE was trained elsewhere).")
        return
    steps = [p.step for p in curve]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=steps, y=[p.loss for p in curve], name="loss", mode="lines"))
    fig.add_trace(go.Scatter(x=steps, y=[p.l0 for p in curve], name="L0", mode="lines", yaxis="y2"))
    fig.update_layout(
        xaxis_title="step",
        yaxis=dict(title="loss"),
        yaxis2=dict(title="L0", overlaying="y", side="right"),
        height=300,
        margin=dict(t=20, b=40),
    )
    st.plotly_chart(fig, width="stretch")


@st.cache_resource(show_spinner="Loading the model…")
def cached_model(model_source: str, n_ctx: int, dtype: str = "float32"):
    """One model per process, source and dtype (`st.cache_resource`): every session shares it."""
    from explorer.model_loading import load_model

    return load_model(model_source, device="auto", dtype=dtype, n_ctx=n_ctx)


@st.cache_resource(show_spinner="Loading the SAE…")
def cached_sae(sae_dir: str, device: str, dtype: str = "float32"):
    from explorer.sae_loading import load_sae

    return load_sae(sae_dir, device=device, dtype=dtype)


class _ModelAndSAEKey(NamedTuple):
    """What the model, SAE and live caches are keyed on: the run's model, its context, the SAE's folder
    and the dtype both run in (the run profile's)."""

    model_source: str
    n_ctx: int
    sae_dir: str
    dtype: str

    def model(self):
        return cached_model(self.model_source, self.n_ctx, self.dtype)

    def sae(self, device: str):
        return cached_sae(self.sae_dir, device, self.dtype)


def _model_and_sae_key(run_dir: Path, profile: Profile, sae_id: str) -> _ModelAndSAEKey:
    source, folder = str(model_source(run_dir, profile)), str(sae_dir(run_dir, sae_id))
    return _ModelAndSAEKey(source, profile.n_ctx, folder, profile.dtype)


@st.cache_data(show_spinner=False, max_entries=16)
def _cached_checked_hook(key: _ModelAndSAEKey, hook_name: str | None) -> str:
    """The hook the SAE runs at on the model, checked once per model and SAE: the check runs the model (a
    2-token forward pass), which a 1.5B model on a CPU should not repeat on every rerun of a page."""
    from explorer.model_loading import MODEL_LOCK
    from explorer.sae_loading import check_sae_fits_model

    model = key.model()
    loaded = key.sae(str(model.cfg.device))
    # An SAE whose config does not name its hook is used at the run's hook, as the index uses it.
    # The check runs the shared model with a cache hook: under the lock, or another session's live run
    # would read this pass's activations (the concurrency browser test).
    with MODEL_LOCK:
        return check_sae_fits_model(loaded.sae, model, loaded.hook_name or hook_name)


def load_model_and_sae(run_dir: Path, profile: Profile, sae_id: str):
    """The run's model and one of its SAEs, checked against each other; None after showing the error."""
    from explorer.errors import ExplorerError

    key = _model_and_sae_key(run_dir, profile, sae_id)
    try:
        model = key.model()
        loaded = key.sae(str(model.cfg.device))
        hook_name = _cached_checked_hook(key, profile.hook_name)
    except ExplorerError as err:
        st.error(str(err))
        return None
    return model, loaded.sae, hook_name


LIVE_CACHE_ENTRIES = 4
"""Live results kept (texts x SAEs, shared by every session): one is [n_ctx, d_sae] floats, about 200 MB
for the R1 profile's 2,048 tokens and 24,576 features."""


@st.cache_resource(show_spinner="Running the model on the text…", max_entries=LIVE_CACHE_ENTRIES)
def _cached_live_activations(key: _ModelAndSAEKey, hook_name: str, text: str, max_tokens: int | None):
    from explorer.live import compute_live_activations

    model = key.model()
    sae = key.sae(str(model.cfg.device)).sae
    return compute_live_activations(model, sae, hook_name, text, max_tokens=max_tokens)


def load_live_activations(run_dir: Path, profile: Profile, sae_id: str, hook_name: str, text: str,
                          *, max_tokens: int | None = None):
    """`explorer.live.compute_live_activations` of `text`, run once per (model, SAE, hook, text, max
    tokens): the page's display widgets (feature, token) rerun the page, not the model. The result is
    shared, not copied (`st.cache_resource`): read it, never change it. Raises `LiveInputError`."""
    return _cached_live_activations(_model_and_sae_key(run_dir, profile, sae_id), hook_name, text, max_tokens)


def render_sae_picker(run_dir: Path) -> str | None:
    """A sidebar select box of the run's SAEs (kept in the URL as `?sae=`); None when it has none."""
    from explorer.runs import list_sae_ids

    ids = list_sae_ids(run_dir)
    if not ids:
        st.info(f"This run has no SAE yet: `python -m precompute train-sae --out {run_dir}` trains one.")
        return None
    wanted = st.query_params.get("sae")
    if wanted is not None and wanted not in ids and "sae_picker" not in st.session_state:
        st.warning(f"The link names SAE {wanted!r}, which this run does not have; showing {ids[0]!r} instead.")
    sae_id = st.sidebar.selectbox("SAE", ids, index=ids.index(wanted) if wanted in ids else 0, key="sae_picker")
    st.query_params["sae"] = sae_id
    return sae_id


# --- the feature index: a cached read-only connection, cached reads, and the card's sections -------

FEATURE_KEY = "feature_id"
"""Session key of the Features page's feature id (a number input; links set it through `?feature=`)."""


@st.cache_resource(show_spinner=False, max_entries=8)
def _read_only_connection(db_path: str, stamp: tuple[int, int]):
    """One read-only connection per version of the file, shared by every session (a cursor per
    query). A stage rewrites the file by replacing it, which changes the stamp: the next read opens
    the new file."""
    from explorer.database import open_read_only

    return open_read_only(Path(db_path))


class FeatureDB(NamedTuple):
    """The run's database as the cached reads key it: its path and (mtime_ns, size)."""

    path: str
    stamp: tuple[int, int]

    @property
    def con(self):
        return _read_only_connection(self.path, self.stamp)


def _shown(call, *args, **kwargs):
    """`call(*args, **kwargs)`, or None after showing its error as a message (never a traceback)."""
    from explorer.database import ENGINE_ERROR, DatabaseError
    from explorer.feature_db import NoIndexError, UnknownFeatureError

    try:
        return call(*args, **kwargs)
    except UnknownFeatureError as err:
        st.error(str(err))
    except NoIndexError as err:
        st.info(str(err))
    except DatabaseError as err:
        st.error(str(err))
    except ENGINE_ERROR as err:
        st.error(f"The run's database could not be read ({type(err).__name__}: {err}). Rebuild it with "
                 "`python -m precompute build --force`.")
    return None


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
    return db if _shown(lambda: db.con) is not None else None


@st.cache_data(show_spinner=False, max_entries=64)
def _cached_index_run(db: FeatureDB, sae_id: str) -> dict:
    from explorer.feature_db import read_index_run

    return read_index_run(db.con, sae_id)


def load_index_run(db: FeatureDB, sae_id: str) -> dict | None:
    """What the index pass of `sae_id` covered (feature_index_runs), or None after saying how to build it."""
    return _shown(_cached_index_run, db, sae_id)


def pick_sae_or_stop() -> tuple[Path, str]:
    """The sidebar's run and SAE; the page stops (after saying why) when either is missing."""
    run_dir = pick_run_or_stop()
    sae_id = render_sae_picker(run_dir)
    if sae_id is None:
        st.stop()
    return run_dir, sae_id


def pick_sae_with_summary_or_stop() -> tuple[Path, str, RunSummary]:
    """The sidebar's run and SAE and the run's summary (profile, model); the page stops when any is missing."""
    run_dir, sae_id = pick_sae_or_stop()
    summary = load_run_summary(run_dir)
    if summary is None:
        st.stop()
    return run_dir, sae_id, summary


def pick_indexed_sae_or_stop() -> tuple[Path, str, FeatureDB, dict]:
    """The sidebar's run and SAE, the run's database and the SAE's index; the page stops (after saying
    why) when any of them is missing."""
    run_dir, sae_id = pick_sae_or_stop()
    db = open_feature_db(run_dir)
    index_run = load_index_run(db, sae_id) if db is not None else None
    if index_run is None:
        st.stop()
    return run_dir, sae_id, db, index_run


@st.cache_data(show_spinner=False, max_entries=8)
def _cached_vocabulary(db: FeatureDB) -> list[str]:
    from explorer.feature_db import read_vocabulary

    return read_vocabulary(db.con)


def load_vocabulary(db: FeatureDB) -> list[str]:
    return _shown(_cached_vocabulary, db) or []


@st.cache_data(show_spinner=False, max_entries=512)
def _cached_card(db: FeatureDB, sae_id: str, feature_id: int):
    from explorer.feature_db import read_feature_card

    return read_feature_card(db.con, sae_id, feature_id)


def load_feature_card(db: FeatureDB, sae_id: str, feature_id: int):
    """The feature's card (explorer.feature_db.FeatureCard), or None after a clear message."""
    return _shown(_cached_card, db, sae_id, int(feature_id))


@st.cache_data(show_spinner=False, max_entries=128)
def _cached_candidates(db: FeatureDB, sae_id: str, score: str, group: str | None, min_density: float,
                       hide_token_detectors: bool, limit: int) -> pd.DataFrame:
    from explorer.feature_db import read_candidates

    return read_candidates(db.con, sae_id, score, group=group, min_density=min_density,
                           hide_token_detectors=hide_token_detectors, limit=limit)


def load_candidates(db: FeatureDB, sae_id: str, score: str, group: str | None = None, *, min_density: float = 0.0,
                    hide_token_detectors: bool = False, limit: int = 100) -> pd.DataFrame | None:
    return _shown(_cached_candidates, db, sae_id, score, group, float(min_density), bool(hide_token_detectors), int(limit))


@st.cache_data(show_spinner=False, max_entries=128)
def _cached_profiles(db: FeatureDB, sae_id: str, feature_ids: tuple[int, ...]) -> pd.DataFrame:
    from explorer.feature_db import read_lead_lag_profiles

    return read_lead_lag_profiles(db.con, sae_id, list(feature_ids))


def load_lead_lag_profiles(db: FeatureDB, sae_id: str, feature_ids) -> pd.DataFrame | None:
    return _shown(_cached_profiles, db, sae_id, tuple(int(f) for f in feature_ids))


def load_feature_scores(run_dir: Path, sae_id: str, feature_ids) -> pd.DataFrame:
    """Backtracking scores of a few features (the Live page's table); empty when the run has no
    database or no index for `sae_id`."""
    from explorer.database import ENGINE_ERROR, DatabaseError
    from explorer.feature_db import read_feature_scores

    db = open_feature_db(run_dir, quiet=True)
    if db is None:
        return pd.DataFrame()
    try:
        return read_feature_scores(db.con, sae_id, [int(f) for f in feature_ids])
    except (DatabaseError, ENGINE_ERROR):
        return pd.DataFrame()


def load_causal_effects(db: FeatureDB, sae_id: str) -> pd.DataFrame | None:
    """Steering results per feature (feature_id, causal_effect, steering_verdict) when the steering
    store exists and holds some for `sae_id`; None otherwise. The store is optional (issue 6)."""
    try:
        from explorer.steering_store import read_causal_effects
    except ImportError:
        return None
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


# --- finding a feature ------------------------------------------------------------------------------


def _open_picked(pick_key: str) -> None:
    picked = st.session_state.get(pick_key)
    if picked is not None:
        st.session_state[FEATURE_KEY] = int(picked)


def _render_found(found: pd.DataFrame | None, run: str, sae_id: str, pick_key: str, label) -> None:
    """Search results with a link per card, and a select box that opens one here."""
    from explorer.feature_views import card_href

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


def render_feature_finder(db: FeatureDB, run_dir: Path, sae_id: str, d_sae: int) -> int | None:
    """The feature id to show: typed, taken from the link (`?feature=`), or picked from a search by
    logit-lens token, by top-example token, or by the features that fire on a text."""
    from explorer.feature_db import find_features_by_example_token, find_features_by_logit_token
    from explorer.feature_views import parse_feature_id

    wanted = st.query_params.get("feature")
    if FEATURE_KEY not in st.session_state:
        st.session_state[FEATURE_KEY] = parse_feature_id(wanted)
    if wanted is not None and parse_feature_id(wanted) is None and st.session_state[FEATURE_KEY] is None:
        st.error(f"The link's feature {wanted!r} is not a feature id: ids are whole numbers from 0 to {d_sae - 1}.")
    feature = st.number_input(f"Feature id (0 to {d_sae - 1})", value=None, step=1, key=FEATURE_KEY,
                              placeholder="type an id, or find a feature below")
    run = run_dir.name
    with st.expander("Find a feature", expanded=feature is None):
        by_logit, by_example, by_text = st.tabs(["By logit-lens token", "By top-example token", "Fires on a text"])
        with by_logit:
            token = st.text_input("A token the feature promotes (its logit lens), e.g. Wait", key="find_logit_token")
            if token.strip():
                found = _shown(find_features_by_logit_token, db.con, sae_id, token)
                _render_found(found, run, sae_id, "pick_logit", lambda r: f"{r.feature_id} (rank {r.rank + 1}, logit {r.logit:.3f})")
        with by_example:
            token = st.text_input("A token the feature peaks on in its top examples, e.g. Wait", key="find_example_token")
            if token.strip():
                found = _shown(find_features_by_example_token, db.con, sae_id, token)
                _render_found(found, run, sae_id, "pick_example",
                              lambda r: f"{r.feature_id} ({r.n_examples} examples, max {r.max_activation:.3f})")
        with by_text:
            _render_fires_on_text(run_dir, sae_id)
    return int(feature) if feature is not None else None


def _render_fires_on_text(run_dir: Path, sae_id: str) -> None:
    text = st.text_area("Text", key="find_text", height=120,
                        placeholder="Paste a chain of thought; the model and SAE run on it live.")
    if st.button("Find the features that fire", key="find_text_run"):
        from explorer.live import LiveInputError, compute_live_activations, compute_top_features

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


# --- the card -----------------------------------------------------------------------------------------


def render_card_header(card, run: str, index_run: dict) -> None:
    from explorer.feature_views import card_href

    s, stats = card.scores, card.stats
    st.subheader(f"Feature {card.feature_id}")
    st.markdown(f"[Link to this card]({card_href(run, card.sae_id, card.feature_id)}) · SAE `{card.sae_id}` at "
                f"`{index_run['hook_name']}` · {index_run['n_valid_tokens']:,} tokens indexed")
    cols = st.columns(6)
    cols[0].metric("Density", f"{stats['density']:.3%}", help="share of valid tokens where it fires")
    cols[1].metric("Max activation", f"{stats['max_activation']:.3f}")
    if s:
        cols[2].metric("AUROC (backtracking)", f"{s['auroc_notebook']:.3f}", help="the notebook's six groups; 0.5 = chance")
        cols[3].metric("ReasonScore", f"{s['reason_score']:.4f}")
        cols[4].metric("Leads (SDs)", f"{s['leads_score']:+.2f}", help="rise over offsets -8..-1 before a phrase")
        cols[5].metric("Token detector", "yes" if s["is_token_detector"] else "no")


TOP_EXAMPLES_SHOWN = 12
"""Top examples shown before the "more" expander."""


def render_top_examples(card, vocabulary: list[str], run: str) -> None:
    from explorer.feature_views import example_rows
    from explorer.html import examples_html

    st.markdown("**Top examples** (hover a token for its activation; the peak is outlined)")
    if card.top_examples.empty:
        st.caption("This feature never fired on the indexed tokens.")
        return
    rows = example_rows(card.top_examples, vocabulary, run, card.sae_id, card.feature_id)
    max_activation = float(card.stats["max_activation"])
    st.html(examples_html(rows[:TOP_EXAMPLES_SHOWN], max_activation))
    if len(rows) > TOP_EXAMPLES_SHOWN:
        with st.expander(f"{len(rows) - TOP_EXAMPLES_SHOWN} more top examples"):
            st.html(examples_html(rows[TOP_EXAMPLES_SHOWN:], max_activation))


def render_interval_samples(card, vocabulary: list[str], run: str) -> None:
    from explorer.feature_views import example_rows, interval_groups
    from explorer.html import examples_html

    with st.expander("Quantile samples: examples from each activation interval, not only the top"):
        if card.interval_samples.empty:
            st.caption("No samples: the feature never fired.")
        for heading, rows in interval_groups(card.interval_samples):
            st.caption(heading)
            st.html(examples_html(example_rows(rows, vocabulary, run, card.sae_id, card.feature_id),
                                  float(card.stats["max_activation"])))


def render_distribution_and_lens(card, run: str) -> None:
    from explorer.feature_views import histogram_figure, logit_lens_tables, neighbours_table

    st.plotly_chart(histogram_figure(card.histogram), width="stretch", key="card_histogram")
    promoted, suppressed = logit_lens_tables(card.logit_lens)
    left, right = st.columns(2)
    left.markdown("**Promotes** (logit lens)")
    left.dataframe(promoted, hide_index=True)
    right.markdown("**Suppresses**")
    right.dataframe(suppressed, hide_index=True)
    st.markdown("**Nearest features** (decoder cosine)")
    st.dataframe(neighbours_table(card.neighbours, run, card.sae_id), hide_index=True,
                 column_config={"card": st.column_config.LinkColumn("card", display_text="open")})


def render_backtracking_evidence(card, index_run: dict) -> None:
    from explorer.feature_views import evidence_table, group_auroc_figure, lead_lag_figure, word_shares_figure

    st.subheader("Backtracking evidence")
    if not card.scores:
        st.info("This index has no backtracking scores for this feature.")
        return
    left, right = st.columns([3, 2])
    left.plotly_chart(lead_lag_figure(card.lead_lag, card.scores.get("baseline_mean")), width="stretch", key="card_lead_lag")
    right.plotly_chart(group_auroc_figure(card.group_auroc), width="stretch", key="card_group_auroc")
    left, right = st.columns([3, 2])
    left.table(evidence_table(card.scores, index_run).set_index("evidence"))
    right.plotly_chart(word_shares_figure(card.reason_word_shares), width="stretch", key="card_word_shares")


def render_sae_vis_export(run_dir: Path, sae_id: str, card) -> None:
    """A button that builds sae-vis's dashboard of this feature (the model runs: seconds to minutes),
    then a download button for its HTML."""
    key = (run_dir.name, sae_id, card.feature_id)
    if st.button("Build the sae_vis dashboard (HTML)", key="sae_vis_build"):
        html_text = _build_sae_vis(run_dir, sae_id, card)
        if html_text is not None:
            st.session_state["sae_vis_html"] = (key, html_text)
    built = st.session_state.get("sae_vis_html")
    if built is not None and built[0] == key:
        st.download_button("Download the sae_vis dashboard", data=built[1], mime="text/html", key="sae_vis_download",
                           file_name=f"sae_vis_{sae_id}_{card.feature_id}.html")


SAE_VIS_ROW_LEN, SAE_VIS_ROWS = 128, 64


def _build_sae_vis(run_dir: Path, sae_id: str, card) -> str | None:
    try:
        from explorer import sae_vis_export
    except ImportError:
        st.info("The sae_vis export (explorer.sae_vis_export) is not part of this install.")
        return None
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
    from explorer.feature_views import compute_sae_vis_tokens
    from explorer.model_loading import MODEL_LOCK

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


# --- the Live page: links from a card, and the top features with their scores ------------------------


class LiveLink(NamedTuple):
    """A card's "open in Live" link (`?doc=...&feature=...&token=...`), resolved."""

    doc_id: str
    text: str
    feature: int | None
    token: int | None
    """The example's token, as a position in the document (BOS is 0)."""


LIVE_LINK_PARAMS = ("doc", "feature", "token")


def read_live_link(run_dir: Path) -> LiveLink | None:
    """The Live page's link, or None without one; a stale link (a document this run lacks) gets a
    warning and leaves the URL."""
    from explorer.feature_views import parse_feature_id

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


def render_live_top_features(run_dir: Path, sae_id: str, top) -> None:
    """The top features over the text with their backtracking scores (when the SAE is indexed) and a
    link to each card."""
    from explorer.feature_views import live_features_table

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
