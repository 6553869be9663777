"""Stand-ins for DeepSeek-R1-Distill-Qwen-1.5B that tests build themselves, and a fake hub cache.

The hub is out of reach here, so tests build a miniature Qwen2 directory (random weights, a BPE
tokenizer trained with the real special-token strings, tokenizer_config.json written the way the real
repo writes it) and lay it out as the Hugging Face cache lays out a download:

    $HF_HOME/hub/models--deepseek-ai--DeepSeek-R1-Distill-Qwen-1.5B/
        refs/main                      the revision string
        snapshots/<revision>/          config.json, model.safetensors, tokenizer.json, ...

HF_HOME and HF_HUB_OFFLINE only count when set before huggingface_hub is imported, so code that loads
from such a cache runs in a subprocess (`run_python`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REAL_REPO_ID = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
FAKE_REVISION = "0123456789abcdef0123456789abcdef01234567"
REPO_ROOT = Path(__file__).resolve().parents[1]

MINI_TEXTS = [
    "Solve this math problem step by step. Put your final answer in \\boxed{}. Problem: What is 3 + 4? "
    "Solution: \n<think>\nFirst, 3 + 4 = 7.\nWait, let me check: 4 + 3 = 7. Yes.\n</think>\n\n\\boxed{7}",
    "Problem: Find x if 2x = 10. Solution: \n<think>\nDivide by 2: x = 5. Hmm, that's right.\n</think>\n\\boxed{5}",
    "Let me reconsider. Actually, the derivative of x^3 is 3x^2, not 3x. I made a mistake.",
    "Unicode: naïve café, Σ x² ≥ 0, 日本語のテキスト, emoji 🙂, arrows → ←, full-width ｜bars｜.",
    "<｜User｜>What is 2 + 2?<｜Assistant｜><think>\n2 + 2 = 4\n</think>\nThe answer is 4.",
]


def build_mini_qwen2_dir(
    directory: Path,
    *,
    vocab_size: int = 512,
    hidden_size: int = 64,
    n_layers: int = 2,
    seed: int = 0,
    real_tokenizer_config: bool = True,
) -> Path:
    """A miniature Qwen2ForCausalLM directory with random weights, as `save_pretrained` writes it.

    With `real_tokenizer_config`, tokenizer_config.json says what the real repo's says
    (`LlamaTokenizerFast`, `add_bos_token: true`, `legacy: true`), so tests meet the transformers 5
    Llama-class trap the real model meets.
    """
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    from explorer.demo_lm import demo_model_config, train_tokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(MINI_TEXTS * 4, vocab_size)
    tokenizer.save_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    config = demo_model_config(
        tokenizer,
        hidden_size=hidden_size,
        n_layers=n_layers,
        n_heads=4,
        n_kv_heads=2,
        intermediate_size=4 * hidden_size,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        # Non-trivial norm weights and q/k/v biases, so folding them in is actually exercised.
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(directory)
    if real_tokenizer_config:
        write_real_tokenizer_config(directory)
    return directory


def write_real_tokenizer_config(directory: Path) -> None:
    """Make the saved tokenizer_config.json say what the real repo's says: `LlamaTokenizerFast`,
    `add_bos_token: true`, `legacy: true` (the transformers 5 Llama-class trap, explorer.model_loading)."""
    config_path = Path(directory) / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config.update(
        {"add_bos_token": True, "add_eos_token": False, "legacy": True, "tokenizer_class": "LlamaTokenizerFast"}
    )
    config_path.write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False))


def hub_snapshot_dir(hf_home: Path, repo_id: str = REAL_REPO_ID, revision: str = FAKE_REVISION) -> Path:
    """The (created) snapshot folder of `repo_id` in the hub cache under `hf_home`, with refs/main naming it."""
    repo_dir = Path(hf_home) / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    return snapshot


def make_fake_hub_cache(
    hf_home: Path, model_dir: Path, repo_id: str = REAL_REPO_ID, revision: str = FAKE_REVISION
) -> Path:
    """Lay `model_dir`'s files out as the hub cache under `hf_home` holds `repo_id`; return the snapshot."""
    snapshot = hub_snapshot_dir(hf_home, repo_id, revision)
    for path in Path(model_dir).iterdir():
        if path.is_file():
            shutil.copy2(path, snapshot / path.name)
    return snapshot


def run_python(
    code: str, args: list[str], env_overrides: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run `code` with `args` (its `sys.argv[1:]`) in a fresh interpreter from the repository root,
    with the parent's HF_* variables dropped and `env_overrides` set."""
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO_ROOT, env=hub_env(env_overrides), capture_output=True,
        text=True, timeout=timeout,
    )


def hub_env(env_overrides: dict[str, str]) -> dict[str, str]:
    """This process's environment for a child that imports the repository and reads a hub cache: the HF_*
    variables dropped (a child must see only the cache it is given), `env_overrides` set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update({"PYTHONPATH": str(REPO_ROOT), "TOKENIZERS_PARALLELISM": "false", **env_overrides})
    return env


@pytest.fixture(scope="session")
def mini_qwen2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A miniature Qwen2 directory, built once per test session."""
    return build_mini_qwen2_dir(tmp_path_factory.mktemp("mini-qwen2") / "model")
