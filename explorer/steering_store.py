"""Steering results in the run's DuckDB file (`explorer.runs.database_path(run_dir)`).

Tables (their DDL is `explorer.schema.STEERING_TABLES`), created on the first write, all keyed by
`run_id`:

- `steering_runs` (`run_id`): one steering experiment: `(sae_id, feature_id, mode)`, its coefficients,
  how it sampled, the prompts' hash, when and how long. `run_id` is a hash of all of that, so
  re-running the same experiment replaces its rows and a different one adds new rows.
- `steering_prompts` (`run_id, prompt_index`): the prompts' text.
- `steering_conditions` (`run_id, condition_index`): condition 0 is the baseline (`coef` NULL), then one
  per coefficient; the rate of backtracking phrases per 1,000 generated tokens with mean, std, sem and
  bootstrap 95% CI, the paired difference to the baseline, length and `</think>` share.
- `steering_samples` (`run_id, condition_index, prompt_index, sample_index`): every generation, its
  text and metrics.
- `steering_phrase_counts` (`run_id, condition_index, prompt_index, sample_index, group_name`): phrases
  per lexicon group, long (zero counts left out).

Only complete results are written (a stopped generation is not). Writes go through
`explorer.database.write_transaction` (atomic, serialised); every statement takes `?` parameters.
This module owns every SQL statement about steering; the statistics come from `explorer.steering`.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime
from pathlib import Path
from typing import NamedTuple, Sequence

import duckdb
import pandas as pd

from explorer.database import has_table, read_cursor, utc_now, write_transaction
from explorer.lexicon import GROUPS
from explorer.schema import STEERING_SCHEMA_VERSION, STEERING_TABLE_NAMES, STEERING_TABLES
from explorer.steering import (
    ConditionSummary,
    Estimate,
    SteeringConfig,
    SteeringResult,
    SteeringSample,
    describe_effect,
    make_sample,
    summarise_conditions,
)


class SteeringRun(NamedTuple):
    """One row of `steering_runs`."""

    run_id: str
    sae_id: str
    feature_id: int
    mode: str
    hook_name: str
    coefs: tuple[float, ...]
    n_prompts: int
    n_samples: int
    max_new_tokens: int
    requested_max_new_tokens: int
    temperature: float
    top_k: int | None
    seed: int
    steer_prompt: bool
    prompt_source: str
    prompts_hash: str
    device: str
    seconds: float
    n_generated_tokens: int
    created_at: datetime


_RUN_COLUMNS = SteeringRun._fields
_CONDITION_COLUMNS = (
    "run_id", "condition_index", "coef", "n", "rate_mean", "rate_std", "rate_sem", "rate_ci_low", "rate_ci_high",
    "diff_mean", "diff_sem", "diff_ci_low", "diff_ci_high", "notebook_rate_mean", "notebook_diff_mean",
    "notebook_diff_ci_low", "notebook_diff_ci_high", "length_mean", "length_std", "think_close_share", "eos_share",
)
_SAMPLE_COLUMNS = (
    "run_id", "condition_index", "prompt_index", "sample_index", "coef", "n_tokens", "n_phrases", "rate",
    "stopped_at_eos", "reached_think_close", "text", "token_ids",
)
_COUNT_COLUMNS = ("run_id", "condition_index", "prompt_index", "sample_index", "group_name", "n_phrases")


def _marks(columns: Sequence[str]) -> str:
    return ", ".join("?" for _ in columns)


class StoredSteering(NamedTuple):
    """A stored run read back: its row, prompts, samples and condition summaries (recomputed from the
    samples, so they carry per-group rates too)."""

    run: SteeringRun
    prompts: tuple[str, ...]
    samples: tuple[SteeringSample, ...]
    summaries: tuple[ConditionSummary, ...]


class CausalEffect(NamedTuple):
    """A feature's steering effect, for the candidates page: its latest `add` run with a positive
    coefficient, at the largest positive coefficient."""

    feature_id: int
    coef: float
    rate_baseline: float
    rate_steered: float
    diff_mean: float
    diff_ci_low: float
    diff_ci_high: float
    n: int
    run_id: str
    created_at: datetime

    @property
    def verdict(self) -> str:
        """'raises', 'lowers' or 'no clear effect on' (backtracking), from the CI of the difference."""
        difference = Estimate(self.diff_mean, math.nan, math.nan, self.diff_ci_low, self.diff_ci_high, self.n)
        return describe_effect(difference)

    def label(self) -> str:
        """E.g. `+3.1/1k [+1.2, +5.0] at +8` (phrases per 1,000 tokens, steered minus baseline, 95% CI)."""
        return f"{self.diff_mean:+.1f}/1k [{self.diff_ci_low:+.1f}, {self.diff_ci_high:+.1f}] at {self.coef:+g}"


# --- writing --------------------------------------------------------------------------------------


def prompts_hash(prompts: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(prompts)).encode()).hexdigest()[:16]


def make_run_id(sae_id: str, config: SteeringConfig, prompts: Sequence[str]) -> str:
    """A hash of everything that defines the experiment (not of its outcome)."""
    settings = {k: v for k, v in config.__dict__.items() if k != "batch_rows"}  # batching changes no number
    key = {"sae_id": sae_id, "config": settings | {"coefs": list(config.coefs)}, "prompts": prompts_hash(prompts)}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def _nan_to_none(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def write_steering_result(
    db_path: Path, sae_id: str, result: SteeringResult, *, prompt_source: str = "custom"
) -> str:
    """Store a complete result (replacing the same experiment's rows) in one atomic write; its run id.

    Raises ValueError for a stopped (incomplete) result.
    """
    if not result.complete:
        raise ValueError("Only complete steering results are stored; this one was stopped.")
    config = result.config
    run_id = make_run_id(sae_id, config, result.prompts)
    conditions: list[float | None] = [None, *config.coefs]
    run = SteeringRun(
        run_id, sae_id, config.feature_id, config.mode, result.hook_name, tuple(config.coefs), len(result.prompts),
        config.n_samples, result.max_new_tokens, config.max_new_tokens, config.temperature, config.top_k, config.seed,
        config.steer_prompt, prompt_source, prompts_hash(result.prompts), result.device, result.seconds,
        result.n_generated_tokens, utc_now(),
    )
    condition_rows = [_condition_row(run_id, i, s) for i, s in enumerate(result.summaries)]
    samples = sorted(result.samples, key=lambda s: (conditions.index(s.coef), s.prompt_index, s.sample_index))
    sample_rows, count_rows = [], []
    for s in samples:
        index = conditions.index(s.coef)
        key = [run_id, index, s.prompt_index, s.sample_index]
        metrics = [s.n_tokens, s.n_phrases, s.rate, s.stopped_at_eos, s.reached_think_close]
        sample_rows.append([*key, s.coef, *metrics, s.text, list(s.token_ids)])
        count_rows.extend([*key, g, s.group_counts[g]] for g in GROUPS if s.group_counts[g])
    with write_transaction(db_path) as con:
        _ensure_schema(con)
        for table in STEERING_TABLE_NAMES:
            con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
        con.execute(
            f"INSERT INTO steering_runs (schema_version, {', '.join(_RUN_COLUMNS)}) "
            f"VALUES (?, {_marks(_RUN_COLUMNS)})",
            [STEERING_SCHEMA_VERSION, *run[:5], list(run.coefs), *run[6:]],
        )
        con.executemany(
            "INSERT INTO steering_prompts (run_id, prompt_index, prompt) VALUES (?, ?, ?)",
            [[run_id, i, p] for i, p in enumerate(result.prompts)],
        )
        con.executemany(
            f"INSERT INTO steering_conditions ({', '.join(_CONDITION_COLUMNS)}) VALUES ({_marks(_CONDITION_COLUMNS)})",
            condition_rows,
        )
        if sample_rows:
            con.executemany(
                f"INSERT INTO steering_samples ({', '.join(_SAMPLE_COLUMNS)}) VALUES ({_marks(_SAMPLE_COLUMNS)})",
                sample_rows,
            )
        if count_rows:
            con.executemany(
                f"INSERT INTO steering_phrase_counts ({', '.join(_COUNT_COLUMNS)}) VALUES ({_marks(_COUNT_COLUMNS)})",
                count_rows,
            )
    return run_id


def _ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    for statement in STEERING_TABLES:
        con.execute(statement)


def _condition_row(run_id: str, index: int, s: ConditionSummary) -> list:
    d, nd = s.rate_difference, s.notebook_rate_difference
    values = [
        run_id, index, s.coef, s.rate.n, s.rate.mean, s.rate.std, s.rate.sem, s.rate.ci_low, s.rate.ci_high,
        d.mean if d else None, d.sem if d else None, d.ci_low if d else None, d.ci_high if d else None,
        s.notebook_rate.mean, nd.mean if nd else None, nd.ci_low if nd else None, nd.ci_high if nd else None,
        s.length.mean, s.length.std, s.think_close_share.mean, s.eos_share,
    ]
    return [values[0], *(_nan_to_none(v) if isinstance(v, float) else v for v in values[1:])]


# --- reading --------------------------------------------------------------------------------------


def read_steering_runs(
    db: duckdb.DuckDBPyConnection | Path, sae_id: str, feature_id: int | None = None
) -> list[SteeringRun]:
    """The stored runs of an SAE (of one feature when given), newest first."""
    with read_cursor(db) as cursor:
        if not has_table(cursor, "steering_runs"):
            return []
        sql = (
            f"SELECT {', '.join(_RUN_COLUMNS)} FROM steering_runs WHERE schema_version = ? AND sae_id = ?"
            + (" AND feature_id = ?" if feature_id is not None else "")
            + " ORDER BY created_at DESC, run_id"
        )
        params = [STEERING_SCHEMA_VERSION, sae_id] + ([int(feature_id)] if feature_id is not None else [])
        rows = cursor.execute(sql, params).fetchall()
    return [SteeringRun(*row[:5], tuple(row[5]), *row[6:]) for row in rows]


def read_steering_result(db: duckdb.DuckDBPyConnection | Path, run_id: str) -> StoredSteering | None:
    """One stored run with its prompts and samples (texts, metrics, phrase spans relabelled)."""
    with read_cursor(db) as cursor:
        if not has_table(cursor, "steering_runs"):
            return None
        sql = f"SELECT {', '.join(_RUN_COLUMNS)} FROM steering_runs WHERE run_id = ?"
        row = cursor.execute(sql, [run_id]).fetchone()
        if row is None:
            return None
        run = SteeringRun(*row[:5], tuple(row[5]), *row[6:])
        prompts = [r[0] for r in cursor.execute(
            "SELECT prompt FROM steering_prompts WHERE run_id = ? ORDER BY prompt_index", [run_id]
        ).fetchall()]
        sample_rows = cursor.execute(
            "SELECT prompt_index, sample_index, coef, token_ids, text, stopped_at_eos FROM steering_samples "
            "WHERE run_id = ? ORDER BY prompt_index, condition_index, sample_index",
            [run_id],
        ).fetchall()
    # Phrases are relabelled from the stored text: the labeller is deterministic and the spans are
    # what the page highlights. The stored counts (steering_phrase_counts) are for SQL queries.
    samples = tuple(make_sample(p, i, coef, ids, text, eos) for p, i, coef, ids, text, eos in sample_rows)
    return StoredSteering(run, tuple(prompts), samples, summarise_conditions(samples, run.coefs))


def read_condition_table(db: duckdb.DuckDBPyConnection | Path, sae_id: str, feature_id: int) -> pd.DataFrame:
    """Every stored condition of a feature's runs, newest run first: one row per (run, condition)."""
    columns = [
        "run_id", "created_at", "mode", "n_prompts", "n_samples", "max_new_tokens", "temperature", "condition_index",
        "coef", "n", "rate_mean", "rate_sem", "rate_ci_low", "rate_ci_high", "diff_mean", "diff_ci_low",
        "diff_ci_high", "notebook_rate_mean", "length_mean", "think_close_share",
    ]
    with read_cursor(db) as cursor:
        if not has_table(cursor, "steering_runs"):
            return pd.DataFrame(columns=columns)
        rows = cursor.execute(
            "SELECT r.run_id, r.created_at, r.mode, r.n_prompts, r.n_samples, r.max_new_tokens, r.temperature, "
            "c.condition_index, c.coef, c.n, c.rate_mean, c.rate_sem, c.rate_ci_low, c.rate_ci_high, c.diff_mean, "
            "c.diff_ci_low, c.diff_ci_high, c.notebook_rate_mean, c.length_mean, c.think_close_share "
            "FROM steering_runs r JOIN steering_conditions c USING (run_id) "
            "WHERE r.schema_version = ? AND r.sae_id = ? AND r.feature_id = ? "
            "ORDER BY r.created_at DESC, r.run_id, c.condition_index",
            [STEERING_SCHEMA_VERSION, sae_id, int(feature_id)],
        ).fetchall()
    return pd.DataFrame(rows, columns=columns)


def read_causal_effects(db: duckdb.DuckDBPyConnection | Path, sae_id: str) -> dict[int, CausalEffect]:
    """Per feature with a stored `add` run that has a positive coefficient: the effect at the largest
    positive coefficient of its latest such run (steered minus baseline rate, paired, 95% CI)."""
    with read_cursor(db) as cursor:
        if not has_table(cursor, "steering_runs"):
            return {}
        rows = cursor.execute(
            """
            WITH latest AS (
                SELECT run_id, feature_id, created_at FROM steering_runs
                WHERE schema_version = ? AND sae_id = ? AND mode = ? AND list_max(coefs) > 0
                QUALIFY row_number() OVER (PARTITION BY feature_id ORDER BY created_at DESC, run_id) = 1
            ),
            top AS (
                SELECT c.*, l.feature_id, l.created_at FROM steering_conditions c JOIN latest l USING (run_id)
                WHERE c.coef > 0
                QUALIFY row_number() OVER (PARTITION BY c.run_id ORDER BY c.coef DESC) = 1
            )
            SELECT t.feature_id, t.coef, b.rate_mean, t.rate_mean, t.diff_mean, t.diff_ci_low, t.diff_ci_high, t.n,
                   t.run_id, t.created_at
            FROM top t JOIN steering_conditions b ON b.run_id = t.run_id AND b.condition_index = ?
            ORDER BY t.feature_id
            """,
            [STEERING_SCHEMA_VERSION, sae_id, "add", 0],
        ).fetchall()
    nan = math.nan
    return {
        int(r[0]): CausalEffect(
            int(r[0]), float(r[1]), float(r[2]), float(r[3]),
            *(nan if v is None else float(v) for v in r[4:7]), int(r[7]), r[8], r[9],
        )
        for r in rows
    }
