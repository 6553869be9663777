"""The balanced sampler: balance, unique problems, determinism, and too few candidates."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from explorer.records import TraceRecord
from explorer.sampling import SamplingError, balanced_sample, default_problem_id

SAMPLE_N10 = Path(__file__).resolve().parents[2] / "shared" / "data" / "seed_format_sample_n10.json"


def trace(doc_id: str, problem_id, *, backtracks: bool, correct: bool = True) -> TraceRecord:
    metadata = {"problem_id": problem_id, "has_backtracking": backtracks, "is_correct": correct}
    return TraceRecord(doc_id, f"trace {doc_id}", metadata)


def corpus(n_problems: int = 12) -> list[TraceRecord]:
    """Per problem: two backtracking traces, one clean trace, one wrong trace of each kind."""
    records = []
    for p in range(n_problems):
        records += [
            trace(f"{p}-b0", p, backtracks=True),
            trace(f"{p}-b1", p, backtracks=True),
            trace(f"{p}-c0", p, backtracks=False),
            trace(f"{p}-wb", p, backtracks=True, correct=False),
            trace(f"{p}-wc", p, backtracks=False, correct=False),
        ]
    return records


def test_balanced_correct_and_one_trace_per_problem():
    sample = balanced_sample(corpus(), 10, seed=0)
    assert len(sample) == 10
    assert sum(record.metadata["has_backtracking"] for record in sample) == 5
    assert all(record.metadata["is_correct"] for record in sample)
    assert len({default_problem_id(record) for record in sample}) == 10


def test_deterministic_for_a_seed_whatever_the_input_order():
    records = corpus()
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    first = balanced_sample(records, 8, seed=3)
    assert balanced_sample(records, 8, seed=3) == first
    assert balanced_sample(shuffled, 8, seed=3) == first
    assert any(balanced_sample(records, 8, seed=seed) != first for seed in range(4, 10))


def test_mixed_order_so_a_prefix_is_not_one_half():
    orders = [[r.metadata["has_backtracking"] for r in balanced_sample(corpus(), 10, seed=s)] for s in range(5)]
    assert any(order[:5] != [True] * 5 and order[:5] != [False] * 5 for order in orders)


def test_shared_problems_are_split_so_the_sample_is_always_possible():
    # Problems 0 and 1 have only backtracking traces; 0-3 have clean ones. With n=4 the only sample is
    # backtracking from 0 and 1, clean from 2 and 3: a coin flip that gave 0 to the clean half would fail.
    records = [trace(f"{p}-b", p, backtracks=True) for p in (0, 1)]
    records += [trace(f"{p}-c", p, backtracks=False) for p in (0, 1, 2, 3)]
    for seed in range(50):
        sample = balanced_sample(records, 4, seed=seed)
        assert sorted(record.doc_id for record in sample) == ["0-b", "1-b", "2-c", "3-c"]


def test_flags_from_callables_and_maps():
    records = [TraceRecord(f"d{i}", f"text {i}", {"problem_id": i}) for i in range(6)]
    backtracking_map = {f"d{i}": i % 2 == 0 for i in range(6)}
    sample = balanced_sample(
        records, 4, seed=0, has_backtracking=backtracking_map, is_correct=lambda record: record.doc_id != "d5"
    )
    assert sum(backtracking_map[record.doc_id] for record in sample) == 2
    assert "d5" not in {record.doc_id for record in sample}


def test_problem_id_falls_back_to_uuid_then_doc_id():
    assert default_problem_id(TraceRecord("x-g1", "t", {"uuid": "x"})) == "x"
    assert default_problem_id(TraceRecord("x-g1", "t", {})) == "x-g1"


def test_not_enough_candidates_says_how_many_of_each():
    records = [trace(f"{p}-b", p, backtracks=True) for p in range(2)]
    records += [trace(f"{p}-c", p, backtracks=False) for p in range(10, 15)]
    records.append(trace("99-w", 99, backtracks=True, correct=False))
    with pytest.raises(SamplingError) as error:
        balanced_sample(records, 6, seed=0)
    message = str(error.value)
    assert "needs 3 correct traces with backtracking and 3 without backtracking" in message
    assert "among 8 records" in message
    assert "2 correct traces with backtracking (2 problems)" in message
    assert "5 without backtracking (5 problems)" in message
    assert "at most 4 traces" in message and "strict=False" in message


def test_not_strict_returns_the_largest_balanced_sample_with_a_warning():
    records = [trace(f"{p}-b", p, backtracks=True) for p in range(2)]
    records += [trace(f"{p}-c", p, backtracks=False) for p in range(10, 15)]
    with pytest.warns(UserWarning, match="returning 4"):
        sample = balanced_sample(records, 6, seed=0, strict=False)
    assert len(sample) == 4
    assert sum(record.metadata["has_backtracking"] for record in sample) == 2


def test_problems_shared_between_halves_count_once():
    # 3 problems, each with both kinds: each half can have 3 problems, but not 2 + 2 distinct ones.
    records = [trace(f"{p}-{k}", p, backtracks=k == "b") for p in range(3) for k in "bc"]
    with pytest.raises(SamplingError, match="3 problems in all, so at most 2 traces"):
        balanced_sample(records, 4, seed=0)


@pytest.mark.parametrize("n", [0, 3, -2])
def test_n_must_be_positive_and_even(n):
    with pytest.raises(SamplingError, match="positive even"):
        balanced_sample(corpus(), n, seed=0)


def test_missing_label_names_the_record_and_the_fix():
    records = [TraceRecord("d0", "t", {"is_correct": True})]
    expected = r"record 'd0': has_backtracking metadata field is missing.*pass has_backtracking="
    with pytest.raises(SamplingError, match=expected):
        balanced_sample(records, 2, seed=0)


def test_string_label_is_refused():
    records = [TraceRecord("d0", "t", {"is_correct": "False", "has_backtracking": True})]
    with pytest.raises(SamplingError, match=r"record 'd0': is_correct metadata field is 'False', not a boolean"):
        balanced_sample(records, 2, seed=0)


@pytest.mark.skipif(not SAMPLE_N10.exists(), reason="shared seed samples are not present")
def test_seed_sample_gives_the_notebook_balance():
    from explorer.corpus import load_corpus

    records = load_corpus(SAMPLE_N10)
    sample = balanced_sample(records, 10, seed=42)
    assert sorted(record.doc_id for record in sample) == sorted(record.doc_id for record in records)
    assert sum(record.metadata["has_backtracking"] for record in sample) == 5
