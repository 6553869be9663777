"""Whether a trace's final answer is right: its `\\boxed{...}` answers against the ground truth.

The rule is the original notebook's: an answer is right when, after removing all whitespace and
lower-casing, some boxed answer in the trace equals the ground truth. Nothing smarter (no `1/2` versus
`0.5`, no `x = 4` versus `4`): the labels should mean what the notebook's labels meant.
"""

from __future__ import annotations

import re

BOXED = "\\boxed{"
_WHITESPACE = re.compile(r"\s+")


def extract_boxed_answers(text: str) -> list[str]:
    """The contents of every `\\boxed{...}` in `text`, in order, stripped of surrounding whitespace.

    Braces are matched: `\\boxed{\\frac{1}{2}}` gives `\\frac{1}{2}`. The notebook's regex
    `\\\\boxed{([^}]*)}` stopped at the first `}` and gave `\\frac{1`, so it called every fraction,
    set or other braced answer wrong. A box whose braces never close (a trace cut off mid-answer)
    gives nothing.
    """
    answers = []
    start = text.find(BOXED)
    while start != -1:
        content_start = start + len(BOXED)
        content_end = _closing_brace(text, content_start)
        if content_end is None:
            break
        answers.append(text[content_start:content_end].strip())
        start = text.find(BOXED, content_end + 1)
    return answers


def _closing_brace(text: str, content_start: int) -> int | None:
    """The index of the `}` that closes the brace opened just before `content_start`, or None."""
    depth = 1
    position = content_start
    while position < len(text):
        char = text[position]
        if char == "\\":
            # An escaped brace (`\{`, `\}`) is a literal character, not a group.
            position += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return position
        position += 1
    return None


def normalise_answer(answer: str) -> str:
    """The notebook's comparison form: all whitespace removed, lower-cased."""
    return _WHITESPACE.sub("", answer).lower()


def is_correct(generated_text: str, ground_truth: str) -> bool:
    """Whether any boxed answer in `generated_text` equals a ground-truth answer after normalising.

    `ground_truth` is either a bare answer (`"\\frac{1}{2}"`) or text with its own `\\boxed{}`
    answers (a reference solution), any of which counts. A trace without a boxed answer is not
    correct, and neither is anything against an empty ground truth.
    """
    generated = {normalise_answer(answer) for answer in extract_boxed_answers(generated_text)}
    truths = {normalise_answer(answer) for answer in _ground_truth_answers(ground_truth)}
    generated.discard("")
    truths.discard("")
    return bool(generated & truths)


def _ground_truth_answers(ground_truth: str) -> list[str]:
    boxed = extract_boxed_answers(ground_truth)
    return boxed if boxed else [ground_truth]
