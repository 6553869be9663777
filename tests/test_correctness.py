"""Boxed-answer extraction and the notebook's correctness rule."""

from __future__ import annotations

import pytest

from explorer.correctness import extract_boxed_answers, is_correct, normalise_answer


def test_nested_braces_are_balanced():
    # The notebook's regex `\\boxed{([^}]*)}` gave "\frac{1" here.
    assert extract_boxed_answers(r"so \boxed{\frac{1}{2}} is it") == [r"\frac{1}{2}"]


def test_deeply_nested_and_escaped_braces():
    assert extract_boxed_answers(r"\boxed{\sqrt{\frac{a}{b^{2}}}}") == [r"\sqrt{\frac{a}{b^{2}}}"]
    assert extract_boxed_answers(r"\boxed{\{1, 2\}}") == [r"\{1, 2\}"]


def test_multiple_boxes_in_order_and_stripped():
    text = r"first \boxed{ 3 } then \boxed{x = 4} and \boxed{}"
    assert extract_boxed_answers(text) == ["3", "x = 4", ""]


def test_no_box_and_unclosed_box():
    assert extract_boxed_answers("the answer is 4") == []
    assert extract_boxed_answers(r"\boxed{4} then cut off \boxed{\frac{1}{2") == ["4"]


def test_normalise_removes_all_whitespace_and_lower_cases():
    assert normalise_answer("  X = 4\n") == "x=4"
    assert normalise_answer("F'(x) = 6x^2 - 6x\t+ 4") == "f'(x)=6x^2-6x+4"


@pytest.mark.parametrize(
    "generated, truth, expected",
    [
        (r"... \boxed{\frac{1}{2}}", r"\frac{1}{2}", True),
        (r"... \boxed{X = 4}", "x=4", True),  # whitespace and case do not matter
        (r"... \boxed{3} no wait \boxed{4}", "4", True),  # any boxed answer counts
        (r"... \boxed{4}", r"The answer is \boxed{ 4 }.", True),  # ground truth with its own box
        (r"... \boxed{4}", r"\boxed{3} or \boxed{4}", True),
        (r"... \boxed{0.5}", r"\frac{1}{2}", False),  # no maths equivalence, as in the notebook
        ("the answer is 4", "4", False),  # no box
        (r"\boxed{}", "", False),  # nothing equals an empty ground truth
        (r"\boxed{\frac{1}{2}}", r"\frac{1}", False),  # the old regex's truncation no longer matches
    ],
)
def test_is_correct(generated, truth, expected):
    assert is_correct(generated, truth) is expected
