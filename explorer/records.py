"""Records that cross module boundaries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TraceRecord:
    """One chain-of-thought document, normalised from any corpus format.

    `doc_id` is unique within a corpus. `text` is the full trace (prompt, `<think> ... </think>`,
    answer). `metadata` keeps the source's other fields as they were (for example `has_backtracking`,
    `is_correct`, `problem_type`, `problem_id`, `uuid`, `problem_text`), plus `source` (where the record
    came from) and `source_index` (its position there).
    """

    doc_id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
