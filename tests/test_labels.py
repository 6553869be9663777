"""The labeller on hand-written strings: spans, groups, overlaps, and token positions."""

import pytest

from explorer.labels import NO_GROUP, PhraseSpan, group_counts, has_backtracking, label_text, token_group_ids, token_spans
from explorer.lexicon import GROUPS, LEXICON, NOTEBOOK_GROUPS, phrase_group


def spans_as_text(text):
    return [(text[s.start : s.end], s.group) for s in label_text(text)]


def test_phrase_at_start_and_end_of_text():
    text = "I made a mistake in the sum, so let me recalculate"
    assert spans_as_text(text) == [("I made a mistake", "mistake"), ("let me recalculate", "mistake")]
    assert label_text(text)[0].start == 0
    assert label_text(text)[-1].end == len(text)


def test_case_insensitive_and_curly_apostrophe():
    assert spans_as_text("I’M NOT SURE IF this holds.") == [("I’M NOT SURE IF", "doubt")]
    assert label_text("i'm not sure if")[0].phrase == "i'm not sure if"


def test_word_boundaries():
    assert label_text("We await the result; hmmm is not hmm.") == [PhraseSpan(33, 36, "interjection", "hmm")]
    assert label_text("unreconsidering") == []


def test_overlap_is_leftmost_longest():
    # "wait, that's not" (correction) starts first and wins over "that's not right" (mistake).
    assert spans_as_text("Wait, that's not right.") == [("Wait, that's not", "correction")]
    # At one position the longest phrase wins: "let me redo this calculation" over nothing shorter,
    # and "i made an arithmetic error" over "i made an error" (which does not match anyway).
    assert spans_as_text("Let me redo this calculation.") == [("Let me redo this calculation", "math_correction")]
    # Separate interjections next to each other are separate spans.
    assert spans_as_text("Hmm, wait.") == [("Hmm", "interjection"), ("wait", "interjection")]


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
