"""`python -m precompute inject`: the token-injection test of an SAE's top candidates (docs/injection.md).

    python -m precompute inject --run runs/demo [--sae ID] [--candidates 64] [--windows 64] [--window-tokens 64]

Candidates: the top --candidates features by each score the Candidates page ranks by, in union (or
--features). Each one's top --top-tokens tokens by mean activation (the index's feature_token_stats
when it has them, else the tokens where its top examples peak) and the bigrams and trigrams around
where it fires are injected, by each strategy, into --windows windows of --window-tokens tokens without
backtracking, cut from documents held out of the SAE's training; the feature's maximum activation per
window is compared with the same windows untouched, with --windows windows that hold backtracking, and
with the same strategy injecting random tokens of matched corpus frequency. Verdicts, per-strategy
statistics and example windows go into the run's DuckDB file in one atomic write (all of the SAE's
injection rows replaced); an index built before this stage needs no rebuild. Skipped when the SAE's
stored result has the same settings, index and weights, unless --force.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from explorer.config import InjectionSpec, Profile
from explorer.database import utc_now
from explorer.feature_db import read_index_run
from explorer.feature_index import make_windows
from explorer.injection import (
    BASELINE_GAP,
    STRATEGIES,
    InjectionInputError,
    InjectionSettings,
    run_injection,
    select_windows,
)
from explorer.injection_store import (
    candidate_feature_ids,
    read_candidate_tokens,
    read_injection_run,
    write_injection_result,
)
from explorer.model_loading import load_run_model
from explorer.runs import corpus_content_hash, database_path, sae_dir
from explorer.sae_loading import check_sae_fits_model, load_sae, stop_layer_for_hook
from explorer.sae_training import is_heldout
from precompute.cli_common import UserError, add_run_args, add_subcommand, resolve_profile, resolve_run_dir
from precompute.index_stage import choose_sae_id, corpus_documents
from precompute.stages import print_config, sae_fingerprint
from precompute.steer_cli import int_list, with_saved_profile

STAGE = "inject"
HELDOUT_TOKEN_FACTOR = 40
"""Tokenise held-out documents up to this many times the 2 x M x L tokens the windows hold."""


def _strategy_list(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose strategies from {', '.join(STRATEGIES)} (got {text!r})")
    return names


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `inject` command to `python -m precompute`'s subparsers."""
    parser = add_subcommand(
        subparsers, "inject", "token-injection test of the top candidates: do their favourite tokens fire them "
        "in text without backtracking?", __doc__,
    )
    add_run_args(parser)
    parser.set_defaults(profile=None)  # the run's own profile.json (`with_saved_profile`)
    parser.add_argument("--sae", help="SAE id (default: the run's main SAE, at the profile's hook)")
    parser.add_argument("--candidates", type=int, metavar="N",
                        help="top N features by each ranking score, in union (default: the profile's injection.candidates, 64)")
    parser.add_argument("--features", type=int_list, help="test these feature ids instead (comma-separated)")
    parser.add_argument("--top-tokens", type=int, metavar="K",
                        help="tokens (and n-grams of each kind) per candidate (default: the profile's, 10)")
    parser.add_argument("--windows", type=int, metavar="M",
                        help="baseline windows and target windows, M of each (default: the profile's, 64)")
    parser.add_argument("--window-tokens", type=int, metavar="L",
                        help="tokens per window, BOS included (default: the profile's, 64)")
    parser.add_argument("--strategies", type=_strategy_list, default=STRATEGIES,
                        help=f"comma-separated (default: all of {','.join(STRATEGIES)})")
    parser.add_argument("--n-inject", type=int, help="tokens per window of a simple strategy (default: the profile's, 3)")
    parser.add_argument("--n-sequences", type=int,
                        help="n-grams per window of a contextual strategy (default: the profile's, 2)")
    parser.add_argument("--seed", type=int, help="window draw and null tokens (default: the profile's, 0)")
    parser.add_argument("--batch-size", type=int, default=64, help="windows per forward (default 64)")
    return parser


SPEC_FLAGS = ("candidates", "top_tokens", "windows", "window_tokens", "n_inject", "n_sequences", "seed")
"""The flags that override the profile's `injection` settings (`explorer.config.InjectionSpec`)."""


def injection_spec(profile: Profile, args: argparse.Namespace) -> InjectionSpec:
    """The profile's injection settings with the flags the command line gave."""
    given = {flag: getattr(args, flag) for flag in SPEC_FLAGS if getattr(args, flag, None) is not None}
    return dataclasses.replace(profile.injection, **given)


def run(args: argparse.Namespace) -> Path | None:
    """Run the `inject` command; the database written, or None when the stored result is current."""
    profile = resolve_profile(with_saved_profile(args))
    run_dir = resolve_run_dir(args, profile)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, not {args.batch_size}")
    return run_inject(profile, run_dir, injection_spec(profile, args), sae=args.sae, features=args.features,
                      strategies=tuple(args.strategies), batch_size=args.batch_size, force=args.force)


def check_spec(spec: InjectionSpec) -> None:
    for name in ("candidates", "top_tokens", "windows", "n_inject", "n_sequences"):
        if getattr(spec, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(spec, name)}")
    if spec.window_tokens < 8:
        raise UserError(f"--window-tokens must be at least 8, not {spec.window_tokens}")


def run_inject(
    profile: Profile, run_dir: Path, spec: InjectionSpec, *, sae: str | None = None, features: list[int] | None = None,
    strategies: tuple[str, ...] = STRATEGIES, batch_size: int = 64, force: bool = False,
) -> Path | None:
    """The token-injection test of the SAE `sae` (default: the run's main SAE) with `spec`; the database
    written, or None when the stored result has the same settings, index and weights (unless `force`)."""
    check_spec(spec)
    sae_id = choose_sae_id(run_dir, sae, profile.hook_name)
    db_path = database_path(run_dir)
    index_run = read_index_run(db_path, sae_id)  # NoIndexError says how to build it
    n_features = int(index_run["d_sae"])
    unknown = [f for f in features or () if not 0 <= f < n_features]
    if unknown:
        raise UserError(f"{sae_id} has {n_features:,} features (ids 0 to {n_features - 1:,}); no feature "
                        f"{', '.join(map(str, unknown))}.")
    feature_ids = features or candidate_feature_ids(db_path, sae_id, spec.candidates)
    if not feature_ids:
        raise UserError(f"The index of {sae_id} ranks no feature: nothing to test.")
    candidates, token_source = read_candidate_tokens(db_path, sae_id, feature_ids, spec.top_tokens)
    settings = {
        "candidates": spec.candidates, "features": features, "top_tokens": spec.top_tokens, "windows": spec.windows,
        "window_tokens": spec.window_tokens, "strategies": list(strategies), "n_inject": spec.n_inject,
        "n_sequences": spec.n_sequences, "seed": spec.seed, "dtype": profile.dtype,
        "index_built_at": str(index_run["built_at"]), "sae_fingerprint": sae_fingerprint(run_dir, sae_id),
        "corpus_hash": corpus_content_hash(run_dir), "token_source": token_source, "baseline_gap": BASELINE_GAP,
    }
    stored = read_injection_run(db_path, sae_id)
    if not force and not stored.empty and json.loads(stored["settings_json"].iloc[0]) == settings:
        print(f"== {STAGE} == up to date for {sae_id} in {db_path}; pass --force to rerun", flush=True)
        return None
    started = time.time()
    model = load_run_model(run_dir, profile)
    loaded = load_sae(sae_dir(run_dir, sae_id), device=str(next(model.parameters()).device), dtype=profile.dtype)
    hook_name = check_sae_fits_model(loaded.sae, model, loaded.hook_name or profile.hook_name, model_name=profile.model)
    tokenizer = model.tokenizer
    comma = tokenizer.encode(",", add_special_tokens=False)
    print_config(STAGE, {
        "run": str(run_dir), "sae": sae_id, "hook": hook_name, "candidates": len(candidates),
        "token_source": token_source + ("" if token_source == "feature_token_stats"
                                        else " (the index has no feature_token_stats: tokens where its top examples peak)"),
        "windows": f"{spec.windows} baseline + {spec.windows} target, {spec.window_tokens} tokens, held-out documents",
        "strategies": ",".join(strategies), "n_inject": spec.n_inject, "n_sequences": spec.n_sequences,
        "seed": spec.seed, "dtype": profile.dtype, "device": str(next(model.parameters()).device),
    })
    heldout = (doc for doc in corpus_documents(run_dir) if is_heldout(doc.doc_id))
    budget = HELDOUT_TOKEN_FACTOR * 2 * spec.windows * spec.window_tokens
    windows = make_windows(tokenizer, heldout, spec.window_tokens, progress=False, max_tokens=budget)
    counts = np.bincount(np.concatenate([w.token_ids for w in windows]) if windows else np.zeros(0, dtype=np.int64),
                         minlength=model.cfg.d_vocab)
    try:
        chosen = select_windows(windows, spec.windows, spec.window_tokens, spec.seed)
        result = run_injection(
            model, loaded.sae, hook_name, chosen, candidates,
            InjectionSettings(n_tokens=spec.n_inject, n_sequences=spec.n_sequences, seed=spec.seed,
                              batch_size=batch_size, comma_token_id=comma[0] if len(comma) == 1 else None,
                              strategies=strategies),
            token_counts=counts, stop_at_layer=stop_layer_for_hook(hook_name),
        )
    except InjectionInputError as err:
        raise UserError(str(err)) from None
    examples = result.examples.copy()
    examples.insert(4, "text", [tokenizer.decode(ids, skip_special_tokens=True) for ids in examples["token_ids"]])
    seconds = time.time() - started
    run_row: dict[str, Any] = {
        "hook_name": hook_name, "settings_json": json.dumps(settings, sort_keys=True), "n_candidates": len(candidates),
        "n_windows": spec.windows, "window_tokens": spec.window_tokens, "strategies": sorted(set(result.rows["strategy"]),
                                                                                         key=STRATEGIES.index),
        "seed": spec.seed, "token_source": token_source, "n_windows_forwarded": result.n_windows_forwarded,
        "n_tokens_forwarded": result.n_tokens_forwarded, "dtype": profile.dtype,
        "device": str(next(model.parameters()).device), "seconds": round(seconds, 2), "built_at": utc_now(),
    }
    write_injection_result(db_path, sae_id, run_row, {
        "feature_injection": result.rows, "feature_injection_verdicts": result.verdicts, "injection_examples": examples,
    })
    untested = len(candidates) - len(result.verdicts)
    if untested:
        print(f"  {untested} candidates left out: no top example to take their tokens from (never active)", flush=True)
    counts_by_verdict = result.verdicts["verdict"].value_counts().to_dict()
    print(f"  {len(candidates)} candidates x {len(run_row['strategies'])} strategies: "
          f"{result.n_windows_forwarded:,} windows ({result.n_tokens_forwarded:,} tokens) forwarded in "
          f"{result.seconds:.1f}s; stage {seconds:.1f}s", flush=True)
    print(f"  verdicts: {', '.join(f'{v} {n}' for v, n in counts_by_verdict.items())}", flush=True)
    print(f"  wrote the injection test of {sae_id} to {db_path}", flush=True)
    return db_path
