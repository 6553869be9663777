"""A miniature indexed run for the page tests: a tiny Qwen2 (tests.hub_fixtures), a random SAE, a small
synthetic corpus and its feature index, built in seconds. Also the broken runs the pages must explain."""

from __future__ import annotations

import shutil
from pathlib import Path
from unittest import mock

import duckdb
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from explorer import artifacts
from explorer.config import CorpusSpec, IndexSpec, Profile
from explorer.runs import database_path
from precompute.cli import main as precompute_main
from precompute.cli import save_profile
from precompute import inject_stage
from precompute.corpus_stage import run_corpus_stage
from precompute.index_stage import run_index

HOOK = "blocks.0.hook_resid_post"  # sae-vis 0.3.7 fails (KeyError) at the last layer's resid_post
SAE_ID = "mini-sae"
UNINDEXED_SAE_ID = "unindexed-sae"
D_SAE = 48
INJECTED_RUN = "injected"
"""The indexed run with the token-injection test run on it (the other runs have no injection tables)."""
INJECT_ARGS = ("--candidates", "4", "--windows", "8", "--window-tokens", "16", "--top-tokens", "3",
               "--strategies", "prepend,append,bigram_before,trigram")
XSS_TOKENS = ('<script>alert("x")</script>', '<img src=x onerror="alert(1)">')


def save_random_sae(folder: Path, d_in: int = 64, seed: int = 0) -> None:
    torch.manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=D_SAE))
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.b_enc.fill_(-0.3)  # sparse-ish: most features off on most tokens
    sae.cfg.metadata.hook_name = HOOK
    sae.save_model(folder)


def build_indexed_run(run_dir: Path, model_dir: Path) -> Profile:
    """Corpus, profile, two SAEs (one indexed) and the database, in `run_dir`."""
    corpus = CorpusSpec(source="synthetic", n_traces=20, seed=0)  # phrases of six groups, "correction" among them
    profile = Profile(
        name=run_dir.name, model=str(model_dir), hook_name=HOOK, n_ctx=64, corpus=corpus,
        index=IndexSpec(top_k=5, context_before=6, context_after=3),
    )
    save_profile(profile, run_dir)
    run_corpus_stage(corpus, run_dir)
    save_random_sae(run_dir / artifacts.SAES_DIR / SAE_ID)
    run_index(profile, run_dir, sae_id=SAE_ID, batch_size=4, progress=False)
    save_random_sae(run_dir / artifacts.SAES_DIR / UNINDEXED_SAE_ID, seed=1)
    return profile


_BUILT: dict[str, Path] = {}


def indexed_runs_root(tmp_path_factory, model_dir: Path) -> Path:
    """A runs folder holding `mini` (indexed) and the broken runs, built once per test session and
    shared by the page tests and the browser test."""
    if "root" not in _BUILT:
        root = tmp_path_factory.mktemp("indexed-runs")
        build_indexed_run(root / "mini", model_dir)
        build_broken_runs(root, root / "mini")
        build_injected_run(root / INJECTED_RUN, root / "mini")
        _BUILT["root"] = root
    return _BUILT["root"]


def build_broken_runs(runs: Path, indexed: Path) -> None:
    """Beside the indexed run: `noindex` (no database), `corrupt` (a database file that is not one) and
    `xss` (the indexed run with markup for token strings)."""
    for name in ("noindex", "corrupt"):
        shutil.copytree(indexed, runs / name, ignore=shutil.ignore_patterns("explorer.duckdb*"))
    database_path(runs / "corrupt").write_bytes(b"this is not a duckdb file" * 100)
    shutil.copytree(indexed, runs / "xss", ignore=shutil.ignore_patterns("explorer.duckdb.lock"))
    con = duckdb.connect(str(database_path(runs / "xss")))
    try:  # every token string becomes markup: examples, quantile samples and the logit lens all show it
        con.execute("UPDATE vocabulary SET token = CASE WHEN token_id % 2 = 0 THEN ? ELSE ? END", list(XSS_TOKENS))
    finally:
        con.close()


def build_injected_run(run_dir: Path, indexed: Path) -> None:
    """A copy of the indexed run with `python -m precompute inject` run on it, at small settings. The
    stage cuts its windows from the documents held out of SAE training (2%, by a hash of the id), of
    which the mini corpus's 20 have none: here every document stands in as held out (the SAE is random)."""
    shutil.copytree(indexed, run_dir, ignore=shutil.ignore_patterns("explorer.duckdb.lock"))
    with mock.patch.object(inject_stage, "is_heldout", lambda doc_id: True):
        code = precompute_main(["inject", "--run", str(run_dir), "--sae", SAE_ID, *INJECT_ARGS])
    if code != 0:
        raise RuntimeError(f"precompute inject failed on {run_dir}")
