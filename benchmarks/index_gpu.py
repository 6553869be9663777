"""The feature index at the real model's shapes: tokens/s and peak GPU memory of the streaming pass.

    python benchmarks/index_gpu.py                  # H100/H200: 200k tokens, 24,576 features, layer 21
    python benchmarks/index_gpu.py --small          # CPU smoke test of the script (tiny shapes)

Random weights (benchmarks/full_shapes.py): timings do not depend on values. The pass is the
product's own (`explorer.feature_index.run_index_pass`: forward stopped after the hook's layer, SAE
encode, every accumulator, each kept example's context read from its batch), followed by `finalise`
and cutting those contexts to their windows (no second forward). Goal: at least 50k tokens/s on an H100. Put the printed figures, with the card's
name, in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.full_shapes import REAL, SMALL, build_model, build_sae, device_name, random_windows  # noqa: E402
from explorer.feature_aggregates import IndexConfig  # noqa: E402
from explorer.feature_index import contexts_from_values, run_index_pass  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="tiny shapes, for a CPU smoke test")
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    shapes = SMALL if args.small else REAL
    dtype = getattr(torch, args.dtype) if args.device.startswith("cuda") else torch.float32
    tokens = min(args.tokens, 20_000) if args.small else args.tokens

    t0 = time.perf_counter()
    model = build_model(shapes, args.device, dtype, n_ctx=args.context)
    sae = build_sae(model, shapes, device=args.device, dtype=torch.float32)
    windows = random_windows(tokens, args.context, model.cfg.d_vocab)
    config = IndexConfig(n_features=shapes.d_sae, vocab_size=model.cfg.d_vocab, control_token_ids=tuple(range(16)))
    print(f"device: {device_name(args.device)}; model {shapes.config['num_hidden_layers']} layers, d_model "
          f"{model.cfg.d_model}, {str(dtype).split('.')[-1]}; SAE {shapes.d_sae:,} features at {shapes.hook_name}; built in "
          f"{time.perf_counter() - t0:.1f}s", flush=True)

    stop_at_layer = shapes.layer + 1  # the forward runs blocks 0 .. shapes.layer
    warm = random_windows(args.batch_size * args.context, args.context, model.cfg.d_vocab, seed=1)
    run_index_pass(model, sae, shapes.hook_name, stop_at_layer, warm, config, batch_size=args.batch_size, progress=False)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    result = run_index_pass(
        model, sae, shapes.hook_name, stop_at_layer, windows, config, batch_size=args.batch_size, progress=True
    )
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    totals = result.accumulators.finalise()
    t2 = time.perf_counter()
    ex = totals.examples
    contexts_from_values(windows, ex.context_id_N, ex.position_N, ex.context_values_NL, before=32, after=8)
    t3 = time.perf_counter()
    print(f"tokens: {result.n_tokens:,} in {len(windows):,} windows of {args.context}")
    print(f"pass: {result.seconds:.2f}s = {result.n_tokens / result.seconds:,.0f} tokens/s (all {shapes.d_sae:,} features)")
    print(f"finalise: {t2 - t1:.2f}s; example contexts ({int(ex.feature_N.numel()):,} examples): {t3 - t2:.2f}s")
    if args.device.startswith("cuda"):
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    print(f"end to end: {result.n_tokens / (result.seconds + t3 - t1):,.0f} tokens/s")


if __name__ == "__main__":
    main()
