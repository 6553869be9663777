"""How fast the Live page computes, server side: the model and SAE on a text the user typed.

    .venv/bin/python benchmarks/live_activations.py                # (a) the demo, 500 tokens, CPU
    .venv/bin/python benchmarks/live_activations.py --skip-page    # (a) without the AppTest page figure
    python benchmarks/live_activations.py --gpu                    # (b) real shapes, 2,048 tokens, CUDA
    .venv/bin/python benchmarks/live_activations.py --small        # (b) at tiny shapes: a CPU smoke test

Each figure is over `--runs` runs (default 20) after `--warmup` runs, p50 / p95 / max:

(a) The demo (runs/demo; `make demo-data` builds it), on the CPU, loaded as the app loads it (the
    run's model through `explorer.model_loading.load_model`, its SAE, `check_sae_fits_model`). A text
    of 500 tokens cut from the demo corpus's traces that backtrack.
    - compute: `compute_live_activations` + `compute_top_features` over the text (k=20) and at one
      token, which is what the page computes. Goal: < 1 s.
    - page: one AppTest rerun of app_pages/live.py with that text: the same, plus every render call and
      Streamlit's own work (no browser).
(b) `--gpu`: DeepSeek-R1-Distill-Qwen-1.5B's shapes with random weights (benchmarks/full_shapes.py:
    28 layers, d_model 1536, the hook blocks.21.hook_mlp_out) and a 24,576-feature SAE, the model in
    float32 as the app loads it (`--dtype bfloat16` to compare); a 2,048-token trace (BOS + 2,047 text
    tokens, the context the notebook used). The real tokenizer is not reachable offline: a byte-level
    BPE laid out like it (explorer.demo_lm.train_tokenizer) tokenises the text, so tokenising costs
    what a fast tokenizer costs. End to end server side: tokenise with offsets, label the phrases,
    forward to the hook, encode, copy the activations to the CPU, top features. Goal on an H100:
    < 100 ms. `--small` runs the same script at tiny shapes (2 layers, 1,024 features) on the CPU.

Put the printed figures, with the machine or card's name, in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from explorer.live import compute_live_activations, compute_top_features  # noqa: E402


def percentiles(seconds: list[float]) -> str:
    ms = np.asarray(seconds) * 1000
    return (f"p50 {np.percentile(ms, 50):7.1f} ms   p95 {np.percentile(ms, 95):7.1f} ms   max {ms.max():7.1f} ms"
            f"   (n={len(ms)})")


def text_of_n_tokens(tokenizer, texts, n_tokens: int) -> str:
    """The first `n_tokens` text tokens (special tokens not counted) of `texts` joined by blank lines,
    cut at a token boundary."""
    joined, pieces = "", iter(texts)
    special = set(tokenizer.all_special_ids)
    while True:
        encoding = tokenizer(joined, return_offsets_mapping=True)
        spans = [o for i, o in zip(encoding["input_ids"], encoding["offset_mapping"]) if i not in special]
        if len(spans) >= n_tokens:
            return joined[: spans[n_tokens - 1][1]]
        try:
            joined += ("\n\n" if joined else "") + next(pieces)
        except StopIteration:
            raise ValueError(f"the texts hold fewer than {n_tokens} tokens") from None


def time_live(model, sae, hook_name: str, text: str, runs: int, warmup: int, cuda: bool):
    """`runs` timings of what the Live page computes; returns (totals, locked model+SAE parts, live)."""
    totals, model_parts, tops = [], [], []
    live = None
    for i in range(warmup + runs):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        live = compute_live_activations(model, sae, hook_name, text)
        t1 = time.perf_counter()
        compute_top_features(live, k=20)
        compute_top_features(live, position=len(live.token_ids) // 2)
        t2 = time.perf_counter()
        if i >= warmup:
            totals.append(t2 - t0)
            model_parts.append(live.seconds)
            tops.append(t2 - t1)
    return totals, model_parts, tops, live


# --- (a) the demo -----------------------------------------------------------------------------------


def bench_demo(run_dir: Path, n_tokens: int, runs: int, warmup: int, page: bool) -> None:
    from explorer import artifacts
    from explorer.model_loading import load_model
    from explorer.runs import list_sae_ids, main_sae_id, model_source, read_documents, read_run_summary, sae_dir
    from explorer.sae_loading import check_sae_fits_model, load_sae

    if not (run_dir / artifacts.PROFILE_FILE).is_file() or not list_sae_ids(run_dir):
        print(f"(a) skipped: no run with an SAE at {run_dir} (`make demo-data` builds the demo)")
        return
    torch.set_grad_enabled(False)
    profile = read_run_summary(run_dir).profile
    sae_id = main_sae_id(run_dir)  # the SAE at the profile's hook, as the app opens
    t0 = time.perf_counter()
    model = load_model(model_source(run_dir, profile), device="cpu", n_ctx=profile.n_ctx)
    loaded = load_sae(sae_dir(run_dir, sae_id), device="cpu")
    hook_name = check_sae_fits_model(loaded.sae, model, loaded.hook_name or profile.hook_name)
    loaded_s = time.perf_counter() - t0
    documents = read_documents(run_dir, columns=["text", "has_backtracking"])
    documents = documents.sort_values("has_backtracking", ascending=False, kind="stable")["text"]  # traces that backtrack
    text = text_of_n_tokens(model.tokenizer, documents, n_tokens)

    totals, model_parts, tops, live = time_live(model, loaded.sae, hook_name, text, runs, warmup, cuda=False)
    print(f"(a) demo: {run_dir} · model {model.cfg.n_layers} layers, d_model {model.cfg.d_model} · SAE {sae_id} "
          f"({loaded.sae.cfg.d_sae:,} features) at {hook_name} · loaded in {loaded_s:.1f} s")
    print(f"    text: {len(live.token_ids) - 1} tokens + BOS ({len(text):,} characters), "
          f"{len(live.phrases)} labelled phrases · CPU, {torch.get_num_threads()} torch threads")
    print(f"    compute  live activations + top features (what the page computes): {percentiles(totals)}   goal < 1 s")
    print(f"      of which the model to the hook + SAE encode (under the model lock): {percentiles(model_parts)}")
    print(f"      of which the top features (over the text, at a token):              {percentiles(tops)}")
    if page:
        bench_page(run_dir, sae_id, text, max(5, runs // 2))


def bench_page(run_dir: Path, sae_id: str, text: str, runs: int) -> None:
    from streamlit.testing.v1 import AppTest

    os.environ["EXPLORER_RUNS_DIR"] = str(run_dir.parent)
    at = AppTest.from_file(str(REPO / "app_pages" / "live.py"), default_timeout=300)
    at.query_params["run"] = run_dir.name
    at.query_params["sae"] = sae_id
    at.run()  # warm-up: imports, st.cache_resource loads the model and SAE
    at.text_area(key="live_text").set_value(text).run()
    assert not at.exception, at.exception
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        at.run()
        times.append(time.perf_counter() - t0)
        assert not at.exception, at.exception
    shown = at.caption[0].value.split(" tokens")[0]
    print(f"    page     AppTest rerun of app_pages/live.py ({shown} tokens; compute + render):  {percentiles(times)}")


# --- (b) the real model's shapes ----------------------------------------------------------------------


def attach_synthetic_tokenizer(model, vocab_size: int) -> list[str]:
    """Give `model` a fast byte-level BPE laid out like the real one (trained on synthetic traces),
    as transformer-lens takes a tokenizer (it reloads it from its folder); returns the traces."""
    from transformers import AutoTokenizer

    from explorer.demo_lm import train_tokenizer
    from explorer.synthetic import generate_traces

    texts = [t.record.text for t in generate_traces(300)]
    with tempfile.TemporaryDirectory() as folder:
        train_tokenizer(texts, vocab_size, model_max_length=4096).save_pretrained(folder)
        model.set_tokenizer(AutoTokenizer.from_pretrained(folder), default_padding_side="right")
    return texts


def bench_shapes(small: bool, device: str, dtype_name: str, n_tokens: int, runs: int, warmup: int) -> None:
    from benchmarks.full_shapes import REAL, SMALL, build_model, build_sae, device_name
    from explorer.sae_loading import check_sae_fits_model

    shapes = SMALL if small else REAL
    dtype = getattr(torch, dtype_name)
    cuda = device.startswith("cuda")
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    model = build_model(shapes, device, dtype, n_ctx=n_tokens)
    sae = build_sae(model, shapes, device=device, dtype=torch.float32)
    texts = attach_synthetic_tokenizer(model, min(2048, model.cfg.d_vocab))
    hook_name = check_sae_fits_model(sae, model, shapes.hook_name)
    built_s = time.perf_counter() - t0
    text = text_of_n_tokens(model.tokenizer, texts * 20, n_tokens - 1)  # BOS + n_tokens - 1 text tokens

    totals, model_parts, tops, live = time_live(model, sae, hook_name, text, runs, warmup, cuda)
    label = "--small (tiny shapes)" if small else "real shapes"
    print(f"(b) {label}: device {device_name(device)} · model {shapes.config['num_hidden_layers']} layers, d_model "
          f"{model.cfg.d_model}, {dtype_name} · SAE {shapes.d_sae:,} features (float32) at {hook_name} · built in "
          f"{built_s:.1f} s")
    print(f"    text: {len(live.token_ids)} tokens with BOS ({len(text):,} characters); activations "
          f"{tuple(live.acts_TF.shape)} float32 = {live.acts_TF.numel() * 4 / 2**20:.0f} MiB copied to the CPU")
    goal = "   goal < 100 ms on an H100" if not small else ""
    print(f"    end to end  tokenise + label + model + SAE + copy + top features: {percentiles(totals)}{goal}")
    print(f"      of which the model to the hook + SAE encode + copy to the CPU:   {percentiles(model_parts)}")
    print(f"      of which the top features (over the text, at a token):          {percentiles(tops)}")
    if cuda:
        print(f"    peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "demo", help="the run for (a)")
    parser.add_argument("--tokens", type=int, default=None, help="text tokens in (a) (500) / tokens with BOS in (b) (2048)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--skip-page", action="store_true", help="(a) without the AppTest page figure")
    parser.add_argument("--gpu", action="store_true", help="(b) at the real model's shapes, on CUDA")
    parser.add_argument("--small", action="store_true", help="(b) at tiny shapes: a smoke test on the CPU")
    parser.add_argument("--device", default=None, help="(b) device (default: cuda when --gpu, else the CPU)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="(b) the model's dtype (the app loads models in float32)")
    args = parser.parse_args(argv)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPUs, load average {load} (other work inflates CPU figures); "
          f"python {sys.version.split()[0]}, torch {torch.__version__}", flush=True)
    if args.gpu or args.small:
        device = args.device or ("cuda" if args.gpu else "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            print("(b) needs a CUDA device: run it on a GPU machine, or `--small` on the CPU")
            return 2
        dtype = args.dtype if device.startswith("cuda") else "float32"
        bench_shapes(args.small, device, dtype, args.tokens or 2048, args.runs, args.warmup)
    else:
        bench_demo(args.run.resolve(), args.tokens or 500, args.runs, args.warmup, not args.skip_page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
