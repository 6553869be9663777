"""The R1 prompt template the original notebook used, and the prompt of a corpus document."""

from __future__ import annotations

from typing import Any, Mapping

PROMPT_TEMPLATE = (
    "Solve this math problem step by step. Put your final answer in \\boxed{{}}. "
    "Problem: {problem} Solution: \n<think>\n"
)
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
PROBLEM_FIELDS = ("problem_text", "problem")
"""Metadata fields that hold a document's problem: the notebook's format's, then OpenR1-Math-220k's."""


def format_prompt(problem: str) -> str:
    """The text the model sees before it starts thinking: the template, then `<think>` and a newline."""
    return PROMPT_TEMPLATE.format(problem=problem)


def prompt_of_trace(trace: str) -> str | None:
    """The prompt part of an R1 trace: everything up to and including `<think>` and its newline."""
    index = trace.find(THINK_OPEN)
    if index < 0:
        return None
    end = index + len(THINK_OPEN)
    if trace[end : end + 1] == "\n":
        end += 1
    return trace[:end]


def problem_of(metadata: Mapping[str, Any]) -> str | None:
    """The problem a document's metadata holds (`problem_text`, else `problem`), or None."""
    for name in PROBLEM_FIELDS:
        value = metadata.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def prompt_of_document(text: str, metadata: Mapping[str, Any]) -> str | None:
    """A corpus document's generation prompt: the prompt part of its `text` when something comes before
    `<think>` (what the model saw), else its problem (`problem_of`) in the notebook's template, else None.

    An OpenR1-Math-220k generation starts at `<think>`: its text holds no problem, its metadata does.
    """
    own = prompt_of_trace(text)
    if own is not None and own.strip() != THINK_OPEN:
        return own
    problem = problem_of(metadata)
    return format_prompt(problem) if problem is not None else None
