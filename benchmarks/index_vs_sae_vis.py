"""Our feature-index pass over ALL features vs sae-vis 0.3.7's `SaeVisData.create` for 64 features,
on the same model, SAE and token rows, in one process.

    .venv/bin/python benchmarks/index_vs_sae_vis.py                 # the demo run, 64 rows
    .venv/bin/python benchmarks/index_vs_sae_vis.py --run runs/X --rows 128 --ctx 512

Tokens: the run's corpus, windowed as the index windows it (`make_windows`, the profile's n_ctx), the
first `ctx` tokens of the first `rows` windows at least that long (default ctx: the longest length
`rows` windows reach, at most n_ctx). Both sides get exactly these rows.

Timed: ours = `stream_index` (model forward stopped at the hook's layer, SAE encode, every
accumulator of the index, all d_sae features) + `finalise()`; sae-vis = `SaeVisData.create` (its
forward passes through the whole model plus everything its dashboards need), HTML rendering not
included (timed apart). Both are warmed up once on 4 rows first (not timed). The last line is
`speedup: X` with X = sae-vis time for its features / our time for all features.

SAEDashboard (sae-dashboard 0.8, the maintained fork of sae_vis) is timed too, on a copy of the SAE (its
runner folds the decoder norms into the SAE it is given), when it is installed. It is not one of the
project's requirements (its declared pins conflict with ours); install it for this benchmark alone:

    .venv/bin/pip install --no-deps sae-dashboard==0.8.0

and the script prints `speedup vs SAEDashboard: Y` as well.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DOC_CHUNK = 256


def pick_windows(tokenizer, run_dir: Path, n_ctx: int, rows: int, ctx: int | None):
    from explorer.feature_index import CorpusDocument, make_windows
    from explorer.labels import PhraseSpan
    from explorer.runs import read_documents, read_phrases
    from precompute.export_sae_vis_cli import truncate_window

    docs = read_documents(run_dir, columns=["doc_id", "text", "has_backtracking"])
    phrases = read_phrases(run_dir)
    spans = {
        doc_id: [PhraseSpan(int(r.start), int(r.end), r.group, r.phrase) for r in g.itertuples()]
        for doc_id, g in phrases.groupby("doc_id")
    }
    windows = []
    for start in range(0, len(docs), DOC_CHUNK):
        chunk = docs.iloc[start : start + DOC_CHUNK]
        batch = [
            CorpusDocument(d, t, spans.get(d, ()), bool(b))
            for d, t, b in zip(chunk.doc_id, chunk.text, chunk.has_backtracking)
        ]
        windows.extend(w._replace(context_id=len(windows) + i) for i, w in enumerate(make_windows(tokenizer, batch, n_ctx, progress=False)))
        lengths = sorted((len(w.token_ids) for w in windows), reverse=True)
        if len(lengths) >= rows and lengths[rows - 1] >= (ctx or n_ctx):
            break
        if ctx is None and sum(lengths) >= 4 * rows * n_ctx:
            break
    lengths = sorted((len(w.token_ids) for w in windows), reverse=True)
    if ctx is None:
        ctx = min(n_ctx, lengths[min(rows, len(lengths)) - 1])
    picked = [truncate_window(w, ctx) for w in windows if len(w.token_ids) >= ctx][:rows]
    return picked, ctx


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "demo", help="run folder (default: runs/demo)")
    parser.add_argument("--sae", help="SAE id under <run>/saes (default: the first)")
    parser.add_argument("--rows", type=int, default=64, help="token rows (default: 64)")
    parser.add_argument("--ctx", type=int, help="row length (default: the longest --rows windows reach, <= n_ctx)")
    parser.add_argument("--features", type=int, default=64, help="sae-vis features: 0..N-1 (default: 64)")
    parser.add_argument("--batch-rows", type=int, default=16, help="rows per forward pass, both sides (default: 16)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (sae-vis uses what it finds: keep them equal)")
    args = parser.parse_args(argv)

    import torch

    from explorer.feature_aggregates import IndexConfig
    from explorer.feature_index import stream_index
    from explorer.model_loading import load_model
    from explorer.runs import main_sae_id, model_source, read_profile, sae_dir
    from explorer.sae_loading import load_sae, stop_layer_for_hook
    from explorer.sae_vis_export import compute_sae_vis_data, token_rows, write_html_atomic

    profile = read_profile(args.run)
    sae_id = args.sae or main_sae_id(args.run)  # the SAE at the profile's hook
    loaded = load_sae(sae_dir(args.run, sae_id), device=args.device)
    hook = loaded.hook_name or profile.hook_name
    stop_at_layer = stop_layer_for_hook(hook)  # the forward runs up to the hook's block
    n_ctx = profile.n_ctx
    model = load_model(model_source(args.run, profile), device=args.device, n_ctx=n_ctx)
    windows, ctx = pick_windows(model.tokenizer, args.run, n_ctx, args.rows, args.ctx)
    tokens_BT = token_rows(windows, ctx)
    n_tok = tokens_BT.numel()
    index_cfg = IndexConfig(
        n_features=loaded.d_sae,
        vocab_size=model.cfg.d_vocab,
        k=profile.index.top_k,
    )
    features = list(range(min(args.features, loaded.d_sae)))

    def ours(ws):
        acc, n = stream_index(model, loaded.sae, hook, stop_at_layer, ws, index_cfg, batch_size=args.batch_rows, progress=False)
        acc.finalise()
        return n

    def theirs(t_BT, feats):
        return compute_sae_vis_data(
            model, loaded.sae, hook, t_BT, feats,
            minibatch_size_features=len(features), minibatch_size_tokens=args.batch_rows,
        )

    try:
        from sae_dashboard.sae_vis_data import SaeVisConfig as DashboardConfig
        from sae_dashboard.sae_vis_runner import SaeVisRunner
    except ImportError:
        SaeVisRunner = None

    def dashboard(t_BT, feats):
        import copy

        config = DashboardConfig(
            hook_point=hook, features=feats, minibatch_size_features=len(features),
            minibatch_size_tokens=args.batch_rows, device=args.device,
        )
        return SaeVisRunner(config).run(encoder=copy.deepcopy(loaded.sae), model=model, tokens=t_BT)

    print(f"run: {args.run}   SAE: {sae_id} ({hook}, d_sae {loaded.d_sae})   device: {args.device}   "
          f"torch threads: {torch.get_num_threads()}")
    print(f"tokens: {tokens_BT.shape[0]} rows x {ctx} = {n_tok} (profile n_ctx {n_ctx})   rows per forward: {args.batch_rows}")
    ours(windows[:4])  # warm-up, not timed
    theirs(tokens_BT[:4], features[:2])
    if SaeVisRunner is not None:
        dashboard(tokens_BT[:4], features[:2])

    t0, c0 = time.perf_counter(), time.process_time()
    assert ours(windows) == n_tok
    t_ours, c_ours = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    data = theirs(tokens_BT, features)
    t_vis, c_vis = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    tmp = Path(__file__).with_name(".index_vs_sae_vis.html")
    write_html_atomic(data, tmp)
    t_html = time.perf_counter() - t0
    tmp.unlink()

    print(f"ours    (stream_index + finalise, all {loaded.d_sae} features): {t_ours:8.2f} s wall "
          f"({c_ours:.2f} s CPU)   {n_tok / t_ours:8.0f} tokens/s   {t_ours / loaded.d_sae * 1000:8.2f} ms/feature")
    print(f"sae-vis (SaeVisData.create, {len(features)} features): {t_vis:8.2f} s wall "
          f"({c_vis:.2f} s CPU)   {n_tok / t_vis:8.0f} tokens/s   {t_vis / len(features) * 1000:8.2f} ms/feature")
    print(f"sae-vis HTML rendering (not in the ratio): {t_html:.2f} s")
    print(f"per feature, sae-vis / ours: {(t_vis / len(features)) / (t_ours / loaded.d_sae):.1f}x wall; "
          f"CPU-time ratio {c_vis / c_ours:.2f} (less sensitive to other load on the machine)")
    if SaeVisRunner is None:
        print("SAEDashboard: not installed (`.venv/bin/pip install --no-deps sae-dashboard==0.8.0` to time it)")
    else:
        t0, c0 = time.perf_counter(), time.process_time()
        dashboard(tokens_BT, features)
        t_dash, c_dash = time.perf_counter() - t0, time.process_time() - c0
        print(f"SAEDashboard (SaeVisRunner.run, {len(features)} features): {t_dash:8.2f} s wall ({c_dash:.2f} s CPU)   "
              f"{n_tok / t_dash:8.0f} tokens/s   {t_dash / len(features) * 1000:8.2f} ms/feature")
        print(f"speedup vs SAEDashboard: {t_dash / t_ours:.2f}")
    print(f"speedup: {t_vis / t_ours:.2f}")


if __name__ == "__main__":
    main()
