"""The synthetic trace generator: determinism, exact labels, and the shape of the corpus."""

import re
from collections import Counter

import pytest

from explorer.labels import has_backtracking, label_text, notebook_has_backtracking, word_boundary_has_backtracking
from explorer.lexicon import GROUPS, LEXICON
from explorer.prompts import THINK_CLOSE, THINK_OPEN, format_prompt
from explorer.synthetic import PROBLEM_TYPES, TRACE_KINDS, generate_traces

N_TRACES = 2000
BOXED_AT_END = re.compile(r"\\boxed\{([^{}]*)\}$")
CHECK_LINE = re.compile(
    r"^(?:Let me double-check|Let me verify|Checking that step|Let me check it once more|Quick check)", re.MULTILINE
)


@pytest.fixture(scope="module")
def traces():
    return generate_traces(N_TRACES, seed=0)


def think_section(text):
    start = text.index(THINK_OPEN) + len(THINK_OPEN)
    return start, text.index(THINK_CLOSE)


def test_same_seed_same_traces_and_different_seed_different_traces():
    first = generate_traces(200, seed=7)
    assert first == generate_traces(200, seed=7)
    other = generate_traces(200, seed=8)
    assert [t.record.text for t in first] != [t.record.text for t in other]
    # Trace i does not depend on how many traces are made.
    assert generate_traces(50, seed=7) == first[:50]


def test_labeller_finds_exactly_the_generated_spans(traces):
    for trace in traces:
        assert label_text(trace.record.text) == list(trace.phrase_spans), trace.record.doc_id


def test_every_phrase_of_the_lexicon_is_written(traces):
    written = {span.phrase for trace in generate_traces(20_000, seed=0) for span in trace.phrase_spans}
    assert written == {p for phrases in LEXICON.values() for p in phrases}  # the notebook's 72 and 5 interjections


def test_span_text_is_its_lexicon_phrase_and_the_phrase_is_in_its_group(traces):
    for trace in traces:
        for span in trace.phrase_spans:
            written = trace.record.text[span.start : span.end]
            assert written.lower() == span.phrase
            assert span.phrase in LEXICON[span.group]


def test_every_group_kind_and_problem_type_appears(traces):
    groups = Counter(span.group for trace in traces for span in trace.phrase_spans)
    assert set(groups) == set(GROUPS)
    kinds = Counter(trace.record.metadata["trace_kind"] for trace in traces)
    assert set(kinds) == set(TRACE_KINDS)
    problem_types = Counter(trace.record.metadata["problem_type"] for trace in traces)
    assert set(problem_types) == set(PROBLEM_TYPES)


def test_kind_and_wrong_answer_shares_follow_the_arguments(traces):
    kinds = Counter(trace.record.metadata["trace_kind"] for trace in traces)
    assert kinds["backtrack"] / N_TRACES == pytest.approx(0.45, abs=0.05)
    assert kinds["double_check"] / N_TRACES == pytest.approx(0.2, abs=0.05)
    wrong = [trace for trace in traces if not trace.record.metadata["is_correct"]]
    assert len(wrong) / N_TRACES == pytest.approx(0.1, abs=0.03)
    assert {trace.record.metadata["trace_kind"] for trace in wrong} == set(TRACE_KINDS)

    only_backtracking = generate_traces(
        100, seed=1, backtrack_fraction=1.0, double_check_fraction=0.0, wrong_answer_fraction=0.0
    )
    assert all(t.record.metadata["trace_kind"] == "backtrack" for t in only_backtracking)
    assert all(t.record.metadata["is_correct"] for t in only_backtracking)
    with pytest.raises(ValueError):
        generate_traces(1, backtrack_fraction=0.8, double_check_fraction=0.5)


def test_error_spans_are_whole_lines_before_their_correction(traces):
    for trace in traces:
        text = trace.record.text
        think_start, think_end = think_section(text)
        errors = trace.error_spans
        assert len(errors) == trace.record.metadata["n_corrections"]
        for index, (start, end) in enumerate(errors):
            assert think_start <= start < end <= think_end
            assert text[start - 1] == "\n" and text[end] == "\n"  # a whole step line
            # Its correction: a phrase after the wrong step and before the next wrong step.
            limit = errors[index + 1][0] if index + 1 < len(errors) else think_end
            assert any(end <= span.start and span.end <= limit for span in trace.phrase_spans)
            assert not any(span.start < end and span.end > start for span in trace.phrase_spans)
        for span in trace.phrase_spans:
            assert think_start <= span.start and span.end <= think_end
            assert errors and span.start >= errors[0][1]  # no phrase before the first slip


def test_some_traces_have_two_corrections_at_varied_positions(traces):
    backtracking = [t for t in traces if t.record.metadata["trace_kind"] == "backtrack"]
    assert Counter(len(t.error_spans) for t in backtracking).keys() == {1, 2}
    positions = []
    for trace in backtracking:
        think_start, think_end = think_section(trace.record.text)
        positions += [(start - think_start) / (think_end - think_start) for start, _ in trace.error_spans]
    assert min(positions) < 0.25 and max(positions) > 0.6


def test_only_backtracking_traces_have_spans_and_metadata_agrees(traces):
    for trace in traces:
        metadata = trace.record.metadata
        if metadata["trace_kind"] == "backtrack":
            assert trace.phrase_spans and trace.error_spans
        else:
            assert trace.phrase_spans == () and trace.error_spans == ()
        assert metadata["has_backtracking"] == has_backtracking(trace.phrase_spans)
        # The notebook's substring rule and the word-boundary rule agree with the recorded label.
        text = trace.record.text
        assert notebook_has_backtracking(text) == word_boundary_has_backtracking(text) == metadata["has_backtracking"]
    # Interjection-only corrections exist: backtracking traces that the notebook's rule calls clean.
    unlabelled_kinds = {t.record.metadata["trace_kind"] for t in traces if not t.record.metadata["has_backtracking"]}
    assert "backtrack" in unlabelled_kinds


def test_double_check_traces_confirm_a_step(traces):
    for trace in traces:
        checks = CHECK_LINE.findall(trace.record.text)
        if trace.record.metadata["trace_kind"] == "double_check":
            assert checks
        if trace.record.metadata["trace_kind"] == "clean":
            assert not checks


def test_boxed_answer_matches_ground_truth_exactly_when_correct(traces):
    for trace in traces:
        match = BOXED_AT_END.search(trace.record.text)
        assert match, trace.record.doc_id
        metadata = trace.record.metadata
        assert (match.group(1) == metadata["ground_truth"]) == metadata["is_correct"]


def test_records_are_well_formed(traces):
    doc_ids = [trace.record.doc_id for trace in traces]
    assert len(set(doc_ids)) == len(doc_ids)
    assert doc_ids[42] == "synth-000042"
    assert len({trace.record.metadata["problem_id"] for trace in traces}) == len(traces)
    for trace in traces:
        text, metadata = trace.record.text, trace.record.metadata
        assert text.startswith(format_prompt(metadata["problem_text"]))
        assert text.count(THINK_OPEN) == 1 and text.count(THINK_CLOSE) == 1
        assert f"\n{THINK_CLOSE}\n\n" in text
        assert metadata["source"] == "synthetic"
        assert metadata["problem_type"] in PROBLEM_TYPES


def test_traces_are_short(traces):
    lengths = [len(trace.record.text) for trace in traces]
    assert sum(250 <= n <= 1200 for n in lengths) / len(lengths) > 0.95
    assert max(lengths) < 1600


# sha256 of the first 1,000 traces' texts for seed 0 (each followed by a NUL byte), computed on the
# generator before it recorded sentence tags. The demo LM, its planted feature and the planted-feature
# checks were all made on these texts: recording anything new must leave them byte for byte as they were.
TEXTS_SHA256_SEED0_N1000 = "948f1c842a6ba395804ab3f267d99dae89c72ab56ab965048ef854ddcc22a0b3"
# The same for the phrase spans, wrong-step spans and metadata of those traces.
LABELS_SHA256_SEED0_N1000 = "bb88bb66bfc9eb85577ec33c150dcb3bdd71a4e24f3f81350da02d20543ad785"


def test_generated_texts_and_labels_are_unchanged_for_a_fixed_seed():
    import hashlib

    traces = generate_traces(1000, seed=0)
    texts = hashlib.sha256()
    labels = hashlib.sha256()
    for t in traces:
        texts.update(t.record.text.encode() + b"\x00")
        labels.update(repr((t.phrase_spans, t.error_spans, sorted(t.record.metadata.items()))).encode())
    assert texts.hexdigest() == TEXTS_SHA256_SEED0_N1000
    assert labels.hexdigest() == LABELS_SHA256_SEED0_N1000
