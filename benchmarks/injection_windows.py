"""The CPU side of the token-injection test at the real defaults: building the injected and null
windows (`explorer.injection._injected_rows`), streamed a batch at a time as `run_injection` does now,
against building them all before the first forward as it did before, and against that with the null's
bins filtered on every draw as `FrequencyMatcher` did before (the baseline); one process, the same
inputs, and the same windows from every route (checked).

    python benchmarks/injection_windows.py [--candidates 384] [--vocab 151936] [--windows 64] [--tokens 64]

Random candidates (10 top tokens, 10 of each n-gram), random windows and Zipf corpus counts over the
vocabulary; the real profile's InjectionSpec (3 tokens, 2 n-grams per window, 8 strategies, batches of
64). Printed: each route's seconds and the growth of the process's peak resident memory (the streamed
route runs first, so its peak is not hidden under the others'; the two all-first routes hold the same
list, so the second's growth hides under the first's), and how many windows each built.
No forward runs: this is the part of the stage a GPU does not speed up. On a GPU the streamed route's
batches are built while the previous batch's forward runs (asynchronous copies, maxima kept on the
device), so its time leaves the clock when the forwards take longer.
"""

from __future__ import annotations

import argparse
import itertools
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=384, help="default: 64 by each of the 6 ranking scores")
    parser.add_argument("--vocab", type=int, default=151_936, help="default: DeepSeek-R1-Distill-Qwen-1.5B's")
    parser.add_argument("--windows", type=int, default=64, help="M")
    parser.add_argument("--tokens", type=int, default=64, help="L")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch

    from explorer.injection import (
        STRATEGIES,
        CandidateTokens,
        FrequencyMatcher,
        InjectionSettings,
        InjectionWindows,
        _injected_rows,
    )

    rng = np.random.default_rng(0)
    v = args.vocab

    def grams(n: int) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(int(t) for t in rng.integers(2, v, n)) for _ in range(10))

    candidates = [CandidateTokens(f, tuple(int(t) for t in rng.integers(2, v, 10)), grams(2), grams(2), grams(3))
                  for f in range(args.candidates)]
    windows = InjectionWindows(rng.integers(2, v, (args.windows, args.tokens)),
                               rng.integers(2, v, (args.windows, args.tokens)))
    windows.baseline[:, 0] = windows.target[:, 0] = 1  # BOS
    counts = rng.zipf(1.3, v).astype(np.int64)
    settings = InjectionSettings(n_tokens=3, n_sequences=2, batch_size=args.batch_size, comma_token_id=11,
                                 strategies=STRATEGIES)
    print(f"{args.candidates} candidates x {len(STRATEGIES)} strategies x {args.windows} windows x 2 (injected, null), "
          f"{args.tokens} tokens, vocabulary {v:,}")

    class FilteringEveryDraw(FrequencyMatcher):
        """The matcher before 2026-12-05: a bin's tokens filtered against `avoid` on every draw."""

        def _allowed_pool(self, b: int, avoid: set[int]) -> np.ndarray:
            pool = self.pools[b]
            return pool[~np.isin(pool, list(avoid))] if avoid else pool

    def streamed(matcher) -> list[int]:
        rows, sums = _injected_rows(candidates, windows, settings, matcher), []
        while batch := list(itertools.islice(rows, args.batch_size)):
            sums.append(int(torch.tensor([r.token_ids for r in batch], dtype=torch.long).sum()))
        return sums

    def all_first(matcher) -> list[int]:
        every = list(_injected_rows(candidates, windows, settings, matcher))
        return [int(torch.tensor([r.token_ids for r in every[start : start + args.batch_size]], dtype=torch.long).sum())
                for start in range(0, len(every), args.batch_size)]

    results = {}
    for name, route, matcher_type in (("streamed, a batch at a time", streamed, FrequencyMatcher),
                                      ("all built first", all_first, FrequencyMatcher),
                                      ("all first, bins filtered per draw (before)", all_first, FilteringEveryDraw)):
        matcher = matcher_type(counts, [0, 1])
        before = peak_rss_gib()
        started = time.perf_counter()
        sums = route(matcher)
        results[name] = (time.perf_counter() - started, peak_rss_gib() - before, sums)
    reference = results["all first, bins filtered per draw (before)"]
    assert all(sums == reference[2] for _, _, sums in results.values()), "the routes built different windows"
    n_windows = len(reference[2]) * args.batch_size
    for name, (seconds, gib, _) in results.items():
        print(f"{name:>44}: {seconds:6.1f} s, peak RSS +{gib:.2f} GiB, {seconds / reference[0]:.3f} of before")
    print(f"{n_windows:,} windows (the last batch may be short); the same batches from every route")

if __name__ == "__main__":
    main()
