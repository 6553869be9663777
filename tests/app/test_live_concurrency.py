"""Many threads running live activations on one shared model (as Streamlit sessions share the
`st.cache_resource` model) each get the result a serial run gives. The real-browser version, two
sessions on the Live page at once, is in tests/browser/test_pages_in_chromium.py."""

from concurrent.futures import ThreadPoolExecutor

import torch
from sae_lens import StandardSAE, StandardSAEConfig

from explorer.live import compute_live_activations
from explorer.model_loading import MODEL_LOCK
from explorer.model_loading import load_model
from explorer.sae_loading import check_sae_fits_model
from tests.hub_fixtures import MINI_TEXTS, mini_qwen2_dir  # noqa: F401  (fixture)

HOOK = "blocks.1.hook_mlp_out"


def test_concurrent_live_runs_equal_serial_runs(mini_qwen2_dir):  # noqa: F811
    model = load_model(str(mini_qwen2_dir), device="cpu", n_ctx=64)
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=model.cfg.d_model, d_sae=96))
    with torch.no_grad():
        sae.W_enc.normal_()
    texts = [t[:n] for t in MINI_TEXTS for n in (40, 200)]  # different lengths: a mixed-up cache shows
    serial = [compute_live_activations(model, sae, HOOK, t) for t in texts]

    def live(i: int):
        return i, compute_live_activations(model, sae, HOOK, texts[i % len(texts)])

    def check(_):  # what every page run does before Live (explorer.app.model_cache.load_model_and_sae)
        with MODEL_LOCK:
            return check_sae_fits_model(sae, model, HOOK)

    with ThreadPoolExecutor(max_workers=6) as pool:
        checks = pool.map(check, range(20))
        results = list(pool.map(live, range(4 * len(texts))))
    assert set(checks) == {HOOK}
    for i, result in results:
        expected = serial[i % len(texts)]
        assert result.token_ids == expected.token_ids
        torch.testing.assert_close(result.acts_TF, expected.acts_TF)
