"""`python -m precompute`: the offline pipeline's command line.

    corpus      generate or import a corpus and label its backtracking phrases
    train-lm    train the demo model on the run's corpus (demo profiles)
    train-sae   train the profile's SAEs (its hook's, then one per extra hook) with sae_lens, or --hook's
    sae-report  measure the run's SAEs on held-out tokens, or import one (--sae)
    index       the feature index of each SAE (or --sae's): every feature's dashboard data and scores
    merge       combine the partials of `index --shard i/n` into the index
    export-sae-vis  sae_vis's feature-centric HTML dashboards of chosen features
    steer       generate with a feature added or clamped, and count backtracking against a baseline
    inject      token-injection test of the top candidates: do their favourite tokens fire them anyway?
    labels      list, add (sentence tags, phrases, regular expressions), remove and compare label sets
    build       every stage in order: corpus, train-lm (demo), train-sae, index, inject (the main SAE's)

Each stage prints its config, shows progress, writes its output atomically into the run folder, and
is skipped when its output is already current for the command's settings (pass --force to rebuild). A
stage command first makes sure the stages it needs are there (`train-sae` needs `corpus`, and `train-lm`
on the demo): it uses each one's output as it was built, with whatever flags its own command was given,
and builds it only when it is missing or stale (made from another corpus or model than the run's, or
from another --dataset). `build` checks every stage against its own flags.

profile.json records what the run's outputs were built with (`precompute.run_record`): a command
changes it only where it built something with other settings, and prints each change.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from explorer import artifacts
from explorer.config import Profile
from explorer.errors import ExplorerError, is_out_of_space, out_of_space_message
from explorer.feature_index import parse_shard
from precompute import export_sae_vis_cli, inject_stage, labels_cli, steer_cli
from precompute.atomic import write_text_atomic
from precompute.cli_common import (
    UserError,
    add_run_args,
    apply_overrides,
    named_profile,
    resolve_profile,
    resolve_run_dir,
)
from precompute.corpus_stage import reuse_corpus, run_corpus_stage
from precompute.index_stage import current_index_ids, merge_partials, run_index, sae_ids_to_index
from precompute.inject_stage import run_inject
from precompute.run_record import RunRecord, same_profile
from precompute.sae_report_cli import run_sae_report
from precompute.train_lm_stage import reuse_model, run_train_lm_stage
from precompute.train_sae_stage import SCALE_DOWN_ARGS, reuse_sae, run_train_sae_stage


def _add_sae_training_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hook", help="hook to train the SAE on (default: the profile's hook, then each of its extra_hooks)"
    )
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
    add_run_args(corpus)
    corpus.add_argument("--n-traces", type=int, help="synthetic: number of traces; import: read at most this many")
    corpus.add_argument("--seed", type=int, help="synthetic generator seed, and the balanced sampler's")
    corpus.add_argument(
        "--balanced",
        type=int,
        metavar="N",
        help="keep the notebook's balanced sample: N/2 correct traces that backtrack, N/2 that don't",
    )
    train_lm = sub.add_parser("train-lm", help="train the demo model on the run's corpus (demo profiles only)")
    add_run_args(train_lm)
    train_lm.add_argument("--steps", type=int, help="training steps (default: the profile's)")
    train_sae = sub.add_parser(
        "train-sae", help="train the profile's SAEs (at its hook, then at each extra hook) with sae_lens on the run's "
        "model and corpus"
    )
    add_run_args(train_sae)
    _add_sae_training_args(train_sae)
    report = sub.add_parser(
        "sae-report",
        help="measure the run's SAEs on held-out tokens (L0, MSE, explained variance, dead/dense, CE recovered), "
        "or import one with --sae",
    )
    add_run_args(report)
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
        help="the feature index of each SAE of the run whose index is not current (or of --sae's): top examples, "
        "quantile samples, histograms, logit lens, neighbours and backtracking scores of every feature, into the "
        "run's DuckDB file",
    )
    add_run_args(index)
    _add_sae_training_args(index)
    _add_index_args(index)
    index.add_argument(
        "--shard",
        help="i/n: index only shard i of n and write a partial (combine with `merge`); `auto` takes i and n "
        "from torchrun's RANK and WORLD_SIZE (one GPU per process, by LOCAL_RANK)",
    )
    merge = sub.add_parser("merge", help="combine the partials of `index --shard i/n` into the index")
    add_run_args(merge)
    merge.add_argument("--sae", help="SAE id (default: the run's main SAE, at the profile's hook)")
    export_sae_vis_cli.add_parser(sub)
    steer_cli.add_parser(sub)
    inject_stage.add_parser(sub)
    labels_cli.add_parser(sub)
    build = sub.add_parser("build", help="run every stage in order: corpus, train-lm (demo), train-sae, index, inject")
    add_run_args(build)
    _add_sae_training_args(build)
    _add_index_args(build)
    return parser


def _add_index_args(parser: argparse.ArgumentParser) -> None:
    if not any("--sae" in action.option_strings for action in parser._actions):
        parser.add_argument(
            "--sae", help="SAE id to index (default: every SAE of the run whose index is not current; with "
            "--shard, the main SAE, at the profile's hook)"
        )
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


def upstream_profile(args: argparse.Namespace, profile: Profile, saved: Profile | None) -> Profile:
    """What a command builds the stages it needs first with, when one is missing or stale: the run's
    recorded profile (when it is the same profile as the command's `profile`), with the command line's
    overrides, so that a stale SAE is retrained as it was; else the command's own profile."""
    if saved is None or not same_profile(saved, profile):
        return profile
    if args.dataset and saved.corpus.source != str(args.dataset):
        saved = saved.with_dataset(args.dataset)
    return apply_overrides(saved, args)


def save_profile(profile: Profile, run_dir: Path) -> None:
    """Write `profile` as the run's profile.json, whatever it held (commands go through `RunRecord`)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / artifacts.PROFILE_FILE, profile.to_json() + "\n")


STAGE_ORDER = ("corpus", "train-lm", "train-sae", "index", "inject")


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


def reuse_stage(stage: str, named: Profile, profile: Profile, run_dir: Path, args: argparse.Namespace) -> bool:
    """Whether a stage the command needs first is used as it was built (printed); False when it must be
    built first because it is missing or stale (printed why)."""
    if stage == "corpus":
        return reuse_corpus(run_dir, named.corpus, args.dataset)
    if stage == "train-lm":
        return reuse_model(run_dir, named.demo_lm or profile.demo_lm)
    if stage == "train-sae":
        given = {arg: getattr(args, arg, None) for arg in SCALE_DOWN_ARGS}
        return reuse_sae(profile, named, run_dir, getattr(args, "hook", None) or profile.hook_name,
                         sae_id=getattr(args, "sae", None), given=given)
    raise ValueError(f"{stage} is no stage another one needs")


def training_hooks(profile: Profile) -> list[str]:
    """The hooks `train-sae` without `--hook` trains an SAE at: the profile's, then its extra hooks."""
    return list(dict.fromkeys((profile.hook_name, *profile.extra_hooks)))


def run_stage(stage: str, profile: Profile, run_dir: Path, args: argparse.Namespace, force: bool) -> None:
    if stage == "corpus":
        run_corpus_stage(profile.corpus, run_dir, force=force)
    elif stage == "train-lm":
        run_train_lm_stage(profile.demo_lm, run_dir, force=force)
    elif stage == "train-sae":
        hooks = [args.hook] if args.hook else training_hooks(profile)
        for n, hook in enumerate(hooks, 1):
            if len(hooks) > 1:
                print(f"-- SAE {n} of {len(hooks)}: {hook} --", flush=True)
            run_train_sae_stage(profile, run_dir, hook=hook, wandb=args.wandb, force=force)
    elif stage == "inject":  # `build` only: the run's main SAE, with the profile's settings
        try:
            run_inject(profile, run_dir, profile.injection, force=force)
        except UserError as err:  # e.g. too few held-out windows: the index is built; say how to run it
            print(f"== inject == skipped: {err}\n  (the index is built; run `python -m precompute inject "
                  f"--run {run_dir}` with other settings to add the test)", flush=True)
    elif stage == "index":
        shard = parse_shard(args.shard) if getattr(args, "shard", None) else (0, 1)
        if getattr(args, "shard", None) == "auto" and "LOCAL_RANK" in os.environ:
            import torch

            if torch.cuda.is_available():  # one GPU per torchrun process
                torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        explicit = getattr(args, "sae", None) or shard != (0, 1)
        # Without --sae (or --shard): every SAE of the run whose index is not current, the main SAE first.
        sae_ids = [getattr(args, "sae", None)] if explicit else sae_ids_to_index(profile, run_dir) or [None]
        current = set() if force or explicit else current_index_ids(profile, run_dir)
        if sae_ids[0] is not None and set(sae_ids) <= current:
            print(f"== index == up to date in {run_dir} (every SAE indexed from this corpus and its current weights); "
                  "pass --force to rebuild",
                  flush=True)
            return
        save_every = getattr(args, "save_every", 10.0)
        if save_every < 0:
            raise UserError(f"--save-every must be 0 (never) or a number of minutes, not {save_every}")
        for n, sae_id in enumerate(sae_ids, 1):
            if len(sae_ids) > 1:
                state = "up to date (indexed from this corpus and its current weights)" if sae_id in current else "indexing"
                print(f"-- SAE {n} of {len(sae_ids)}: {sae_id}: {state} --", flush=True)
            if sae_id not in current:
                run_index(profile, run_dir, sae_id=sae_id, batch_size=getattr(args, "batch_size", 8),
                          shard=shard, save_every_s=60 * save_every)


def run_command(args: argparse.Namespace) -> None:
    profile = resolve_profile(args)
    stages = stages_to_run(args.command, profile)
    run_dir = resolve_run_dir(args, profile)
    record = RunRecord(run_dir)
    # The stages the command needs first are built, when they must be, as the run recorded them; `merge`
    # finishes what `index --shard` started, with the recorded settings.
    upstream = upstream_profile(args, profile, record.saved)
    print(f"run folder: {run_dir}   profile: {profile.name}", flush=True)
    for stage in stages:
        if args.command in (stage, "build"):
            # --force rebuilds the command's own stage (every stage for `build`), not what it needs first.
            run_stage(stage, profile, run_dir, args, force=args.force)
            record.record(stage, profile)
        elif not reuse_stage(stage, named_profile(args), upstream, run_dir, args):
            run_stage(stage, upstream, run_dir, args, force=False)
            record.record(stage, upstream)
    if args.command == "merge":
        merge_partials(upstream, run_dir, sae_id=args.sae)
        record.record("index", upstream)
    if args.command == "sae-report":
        run_sae_report(profile, run_dir, sae=args.sae, sae_id=args.sae_id, hook=args.hook, force=args.force)
        record.record("sae-report", profile)
    record.ensure_saved(profile)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "export-sae-vis":
            export_sae_vis_cli.run(args)
        elif args.command == "steer":  # reads the run's saved profile; writes no profile.json
            steer_cli.run(args)
        elif args.command == "inject":  # reads the run's index and model; writes its injection tables
            inject_stage.run(args)
        elif args.command == "labels":  # reads and writes the run's label sets only
            labels_cli.run(args)
        else:
            run_command(args)
    except KeyboardInterrupt:
        print("\ninterrupted: nothing half-written was kept", file=sys.stderr)
        return 130
    except ExplorerError as err:  # UserError and the library's own errors carry actionable messages
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        if not is_out_of_space(err):
            raise
        # a full disk, a quota or `ulimit -f`, met by any write of the stage
        print(f"error: {out_of_space_message(err, f'the output of `{args.command}`')}", file=sys.stderr)
        return 2
    return 0
