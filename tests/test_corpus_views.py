"""The Corpus page's listing: filtering and pages on a hand-made table."""

import pandas as pd
import pytest

from explorer.corpus_views import filter_documents, page_count, page_of, page_rows

DOCUMENTS = pd.DataFrame(
    {"doc_id": ["a-1", "a-2", "B-3", "b-4", "c-5"], "has_backtracking": [True, False, True, True, False]}
)


def test_filter_by_backtracking_and_id():
    assert filter_documents(DOCUMENTS, only_backtracking=True)["doc_id"].tolist() == ["a-1", "B-3", "b-4"]
    assert filter_documents(DOCUMENTS, only_backtracking=False, id_contains=" b- ")["doc_id"].tolist() == ["B-3", "b-4"]
    assert filter_documents(DOCUMENTS, only_backtracking=True, id_contains="a")["doc_id"].tolist() == ["a-1"]
    assert filter_documents(DOCUMENTS, only_backtracking=False, id_contains=".*").empty  # not a pattern


def test_pages():
    assert [page_count(n, page_size=2) for n in (0, 1, 2, 3, 5)] == [1, 1, 1, 2, 3]
    assert page_rows(DOCUMENTS, 3, page_size=2)["doc_id"].tolist() == ["c-5"]
    assert [page_of(DOCUMENTS, d, page_size=2) for d in ("a-1", "B-3", "c-5", "zz", None)] == [1, 2, 3, None, None]


def test_sentence_table_gives_each_sentence_its_tags_and_the_features_max_and_mean():
    from explorer.corpus_views import sentence_table

    text = "Let me add. Wait, that is wrong. So 7."
    sentences = pd.DataFrame({"start": [0, 12, 33], "end": [11, 32, 38], "tags": [[], ["a", "b"], ["b"]]})
    # Tokens: BOS (empty), then words; a token belongs to the sentence of its last character.
    offsets = [(0, 0), (0, 3), (3, 6), (6, 11), (11, 16), (16, 17), (17, 32), (32, 35), (35, 38)]
    values = [9.0, 1.0, 2.0, 3.0, 4.0, 0.0, 2.0, 5.0, 1.0]
    table = sentence_table(text, sentences, offsets, values)
    assert table["text"].tolist() == ["Let me add.", "Wait, that is wrong.", "So 7."]
    assert table["tags"].tolist() == ["", "a, b", "b"]
    # " Wait" (11-16) ends in sentence 1; " So" (32-35) ends in sentence 2; BOS belongs to none.
    assert table["max_activation"].tolist() == [3.0, 4.0, 5.0]
    assert table["mean_activation"].tolist() == pytest.approx([2.0, 2.0, 3.0])
    assert "max_activation" not in sentence_table(text, sentences).columns


def test_agreement_marks_split_two_label_sets_into_a_only_b_only_and_both():
    from explorer.corpus_views import agreement_marks
    from explorer.html import AGREEMENT_COLOURS

    a = pd.DataFrame({"start": [0, 20], "end": [10, 25]})
    b = pd.DataFrame({"start": [5], "end": [22]})
    marks = agreement_marks(a, b, ("lexicon", "tags"))
    assert [(m.start, m.end, m.colour) for m in marks] == [
        (0, 5, AGREEMENT_COLOURS["a"]), (5, 10, AGREEMENT_COLOURS["both"]), (10, 20, AGREEMENT_COLOURS["b"]),
        (20, 22, AGREEMENT_COLOURS["both"]), (22, 25, AGREEMENT_COLOURS["a"]),
    ]
    assert marks[1].title == "lexicon and tags"
    assert agreement_marks(a.iloc[:0], b.iloc[:0], ("x", "y")) == []
