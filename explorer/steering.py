"""Steering: generate with a feature added or clamped, and count the backtracking phrases.

Pure computation (no Streamlit, no database): `compute_steering` generates continuations of prompts
under a baseline and one or more steered conditions, labels the generated text with
`explorer.labels.label_text`, and summarises each condition with its uncertainty over the samples.

Interventions, at the SAE's hook (`sae.cfg.metadata.hook_name`, e.g. `blocks.1.hook_mlp_out`):

- `add`: x <- x + coef * W_dec[f], the feature's decoder direction (not normalised: a coefficient is in
  units of the feature's own activation, so coef 5 adds what the feature writes when it fires at 5);
- `clamp`: the feature is set to `coef` through the SAE, with the SAE's error term added back:
  x <- decode(a') + (x - decode(a)), where a = encode(x) and a' = a with a'[f] = coef. We compute it as
  x + (decode(a') - decode(a)) = x + (coef - a[f]) * W_dec[f] (the decoder is linear), so clamping a
  feature to the value it already has adds an exact zero and reproduces the baseline bit for bit
  (the textbook order, decode(a') + (x - decode(a)), rounds). SAEs that normalise activations at run
  time (`constant_norm_rescale`, `layer_norm`) have no linear decoder and are refused for clamping.

Which positions are steered: every position whose next-token prediction is a generated token, that is
the last prompt token and every generated token. The rest of the prompt is read unsteered (its keys and
values are computed once and shared by all rows), so steered and baseline continuations start from the
same context and differ only by what the intervention does while generating. `steer_prompt=True`
steers the whole prompt too (the convention of some steering UIs).

Generation: a batch of rows (conditions x samples of one prompt, in chunks of `batch_rows`) runs with
transformer-lens's key-value cache, one token per row per step; rows that emit EOS leave the batch.
Row i of every condition draws its sampling noise from the same generator (seeded by
`(seed, prompt, sample)`), so the baseline and a steered condition share their randomness: with
coefficient 0 they are the same generation, and differences between conditions are paired. Greedy
decoding is `temperature=0`. (transformer-lens's own `generate` does run forward hooks under its KV
cache, each step's hook seeing only the new position, but it has no per-step callback to report
progress or stop, and no per-row seeds or coefficients; so this module drives the same cache itself,
and `benchmarks/steering_gpu.py` compares the two.) Model calls hold `explorer.live`'s process-wide
model lock one step at a time, with the steering hook attached only inside the lock, so another
session's forward pass never sees it and is never blocked for more than a step.

Metrics per sample: backtracking phrases per 1,000 generated tokens (all lexicon groups, and by group),
the number of generated tokens (EOS not counted), whether `</think>` appears in the generation and
whether the model stopped by itself (EOS). Each condition's summary gives mean, standard deviation,
standard error and a percentile bootstrap 95% CI over its samples, and the same for the paired
difference steered-minus-baseline (same prompt, same seed).

Array names end in shape letters (`acts_BTF`: batch, tokens, features): docs/shapes.md.
"""

from __future__ import annotations

import dataclasses
import math
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator, Literal, NamedTuple, Sequence

import numpy as np
import torch

from explorer.errors import ExplorerError
from explorer.labels import PhraseSpan, group_counts, label_text
from explorer.lexicon import GROUPS, NOTEBOOK_GROUPS
from explorer.model_loading import MODEL_LOCK
from explorer.prompts import THINK_CLOSE, THINK_OPEN, format_prompt

if TYPE_CHECKING:
    from sae_lens import SAE, HookedSAETransformer

Mode = Literal["add", "clamp"]
MODES: tuple[str, ...] = ("add", "clamp")

MAX_NEW_TOKENS_LIMIT = 4096
"""Hard bound on tokens generated per sample (the page sets a lower one on a CPU)."""
MAX_SAMPLES_LIMIT = 256
"""Hard bound on samples per prompt and condition."""
MAX_COEFS = 16
MAX_PROMPTS = 256
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95
_NONLINEAR_NORMALISATIONS = ("constant_norm_rescale", "layer_norm")


class SteeringInputError(ExplorerError, ValueError):
    """Settings the steering run cannot use; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class SteeringConfig:
    """One steering experiment: a feature, a mode, coefficients and how to sample."""

    feature_id: int
    mode: Mode = "add"
    """`add`: coef x W_dec[f] added; `clamp`: the feature set to coef through the SAE."""
    coefs: tuple[float, ...] = (-4.0, 4.0)
    """Steered conditions; a baseline (no intervention) always runs as well."""
    n_samples: int = 4
    """Samples per prompt and condition."""
    max_new_tokens: int = 128
    """Tokens generated per sample at most (fewer when the prompt leaves less of the context)."""
    temperature: float = 1.0
    """Sampling temperature; 0 is greedy decoding."""
    top_k: int | None = None
    """Sample among the k most likely tokens only (None: all)."""
    seed: int = 0
    steer_prompt: bool = False
    """Also steer the prompt positions (default: the last prompt token and the generated ones)."""
    batch_rows: int = 32
    """Rows (condition x sample) generated together; lower it if memory is short."""

    def checked(self, d_sae: int | None = None) -> SteeringConfig:
        """This config with coefs as floats, or `SteeringInputError` saying what is out of bounds."""
        if self.mode not in MODES:
            raise SteeringInputError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}.")
        if d_sae is not None and not 0 <= self.feature_id < d_sae:
            raise SteeringInputError(
                f"feature {self.feature_id} does not exist: this SAE has features 0 to {d_sae - 1}."
            )
        if not 1 <= len(self.coefs) <= MAX_COEFS:
            raise SteeringInputError(f"give 1 to {MAX_COEFS} coefficients (got {len(self.coefs)}).")
        coefs = tuple(float(c) for c in self.coefs)
        if not all(math.isfinite(c) for c in coefs):
            raise SteeringInputError("coefficients must be finite numbers.")
        if len(set(coefs)) != len(coefs):
            raise SteeringInputError("each coefficient may appear only once.")
        if not 1 <= self.n_samples <= MAX_SAMPLES_LIMIT:
            raise SteeringInputError(f"the number of samples must be between 1 and {MAX_SAMPLES_LIMIT}.")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise SteeringInputError(f"max new tokens must be between 1 and {MAX_NEW_TOKENS_LIMIT}.")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise SteeringInputError("the temperature must be 0 (greedy) or positive.")
        if self.top_k is not None and self.top_k < 1:
            raise SteeringInputError("top-k must be at least 1 (or unset).")
        if self.batch_rows < 1:
            raise SteeringInputError("batch rows must be at least 1.")
        return dataclasses.replace(self, coefs=coefs)


# --------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------


class SteeringSample(NamedTuple):
    """One generated continuation under one condition."""

    prompt_index: int
    sample_index: int
    coef: float | None
    """None for the baseline."""
    token_ids: tuple[int, ...]
    """Generated tokens, EOS excluded."""
    text: str
    stopped_at_eos: bool
    reached_think_close: bool
    phrases: tuple[PhraseSpan, ...]
    group_counts: dict[str, int]
    """Phrases per lexicon group (every group present)."""

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def n_phrases(self) -> int:
        return sum(self.group_counts.values())

    @property
    def n_notebook_phrases(self) -> int:
        return sum(self.group_counts[g] for g in NOTEBOOK_GROUPS)

    @property
    def rate(self) -> float:
        """Backtracking phrases (every group) per 1,000 generated tokens; 0 for an empty generation."""
        return rate_per_1k(self.n_phrases, self.n_tokens)

    @property
    def notebook_rate(self) -> float:
        """The same, counting only the notebook's six groups (bare interjections left out)."""
        return rate_per_1k(self.n_notebook_phrases, self.n_tokens)

    def group_rate(self, group: str) -> float:
        return rate_per_1k(self.group_counts[group], self.n_tokens)


class Estimate(NamedTuple):
    """A mean over samples with its spread. NaN where undefined (no samples; sem and CI need 2)."""

    mean: float
    std: float
    """Sample standard deviation (ddof 1)."""
    sem: float
    ci_low: float
    ci_high: float
    """Percentile bootstrap CI of the mean (`CONFIDENCE`, `BOOTSTRAP_RESAMPLES` resamples, fixed seed)."""
    n: int


class ConditionSummary(NamedTuple):
    """One condition (the baseline or one coefficient) over all its samples."""

    coef: float | None
    rate: Estimate
    """Backtracking phrases per 1,000 generated tokens, every group."""
    rate_difference: Estimate | None
    """Paired difference of `rate`, this condition minus the baseline (None for the baseline)."""
    notebook_rate: Estimate
    notebook_rate_difference: Estimate | None
    group_rates: dict[str, float]
    """Mean rate per lexicon group."""
    length: Estimate
    """Generated tokens."""
    think_close_share: Estimate
    """Share of samples whose generation contains `</think>`."""
    eos_share: float
    """Share of samples that ended with EOS (the rest hit max_new_tokens)."""

    @property
    def is_baseline(self) -> bool:
        return self.coef is None


class GenerationProgress(NamedTuple):
    steps_done: int
    steps_total: int
    """Upper bound: chunks whose rows all stop early finish in fewer steps."""
    chunk: int
    n_chunks: int
    tokens_generated: int


class SteeringResult(NamedTuple):
    config: SteeringConfig
    hook_name: str
    prompts: tuple[str, ...]
    samples: tuple[SteeringSample, ...]
    """Every sample, baseline and steered, in (prompt, condition, sample) order."""
    summaries: tuple[ConditionSummary, ...]
    """The baseline first, then each coefficient in `config.coefs` order."""
    max_new_tokens: int
    """What was used: `config.max_new_tokens`, less where the longest prompt left less context."""
    n_generated_tokens: int
    seconds: float
    device: str
    complete: bool
    """False when generation was stopped: then some samples are cut short or missing."""

    def samples_for(self, coef: float | None) -> list[SteeringSample]:
        return [s for s in self.samples if s.coef == coef]

    @property
    def baseline(self) -> ConditionSummary:
        return self.summaries[0]


# --------------------------------------------------------------------------------------------------
# Metrics and statistics
# --------------------------------------------------------------------------------------------------


def rate_per_1k(count: int, n_tokens: int) -> float:
    return 1000.0 * count / n_tokens if n_tokens > 0 else 0.0


def make_sample(
    prompt_index: int,
    sample_index: int,
    coef: float | None,
    token_ids: Sequence[int],
    text: str,
    stopped_at_eos: bool,
) -> SteeringSample:
    """A sample with its metrics, from the generated tokens and their decoded text."""
    phrases = tuple(label_text(text))
    return SteeringSample(
        prompt_index=prompt_index,
        sample_index=sample_index,
        coef=coef,
        token_ids=tuple(int(t) for t in token_ids),
        text=text,
        stopped_at_eos=stopped_at_eos,
        reached_think_close=THINK_CLOSE in text,
        phrases=phrases,
        group_counts=group_counts(phrases),
    )


def compute_estimate(
    values: Sequence[float], *, n_resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0
) -> Estimate:
    """Mean, sample std, standard error and a percentile bootstrap CI of the mean."""
    x = np.asarray(values, dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return Estimate(mean, math.nan, math.nan, math.nan, math.nan, 1)
    std = float(x.std(ddof=1))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, n, size=(n_resamples, n))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Estimate(mean, std, std / math.sqrt(n), float(low), float(high), n)


def summarise_conditions(
    samples: Sequence[SteeringSample], coefs: Sequence[float]
) -> tuple[ConditionSummary, ...]:
    """The baseline's summary, then one per coefficient; differences pair samples by (prompt, sample)."""
    baseline = {(s.prompt_index, s.sample_index): s for s in samples if s.coef is None}
    summaries = [_summarise(None, list(baseline.values()), None)]
    for coef in coefs:
        summaries.append(_summarise(coef, [s for s in samples if s.coef == coef], baseline))
    return tuple(summaries)


def _summarise(
    coef: float | None,
    samples: list[SteeringSample],
    baseline: dict[tuple[int, int], SteeringSample] | None,
) -> ConditionSummary:
    rate_difference = notebook_difference = None
    if baseline is not None:
        keys = [(s.prompt_index, s.sample_index) for s in samples]
        pairs = [(s, baseline[key]) for s, key in zip(samples, keys) if key in baseline]
        rate_difference = compute_estimate([s.rate - b.rate for s, b in pairs])
        notebook_difference = compute_estimate([s.notebook_rate - b.notebook_rate for s, b in pairs])
    n = len(samples)
    return ConditionSummary(
        coef=coef,
        rate=compute_estimate([s.rate for s in samples]),
        rate_difference=rate_difference,
        notebook_rate=compute_estimate([s.notebook_rate for s in samples]),
        notebook_rate_difference=notebook_difference,
        group_rates={g: (sum(s.group_rate(g) for s in samples) / n if n else math.nan) for g in GROUPS},
        length=compute_estimate([s.n_tokens for s in samples]),
        think_close_share=compute_estimate([float(s.reached_think_close) for s in samples]),
        eos_share=sum(s.stopped_at_eos for s in samples) / n if n else math.nan,
    )


def condition_name(mode: str, coef: float | None) -> str:
    """'baseline', 'add +4' or 'clamp to 0'."""
    if coef is None:
        return "baseline"
    return f"clamp to {coef:g}" if mode == "clamp" else f"{mode} {coef:+g}"


def describe_effect(difference: Estimate | None) -> str:
    """'raises', 'lowers' or 'no clear effect on' backtracking, from a difference's 95% CI."""
    if difference is None or difference.n < 2 or math.isnan(difference.ci_low):
        return "too few samples to tell"
    if difference.ci_low > 0:
        return "raises"
    if difference.ci_high < 0:
        return "lowers"
    return "no clear effect on"


# --------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------


def as_prompt(text: str) -> str:
    """`text` as a generation prompt: used as it is when it already opens the thinking (`<think>`),
    else taken as a problem and wrapped in the R1 template."""
    text = text.strip("\n") if THINK_OPEN not in text else text
    if not text.strip():
        raise SteeringInputError("The prompt is empty: type a problem, or a prompt that ends with <think>.")
    return text if THINK_OPEN in text else format_prompt(text.strip())


# --------------------------------------------------------------------------------------------------
# The intervention
# --------------------------------------------------------------------------------------------------


class SteeringHook:
    """The forward hook at the SAE's hook point, steering each row of the batch by its own coefficient.

    `coef_B[b]` is row b's coefficient and `active_B[b]` whether row b is steered at all (False for
    baseline rows, which then pass through unchanged: add mode adds 0 * direction, an exact zero;
    clamp mode does not touch them).
    """

    def __init__(self, sae: SAE, feature_id: int, mode: Mode, coef_B: torch.Tensor, active_B: torch.Tensor):
        if mode == "clamp" and getattr(sae.cfg, "normalize_activations", "none") in _NONLINEAR_NORMALISATIONS:
            raise SteeringInputError(
                f"clamping needs a linear decoder, but this SAE normalises activations at run time "
                f"({sae.cfg.normalize_activations}); use mode add."
            )
        self.sae = sae
        self.feature_id = int(feature_id)
        self.mode = mode
        self.direction_D = sae.W_dec[self.feature_id].detach()  # [d_in]
        self.coef_B = coef_B
        self.active_B = active_B
        self._update_rows()

    def _update_rows(self) -> None:
        self.active_rows = torch.nonzero(self.active_B).flatten()
        self.scale_B = torch.where(self.active_B, self.coef_B, torch.zeros_like(self.coef_B))
        self._on_device: dict = {}

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only `rows` (indices into the current batch), after finished rows leave it."""
        self.coef_B, self.active_B = self.coef_B[rows], self.active_B[rows]
        self._update_rows()

    def _tensors(self, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(direction, per-row scale, active rows, their targets) on `act`'s device and dtype, shaped to
        broadcast against it; made once per batch composition, not at every step."""
        key = (act.device, act.dtype, act.shape[2:])
        if key not in self._on_device:
            direction = self.direction_D.to(act.device, act.dtype).reshape(act.shape[2:])
            ones = [1] * (act.dim() - 1)
            scale = self.scale_B.to(act.device, act.dtype).view(-1, *ones)
            rows = self.active_rows.to(act.device)
            targets = self.coef_B[self.active_rows].to(act.device, act.dtype)
            self._on_device[key] = (direction, scale, rows, targets)
        return self._on_device[key]

    def __call__(self, act_BP_: torch.Tensor, hook=None) -> torch.Tensor:
        # act_BP_: [batch, pos, d_in] (or [batch, pos, heads, d_head]: the direction is reshaped to match)
        direction, scale_B, rows, target_b = self._tensors(act_BP_)
        if self.mode == "add":
            return act_BP_ + scale_B * direction
        if rows.numel() == 0:
            return act_BP_
        x_bP_ = act_BP_[rows]
        acts = self.sae.encode(x_bP_.to(self.sae.dtype))
        if acts.is_sparse:
            acts = acts.to_dense()
        shift_bP = target_b[:, None] - acts[..., self.feature_id].to(act_BP_.dtype)  # [rows, pos]
        delta_BP_ = torch.zeros_like(act_BP_)
        delta_BP_[rows] = shift_bP.view(*shift_bP.shape, *([1] * (act_BP_.dim() - 2))) * direction
        return act_BP_ + delta_BP_


@contextmanager
def _temporary_hook(model: HookedSAETransformer, hook_name: str, hook: SteeringHook | None) -> Iterator[None]:
    """`hook` attached at `hook_name` for the duration, removed exactly (cheaper than `model.hooks()`,
    whose reset walks every hook point of the model)."""
    if hook is None:
        yield
        return
    point = model.hook_dict[hook_name]
    point.add_hook(hook, dir="fwd")
    handle = point.fwd_hooks[-1]
    try:
        yield
    finally:
        handle.hook.remove()
        point.fwd_hooks.remove(handle)


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------


class RowSpec(NamedTuple):
    """One row of a generation batch."""

    coef: float | None
    """None: not steered."""
    sample_index: int


class GeneratedRow(NamedTuple):
    token_ids: list[int]
    stopped_at_eos: bool


def sample_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """The sampling seed of sample `sample_index` of prompt `prompt_index`, the same in every condition."""
    return int(np.random.SeedSequence([seed, prompt_index, sample_index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _next_tokens(
    logits_BV: torch.Tensor, uniform_B: torch.Tensor, temperature: float, top_k: int | None
) -> torch.Tensor:
    """Greedy (temperature 0) or inverse-CDF sampling with the rows' own uniforms."""
    if temperature == 0:
        return logits_BV.argmax(-1)
    logits_BV = logits_BV.float() / temperature
    if top_k is not None and top_k < logits_BV.shape[-1]:
        kth_B1 = torch.topk(logits_BV, top_k, dim=-1).values[:, -1:]
        logits_BV = logits_BV.masked_fill(logits_BV < kth_B1, -math.inf)
    cdf_BV = torch.cumsum(torch.softmax(logits_BV, dim=-1, dtype=torch.float64), dim=-1)
    target_B1 = (uniform_B.to(cdf_BV.device, torch.float64) * cdf_BV[:, -1])[:, None]
    return torch.searchsorted(cdf_BV, target_B1, right=True).squeeze(1).clamp_max(logits_BV.shape[-1] - 1)


def _forward(model: HookedSAETransformer, tokens_BT: torch.Tensor, cache, return_logits: bool = True):
    mask_BT = torch.ones_like(tokens_BT)
    return_type = "logits" if return_logits else None
    return model(tokens_BT, return_type=return_type, past_kv_cache=cache, attention_mask=mask_BT)


def _select_rows(cache, rows: torch.Tensor) -> None:
    for entry in cache.entries:
        entry.past_keys = entry.past_keys[rows.to(entry.past_keys.device)]
        entry.past_values = entry.past_values[rows.to(entry.past_values.device)]
    cache.previous_attention_mask = cache.previous_attention_mask[rows.to(cache.previous_attention_mask.device)]


def _expanded_cache(model: HookedSAETransformer, prefix_cache, batch: int):
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, batch)
    if prefix_cache is None:
        return cache
    for entry, prefix in zip(cache.entries, prefix_cache.entries):
        entry.past_keys = prefix.past_keys.expand(batch, -1, -1, -1)
        entry.past_values = prefix.past_values.expand(batch, -1, -1, -1)
    cache.previous_attention_mask = prefix_cache.previous_attention_mask.expand(batch, -1)
    return cache


def generate_rows(
    model: HookedSAETransformer,
    sae: SAE | None,
    hook_name: str,
    prompt_ids: Sequence[int],
    rows: Sequence[RowSpec],
    *,
    feature_id: int = 0,
    mode: Mode = "add",
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seeds: Sequence[int],
    eos_token_id: int | None,
    steer_prompt: bool = False,
    prefix_cache=None,
    on_step: Callable[[int], bool] | None = None,
) -> list[GeneratedRow]:
    """Generate one batch: row b continues `prompt_ids` under `rows[b]`, sampling with `seeds[b]`.

    `on_step(n_active_rows)` runs after each step; returning True stops the batch (rows are cut short).
    `prefix_cache` is the unsteered cache of `prompt_ids[:-1]` at batch 1 (`prefill_prompt`), reused
    across chunks; it is ignored when the prompt itself is steered.
    Rows whose coef is None are not steered; with `sae` None nothing is (a plain generation).
    """
    device = model.cfg.device
    B = len(rows)
    steered = [r.coef is not None for r in rows]
    hook = None
    if sae is not None and any(steered):
        hook = SteeringHook(
            sae,
            feature_id,
            mode,
            torch.tensor([r.coef if r.coef is not None else 0.0 for r in rows], dtype=torch.float32),
            torch.tensor(steered),
        )
    rngs = [np.random.default_rng(int(s)) for s in seeds]
    prompt_BT = torch.tensor([list(prompt_ids)], device=device).expand(B, -1)
    with torch.inference_mode():
        if steer_prompt and hook is not None:
            cache = _expanded_cache(model, None, B)
            if prompt_BT.shape[1] > 1:
                with MODEL_LOCK, _temporary_hook(model, hook_name, hook):
                    _forward(model, prompt_BT[:, :-1], cache, return_logits=False)
        else:
            if prefix_cache is None and len(prompt_ids) > 1:
                prefix_cache = prefill_prompt(model, prompt_ids)
            cache = _expanded_cache(model, prefix_cache, B)
        live = torch.arange(B)  # original row index of each row still in the batch
        outputs: list[list[int]] = [[] for _ in range(B)]
        stopped = [False] * B
        current_B1 = prompt_BT[:, -1:]
        for _ in range(max_new_tokens):
            with MODEL_LOCK, _temporary_hook(model, hook_name, hook):
                logits_BV = _forward(model, current_B1, cache)[:, -1]
            # Every live row draws one uniform per step from its own stream, greedy or not.
            uniform_B = torch.tensor([rngs[i].random() for i in live.tolist()], dtype=torch.float64)
            next_B = _next_tokens(logits_BV, uniform_B, temperature, top_k)
            next_list = next_B.tolist()
            keep = []
            for position, (row, token) in enumerate(zip(live.tolist(), next_list)):
                if eos_token_id is not None and token == eos_token_id:
                    stopped[row] = True
                else:
                    outputs[row].append(token)
                    keep.append(position)
            if len(keep) < len(next_list):
                if not keep:
                    break
                keep_t = torch.tensor(keep)
                live = live[keep_t]
                next_B = next_B[keep_t.to(next_B.device)]
                _select_rows(cache, keep_t)
                if hook is not None:
                    hook.keep(keep_t)
            current_B1 = next_B[:, None].to(device)
            if on_step is not None and on_step(len(live)):
                break
    return [GeneratedRow(outputs[i], stopped[i]) for i in range(B)]


def prefill_prompt(model: HookedSAETransformer, prompt_ids: Sequence[int]):
    """The key-value cache of `prompt_ids[:-1]` (batch 1, unsteered), shared by every row and chunk."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)
    if len(prompt_ids) > 1:
        tokens_1T = torch.tensor([list(prompt_ids[:-1])], device=model.cfg.device)
        with torch.inference_mode(), MODEL_LOCK:
            _forward(model, tokens_1T, cache, return_logits=False)
    return cache


def decode_generation(tokenizer, token_ids: Sequence[int]) -> str:
    """Generated tokens as text; special tokens kept (`</think>` can be one)."""
    return tokenizer.decode(list(token_ids), skip_special_tokens=False)


def compute_steering(
    model: HookedSAETransformer,
    sae: SAE,
    hook_name: str,
    prompts: Sequence[str],
    config: SteeringConfig,
    *,
    progress: Callable[[GenerationProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SteeringResult:
    """Generate the baseline and every steered condition for each prompt, and summarise them.

    `progress` is called after every generated token step; `should_stop` is checked after every step,
    and when it returns True generation ends and the result says `complete=False`.
    Raises `SteeringInputError` for settings out of bounds, empty prompts or prompts longer than the
    model's context.
    """
    config = config.checked(sae.cfg.d_sae)
    if not prompts:
        raise SteeringInputError("Give at least one prompt.")
    if len(prompts) > MAX_PROMPTS:
        raise SteeringInputError(f"Give at most {MAX_PROMPTS} prompts (got {len(prompts)}).")
    tokenizer = model.tokenizer
    prompt_ids = [model.to_tokens(p)[0].tolist() for p in prompts]  # one BOS first (load_model)
    longest = max(len(ids) for ids in prompt_ids)
    room = model.cfg.n_ctx - longest
    if room < 1:
        raise SteeringInputError(
            f"The longest prompt has {longest} tokens, which fills the model's context of {model.cfg.n_ctx}: "
            "shorten it."
        )
    max_new_tokens = min(config.max_new_tokens, room)
    conditions: list[float | None] = [None, *config.coefs]
    all_rows = [RowSpec(c, i) for c in conditions for i in range(config.n_samples)]
    chunks = [all_rows[i : i + config.batch_rows] for i in range(0, len(all_rows), config.batch_rows)]
    n_chunks = len(chunks) * len(prompts)
    steps_total = n_chunks * max_new_tokens
    eos = tokenizer.eos_token_id if tokenizer is not None else None

    started = time.perf_counter()
    state = {"steps": 0, "tokens": 0, "chunk": 0, "stopped": False}

    def on_step(n_active: int) -> bool:
        state["steps"] += 1
        state["tokens"] += n_active
        if progress is not None:
            progress(GenerationProgress(state["steps"], steps_total, state["chunk"], n_chunks, state["tokens"]))
        if should_stop is not None and should_stop():
            state["stopped"] = True
        return state["stopped"]

    samples: list[SteeringSample] = []
    for p, ids in enumerate(prompt_ids):
        prefix = None if config.steer_prompt else prefill_prompt(model, ids)
        for chunk in chunks:
            if state["stopped"]:
                break
            state["chunk"] += 1
            steps_before = state["steps"]
            generated = generate_rows(
                model, sae, hook_name, ids, chunk,
                feature_id=config.feature_id, mode=config.mode, max_new_tokens=max_new_tokens,
                temperature=config.temperature, top_k=config.top_k,
                seeds=[sample_seed(config.seed, p, r.sample_index) for r in chunk],
                eos_token_id=eos, steer_prompt=config.steer_prompt, prefix_cache=prefix, on_step=on_step,
            )
            # A chunk whose rows all stopped early: count its unused steps as done, for the progress bar.
            state["steps"] = steps_before + max_new_tokens if not state["stopped"] else state["steps"]
            for row, out in zip(chunk, generated):
                text = decode_generation(tokenizer, out.token_ids)
                samples.append(make_sample(p, row.sample_index, row.coef, out.token_ids, text, out.stopped_at_eos))
        if state["stopped"]:
            break
    samples.sort(key=lambda s: (s.prompt_index, conditions.index(s.coef), s.sample_index))
    if str(model.cfg.device).startswith("cuda"):
        torch.cuda.synchronize()
    return SteeringResult(
        config=config,
        hook_name=hook_name,
        prompts=tuple(prompts),
        samples=tuple(samples),
        summaries=summarise_conditions(samples, config.coefs),
        max_new_tokens=max_new_tokens,
        n_generated_tokens=sum(s.n_tokens for s in samples),
        seconds=time.perf_counter() - started,
        device=str(model.cfg.device),
        complete=not state["stopped"],
    )


def parse_coefficients(text: str) -> tuple[float, ...]:
    """'-8, 0, 8' (commas or spaces) as coefficients; `SteeringInputError` with a hint otherwise."""
    parts = [p for p in text.replace(",", " ").split() if p]
    if not parts:
        raise SteeringInputError("Give at least one coefficient, e.g. 8, or a sweep such as -8, 0, 8.")
    try:
        coefs = tuple(float(p) for p in parts)
    except ValueError:
        raise SteeringInputError(
            f"Coefficients must be numbers separated by commas, e.g. -8, 0, 8 (got {text!r})."
        ) from None
    if not all(math.isfinite(c) for c in coefs):
        raise SteeringInputError("Coefficients must be finite numbers.")
    return tuple(dict.fromkeys(coefs))
