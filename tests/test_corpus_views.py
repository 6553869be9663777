"""The Corpus page's listing: filtering and pages on a hand-made table."""

import pandas as pd

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
