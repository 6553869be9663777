"""The labeller on hand-written strings: the notebook's lexicon, spans, groups, overlaps, token positions."""

import json
import random
from pathlib import Path

import pytest

from explorer.labels import (
    NO_GROUP,
    PhraseSpan,
    group_counts,
    has_backtracking,
    label_text,
    notebook_has_backtracking,
    token_group_ids,
    token_spans,
    word_boundary_has_backtracking,
)
from explorer.lexicon import GROUPS, LEXICON, NOTEBOOK_GROUPS, NOTEBOOK_PHRASES, phrase_group

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# The notebook's `utils` lists, typed here from the research notes ("Backtracking phrase lexicon: the
# notebook's utils, exactly"), not copied from explorer/lexicon.py: an edit there must show up here.
NOTEBOOK_LISTS = {
    "mistake": [
        "i made a mistake", "let me recalculate", "that's not right", "i need to correct", "let's try again",
        "i think i went wrong", "let's try another approach", "actually, i should", "wait, that's incorrect",
        "let me rethink", "on second thought", "i need to backtrack", "let me restart", "i made an error",
        "i think i made a mistake", "i think i made an error", "that doesn't seem right",
        "actually, i made a mistake in my calculation",
    ],
    "correction": [
        "hmm, that's not", "hmm, that doesn't", "hmm, this doesn't", "wait, that's not", "wait, that is not",
        "wait, this is not", "wait, that doesn't", "wait, that does not", "wait, this doesn't",
        "wait, this does not", "actually, that's not", "actually, that doesn't", "actually, this doesn't",
        "oh, that's not", "oh, that doesn't", "oh, this doesn't", "wait, that's not quite right",
    ],
    "reconsideration": [
        "let me reconsider", "let me think again", "on second thought", "let's reconsider", "let's think again",
        "thinking again", "reconsidering", "rethinking", "wait, let's determine", "hmm, wait, let me check",
        "hmm, i think i misunderstood the question",
    ],
    "miscalculation": [
        "i made a calculation error", "i made a computational error", "i made an arithmetic error",
        "i miscalculated", "i miscounted", "i misunderstood", "i misinterpreted",
    ],
    "doubt": [
        "i'm not sure if", "i'm not convinced", "i'm skeptical", "i'm doubtful", "i'm uncertain",
        "i'm not confident", "i'm hesitant", "i'm not sure about", "i'm not certain",
    ],
    "math_correction": [
        "let me redo this calculation", "let me recalculate", "i need to redo", "i should redo", "i'll redo",
        "i must redo", "let me solve this again", "let me solve this differently",
        "let me approach this differently", "let me try a different approach", "actually, let me double-check",
        "wait, let me double-check",
    ],
}


def the_notebooks_rule(text):
    """The notebook's has_backtracking, written out again: any phrase of its lists in the lower-cased text."""
    return any(phrase in text.lower() for phrases in NOTEBOOK_LISTS.values() for phrase in phrases)


def spans_as_text(text):
    return [(text[s.start : s.end], s.group) for s in label_text(text)]


def test_phrase_at_start_and_end_of_text():
    text = "I made a mistake in the sum, so let me recalculate"
    assert spans_as_text(text) == [("I made a mistake", "mistake"), ("let me recalculate", "mistake")]
    assert label_text(text)[0].start == 0
    assert label_text(text)[-1].end == len(text)


def test_the_six_groups_are_the_notebooks_lists_phrase_for_phrase():
    assert {g: list(LEXICON[g]) for g in NOTEBOOK_GROUPS} == NOTEBOOK_LISTS
    assert list(NOTEBOOK_GROUPS) == list(NOTEBOOK_LISTS)  # and in the notebook's order
    assert sum(map(len, NOTEBOOK_LISTS.values())) == 74 and len(NOTEBOOK_PHRASES) == 72  # two in two lists
    assert LEXICON["interjection"] == ("wait", "hmm", "alternatively", "hold on", "oops")


def test_case_insensitive_with_the_notebooks_apostrophes():
    assert spans_as_text("I'M NOT SURE IF this holds.") == [("I'M NOT SURE IF", "doubt")]
    assert label_text("i'm not sure if")[0].phrase == "i'm not sure if"
    # The notebook's lists have straight apostrophes and it compared substrings: a curly one is no match.
    assert label_text("I’m not sure if this holds.") == [] and not notebook_has_backtracking("I’m not sure if")


def test_interjections_need_word_boundaries_the_six_groups_do_not():
    assert label_text("We await the result; hmmm is not hmm.") == [PhraseSpan(33, 36, "interjection", "hmm")]
    # The notebook matched substrings: a phrase inside a longer word still counts, as it did there.
    assert spans_as_text("Actually, I shouldn't have.") == [("Actually, I should", "mistake")]
    assert spans_as_text("unreconsidering") == [("reconsidering", "reconsideration")]
    assert notebook_has_backtracking("Actually, I shouldn't") and not word_boundary_has_backtracking("Actually, I shouldn't")


def test_interjections_yield_to_the_notebooks_phrases():
    assert spans_as_text("Hmm, wait, let me check that.") == [("Hmm, wait, let me check", "reconsideration")]
    # "hold on" would cover the start of "on second thought": the notebook's phrase keeps its span.
    assert spans_as_text("Hold on second thought, no.") == [("on second thought", "mistake")]
    assert spans_as_text("Hmm, wait, let me double-check.") == [
        ("Hmm", "interjection"),
        ("wait, let me double-check", "math_correction"),
    ]


def test_lower_casing_that_changes_length_keeps_offsets():
    text = "İİ. I made a mistake."  # "İ".lower() is two characters
    assert spans_as_text(text) == [("I made a mistake", "mistake")]
    assert notebook_has_backtracking(text)


def test_overlap_is_leftmost_longest():
    # "wait, that's not" (correction) starts first and wins over "that's not right" (mistake).
    assert spans_as_text("Wait, that's not right.") == [("Wait, that's not", "correction")]
    # At one position the longest phrase wins: "let me redo this calculation" over nothing shorter,
    # and "i made an arithmetic error" over "i made an error" (which does not match anyway).
    assert spans_as_text("Let me redo this calculation.") == [("Let me redo this calculation", "math_correction")]
    # Separate interjections next to each other are separate spans.
    assert spans_as_text("Hmm, wait.") == [("Hmm", "interjection"), ("wait", "interjection")]
    # A longer phrase that contains a shorter one, from another group: the longer one's group.
    assert spans_as_text("Hmm, I think I misunderstood the question.") == [
        ("Hmm, I think I misunderstood the question", "reconsideration")
    ]
    assert spans_as_text("Wait, that's not quite right.") == [("Wait, that's not quite right", "correction")]


def test_phrase_in_two_groups_takes_the_first_group():
    assert phrase_group("on second thought") == "mistake"
    assert phrase_group("let me recalculate") == "mistake"
    assert spans_as_text("On second thought, no.") == [("On second thought", "mistake")]


def test_unicode_and_think_tags():
    text = "<think>\nπr² ≈ 113.1 cm² 🙂 Wait, that doesn't match.\n</think>\n\\boxed{36π}"
    spans = label_text(text)
    assert [(text[s.start : s.end], s.group) for s in spans] == [("Wait, that doesn't", "correction")]


def test_every_lexicon_phrase_labels_itself():
    for group, phrases in LEXICON.items():
        for phrase in phrases:
            spans = label_text(f"So. {phrase.capitalize()}. Then.")
            assert [s.phrase for s in spans] == [phrase]
            assert spans[0].group == phrase_group(phrase)


def test_every_notebook_phrase_labels_its_own_text_with_its_group():
    for group, phrases in NOTEBOOK_LISTS.items():
        for phrase in phrases:
            spans = label_text(phrase)
            assert [(s.start, s.end, s.phrase) for s in spans] == [(0, len(phrase), phrase)]
            # The first list that holds a phrase names its group ("on second thought": mistake).
            first = next(g for g, listed in NOTEBOOK_LISTS.items() if phrase in listed)
            assert spans[0].group == first
            assert has_backtracking(spans) and notebook_has_backtracking(phrase.upper())


def random_texts(n, seed):
    """Texts built from lexicon phrases, near misses and filler, in random case: the two rules must agree."""
    rng = random.Random(seed)
    pieces = [p for phrases in LEXICON.values() for p in phrases] + [
        "await", "i should", "double-check", "that is", "hold", "hmmm", "wait,", "let me", "thought",
        "I’m not sure if", "shouldn't", "rethink", "i'm not", "İ", "x = 3.", "\n", "so", "re",
    ]
    for _ in range(n):
        parts = [rng.choice(pieces) for _ in range(rng.randint(1, 6))]
        text = rng.choice(["", " ", ", ", ". "]).join(parts)
        yield "".join(c.upper() if rng.random() < 0.3 else c for c in text)


def test_has_backtracking_equals_the_notebooks_substring_rule_on_every_text():
    for text in random_texts(3000, seed=0):
        expected = the_notebooks_rule(text)
        assert notebook_has_backtracking(text) == expected, text
        assert has_backtracking(label_text(text)) == expected, text


@pytest.mark.parametrize("sample", ["seed_format_sample_n10.json", "seed_format_sample_n20.json"])
def test_the_rules_agree_with_the_sources_own_label_on_the_shared_samples(sample):
    path = SHARED_DATA / sample
    if not path.is_file():
        pytest.skip(f"{path} is not here (it lives in the shared folder beside the checkout)")
    records = json.loads(path.read_text())
    for record in records:
        text = record["generated_cot"]
        source = str(record["has_backtracking"]) == "True"
        assert notebook_has_backtracking(text) == source == the_notebooks_rule(text), record["problem_id"]
        assert has_backtracking(label_text(text)) == source
        assert word_boundary_has_backtracking(text) == source  # substring and word boundary agree here
        if source:  # a notebook-group span covers part of the source's own phrase
            start = text.lower().index(record["backtracking_phrase"].lower())
            end = start + len(record["backtracking_phrase"])
            notebook_spans = [s for s in label_text(text) if s.group in NOTEBOOK_GROUPS]
            assert any(s.start < end and s.end > start for s in notebook_spans), record["problem_id"]


def test_has_backtracking_is_the_notebooks_six_groups():
    assert has_backtracking(label_text("I miscalculated."))
    assert not has_backtracking(label_text("Wait. Hmm."))
    assert has_backtracking(label_text("Wait."), groups=("interjection",))
    assert len(NOTEBOOK_GROUPS) == 6 and "interjection" not in NOTEBOOK_GROUPS


def test_group_counts_has_every_group():
    counts = group_counts(label_text("Wait. Hmm. I miscounted."))
    assert set(counts) == set(GROUPS)
    assert counts["interjection"] == 2 and counts["miscalculation"] == 1


def test_token_spans_from_offsets_by_hand():
    text = "x=1. Wait, that's not it"
    # Hand-made offsets, byte-level style: the space belongs to the following token.
    offsets = [(0, 0), (0, 1), (1, 2), (2, 3), (3, 4), (4, 9), (9, 10), (10, 15), (15, 17), (17, 21), (21, 24)]
    spans = label_text(text)
    assert [(text[s.start:s.end]) for s in spans] == ["Wait, that's not"]
    assert token_spans(offsets, spans) == [(5, 10, "correction")]
    ids = token_group_ids(offsets, spans)
    assert ids.tolist() == [NO_GROUP] * 5 + [GROUPS.index("correction")] * 5 + [NO_GROUP]


def test_span_beyond_truncated_tokens_is_dropped():
    spans = [PhraseSpan(100, 104, "interjection", "wait")]
    assert token_spans([(0, 3), (3, 8)], spans) == []


@pytest.fixture(scope="module")
def byte_level_tokenizer():
    """The demo's byte-level BPE (Qwen2's split regex, real special tokens), trained on a few traces."""
    from explorer.demo_lm import train_tokenizer
    from explorer.synthetic import generate_traces

    texts = [t.record.text for t in generate_traces(300, seed=1)]
    return train_tokenizer(texts + ["√2 ≈ 1.414, π r² — 🙂 naïve café"], vocab_size=600)


@pytest.mark.parametrize(
    "text",
    [
        "Wait, that's not right.",
        "<think>\nHmm, the area is πr² ≈ 113.1 cm² 🙂. I made a mistake: it is 36π.\n</think>\n\\boxed{36π}",
        "x = 3. Let me recalculate",
        "naïve café: I’m not sure if √2 ≈ 1.41… On second thought, it is.",
    ],
)
def test_token_spans_cover_exactly_the_phrase_with_byte_level_bpe(byte_level_tokenizer, text):
    encoding = byte_level_tokenizer(text, return_offsets_mapping=True)
    ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    assert ids[0] == byte_level_tokenizer.bos_token_id and offsets[0] == (0, 0)
    spans = label_text(text)
    assert spans
    token_ranges = token_spans(offsets, spans)
    assert len(token_ranges) == len(spans)
    for span, tokens in zip(spans, token_ranges):
        covered = byte_level_tokenizer.decode(ids[tokens.start : tokens.end])
        assert text[span.start : span.end] in covered  # the tokens hold the whole phrase
        # ...and nothing more than the tokens that touch it: the first and last tokens overlap the span.
        first, last = offsets[tokens.start], offsets[tokens.end - 1]
        assert first[0] < span.end and first[1] > span.start
        assert last[0] < span.end and last[1] > span.start
    group_ids = token_group_ids(offsets, spans)
    assert group_ids[0] == NO_GROUP  # BOS is never inside a phrase
    assert (group_ids != NO_GROUP).sum() == sum(t.end - t.start for t in token_ranges)
