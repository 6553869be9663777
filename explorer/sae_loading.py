"""Load any SAE with one function, check it against the model, and name it with an SAE id.

`load_sae(source)` takes:

- a sae_lens output folder (`cfg.json` + `sae_weights.safetensors`, as training writes it);
- a checkpoint folder, `<checkpoints>/<run id>/<tokens>/` (the layout the notebook loaded). Checkpoints
  written before training ends hold weights that expect *normalised* inputs when the SAE was trained
  with `normalize_activations="expected_average_only_in"`; the factor lives next to them
  (`activation_scaler.json` in sae_lens 6, `activations_store_state.safetensors` in sae_lens 4-5) and
  is folded into the weights here, as sae_lens folds it at the end of training;
- a sae_lens pretrained release, written `<release>:<sae id>` (e.g.
  `gpt2-small-res-jb:blocks.8.hook_resid_pre`). Offline, this fails at once with a clear message
  instead of retrying the network for half a minute.

`check_sae_fits_model(sae, model, hook_name)` fails with a message naming both sides when the SAE was
trained on another hook or another width (`d_in`).

SAE ids: every SAE in a run has an id that keys everything downstream (its folder `saes/<sae_id>/`,
its rows in the run's DuckDB file). A trained SAE's id is derived from what makes it different from its
siblings, `<hook>-<architecture>[k]-<d_sae>`, e.g. `blocks.1.hook_mlp_out-standard-1024` or
`blocks.21.hook_mlp_out-topk32-24576`; a user may give any name of letters, digits, `.`, `_` and `-`.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple
from urllib.parse import urlparse

import torch

from explorer.errors import ExplorerError

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

logger = logging.getLogger(__name__)

SAE_CFG_FILE = "cfg.json"
SAE_WEIGHTS_FILE = "sae_weights.safetensors"
# Where a checkpoint keeps the input normalisation its weights expect (sae_lens 6, and sae_lens 4-5).
ACTIVATION_SCALER_FILE = "activation_scaler.json"
LEGACY_STORE_STATE_FILE = "activations_store_state.safetensors"

SAE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
HUB_PROBE_TIMEOUT_S = 3.0


class SAELoadError(ExplorerError, RuntimeError):
    """An SAE could not be loaded or does not fit the model. The message says what to do."""


class LoadedSAE(NamedTuple):
    """An SAE ready for inference, and what is known about where it came from."""

    sae: SAE
    hook_name: str | None
    """The hook the SAE was trained on (`sae.cfg.metadata.hook_name`), if its config says."""
    architecture: str
    d_in: int
    d_sae: int
    k: int | None
    """TopK SAEs: active features per token."""
    source: str
    """The folder (absolute path) or `<release>:<sae id>` it was loaded from."""
    source_kind: Literal["folder", "checkpoint", "pretrained"]
    notes: tuple[str, ...]
    """What the loader did or could not do (a folded normalisation factor, a missing one)."""


# --- SAE ids --------------------------------------------------------------------------------------


def make_sae_id(hook_name: str, architecture: str, d_sae: int, k: int | None = None) -> str:
    """The id of a trained SAE: `<hook>-<architecture>[k]-<d_sae>`."""
    arch = f"{architecture}{k}" if k is not None and "topk" in architecture else architecture
    return validate_sae_id(f"{hook_name}-{arch}-{d_sae}")


def validate_sae_id(sae_id: str) -> str:
    """`sae_id` unchanged if it is safe as a folder name and in a URL; else a ValueError."""
    if not SAE_ID_PATTERN.match(sae_id) or sae_id in {".", ".."}:
        raise ValueError(
            f"SAE id {sae_id!r} is not allowed: use 1-128 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit."
        )
    return sae_id


def default_sae_id(loaded: LoadedSAE, hook_name: str | None = None) -> str:
    """The id a loaded SAE gets unless the user names it: the same scheme as a trained one."""
    hook = hook_name or loaded.hook_name
    if hook is None:
        raise SAELoadError(f"The SAE from {loaded.source} does not say which hook it reads; pass the hook name.")
    return make_sae_id(hook, loaded.architecture, loaded.d_sae, loaded.k)


# --- loading --------------------------------------------------------------------------------------


def load_sae(
    source: str | Path,
    *,
    device: str = "cpu",
    dtype: str | None = None,
    norm_scaling_factor: float | None = None,
) -> LoadedSAE:
    """Load an SAE from a sae_lens output folder, a checkpoint folder or `<release>:<sae id>`.

    `norm_scaling_factor` overrides the input normalisation factor of a checkpoint whose folder does
    not record it (old checkpoints trained with `expected_average_only_in`).
    """
    text = str(source)
    path = Path(text).expanduser()
    if isinstance(source, Path) or path.exists():
        return _load_folder(path, device=device, dtype=dtype, norm_scaling_factor=norm_scaling_factor)
    if ":" in text and not text.startswith((".", "/", "~")):
        release, sae_id = text.split(":", 1)
        return load_pretrained_sae(release, sae_id, device=device, dtype=dtype or "float32")
    raise SAELoadError(
        f"{text!r} is neither an existing folder nor a pretrained SAE written `<release>:<sae id>`. Pass a sae_lens "
        "output folder, a checkpoint folder (<checkpoints>/<run id>/<tokens>/) or e.g. "
        "`gpt2-small-res-jb:blocks.8.hook_resid_pre`."
    )


def _load_folder(path: Path, *, device: str, dtype: str | None, norm_scaling_factor: float | None) -> LoadedSAE:
    from sae_lens import SAE

    if not path.is_dir():
        raise SAELoadError(f"{path} is a file; pass the folder that holds {SAE_CFG_FILE} and {SAE_WEIGHTS_FILE}.")
    missing = [name for name in (SAE_CFG_FILE, SAE_WEIGHTS_FILE) if not (path / name).is_file()]
    if missing:
        found = sorted(p.name for p in path.iterdir())[:12]
        raise SAELoadError(
            f"{path} is not an SAE folder: {', '.join(missing)} missing (it holds {found}). Pass a sae_lens output "
            "folder or one checkpoint, <checkpoints>/<run id>/<tokens>/."
        )
    raw_cfg = json.loads((path / SAE_CFG_FILE).read_text())
    try:
        with warnings.catch_warnings():
            # "non-empty model_from_pretrained_kwargs": sae_lens's advice for models it loads itself.
            warnings.filterwarnings("ignore", message=".*model_from_pretrained_kwargs.*")
            if raw_cfg.get("architecture") in TRAINING_ONLY_ARCHITECTURES:
                sae = _load_training_checkpoint_as_inference(path, device=device, dtype=dtype)
            else:
                sae = SAE.load_from_disk(path, device=device, dtype=dtype)
    except (KeyError, ValueError, TypeError, OSError) as err:
        raise SAELoadError(f"sae_lens could not load the SAE in {path}: {type(err).__name__}: {err}") from err
    is_checkpoint = _is_checkpoint(path)
    notes = _fold_checkpoint_normalisation(sae, path, raw_cfg, norm_scaling_factor) if is_checkpoint else ()
    sae.eval()
    return _describe(sae, str(path.resolve()), "checkpoint" if is_checkpoint else "folder", notes)


TRAINING_ONLY_ARCHITECTURES = ("batchtopk", "matryoshka_batchtopk")
"""Architectures sae_lens saves as JumpReLU SAEs at the end of training; their intermediate checkpoints
keep the training form, which has no inference class."""


def _load_training_checkpoint_as_inference(path: Path, *, device: str, dtype: str | None) -> SAE:
    """A BatchTopK/Matryoshka checkpoint as the JumpReLU SAE sae_lens would have saved at that point.

    sae_lens's own conversion (`save_inference_model`: the batch top-k threshold becomes a per-feature
    JumpReLU threshold) into a temporary folder, then the ordinary loader.
    """
    import tempfile

    from sae_lens import SAE, TrainingSAE

    training_sae = TrainingSAE.load_from_disk(path, device=device, dtype=dtype)
    with tempfile.TemporaryDirectory(prefix="sae-inference-") as tmp:
        training_sae.save_inference_model(tmp)
        return SAE.load_from_disk(tmp, device=device, dtype=dtype)


def _is_checkpoint(path: Path) -> bool:
    # The training runner writes `runner_cfg.json` next to the final SAE; checkpoints are named after
    # the token count they were taken at (`final_<tokens>` for the last one) or hold trainer state.
    return (
        path.name.isdigit()
        or path.name.startswith("final_")
        or (path / ACTIVATION_SCALER_FILE).is_file()
        or (path / LEGACY_STORE_STATE_FILE).is_file()
        or (path / "trainer_state.pt").is_file()
    )


def _fold_checkpoint_normalisation(
    sae: SAE, path: Path, raw_cfg: dict[str, Any], override: float | None
) -> tuple[str, ...]:
    """Fold the input normalisation a checkpoint's weights were trained against into them."""
    from sae_lens.training.activation_scaler import ActivationScaler

    if override is not None:
        sae.fold_activation_norm_scaling_factor(override)
        return (f"folded the given normalisation factor {override:.6g} into the weights",)
    scaler_path = path / ACTIVATION_SCALER_FILE
    if scaler_path.is_file():
        scaler = ActivationScaler()
        scaler.load(scaler_path)
        notes = []
        if scaler.scaling_factor is not None:
            sae.fold_activation_norm_scaling_factor(scaler.scaling_factor)
            notes.append(f"folded the checkpoint's normalisation factor {scaler.scaling_factor:.6g} into the weights")
        if scaler.whitening is not None:
            sae.fold_activation_whitening(
                mean=scaler.whitening.mean,
                whitening_matrix=scaler.whitening.matrix,
                unwhitening_matrix=scaler.whitening.inverse_matrix,
            )
            notes.append("folded the checkpoint's activation whitening into the weights")
        return tuple(notes)
    normalize = raw_cfg.get("normalize_activations")
    if normalize not in ("expected_average_only_in", True):
        return ()
    legacy_path = path / LEGACY_STORE_STATE_FILE
    if legacy_path.is_file():
        from safetensors.torch import load_file

        state = load_file(legacy_path)
        if "estimated_norm_scaling_factor" in state:
            factor = float(state["estimated_norm_scaling_factor"])
            sae.fold_activation_norm_scaling_factor(factor)
            return (f"folded the checkpoint's normalisation factor {factor:.6g} (sae_lens 4-5) into the weights",)
    if path.name.startswith("final_"):
        # sae_lens folds the factor into the weights before it writes the final checkpoint.
        return ("final checkpoint: its normalisation factor is already folded into the weights",)
    return (
        "this checkpoint was trained with normalize_activations='expected_average_only_in' but records no "
        "normalisation factor; its weights expect normalised inputs (pass norm_scaling_factor=)",
    )


def _describe(
    sae: SAE, source: str, kind: Literal["folder", "checkpoint", "pretrained"], notes: tuple[str, ...]
) -> LoadedSAE:
    k = getattr(sae.cfg, "k", None)
    return LoadedSAE(
        sae=sae,
        hook_name=sae.cfg.metadata.hook_name,
        architecture=sae.cfg.architecture(),
        d_in=int(sae.cfg.d_in),
        d_sae=int(sae.cfg.d_sae),
        k=int(k) if k is not None else None,
        source=source,
        source_kind=kind,
        notes=notes,
    )


# --- pretrained releases --------------------------------------------------------------------------


def load_pretrained_sae(release: str, sae_id: str, *, device: str = "cpu", dtype: str = "float32") -> LoadedSAE:
    """A sae_lens pretrained SAE. Needs the hub (or HF_HUB_OFFLINE=1 and a cached copy)."""
    from huggingface_hub import constants
    from sae_lens import SAE
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()  # the list ships with sae_lens: no network
    if release not in directory:
        close = sorted(name for name in directory if release.split("-")[0] in name)[:8]
        raise SAELoadError(
            f"{release!r} is not a sae_lens pretrained release."
            + (f" Similar releases: {', '.join(close)}." if close else "")
            + " Releases are listed in sae_lens/pretrained_saes.yaml."
        )
    saes_map = directory[release].saes_map
    if sae_id not in saes_map:
        examples = ", ".join(list(saes_map)[:5])
        raise SAELoadError(f"Release {release!r} has no SAE {sae_id!r}. Its SAE ids include: {examples}, ...")
    if not constants.HF_HUB_OFFLINE:
        _probe_hub(constants.ENDPOINT, f"{release}:{sae_id}")
    try:
        sae = SAE.from_pretrained(release, sae_id, device=device, dtype=dtype)
    except Exception as err:  # hub errors come in many classes; all mean "not available here"
        hint = (
            "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache"
            if constants.HF_HUB_OFFLINE
            else "downloading it failed"
        )
        raise SAELoadError(
            f"Could not load the pretrained SAE {release}:{sae_id}: {hint} ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}). On a machine with network, load it once (or save it with "
            "`sae.save_model(folder)`) and pass the folder instead."
        ) from err
    sae.eval()
    return _describe(sae, f"{release}:{sae_id}", "pretrained", ())


def _probe_hub(endpoint: str, what: str) -> None:
    """Fail in seconds when the hub cannot be reached; huggingface_hub retries for ~25 s first."""
    parsed = urlparse(endpoint)
    host = parsed.hostname or endpoint
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S):
            return
    except OSError as err:
        raise SAELoadError(
            f"Cannot load the pretrained SAE {what}: the Hugging Face hub ({endpoint}) is unreachable "
            f"({type(err).__name__}: {err}). If it is in your local cache, set HF_HUB_OFFLINE=1; otherwise "
            "download it on a machine with network and pass its folder."
        ) from None


# --- fitting an SAE to a model --------------------------------------------------------------------


def stop_layer_for_hook(hook_name: str) -> int | None:
    """The layer a forward pass can stop at and still reach `hook_name` (`blocks.N.*` -> N + 1)."""
    match = re.match(r"blocks\.(\d+)\.", hook_name)
    return int(match.group(1)) + 1 if match else None


@torch.no_grad()
def compute_hook_d_in(
    model: HookedTransformer, hook_name: str, hook_head_index: int | None = None, model_name: str | None = None
) -> int:
    """The width of `hook_name`'s activations (heads flattened, as sae_lens flattens hook_z)."""
    if hook_name not in model.hook_dict:
        raise SAELoadError(
            f"The model {model_name or model.cfg.model_name} has no hook {hook_name!r}. {_hook_examples(model)}"
        )
    bos = model.tokenizer.bos_token_id if model.tokenizer is not None else 0
    tokens_BT = torch.full((1, 2), bos if bos is not None else 0, dtype=torch.long, device=model.cfg.device)
    _, cache = model.run_with_cache(tokens_BT, names_filter=[hook_name], stop_at_layer=stop_layer_for_hook(hook_name))
    acts = cache[hook_name]  # [1, 2, d] or [1, 2, n_heads, d_head]
    if hook_head_index is not None:
        return int(acts.shape[-1])
    return int(torch.tensor(acts.shape[2:]).prod())


def _hook_examples(model: HookedTransformer) -> str:
    hooks = [name for name in model.hook_dict if name.startswith("blocks.0.")]
    last = model.cfg.n_layers - 1
    return (
        f"It has {model.cfg.n_layers} layers (blocks.0 ... blocks.{last}); hooks of a block are "
        f"{', '.join(h.removeprefix('blocks.0.') for h in hooks[:12])}."
    )


def check_sae_fits_model(
    sae: SAE, model: HookedTransformer, hook_name: str | None = None, *, model_name: str | None = None
) -> str:
    """The hook to splice `sae` in at, after checking that its hook and `d_in` match the model.

    `hook_name` is where the caller means to use it (a profile's hook, a `--hook`). An SAE trained on
    another hook, or whose `d_in` differs from the hook's width, raises `SAELoadError` naming both.
    `model_name` is how messages name the model (default: transformer-lens's name for it).
    """
    sae_hook = sae.cfg.metadata.hook_name
    model_name = model_name or model.cfg.model_name
    if hook_name is not None and sae_hook is not None and hook_name != sae_hook:
        raise SAELoadError(
            f"Hook mismatch: the SAE was trained on {sae_hook!r} but is asked to run on {hook_name!r} of "
            f"{model_name}. Pass --hook {sae_hook} (or pick an SAE trained on {hook_name})."
        )
    hook = hook_name or sae_hook
    if hook is None:
        raise SAELoadError("The SAE's config does not say which hook it was trained on; pass the hook name.")
    d_model_hook = compute_hook_d_in(model, hook, sae.cfg.metadata.hook_head_index, model_name)
    if d_model_hook != sae.cfg.d_in:
        raise SAELoadError(
            f"d_in mismatch: the SAE expects d_in={sae.cfg.d_in} (trained on {sae_hook or hook!r}"
            f"{' of ' + str(sae.cfg.metadata.model_name) if sae.cfg.metadata.model_name else ''}), but {hook!r} "
            f"of {model_name} has width {d_model_hook}. The SAE belongs to another model or hook."
        )
    return hook
