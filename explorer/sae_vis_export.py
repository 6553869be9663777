"""Export feature dashboards with sae-vis 0.3.7 (Callum McDougall's `sae_vis`), for comparison with ours.

sae-vis is an optional extra, installed with `pip install --no-deps -r requirements-sae-vis.txt`
(sae-vis 0.2.15, which pip resolves next to sae-lens 6 by default, re-initialises the SAE it wraps, so
its dashboards silently show a random SAE). This
module only adapts our objects to its API and calls it; the dashboards are sae-vis's own.

What sae-vis does with the tokens it is given:
- it runs the whole model (every layer) with the SAE spliced in at its hook, error term on, once per
  group of `minibatch_size_features` features;
- every position counts in its statistics (`feature_stats.max`, the histogram), BOS included, unless
  `seqpos_slice` cuts positions out (their activations are then left at zero). Our index never counts
  BOS/special tokens, so `exclude_bos=True` (the default) cuts position 0, where BOS sits, out of every
  row when any row starts with BOS. Rows must then start at a document start or lose their first
  token; `token_rows` builds such rows from our index's windows;
- its example sequences and the "MAX ACT" in the dashboard's title never come from the first
  `buffer[0] + 1` (6) or last `buffer[1]` (5) positions of a row: `max_activations` reads
  `feature_stats.max`, the maximum over every counted position.

Array names end in shape letters (`acts_BTF`: batch, tokens, features): docs/shapes.md.
"""

from __future__ import annotations

import copy
import os
import re
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from explorer.errors import ExplorerError

SAE_VIS_VERSION = "0.3.7"
INSTALL_HINT = (
    "install it with `pip install --no-deps -r requirements-sae-vis.txt` (sae-vis==0.3.7, no dependencies: "
    "its declared pins conflict with transformer-lens 3) and `pip install frozendict tabulate eindex-callum "
    "dataclasses-json matplotlib` (`make install` does both)"
)


class SaeVisExportError(ExplorerError, ValueError):
    """A sae-vis export that cannot run as asked; the message says what to change."""


def require_sae_vis():
    """sae-vis's `(SaeVisConfig, SaeVisData)`, or a `SaeVisExportError` that says how to install it."""
    from importlib import metadata

    try:
        version = metadata.version("sae-vis")
    except metadata.PackageNotFoundError:
        raise SaeVisExportError(f"sae-vis is not installed: {INSTALL_HINT}.") from None
    if not version.startswith("0.3."):
        raise SaeVisExportError(
            f"sae-vis {version} is installed, but this export needs {SAE_VIS_VERSION} (0.2.x re-initialises the "
            f"SAE's weights and shows a random SAE): {INSTALL_HINT}."
        )
    try:
        from sae_vis.data_config_classes import SaeVisConfig
        from sae_vis.data_storing_fns import SaeVisData
    except ImportError as err:
        raise SaeVisExportError(f"sae-vis {version} is installed but does not import ({err}): {INSTALL_HINT}.") from None
    return SaeVisConfig, SaeVisData


def sae_vis_available() -> bool:
    try:
        require_sae_vis()
    except SaeVisExportError:
        return False
    return True


# --- inputs ---------------------------------------------------------------------------------------


def check_features(features: Iterable[int], d_sae: int) -> list[int]:
    """The feature ids as a list without repeats (first occurrence kept), or an error naming the bad ones."""
    feats = [int(f) for f in features]
    if not feats:
        raise SaeVisExportError("No features to export: name at least one feature id.")
    bad = [f for f in feats if not 0 <= f < d_sae]
    if bad:
        raise SaeVisExportError(f"Unknown feature id(s) {bad}: this SAE has {d_sae} features (ids 0 to {d_sae - 1}).")
    return list(dict.fromkeys(feats))


def check_tokens(tokens_BT: Tensor, d_vocab: int | None = None) -> Tensor:
    if not isinstance(tokens_BT, Tensor) or tokens_BT.ndim != 2:
        raise SaeVisExportError("Tokens must be a 2-D tensor [rows, positions] of token ids.")
    if tokens_BT.numel() == 0:
        raise SaeVisExportError("No tokens to run sae-vis on: the token set is empty.")
    tokens_BT = tokens_BT.long()
    if d_vocab is not None and (int(tokens_BT.min()) < 0 or int(tokens_BT.max()) >= d_vocab):
        raise SaeVisExportError(f"Token ids must lie in [0, {d_vocab}) for this model.")
    return tokens_BT


def token_rows(windows: Sequence[Any], row_len: int, max_rows: int | None = None) -> Tensor:
    """A rectangular `[rows, row_len]` tensor from our index's windows (`explorer.feature_index.Window`):
    the first `row_len` tokens of each window at least that long, in context-id order. A window's
    prefix has the same activations as in the index (attention is causal)."""
    rows = [np.asarray(w.token_ids[:row_len]) for w in windows if len(w.token_ids) >= row_len]
    if max_rows is not None:
        rows = rows[:max_rows]
    if not rows:
        longest = max((len(w.token_ids) for w in windows), default=0)
        raise SaeVisExportError(
            f"No context window has {row_len} tokens (the longest has {longest}); use a shorter row length."
        )
    return torch.from_numpy(np.stack(rows)).long()


# --- the SAE as sae-vis expects it ----------------------------------------------------------------


def _hook_layer(hook_name: str) -> int:
    match = re.match(r"blocks\.(\d+)\.", hook_name)
    if not match:
        raise SaeVisExportError(f"sae-vis needs a hook inside a block (`blocks.N.…`), not {hook_name!r}.")
    return int(match.group(1))


def adapt_sae(sae, hook_name: str):
    """A shallow copy of a sae_lens 6 SAE with the sae_lens 5 config fields sae-vis 0.3.7 reads
    (`cfg.hook_name`, `cfg.hook_layer`). Weights are shared; the caller's SAE and config are untouched."""
    adapted = copy.copy(sae)  # shares parameters and submodules; own __dict__
    cfg = copy.copy(sae.cfg)
    cfg.metadata = copy.copy(sae.cfg.metadata)
    cfg.metadata.hook_name = hook_name
    cfg.hook_name = hook_name
    cfg.hook_layer = _hook_layer(hook_name)
    adapted.cfg = cfg
    return adapted


# --- running sae-vis ------------------------------------------------------------------------------


def compute_sae_vis_data(
    model,
    sae,
    hook_name: str,
    tokens_BT: Tensor,
    features: Iterable[int],
    *,
    minibatch_size_features: int = 64,
    minibatch_size_tokens: int = 16,
    exclude_bos: bool = True,
    verbose: bool = False,
):
    """sae-vis's `SaeVisData` for `features` over `tokens_BT` (see the module docstring for what it counts)."""
    SaeVisConfig, SaeVisData = require_sae_vis()
    from sae_vis import data_fetching_fns

    feats = check_features(features, int(sae.cfg.d_sae))
    tokens_BT = check_tokens(tokens_BT, int(model.cfg.d_vocab))
    model_device = next(model.parameters()).device
    if torch.device(data_fetching_fns.device).type != model_device.type:
        raise SaeVisExportError(
            f"sae-vis runs on {data_fetching_fns.device} (chosen when it was imported) but the model is on "
            f"{model_device}: load the model on {data_fetching_fns.device}."
        )
    bos = getattr(model.tokenizer, "bos_token_id", None) if model.tokenizer is not None else None
    skip_first = exclude_bos and bos is not None and bool((tokens_BT[:, 0] == bos).any())
    cfg = SaeVisConfig(
        features=feats,
        minibatch_size_features=minibatch_size_features,
        minibatch_size_tokens=minibatch_size_tokens,
        seqpos_slice=(1, None, None) if skip_first else (None, None, None),
    )
    _fit_top_group(cfg, tokens_BT.shape)
    adapted = adapt_sae(sae, hook_name)
    # Attaching the SAE renames its hook points after their place in the model; put the names back.
    names = {m: m.name for m in sae.modules() if hasattr(m, "name")}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Setting use_error_term directly", category=DeprecationWarning)
            # eindex indexes with a list of tensors, which torch (2.13 still) reads as a tuple, with a warning.
            warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
            return SaeVisData.create(sae=adapted, model=model, tokens=tokens_BT, cfg=cfg, verbose=verbose)
    finally:
        for module, name in names.items():
            module.name = name


def _fit_top_group(cfg, shape: torch.Size) -> None:
    """sae-vis picks its top examples greedily, at least `max(buffer)` + 1 positions apart within a
    row, away from the buffer at either end, and fails (IndexError) when it runs out of positions
    before `top_acts_group_size`. Shrink that group to what the rows surely hold."""
    seq_cfg = cfg.feature_centric_layout.seq_cfg
    if seq_cfg is None or seq_cfg.buffer is None:
        return
    n_rows, row_len = shape
    before, after = seq_cfg.buffer
    usable = row_len - (before + 1) - after
    if usable <= 0:
        raise SaeVisExportError(
            f"Rows of {row_len} tokens are too short for sae-vis: it shows examples with {before} tokens before "
            f"and {after} after, so rows need at least {before + after + 2} tokens."
        )
    spread = 2 * max(before, after) + 1  # positions one greedy pick can rule out
    capacity = n_rows * -(-usable // spread)
    seq_cfg.top_acts_group_size = min(seq_cfg.top_acts_group_size, capacity)


def max_activations(data) -> dict[int, float]:
    """Each exported feature's maximum activation as sae-vis computed it (`feature_stats.max`, in the
    order sae-vis processed the features: its `cfg.features`)."""
    feats = list(data.cfg.features)
    maxes = data.feature_stats.max
    if len(maxes) != len(feats):
        raise RuntimeError(f"sae-vis returned {len(maxes)} maxima for {len(feats)} features")
    return {f: float(m) for f, m in zip(feats, maxes)}


def _save_html(data, path: Path) -> None:
    data.save_feature_centric_vis(str(path), feature=min(data.feature_data_dict))


def dashboards_html(data) -> str:
    """The feature-centric HTML page of a `SaeVisData` (one page, a dropdown over its features)."""
    with tempfile.TemporaryDirectory(prefix="sae_vis_") as tmp:
        path = Path(tmp) / "dashboards.html"
        _save_html(data, path)
        return path.read_text(encoding="utf-8")


def export_feature_dashboards(model, sae, hook_name: str, tokens_BT: Tensor, features: list[int], **kwargs) -> str:
    """sae-vis's feature-centric HTML for `features` over `tokens_BT` (kwargs: `compute_sae_vis_data`'s)."""
    return dashboards_html(compute_sae_vis_data(model, sae, hook_name, tokens_BT, features, **kwargs))


def write_html_atomic(data, out_path: Path) -> Path:
    """Write a `SaeVisData`'s HTML to `out_path` atomically (a temporary sibling, then `os.replace`)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        _save_html(data, Path(tmp))
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out_path


def export_to_file(
    model, sae, hook_name: str, tokens_BT: Tensor, features: list[int], out_path: Path, **kwargs
) -> tuple[Path, dict[int, float]]:
    """Export the dashboards to `out_path` (atomically); returns the path and each feature's max activation."""
    data = compute_sae_vis_data(model, sae, hook_name, tokens_BT, features, **kwargs)
    return write_html_atomic(data, out_path), max_activations(data)
