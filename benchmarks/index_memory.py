"""Peak memory of the feature-index pass at two corpus sizes 4x apart. Goal: the same peak.

    python benchmarks/index_memory.py [--run runs/demo] [--tokens 25000]

Each size runs in a fresh process on the run's own model, SAE and corpus: it loads everything,
then runs the streaming pass (`explorer.feature_index.run_index_pass`) while a thread samples the
process's resident memory every 5 ms. Printed: the resident memory before the pass, its peak during
the pass, and the difference (on a GPU also `torch.cuda.max_memory_allocated`). The accumulators'
state is fixed by the number of features, and one batch's activations are the only thing of size
tokens x features, so the difference must not grow with the corpus.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def measure(run_dir: Path, n_tokens: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch

    from explorer.feature_index import limit_tokens, run_index_pass
    from precompute.index_stage import load_inputs
    from explorer.config import Profile

    profile = Profile.from_dict(json.loads((run_dir / "profile.json").read_text()))
    inputs = load_inputs(profile, run_dir, None, n_tokens)
    windows, _ = limit_tokens(inputs.windows, n_tokens)
    device = next(inputs.model.parameters()).device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = rss_bytes()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    result = run_index_pass(inputs.model, inputs.sae, inputs.hook_name, inputs.stop_at_layer, windows, inputs.config, progress=False)
    done.set()
    thread.join()
    out = {"tokens": result.n_tokens, "seconds": result.seconds, "rss_before": before, "rss_peak": peak[0]}
    if device.type == "cuda":
        out["gpu_peak"] = torch.cuda.max_memory_allocated()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "demo")
    parser.add_argument("--tokens", type=int, default=25_000, help="the smaller size; the larger is 4x")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.run, args.child)))
        return
    rows = []
    for n in (args.tokens, 4 * args.tokens):
        proc = subprocess.run(
            [sys.executable, __file__, "--run", str(args.run), "--child", str(n)],
            capture_output=True, text=True, check=True, cwd=ROOT,
        )
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    mib = 2**20
    for r in rows:
        extra = f", GPU peak {r['gpu_peak'] / mib:,.0f} MiB" if "gpu_peak" in r else ""
        print(f"{r['tokens']:>9,} tokens: pass {r['seconds']:.1f}s; RSS before {r['rss_before'] / mib:,.0f} MiB, "
              f"peak {r['rss_peak'] / mib:,.0f} MiB, pass adds {(r['rss_peak'] - r['rss_before']) / mib:,.1f} MiB{extra}")
    small, large = ((r["rss_peak"] - r["rss_before"]) for r in rows)
    print(f"peak added by the pass, 4x the tokens / 1x: {large / max(small, 1):.2f}")


if __name__ == "__main__":
    main()
