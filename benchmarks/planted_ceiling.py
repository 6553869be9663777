"""How far the planted-feature check (tests/test_planted_feature.py) can get on a built run.

    python benchmarks/planted_ceiling.py [--run runs/demo] [--hooks blocks.1.hook_resid_post,...]

The check asks the top candidate by AUROC to separate the backtracking tokens of held-out synthetic
traces at 0.9. This prints, on the same held-out traces (seed 20261127, 300 traces) and a second set
of traces for choosing (seed 777, never the held-out ones):

- for each hook, what one direction of the activations reaches:
  - `mean-diff`: the difference of the phrase tokens' and the other tokens' means, the direction an
    unsupervised dictionary can at best hope to find when phrases are a small share of tokens;
    raw projection, and thresholded (ReLU) so that it is non-zero on 1% / 5% of the other tokens,
    which is how a sparse SAE latent scores (ties at zero count one half);
  - `whitened`: the mean difference in whitened coordinates (Fisher's linear discriminant, the same
    three ways), the direction a dictionary trained on whitened activations (sae_lens's
    `normalize_activations="covariance_whitening"`) would need;
  - `probe`: a logistic-regression direction (supervised), the same three ways: what the model's
    activations carry at all;
- for each SAE of the run on those hooks: its top latent by AUROC on the choosing traces (as the
  index ranks, on tokens other than the held-out ones), that latent's held-out AUROC, the share of
  other tokens it is non-zero on, and the best held-out AUROC among its top 10.

Figures are token-level AUROCs over the notebook's six groups, as in the check (`--positives all`: over
every labelled group, interjections included).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from explorer.labels import token_group_ids  # noqa: E402
from explorer.lexicon import GROUPS, NOTEBOOK_GROUPS  # noqa: E402
from explorer.model_loading import load_model  # noqa: E402
from explorer.sae_loading import load_sae, stop_layer_for_hook  # noqa: E402
from explorer.synthetic import generate_traces  # noqa: E402

HELD_OUT_SEED = 20261127  # the check's
CHOOSING_SEED = 777
DEFAULT_HOOKS = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_mid", "blocks.1.hook_resid_post", "blocks.1.hook_mlp_out")


def hook_activations(
    model, hooks: list[str], seed: int, n_traces: int, groups: tuple[str, ...] = NOTEBOOK_GROUPS
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each hook's activations on the text tokens of `n_traces` synthetic traces, and their labels
    (whether a token is in a phrase of one of `groups`)."""
    tokenizer = model.tokenizer
    special = set(tokenizer.all_special_ids)
    positive_ids = [GROUPS.index(g) for g in groups]
    stop = max(stop_layer_for_hook(h) or model.cfg.n_layers for h in hooks)
    acts: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    labels = []
    for trace in generate_traces(n_traces, seed=seed):
        encoding = tokenizer(trace.record.text, return_offsets_mapping=True)
        ids = list(encoding["input_ids"])[: model.cfg.n_ctx]
        offsets = [tuple(o) for o in encoding["offset_mapping"]][: len(ids)]
        valid = torch.tensor([i not in special for i in ids])
        with torch.no_grad():
            _, cache = model.run_with_cache(torch.tensor([ids]), names_filter=lambda n: n in hooks, stop_at_layer=stop)
        for h in hooks:
            acts[h].append(cache[h][0][valid])
        labels.append(torch.from_numpy(np.isin(token_group_ids(offsets, trace.phrase_spans), positive_ids))[valid])
    return {h: torch.cat(a) for h, a in acts.items()}, torch.cat(labels)


def auroc_per_column(scores_NF: torch.Tensor, labels_N: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """P(positive > negative) + 1/2 P(equal) for every column, by sorting the negatives."""
    pos, neg = scores_NF[labels_N], scores_NF[~labels_N]
    out = []
    for start in range(0, scores_NF.shape[1], chunk):
        neg_FN = neg[:, start : start + chunk].T.contiguous().sort(dim=1).values
        pos_FP = pos[:, start : start + chunk].T.contiguous()
        below = torch.searchsorted(neg_FN, pos_FP, right=False).double()
        not_above = torch.searchsorted(neg_FN, pos_FP, right=True).double()
        out.append(((below + not_above) / 2).sum(dim=1) / (pos_FP.shape[1] * neg_FN.shape[1]))
    return torch.cat(out)


def logistic_direction(x_ND: torch.Tensor, labels_N: torch.Tensor) -> torch.Tensor:
    """A logistic-regression direction (standardised inputs, small L2), in the activations' units."""
    mean, std = x_ND.mean(0), x_ND.std(0) + 1e-6
    z = (x_ND - mean) / std
    w = torch.zeros(x_ND.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    optimiser = torch.optim.LBFGS([w, b], max_iter=300)

    def closure():
        optimiser.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, labels_N.float()) + 1e-4 * (w**2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return w.detach() / std


def direction_figures(direction_D: torch.Tensor, held_out_ND: torch.Tensor, labels_N: torch.Tensor) -> str:
    """Raw AUROC, and AUROC thresholded to fire on 1% and 5% of the other tokens."""
    projection = held_out_ND @ direction_D
    figures = [f"{float(auroc_per_column(projection[:, None], labels_N)):.3f}"]
    for share in (0.01, 0.05):
        threshold = projection[~labels_N].quantile(1 - share)
        sparse = torch.relu(projection - threshold)
        figures.append(f"{float(auroc_per_column(sparse[:, None], labels_N)):.3f}")
    return " / ".join(figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "demo")
    parser.add_argument("--hooks", help=f"comma-separated (default: {','.join(DEFAULT_HOOKS)} and the run's SAE hooks)")
    parser.add_argument("--n-traces", type=int, default=300)
    parser.add_argument(
        "--positives", choices=("notebook", "all"), default="notebook",
        help="which phrase tokens count as backtracking: the notebook's six groups (the check's), or every "
        "labelled group, interjections included",
    )
    args = parser.parse_args()
    groups = NOTEBOOK_GROUPS if args.positives == "notebook" else GROUPS

    saes = [load_sae(folder) for folder in sorted((args.run / "saes").glob("*")) if (folder / "cfg.json").is_file()]
    hooks = args.hooks.split(",") if args.hooks else sorted(set(DEFAULT_HOOKS) | {s.hook_name for s in saes})
    model = load_model(args.run / "model", device="cpu")
    choosing, choosing_labels = hook_activations(model, hooks, CHOOSING_SEED, args.n_traces, groups)
    held_out, held_out_labels = hook_activations(model, hooks, HELD_OUT_SEED, args.n_traces, groups)
    print(f"{args.run}: {int(held_out_labels.sum())} backtracking tokens of {len(held_out_labels)} held-out tokens")
    print("one direction, held-out AUROC raw / non-zero on 1% of other tokens / on 5%:")
    for hook in hooks:
        x, labels = choosing[hook], choosing_labels
        mean_diff = x[labels].mean(0) - x[~labels].mean(0)
        covariance = torch.cov(x.T.double()) + 1e-3 * torch.eye(x.shape[1], dtype=torch.float64)
        whitened = torch.linalg.solve(covariance, mean_diff.double()).float()
        probe = logistic_direction(x, labels)
        print(
            f"  {hook:28s} mean-diff {direction_figures(mean_diff, held_out[hook], held_out_labels)}"
            f"   whitened {direction_figures(whitened, held_out[hook], held_out_labels)}"
            f"   probe {direction_figures(probe, held_out[hook], held_out_labels)}"
        )
    for loaded in saes:
        if loaded.hook_name not in hooks:
            continue
        with torch.no_grad():
            choose_F = auroc_per_column(loaded.sae.encode(choosing[loaded.hook_name]).float(), choosing_labels)
            acts_NF = loaded.sae.encode(held_out[loaded.hook_name]).float()
        held_F = auroc_per_column(acts_NF, held_out_labels)
        top = choose_F.argsort(descending=True)[:10]
        density = float((acts_NF[~held_out_labels][:, top[0]] > 0).float().mean())
        print(
            f"SAE {Path(str(loaded.source)).name}: top latent {int(top[0])} "
            f"(choosing {float(choose_F[top[0]]):.3f}), held-out {float(held_F[top[0]]):.3f}, non-zero on "
            f"{density:.0%} of other tokens; best held-out of its top 10: {float(held_F[top].max()):.3f}"
        )


if __name__ == "__main__":
    main()
