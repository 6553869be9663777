"""What the token-mass sketch (`TokenMassAccumulator`, the token statistics of the feature card) adds to
the index's streaming pass: the pass with and without it, alternating in one process, one torch thread.

    python benchmarks/token_stats_overhead.py [--run runs/demo] [--tokens 400000] [--rounds 2]

The same model, SAE, windows and configuration each time; "without" drops the accumulator from the
index's members, nothing else. Printed: each pass's seconds, the ratio of the medians, the seconds
spent inside the sketch's own update (timed around it, so less exposed to the machine's load than the
ratio), and the time of the token tables (`feature_tables.token_dependence_rows`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "demo")
    parser.add_argument("--tokens", type=int, default=None, help="default: the profile's index budget")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(1)
    from explorer import feature_index
    from explorer.config import Profile
    from explorer.feature_aggregates import FeatureIndexAccumulators, TokenMassAccumulator
    from explorer.feature_tables import token_dependence_rows
    from precompute.index_stage import load_inputs

    class WithoutTokenMass(FeatureIndexAccumulators):
        def __init__(self, config, device="cpu"):
            super().__init__(config, device)
            del self.members["token_mass"]

    in_sketch = [0.0]  # seconds spent in the sketch's own update, over the passes with it
    update = TokenMassAccumulator.update_prepared

    def timed_update(self, p):
        started = time.perf_counter()
        update(self, p)
        in_sketch[0] += time.perf_counter() - started

    TokenMassAccumulator.update_prepared = timed_update
    profile = Profile.from_dict(json.loads((args.run / "profile.json").read_text()))
    tokens = args.tokens if args.tokens is not None else (profile.index.n_tokens or None)
    inputs = load_inputs(profile, args.run, None, tokens, progress=False)
    windows, _ = feature_index.limit_tokens(inputs.windows, tokens)
    seconds: dict[str, list[float]] = {"without": [], "with": []}
    last = None
    for round_ in range(args.rounds):
        for name in ("without", "with") if round_ % 2 == 0 else ("with", "without"):
            feature_index.FeatureIndexAccumulators = WithoutTokenMass if name == "without" else FeatureIndexAccumulators
            try:
                result = feature_index.run_index_pass(
                    inputs.model, inputs.sae, inputs.hook_name, inputs.stop_at_layer, windows, inputs.config,
                    batch_size=args.batch_size, progress=False,
                )
            finally:
                feature_index.FeatureIndexAccumulators = FeatureIndexAccumulators
            seconds[name].append(result.seconds)
            print(f"round {round_}: {name:7s} {result.seconds:6.2f} s ({result.n_tokens:,} tokens)", flush=True)
            if name == "with":
                last = result
    totals = last.accumulators.finalise()
    started = time.perf_counter()
    frames = token_dependence_rows(inputs.sae_id, totals)
    tables_s = time.perf_counter() - started
    ratio = statistics.median(seconds["with"]) / statistics.median(seconds["without"])
    print(f"features {inputs.config.n_features}, capacity {inputs.config.token_capacity}; "
          f"token tables {tables_s:.3f} s ({len(frames['feature_token_stats'])} token rows)")
    print(f"ratio (median with / median without): {ratio:.3f}; in the sketch's update: "
          f"{in_sketch[0] / len(seconds['with']):.2f} s per pass ({in_sketch[0] / sum(seconds['with']):.1%} of the pass)")


if __name__ == "__main__":
    main()
