"""The token-injection test's inputs and results in the run's DuckDB file (docs/injection.md).

Reads what the test needs from the feature index: the candidates (`candidate_feature_ids`: the top N
by each score the Candidates page ranks by, in union) and each candidate's tokens and n-grams
(`read_candidate_tokens`). Writes the result: `injection_runs`, `feature_injection`,
`feature_injection_verdicts` and `injection_examples` (DDL: `explorer.schema.INJECTION_TABLES`),
all of one SAE's rows replaced in one atomic `write_transaction`. Readers return empty frames when the
file has no such tables (a run indexed before the test existed); `missing_injection_message` says how to
add them without rebuilding the index.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import duckdb
import pandas as pd

from explorer.database import has_table, read_cursor, write_transaction
from explorer.feature_db import RANKING_SCORES, insert_frame, read_candidates
from explorer.injection import CandidateTokens
from explorer.schema import INJECTION_TABLE_NAMES, INJECTION_TABLES

TOKEN_STATS_TABLE = "feature_token_stats"
"""Per-feature token statistics written by the index pass (when the index has them)."""
SOURCE_TOKEN_STATS = "feature_token_stats"
SOURCE_TOP_EXAMPLES = "feature_top_examples"


def missing_injection_message(run_dir: Path | str, sae_id: str) -> str:
    """What to say where a run has no injection results for `sae_id`."""
    return (
        f"No token-injection results for SAE {sae_id!r} in this run. Add them without rebuilding the index: "
        f"`python -m precompute inject --run {run_dir} --sae {sae_id}`."
    )


# --- the test's inputs ------------------------------------------------------------------------------


def candidate_feature_ids(db: duckdb.DuckDBPyConnection | Path, sae_id: str, n: int,
                          scores: Sequence[str] = tuple(RANKING_SCORES)) -> list[int]:
    """The union of the top `n` features by each of `scores`, in the order first met."""
    ids: dict[int, None] = {}
    for score in scores:
        frame = read_candidates(db, sae_id, score, limit=n)
        if not frame.empty:
            ids.update(dict.fromkeys(int(f) for f in frame["feature_id"]))
    return list(ids)


def read_candidate_tokens(db: duckdb.DuckDBPyConnection | Path, sae_id: str, feature_ids: Sequence[int], k: int,
                          ) -> tuple[list[CandidateTokens], str]:
    """Each feature's top `k` tokens and n-grams, and where the tokens came from.

    Tokens: `feature_token_stats` (rank < k, by mean activation) when the index has it; else the token
    at the maximum of each of the feature's top examples, ranked by summed activation. N-grams (k of
    each, most frequent first; ties by summed activation): (before, at) for bigram_before, (at, after)
    for bigram_after, (before, at, after) for trigram, around each top example's maximum.
    """
    ids = [int(f) for f in feature_ids]
    with read_cursor(db) as cursor:
        examples = cursor.execute(
            "SELECT feature_id, activation, position - first_position AS at, token_ids FROM feature_top_examples "
            "WHERE sae_id = ? AND list_contains(?, feature_id) ORDER BY feature_id, rank", [sae_id, ids],
        ).df()
        stats = None
        if has_table(cursor, TOKEN_STATS_TABLE):
            stats = cursor.execute(
                f"SELECT feature_id, token_id FROM {TOKEN_STATS_TABLE} WHERE sae_id = ? AND list_contains(?, feature_id) "
                "AND rank < ? ORDER BY feature_id, rank", [sae_id, ids, int(k)],
            ).df()
    by_feature = {f: group for f, group in examples.groupby("feature_id")}
    source = SOURCE_TOKEN_STATS if stats is not None and not stats.empty else SOURCE_TOP_EXAMPLES
    stat_tokens = {} if stats is None else {f: tuple(int(t) for t in g["token_id"]) for f, g in stats.groupby("feature_id")}
    candidates = []
    for feature_id in ids:
        group = by_feature.get(feature_id)
        grams = _ngrams(group, k) if group is not None else ((), (), (), ())
        tokens = stat_tokens.get(feature_id, ()) if source == SOURCE_TOKEN_STATS else grams[0]
        candidates.append(CandidateTokens(feature_id, tokens, *grams[1:]))
    return candidates, source


def _ngrams(examples: pd.DataFrame, k: int) -> tuple[tuple, tuple, tuple, tuple]:
    """(tokens by summed activation, bigrams before, bigrams after, trigrams) of one feature's top examples."""
    weight: dict[Any, float] = {}
    counts: list[Counter] = [Counter(), Counter(), Counter()]
    tokens: Counter = Counter()
    for activation, at, token_ids in zip(examples["activation"], examples["at"], examples["token_ids"]):
        ids = [int(t) for t in token_ids]
        at = int(at)
        if not 0 <= at < len(ids):
            continue
        tokens[ids[at]] += float(activation)
        before = ids[at - 1] if at >= 1 else None
        after = ids[at + 1] if at + 1 < len(ids) else None
        grams = ((before, ids[at]) if before is not None else None, (ids[at], after) if after is not None else None,
                 (before, ids[at], after) if before is not None and after is not None else None)
        for counter, gram in zip(counts, grams):
            if gram is not None:
                counter[gram] += 1
                weight[gram] = weight.get(gram, 0.0) + float(activation)
    top_tokens = tuple(t for t, _ in sorted(tokens.items(), key=lambda item: (-item[1], item[0]))[:k])

    def best(counter: Counter) -> tuple:
        return tuple(g for g, _ in sorted(counter.items(), key=lambda item: (-item[1], -weight[item[0]], item[0]))[:k])

    return top_tokens, best(counts[0]), best(counts[1]), best(counts[2])


# --- writing ----------------------------------------------------------------------------------------


def write_injection_result(db_path: Path, sae_id: str, run_row: Mapping[str, Any],
                           tables: Mapping[str, pd.DataFrame]) -> None:
    """Replace every injection row of `sae_id` with `run_row` and `tables` (feature_injection,
    feature_injection_verdicts, injection_examples; each without sae_id), in one atomic write."""
    with write_transaction(db_path) as con:
        for statement in INJECTION_TABLES:
            con.execute(statement)
        for table in INJECTION_TABLE_NAMES:
            con.execute(f"DELETE FROM {table} WHERE sae_id = ?", [sae_id])
        insert_frame(con, "injection_runs", pd.DataFrame([{"sae_id": sae_id, **run_row}]))
        for table in INJECTION_TABLE_NAMES[1:]:
            frame = tables[table].copy()
            frame.insert(0, "sae_id", sae_id)
            insert_frame(con, table, frame)


# --- reading ----------------------------------------------------------------------------------------


def _read(db: duckdb.DuckDBPyConnection | Path, table: str, sql: str, params: Sequence[Any]) -> pd.DataFrame:
    with read_cursor(db) as cursor:
        if not has_table(cursor, table):
            return pd.DataFrame()
        return cursor.execute(sql, list(params)).df()


def read_injection_run(db: duckdb.DuckDBPyConnection | Path, sae_id: str) -> pd.DataFrame:
    """The SAE's `injection_runs` row (settings, sizes, time), or an empty frame."""
    return _read(db, "injection_runs", "SELECT * FROM injection_runs WHERE sae_id = ?", [sae_id])


def read_injection_verdicts(db: duckdb.DuckDBPyConnection | Path, sae_id: str) -> pd.DataFrame:
    """One row per tested candidate: verdict, best strategy, its d and p, d minus the null's; empty when
    the run has no injection results (`missing_injection_message`)."""
    return _read(
        db, "feature_injection_verdicts",
        "SELECT feature_id, verdict, best_strategy, best_d, best_p, d_minus_null FROM feature_injection_verdicts "
        "WHERE sae_id = ? ORDER BY best_d DESC NULLS LAST, feature_id", [sae_id],
    )


def read_feature_injection(db: duckdb.DuckDBPyConnection | Path, sae_id: str, feature_id: int) -> pd.DataFrame:
    """One candidate's row per strategy; empty when it was not tested."""
    return _read(
        db, "feature_injection",
        "SELECT * EXCLUDE (sae_id) FROM feature_injection WHERE sae_id = ? AND feature_id = ? "
        "ORDER BY cohens_d DESC NULLS LAST, strategy", [sae_id, int(feature_id)],
    )


def read_injection_examples(db: duckdb.DuckDBPyConnection | Path, sae_id: str, feature_id: int) -> pd.DataFrame:
    """One candidate's example windows: condition (baseline, injected, target), rank, strategy, text,
    token_ids and the feature's activation on each token."""
    return _read(
        db, "injection_examples",
        "SELECT condition, rank, strategy, text, token_ids, activations FROM injection_examples "
        "WHERE sae_id = ? AND feature_id = ? ORDER BY CASE condition WHEN 'baseline' THEN 0 WHEN 'injected' THEN 1 "
        "ELSE 2 END, rank", [sae_id, int(feature_id)],
    )
