"""What every `python -m precompute` command shares: the run arguments (`--profile`, `--dataset`,
`--out`, `--force`, `--dtype`), the profile they name with the command line's overrides, the run
folder, and the error for a command line that cannot run as given.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from explorer import artifacts
from explorer.config import PROFILES, Profile, get_profile
from explorer.errors import ExplorerError


class UserError(ExplorerError):
    """A command line that cannot run as given; the message tells the user what to do."""


def add_subcommand(subparsers, name: str, help_line: str, description: str | None) -> argparse.ArgumentParser:
    """A command of `python -m precompute` whose `--help` shows its module docstring as written."""
    return subparsers.add_parser(
        name, help=help_line, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """The arguments that name the run: its profile, dataset, folder, and how to build it."""
    parser.add_argument(
        "--profile",
        default="demo",
        help=f"built-in profile ({', '.join(PROFILES)}) or a saved profile.json (default: demo)",
    )
    parser.add_argument(
        "--dataset",
        help="read traces from this file, folder or hub dataset id instead of the profile's corpus "
        "(notebook JSON, .jsonl, .parquet, a save_to_disk folder, or e.g. open-r1/OpenR1-Math-220k)",
    )
    parser.add_argument(
        "--out",
        "--run",
        dest="out",
        type=Path,
        help="run folder (default: runs/<profile>, or runs/<profile>-<dataset name> with --dataset)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if the output is up to date")
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16", "float16"),
        help="the model's dtype (and the SAE's at inference) wherever the command runs them "
        "(default: the profile's, float32; bfloat16 is about 2x faster on a GPU and half the memory)",
    )


def resolve_profile(args: argparse.Namespace) -> Profile:
    """The profile named by `--profile`, with the command line's overrides applied."""
    return apply_overrides(named_profile(args).with_dataset(args.dataset), args)


def named_profile(args: argparse.Namespace) -> Profile:
    """The profile `--profile` names, as it is."""
    try:
        return get_profile(args.profile)
    except ValueError as err:
        raise UserError(str(err)) from None


def apply_overrides(profile: Profile, args: argparse.Namespace) -> Profile:
    """`profile` with the settings the command line gives."""

    def given(name: str) -> int | None:
        return getattr(args, name, None)

    for flag in ("top_k", "eval_tokens", "sparsity_tokens", "sae_steps", "norm_batches"):
        if given(flag) is not None and given(flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1, not {given(flag)}")
    if given("tokens") is not None and given("tokens") < 0:
        raise UserError(f"--tokens must be 0 (the whole corpus) or a number of tokens, not {given('tokens')}")
    corpus = {field: given(field) for field in ("n_traces", "seed", "balanced") if given(field) is not None}
    report = {
        field: given(flag)
        for field, flag in (("n_tokens", "eval_tokens"), ("n_sparsity_tokens", "sparsity_tokens"))
        if given(flag) is not None
    }
    index = {field: given(flag) for field, flag in (("top_k", "top_k"), ("n_tokens", "tokens")) if given(flag) is not None}
    replace = dataclasses.replace
    profile = replace(
        profile, corpus=replace(profile.corpus, **corpus), report=replace(profile.report, **report),
        index=replace(profile.index, **index),
    )
    if given("dtype") is not None:
        profile = replace(profile, dtype=given("dtype"))
    if given("sae_steps") is not None:
        profile = replace(profile, sae=replace(profile.sae, training_steps=given("sae_steps")))
    if given("norm_batches") is not None:
        profile = replace(profile, sae=replace(profile.sae, n_batches_for_norm_estimate=given("norm_batches")))
    if given("steps") is not None and profile.demo_lm is not None:
        profile = replace(profile, demo_lm=replace(profile.demo_lm, steps=given("steps")))
    return profile


def resolve_run_dir(args: argparse.Namespace, profile: Profile) -> Path:
    if args.out is not None:
        return args.out
    if args.dataset:
        stem = Path(str(args.dataset).rstrip("/")).name.split(".")[0] or "dataset"
        return artifacts.DEFAULT_RUNS_DIR / f"{profile.name}-{stem}"
    return artifacts.default_run_dir(profile.name)
