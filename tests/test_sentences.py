"""Sentence segmentation (Thought Anchors' rule) on hand-written traces, and the stored sentences table."""

import pandas as pd
import pyarrow.parquet as pq

from explorer.prompts import format_prompt
from explorer.sentences import (
    SENTENCE_RULE_VERSION,
    compute_sentences,
    read_sentences,
    segment,
    sentences_frame,
    sentences_path,
    sentences_table,
    stored_rule_version,
    think_region,
)


def sentences(text):
    return [text[start:end] for start, end in segment(text)]


def test_plain_rule_period_question_exclamation_and_blank_line():
    text = "<think>\nFirst I add. Is it 5? Yes! So far so good\nstill the same sentence\n\nA new paragraph</think>"
    assert sentences(text) == [
        "First I add.",
        "Is it 5?",
        "Yes!",
        "So far so good\nstill the same sentence",
        "A new paragraph",
    ]


def test_a_terminator_must_be_followed_by_whitespace():
    assert sentences("<think>x=3.Then y.</think>") == ["x=3.Then y."]
    assert sentences("<think>Done.\nNext.</think>") == ["Done.", "Next."]


def test_abbreviations_do_not_end_a_sentence():
    text = "<think>Use a rule, e.g. the power rule, i.e. nx^(n-1). Dr. Lee and Mr. Ho agree, cf. Eq. 3. Next.</think>"
    assert sentences(text) == [
        "Use a rule, e.g. the power rule, i.e. nx^(n-1).",
        "Dr. Lee and Mr. Ho agree, cf. Eq. 3.",
        "Next.",
    ]
    # Case-insensitive, and only as a whole word: "toe.g." is no abbreviation, so its "." ends a sentence.
    assert sentences("<think>E.G. this. I stubbed my toe.g. Oh.</think>") == ["E.G. this.", "I stubbed my toe.g.", "Oh."]


def test_decimals_and_equations():
    text = "<think>\nSo 3.5 * 2 = 7.0 and x = 2.5y. Then 0.25 + .5 = 0.75.\nf(x) = x^2 - 3.1x, so f'(x) = 2x - 3.1.</think>"
    assert sentences(text) == [
        "So 3.5 * 2 = 7.0 and x = 2.5y.",
        "Then 0.25 + .5 = 0.75.",
        "f(x) = x^2 - 3.1x, so f'(x) = 2x - 3.1.",
    ]


def test_math_delimiters_and_boxed_are_never_split_but_a_blank_line_is():
    text = (
        "<think>\nWe get \\[ x = 1. \\] Hence \\( y = 2. \\) holds. Then $$ z = 3. w = 4. $$ ok. "
        "So \\boxed{\\frac{1}{2}. 3! ok} is the answer.\n\n\\boxed{open. \n\nafter</think>"
    )
    assert sentences(text) == [
        "We get \\[ x = 1. \\] Hence \\( y = 2. \\) holds.",
        "Then $$ z = 3. w = 4. $$ ok.",
        "So \\boxed{\\frac{1}{2}. 3! ok} is the answer.",
        "\\boxed{open.",  # an unclosed box still ends at the blank line
        "after",
    ]


def test_numbered_list_items_and_closing_quotes():
    text = '<think>\n1. Multiply 3 by 4.\n2. Add 5.\n10. He said "stop." Then (we stop.) Fine.</think>'
    assert sentences(text) == ["1. Multiply 3 by 4.", "2. Add 5.", '10. He said "stop."', "Then (we stop.)", "Fine."]


def test_unicode_offsets_are_characters():
    text = "<think>\nπ ≈ 3.14. Über café, naïve résumé! 🙂 Emoji line. 中文句子。 Still one\n</think>"
    spans = segment(text)
    assert [text[s:e] for s, e in spans] == ["π ≈ 3.14.", "Über café, naïve résumé!", "🙂 Emoji line.", "中文句子。 Still one"]
    assert text.index("π") == spans[0].start


def test_region_prompt_and_text_after_think_close_have_no_sentences():
    text = format_prompt("What is 2 + 2? Show it.") + "Two plus two. Is 4.\n</think>\n\nThe answer. \\boxed{4}"
    assert sentences(text) == ["Two plus two.", "Is 4."]
    start, end = think_region(text)
    assert text[start:end] == "\nTwo plus two. Is 4.\n"


def test_a_trace_without_think_is_segmented_whole_and_a_missing_close_runs_to_the_end():
    assert sentences("No tags here. Second one!\nThird") == ["No tags here.", "Second one!", "Third"]
    assert sentences("Prompt. <think>Cut off mid. sentence") == ["Cut off mid.", "sentence"]
    # OpenR1-style text without the opening tag: the thinking runs up to </think>.
    assert sentences("Thinking. More.</think>\nAnswer. Here.") == ["Thinking.", "More."]
    assert sentences("") == [] and sentences("<think>\n \n</think>") == []


def test_sentences_frame_numbers_sentences_per_document():
    frame = sentences_frame([("a", "<think>One. Two.</think>"), ("b", "<think></think>"), ("c", "Three. Four. Five.")])
    assert list(frame.columns) == ["doc_id", "sentence_index", "start", "end"]
    assert frame["doc_id"].tolist() == ["a", "a", "c", "c", "c"]
    assert frame["sentence_index"].tolist() == [0, 1, 0, 1, 2]
    assert frame[["start", "end"]].values.tolist() == [[7, 11], [12, 16], [0, 6], [7, 12], [13, 18]]


def _write_documents(run_dir, texts):
    corpus = run_dir / "corpus"
    corpus.mkdir(parents=True)
    pd.DataFrame({"doc_id": list(texts), "text": list(texts.values())}).to_parquet(corpus / "documents.parquet")


def test_read_sentences_computes_them_for_a_run_without_the_file_and_reads_a_current_file(tmp_path):
    _write_documents(tmp_path, {"d1": "<think>A. B.</think>", "d2": "C? D!"})
    computed = read_sentences(tmp_path)  # an old run: no sentences.parquet, computed on demand
    assert computed["doc_id"].tolist() == ["d1", "d1", "d2", "d2"]
    assert not sentences_path(tmp_path).exists()

    # A stored file made with the current rule is read as it is (here a doctored one, to tell them apart).
    doctored = computed.iloc[:1]
    pq.write_table(sentences_table(doctored), sentences_path(tmp_path))
    assert stored_rule_version(sentences_path(tmp_path)) == SENTENCE_RULE_VERSION
    assert read_sentences(tmp_path).equals(doctored)
    # A file without the rule version (or an older one) is recomputed.
    doctored.to_parquet(sentences_path(tmp_path))
    assert stored_rule_version(sentences_path(tmp_path)) is None
    assert read_sentences(tmp_path).equals(compute_sentences(tmp_path))
