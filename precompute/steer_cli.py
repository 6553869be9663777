"""`python -m precompute steer`: steer the run's model with SAE features and store what it does.

    python -m precompute steer --sae blocks.1.hook_mlp_out-standard-1024 --features 504 \\
        --coefs=-8,8 --from-corpus 30 --n-samples 4 --max-new-tokens 256

For each feature it generates the baseline and one condition per coefficient (`explorer.steering`),
prints a table of backtracking phrases per 1,000 generated tokens (mean +- standard error, bootstrap
95% CI of the paired difference to the baseline), and stores the result in the run's DuckDB file
(`explorer.steering_store`), where the Steering and candidates pages read it. An experiment already
stored with the same settings is skipped unless --force.

Prompts: `--prompts FILE` (.txt: one problem or prompt per line; .json: a list of strings; .jsonl: one
string or {"prompt": ...} / {"problem": ...} per line; a text without `<think>` is wrapped in the R1
template), or `--from-corpus N`: the prompts of N traces of the run's corpus, taken evenly across it: a
trace's text up to `<think>\\n`, or, where its text starts at `<think>` (OpenR1-Math-220k's generations),
its problem (`problem_text` or `problem`) in the R1 template.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from explorer import artifacts
from explorer.fault_points import checkpoint
from explorer.model_loading import load_run_model
from explorer.runs import database_path, list_sae_ids, read_corpus_prompts, sae_dir
from explorer.sae_loading import check_sae_fits_model, load_sae
from explorer.steering import (
    MAX_NEW_TOKENS_LIMIT,
    MAX_PROMPTS,
    MODES,
    SteeringConfig,
    SteeringInputError,
    SteeringResult,
    as_prompt,
    compute_steering,
    condition_name,
)
from explorer.steering_store import make_run_id, read_steering_runs, write_steering_result
from precompute.cli_common import UserError, add_run_args, add_subcommand, resolve_profile, resolve_run_dir
from precompute.stages import print_config

DEFAULT_N_SAMPLES = 4
DEFAULT_MAX_NEW_TOKENS = 256


def int_list(text: str) -> list[int]:
    """Comma-separated feature ids, for argparse."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated feature ids, e.g. 12,504 (got {text!r})") from None


def _float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. -8,8 (got {text!r})") from None


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `steer` command to `python -m precompute`'s subparsers."""
    parser = add_subcommand(
        subparsers, "steer", "generate with SAE features added or clamped, count backtracking phrases, store the results",
        __doc__,
    )
    add_run_args(parser)
    parser.set_defaults(profile=None)  # the run's own profile.json (`with_saved_profile`)
    next(a for a in parser._actions if a.dest == "profile").help = (
        "built-in profile or a saved profile.json (default: the run folder's profile.json, else demo)"
    )
    parser.add_argument("--sae", required=True, help="SAE id (a folder under <run>/saes/)")
    parser.add_argument("--features", required=True, type=int_list, help="feature ids, comma-separated")
    parser.add_argument(
        "--coefs", required=True, type=_float_list,
        help="coefficients, comma-separated; write --coefs=-8,8 when the first is negative",
    )
    parser.add_argument(
        "--mode", choices=MODES, default="add", help="add coef x decoder direction, or clamp the feature to coef"
    )
    prompts = parser.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompts", type=Path, help="file of problems or prompts (.txt, .json, .jsonl)")
    prompts.add_argument("--from-corpus", type=int, metavar="N", help="the prompts of N traces of the run's corpus")
    parser.add_argument(
        "--n-samples", type=int, default=DEFAULT_N_SAMPLES,
        help=f"samples per prompt and condition (default {DEFAULT_N_SAMPLES})",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
        help=f"tokens per sample at most (default {DEFAULT_MAX_NEW_TOKENS}, at most {MAX_NEW_TOKENS_LIMIT})",
    )
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; 0 = greedy (default 1)")
    parser.add_argument("--top-k", type=int, help="sample among the k most likely tokens only")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (the baseline uses the same seeds)")
    parser.add_argument("--steer-prompt", action="store_true", help="steer the prompt positions too")
    parser.add_argument("--batch-rows", type=int, default=32, help="rows generated together (default 32)")
    return parser


def read_prompt_file(path: Path) -> list[str]:
    """Prompts from a .txt (one per line), .json (list of strings) or .jsonl file, as generation prompts."""
    if not path.is_file():
        raise SteeringInputError(f"{path} does not exist.")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            entries = json.loads(text)
            if not isinstance(entries, list):
                raise SteeringInputError(f"{path} must hold a JSON list of strings.")
        elif path.suffix == ".jsonl":
            entries = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            entries = [line for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise SteeringInputError(f"{path} is not valid JSON: {err}") from None
    prompts = []
    for entry in entries:
        if isinstance(entry, dict):
            entry = entry.get("prompt") or entry.get("problem")
        if not isinstance(entry, str) or not entry.strip():
            raise SteeringInputError(f"{path}: every entry must be a non-empty string or have a 'prompt' or 'problem'.")
        prompts.append(as_prompt(entry))
    if not prompts:
        raise SteeringInputError(f"{path} holds no prompts.")
    return prompts


def corpus_prompts(run_dir: Path, n: int) -> list[str]:
    """The prompts of `n` traces spread evenly over the run's corpus, distinct prompts only
    (`explorer.runs.read_corpus_prompts`: a trace's text up to `<think>`, else its problem in the template)."""
    if n < 1:
        raise SteeringInputError("--from-corpus needs at least 1 trace.")
    prompts = read_corpus_prompts(run_dir)
    if not prompts:
        raise SteeringInputError(
            f"No trace of {run_dir}'s corpus gives a prompt: none has text before <think>, nor a problem "
            "(a `problem_text` or `problem` field)."
        )
    step = max(len(prompts) // n, 1)
    chosen = list(dict.fromkeys(prompts[::step]))[:n]
    return chosen


def format_result_table(result: SteeringResult) -> str:
    """The conditions of one result as a fixed-width table."""
    lines = [
        f"{'condition':>12} {'n':>5} {'rate/1k':>8} {'+-sem':>6} {'diff':>7} {'95% CI of diff':>17} "
        f"{'notebook':>8} {'length':>7} {'</think>':>8} {'EOS':>5}"
    ]
    for s in result.summaries:
        name = condition_name(result.config.mode, s.coef)
        d = s.rate_difference
        diff = "" if d is None else f"{d.mean:+7.2f}"
        ci = "" if d is None or math.isnan(d.ci_low) else f"[{d.ci_low:+6.2f}, {d.ci_high:+6.2f}]"
        sem = "" if math.isnan(s.rate.sem) else f"{s.rate.sem:6.2f}"
        lines.append(
            f"{name:>12} {s.rate.n:>5} {s.rate.mean:8.2f} {sem:>6} {diff:>7} {ci:>17} "
            f"{s.notebook_rate.mean:8.2f} {s.length.mean:7.1f} {s.think_close_share.mean:8.2f} {s.eos_share:5.2f}"
        )
    return "\n".join(lines)


def with_saved_profile(args: argparse.Namespace) -> argparse.Namespace:
    """Without --profile, steer runs the model the run was built with: the run folder's profile.json (a
    DeepSeek run has no `model/` folder for the demo profile to load), or the demo's when there is none."""
    if args.profile is None:
        saved = (args.out if args.out is not None else artifacts.default_run_dir("demo")) / artifacts.PROFILE_FILE
        args.profile = str(saved) if saved.is_file() else "demo"
    return args


def run(args: argparse.Namespace) -> None:
    """Run `steer` (raises `precompute.cli_common.UserError` or a user-facing library error on bad input)."""
    profile = resolve_profile(with_saved_profile(args))
    run_dir = resolve_run_dir(args, profile)
    known = list_sae_ids(run_dir)
    if args.sae not in known:
        raise UserError(f"{run_dir} has no SAE {args.sae!r} (it has: {', '.join(known) or 'none'}).")
    try:
        if args.prompts is not None:
            prompts, source = read_prompt_file(args.prompts), str(args.prompts)
        else:
            prompts, source = corpus_prompts(run_dir, args.from_corpus), f"corpus:{args.from_corpus}"
        if len(prompts) > MAX_PROMPTS:
            raise SteeringInputError(f"{len(prompts)} prompts is more than the {MAX_PROMPTS} allowed.")
        configs = [
            SteeringConfig(
                feature_id=f, mode=args.mode, coefs=tuple(args.coefs), n_samples=args.n_samples,
                max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, seed=args.seed,
                steer_prompt=args.steer_prompt, batch_rows=args.batch_rows,
            ).checked()
            for f in args.features
        ]
    except SteeringInputError as err:
        raise UserError(str(err)) from None

    db_path = database_path(run_dir)
    stored = {r.run_id for r in read_steering_runs(db_path, args.sae)} if db_path.is_file() else set()
    todo = [c for c in configs if args.force or make_run_id(args.sae, c, prompts) not in stored]
    print_config(
        "steer",
        {
            "run": str(run_dir), "sae": args.sae, "features": args.features, "mode": args.mode, "coefs": args.coefs,
            "prompts": f"{len(prompts)} from {source}", "n_samples": args.n_samples,
            "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_k": args.top_k,
            "seed": args.seed, "steer_prompt": args.steer_prompt, "dtype": profile.dtype,
        },
    )
    for skipped in configs:
        if skipped not in todo:
            print(f"feature {skipped.feature_id}: already stored with these settings (--force to rerun)", flush=True)
    if not todo:
        return
    model = load_run_model(run_dir, profile)
    loaded = load_sae(sae_dir(run_dir, args.sae), device=str(model.cfg.device), dtype=profile.dtype)
    hook_name = check_sae_fits_model(loaded.sae, model, loaded.hook_name, model_name=profile.model)
    for config in todo:
        started = time.time()
        bar = _ProgressLine(f"feature {config.feature_id}")
        try:
            result = compute_steering(model, loaded.sae, hook_name, prompts, config, progress=bar)
        except SteeringInputError as err:
            raise UserError(str(err)) from None
        finally:
            bar.close()
        checkpoint("steer:generated")
        run_id = write_steering_result(db_path, args.sae, result, prompt_source=source)
        size = f"{len(prompts)} prompts x {config.n_samples} samples, <= {result.max_new_tokens} new tokens"
        took = f"{result.n_generated_tokens:,} tokens in {time.time() - started:.0f} s on {result.device}"
        print(f"\nfeature {config.feature_id} ({config.mode}, {size}, {took}); phrases per 1,000 generated tokens:")
        print(format_result_table(result), flush=True)
        print(f"stored as run {run_id} in {db_path}", flush=True)


class _ProgressLine:
    """A one-line progress display on stderr (tqdm when available)."""

    def __init__(self, label: str):
        try:
            from tqdm import tqdm

            self._bar = tqdm(total=None, desc=label, unit="step", file=sys.stderr, leave=False)
        except ImportError:
            self._bar = None

    def __call__(self, progress) -> None:
        if self._bar is not None:
            self._bar.total = progress.steps_total
            self._bar.set_postfix_str(f"{progress.tokens_generated:,} tokens", refresh=False)
            self._bar.update(progress.steps_done - self._bar.n)  # redraws at most every 0.1 s

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
