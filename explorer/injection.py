"""The token-injection test: is a candidate feature more than its words? (docs/injection.md)

Put a feature's favourite tokens (or the bigrams and trigrams around where it fires) into windows of
text with no backtracking in them and measure, per window, the feature's maximum activation. Compare
with the same windows untouched (baseline), with windows that do hold backtracking (target), and with
the same strategy injecting random tokens of matched corpus frequency (null). Following the
reasoning-probing study (GeorgeMLP/reasoning-probing on GitHub, its methodology document, section 4):

- Cohen's d of injected vs baseline (pooled SD) and Student's t-test p (`scipy.stats.ttest_ind`,
  `equal_var=True`, two-sided);
- transfer ratio (injected - baseline) / (target - baseline);
- a verdict from the strategy with the largest d: token_driven (d >= 0.8, p < 0.01),
  partially_token_driven (d >= 0.5, p < 0.01), weakly_token_driven (d >= 0.2, p < 0.05), else
  context_dependent.

Pure logic: the strategies (`inject`), the statistics (`cohens_d`, `t_test_p`, `verdict`), the
window choice (`select_windows`), the frequency-matched null (`FrequencyMatcher`) and the batched
forwards (`run_injection`). The stage (`precompute/inject_stage.py`) reads the run and writes the
result (`explorer.injection_store`).
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from explorer.errors import ExplorerError
from explorer.feature_index import Window
from explorer.labels import NO_GROUP
from explorer.lexicon import GROUPS, NOTEBOOK_GROUPS

SIMPLE_STRATEGIES = ("prepend", "append", "intersperse", "replace")
"""Inject single tokens: `n_tokens` of the candidate's top tokens per window."""
CONTEXTUAL_STRATEGIES = ("bigram_before", "bigram_after", "trigram", "comma_list")
"""Inject token sequences: `n_sequences` n-grams per window (comma_list: one list of `n_tokens` tokens)."""
STRATEGIES = SIMPLE_STRATEGIES + CONTEXTUAL_STRATEGIES
CONDITIONS = ("baseline", "injected", "target")
VERDICTS = ("token_driven", "partially_token_driven", "weakly_token_driven", "context_dependent")
VERDICT_RULES = ((0.8, 0.01), (0.5, 0.01), (0.2, 0.05))
"""(min d, max p) of the first three verdicts, in order; a feature meeting none is context_dependent."""
N_EXAMPLES = 3
"""Example windows stored per condition and candidate."""


class InjectionInputError(ExplorerError, ValueError):
    """Inputs the test cannot run on; the message says what to change."""


@dataclass(frozen=True)
class CandidateTokens:
    """A candidate feature and what the strategies inject for it."""

    feature_id: int
    tokens: tuple[int, ...]
    """Its top tokens by mean activation, best first."""
    bigrams_before: tuple[tuple[int, int], ...] = ()
    """(token before, token where it fires), most frequent first."""
    bigrams_after: tuple[tuple[int, int], ...] = ()
    """(token where it fires, token after)."""
    trigrams: tuple[tuple[int, int, int], ...] = ()
    """(before, at, after)."""

    def own_tokens(self) -> set[int]:
        """Every token any strategy injects for it (the null draws none of them)."""
        grams = (*self.bigrams_before, *self.bigrams_after, *self.trigrams)
        return {int(t) for t in self.tokens} | {int(t) for gram in grams for t in gram}


@dataclass(frozen=True)
class InjectionSettings:
    n_tokens: int = 3
    """Tokens a simple strategy injects per window (and comma_list lists)."""
    n_sequences: int = 2
    """N-grams a contextual strategy injects per window."""
    seed: int = 0
    batch_size: int = 32
    """Windows per forward."""
    comma_token_id: int | None = None
    """The tokenizer's "," (comma_list); None leaves comma_list out."""
    strategies: tuple[str, ...] = field(default=STRATEGIES)


class InjectionWindows(NamedTuple):
    """The windows every candidate shares: [M, L] token ids, BOS first, and their documents."""

    baseline: np.ndarray
    target: np.ndarray
    baseline_docs: tuple[str, ...] = ()
    target_docs: tuple[str, ...] = ()


class InjectionResult(NamedTuple):
    rows: pd.DataFrame
    """One row per candidate and strategy: the columns of `feature_injection` but sae_id."""
    verdicts: pd.DataFrame
    """One row per candidate: the columns of `feature_injection_verdicts` but sae_id."""
    examples: pd.DataFrame
    """The columns of `injection_examples` but sae_id and text (token_ids, activations per token)."""
    n_windows_forwarded: int
    n_tokens_forwarded: int
    seconds: float


# --- the strategies ---------------------------------------------------------------------------------


def even_positions(n: int, k: int) -> list[int]:
    """k positions spread evenly over n: (j + 1) * n // (k + 1) for j < k."""
    return [(j + 1) * n // (k + 1) for j in range(k)]


def inject(body: Sequence[int], strategy: str, units: Sequence[Sequence[int]], length: int,
           comma_token_id: int | None = None) -> tuple[list[int], list[bool]]:
    """`body` (a window's tokens after BOS) with `units` injected, `length` tokens long, and which of
    them were injected. The body is cut at its end to make room (replace cuts it to `length`).

    - prepend: the units, then the body; append: the body, then the units;
    - intersperse, bigram_before, bigram_after, trigram: unit j inserted before body token
      `(j + 1) * n // (u + 1)` of the n kept body tokens (u units);
    - replace: body token `(j + 1) * n // (u + 1)` (n = `length`) replaced by unit j's tokens;
    - comma_list: the units' tokens joined by `comma_token_id`, as one unit inserted at n // 2.
    """
    units = [list(map(int, unit)) for unit in units]
    if strategy == "comma_list":
        if comma_token_id is None:
            raise InjectionInputError("comma_list needs the tokenizer's comma token")
        joined: list[int] = []
        for token in (t for unit in units for t in unit):
            joined += [int(comma_token_id), token] if joined else [token]
        units = [joined]
    injected = sum(len(unit) for unit in units)
    if injected > length:
        raise InjectionInputError(f"{injected} injected tokens do not fit a window of {length} tokens")
    body = [int(t) for t in body]
    if strategy == "replace":
        out, mask = body[:length], [False] * min(len(body), length)
        for position, unit in zip(even_positions(len(out), len(units)), units):
            for offset, token in enumerate(unit):
                if position + offset < len(out):
                    out[position + offset], mask[position + offset] = token, True
        return out, mask
    kept = body[: max(length - injected, 0)]
    if strategy == "prepend":
        flat = [t for unit in units for t in unit]
        return flat + kept, [True] * len(flat) + [False] * len(kept)
    if strategy == "append":
        flat = [t for unit in units for t in unit]
        return kept + flat, [False] * len(kept) + [True] * len(flat)
    if strategy not in ("intersperse", *CONTEXTUAL_STRATEGIES):
        raise InjectionInputError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    out, mask, start = [], [], 0
    positions = [len(kept) // 2] if strategy == "comma_list" else even_positions(len(kept), len(units))
    for position, unit in zip(positions, units):
        out += kept[start:position] + unit
        mask += [False] * (position - start) + [True] * len(unit)
        start = position
    out += kept[start:]
    mask += [False] * (len(kept) - start)
    return out, mask


def strategy_units(candidate: CandidateTokens, strategy: str, window_index: int,
                   settings: InjectionSettings) -> list[tuple[int, ...]]:
    """What `strategy` injects into window `window_index` for `candidate`: the candidate's tokens
    (or n-grams) taken in turn, window after window, so every one of them is used; [] when it has
    none for this strategy."""
    if strategy in SIMPLE_STRATEGIES or strategy == "comma_list":
        pool: Sequence[tuple[int, ...]] = [(int(t),) for t in candidate.tokens]
        per_window = settings.n_tokens
    else:
        pool = {"bigram_before": candidate.bigrams_before, "bigram_after": candidate.bigrams_after,
                "trigram": candidate.trigrams}[strategy]
        per_window = settings.n_sequences
    if not pool:
        return []
    return [tuple(pool[(window_index * per_window + j) % len(pool)]) for j in range(per_window)]


# --- windows ----------------------------------------------------------------------------------------


BASELINE_GAP = 32
"""Tokens before a baseline window (in its document) that must hold no phrase token either: a
correction's line runs on after its phrase ("Wait, that's not right. 17 * 4 = 68, not 64.")."""


def select_windows(windows: Sequence[Window], n_windows: int, length: int, seed: int) -> InjectionWindows:
    """`n_windows` baseline and target windows of exactly `length` tokens, drawn (seeded) from
    `windows` (cut from held-out documents by `explorer.feature_index.make_windows`):

    - baseline: no token of any lexicon phrase (interjections included), nor in the `BASELINE_GAP`
      tokens of its document before it (the end of the previous window), so that no baseline window
      opens in the middle of a correction, after its phrase;
    - target: at least one token of a backtracking phrase (the notebook's six groups).
    """
    backtracking = np.asarray([GROUPS.index(g) for g in NOTEBOOK_GROUPS], dtype=np.int8)
    after_phrase: set[int] = set()  # windows whose document had a phrase token in the gap before them
    for previous, window in zip(windows, windows[1:]):
        if previous.doc_id == window.doc_id and bool((previous.group_ids[-BASELINE_GAP:] != NO_GROUP).any()):
            after_phrase.add(id(window))
    full = [w for w in windows if len(w.token_ids) == length]
    baseline = [w for w in full if bool((w.group_ids == NO_GROUP).all()) and id(w) not in after_phrase]
    target = [w for w in full if bool(np.isin(w.group_ids, backtracking).any())]
    if len(baseline) < n_windows or len(target) < n_windows:
        raise InjectionInputError(
            f"The held-out documents give {len(baseline)} windows of {length} tokens without backtracking and "
            f"{len(target)} with it; the test needs {n_windows} of each. Lower --windows (M) or --window-tokens "
            "(L), or use a corpus with more held-out documents."
        )
    rng = np.random.default_rng(seed)

    def draw(pool: list[Window]) -> list[Window]:
        return [pool[i] for i in sorted(rng.choice(len(pool), size=n_windows, replace=False).tolist())]

    base, targ = draw(baseline), draw(target)
    return InjectionWindows(
        np.stack([w.token_ids for w in base]).astype(np.int64), np.stack([w.token_ids for w in targ]).astype(np.int64),
        tuple(w.doc_id for w in base), tuple(w.doc_id for w in targ),
    )


# --- the null ---------------------------------------------------------------------------------------


class FrequencyMatcher:
    """Random tokens of about the same corpus frequency as a given one: the same bin of
    floor(log2(count + 1)), or the nearest bin with any token to offer. Tokens never seen
    (count 0) and `excluded` ones (special tokens) are never drawn."""

    def __init__(self, counts: np.ndarray, excluded: Sequence[int] = ()):
        counts = np.asarray(counts, dtype=np.int64)
        self.bins = np.floor(np.log2(counts + 1)).astype(np.int64)
        drawable = counts > 0
        drawable[[int(t) for t in excluded if 0 <= int(t) < len(counts)]] = False
        self.pools = {int(b): np.flatnonzero(drawable & (self.bins == b)) for b in np.unique(self.bins[drawable])}
        self._avoiding: tuple[object, frozenset[int]] = (None, frozenset())
        self._allowed: dict[int, np.ndarray] = {}

    def _allowed_pool(self, b: int, avoid: set[int]) -> np.ndarray:
        """Bin `b`'s tokens but `avoid`'s, kept while the same `avoid` comes back (one candidate's draws:
        filtering a bin of thousands of tokens on every draw was 85% of building the windows)."""
        if avoid is not self._avoiding[0]:
            key = frozenset(avoid)
            if key != self._avoiding[1]:
                self._allowed = {}
            self._avoiding = (avoid, key)
        if b not in self._allowed:
            pool = self.pools[b]
            self._allowed[b] = pool[~np.isin(pool, list(avoid))] if avoid else pool
        return self._allowed[b]

    def draw(self, token: int, rng: np.random.Generator, avoid: set[int]) -> int:
        """A token of `token`'s bin (or the nearest bin with one) not in `avoid`, uniformly. `avoid` must
        not change in place between calls."""
        target = int(self.bins[token]) if 0 <= token < len(self.bins) else 0
        for distance in range(0, 64):
            for b in dict.fromkeys((target - distance, target + distance)):
                if b not in self.pools:
                    continue
                allowed = self._allowed_pool(b, avoid)
                if len(allowed):
                    return int(allowed[rng.integers(len(allowed))])
        raise InjectionInputError("no token of the corpus is left to draw a null from")


# --- statistics -------------------------------------------------------------------------------------


def cohens_d(treated: np.ndarray, control: np.ndarray) -> float:
    """(mean treated - mean control) / pooled SD (ddof 1). Both constant: 0 when the means are equal,
    +-inf when they differ. NaN with fewer than two values in either."""
    x, y = np.asarray(treated, dtype=np.float64), np.asarray(control, dtype=np.float64)
    if len(x) < 2 or len(y) < 2:
        return math.nan
    pooled = math.sqrt(((len(x) - 1) * x.var(ddof=1) + (len(y) - 1) * y.var(ddof=1)) / (len(x) + len(y) - 2))
    difference = float(x.mean() - y.mean())
    if pooled == 0.0:
        return 0.0 if difference == 0.0 else math.copysign(math.inf, difference)
    return difference / pooled


def t_test_p(treated: np.ndarray, control: np.ndarray) -> float:
    """Two-sided Student's t-test p (`scipy.stats.ttest_ind`, equal variances, as the study). Both
    constant: 1 when the means are equal, 0 when they differ. NaN with fewer than two values."""
    from scipy import stats

    x, y = np.asarray(treated, dtype=np.float64), np.asarray(control, dtype=np.float64)
    if len(x) < 2 or len(y) < 2:
        return math.nan
    if x.var() == 0.0 and y.var() == 0.0:
        return 1.0 if x.mean() == y.mean() else 0.0
    with warnings.catch_warnings():  # nearly constant samples: scipy warns, the p it gives stands
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(x, y, equal_var=True).pvalue)


def transfer_ratio(injected: float, baseline: float, target: float) -> float:
    """(injected - baseline) / (target - baseline); NaN when target == baseline."""
    gap = target - baseline
    return (injected - baseline) / gap if gap != 0.0 and math.isfinite(gap) else math.nan


def verdict(d: float, p: float) -> str:
    """The study's classes (Cohen 1988): the first of VERDICT_RULES that (d, p) meets."""
    for name, (min_d, max_p) in zip(VERDICTS, VERDICT_RULES):
        if not (math.isnan(d) or math.isnan(p)) and d >= min_d and p < max_p:
            return name
    return VERDICTS[-1]


# --- the forwards -----------------------------------------------------------------------------------


class _Row(NamedTuple):
    candidate: int
    """Index into the candidates; -1 for a shared baseline or target window."""
    strategy: str
    condition: str
    """baseline, target, injected or null."""
    token_ids: tuple[int, ...]


def _tested_strategies(settings: InjectionSettings) -> list[tuple[int, str]]:
    return [(s, strategy) for s, strategy in enumerate(settings.strategies)
            if not (strategy == "comma_list" and settings.comma_token_id is None)]


def _n_injected_rows(candidates: Sequence[CandidateTokens], windows: InjectionWindows, settings: InjectionSettings,
                     with_null: bool) -> int:
    """How many rows `_injected_rows` yields: M (2M with the null) per candidate and strategy it has
    tokens for."""
    per_window = 2 if with_null else 1
    return sum(len(windows.baseline) * per_window for candidate in candidates for _, strategy in _tested_strategies(settings)
               if strategy_units(candidate, strategy, 0, settings))


def _injected_window(strategy: str, window: np.ndarray, units: Sequence[Sequence[int]],
                     settings: InjectionSettings) -> tuple[int, ...]:
    """`window` (BOS first) with `units` injected after its BOS, as long as it was."""
    tokens, _ = inject(window[1:], strategy, units, len(window) - 1, settings.comma_token_id)
    return (int(window[0]), *tokens)


def _injected_rows(candidates: Sequence[CandidateTokens], windows: InjectionWindows, settings: InjectionSettings,
                   matcher: FrequencyMatcher | None) -> Iterator[_Row]:
    """Every injected window (and its null after it), built as it is asked for: at the real defaults
    there are 393,216 of them, 0.96 GiB as Python tuples all at once (docs/scaling.md)."""
    for c, candidate in enumerate(candidates):
        avoid = candidate.own_tokens()
        for s, strategy in _tested_strategies(settings):
            rng = np.random.default_rng([settings.seed, candidate.feature_id, s])
            for i, window in enumerate(windows.baseline):
                units = strategy_units(candidate, strategy, i, settings)
                if not units:
                    break
                yield _Row(c, strategy, "injected", _injected_window(strategy, window, units, settings))
                if matcher is not None:
                    null_units = [tuple(matcher.draw(t, rng, avoid) for t in unit) for unit in units]
                    yield _Row(c, strategy, "null", _injected_window(strategy, window, null_units, settings))


def _to_device(token_ids: Sequence[tuple[int, ...]], device: torch.device) -> torch.Tensor:
    """A [B, L] batch on `device`; on a GPU the copy is asynchronous, so the CPU builds the next batch
    while the GPU runs this one."""
    tokens_BT = torch.tensor(token_ids, dtype=torch.long)
    if device.type == "cuda":
        return tokens_BT.pin_memory().to(device, non_blocking=True)
    return tokens_BT.to(device)


@torch.no_grad()
def _encode_batch(model, sae, hook_name: str, stop_at_layer: int | None, tokens_BT: torch.Tensor,
                  special_ids: torch.Tensor) -> torch.Tensor:
    """[B, T, F] SAE activations (float32), -inf on special tokens (BOS)."""
    _, cache = model.run_with_cache(tokens_BT, names_filter=hook_name, stop_at_layer=stop_at_layer)
    acts_BTF = sae.encode(cache[hook_name].to(sae.device, sae.dtype)).float()
    special_BT = torch.isin(tokens_BT, special_ids).to(acts_BTF.device)
    return acts_BTF.masked_fill(special_BT[..., None], -math.inf)


def run_injection(
    model, sae, hook_name: str, windows: InjectionWindows, candidates: Sequence[CandidateTokens],
    settings: InjectionSettings = InjectionSettings(), *, token_counts: np.ndarray | None = None,
    stop_at_layer: int | None = None, special_ids: Sequence[int] | None = None, progress: bool = True,
    on_batch: Callable[[], None] | None = None,
) -> InjectionResult:
    """The test for every candidate and strategy, in shared batched forwards.

    Each window's value is the feature's maximum activation over its tokens but the special ones (BOS),
    injected tokens included (the study takes the maximum over the text). Baseline and target windows
    are forwarded once for every candidate. With `token_counts` ([vocab] corpus counts) each strategy
    also runs its null (frequency-matched random tokens); without, the null columns are NaN.

    The injected windows are built a batch at a time, and each batch's maxima stay on the device until
    the last batch, so on a GPU the CPU builds the next batch while the GPU runs this one.
    """
    started = time.perf_counter()
    unknown = [s for s in settings.strategies if s not in STRATEGIES]
    if unknown:
        raise InjectionInputError(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    if not candidates:
        raise InjectionInputError("no candidate features to test")
    if special_ids is None:
        special_ids = sorted(model.tokenizer.all_special_ids) if getattr(model, "tokenizer", None) is not None else []
    matcher = FrequencyMatcher(token_counts, special_ids) if token_counts is not None else None
    m = len(windows.baseline)
    shared = [_Row(-1, "", "baseline", tuple(map(int, w))) for w in windows.baseline]
    shared += [_Row(-1, "", "target", tuple(map(int, w))) for w in windows.target]
    n_rows = len(shared) + _n_injected_rows(candidates, windows, settings, matcher is not None)
    rows = itertools.chain(shared, _injected_rows(candidates, windows, settings, matcher))
    device = next(model.parameters()).device
    special = torch.tensor(list(special_ids), dtype=torch.long, device=device)
    features = torch.tensor([c.feature_id for c in candidates], dtype=torch.long, device=device)
    shared_BC: list[torch.Tensor] = []  # each shared window's maxima for every candidate
    own_B: list[torch.Tensor] = []  # each window's maximum for its own candidate (shared: candidate 0)
    labels: list[tuple[int, str, str]] = []  # (candidate, strategy, condition) of each row
    bar = tqdm(total=n_rows, desc="injection", unit="window", disable=not progress)
    while batch := list(itertools.islice(rows, settings.batch_size)):
        tokens_BT = _to_device([r.token_ids for r in batch], device)
        max_BF = _encode_batch(model, sae, hook_name, stop_at_layer, tokens_BT, special).amax(dim=1)
        which = torch.tensor([max(r.candidate, 0) for r in batch], dtype=torch.long).to(device, non_blocking=True)
        own_B.append(max_BF.gather(1, features[which][:, None])[:, 0])
        n_shared = sum(r.candidate < 0 for r in batch)  # shared rows come first
        if n_shared:
            shared_BC.append(max_BF[:n_shared, features])
        labels += [(r.candidate, r.strategy, r.condition) for r in batch]
        bar.update(len(batch))
        if on_batch is not None:
            on_batch()
    bar.close()
    shared_max = torch.cat(shared_BC).double().cpu().numpy()
    row_max = torch.cat(own_B).double().cpu().numpy()
    base_MC, target_MC = shared_max[:m], shared_max[m : 2 * m]
    values: dict[tuple[int, str, str], list[float]] = {}
    for label, value in zip(labels[len(shared):], row_max[len(shared):]):
        values.setdefault(label, []).append(float(value))
    records = []
    for c, candidate in enumerate(candidates):
        base, target = base_MC[:, c], target_MC[:, c]
        for strategy in settings.strategies:
            injected = np.asarray(values.get((c, strategy, "injected"), []))
            if not len(injected):
                continue
            null = np.asarray(values.get((c, strategy, "null"), [math.nan] * len(injected)))
            records.append({
                "feature_id": candidate.feature_id, "strategy": strategy, "n_windows": len(injected),
                "baseline_mean": float(base.mean()), "injected_mean": float(injected.mean()),
                "target_mean": float(target.mean()), "cohens_d": cohens_d(injected, base),
                "p_value": t_test_p(injected, base),
                "transfer_ratio": transfer_ratio(float(injected.mean()), float(base.mean()), float(target.mean())),
                "null_mean": float(null.mean()), "null_d": cohens_d(null, base), "null_p": t_test_p(null, base),
                "injected_tokens": injected_token_list(candidate, strategy),
            })
    frame = pd.DataFrame.from_records(records, columns=FEATURE_INJECTION_COLUMNS)
    verdicts = verdict_rows(frame)
    injected_max = {key: np.asarray(v) for key, v in values.items() if key[2] == "injected"}
    examples = _example_rows(model, sae, hook_name, stop_at_layer, special, candidates, windows, settings,
                             injected_max, shared_max, verdicts)
    n_windows = len(labels)
    return InjectionResult(frame, verdicts, examples, n_windows, n_windows * windows.baseline.shape[1],
                           time.perf_counter() - started)


FEATURE_INJECTION_COLUMNS = (
    "feature_id", "strategy", "n_windows", "baseline_mean", "injected_mean", "target_mean", "cohens_d", "p_value",
    "transfer_ratio", "null_mean", "null_d", "null_p", "injected_tokens",
)
VERDICT_COLUMNS = ("feature_id", "verdict", "best_strategy", "best_d", "best_p", "d_minus_null")


def injected_token_list(candidate: CandidateTokens, strategy: str) -> list[int]:
    """The tokens `strategy` draws from for `candidate`, flattened (n-grams end to end)."""
    if strategy in SIMPLE_STRATEGIES or strategy == "comma_list":
        return [int(t) for t in candidate.tokens]
    grams = {"bigram_before": candidate.bigrams_before, "bigram_after": candidate.bigrams_after,
             "trigram": candidate.trigrams}[strategy]
    return [int(t) for gram in grams for t in gram]


def verdict_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """One verdict per feature from its strategy with the largest d (NaN d never wins; ties: the first
    strategy in STRATEGIES order), and that d minus its null's d (NaN when both are infinite)."""
    records = []
    for feature_id, group in rows.groupby("feature_id", sort=False):
        ranked = group.assign(order=group["strategy"].map(STRATEGIES.index)).sort_values("order", kind="stable")
        d = ranked["cohens_d"].astype(float).fillna(-math.inf).to_numpy()
        best = ranked.iloc[int(np.argmax(d))]
        best_d, best_p = float(best["cohens_d"]), float(best["p_value"])
        with np.errstate(invalid="ignore"):
            margin = float(np.float64(best_d) - np.float64(best["null_d"]))
        records.append({"feature_id": int(feature_id), "verdict": verdict(best_d, best_p),
                        "best_strategy": best["strategy"], "best_d": best_d, "best_p": best_p,
                        "d_minus_null": margin})
    return pd.DataFrame.from_records(records, columns=VERDICT_COLUMNS)


def _example_rows(model, sae, hook_name, stop_at_layer, special, candidates, windows, settings, injected_max,
                  shared_max, verdicts) -> pd.DataFrame:
    """The N_EXAMPLES windows where each candidate fires most, per condition (injected: its best
    strategy's, rebuilt from the window and the strategy's units), with the activation of every token
    (a second, small forward)."""
    m = len(windows.baseline)
    best = dict(zip(verdicts["feature_id"], verdicts["best_strategy"]))
    chosen: list[tuple[int, str | None, str, int, tuple[int, ...]]] = []
    for c, candidate in enumerate(candidates):
        for condition, offset, source in (("baseline", 0, windows.baseline), ("target", m, windows.target)):
            order = np.argsort(-shared_max[offset : offset + m, c], kind="stable")[:N_EXAMPLES]
            chosen += [(c, None, condition, rank, tuple(map(int, source[i]))) for rank, i in enumerate(order.tolist())]
        strategy = best.get(candidate.feature_id)
        maxima = injected_max.get((c, strategy, "injected"), np.zeros(0))
        order = np.argsort(-maxima, kind="stable")[:N_EXAMPLES]  # ties: the first window
        for rank, i in enumerate(order.tolist()):
            units = strategy_units(candidate, strategy, i, settings)
            chosen.append((c, strategy, "injected", rank, _injected_window(strategy, windows.baseline[i], units, settings)))
    records = []
    device = next(model.parameters()).device
    for start in range(0, len(chosen), 32):
        batch = chosen[start : start + 32]
        tokens_BT = torch.tensor([item[4] for item in batch], dtype=torch.long, device=device)
        acts_BTF = _encode_batch(model, sae, hook_name, stop_at_layer, tokens_BT, special)
        for b, (c, strategy, condition, rank, token_ids) in enumerate(batch):
            acts = acts_BTF[b, :, candidates[c].feature_id].clamp(min=0).cpu().numpy()  # BOS: 0
            records.append({"feature_id": candidates[c].feature_id, "strategy": strategy, "condition": condition,
                            "rank": rank, "token_ids": list(token_ids), "activations": acts.astype(np.float32).tolist()})
    return pd.DataFrame.from_records(
        records, columns=["feature_id", "strategy", "condition", "rank", "token_ids", "activations"]
    )
