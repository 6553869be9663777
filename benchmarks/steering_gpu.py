"""Generation speed with and without the steering hook, at DeepSeek-R1-Distill-Qwen-1.5B's shapes.

    python benchmarks/steering_gpu.py                 # the real shapes, random weights, on CUDA
    python benchmarks/steering_gpu.py --small         # a tiny model on the CPU: a smoke test (seconds)

Builds a `HookedSAETransformer` with the real model's configuration (28 layers, d_model 1536, 12 heads,
2 KV heads, d_mlp 8960, vocab 151936; weights processed as `load_model` leaves them, so RMSNorm is
folded: `RMSPre`) and random weights (timings do not depend on the values), and a random standard SAE
with 24,576 features at `blocks.21.hook_mlp_out`. It then times `explorer.steering.generate_rows`,
the loop the app and `precompute steer` use, with no hook, with the `add` hook and with the `clamp`
hook (which encodes every steered position with the SAE), for each batch size; conditions are
interleaved over the repeats so drift hits them alike, and the median is reported. EOS is disabled so
every run generates exactly `--new-tokens` tokens. For reference it also times transformer-lens's own
`generate` (KV cache, no hook).

Goal: the add hook costs under 5% of tokens/s. Prints a markdown table for
docs/benchmarks.md (with the card's name) and writes the numbers as JSON to --out when given.
Needs only torch, transformer-lens and sae-lens (no tokenizer, no weights, no network).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from explorer.steering import RowSpec, generate_rows  # noqa: E402

REAL_SHAPES = dict(
    n_layers=28, d_model=1536, n_heads=12, d_head=128, n_key_value_heads=2, d_mlp=8960, d_vocab=151936,
    rotary_base=10000, eps=1e-6,
)
SMALL_SHAPES = dict(
    n_layers=2, d_model=64, n_heads=4, d_head=16, n_key_value_heads=2, d_mlp=256, d_vocab=512,
    rotary_base=10000, eps=1e-6,
)


def build_model(shapes: dict, n_ctx: int, device: str, dtype: torch.dtype):
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig

    cfg = HookedTransformerConfig(
        **shapes,
        n_ctx=n_ctx,
        act_fn="silu",
        normalization_type="RMSPre",
        positional_embedding_type="rotary",
        rotary_dim=shapes["d_head"],
        rotary_adjacent_pairs=False,
        final_rms=True,
        gated_mlp=True,
        use_attn_scale=True,
        original_architecture="Qwen2ForCausalLM",
        default_prepend_bos=True,
        init_weights=True,  # otherwise the weights stay uninitialised and the timings mislead
        device=device,
        dtype=dtype,
        seed=0,
    )
    with torch.device(device):
        model = HookedSAETransformer(cfg)
    return model.to(device).eval()


def build_sae(d_in: int, d_sae: int, hook_name: str, device: str, dtype: torch.dtype):
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, dtype=str(dtype).removeprefix("torch."), device=device))
    sae.cfg.metadata.hook_name = hook_name
    with torch.no_grad():
        for param in sae.parameters():
            param.normal_(0, 0.02)
    return sae.to(device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_rows(model, sae, hook_name, prompt, n_rows, mode, new_tokens, device) -> float:
    """Tokens per second of one batch of `n_rows` rows generating `new_tokens` tokens each."""
    coef = None if mode == "none" else 4.0
    rows = [RowSpec(coef, i) for i in range(n_rows)]
    sync(device)
    started = time.perf_counter()
    generate_rows(
        model, sae if mode != "none" else None, hook_name, prompt, rows, feature_id=123,
        mode="add" if mode == "none" else mode, max_new_tokens=new_tokens, temperature=1.0,
        seeds=list(range(n_rows)), eos_token_id=None,
    )
    sync(device)
    return n_rows * new_tokens / (time.perf_counter() - started)


def time_tl_generate(model, prompt, n_rows, new_tokens, device) -> float:
    tokens = torch.tensor([prompt] * n_rows, device=device)
    sync(device)
    started = time.perf_counter()
    with torch.inference_mode():
        model.generate(tokens, max_new_tokens=new_tokens, do_sample=True, stop_at_eos=False, verbose=False)
    sync(device)
    return n_rows * new_tokens / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="a tiny model on the CPU (smoke test)")
    parser.add_argument("--device", default=None, help="default: cuda for the real shapes, cpu with --small")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on the CPU")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated rows per batch (default 1,8 / 1,4)")
    parser.add_argument("--prompt-tokens", type=int, default=None, help="default 256 (32 with --small)")
    parser.add_argument("--new-tokens", type=int, default=None, help="default 128 (16 with --small)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--d-sae", type=int, default=None, help="default 24576 (256 with --small)")
    parser.add_argument("--hook", default=None, help="default blocks.21.hook_mlp_out (blocks.1 with --small)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)

    small = args.small
    device = args.device or ("cpu" if small else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA device; run with --small for the CPU smoke test", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float32 if device == "cpu" else torch.bfloat16)
    shapes = SMALL_SHAPES if small else REAL_SHAPES
    batch_sizes = [int(b) for b in (args.batch_sizes or ("1,4" if small else "1,8")).split(",")]
    prompt_tokens = args.prompt_tokens or (32 if small else 256)
    new_tokens = args.new_tokens or (16 if small else 128)
    d_sae = args.d_sae or (256 if small else 24576)
    hook_name = args.hook or ("blocks.1.hook_mlp_out" if small else "blocks.21.hook_mlp_out")
    card = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"

    started = time.perf_counter()
    model = build_model(shapes, n_ctx=prompt_tokens + new_tokens + 8, device=device, dtype=dtype)
    sae = build_sae(shapes["d_model"], d_sae, hook_name, device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e9:.2f}B parameters, {dtype}, on {card}; SAE d_sae {d_sae} at {hook_name}; "
          f"built in {time.perf_counter() - started:.1f} s", flush=True)
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, shapes["d_vocab"], (prompt_tokens,), generator=generator).tolist()

    modes = ("none", "add", "clamp")
    results = []
    for n_rows in batch_sizes:
        time_rows(model, sae, hook_name, prompt, n_rows, "add", min(new_tokens, 8), device)  # warm-up
        time_tl_generate(model, prompt, n_rows, min(new_tokens, 8), device)
        speeds = {m: [] for m in (*modes, "tl_generate")}
        for _ in range(args.repeats):
            for mode in modes:
                speeds[mode].append(time_rows(model, sae, hook_name, prompt, n_rows, mode, new_tokens, device))
            speeds["tl_generate"].append(time_tl_generate(model, prompt, n_rows, new_tokens, device))
        median = {m: statistics.median(v) for m, v in speeds.items()}
        row = {
            "card": card, "dtype": str(dtype).removeprefix("torch."), "batch": n_rows, "prompt_tokens": prompt_tokens,
            "new_tokens": new_tokens, "d_sae": d_sae, "repeats": args.repeats,
            **{f"tokens_per_s_{m}": round(v, 1) for m, v in median.items()},
            "add_cost_pct": round(100 * (1 - median["add"] / median["none"]), 2),
            "clamp_cost_pct": round(100 * (1 - median["clamp"] / median["none"]), 2),
            "all_runs": speeds,
        }
        results.append(row)
        print(f"batch {n_rows}: " + ", ".join(f"{m} {v:.1f} tok/s" for m, v in median.items())
              + f"; add hook costs {row['add_cost_pct']:+.2f}%, clamp {row['clamp_cost_pct']:+.2f}%", flush=True)

    print("\n| card | dtype | batch | prompt | new | no hook tok/s | add tok/s | add cost | clamp tok/s | clamp cost "
          "| TL generate tok/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['card']} | {r['dtype']} | {r['batch']} | {r['prompt_tokens']} | {r['new_tokens']} | "
              f"{r['tokens_per_s_none']} | {r['tokens_per_s_add']} | {r['add_cost_pct']:+.1f}% | "
              f"{r['tokens_per_s_clamp']} | {r['clamp_cost_pct']:+.1f}% | {r['tokens_per_s_tl_generate']} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
