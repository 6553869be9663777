"""A rehearsal at the real model's scale: every stage of the `deepseek-r1-distill-qwen-1.5b` profile and the
app, on a stand-in with the real shapes, measured; then what the real budget costs on one H100.

    python benchmarks/full_scale_rehearsal.py --out-json /tmp/rehearsal.json   # real shapes (docs/benchmarks.md)
    python benchmarks/full_scale_rehearsal.py --tiny --no-browser               # tiny shapes: a smoke test

What it builds, in a temporary folder (`--keep` keeps it):

- a Hugging Face cache holding `deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B`: a `Qwen2ForCausalLM` with the
  real config (`benchmarks/full_shapes.REAL_QWEN2`: 28 layers, d_model 1536, 12 heads, 2 KV heads, d_mlp
  8960, 151,936 embedding rows) and random bfloat16 weights, and a tokenizer laid out like the real one:
  a byte-level BPE trained on synthetic traces (`explorer.demo_lm.train_tokenizer`), padded with unused
  entries to 151,643 ids, then the real added tokens at the real ids (EOS 151643, `<｜User｜>`,
  `<｜Assistant｜>`, BOS 151646, `<|EOT|>`, `<think>` 151648, `</think>` 151649, ... up to 151664). That
  is 151,665 tokens for 151,936 embedding rows, as in the real model: the rows past the tokenizer are
  padding, and a random model does sample their ids;
- a corpus in OpenR1-Math-220k's layout (`problem`, `generations`, ... written by `datasets`'
  `save_to_disk`) whose generations run the reasoning of several synthetic traces together, up to 6,000
  tokens, so the lexicon labels their phrases. One row's generations are chosen to be held out of SAE
  training (`explorer.sae_training.is_heldout`), so the SAE report has tokens to read.

Then each stage runs as `python -m precompute ...` in its own process, offline (HF_HOME at the stand-in
cache, HF_HUB_OFFLINE=1), scaled down with the commands' own flags (`STAGE_FLAGS`): `corpus`,
`train-sae` (3 steps of 2,048 tokens at 24,576 features after a norm estimate of 1 batch; sae_lens fills
its 32 x 512-token buffer first, 16,384 tokens, which serves exactly these 4 batches), `sae-report`,
`index` (8,192 tokens, top 4) and `steer` (2 corpus prompts, baseline and +8, 8 new tokens). Last, the
app is served on the run (`streamlit run app.py`) and Chromium opens every page and two deep links (a
trace, a feature card), failing on any Streamlit exception (`tests/browser/streamlit_browser.py`).

What is measured, per stage:
- wall time, from the parent, process start to exit;
- peak RSS: a wrapper (`STAGE_WRAPPER`) runs `precompute.cli.main` inside the stage's process and, on
  the way out, writes the process's VmHWM (/proc/self/status: the high-water mark of its resident set,
  kept by the kernel for the address space the stage runs in). Two easier figures are wrong here. The
  parent's `getrusage(RUSAGE_CHILDREN).ru_maxrss` is the largest child waited for so far, so a stage
  after a larger one reports the larger one's peak. The child's own `ru_maxrss` (RUSAGE_SELF) starts at
  the parent's peak: Linux folds the resident high-water mark of the address space that `exec` replaces
  (the forked parent's) into it, so after this script has built the stand-in (3.6 GB of weights) even
  the corpus stage read 3.7 GiB. No stage starts a process of its own. The app's peak is its server
  process's VmHWM, read before the server stops;
- tokens: a global forward hook in the wrapper counts the tokens entering the model's embedding (every
  forward, stopped early or not, each generation step included) and leaving its unembedding (the full
  forwards: CE loss, generation), and when the first forward started (about the model's load). Tokens/s
  is embedding tokens over the wall time, and over the time after the first forward.

The extrapolation prices the profile's real budget in FLOPs per token (2 x parameters used per token, plus
attention over the context) at an assumed sustained H100 throughput, printing the arithmetic. It is a
floor: the index's accumulators, sae_lens's buffer and Python overheads are not FLOPs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.full_shapes import REAL_QWEN2  # noqa: E402
from benchmarks.model_load_memory import build_stand_in  # noqa: E402
from tests.hub_fixtures import REAL_REPO_ID, hub_env  # noqa: E402

PROFILE = "deepseek-r1-distill-qwen-1.5b"
RUN_NAME = "r1-rehearsal"
REAL_FIRST_ADDED_ID = 151_643
# The real tokenizer's added tokens from id 151643 on, in order, with their `special` flags.
REAL_ADDED_TOKENS = (
    ("<｜end▁of▁sentence｜>", True), ("<｜User｜>", False), ("<｜Assistant｜>", False),
    ("<｜begin▁of▁sentence｜>", True), ("<|EOT|>", True), ("<think>", False), ("</think>", False),
    ("<|quad_start|>", True), ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True),
    ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False),
    ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
)


class Shapes(NamedTuple):
    """The stand-in's sizes."""

    config: dict
    """Qwen2 config.json fields."""
    first_added_id: int
    """The tokenizer's first added token (EOS); the BPE's ids run below it."""
    bpe_entries: int
    """BPE entries trained on the synthetic traces; the rest up to `first_added_id` are unused."""
    generation_tokens: tuple[int, ...]
    """Token lengths of the corpus's generations, two per row, cycled."""
    n_rows: int
    index_tokens: int
    """`index --tokens`: at 24,576 features an untrained SAE fires on a third of them, and the index's
    accumulators then cost more than the forward (docs/benchmarks.md)."""


REAL = Shapes(REAL_QWEN2, REAL_FIRST_ADDED_ID, 4096, (6000, 300, 2500, 600, 1200, 3500, 400, 900), 16, 8192)
TINY = Shapes(
    {**REAL_QWEN2, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
     "num_key_value_heads": 2, "vocab_size": 640},
    600, 512, (3000, 300, 2500, 600, 1200, 400), 8, 4096,
)
HELDOUT_ROW_TOKENS = (2500, 1200)
"""The generations of the held-out row: enough for the report's `--eval-tokens` and `--sparsity-tokens`."""

SAE_FLAGS = ["--sae-steps", "3", "--norm-batches", "1", "--eval-tokens", "1024", "--sparsity-tokens", "2048"]
"""`train-sae`'s scale-down; `sae-report` is given its report settings, and `index` none: it uses the SAE
`train-sae` trained, as it was trained."""
INDEX_FLAGS = ["--top-k", "4", "--batch-size", "1"]
"""Top 4: a window holds at most one example of a feature, and 8,192 tokens make 5 windows here. One window
per batch: windows are batched by length and every batch is padded to `--batch-size` rows, so on a corpus
this small most batches would be one window and padding (2.5x the tokens at 4)."""
STEER_FLAGS = ["--coefs=8", "--from-corpus", "2", "--n-samples", "1", "--max-new-tokens", "8"]
INJECT_FLAGS = ["--candidates", "2", "--windows", "4", "--window-tokens", "16", "--strategies", "prepend,bigram_before"]
"""The token-injection test at a small N: the top 2 by each ranking score, 4 windows of 16 tokens, 2 strategies."""
STAGE_TIMEOUT_S = 40 * 60
PAGE_TIMEOUT_MS = 15 * 60 * 1000
"""Live loads the real-shaped model inside the server on its first visit: minutes on 2 cores."""

STAGE_WRAPPER = r"""
import json, sys, time
started = time.perf_counter()
from torch.nn.modules.module import register_module_forward_hook
counts = {"embed_tokens": 0, "unembed_tokens": 0, "first_forward_s": None}
def count(module, args, output):
    kind = type(module).__name__
    if kind == "Embed":
        counts["embed_tokens"] += args[0].numel()
        if counts["first_forward_s"] is None:
            counts["first_forward_s"] = time.perf_counter() - started
    elif kind == "Unembed":
        counts["unembed_tokens"] += args[0].shape[:-1].numel()
register_module_forward_hook(count)
from precompute.cli import main
rc = 1
try:
    rc = main(sys.argv[2:])
finally:
    from benchmarks.full_scale_rehearsal import vm_hwm_gib
    with open(sys.argv[1], "w") as f:
        json.dump({**counts, "rc": rc, "peak_rss_gib": vm_hwm_gib("self")}, f)
"""


class StageResult(NamedTuple):
    stage: str
    rc: int
    wall_s: float
    peak_rss_gib: float | None
    embed_tokens: int
    """Tokens that entered the model's embedding."""
    unembed_tokens: int
    """Tokens that left its unembedding (full forwards)."""
    first_forward_s: float | None
    """Seconds from the process's start to its first forward: about the model's load."""
    note: str = ""


# --- the stand-in ---------------------------------------------------------------------------------


def build_tokenizer(texts: list[str], shapes: Shapes):
    """A byte-level BPE trained on `texts`, padded with unused entries up to `shapes.first_added_id`, then the
    real added tokens at the real ids (module docstring), wrapped as the demo's tokenizer is."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from explorer.demo_lm import train_tokenizer

    trained = train_tokenizer(texts, shapes.bpe_entries)
    data = json.loads(trained.backend_tokenizer.to_str())
    vocab = data["model"]["vocab"]  # the BPE's entries only: the added tokens are listed apart
    n_trained = len(vocab)
    vocab.update({f"<|unused_{i}|>": i for i in range(n_trained, shapes.first_added_id)})
    data["added_tokens"] = [
        {"id": shapes.first_added_id + i, "content": content, "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False, "special": special}
        for i, (content, special) in enumerate(REAL_ADDED_TOKENS)
    ]
    bos = trained.bos_token
    data["post_processor"]["special_tokens"][bos]["ids"] = [shapes.first_added_id + 3]
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)), bos_token=bos, eos_token=trained.eos_token,
        pad_token=trained.pad_token, clean_up_tokenization_spaces=False, model_max_length=16_384,
    )


def build_hub_cache(hf_home: Path, shapes: Shapes, n_layers: int, tokenizer) -> Path:
    config = {**shapes.config, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    assert len(tokenizer) <= config["vocab_size"], (len(tokenizer), config["vocab_size"])
    return build_stand_in(hf_home, n_layers, config=config, tokenizer=tokenizer)


# --- the corpus -----------------------------------------------------------------------------------


def reasoning_of(text: str) -> str:
    """A synthetic trace's reasoning: what lies between `<think>\\n` and `\\n</think>`."""
    return text.split("<think>\n", 1)[1].split("\n</think>", 1)[0]


def write_openr1_corpus(folder: Path, shapes: Shapes, tokenizer) -> tuple[int, str, str]:
    """OpenR1-Math-220k-shaped rows saved with `save_to_disk`; returns the corpus's tokens, and a long
    generation's doc id and first line (for the deep link)."""
    from datasets import Dataset

    from explorer.sae_training import is_heldout
    from explorer.synthetic import generate_traces

    traces = iter(generate_traces(20_000, seed=7))
    rows, total = [], 0
    uuids = (f"{i:08x}-0000-4000-8000-{i * 7919:012x}" for i in range(10**6))
    for row in range(shapes.n_rows):
        lengths = HELDOUT_ROW_TOKENS if row == 1 else [
            shapes.generation_tokens[(2 * row + g) % len(shapes.generation_tokens)] for g in range(2)
        ]
        uuid = next(uuids)
        while {is_heldout(f"{uuid}-g{g}") for g in range(2)} != {row == 1}:  # only row 1 is held out
            uuid = next(uuids)
        first = next(traces)
        generations = []
        for n_tokens in lengths:
            parts, count = [], 0
            while count < n_tokens:
                part = reasoning_of((first if not parts and not generations else next(traces)).record.text)
                parts.append(part)
                count += len(tokenizer(part, add_special_tokens=False)["input_ids"])
            tail = first.record.text.split("\n</think>", 1)[1]
            generations.append("<think>\n" + "\n".join(parts) + "\n</think>" + tail)
            total += count
        meta = first.record.metadata
        rows.append({
            "problem": meta["problem_text"], "solution": "", "answer": meta["ground_truth"],
            "problem_type": meta["problem_type"], "question_type": "math-word-problem", "source": "rehearsal",
            "uuid": uuid, "is_reasoning_complete": [True] * len(generations), "generations": generations,
            "correctness_math_verify": [True] * len(generations), "finish_reasons": ["stop"] * len(generations),
        })
    Dataset.from_list(rows).save_to_disk(str(folder))
    longest = max(range(2), key=lambda g: len(rows[0]["generations"][g]))
    first_line = rows[0]["generations"][longest].split("\n")[1]
    return total, f"{rows[0]['uuid']}-g{longest}", first_line


# --- the stages -----------------------------------------------------------------------------------


def run_stage(stage: str, argv: list[str], env: dict[str, str], work: Path) -> StageResult:
    """`python -m precompute <argv>` in the wrapper; its output goes to `work/logs/<stage>.log`."""
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    log, result_path = logs / f"{stage}.log", logs / f"{stage}.json"
    print(f"  {stage}: python -m precompute {' '.join(argv)}  (log: {log})", flush=True)
    started = time.perf_counter()
    with open(log, "w") as out:
        try:
            rc = subprocess.run([sys.executable, "-c", STAGE_WRAPPER, str(result_path), *argv], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT, timeout=STAGE_TIMEOUT_S).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    wall = time.perf_counter() - started
    measured = json.loads(result_path.read_text()) if result_path.is_file() else {}
    note = "" if rc == 0 else "FAILED: " + " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
    if rc < 0 or rc == 137:
        note = f"FAILED: killed by signal {-rc if rc < 0 else 9} (out of memory?)"
    return StageResult(stage, rc, wall, measured.get("peak_rss_gib"), measured.get("embed_tokens", 0),
                       measured.get("unembed_tokens", 0), measured.get("first_forward_s"), note)


def stage_commands(dataset: Path, run_dir: Path, hook: str | None, index_tokens: int) -> dict[str, list[str]]:
    common = ["--profile", PROFILE, "--dataset", str(dataset), "--out", str(run_dir)]
    sae = SAE_FLAGS + (["--hook", hook] if hook else [])
    return {
        "corpus": ["corpus", *common],
        "train-sae": ["train-sae", *common, *sae],
        "sae-report": ["sae-report", *common, *SAE_FLAGS[4:]],
        "index": ["index", *common, *(["--hook", hook] if hook else []), "--tokens", str(index_tokens), *INDEX_FLAGS],
    }


def index_note(run_dir: Path) -> tuple[int, str]:
    """The tokens the index read, and what it says of its own time."""
    from explorer.feature_db import read_index_runs
    from explorer.runs import database_path

    run = read_index_runs(database_path(run_dir)).iloc[0]
    return int(run["n_tokens"]), (f"{run['n_tokens']:,} tokens in {run['n_windows']} windows; its pass "
                                  f"{run['tokens_per_second']:,.0f} tok/s, stage {run['seconds']:.0f} s by its clock")


def top_candidate(run_dir: Path, sae_id: str) -> int:
    from explorer.feature_db import read_candidates
    from explorer.runs import database_path

    return int(read_candidates(database_path(run_dir), sae_id, limit=1)["feature_id"][0])


# --- the app --------------------------------------------------------------------------------------


class PageVisit(NamedTuple):
    page: str
    seconds: float
    error: str = ""


def visit_pages(runs_dir: Path, env: dict[str, str], pages: list[tuple[str, str, str]], shots: Path):
    """Serve the app on `runs_dir` and open each (name, path, expected text) in Chromium; returns the
    visits and the server's peak RSS (GiB)."""
    from tests.browser.streamlit_browser import chromium_browser, open_page, serve_app_process

    visits, peak = [], None
    shots.mkdir(parents=True, exist_ok=True)
    with serve_app_process(runs_dir, env) as (url, server), chromium_browser() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        for name, path, expected in pages:
            started = time.perf_counter()
            try:
                open_page(page, url + path, expected, timeout_ms=PAGE_TIMEOUT_MS)
                error = ""
            except Exception as err:  # noqa: BLE001 - every page is visited; failures are reported together
                error = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            page.screenshot(path=str(shots / f"{re.sub(r'[^a-z]+', '-', name.lower())}.png"), full_page=True)
            visits.append(PageVisit(name, time.perf_counter() - started, error))
            print(f"  {name:<18} {visits[-1].seconds:6.1f} s  {error or 'ok'}", flush=True)
        peak = vm_hwm_gib(server.pid)
    return visits, peak


def vm_hwm_gib(pid: int | str) -> float | None:
    """A live process's (or "self"'s) peak resident set (VmHWM), in GiB."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    return int(match.group(1)) / 2**20 if match else None


# --- the report -----------------------------------------------------------------------------------


def print_table(results: list[StageResult]) -> None:
    print(f"\n{'stage':<11} {'rc':>3} {'wall s':>8} {'peak RSS GiB':>12} {'LM tokens':>10} {'full fwd':>9} "
          f"{'1st fwd s':>9} {'tok/s':>7} {'tok/s after 1st fwd':>19}")
    for r in results:
        rate = r.embed_tokens / r.wall_s if r.wall_s else 0.0
        after = r.wall_s - (r.first_forward_s or 0.0)
        rate_after = r.embed_tokens / after if r.first_forward_s is not None and after > 0 else 0.0
        peak = f"{r.peak_rss_gib:.2f}" if r.peak_rss_gib is not None else "-"
        first = f"{r.first_forward_s:.1f}" if r.first_forward_s is not None else "-"
        print(f"{r.stage:<11} {r.rc:>3} {r.wall_s:>8.1f} {peak:>12} {r.embed_tokens:>10,} {r.unembed_tokens:>9,} "
              f"{first:>9} {rate:>7.1f} {rate_after:>19.1f}  {r.note}")


class Throughput(NamedTuple):
    name: str
    flops_per_s: float
    how: str


H100 = (
    Throughput("bf16", 0.40 * 989e12, "40% of the H100 SXM's 989 TFLOP/s dense bf16 (`--dtype bfloat16`)"),
    Throughput("tf32", 0.40 * 495e12, "40% of its 495 TFLOP/s dense TF32 (float32, the profiles' default: "
               "`load_model` lets float32 matmuls use TF32 on CUDA)"),
)
OPENR1_INDEX_TOKENS = 300_000_000
"""Assumed tokens of OpenR1-Math-220k's generations, for a profile that indexes the whole corpus (0)."""
INJECT_DEFAULTS = (6 * 64, 8, 64, 64)
"""`inject` at its defaults, at most: 64 candidates by each of the 6 ranking scores (their union, no
overlap assumed), 8 strategies, M = 64 windows of L = 64 tokens."""
STEER_EXPERIMENT = (60, 4, 5, 256)
"""The demo's steering experiment (docs/results.md): 60 corpus prompts x 4 samples x (baseline + 4
coefficients) x 256 tokens."""


def extrapolate(config: dict) -> list[tuple[str, float]]:
    """Print the real budget's FLOPs per stage and its time at each `H100` throughput; return (stage, FLOPs)."""
    from explorer.config import get_profile

    profile = get_profile(PROFILE)
    d, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    heads, kv_heads, d_mlp = config["num_attention_heads"], config["num_key_value_heads"], config["intermediate_size"]
    d_head = d // heads
    hook_blocks = int(profile.hook_name.split(".")[1]) + 1  # the forward stops after the hook's block
    d_sae = d * profile.sae.expansion_factor
    attention_weights = 2 * d * heads * d_head + 2 * d * kv_heads * d_head  # Q and O; K and V (grouped)
    block_weights = attention_weights + 3 * d * d_mlp  # + gate, up, down

    def forward(n_blocks: int, n_ctx: int, unembed: bool) -> float:
        """FLOPs per token: 2 x weights per block, attention over n_ctx / 2 positions on average."""
        return n_blocks * (2 * block_weights + 2 * heads * d_head * n_ctx) + (2 * d * vocab if unembed else 0)

    encoder = 2 * d * d_sae
    sae_train = 3 * 2 * encoder  # encoder and decoder, forward and backward (backward = 2 x forward)
    ctx_sae, ctx_index = profile.sae.context_size, profile.n_ctx
    to_hook, to_hook_index = forward(hook_blocks, ctx_sae, False), forward(hook_blocks, ctx_index, False)
    full = forward(layers, ctx_sae, True)
    report, recipe = profile.report, profile.sae
    norm_tokens = recipe.n_batches_for_norm_estimate * recipe.train_batch_size_tokens
    index_tokens = profile.index.n_tokens or OPENR1_INDEX_TOKENS
    assumed = "" if profile.index.n_tokens else " (assumed: OpenR1-Math-220k; the profile indexes the whole corpus)"
    n_prompts, n_samples, n_conditions, n_new = STEER_EXPERIMENT
    steer_tokens = n_prompts * n_samples * n_conditions * n_new
    n_candidates, n_strategies, n_windows, n_window = INJECT_DEFAULTS
    inject_tokens = (2 * n_windows + n_candidates * n_strategies * n_windows * 2) * n_window
    report_flops = report.n_tokens * (3 * full + 2 * encoder) + report.n_sparsity_tokens * (to_hook + encoder)
    G = 1e9
    print(f"\nExtrapolation to the real budget ({PROFILE}'s defaults): FLOPs per token = 2 x weights used + "
          "attention")
    print(f"  per block: 2 x {block_weights:,} weights (attention {attention_weights:,}, MLP {3 * d * d_mlp:,}) "
          f"= {2 * block_weights / G:.4f} GFLOP, + attention 2 x {heads} x {d_head} x n_ctx")
    print(f"  forward to blocks.{hook_blocks - 1}: {hook_blocks} blocks = {to_hook / G:.3f} GFLOP at n_ctx {ctx_sae}, "
          f"{to_hook_index / G:.3f} at n_ctx {ctx_index}")
    print(f"  full forward (n_ctx {ctx_sae}): {layers} blocks + unembedding 2 x {d} x {vocab:,} = {full / G:.3f} GFLOP")
    print(f"  SAE encoder 2 x {d} x {d_sae:,} = {encoder / G:.4f} GFLOP; SAE training (encoder + decoder, "
          f"forward + backward) 3 x 2 x that = {sae_train / G:.4f} GFLOP")
    stages = [
        ("train-sae", recipe.training_tokens * (to_hook + sae_train) + norm_tokens * to_hook + report_flops,
         f"{recipe.training_tokens:,} x ({to_hook / G:.3f} + {sae_train / G:.3f}) + norm estimate "
         f"{norm_tokens:,} x {to_hook / G:.3f} + the report (below)"),
        ("sae-report", report_flops,
         f"CE {report.n_tokens:,} x (3 x {full / G:.3f} + 2 x {encoder / G:.4f}) + sparsity "
         f"{report.n_sparsity_tokens:,} x ({to_hook / G:.3f} + {encoder / G:.4f})"),
        ("index", index_tokens * (to_hook_index + encoder),
         f"{index_tokens:,} tokens{assumed} x one pass ({to_hook_index / G:.3f} + {encoder / G:.4f}); the "
         "accumulators and the kept contexts are not FLOPs"),
        ("steer", steer_tokens * full,
         f"{n_prompts} prompts x {n_samples} samples x {n_conditions} conditions x {n_new} tokens = "
         f"{steer_tokens:,} x {full / G:.3f} (KV cache; per-step overhead not modelled)"),
        ("inject", inject_tokens * (forward(hook_blocks, n_window, False) + encoder),
         f"(2 x {n_windows} + {n_candidates} candidates x {n_strategies} strategies x {n_windows} x 2) windows x "
         f"{n_window} tokens = {inject_tokens:,} x ({forward(hook_blocks, n_window, False) / G:.3f} + "
         f"{encoder / G:.4f})"),
    ]
    header = "  ".join(f"{t.name + ' h:m:s':>12}" for t in H100)
    print(f"\n{'stage':<11} {'PFLOP':>9}  {header}  arithmetic")
    for name, flops, how in stages:
        times = "  ".join(f"{hms(flops / t.flops_per_s):>12}" for t in H100)
        print(f"{name:<11} {flops / 1e15:>9.2f}  {times}  {how}")
    total = sum(f for _, f, _ in stages)
    print(f"{'total':<11} {total / 1e15:>9.2f}  " + "  ".join(f"{hms(total / t.flops_per_s):>12}" for t in H100))
    for t in H100:
        print(f"  {t.name}: {t.flops_per_s / 1e12:.1f} TFLOP/s sustained = {t.how}")
    return [(name, flops) for name, flops, _ in stages]


def hms(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# --- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=28, help="stand-in layers (the real model has 28)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (2 layers, d_model 64, 1,024 features)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (cache, run, logs, screenshots)")
    parser.add_argument("--no-browser", action="store_true", help="skip serving the app and visiting its pages")
    parser.add_argument("--out-json", type=Path, help="write the measured table (and the extrapolation) here")
    args = parser.parse_args(argv)
    shapes = TINY if args.tiny else REAL
    n_layers = shapes.config["num_hidden_layers"] if args.tiny else args.layers
    hook_layer = min(21, n_layers - 1)
    hook = None if hook_layer == 21 else f"blocks.{hook_layer}.hook_mlp_out"

    work = Path(tempfile.mkdtemp(prefix="rehearsal-"))
    try:
        return rehearse(work, shapes, n_layers, hook, args)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def rehearse(work: Path, shapes: Shapes, n_layers: int, hook: str | None, args: argparse.Namespace) -> int:
    from explorer.synthetic import generate_traces

    hf_home, dataset, runs = work / "hf", work / "openr1-style", work / "runs"
    run_dir = runs / RUN_NAME
    started = time.perf_counter()
    texts = [t.record.text for t in generate_traces(4000, seed=3)]
    tokenizer = build_tokenizer(texts, shapes)
    build_hub_cache(hf_home, shapes, n_layers, tokenizer)
    print(f"stand-in {REAL_REPO_ID}: {n_layers} layers, d_model {shapes.config['hidden_size']}, "
          f"{shapes.config['vocab_size']:,} embedding rows, tokenizer of {len(tokenizer):,} (BOS "
          f"{tokenizer.bos_token_id}, EOS {tokenizer.eos_token_id}), built in {time.perf_counter() - started:.0f} s",
          flush=True)
    corpus_tokens, deep_doc, deep_line = write_openr1_corpus(dataset, shapes, tokenizer)
    print(f"corpus: {shapes.n_rows} OpenR1-style rows, {2 * shapes.n_rows} generations, {corpus_tokens:,} tokens",
          flush=True)

    env = hub_env({"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                   "EXPLORER_RUNS_DIR": str(runs)})
    results: list[StageResult] = []
    for stage, argv in stage_commands(dataset, run_dir, hook, shapes.index_tokens).items():
        results.append(run_stage(stage, argv, env, work))
        if results[-1].rc != 0:
            break
    if results[0].rc == 0:  # the corpus stage reads every token but runs no model: count them
        results[0] = results[0]._replace(embed_tokens=corpus_tokens, note="tokens: the corpus's, labelled")
    sae_id = feature = index_tokens = None
    if all(r.rc == 0 for r in results) and len(results) == 4:
        index_tokens, note = index_note(run_dir)
        results[3] = results[3]._replace(note=note)
        sae_id = sorted(p.name for p in (run_dir / "saes").iterdir())[0]
        feature = top_candidate(run_dir, sae_id)
        steer = ["steer", "--out", str(run_dir), "--sae", sae_id, "--features", str(feature)]  # the run's profile
        results.append(run_stage("steer", steer + STEER_FLAGS, env, work))
        if results[-1].rc == 0:
            inject = ["inject", "--out", str(run_dir), "--sae", sae_id]  # the run's profile
            results.append(run_stage("inject", inject + INJECT_FLAGS, env, work))
    print_table(results)
    ok = len(results) == 6 and all(r.rc == 0 for r in results)

    visits, server_peak = [], None
    if ok and not args.no_browser:
        print("\napp: every page in Chromium", flush=True)
        q = f"?run={RUN_NAME}"
        pages = [
            ("Home", f"/{q}", "Feature index"),
            ("Corpus", f"/Corpus{q}", "Only traces with backtracking"),
            ("Corpus deep link", f"/Corpus{q}&doc={deep_doc}", deep_line[:40]),
            ("Features", f"/Features{q}", re.compile("the top candidate|Type a feature id")),
            ("Feature card", f"/Features{q}&sae={sae_id}&feature={feature}", "Backtracking evidence"),
            ("Candidates", f"/Candidates{q}", "Backtracking candidates"),
            ("Live", f"/Live{q}", re.compile("Top features over the text|No feature fires on this text")),
            ("Steering", f"/Steering{q}&sae={sae_id}&feature={feature}", f"Stored results for feature {feature}"),
        ]
        visits, server_peak = visit_pages(runs, env, pages, work / "screenshots")
        print(f"  app server peak RSS: {server_peak:.2f} GiB" if server_peak is not None else "", flush=True)
        ok = all(not v.error for v in visits)

    flops = extrapolate(REAL_QWEN2)
    if args.out_json:
        args.out_json.write_text(json.dumps({
            "shapes": "tiny" if args.tiny else "real", "layers": n_layers, "sae_id": sae_id, "feature": feature,
            "corpus_tokens": corpus_tokens, "index_tokens": index_tokens, "stages": [r._asdict() for r in results],
            "pages": [v._asdict() for v in visits], "app_peak_rss_gib": server_peak,
            "extrapolation": {name: {"flops": f, **{f"{t.name}_s": f / t.flops_per_s for t in H100}}
                              for name, f in flops},
            "throughputs": {t.name: {"flops_per_s": t.flops_per_s, "how": t.how} for t in H100},
        }, indent=2) + "\n")
    print(f"\nrehearsal {'passed' if ok else 'FAILED'} in {time.perf_counter() - started:.0f} s", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
