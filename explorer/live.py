"""Live activations: run the model and an SAE on a text the user typed, token by token.

Pure computation (no Streamlit): `compute_live_activations` tokenises with offsets, runs the model up
to the SAE's hook only, encodes with the SAE and returns a `LiveActivations` record. Model calls are
serialised by a process-wide lock (`explorer.model_loading.MODEL_LOCK`), so two browser sessions that
run at once each get their own, correct result (a HookedTransformer with hooks attached is not safe to
call from two threads).

Array names end in shape letters (`acts_BTF`: batch, tokens, features): docs/shapes.md.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, NamedTuple

import pandas as pd
import torch

from explorer.errors import ExplorerError
from explorer.label_sets import SENTENCE_ANY_PHRASE, SENTENCE_BACKTRACKING
from explorer.labels import PhraseSpan, label_text
from explorer.lexicon import NOTEBOOK_GROUPS
from explorer.model_loading import MODEL_LOCK
from explorer.prompts import THINK_CLOSE, format_prompt
from explorer.sae_loading import stop_layer_for_hook
from explorer.sentences import segment

if TYPE_CHECKING:
    from sae_lens import SAE, HookedSAETransformer

EXAMPLE_PROBLEM = "A shirt costs $40 and is on sale for 15% off. What is the sale price in dollars?"
EXAMPLE_THINKING = (
    "The discount is 15% of 40, so 40 * 15 / 100 = 5.\n"
    "Wait, that's not right. 40 * 15 = 600, and 600 / 100 = 6, not 5.\n"
    "So the discount is 6 dollars.\n"
    "The sale price is 40 - 6 = 34 dollars.\n"
    "Let me double-check that step: 40 - 6 = 34. Good.\n"
    "So the answer is 34.\n"
)
EXAMPLE_TRACE = (
    format_prompt(EXAMPLE_PROBLEM) + EXAMPLE_THINKING + THINK_CLOSE + "\n\nThe sale price is 34 dollars.\n\n"
    "Final answer: \\boxed{34}"
)
"""A realistic R1-style trace that backtracks once, prefilled in the Live page."""


class LiveActivations(NamedTuple):
    """One text through the model and SAE. Position 0 is BOS."""

    token_ids: list[int]
    token_texts: list[str]
    """Each token's characters in the text (its decoded form for special tokens)."""
    offsets: list[tuple[int, int]]
    acts_TF: torch.Tensor
    """Feature activations on the CPU, [n_tokens, d_sae]."""
    valid_T: torch.Tensor
    """False on BOS and other special tokens, which SAE statistics leave out."""
    phrases: list[PhraseSpan]
    """The labelled phrases of the part of the text that ran (`n_chars_run` characters)."""
    device: str
    seconds: float
    n_text_tokens: int
    """Tokens the whole text has; more than `len(token_ids)` when it was truncated."""

    @property
    def truncated(self) -> bool:
        return self.n_text_tokens > len(self.token_ids)

    @property
    def n_chars_run(self) -> int:
        """Characters of the text the run's tokens cover: all of it unless it was truncated."""
        return max((end for _, end in self.offsets), default=0)


class LiveInputError(ExplorerError, ValueError):
    """Text the live view cannot run (empty); the message is a hint for the user."""


def wrap_in_prompt(problem_or_trace: str) -> str:
    """The R1 prompt template around `problem_or_trace` (the text becomes the problem)."""
    return format_prompt(problem_or_trace.strip())


def compute_live_activations(
    model: HookedSAETransformer, sae: SAE, hook_name: str, text: str, *, max_tokens: int | None = None
) -> LiveActivations:
    """SAE activations of every token of `text` (BOS first), truncated to the model's context.

    Raises `LiveInputError` for empty text.
    """
    if not text.strip():
        raise LiveInputError("Type or paste a chain of thought to see its feature activations.")
    tokenizer = model.tokenizer
    encoding = tokenizer(text, return_offsets_mapping=True)
    ids, offsets = list(encoding["input_ids"]), [tuple(o) for o in encoding["offset_mapping"]]
    limit = min(max_tokens or model.cfg.n_ctx, model.cfg.n_ctx)
    n_text_tokens = len(ids)
    ids, offsets = ids[:limit], offsets[:limit]
    special = set(tokenizer.all_special_ids)
    token_texts = [tokenizer.decode([i]) if i in special else text[s:e] for i, (s, e) in zip(ids, offsets)]
    started = time.perf_counter()
    with MODEL_LOCK, torch.no_grad():
        tokens_1T = torch.tensor([ids], device=model.cfg.device)
        _, cache = model.run_with_cache(tokens_1T, names_filter=hook_name, stop_at_layer=stop_layer_for_hook(hook_name))
        acts_TF = sae.encode(cache[hook_name][0].to(sae.device, sae.dtype)).float().cpu()
        if acts_TF.is_cuda:
            torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    valid_T = torch.tensor([i not in special for i in ids])
    return LiveActivations(
        token_ids=ids,
        token_texts=token_texts,
        offsets=offsets,
        acts_TF=acts_TF,
        valid_T=valid_T,
        phrases=label_text(text[: max((end for _, end in offsets), default=0)]),
        device=str(model.cfg.device),
        seconds=seconds,
        n_text_tokens=n_text_tokens,
    )


class FeatureScore(NamedTuple):
    feature_id: int
    value: float
    n_active: int
    """Tokens (of the valid ones) where the feature is above zero."""


def compute_top_features(live: LiveActivations, *, position: int | None = None, k: int = 10) -> list[FeatureScore]:
    """The most active features at `position`, or over the whole text (by maximum) when it is None."""
    acts_TF = live.acts_TF[live.valid_T]
    if acts_TF.numel() == 0:
        return []
    n_active_F = (acts_TF > 0).sum(dim=0)
    values_F = live.acts_TF[position] if position is not None else acts_TF.max(dim=0).values
    top = torch.topk(values_F, k=min(k, values_F.numel()))
    return [
        FeatureScore(int(f), float(v), int(n_active_F[f]))
        for v, f in zip(top.values.tolist(), top.indices.tolist())
        if v > 0
    ]


def live_sentence_tags(text: str, phrases: list[PhraseSpan]) -> pd.DataFrame:
    """The text's sentences (`explorer.sentences.segment`) with the lexicon's sentence label sets each
    belongs to, as the built-in sets define them: `sentence:backtracking` (holds a phrase of the
    notebook's six groups) and `sentence:any_phrase` (any lexicon phrase). start, end, tags."""
    rows = []
    for sentence in segment(text):
        inside = [p for p in phrases if p.start < sentence.end and p.end > sentence.start]
        tags = []
        if any(p.group in NOTEBOOK_GROUPS for p in inside):
            tags.append(SENTENCE_BACKTRACKING)
        if inside:
            tags.append(SENTENCE_ANY_PHRASE)
        rows.append((sentence.start, sentence.end, tags))
    return pd.DataFrame(rows, columns=["start", "end", "tags"])
