"""Read and write the feature index's tables in the run's DuckDB file: the read API the app uses.

Writes go through `explorer.database.write_transaction` (a copy of the file, then an atomic rename),
so a crash mid-write leaves the previous file. Reads take a read-only connection or a path; every
value is passed as a `?` parameter, and column names only ever come from the whitelists below.
Tables and columns: docs/schema.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import duckdb
import numpy as np
import pandas as pd

from explorer.artifacts import DATABASE_FILE
from explorer.database import (
    Provenance,
    connection_path,
    has_table,
    read_cursor,
    read_schema_info,
    schema_version_error,
    write_provenance,
    write_transaction,
)
from explorer.errors import ExplorerError
from explorer.schema import FEATURE_TABLE_NAMES, READABLE_VERSIONS


class UnknownFeatureError(ExplorerError, LookupError):
    """A feature id the index does not hold; the message says which ids exist."""


class NoIndexError(ExplorerError, LookupError):
    """The database holds no feature index for this SAE; the message says how to build one."""


RANKING_SCORES: dict[str, str] = {
    "auroc_notebook": "Backtracking AUROC (the notebook's six groups)",
    "auroc": "AUROC, any labelled phrase (interjections included)",
    "reason_score": "ReasonScore",
    "leads_score": "Leads: rise before the phrase (baseline SDs)",
    "doc_window_max_delta": "Document contrast: mean window max, with minus without backtracking",
    "within_token_auroc": "Within-token AUROC (beyond token identity)",
}
"""Scores the candidates can be ranked by (columns of feature_backtracking_scores), with labels."""

LABEL_SCORE_PREFIX = "label:"
"""Ranking keys `label:<metric>:<label set>` rank by a column of feature_label_scores for one label set."""
LABEL_METRICS: dict[str, str] = {
    "sentence_auroc": "sentence AUROC",
    "token_auroc": "token AUROC",
    "leads_score": "leads (baseline SDs before its starts)",
}
"""The feature_label_scores columns a label set's ranking can use."""


def label_ranking_key(label: str, metric: str = "sentence_auroc") -> str:
    return f"{LABEL_SCORE_PREFIX}{metric}:{label}"


def parse_label_ranking(key: str) -> tuple[str, str] | None:
    """(metric, label set) of a `label:` ranking key; None for any other key."""
    if not key.startswith(LABEL_SCORE_PREFIX):
        return None
    metric, _, label = key[len(LABEL_SCORE_PREFIX):].partition(":")
    if metric not in LABEL_METRICS or not label:
        raise ValueError(f"unknown label ranking {key!r}: use label:<{'|'.join(LABEL_METRICS)}>:<label set>")
    return metric, label


# --- writing --------------------------------------------------------------------------------------


def write_feature_index(
    db_path: Path,
    sae_id: str,
    run_row: Mapping[str, Any],
    tables: Mapping[str, pd.DataFrame],
    vocabulary: pd.DataFrame,
    provenance: Provenance,
) -> None:
    """Replace everything the index holds for `sae_id` with `tables`, in one atomic write."""
    missing = set(FEATURE_TABLE_NAMES) - {"feature_index_runs"} - set(tables)
    if missing:
        raise ValueError(f"feature index tables missing: {sorted(missing)}")
    with write_transaction(db_path) as con:
        for table in FEATURE_TABLE_NAMES:
            con.execute(f"DELETE FROM {table} WHERE sae_id = ?", [sae_id])
        con.execute("DELETE FROM vocabulary")
        insert_frame(con, "vocabulary", vocabulary)
        insert_frame(con, "feature_index_runs", pd.DataFrame([dict(run_row)]))
        for table, frame in tables.items():
            if (frame["sae_id"] != sae_id).any():
                raise ValueError(f"{table} has rows of another SAE")
            insert_frame(con, table, frame)
        write_provenance(con, provenance)


def insert_frame(con: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame) -> None:
    """Insert `frame`'s rows into `table` (inside a `write_transaction`), its columns by name."""
    if frame.empty:
        return
    columns = ", ".join(f'"{c}"' for c in frame.columns)
    con.register("incoming_frame", frame)
    try:
        con.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM incoming_frame")
    finally:
        con.unregister("incoming_frame")


# --- reading --------------------------------------------------------------------------------------


def _frame(cursor: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any]) -> pd.DataFrame:
    return cursor.execute(sql, list(params)).df()


def _read_if_table(db: duckdb.DuckDBPyConnection | Path, table: str, sql: str, params: Sequence[Any]) -> pd.DataFrame:
    """`sql`'s rows, or an empty frame when the file has no `table` (an index built before it)."""
    with read_cursor(db) as cursor:
        return _frame(cursor, sql, params) if has_table(cursor, table) else pd.DataFrame()


def _check_version(cursor: duckdb.DuckDBPyConnection) -> None:
    """For a connection opened elsewhere (`open_read_only` checks the version of what it opens)."""
    info = read_schema_info(cursor)
    if info is not None and info.schema_version not in READABLE_VERSIONS:
        raise schema_version_error(connection_path(cursor) or Path(DATABASE_FILE), info.schema_version)


def read_index_runs(db: duckdb.DuckDBPyConnection | Path) -> pd.DataFrame:
    """One row per indexed SAE: what the pass covered, how long it took, the corpus-level controls."""
    with read_cursor(db) as cursor:
        _check_version(cursor)
        if not has_table(cursor, "feature_index_runs"):
            return pd.DataFrame()
        return _frame(cursor, "SELECT * FROM feature_index_runs ORDER BY sae_id", [])


def read_index_run(db: duckdb.DuckDBPyConnection | Path, sae_id: str) -> dict[str, Any]:
    runs = read_index_runs(db)
    if runs.empty or sae_id not in set(runs["sae_id"]):
        have = ", ".join(runs["sae_id"]) if not runs.empty else "none"
        raise NoIndexError(
            f"No feature index for SAE {sae_id!r} (indexed: {have}). Build it with "
            f"`python -m precompute index --sae {sae_id}`."
        )
    row = runs[runs["sae_id"] == sae_id].iloc[0].to_dict()
    row["config"] = json.loads(row.pop("config_json"))
    return row


def read_vocabulary(db: duckdb.DuckDBPyConnection | Path) -> list[str]:
    """Token strings by token id."""
    with read_cursor(db) as cursor:
        if not has_table(cursor, "vocabulary"):
            return []
        rows = cursor.execute("SELECT token FROM vocabulary ORDER BY token_id").fetchall()
    return [r[0] for r in rows]


class FeatureCard(NamedTuple):
    sae_id: str
    feature_id: int
    stats: dict[str, Any]
    scores: dict[str, Any]
    histogram: pd.DataFrame
    top_examples: pd.DataFrame
    """rank, activation, context_id, doc_id, position, first_position, token_ids, activations."""
    interval_samples: pd.DataFrame
    logit_lens: pd.DataFrame
    """direction ('top'/'bottom'), rank, token_id, token, logit."""
    neighbours: pd.DataFrame
    group_auroc: pd.DataFrame
    lead_lag: pd.DataFrame
    reason_word_shares: pd.DataFrame
    label_scores: pd.DataFrame = pd.DataFrame()
    """The feature's scores on each label set of the index (`read_feature_label_scores`)."""
    token_stats: pd.DataFrame = pd.DataFrame()
    """Its top tokens by mean activation (`read_token_stats`); empty for an index built before them."""
    token_dependence: dict[str, Any] = {}
    """Its token concentration and normalised entropy (`read_token_dependence`); {} for an older index."""


def _require_feature(cursor: duckdb.DuckDBPyConnection, sae_id: str, feature_id: int) -> dict[str, Any]:
    row = _frame(
        cursor, "SELECT * FROM feature_activation_stats WHERE sae_id = ? AND feature_id = ?", [sae_id, int(feature_id)]
    )
    if row.empty:
        n = cursor.execute("SELECT count(*) FROM feature_activation_stats WHERE sae_id = ?", [sae_id]).fetchone()[0]
        if n == 0:
            raise NoIndexError(
                f"No feature index for SAE {sae_id!r}. Build it with `python -m precompute index --sae {sae_id}`."
            )
        raise UnknownFeatureError(f"Feature {feature_id} does not exist in SAE {sae_id!r}: ids run from 0 to {n - 1}.")
    return row.iloc[0].to_dict()


def read_feature_card(db: duckdb.DuckDBPyConnection | Path, sae_id: str, feature_id: int) -> FeatureCard:
    """Everything the feature card shows, in one read."""
    try:
        feature_id = int(feature_id)
    except (TypeError, ValueError):
        raise UnknownFeatureError(f"{feature_id!r} is not a feature id (a whole number).") from None
    with read_cursor(db) as cursor:
        _check_version(cursor)
        if not has_table(cursor, "feature_activation_stats"):
            raise NoIndexError("This database has no feature index yet: run `python -m precompute index`.")
        stats = _require_feature(cursor, sae_id, feature_id)
        key = [sae_id, feature_id]
        scores = _frame(cursor, "SELECT * FROM feature_backtracking_scores WHERE sae_id = ? AND feature_id = ?", key)
        examples_sql = (
            "SELECT e.*, c.doc_id, c.token_offset FROM {table} e JOIN index_contexts c "
            "ON c.sae_id = e.sae_id AND c.context_id = e.context_id WHERE e.sae_id = ? AND e.feature_id = ? ORDER BY {order}"
        )
        return FeatureCard(
            sae_id=sae_id,
            feature_id=feature_id,
            stats=stats,
            scores=scores.iloc[0].to_dict() if not scores.empty else {},
            histogram=_frame(
                cursor, "SELECT bin, lower, upper, count FROM feature_histograms WHERE sae_id = ? AND feature_id = ? "
                "ORDER BY bin", key,
            ),
            top_examples=_frame(cursor, examples_sql.format(table="feature_top_examples", order="rank"), key),
            interval_samples=_frame(
                cursor, examples_sql.format(table="feature_interval_samples", order="interval_index DESC, rank"), key
            ),
            logit_lens=_frame(
                cursor, "SELECT l.direction, l.rank, l.token_id, v.token, l.logit FROM feature_logit_lens l "
                "LEFT JOIN vocabulary v ON v.token_id = l.token_id WHERE l.sae_id = ? AND l.feature_id = ? "
                "ORDER BY l.direction DESC, l.rank", key,
            ),
            neighbours=_frame(
                cursor, "SELECT n.rank, n.neighbour_id, n.cosine, s.density, b.auroc_notebook FROM feature_neighbours n "
                "LEFT JOIN feature_activation_stats s ON s.sae_id = n.sae_id AND s.feature_id = n.neighbour_id "
                "LEFT JOIN feature_backtracking_scores b ON b.sae_id = n.sae_id AND b.feature_id = n.neighbour_id "
                "WHERE n.sae_id = ? AND n.feature_id = ? ORDER BY n.rank", key,
            ),
            group_auroc=_frame(
                cursor, "SELECT group_name, auroc, error_bound, mean_activation FROM feature_group_auroc "
                "WHERE sae_id = ? AND feature_id = ?", key,
            ),
            lead_lag=_frame(
                cursor, "SELECT relative_position, mean_activation, delta, n_targets FROM feature_lead_lag "
                "WHERE sae_id = ? AND feature_id = ? ORDER BY relative_position", key,
            ),
            reason_word_shares=_frame(
                cursor, "SELECT word, mean_activation, share FROM feature_reason_word_shares "
                "WHERE sae_id = ? AND feature_id = ? ORDER BY share DESC", key,
            ),
            label_scores=read_feature_label_scores(cursor, sae_id, feature_id),
            token_stats=read_token_stats(cursor, sae_id, [feature_id]),
            token_dependence=_first_row(read_token_dependence(cursor, sae_id, [feature_id])),
        )


def _first_row(frame: pd.DataFrame) -> dict[str, Any]:
    return frame.iloc[0].to_dict() if not frame.empty else {}


def _feature_filter(sae_id: str, feature_ids: Sequence[int] | None, column: str = "feature_id") -> tuple[str, list[Any]]:
    """A WHERE clause on the SAE and, unless `feature_ids` is None, on those features, with its parameters."""
    if feature_ids is None:
        return "sae_id = ?", [sae_id]
    return f"sae_id = ? AND list_contains(?, {column})", [sae_id, [int(f) for f in feature_ids]]


def read_token_stats(
    db: duckdb.DuckDBPyConnection | Path, sae_id: str, feature_ids: Sequence[int] | None = None
) -> pd.DataFrame:
    """The top tokens by mean activation of the given features (all when None), with their text:
    feature_id, rank, token_id, token, token_count, activation_sum, activation_sum_error, mean_activation,
    mean_activation_upper. Empty for an index built before the token statistics."""
    where, params = _feature_filter(sae_id, feature_ids, "s.feature_id")
    return _read_if_table(
        db, "feature_token_stats",
        "SELECT s.feature_id, s.rank, s.token_id, v.token, s.token_count, s.activation_sum, s.activation_sum_error, "
        "s.mean_activation, s.mean_activation_upper FROM feature_token_stats s "
        f"LEFT JOIN vocabulary v ON v.token_id = s.token_id WHERE s.{where} ORDER BY s.feature_id, s.rank",
        params,
    )


def read_token_dependence(
    db: duckdb.DuckDBPyConnection | Path, sae_id: str, feature_ids: Sequence[int] | None = None
) -> pd.DataFrame:
    """Token concentration and normalised entropy of the given features (all when None), one row each.
    Empty for an index built before the token statistics."""
    where, params = _feature_filter(sae_id, feature_ids)
    return _read_if_table(
        db, "feature_token_dependence",
        "SELECT feature_id, top_k, concentration, concentration_upper, normalized_entropy, n_tokens_tracked, "
        f"activation_mass, untracked_mass, sketch_error, exact FROM feature_token_dependence WHERE {where} "
        "ORDER BY feature_id", params,
    )


def read_candidates(
    db: duckdb.DuckDBPyConnection | Path,
    sae_id: str,
    score: str = "auroc_notebook",
    *,
    group: str | None = None,
    min_density: float = 0.0,
    hide_token_detectors: bool = False,
    limit: int = 100,
) -> pd.DataFrame:
    """Features ranked by `score` (a key of RANKING_SCORES, or `label:<metric>:<label set>`), or by the
    AUROC of one phrase `group`."""
    by_label = parse_label_ranking(score) if group is None else None
    if group is None and by_label is None and score not in RANKING_SCORES:
        raise ValueError(f"unknown score {score!r}; choose one of {', '.join(RANKING_SCORES)}")
    with read_cursor(db) as cursor:
        _check_version(cursor)
        if not has_table(cursor, "feature_backtracking_scores"):
            return pd.DataFrame()
        if by_label is not None and not has_table(cursor, "feature_label_scores"):
            raise NoIndexError("This index has no label-set scores: rebuild it with `python -m precompute index --force`.")
        where = ["b.sae_id = ?", "s.density >= ?"]
        params: list[Any] = [sae_id, float(min_density)]
        if hide_token_detectors:
            where.append("NOT b.is_token_detector")
        if group is not None:
            rank_expr = "g.auroc"
            join = "JOIN feature_group_auroc g ON g.sae_id = b.sae_id AND g.feature_id = b.feature_id AND g.group_name = ?"
            params.insert(0, group)
        elif by_label is not None:
            rank_expr = f"ls.{by_label[0]}"  # a name from LABEL_METRICS, never user text
            join = "JOIN feature_label_scores ls ON ls.sae_id = b.sae_id AND ls.feature_id = b.feature_id AND ls.label = ?"
            params.insert(0, by_label[1])
        else:
            rank_expr, join = f"b.{score}", ""
        sql = (
            f"SELECT b.feature_id, {rank_expr} AS score, b.auroc_notebook, b.auroc, b.reason_score, b.leads_score, "
            "b.lead_peak_offset, b.doc_window_max_delta, b.within_token_auroc, b.margin_over_identity, "
            "b.is_token_detector, b.promotes_wait, s.density, s.max_activation, "
            "(SELECT string_agg(v.token, ' | ' ORDER BY l.rank) FROM feature_logit_lens l JOIN vocabulary v "
            " ON v.token_id = l.token_id WHERE l.sae_id = b.sae_id AND l.feature_id = b.feature_id "
            " AND l.direction = 'top' AND l.rank < 5) AS top_logit_tokens "
            f"FROM feature_backtracking_scores b JOIN feature_activation_stats s "
            f"ON s.sae_id = b.sae_id AND s.feature_id = b.feature_id {join} "
            f"WHERE {' AND '.join(where)} AND {rank_expr} IS NOT NULL AND NOT isnan({rank_expr}) "
            f"ORDER BY {rank_expr} DESC, b.feature_id LIMIT ?"
        )
        params.append(int(limit))
        return _frame(cursor, sql, params)


def read_label_sets(db: duckdb.DuckDBPyConnection | Path, sae_id: str) -> pd.DataFrame:
    """The label sets the SAE's index scored (index_label_sets), by name; empty for an index built
    before label sets, or with none."""
    with read_cursor(db) as cursor:
        if not has_table(cursor, "index_label_sets"):
            return pd.DataFrame(columns=["label", "kind", "source", "n_positive_tokens", "n_sentences",
                                         "n_positive_sentences", "n_starts"])
        return _frame(
            cursor, "SELECT label, kind, source, n_positive_tokens, n_sentences, n_positive_sentences, n_starts "
            "FROM index_label_sets WHERE sae_id = ? ORDER BY label", [sae_id],
        )


def read_feature_label_scores(db: duckdb.DuckDBPyConnection | Path, sae_id: str, feature_id: int) -> pd.DataFrame:
    """One feature's scores on every label set of its index, side by side (one row per label set)."""
    return _read_if_table(
        db, "feature_label_scores",
        "SELECT l.label, l.kind, s.token_auroc, s.sentence_auroc, s.leads_score, s.lead_peak_offset, "
        "l.n_positive_tokens, l.n_positive_sentences FROM feature_label_scores s JOIN index_label_sets l "
        "ON l.sae_id = s.sae_id AND l.label = s.label WHERE s.sae_id = ? AND s.feature_id = ? ORDER BY l.label",
        [sae_id, int(feature_id)],
    )


def read_best_features_per_label(
    db: duckdb.DuckDBPyConnection | Path, metric: str = "sentence_auroc", min_density: float = 0.0
) -> pd.DataFrame:
    """For every SAE indexed in the file and every label set it scored, its best feature by `metric` (a
    key of LABEL_METRICS) among features of at least `min_density`: hook, layer, the feature, its
    token and sentence AUROC and its leads. Shows which hook carries a label best."""
    if metric not in LABEL_METRICS:
        raise ValueError(f"unknown label metric {metric!r}; choose one of {', '.join(LABEL_METRICS)}")
    with read_cursor(db) as cursor:
        if not has_table(cursor, "feature_label_scores"):
            return pd.DataFrame()
        ranked = (  # `metric` is a key of LABEL_METRICS, never user text
            f"SELECT s.*, row_number() OVER (PARTITION BY s.sae_id, s.label ORDER BY s.{metric} DESC, s.feature_id) AS n "
            "FROM feature_label_scores s JOIN feature_activation_stats a ON a.sae_id = s.sae_id "
            f"AND a.feature_id = s.feature_id WHERE a.density >= ? AND s.{metric} IS NOT NULL AND NOT isnan(s.{metric})"
        )
        frame = _frame(
            cursor,
            "SELECT b.sae_id, r.hook_name, b.label, b.feature_id, b.token_auroc, b.sentence_auroc, b.leads_score, "
            f"a.density FROM ({ranked}) b JOIN feature_index_runs r ON r.sae_id = b.sae_id "
            "JOIN feature_activation_stats a ON a.sae_id = b.sae_id AND a.feature_id = b.feature_id "
            "WHERE b.n = 1 ORDER BY b.label, r.hook_name",
            [float(min_density)],
        )
    frame.insert(2, "layer", [int(h.split(".")[1]) if h.startswith("blocks.") else None for h in frame["hook_name"]])
    return frame


def read_lead_lag_profiles(db: duckdb.DuckDBPyConnection | Path, sae_id: str, feature_ids: Sequence[int]) -> pd.DataFrame:
    """Lead-lag profiles (feature_id, relative_position, mean_activation, delta) of several features."""
    ids = [int(f) for f in feature_ids]
    if not ids:
        return pd.DataFrame(columns=["feature_id", "relative_position", "mean_activation", "delta"])
    with read_cursor(db) as cursor:
        return _frame(
            cursor, "SELECT feature_id, relative_position, mean_activation, delta FROM feature_lead_lag "
            "WHERE sae_id = ? AND list_contains(?, feature_id) ORDER BY feature_id, relative_position", [sae_id, ids],
        )


def read_feature_scores(db: duckdb.DuckDBPyConnection | Path, sae_id: str, feature_ids: Sequence[int]) -> pd.DataFrame:
    """Backtracking scores and density of the given features (for the Live page's table)."""
    ids = [int(f) for f in feature_ids]
    return _read_if_table(
        db, "feature_backtracking_scores",
        "SELECT b.feature_id, b.auroc_notebook, b.reason_score, b.leads_score, b.is_token_detector, "
        "s.density, s.max_activation FROM feature_backtracking_scores b JOIN feature_activation_stats s "
        "ON s.sae_id = b.sae_id AND s.feature_id = b.feature_id WHERE b.sae_id = ? AND list_contains(?, b.feature_id)",
        [sae_id, ids],
    )


def find_features_by_logit_token(
    db: duckdb.DuckDBPyConnection | Path, sae_id: str, token_text: str, limit: int = 50
) -> pd.DataFrame:
    """Features whose top logit-lens tokens include a token matching `token_text` (case-insensitive,
    surrounding spaces ignored), best rank first."""
    with read_cursor(db) as cursor:
        return _frame(
            cursor, "SELECT l.feature_id, l.rank, v.token, l.logit FROM feature_logit_lens l JOIN vocabulary v "
            "ON v.token_id = l.token_id WHERE l.sae_id = ? AND l.direction = 'top' AND lower(trim(v.token)) = lower(trim(?)) "
            "ORDER BY l.rank, l.logit DESC LIMIT ?", [sae_id, token_text, int(limit)],
        )


def find_features_by_example_token(
    db: duckdb.DuckDBPyConnection | Path, sae_id: str, token_text: str, limit: int = 50
) -> pd.DataFrame:
    """Features whose top examples peak on a token matching `token_text`, by how many of their top
    examples do, then by the best activation."""
    with read_cursor(db) as cursor:
        return _frame(
            cursor, "SELECT e.feature_id, count(*) AS n_examples, max(e.activation) AS max_activation "
            "FROM feature_top_examples e JOIN vocabulary v ON v.token_id = e.token_ids[e.position - e.first_position + 1] "
            "WHERE e.sae_id = ? AND lower(trim(v.token)) = lower(trim(?)) GROUP BY e.feature_id "
            "ORDER BY n_examples DESC, max_activation DESC LIMIT ?", [sae_id, token_text, int(limit)],
        )


def indexed_feature_count(db: duckdb.DuckDBPyConnection | Path, sae_id: str) -> int:
    with read_cursor(db) as cursor:
        if not has_table(cursor, "feature_activation_stats"):
            return 0
        return int(cursor.execute("SELECT count(*) FROM feature_activation_stats WHERE sae_id = ?", [sae_id]).fetchone()[0])


def tokens_to_text(vocabulary: Sequence[str], token_ids: Sequence[int] | np.ndarray) -> list[str]:
    return [vocabulary[int(t)] if 0 <= int(t) < len(vocabulary) else f"<{int(t)}>" for t in token_ids]
