"""The Steering page's run control and session state: what a page run may ask for, the feature from the
link, the prompt box's first value, a generation with a progress bar and a time limit (a click on any
button stops it), the result kept for the session and written to the run's database (stored results are
read by `explorer.app.index_cache`)."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Callable, Sequence

import streamlit as st

from explorer.app.link_params import linked_feature
from explorer.app.messages import show_error
from explorer.database import DatabaseError
from explorer.errors import ExplorerError
from explorer.live import EXAMPLE_PROBLEM
from explorer.runs import database_path
from explorer.steering import (
    GenerationProgress,
    SteeringConfig,
    SteeringInputError,
    SteeringResult,
    as_prompt,
    compute_steering,
    parse_coefficients,
)
from explorer.steering_store import write_steering_result

FEATURE_PARAM = "feature"
CPU_MAX_NEW_TOKENS, CPU_MAX_SAMPLES = 256, 8
GPU_MAX_NEW_TOKENS, GPU_MAX_SAMPLES = 1024, 32
PAGE_MAX_COEFS = 6
PAGE_TIME_LIMIT_S = 300.0
"""A generation on the page stops after this long and shows what it has (the CLI has no limit)."""
PROMPT_KEY = "steer_prompt"
"""Session key of the prompt box."""
RUNNING_KEY = "steer_running"
"""Session flag set while a generation runs: still set on the next run, the last one was interrupted."""
RESULT_KEY = "steer_result"
"""Session key of the page's last generation: (SAE id, SteeringResult)."""


def page_bounds(device: str) -> tuple[int, int]:
    """(max new tokens, max samples) the page allows: small on a CPU, so it stays responsive."""
    if str(device).startswith("cuda"):
        return GPU_MAX_NEW_TOKENS, GPU_MAX_SAMPLES
    return CPU_MAX_NEW_TOKENS, CPU_MAX_SAMPLES


def feature_from_query(sae_id: str, d_sae: int, default: int = 0) -> int:
    """The link's `?feature=` when it names a feature of this SAE, else `default` (after a warning,
    on a fresh visit, when the link names another)."""
    if "steer_feature" in st.session_state:  # the page's own choice, written back to the URL
        return int(st.session_state["steer_feature"])
    linked = linked_feature(st.query_params.get(FEATURE_PARAM), sae_id, d_sae, f"feature {default}")
    return default if linked is None else linked


def init_prompt(corpus_prompts: Sequence[str]) -> None:
    """The prompt box's first value: the corpus's first prompt, or the example problem without a corpus."""
    if PROMPT_KEY not in st.session_state:
        st.session_state[PROMPT_KEY] = corpus_prompts[0] if corpus_prompts else as_prompt(EXAMPLE_PROBLEM)


def pick_random_prompt(corpus_prompts: Sequence[str]) -> None:
    st.session_state[PROMPT_KEY] = random.choice(corpus_prompts)


def say_if_interrupted(stopped: bool) -> None:
    """After a run that ended before its generation did: say whether the Stop button or a change of
    settings interrupted it."""
    if st.session_state.pop(RUNNING_KEY, False):
        st.info("Generation stopped; nothing was kept." if stopped else "Generation interrupted by a change of settings.")


def make_progress(
    label: str, time_limit_s: float = PAGE_TIME_LIMIT_S
) -> tuple[Callable[[GenerationProgress], None], Callable[[], bool]]:
    """A progress bar callback (redrawn at most 5 times a second) and a stop predicate that ends the
    generation after `time_limit_s`. A click on any button (Stop) during a redraw interrupts the run."""
    bar = st.progress(0.0, text=label)
    started = time.monotonic()
    last = [0.0]

    def progress(p: GenerationProgress) -> None:
        now = time.monotonic()
        if now - last[0] < 0.2 and p.steps_done < p.steps_total:
            return
        last[0] = now
        fraction = min(p.steps_done / max(p.steps_total, 1), 1.0)
        text = f"{label}: batch {p.chunk}/{p.n_chunks}, {p.tokens_generated:,} tokens, {now - started:.0f} s"
        bar.progress(fraction, text=text)

    def should_stop() -> bool:
        return time.monotonic() - started > time_limit_s

    return progress, should_stop


def generate(
    run_dir: Path, sae_id: str, loaded: tuple, prompt_text: str, *, feature: int, mode: str, coefs_text: str,
    n_samples: int, max_new_tokens: int, temperature: float, save: bool,
) -> None:
    """Generate with the page's settings (`loaded`: model, SAE, hook name) and keep the result for the
    session; store it when it is complete and `save` is set. Bad input gets a message."""
    model, sae, hook_name = loaded
    try:
        config = SteeringConfig(
            feature_id=feature, mode=mode, coefs=parse_coefficients(coefs_text)[:PAGE_MAX_COEFS],
            n_samples=n_samples, max_new_tokens=max_new_tokens, temperature=temperature,
        )
        progress, should_stop = make_progress("Generating")
        st.session_state[RUNNING_KEY] = True
        result = compute_steering(model, sae, hook_name, [as_prompt(prompt_text)], config,
                                  progress=progress, should_stop=should_stop)
        st.session_state[RUNNING_KEY] = False
        st.session_state[RESULT_KEY] = (sae_id, result)
        if not result.complete:
            st.warning(f"Stopped after {PAGE_TIME_LIMIT_S:.0f} s: the numbers below cover a partial "
                       "generation and were not saved.")
        elif save:
            save_result(run_dir, sae_id, result)
    except SteeringInputError as hint:
        st.session_state[RUNNING_KEY] = False
        st.error(str(hint))


def session_result(sae_id: str, feature: int) -> SteeringResult | None:
    """The page's last generation when it was of this SAE and feature."""
    kept = st.session_state.get(RESULT_KEY)
    if kept is not None and kept[0] == sae_id and kept[1].config.feature_id == feature:
        return kept[1]
    return None


def save_result(run_dir: Path, sae_id: str, result: SteeringResult) -> None:
    """Store a page generation in the run's database; a failure is shown, not raised."""
    try:
        write_steering_result(database_path(run_dir), sae_id, result, prompt_source="page")
    except (ExplorerError, OSError) as err:
        st.error(f"The result could not be saved: {err}")
