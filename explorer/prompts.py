"""The R1 prompt template the original notebook used."""

from __future__ import annotations

PROMPT_TEMPLATE = (
    "Solve this math problem step by step. Put your final answer in \\boxed{{}}. "
    "Problem: {problem} Solution: \n<think>\n"
)
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def format_prompt(problem: str) -> str:
    """The text the model sees before it starts thinking: the template, then `<think>` and a newline."""
    return PROMPT_TEMPLATE.format(problem=problem)
