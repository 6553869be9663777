"""`python -m precompute export-sae-vis`: sae-vis's feature dashboards for a few features of a run's SAE.

    python -m precompute export-sae-vis --profile demo --features 3,17,42

The tokens are the run's own: its corpus documents cut into context windows exactly as the feature
index cuts them (`explorer.feature_index.make_windows`, BOS at each window's start), and the first
`row length` tokens of each window at least that long, so the tensor sae-vis takes is rectangular and
every activation in it is one our index sees too. The row length is the profile's `n_ctx` (or --ctx),
shortened when the corpus's windows are shorter: then the longest length whose windows, among the
first documents holding 4x --tokens tokens, fill --tokens.

sae-vis is optional: `pip install --no-deps -r requirements-sae-vis.txt` (`make install` does it).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any, Sequence

from explorer import artifacts
from explorer.config import Profile
from explorer.feature_index import CorpusDocument, make_windows
from explorer.model_loading import load_model
from explorer.runs import list_sae_ids, main_sae_id, model_source, read_documents, read_profile, sae_dir
from explorer.sae_loading import load_sae
from explorer.sae_vis_export import SaeVisExportError, check_features, export_to_file, require_sae_vis, token_rows
from precompute.cli_common import UserError, add_run_args, add_subcommand, resolve_profile, resolve_run_dir

DEFAULT_TOKENS = 8192
DOC_CHUNK = 256
SCAN_FACTOR = 4
"""Auto row length: scan documents until their windows hold this many times --tokens tokens."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_subcommand(
        subparsers, "export-sae-vis", "export sae-vis 0.3.7 feature dashboards (HTML) for chosen features of a run's SAE",
        __doc__,
    )
    add_run_args(parser)  # --force has no effect here: the HTML file is always rewritten
    parser.add_argument("--sae", help="SAE id under <run>/saes/ (default: the run's main SAE, at its profile's hook)")
    parser.add_argument("--features", required=True, type=parse_features, help="feature ids, e.g. 1,2,3")
    parser.add_argument(
        "--tokens", type=int, default=DEFAULT_TOKENS, help=f"tokens to run sae-vis on (default: {DEFAULT_TOKENS})"
    )
    parser.add_argument("--ctx", type=int, help="row length in tokens (default: the profile's n_ctx, see above)")
    parser.add_argument("--html", type=Path, help="output file (default: <run>/exports/sae_vis_<sae>_<features>.html)")
    parser.add_argument(
        "--minibatch-features", type=int, default=64, help="features per sae-vis forward pass group (default: 64)"
    )
    parser.add_argument("--minibatch-rows", type=int, default=16, help="rows per forward pass (default: 16)")
    return parser


def parse_features(text: str) -> list[int]:
    try:
        feats = [int(part) for part in text.replace(" ", "").split(",") if part != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--features takes comma-separated integers, e.g. 1,2,3 (got {text!r})") from None
    if not feats:
        raise argparse.ArgumentTypeError("--features needs at least one feature id")
    return feats


def default_html_path(run_dir: Path, sae_id: str, features: Sequence[int]) -> Path:
    shown = "-".join(str(f) for f in features[:8])
    if len(features) > 8:
        shown += f"-and-{len(features) - 8}-more"
    return Path(run_dir) / "exports" / f"sae_vis_{sae_id}_{shown}.html"


def corpus_windows(
    tokenizer, documents, n_ctx: int, n_tokens: int, row_len: int | None = None
) -> tuple[list[Any], int]:
    """Windows (truncated to the row length) for about `n_tokens` tokens, and the row length.

    `documents`: a DataFrame with `doc_id` and `text` (the run's corpus table). Documents are windowed
    in chunks, in corpus order, until enough windows are long enough."""
    if n_tokens <= 0:
        raise ValueError("--tokens must be positive")
    if row_len is not None and row_len > n_ctx:
        raise SaeVisExportError(f"Rows of {row_len} tokens are longer than the run's windows (n_ctx {n_ctx}).")
    target = row_len or n_ctx
    windows: list[Any] = []
    ids, texts = documents["doc_id"].tolist(), documents["text"].tolist()
    for start in range(0, len(ids), DOC_CHUNK):
        chunk = [CorpusDocument(d, t, (), False) for d, t in zip(ids[start : start + DOC_CHUNK], texts[start : start + DOC_CHUNK])]
        for w in make_windows(tokenizer, chunk, n_ctx, progress=False):
            windows.append(w._replace(context_id=len(windows)))
        long_enough = sum(1 for w in windows if len(w.token_ids) >= target)
        if long_enough >= math.ceil(n_tokens / target):
            break
        if row_len is None and sum(len(w.token_ids) for w in windows) >= SCAN_FACTOR * n_tokens:
            break
    if row_len is None:
        row_len = _auto_row_len([len(w.token_ids) for w in windows], n_ctx, n_tokens)
    n_rows = math.ceil(n_tokens / row_len)
    picked = [w for w in windows if len(w.token_ids) >= row_len][:n_rows]
    if not picked:
        longest = max((len(w.token_ids) for w in windows), default=0)
        raise SaeVisExportError(f"No document has {row_len} tokens (the longest has {longest}): pass a smaller --ctx.")
    return [truncate_window(w, row_len) for w in picked], row_len


def _auto_row_len(lengths: list[int], n_ctx: int, n_tokens: int) -> int:
    """The longest L <= n_ctx whose windows (those >= L tokens) fill n_tokens; else the L that holds most."""
    best, best_tokens = 1, 0
    for L in sorted({min(n, n_ctx) for n in lengths}, reverse=True):
        count = sum(1 for n in lengths if n >= L)
        if count >= math.ceil(n_tokens / L):
            return L
        held = L * count
        if held > best_tokens:
            best, best_tokens = L, held
    return best


def truncate_window(window, row_len: int):
    """`window` with every per-token field cut to its first `row_len` tokens."""
    return window._replace(
        token_ids=window.token_ids[:row_len],
        valid=window.valid[:row_len],
        group_ids=window.group_ids[:row_len],
        phrase_start=window.phrase_start[:row_len],
    )


def _run_paths(args: argparse.Namespace) -> tuple[Path, Profile]:
    run_dir = resolve_run_dir(args, resolve_profile(args))
    if not (run_dir / artifacts.PROFILE_FILE).is_file():
        raise UserError(f"{run_dir} is not a built run (no {artifacts.PROFILE_FILE}): run `python -m precompute build` first.")
    return run_dir, read_profile(run_dir)


def run(args: argparse.Namespace) -> Path:
    """Export the dashboards; returns the HTML path."""
    try:
        require_sae_vis()  # fail before loading anything
    except SaeVisExportError as err:
        raise UserError(str(err)) from None
    if args.tokens <= 0 or (args.ctx is not None and args.ctx <= 0):
        raise UserError("--tokens and --ctx must be positive")
    run_dir, profile = _run_paths(args)
    sae_ids = list_sae_ids(run_dir)
    if not sae_ids:
        raise UserError(f"{run_dir} holds no SAEs yet: run `python -m precompute train-sae --out {run_dir}` first.")
    sae_id = args.sae or main_sae_id(run_dir, profile.hook_name, sae_ids)
    if sae_id not in sae_ids:
        raise UserError(f"No SAE {sae_id!r} in {run_dir}; it holds: {', '.join(sae_ids)}.")

    import torch
    from sae_vis.utils_fns import get_device  # optional (requirements-sae-vis.txt): imported only here

    device = str(get_device())  # sae-vis moves tokens to the device it picked on import
    loaded = load_sae(sae_dir(run_dir, sae_id), device=device)
    hook_name = loaded.hook_name or profile.hook_name
    try:
        features = check_features(args.features, loaded.d_sae)
    except SaeVisExportError as err:
        raise UserError(str(err)) from None
    n_ctx = profile.n_ctx
    model = load_model(model_source(run_dir, profile), device=device, n_ctx=n_ctx)
    docs = read_documents(run_dir, columns=["doc_id", "text"])
    try:
        windows, row_len = corpus_windows(model.tokenizer, docs, n_ctx, args.tokens, args.ctx)
        tokens_BT = token_rows(windows, row_len)
    except SaeVisExportError as err:
        raise UserError(str(err)) from None
    if tokens_BT.numel() < args.tokens:
        print(f"note: the corpus gives {tokens_BT.numel()} tokens in rows of {row_len}, fewer than --tokens {args.tokens}")
    out = args.html or default_html_path(run_dir, sae_id, features)
    print(
        f"run folder: {run_dir}   SAE: {sae_id} ({hook_name})   features: {features}\n"
        f"tokens: {tokens_BT.shape[0]} rows x {row_len} = {tokens_BT.numel()} (profile n_ctx {n_ctx})   device: {device}",
        flush=True,
    )
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            path, maxes = export_to_file(
                model, loaded.sae, hook_name, tokens_BT, features, out,
                minibatch_size_features=args.minibatch_features, minibatch_size_tokens=args.minibatch_rows,
            )
    except SaeVisExportError as err:
        raise UserError(str(err)) from None
    print(f"sae-vis took {time.perf_counter() - t0:.1f} s; max activation per feature:")
    for f, m in maxes.items():
        print(f"  {f}: {m:.4f}")
    print(f"wrote {path}")
    return path
