"""Label sets: built-in sets, the sentence-tag importers (JSONL, Thought Anchors folders), phrase and regex
sets, agreement, atomic storage, bad input through the CLI, and the demo's synthetic tags."""

import hashlib
import json
import math
import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from explorer.label_import import import_sentence_tags, read_tag_jsonl, read_thought_anchors
from explorer.label_sets import (
    SENTENCE,
    SPAN,
    THOUGHT_ANCHORS_TAGS,
    LabelSet,
    LabelSetData,
    LabelSetError,
    compare_label_sets,
    read_label_documents,
    read_label_sets,
    read_label_spans,
    read_sentence_labels,
    sentence_positives,
)
from explorer.labels import label_text
from explorer.sentences import read_sentences, segment
from explorer.synthetic import generate_traces, sentence_tags
from precompute.cli import main
from precompute.label_store import write_label_sets

# Sentences (segment): a0 "I add 2 and 3."  a1 "Wait, that's not right."  a2 "It is 5."  a3 "So the answer is 5."
#                      b0 "Hmm, let me see."  b1 "I think 4 works."  b2 "Let me verify: 2 + 2 = 4."  b3 "Done."
#                      c0 "Nothing to see here."  c1 "Just compute 7 * 6 = 42."
TEXTS = {
    "a": "Q: add 2 and 3.\n<think>\nI add 2 and 3. Wait, that's not right. It is 5.\n\nSo the answer is 5.\n</think>\n\\boxed{5}",
    "b": "<think>\nHmm, let me see. I think 4 works. Let me verify: 2 + 2 = 4. Done.</think>",
    "c": "<think>\nNothing to see here. Just compute 7 * 6 = 42.</think>",
}


def sentence_text(doc_id, index):
    start, end = segment(TEXTS[doc_id])[index]
    return TEXTS[doc_id][start:end]


def make_run(root: Path, texts=TEXTS) -> Path:
    corpus = root / "corpus"
    corpus.mkdir(parents=True)
    pd.DataFrame({"doc_id": list(texts), "text": list(texts.values())}).to_parquet(corpus / "documents.parquet")
    phrases = [
        {"doc_id": d, "start": s.start, "end": s.end, "group": s.group, "phrase": s.phrase}
        for d, t in texts.items()
        for s in label_text(t)
    ]
    pd.DataFrame(phrases, columns=["doc_id", "start", "end", "group", "phrase"]).to_parquet(corpus / "phrases.parquet")
    return root


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def snapshot(run: Path) -> dict[str, str]:
    """Every file under the run, with a hash of its bytes: to check that a failed command changed nothing."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.rglob("*")) if p.is_file()}


# The labeller's tags used below: uncertainty_management on a1, a2, b0; active_computation on a0, c1;
# self_checking on b2. Sentences are given by text, by span and by index.
TAGS = [
    {"trace_id": "a", "sentences": [
        {"text": "I add 2 and 3.", "tags": ["active_computation"]},
        {"text": "Wait,  that's not\nright.", "tags": ["uncertainty_management"]},  # whitespace differs
        {"start": TEXTS["a"].index("It is 5."), "end": TEXTS["a"].index("It is 5.") + 8, "tags": ["uncertainty_management"]},
        {"index": 3, "tags": []},
    ]},
    {"trace_id": "b", "sentences": [
        {"index": 0, "tags": ["uncertainty_management"]},
        {"text": "Let me verify: 2 + 2 = 4.", "tags": ["self_checking"]},
    ]},
    # No doc_id "trace-c": found by its text (whitespace differs).
    {"trace_id": "trace-c", "text": TEXTS["c"].replace("\n", "  "), "sentences": [
        {"text": "Just compute 7 * 6 = 42.", "tags": ["active_computation"]},
    ]},
]


@pytest.fixture
def run(tmp_path):
    run = make_run(tmp_path / "run")
    assert main(["labels", "--out", str(run), "--add", "tag", "--from", str(write_jsonl(tmp_path / "tags.jsonl", TAGS))]) == 0
    return run


def test_builtin_sets_come_from_the_lexicon_and_the_sentences(tmp_path):
    run = make_run(tmp_path)
    sets = read_label_sets(run)
    assert sets["backtracking"] == LabelSet("backtracking", SPAN, "built-in", sets["backtracking"].description)
    assert {n for n in sets if n.startswith("group:")} == {
        "group:mistake", "group:correction", "group:reconsideration", "group:miscalculation", "group:doubt",
        "group:math_correction", "group:interjection",
    }
    wait = TEXTS["a"].index("Wait, that's not")
    assert read_label_spans(run, "backtracking").values.tolist() == [["a", wait, wait + len("Wait, that's not")]]
    assert read_label_spans(run, "group:correction").equals(read_label_spans(run, "backtracking"))
    assert read_label_spans(run, "group:interjection")["doc_id"].tolist() == ["b"]  # "Hmm"
    assert sets["sentence:backtracking"].kind == SENTENCE
    sentence_spans = read_label_spans(run, "sentence:backtracking")
    assert [TEXTS[d][s:e] for d, s, e in sentence_spans.values] == ["Wait, that's not right."]
    any_phrase = read_label_spans(run, "sentence:any_phrase")
    assert [TEXTS[d][s:e] for d, s, e in any_phrase.values] == ["Wait, that's not right.", "Hmm, let me see."]
    assert read_label_documents(run, "backtracking") == ["a", "b", "c"]


def test_jsonl_import_places_sentences_by_text_span_and_index_and_maps_traces_by_id_or_text(run):
    sets = read_label_sets(run)
    assert {n for n in sets if n.startswith("tag:")} == {"tag:uncertainty_management", "tag:active_computation", "tag:self_checking"}
    um = sets["tag:uncertainty_management"]
    assert um.kind == SENTENCE and um.source.startswith("jsonl: ")
    placed = [TEXTS[d][s:e] for d, s, e in read_label_spans(run, "tag:uncertainty_management").values]
    assert placed == ["Wait, that's not right.", "It is 5.", "Hmm, let me see."]
    computation = read_label_spans(run, "tag:active_computation")
    assert [(d, TEXTS[d][s:e]) for d, s, e in computation.values] == [("a", "I add 2 and 3."), ("c", "Just compute 7 * 6 = 42.")]
    assert read_label_documents(run, "tag:self_checking") == ["a", "b", "c"]  # every trace of the file
    labels = read_sentence_labels(run, "tag:uncertainty_management")
    assert labels.loc[labels["positive"], ["doc_id", "sentence_index"]].values.tolist() == [["a", 1], ["a", 2], ["b", 0]]


def test_a_second_import_under_the_same_name_replaces_the_first(run, tmp_path, capsys):
    only_checks = [{"trace_id": "b", "sentences": [{"index": 2, "tags": ["self_checking"]}]}]
    path = write_jsonl(tmp_path / "again.jsonl", only_checks)
    assert main(["labels", "--out", str(run), "--add", "tag", "--from", str(path)]) == 0
    assert {n for n in read_label_sets(run) if n.startswith("tag:")} == {"tag:self_checking"}
    assert "removed (no longer tagged in this import): tag:active_computation, tag:uncertainty_management" in capsys.readouterr().out
    assert read_label_documents(run, "tag:self_checking") == ["b"]


def test_compare_gives_known_precision_and_recall_per_unit(run, tmp_path):
    table = compare_label_sets(run, "sentence:*", "tag:uncertainty_management").set_index("a")
    # sentence:any_phrase = {a1, b0}; tag:um = {a1, a2, b0}
    assert table.loc["sentence:any_phrase", ["n_a", "n_b", "n_a_in_b"]].tolist() == [2, 3, 2]
    assert table.loc["sentence:any_phrase", "precision"] == 1.0
    assert table.loc["sentence:any_phrase", "recall"] == pytest.approx(2 / 3)
    assert table.loc["sentence:backtracking", ["precision", "recall"]].tolist() == pytest.approx([1.0, 1 / 3])
    # A span set against a sentence set: the sentences that contain a span (group:interjection -> b0).
    row = compare_label_sets(run, "group:interjection", "tag:uncertainty_management").iloc[0]
    assert (row.unit, row.n_a, row.precision, row.recall) == ("sentence", 1, 1.0, pytest.approx(1 / 3))
    # Against itself, and the other way round (precision and recall swap).
    row = compare_label_sets(run, "tag:uncertainty_management", "sentence:any_phrase").iloc[0]
    assert (row.precision, row.recall) == (pytest.approx(2 / 3), 1.0)
    # Two span sets: spans. A regex set of every digit: none overlaps "Wait, that's not".
    digits = tmp_path / "digits.txt"
    digits.write_text("# digits\n\\d\n")
    assert main(["labels", "--out", str(run), "--add", "digits", "--regex", str(digits)]) == 0
    row = compare_label_sets(run, "digits", "backtracking").iloc[0]
    n_digits = sum(len(re.findall(r"\d+", t)) for t in TEXTS.values())  # touching matches ("4", "2") merge
    assert (row.unit, row.n_a, row.n_b, row.precision, row.recall) == ("span", n_digits, 1, 0.0, 0.0)
    row = compare_label_sets(run, "backtracking", "group:correction").iloc[0]
    assert (row.unit, row.precision, row.recall) == ("span", 1.0, 1.0)
    # The unit can be forced: as sentences, the digits' sentences against the correction's.
    row = compare_label_sets(run, "digits", "backtracking", unit="sentence").iloc[0]
    assert (row.n_a, row.n_b, row.n_a_in_b) == (6, 1, 0)  # a0 a2 a3 b1 b2 c1 (the prompt and the box: no sentence)
    # A set that labels fewer traces: only the documents both label count.
    other = write_jsonl(tmp_path / "other.jsonl", [{"trace_id": "b", "sentences": [{"index": 0, "tags": ["uncertainty_management"]},
                                                                                  {"index": 1, "tags": ["uncertainty_management"]}]}])
    assert main(["labels", "--out", str(run), "--add", "other", "--from", str(other)]) == 0
    row = compare_label_sets(run, "other:uncertainty_management", "tag:uncertainty_management").iloc[0]
    assert (row.n_documents, row.n_a, row.n_b, row.precision, row.recall) == (1, 2, 1, 0.5, 1.0)
    # Undefined precision (no positives in a) is NaN, not an error.
    row = compare_label_sets(run, "group:doubt", "tag:uncertainty_management").iloc[0]
    assert row.n_a == 0 and math.isnan(row.precision) and row.recall == 0.0


def test_compare_prints_a_table_and_unknown_names_are_clear(run, capsys):
    assert main(["labels", "--out", str(run), "--compare", "sentence:backtracking", "tag:uncertainty_management"]) == 0
    out = capsys.readouterr().out
    assert "sentence:backtracking  tag:uncertainty_management  sentence" in out and "100.0%" in out and "33.3%" in out
    assert main(["labels", "--out", str(run), "--compare", "nope:*", "backtracking"]) == 2
    assert "No label set 'nope:*'" in capsys.readouterr().err


def test_sentence_sets_need_half_a_sentence_and_span_sets_one_character():
    sentences = pd.DataFrame({"doc_id": ["d", "d", "e"], "start": [0, 10, 0], "end": [10, 30, 10]})
    straddling = pd.DataFrame({"doc_id": ["d"], "start": [0], "end": [14]})  # all of the first, 4 of 20 of the second
    assert sentence_positives(sentences, straddling, SENTENCE).tolist() == [True, False, False]
    assert sentence_positives(sentences, straddling, SPAN).tolist() == [True, True, False]
    halves = pd.DataFrame({"doc_id": ["d", "d"], "start": [10, 15], "end": [15, 20]})  # two pieces, half together
    assert sentence_positives(sentences, halves, SENTENCE).tolist() == [False, True, False]


def test_phrase_sets_match_case_insensitively_on_word_boundaries(run, tmp_path, capsys):
    phrases = tmp_path / "phrases.txt"
    phrases.write_text("# hedges\nlet me\n\nI think\nthink 4\nadd\n")
    assert main(["labels", "--out", str(run), "--add", "hedges", "--phrases", str(phrases), "--description", "hedging"]) == 0
    assert "added hedges (span set)" in capsys.readouterr().out
    spans = read_label_spans(run, "hedges")
    found = [TEXTS[d][s:e] for d, s, e in spans.values]
    # "add" in "Q: add" and "I add"; leftmost-longest, as the lexicon: "I think" starts first and wins over
    # "think 4", which starts inside it.
    assert found == ["add", "add", "let me", "I think", "Let me"]
    assert read_label_sets(run)["hedges"] == LabelSet("hedges", SPAN, f"phrases: {phrases}", "hedging")


def test_thought_anchors_folders_are_imported_and_a_chunk_that_does_not_match_is_reported(tmp_path, capsys):
    cot_1 = "Let me add 2 and 3. That is 5.\n\nHmm, wait. Is it 5? Yes."
    cot_2 = "Multiply 6 by 7. That is 42."
    texts = {"doc-1": "Solve. <think>\n" + cot_1 + "\n</think>\n\\boxed{5}", "doc-2": "<think>\n" + cot_2 + "</think>"}
    run = make_run(tmp_path / "run", texts)
    root = tmp_path / "rollouts" / "correct_base_solution"
    for name, cot, chunks in (
        ("problem_1", cot_1, [("Let me add 2 and\n3.", ["plan_generation"]), ("That is 5.", ["active_computation"]),
                              ("Hmm,  wait.", ["uncertainty_management"]), ("Is it 5?", ["self_checking"]),
                              ("Yes.", ["self_checking"])]),
        ("problem_2", cot_2, [("Multiply 6 by 7.", ["active_computation"]), ("That is 43.", ["result_consolidation"])]),
    ):
        folder = root / name
        folder.mkdir(parents=True)
        base = {"prompt": "Solve.", "solution": cot.replace("\n\n", "\n"), "full_cot": "Solve. <think> " + cot, "answer": "5",
                "is_correct": True}
        (folder / "base_solution.json").write_text(json.dumps(base))
        labelled = [{"chunk": c, "chunk_idx": i, "function_tags": tags, "depends_on": [], "accuracy": 1.0,
                     "summary": "s"} for i, (c, tags) in enumerate(chunks)]
        (folder / "chunks_labeled.json").write_text(json.dumps(labelled[::-1]))  # order comes from chunk_idx
    traces = read_thought_anchors(tmp_path / "rollouts")
    assert [t.trace_id for t in traces] == ["correct_base_solution/problem_1", "correct_base_solution/problem_2"]

    assert main(["labels", "--out", str(run), "--add", "ta", "--from", str(tmp_path / "rollouts")]) == 0
    out = capsys.readouterr().out
    assert "matched by doc_id 0, by text 2" in out
    assert "sentences: 7; placed 6; not placed 1" in out
    assert "chunk 1: text not found in document 'doc-2': 'That is 43.'" in out
    placed = {n: [texts[d][s:e] for d, s, e in read_label_spans(run, n).values] for n in read_label_sets(run) if n.startswith("ta:")}
    assert placed == {
        "ta:plan_generation": ["Let me add 2 and 3."],
        "ta:active_computation": ["That is 5.", "Multiply 6 by 7."],
        "ta:uncertainty_management": ["Hmm, wait."],
        "ta:self_checking": ["Is it 5?", "Yes."],
    }  # ta:result_consolidation had only the chunk that was not placed
    assert json.loads(next((run / "corpus" / "label_sets").glob("ta_self*/label_set.json")).read_text())["import"]["n_unplaced"] == 1


BAD_INPUT = {
    "unknown trace id": ([{"trace_id": "zzz", "sentences": [{"index": 0, "tags": ["x"]}]}], "match no document of"),
    # A text that only a small part of a document holds does not find it ("Done." is b's last sentence).
    "a trace text too short to be a document": (
        [{"trace_id": "zzz", "text": "Done.", "sentences": [{"index": 0, "tags": ["x"]}]}], "match no document of",
    ),
    "a sentence index past the end": (
        [{"trace_id": "a", "sentences": [{"index": 9, "tags": ["x"]}]}], "sentence index 9, but document 'a' has 4 sentences",
    ),
    "a span past the end": (
        [{"trace_id": "c", "sentences": [{"start": 10, "end": 999, "tags": ["x"]}]}], "characters 10-999, past the end",
    ),
    "a sentence not in the trace": (
        [{"trace_id": "b", "sentences": [{"text": "Not in b.", "tags": ["x"]}]}], "text not found in document 'b': 'Not in b.'",
    ),
    "no tag at all": ([{"trace_id": "b", "sentences": [{"index": 0, "tags": []}]}], "every sentence's `tags` list is empty"),
    "tags not a list": ([{"trace_id": "b", "sentences": [{"index": 0, "tags": "x"}]}], "`tags` must be a list"),
    "a sentence given twice over": (
        [{"trace_id": "b", "sentences": [{"index": 0, "text": "Done.", "tags": ["x"]}]}], "exactly one of `text`",
    ),
    "a trace twice": ([{"trace_id": "b", "sentences": []}, {"trace_id": "b", "sentences": []}], "Trace ids appear twice"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_tag_files_stop_with_a_clear_message_and_leave_the_run_as_it_was(run, tmp_path, capsys, case):
    records, message = BAD_INPUT[case]
    before = snapshot(run)
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    assert main(["labels", "--out", str(run), "--add", "tag", "--from", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert snapshot(run) == before


@pytest.mark.parametrize(
    "option, content, message",
    [
        ("--from", "", "is empty: no trace to import"),
        ("--from", "\n  \n", "is empty: no trace to import"),
        ("--from", "{not json\n", ":1: not JSON"),
        ("--phrases", "# only a comment\n\n", "is empty: no phrases in it"),
        ("--regex", "", "is empty: no regular expressions in it"),
        ("--regex", "fine\n(unclosed\n", ":2: bad regular expression '(unclosed': missing ), unterminated subpattern"),
    ],
)
def test_empty_files_and_bad_regular_expressions_stop_and_leave_the_run_as_it_was(run, tmp_path, capsys, option, content, message):
    before = snapshot(run)
    path = tmp_path / "input.txt"
    path.write_text(content)
    assert main(["labels", "--out", str(run), "--add", "mine", option, str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert snapshot(run) == before


def test_names_of_built_in_sets_and_odd_names_are_refused(run, tmp_path, capsys):
    phrases = tmp_path / "p.txt"
    phrases.write_text("wait\n")
    before = snapshot(run)
    for name, message in (("backtracking", "built-in label set's name"), ("group", "built-in"), ("a:b", "Bad label set name"),
                          ("x*", "Bad label set name")):
        assert main(["labels", "--out", str(run), "--add", name, "--phrases", str(phrases)]) == 2
        assert message in capsys.readouterr().err
    assert main(["labels", "--out", str(run), "--remove", "backtracking"]) == 2
    assert "built-in label sets are computed" in capsys.readouterr().err
    assert main(["labels", "--out", str(run), "--add", "x"]) == 2
    assert "needs --from FILE, --phrases FILE or --regex FILE" in capsys.readouterr().err
    assert snapshot(run) == before


def test_a_write_that_fails_halfway_leaves_the_stored_sets_as_they_were(run):
    before = snapshot(run)
    bad = LabelSetData(
        LabelSet("bad", SPAN, "test", "a set whose documents cannot be written"),
        pd.DataFrame({"doc_id": ["a"], "start": [0], "end": [1]}),
        documents=["a", 1],  # mixed types: the coverage column cannot be written (after the kept sets were copied)
    )
    with pytest.raises(Exception):
        write_label_sets(run, [bad], remove=["tag:self_checking"])
    assert snapshot(run) == before
    assert not [p for p in (run / "corpus").iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_remove_and_list(run, capsys):
    assert main(["labels", "--out", str(run), "--remove", "tag:self_checking"]) == 0
    assert "tag:self_checking" not in read_label_sets(run)
    assert main(["labels", "--out", str(run), "--list"]) == 0
    out = capsys.readouterr().out
    assert "tag:uncertainty_management  sentence" in out and "backtracking" in out
    assert (run / "corpus" / "sentences.parquet").is_file()  # --list stores the sentences of an older run


def test_import_sentence_tags_in_lenient_mode_reports_unknown_traces(tmp_path):
    run = make_run(tmp_path)
    path = write_jsonl(tmp_path / "t.jsonl", [{"trace_id": "zzz", "sentences": []}, {"trace_id": "a", "sentences": [{"index": 0, "tags": ["x"]}]}])
    sets, report = import_sentence_tags(run, "t", read_tag_jsonl(path), source="test", strict=False)
    assert [d.label_set.name for d in sets] == ["t:x"] and len(report.unmatched_traces) == 1
    with pytest.raises(LabelSetError, match="match no document"):
        import_sentence_tags(run, "t", read_tag_jsonl(path), source="test", strict=True)


# ----------------------------------------------------------------------------------------------------
# The demo's synthetic tags


def test_synthetic_traces_tag_every_sentence_with_one_tag_of_the_taxonomy():
    traces = generate_traces(1500, seed=0)
    counts = Counter()
    for trace in traces:
        text = trace.record.text
        tagged = sentence_tags(trace)
        assert [(s, e) for s, e, _ in tagged] == [tuple(s) for s in segment(text)]
        assert all(len(tags) == 1 and tags[0] in THOUGHT_ANCHORS_TAGS for _, _, tags in tagged)
        by_start = {s: tags[0] for s, _, tags in tagged}
        counts.update(by_start.values())

        def tag_at(position):
            return next(tags[0] for s, e, tags in tagged if s <= position < e)

        for span in trace.phrase_spans:  # every phrase lies in a correction
            assert tag_at(span.start) == "uncertainty_management"
        for start, _ in trace.error_spans:  # a wrong step is computation
            assert tag_at(start) == "active_computation"
        assert tagged[-1][2] == ("final_answer_emission",)
        for line_start in (i + 1 for i, ch in enumerate(text) if ch == "\n"):
            if text.startswith(("Let me double-check", "Let me verify", "Quick check"), line_start):
                assert tag_at(line_start) == "self_checking"
    assert set(counts) == set(THOUGHT_ANCHORS_TAGS)
    n_corrected = sum(len(t.error_spans) for t in traces)
    assert counts["uncertainty_management"] >= n_corrected  # at least one sentence per correction


def test_corpus_stage_stores_sentences_and_tags_and_adds_them_to_a_run_built_without(tmp_path, capsys):
    from precompute.corpus_stage import run_corpus_stage
    from explorer.config import CorpusSpec

    run = tmp_path / "run"
    spec = CorpusSpec(source="synthetic", n_traces=40, seed=0)
    run_corpus_stage(spec, run)
    assert read_sentences(run).equals(pd.read_parquet(run / "corpus" / "sentences.parquet"))
    tags = {n: s for n, s in read_label_sets(run).items() if n.startswith("tag:")}
    assert set(tags) <= {f"tag:{t}" for t in THOUGHT_ANCHORS_TAGS} and "tag:uncertainty_management" in tags
    assert all(s.kind == SENTENCE and s.source.startswith("synthetic generator") for s in tags.values())
    expected = {t: sorted((tr.record.doc_id, s, e) for tr in generate_traces(40) for s, e, tg in sentence_tags(tr) if t in tg)
                for t in THOUGHT_ANCHORS_TAGS}
    for name in tags:
        assert sorted(map(tuple, read_label_spans(run, name).values.tolist())) == expected[name[len("tag:"):]]

    # A run from before sentences and tags: the stage, finding its corpus current, adds them and rebuilds nothing.
    manifest = (run / "corpus" / "stage.json").read_text()
    documents = (run / "corpus" / "documents.parquet").read_bytes()
    (run / "corpus" / "sentences.parquet").unlink()
    for folder in (run / "corpus" / "label_sets").iterdir():
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    capsys.readouterr()
    run_corpus_stage(spec, run)
    out = capsys.readouterr().out
    assert "up to date" in out and "sentence tags:" in out and "sentences:" in out
    assert (run / "corpus" / "stage.json").read_text() == manifest
    assert (run / "corpus" / "documents.parquet").read_bytes() == documents
    assert set(n for n in read_label_sets(run) if n.startswith("tag:")) == set(tags)
    run_corpus_stage(spec, run)  # and a third time: nothing to add
    assert "sentence tags:" not in capsys.readouterr().out


def test_the_jsonl_example_in_docs_imports_as_it_says(tmp_path):
    doc = (Path(__file__).resolve().parents[1] / "docs" / "labels.md").read_text(encoding="utf-8")
    example = re.search(r"```jsonl\n(.*?)```", doc, re.DOTALL).group(1)
    run = make_run(tmp_path / "run", {t.record.doc_id: t.record.text for t in generate_traces(3)})
    path = tmp_path / "example.jsonl"
    path.write_text(example, encoding="utf-8")
    assert main(["labels", "--out", str(run), "--add", "NAME", "--from", str(path)]) == 0
    counts = {n: len(read_label_spans(run, n)) for n in read_label_sets(run) if n.startswith("NAME:")}
    assert counts == {"NAME:plan_generation": 2, "NAME:active_computation": 2, "NAME:fact_retrieval": 1,
                      "NAME:final_answer_emission": 1}
    assert read_label_documents(run, "NAME:fact_retrieval") == ["synth-000001", "synth-000002"]
    text = generate_traces(2)[1].record.text
    assert [text[s:e] for _, s, e in read_label_spans(run, "NAME:active_computation").values][0] == "First, 6 * 8 = 48."


def test_one_traces_sentences_carry_every_set_they_are_positive_for(run):
    from explorer.label_sets import document_sentence_tags

    tags = document_sentence_tags(run, "a")
    by_text = {TEXTS["a"][s:e]: t for s, e, t in zip(tags["start"], tags["end"], tags["tags"])}
    wrong = by_text["Wait, that's not right."]
    assert {"backtracking", "group:correction", "sentence:backtracking", "sentence:any_phrase",
            "tag:uncertainty_management"} <= set(wrong)
    assert by_text["It is 5."] == ["tag:uncertainty_management"]
    assert "tag:active_computation" in by_text["I add 2 and 3."]
    assert tags["sentence_index"].tolist() == list(range(len(segment(TEXTS["a"]))))


def test_live_text_sentences_get_the_lexicons_sentence_sets():
    from explorer.live import live_sentence_tags

    text = "I add 2 and 3. Wait, that's not right. Hmm, let me see. It is 5."
    tags = live_sentence_tags(text, label_text(text))
    assert [(text[s:e], t) for s, e, t in tags.values] == [
        ("I add 2 and 3.", []),
        ("Wait, that's not right.", ["sentence:backtracking", "sentence:any_phrase"]),
        ("Hmm, let me see.", ["sentence:any_phrase"]),
        ("It is 5.", []),
    ]
