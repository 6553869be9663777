"""The notebook's balanced sample: correct traces, half with backtracking and half without.

Each problem appears at most once in a sample, so the two halves differ in whether the model
backtracked, not in which problems they hold.
"""

from __future__ import annotations

import random
import warnings
from collections import defaultdict
from typing import Any, Callable, Hashable, Mapping, Sequence, Union

from explorer.errors import ExplorerError
from explorer.records import TraceRecord

Flag = Union[Callable[[TraceRecord], bool], Mapping[str, bool]]
"""A yes/no label per record: a callable on the record, or a map from `doc_id` to the label."""

BACKTRACKS = "with backtracking"
CLEAN = "without backtracking"


class SamplingError(ExplorerError, ValueError):
    """A balanced sample that cannot be drawn, with the counts that say why."""


def balanced_sample(
    records: Sequence[TraceRecord],
    n: int,
    *,
    seed: int,
    has_backtracking: Flag | None = None,
    is_correct: Flag | None = None,
    problem_id: Callable[[TraceRecord], Hashable] | None = None,
    strict: bool = True,
) -> list[TraceRecord]:
    """`n` correctly solved traces: `n/2` that backtrack and `n/2` that don't, no problem twice.

    Labels:
    - `is_correct`, `has_backtracking`: a callable `record -> bool` or a map `doc_id -> bool`. By
      default each reads the record's metadata field of the same name (the notebook's format has
      both); a record without it raises `SamplingError`. For OpenR1-Math-220k pass, for example,
      `is_correct=lambda r: r.metadata["correctness_math_verify"]` and
      `has_backtracking=lambda r: labels.has_backtracking(labels.label_text(r.text))`.
      `has_backtracking` is only asked about correct records.
    - `problem_id`: which problem a record solves. By default metadata `problem_id`, else `uuid`
      (the generations of one OpenR1 problem share it), else the `doc_id`.

    Determinism: the same records (in any order), `n` and `seed` give the same sample in the same
    order. The order is a seeded shuffle, so the two halves are mixed and any prefix is roughly
    balanced.

    When there are too few candidates, `strict=True` raises `SamplingError` with the counts found;
    `strict=False` warns and returns the largest balanced sample there is (possibly empty).
    """
    if n < 2 or n % 2:
        raise SamplingError(
            f"n must be a positive even number (half with backtracking, half without), got {n}"
        )
    correct = _as_predicate(is_correct, "is_correct")
    backtracks = _as_predicate(has_backtracking, "has_backtracking")
    problem_of = problem_id or default_problem_id

    in_id_order = sorted(records, key=lambda record: record.doc_id)
    pools = _candidate_pools(in_id_order, correct, backtracks, problem_of)
    half = _feasible_half(n // 2, pools, n_records=len(records), strict=strict)
    rng = random.Random(seed)
    assignment = _assign_problems(pools, half, rng)
    sample = [rng.choice(pools[kind][problem]) for kind, problem in assignment]
    rng.shuffle(sample)
    return sample


def default_problem_id(record: TraceRecord) -> Hashable:
    """Metadata `problem_id`, else `uuid`, else the record's `doc_id`."""
    for name in ("problem_id", "uuid"):
        value = record.metadata.get(name)
        if value is not None and value != "":
            return value
    return record.doc_id


# Candidates per kind (BACKTRACKS / CLEAN): problem id -> that problem's correct traces of that kind.
Pools = dict[str, dict[Hashable, list[TraceRecord]]]


def _candidate_pools(
    records: Sequence[TraceRecord],
    correct: Callable[[TraceRecord], bool],
    backtracks: Callable[[TraceRecord], bool],
    problem_of: Callable[[TraceRecord], Hashable],
) -> Pools:
    pools: Pools = {BACKTRACKS: defaultdict(list), CLEAN: defaultdict(list)}
    for record in records:
        if correct(record):
            pools[BACKTRACKS if backtracks(record) else CLEAN][problem_of(record)].append(record)
    return pools


def _feasible_half(wanted: int, pools: Pools, *, n_records: int, strict: bool) -> int:
    """`wanted` if that many problems can go to each half, else the most that can (or an error).

    Two disjoint sets of `h` problems, one from each pool, exist exactly when each pool has `h`
    problems and the two together have `2h`.
    """
    n_backtracking, n_clean = len(pools[BACKTRACKS]), len(pools[CLEAN])
    n_problems = len(pools[BACKTRACKS].keys() | pools[CLEAN].keys())
    possible = min(n_backtracking, n_clean, n_problems // 2)
    if possible >= wanted:
        return wanted
    n_traces = {kind: sum(map(len, pool.values())) for kind, pool in pools.items()}
    message = (
        f"balanced_sample needs {wanted} correct traces {BACKTRACKS} and {wanted} {CLEAN}, from "
        f"{2 * wanted} different problems; among {n_records} records it found "
        f"{n_traces[BACKTRACKS]} correct traces {BACKTRACKS} ({n_backtracking} problems) and "
        f"{n_traces[CLEAN]} {CLEAN} ({n_clean} problems), {n_problems} problems in all, "
        f"so at most {2 * possible} traces can be drawn"
    )
    if strict:
        raise SamplingError(f"{message}. Lower n, or pass strict=False to take that many.")
    warnings.warn(f"{message}; returning {2 * possible}.", stacklevel=3)
    return possible


def _assign_problems(pools: Pools, half: int, rng: random.Random) -> list[tuple[str, Hashable]]:
    """`half` problems for each kind, no problem twice, chosen in a seeded random order.

    A problem with traces of both kinds goes to a kind picked by a coin flip, unless that would leave
    too few problems to finish the other half. Keeping the `_feasible_half` condition true at every
    step means the walk never gets stuck.
    """
    # sorted(key=str) gives the shuffle a fixed starting order whatever the id types are.
    problems = sorted(pools[BACKTRACKS].keys() | pools[CLEAN].keys(), key=str)
    rng.shuffle(problems)
    needed = {BACKTRACKS: half, CLEAN: half}
    remaining = {kind: len(pools[kind]) for kind in needed}
    remaining_problems = len(problems)
    assignment = []
    for problem in problems:
        if not any(needed.values()):
            break
        kinds = [kind for kind in (BACKTRACKS, CLEAN) if problem in pools[kind]]
        if len(kinds) == 2 and rng.random() < 0.5:
            kinds.reverse()
        for kind in kinds:
            after = dict(remaining, **{k: remaining[k] - 1 for k in kinds})
            need_after = dict(needed, **{kind: needed[kind] - 1})
            if needed[kind] and _still_feasible(after, need_after, remaining_problems - 1):
                assignment.append((kind, problem))
                needed[kind] -= 1
                break
        for kind in kinds:
            remaining[kind] -= 1
        remaining_problems -= 1
    return assignment


def _still_feasible(remaining: dict[str, int], needed: dict[str, int], remaining_problems: int) -> bool:
    each_kind_has_enough = all(remaining[kind] >= needed[kind] for kind in needed)
    return each_kind_has_enough and remaining_problems >= sum(needed.values())


def _as_predicate(flag: Flag | None, name: str) -> Callable[[TraceRecord], bool]:
    if flag is None:
        return lambda record: _as_bool(record.metadata.get(name), name, record, "metadata field")
    if isinstance(flag, Mapping):
        return lambda record: _as_bool(flag.get(record.doc_id), name, record, "map entry")
    return lambda record: _as_bool(flag(record), name, record, "value")


def _as_bool(value: Any, name: str, record: TraceRecord, what: str) -> bool:
    # A string such as "False" would be truthy; refuse it rather than mislabel the record.
    if value is None or isinstance(value, str):
        shown = "missing" if value is None else repr(value)
        raise SamplingError(
            f"record {record.doc_id!r}: {name} {what} is {shown}, not a boolean; "
            f"pass {name}= a callable `record -> bool` or a map from doc_id to bool"
        )
    return bool(value)
