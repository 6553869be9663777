"""The configuration: profiles, everything one run needs, named once.

A profile names the model, the hook, the corpus, the SAE recipe and the index and report settings. Each
run saves its profile (`profile.json`) with its outputs, so a run folder says how it was made
(`explorer.runs.read_profile` reads it back). The library takes its settings from here; `precompute`
builds runs from a profile and the command line's overrides.

- `demo`: a miniature Qwen2 trained here, on the CPU, on the project's own synthetic corpus.
- `demo-standard`: the same, with the original notebook's standard L1 SAE instead of a Matryoshka one.
- `deepseek-r1-distill-qwen-1.5b`: the original notebook's recipe, field for field
  (see docs/profiles.md for where each number comes from).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from explorer.artifacts import DEMO_MODEL


@dataclass(frozen=True)
class CorpusSpec:
    """Where the traces come from."""

    source: str = "synthetic"
    """`synthetic` (the project's generator), a local file/folder, or a hub dataset id."""
    n_traces: int = 20_000
    """Synthetic: how many traces to generate. Imported corpora: the most to read (0 = all)."""
    seed: int = 0
    """Synthetic generator seed; also the balanced sampler's seed."""
    balanced: int = 0
    """Keep only a balanced sample of this many traces (the notebook's sampler: half correct traces that
    backtrack, half correct traces that don't, unique problems); 0 keeps every trace."""


@dataclass(frozen=True)
class DemoLMSpec:
    """The demo model: a miniature Qwen2ForCausalLM trained on the corpus (demo profiles only)."""

    vocab_size: int = 2048
    hidden_size: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    intermediate_size: int = 512
    context: int = 256
    """Training context length in tokens (documents are packed, separated by EOS)."""
    batch_size: int = 8
    steps: int = 1200
    lr: float = 3e-3
    seed: int = 0
    time_budget_s: float = 140.0
    """Training stops here even if `steps` are not done: the demo must build in minutes on 2 cores."""
    plant_weight: float = 0.0
    """Weight of the auxiliary loss that plants a backtracking feature (0 = none): at `plant_hook`, the
    activations' projection on a fixed random direction is trained towards `plant_value` on the tokens
    of backtracking phrases and 0 elsewhere (docs/profiles.md, "The planted backtracking feature")."""
    plant_hook: str = "blocks.1.hook_mlp_out"
    plant_value: float = 8.0
    plant_lead: int = 0
    """Also plant the feature on this many tokens before each phrase."""
    plant_value_before: float | None = None
    """The target on those tokens (None: `plant_value`)."""
    plant_label: str | None = None
    """A label set of the run (e.g. "tag:uncertainty_management") whose positive spans get a second plant
    (None = none): with the same weight and hook, the projection on a second fixed random direction,
    orthogonal to the first, is trained towards `plant_label_value` on every token of those spans and 0
    elsewhere (docs/profiles.md, "The planted backtracking feature"). A profile saved before this field reads
    back with None."""
    plant_label_value: float = 4.0
    """The second plant's target inside the label set's spans."""


@dataclass(frozen=True)
class SAERecipe:
    """An SAE training recipe, in the notebook's terms. `explorer.sae_training.build_runner_config` maps it
    onto sae_lens 6 (docs/sae.md)."""

    architecture: Literal["standard", "topk", "matryoshka_batchtopk"] = "standard"
    expansion_factor: int = 16
    l1_coefficient: float = 4.0
    """Standard only: the L1 sparsity penalty."""
    k: int | None = None
    """TopK and Matryoshka BatchTopK: active features per token (on average over a batch for BatchTopK)."""
    matryoshka_widths: tuple[int, ...] = ()
    """Matryoshka only: the nested dictionary sizes, increasing; the last is the whole dictionary
    (`d_in * expansion_factor`). Each prefix of features is trained to reconstruct the input alone, which
    keeps general features (one that fires across a whole phrase) from being absorbed into token-specific
    ones (Bussmann et al. 2025, "Learning Multi-Level Features with Matryoshka SAEs")."""
    lr: float = 3e-5
    lr_scheduler_name: str = "cosineannealingwarmrestarts"
    lr_warm_up_fraction: float = 0.05
    lr_decay_fraction: float = 0.2
    l1_warm_up_fraction: float = 0.1
    training_steps: int = 10_000
    train_batch_size_tokens: int = 2048
    context_size: int = 512
    normalize_activations: str = "expected_average_only_in"
    scale_sparsity_penalty_by_decoder_norm: bool = True
    dtype: str = "float32"
    seed: int = 42
    n_checkpoints: int = 2
    apply_b_dec_to_input: bool = False
    """Subtract the decoder bias from the input before encoding. The notebook set False (sae_lens's
    default, then and now, is True)."""
    prepend_bos: bool = False
    """How training contexts are packed. False, the notebook's: documents back to back with nothing
    between them, so a context starts wherever the last one stopped (sae_lens 3-4's packing with
    `prepend_bos=False`). True: every context starts with BOS, documents are separated by BOS and each ends
    with EOS (sae_lens 6's default packing)."""
    n_batches_in_buffer: int = 32
    """Model batches in sae_lens's shuffling buffer."""
    store_batch_size_prompts: int = 8
    """Contexts per model forward pass while collecting activations."""
    b_dec_init_method: Literal["zeros"] = "zeros"
    """The decoder bias starts at zero (sae_lens 6 has no other start; "mean" and "geometric_median" raise)."""
    decoder_heuristic_init: bool = True
    """True, the notebook's (sae_lens 3-4's `decoder_heuristic_init`): decoder entries drawn uniformly from
    [0, 1), each row scaled to norm 0.1. False: sae_lens 6's own start, kaiming-uniform entries (symmetric
    about 0), each row scaled to norm 0.1. docs/sae.md says how the two differ."""
    init_encoder_as_decoder_transpose: bool = True
    """The encoder starts as the decoder's transpose (sae_lens 6 always does this; False raises)."""
    normalize_sae_decoder: bool = False
    """Renormalise decoder rows to unit norm during training (sae_lens 6's standard SAE never does; True
    raises)."""
    mse_loss_normalization: None = None
    """The reconstruction loss is the squared error summed over `d_in`, averaged over tokens, with no
    normalisation (sae_lens 6's only choice)."""
    dead_feature_threshold: float = 1e-4
    """Firing frequency under which sae_lens counts a feature as dead in its sparsity logs."""
    feature_sampling_window: int = 1000
    """Steps over which sae_lens accumulates the feature sparsity it logs."""
    dead_feature_window: int = 1000
    """Steps without firing after which a feature counts as dead (TopK's auxiliary loss revives those)."""
    use_ghost_grads: bool = False
    """Ghost gradients for dead features (sae_lens 6 has none; True raises)."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    lp_norm: float = 1.0
    """Standard only: the norm of the sparsity penalty (1 = L1)."""
    n_batches_for_norm_estimate: int = 1000
    """Training batches `expected_average_only_in` averages activation norms over, before training."""
    wandb_log_frequency: int = 30
    """With `--wandb`: log every this many steps."""
    eval_every_n_wandb_logs: int = 20
    """With `--wandb`: run sae_lens's evaluation every this many logs."""

    @property
    def training_tokens(self) -> int:
        return self.training_steps * self.train_batch_size_tokens


@dataclass(frozen=True)
class IndexSpec:
    """Feature-index settings (the streaming pass)."""

    top_k: int = 32
    context_before: int = 32
    context_after: int = 8
    n_tokens: int = 0
    """Tokens to index; 0 = the whole corpus."""
    token_capacity: int = 128
    """Token ids the token-mass sketch tracks per feature (feature_token_stats): exact for a feature
    that fires on at most this many distinct tokens. 50 MB of state at 24,576 features."""
    token_top_k: int = 16
    """Top tokens by mean activation stored per feature."""
    token_min_count: int = 3
    """Occurrences a token needs to be ranked by its mean."""


@dataclass(frozen=True)
class InjectionSpec:
    """Token-injection test settings (`python -m precompute inject`, the last stage of `build`;
    docs/injection.md). The command line's flags override them."""

    candidates: int = 64
    """Top features by each ranking score of the Candidates page, in union."""
    top_tokens: int = 10
    """Tokens (and n-grams of each kind) per candidate."""
    windows: int = 64
    """Baseline windows and target windows: this many of each."""
    window_tokens: int = 64
    """Tokens per window, BOS included."""
    n_inject: int = 3
    """Tokens a simple strategy injects per window."""
    n_sequences: int = 2
    """N-grams a contextual strategy injects per window."""
    seed: int = 0


@dataclass(frozen=True)
class ReportSpec:
    """How much held-out text the SAE report reads (docs/sae.md, "The training report")."""

    n_tokens: int = 32_768
    """Tokens for MSE, explained variance and CE loss recovered (three full forwards per token)."""
    n_sparsity_tokens: int = 2_000_000
    """Tokens for L0 and the dead and dense shares (a forward stopped at the hook, and the SAE's encoder):
    a feature that fires once in 100,000 tokens looks dead on 32,768 tokens three times in four."""


@dataclass(frozen=True)
class Profile:
    """One named configuration of the whole pipeline."""

    name: str
    model: str
    """A hub id or a local HF directory. `demo` means the model `train-lm` writes into the run folder."""
    hook_name: str
    """The hook of the run's main SAE: the one the app, the index's `--sae` default and the checks take."""
    n_ctx: int
    """Context length the model runs with."""
    corpus: CorpusSpec = field(default_factory=CorpusSpec)
    demo_lm: DemoLMSpec | None = None
    sae: SAERecipe = field(default_factory=SAERecipe)
    index: IndexSpec = field(default_factory=IndexSpec)
    report: ReportSpec = field(default_factory=ReportSpec)
    injection: InjectionSpec = field(default_factory=InjectionSpec)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """The model's dtype wherever it runs (SAE training's activations, the report, the index, steering,
    Live), and the SAE's at inference; `--dtype` on the command line. The SAE trains in `sae.dtype`. On
    CUDA, float32 matmuls use TF32."""
    extra_hooks: tuple[str, ...] = ()
    """Further hooks an SAE is trained at, with the same recipe, after the one at `hook_name` (`build` and
    `train-sae` without `--hook`; `index` then indexes each): the Candidates page's "Across SAEs" table
    compares them. A profile.json saved before this field reads back with none."""

    @property
    def trains_own_model(self) -> bool:
        return self.demo_lm is not None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        data = dict(data)
        data["corpus"] = CorpusSpec(**data.get("corpus", {}))
        data["demo_lm"] = DemoLMSpec(**data["demo_lm"]) if data.get("demo_lm") else None
        sae = {**SAE_FIELDS_ADDED_LATER, **data.get("sae", {})}
        sae["matryoshka_widths"] = tuple(sae["matryoshka_widths"])  # a JSON list
        data["sae"] = SAERecipe(**sae)
        data["index"] = IndexSpec(**data.get("index", {}))
        # A profile saved before the report had its own settings measured everything on 32,768 tokens.
        data["report"] = ReportSpec(**data.get("report", {"n_tokens": 32_768, "n_sparsity_tokens": 32_768}))
        data["extra_hooks"] = tuple(data.get("extra_hooks", ()))  # a JSON list; absent before the field
        data["injection"] = InjectionSpec(**data.get("injection", {}))  # absent before the inject stage
        return cls(**data)

    @classmethod
    def load(cls, path: Path) -> Profile:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def with_dataset(self, dataset: str | None) -> Profile:
        """The same profile reading its corpus from `dataset` (a path or hub id) instead."""
        if not dataset:
            return self
        return dataclasses.replace(self, corpus=dataclasses.replace(self.corpus, source=str(dataset), n_traces=0))



SAE_LENS_6_DEFAULTS: dict[str, Any] = {
    "apply_b_dec_to_input": True,
    "prepend_bos": True,
    "n_batches_in_buffer": 20,
    "store_batch_size_prompts": 32,
    "decoder_heuristic_init": False,
    "dead_feature_threshold": 1e-8,
    "feature_sampling_window": 2000,
    "wandb_log_frequency": 10,
    "eval_every_n_wandb_logs": 100,
}
"""sae_lens 6's own values of the recipe fields where the notebook set others (the demo profiles use them)."""

SAE_FIELDS_ADDED_LATER: dict[str, Any] = {
    "matryoshka_widths": (),
    "prepend_bos": True,
    "b_dec_init_method": "zeros",
    "decoder_heuristic_init": False,
    "init_encoder_as_decoder_transpose": True,
    "normalize_sae_decoder": False,
    "mse_loss_normalization": None,
    "dead_feature_threshold": 1e-8,
    "feature_sampling_window": 2000,
    "use_ghost_grads": False,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "lp_norm": 1.0,
    "wandb_log_frequency": 10,
    "eval_every_n_wandb_logs": 100,
}
"""Recipe fields added after runs were saved, with the value those runs trained with (sae_lens 6's): a
saved profile without them reads back as it was, and an SAE trained before them stays current."""


DEMO = Profile(
    name="demo",
    model=DEMO_MODEL,
    hook_name="blocks.1.hook_mlp_out",
    n_ctx=512,
    corpus=CorpusSpec(source="synthetic", n_traces=20_000, seed=0),
    # The demo LM carries a planted backtracking feature at the SAE's hook (docs/profiles.md, "The planted
    # backtracking feature"): the planted-feature check then tests whether the SAE and the index recover it.
    demo_lm=DemoLMSpec(
        plant_weight=1.0, plant_hook="blocks.1.hook_mlp_out", plant_value=4.0, plant_lead=1, plant_value_before=8.0,
        # The whole correction line (both sentences of "Wait, that's not right. 17 * 4 = 68, not 64."), so that
        # a feature carries uncertainty_management at sentence level, not only the phrase.
        plant_label="tag:uncertainty_management", plant_label_value=4.0,
    ),
    sae=SAERecipe(
        # Matryoshka BatchTopK: every prefix of the dictionary (16, 64, 256, all 512 features) is trained to
        # reconstruct alone, so a feature that spans whole phrases is not absorbed into token features, as
        # it is in the standard L1 SAE of `demo-standard` (docs/sae.md, "The planted feature").
        architecture="matryoshka_batchtopk",
        expansion_factor=4,
        k=16,
        matryoshka_widths=(16, 64, 256, 512),
        l1_coefficient=4.0,
        lr=1e-3,
        lr_scheduler_name="constant",
        lr_warm_up_fraction=0.05,
        lr_decay_fraction=0.2,
        l1_warm_up_fraction=0.1,
        # 768k tokens: on 2 cores the model's forward pass dominates, and smaller batches learn more per
        # token (timings: docs/results.md).
        training_steps=1_500,
        train_batch_size_tokens=512,
        context_size=256,
        n_checkpoints=0,
        seed=42,
        n_batches_for_norm_estimate=50,
        # sae_lens 6's defaults, where the notebook's recipe differs (docs/profiles.md): the demo SAE was
        # tuned with these, and the planted-feature checks hold with them.
        **SAE_LENS_6_DEFAULTS,
    ),
    # 400k tokens: every feature's statistics settle, and the pass takes well under a minute on 2 cores
    # (docs/benchmarks.md).
    index=IndexSpec(top_k=32, context_before=32, context_after=8, n_tokens=400_000),
    # The demo's held-out documents hold fewer tokens than this: the sparsity figures read all of them.
    report=ReportSpec(n_tokens=32_768, n_sparsity_tokens=200_000),
    # 8 per ranking score (14-18 candidates in union) and 32 windows of each kind: 8-10 s on 2 idle cores
    # (README, "Set up"); the real profile tests 64 per score on 64 windows of each kind.
    injection=InjectionSpec(candidates=8, windows=32),
    # A second SAE at the other layer, so that the Candidates page's "Across SAEs" table shows which layer
    # carries each label set best (README, "Set up", says what it adds to the build).
    extra_hooks=("blocks.0.hook_mlp_out",),
)

DEMO_STANDARD = dataclasses.replace(
    DEMO,
    name="demo-standard",
    # The original notebook's SAE architecture (standard ReLU, L1 penalty), 1,024 features, on the same
    # corpus and demo LM: it splits the planted feature over near-duplicate features that each cover part
    # of the phrases (feature absorption), so its top candidate stays below the planted-feature check.
    sae=dataclasses.replace(DEMO.sae, architecture="standard", expansion_factor=8, k=None, matryoshka_widths=()),
)

DEEPSEEK_R1_DISTILL_QWEN_1_5B = Profile(
    name="deepseek-r1-distill-qwen-1.5b",
    model="deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
    hook_name="blocks.21.hook_mlp_out",
    n_ctx=2048,
    corpus=CorpusSpec(source="open-r1/OpenR1-Math-220k", n_traces=0, seed=0),
    demo_lm=None,
    sae=SAERecipe(),  # the defaults are the notebook's recipe
    # 40M tokens, about 3% of OpenR1-Math-220k: well under an hour's index on one H100 (docs/scaling.md,
    # "Budget").
    index=IndexSpec(top_k=32, context_before=32, context_after=8, n_tokens=40_000_000),
)

PROFILES: dict[str, Profile] = {p.name: p for p in (DEMO, DEMO_STANDARD, DEEPSEEK_R1_DISTILL_QWEN_1_5B)}


def get_profile(name: str) -> Profile:
    """The built-in profile called `name`, or a profile saved as JSON at path `name`."""
    if name in PROFILES:
        return PROFILES[name]
    path = Path(name)
    if path.is_file():
        return Profile.load(path)
    known = ", ".join(sorted(PROFILES))
    raise ValueError(f"Unknown profile {name!r}. Built-in profiles: {known}; or pass a saved profile.json.")
