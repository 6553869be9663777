"""`python -m precompute`: the offline pipeline's command line.

    corpus      generate or import a corpus and label its backtracking phrases
    train-lm    train the demo model on the run's corpus (demo profiles)
    train-sae   train an SAE with sae_lens on the run's model and corpus
    sae-report  measure the run's SAEs on held-out tokens, or import one (--sae)
    index       the feature index of an SAE: every feature's dashboard data and backtracking scores
    merge       combine the partials of `index --shard i/n` into the index
    export-sae-vis  sae_vis's feature-centric HTML dashboards of chosen features
    steer       generate with a feature added or clamped, and count backtracking against a baseline
    build       every stage in order: corpus, train-lm (demo), train-sae, index

Each stage prints its config, shows progress, writes its output atomically into the run folder, and
is skipped when its output is already current (pass --force to rebuild). A stage command first runs
the stages it needs (`train-sae` runs `corpus`, and `train-lm` on the demo), skipping those that are
current.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from explorer import artifacts
from precompute.atomic import write_text_atomic
from precompute.profiles import PROFILES, Profile, get_profile


class UserError(Exception):
    """An error whose message tells the user what to do; printed without a traceback."""


def _add_run_args(parser: argparse.ArgumentParser) -> None:
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


def _add_sae_training_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hook", help="hook to train the SAE on (default: the profile's)")
    parser.add_argument("--wandb", action="store_true", help="log SAE training to Weights & Biases (off by default)")
    parser.add_argument(
        "--sae-steps", type=int, metavar="N",
        help="train the SAE for N steps instead of the profile's (a scaled-down run; the schedules' "
        "fractions stay, so warm-up and decay shrink with it)",
    )
    parser.add_argument(
        "--norm-batches", type=int, metavar="N",
        help="estimate the activations' mean norm over N training batches before the first step instead of the "
        "profile's sae.n_batches_for_norm_estimate (1,000 in the real profile: 2M tokens through the model)",
    )
    _add_report_args(parser)


def _add_report_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--eval-tokens", type=int, metavar="N",
        help="held-out tokens for the SAE report's MSE, explained variance and CE loss recovered "
        "(three full forwards each; default: the profile's report.n_tokens)",
    )
    parser.add_argument(
        "--sparsity-tokens", type=int, metavar="N",
        help="held-out tokens for the report's L0 and dead and dense shares (a forward to the hook each; "
        "default: the profile's report.n_sparsity_tokens)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m precompute",
        description="Offline pipeline of the backtracking-feature explorer.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: python -m precompute build --profile demo",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    corpus = sub.add_parser("corpus", help="generate or import a corpus and label its backtracking phrases")
    _add_run_args(corpus)
    corpus.add_argument("--n-traces", type=int, help="synthetic: number of traces; import: read at most this many")
    corpus.add_argument("--seed", type=int, help="synthetic generator seed, and the balanced sampler's")
    corpus.add_argument(
        "--balanced",
        type=int,
        metavar="N",
        help="keep the notebook's balanced sample: N/2 correct traces that backtrack, N/2 that don't",
    )
    train_lm = sub.add_parser("train-lm", help="train the demo model on the run's corpus (demo profiles only)")
    _add_run_args(train_lm)
    train_lm.add_argument("--steps", type=int, help="training steps (default: the profile's)")
    train_sae = sub.add_parser("train-sae", help="train an SAE with sae_lens on the run's model and corpus")
    _add_run_args(train_sae)
    _add_sae_training_args(train_sae)
    report = sub.add_parser(
        "sae-report",
        help="measure the run's SAEs on held-out tokens (L0, MSE, explained variance, dead/dense, CE recovered), "
        "or import one with --sae",
    )
    _add_run_args(report)
    report.add_argument(
        "--sae",
        help="import this SAE: a sae_lens output folder, a checkpoint folder <checkpoints>/<run id>/<tokens>/, "
        "or <release>:<sae id> (online)",
    )
    report.add_argument("--sae-id", help="id to file the imported SAE under (default: <hook>-<architecture>-<d_sae>)")
    report.add_argument("--hook", help="hook the imported SAE must fit (default: its own)")
    _add_report_args(report)
    index = sub.add_parser(
        "index",
        help="the feature index of an SAE: top examples, quantile samples, histograms, logit lens, "
        "neighbours and backtracking scores of every feature, into the run's DuckDB file",
    )
    _add_run_args(index)
    _add_sae_training_args(index)
    _add_index_args(index)
    index.add_argument(
        "--shard",
        help="i/n: index only shard i of n and write a partial (combine with `merge`); `auto` takes i and n "
        "from torchrun's RANK and WORLD_SIZE (one GPU per process, by LOCAL_RANK)",
    )
    merge = sub.add_parser("merge", help="combine the partials of `index --shard i/n` into the index")
    _add_run_args(merge)
    merge.add_argument("--sae", help="SAE id (default: the run's first SAE)")
    from precompute import export_sae_vis_cli, steer_cli

    export_sae_vis_cli.add_parser(sub)
    steer_cli.add_parser(sub)
    build = sub.add_parser("build", help="run every stage in order: corpus, train-lm (demo), train-sae, index")
    _add_run_args(build)
    _add_sae_training_args(build)
    _add_index_args(build)
    return parser


def _add_index_args(parser: argparse.ArgumentParser) -> None:
    if not any("--sae" in action.option_strings for action in parser._actions):
        parser.add_argument("--sae", help="SAE id to index (default: the run's first SAE)")
    parser.add_argument(
        "--tokens", type=int, help="index at most this many tokens of the corpus (default: the profile's index.n_tokens)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="context windows per forward pass (default: 8)")
    parser.add_argument("--top-k", type=int, help="top examples kept per feature (default: the profile's index.top_k, 32)")
    parser.add_argument(
        "--save-every", type=float, default=10.0, metavar="MINUTES",
        help="save the first pass's progress this often, so an interrupted index resumes where it stopped "
        "when run again (default: 10; 0: never)",
    )


def resolve_profile(args: argparse.Namespace) -> Profile:
    """The profile named by `--profile`, with the command line's overrides applied."""
    try:
        profile = get_profile(args.profile)
    except ValueError as err:
        raise UserError(str(err)) from None
    profile = profile.with_dataset(args.dataset)

    def given(name: str) -> int | None:
        return getattr(args, name, None)

    for flag in ("top_k", "eval_tokens", "sparsity_tokens", "sae_steps", "norm_batches"):
        if given(flag) is not None and given(flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1, not {given(flag)}")
    corpus = {field: given(field) for field in ("n_traces", "seed", "balanced") if given(field) is not None}
    report = {
        field: given(flag)
        for field, flag in (("n_tokens", "eval_tokens"), ("n_sparsity_tokens", "sparsity_tokens"))
        if given(flag) is not None
    }
    replace = dataclasses.replace
    profile = replace(profile, corpus=replace(profile.corpus, **corpus), report=replace(profile.report, **report))
    if given("dtype") is not None:
        profile = replace(profile, dtype=given("dtype"))
    if given("top_k") is not None:
        profile = replace(profile, index=replace(profile.index, top_k=given("top_k")))
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


def save_profile(profile: Profile, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / artifacts.PROFILE_FILE, profile.to_json() + "\n")


STAGE_ORDER = ("corpus", "train-lm", "train-sae", "index")


def stages_to_run(command: str, profile: Profile) -> list[str]:
    """The stages a command runs, in order: its own and the ones it needs first.

    A needed stage whose output is current is skipped by the stage itself, so `train-sae --dataset X`
    imports X first, and on the demo trains the model too, but reruns nothing that is up to date.
    """
    if command == "build":
        target = STAGE_ORDER[-1]
    elif command in STAGE_ORDER:
        target = command
    else:
        return []
    if command == "train-lm" and not profile.trains_own_model:
        raise UserError(
            f"Profile {profile.name!r} uses the pretrained model {profile.model}; "
            "train-lm only trains the demo model (use --profile demo)."
        )
    stages = STAGE_ORDER[: STAGE_ORDER.index(target) + 1]
    return [s for s in stages if s != "train-lm" or profile.trains_own_model]


def run_stage(stage: str, profile: Profile, run_dir: Path, args: argparse.Namespace, force: bool) -> None:
    if stage == "corpus":
        from precompute.corpus_stage import run_corpus_stage

        run_corpus_stage(profile.corpus, run_dir, force=force)
    elif stage == "train-lm":
        from precompute.train_lm_stage import run_train_lm_stage

        run_train_lm_stage(profile.demo_lm, run_dir, force=force)
    elif stage == "train-sae":
        from precompute.train_sae_stage import run_train_sae_stage

        run_train_sae_stage(profile, run_dir, hook=args.hook, wandb=args.wandb, force=force)
    elif stage == "index":
        from explorer.feature_index import parse_shard
        from precompute.index_stage import index_is_current, run_index

        shard = parse_shard(args.shard) if getattr(args, "shard", None) else (0, 1)
        if getattr(args, "shard", None) == "auto" and "LOCAL_RANK" in os.environ:
            import torch

            if torch.cuda.is_available():  # one GPU per torchrun process
                torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        explicit = getattr(args, "sae", None) or getattr(args, "tokens", None) or shard != (0, 1)
        if not force and not explicit and index_is_current(profile, run_dir):
            print(f"== index == up to date in {run_dir} (every SAE indexed from this corpus and its current weights); "
                  "pass --force to rebuild",
                  flush=True)
            return
        save_every = getattr(args, "save_every", 10.0)
        if save_every < 0:
            raise UserError(f"--save-every must be 0 (never) or a number of minutes, not {save_every}")
        run_index(profile, run_dir, sae_id=getattr(args, "sae", None), max_tokens=getattr(args, "tokens", None),
                  batch_size=getattr(args, "batch_size", 8), shard=shard, save_every_s=60 * save_every)


def run_command(args: argparse.Namespace) -> None:
    profile = resolve_profile(args)
    stages = stages_to_run(args.command, profile)
    run_dir = resolve_run_dir(args, profile)
    save_profile(profile, run_dir)
    print(f"run folder: {run_dir}   profile: {profile.name}", flush=True)
    for stage in stages:
        # --force rebuilds the command's own stage (every stage for `build`), not what it needs first.
        run_stage(stage, profile, run_dir, args, force=args.force and (args.command in (stage, "build")))
    if args.command == "merge":
        from precompute.index_stage import merge_partials

        merge_partials(profile, run_dir, sae_id=args.sae)
    if args.command == "sae-report":
        from precompute.sae_report_cli import run_sae_report

        run_sae_report(profile, run_dir, sae=args.sae, sae_id=args.sae_id, hook=args.hook, force=args.force)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "export-sae-vis":
            from precompute import export_sae_vis_cli

            export_sae_vis_cli.run(args)
        elif args.command == "steer":  # reads the run's saved profile; writes no profile.json
            from precompute import steer_cli

            steer_cli.run(args)
        else:
            run_command(args)
    except KeyboardInterrupt:
        print("\ninterrupted: nothing half-written was kept", file=sys.stderr)
        return 130
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # the library's own errors carry actionable messages
        from explorer.errors import is_out_of_space, is_user_facing, out_of_space_message

        if is_user_facing(err):
            print(f"error: {err}", file=sys.stderr)
        elif is_out_of_space(err):  # a full disk, a quota or `ulimit -f`, met by any write of the stage
            print(f"error: {out_of_space_message(err, f'the output of `{args.command}`')}", file=sys.stderr)
        else:
            raise
        return 2
    return 0
