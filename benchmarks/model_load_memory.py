"""Peak host memory and time of loading the real model's shapes, and of one forward to its SAE hook.

A stand-in of DeepSeek-R1-Distill-Qwen-1.5B (its exact Qwen2 config, random bfloat16 weights, a small
tokenizer with the real special tokens) is saved under the real hub id in a temporary Hugging Face
cache. Each load then runs in a fresh interpreter, offline, as `explorer.model_loading.load_model`
does for every stage and the app, and prints its peak RSS (ru_maxrss), load time and a 512-token
forward stopped after `blocks.21`. `--baseline` also times transformer-lens's own `from_pretrained`
(what the loader did before it streamed weights); at 28 layers that needs more than a 24 GiB host
(figures: docs/benchmarks.md).

    python benchmarks/model_load_memory.py                  # 28 layers: minutes on 2 cores
    python benchmarks/model_load_memory.py --layers 6 --baseline
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.full_shapes import REAL_QWEN2  # noqa: E402
from tests.hub_fixtures import REAL_REPO_ID, hub_env, hub_snapshot_dir, write_real_tokenizer_config  # noqa: E402

LOAD = r"""
import json, resource, sys, time, torch
route, dtype, layer = sys.argv[1], sys.argv[2], int(sys.argv[3])
started = time.perf_counter()
if route == "streamed":
    from explorer.model_loading import load_model
    model = load_model(sys.argv[4], device="cpu", dtype=dtype, n_ctx=2048)
else:
    import explorer.model_loading as ml
    from sae_lens import HookedSAETransformer
    source = ml.resolve_model_source(sys.argv[4])
    ml._register_official_name(source.name)
    model = HookedSAETransformer.from_pretrained(
        source.name, hf_model=ml._load_hf_model(source, getattr(torch, dtype)),
        tokenizer=ml._load_tokenizer(source.directory), device="cpu", dtype=getattr(torch, dtype), n_ctx=2048,
        default_prepend_bos=True, local_files_only=True)
load_s = time.perf_counter() - started
tokens = torch.randint(0, 1000, (1, 512))
started = time.perf_counter()
with torch.no_grad():
    model.run_with_cache(tokens, names_filter=[f"blocks.{layer}.hook_mlp_out"], stop_at_layer=layer + 1)
forward_s = time.perf_counter() - started
weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
print("RESULT " + json.dumps({"load_s": load_s, "forward_s": forward_s, "weights_gib": weights,
      "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def build_stand_in(hf_home: Path, n_layers: int, *, config: dict = REAL_QWEN2, tokenizer=None) -> Path:
    """`config` with `n_layers` layers and random bfloat16 weights, saved with `tokenizer` (default: a
    small BPE with the real special tokens) in a hub cache at `hf_home` under the real hub id; returns the
    snapshot folder."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from explorer.demo_lm import train_tokenizer

    snapshot = hub_snapshot_dir(hf_home)
    if tokenizer is None:
        tokenizer = train_tokenizer(["Wait, let me check: 3 + 4 = 7.", "<think>\nHmm.\n</think>"] * 50, 400)
    tokenizer.save_pretrained(snapshot)
    write_real_tokenizer_config(snapshot)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    try:
        Qwen2ForCausalLM(Qwen2Config(**{**config, "num_hidden_layers": n_layers})).save_pretrained(snapshot)
    finally:
        torch.set_default_dtype(torch.float32)
    return snapshot


def measure(hf_home: Path, route: str, dtype: str, layer: int) -> dict:
    done = subprocess.run([sys.executable, "-c", LOAD, route, dtype, str(layer), REAL_REPO_ID],
                          env=hub_env({"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}), capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    killed = done.returncode < 0 or done.returncode == 137
    return {"error": "killed (out of memory)" if killed else (done.stderr.strip().splitlines() or ["failed"])[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=28, help="stand-in layers (the real model has 28)")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--baseline", action="store_true", help="also time transformer-lens's from_pretrained")
    args = parser.parse_args()
    layer = min(21, args.layers - 1)
    with tempfile.TemporaryDirectory() as folder:
        hf_home = Path(folder)
        build_stand_in(hf_home, args.layers)
        routes = ["streamed", "from_pretrained"] if args.baseline else ["streamed"]
        print(f"stand-in: {args.layers} layers of the real widths, forward of 512 tokens to blocks.{layer}")
        print(f"{'route':<16} {'dtype':<9} {'weights GiB':>11} {'peak RSS GiB':>12} {'load s':>7} {'forward s':>9}")
        for dtype in args.dtypes.split(","):
            for route in routes:
                r = measure(hf_home, route, dtype, layer)
                if "error" in r:
                    print(f"{route:<16} {dtype:<9} {r['error']}")
                    continue
                print(f"{route:<16} {dtype:<9} {r['weights_gib']:>11.2f} {r['peak_gib']:>12.2f} "
                      f"{r['load_s']:>7.1f} {r['forward_s']:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
