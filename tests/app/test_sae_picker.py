"""The sidebar's SAE picker opens on the run's main SAE, the one at its profile's hook, when the run also
holds SAEs at further hooks (`Profile.extra_hooks`) whose ids sort first; a link's `?sae=` still wins."""

from __future__ import annotations

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

from explorer import artifacts
from explorer.config import DEMO
from explorer.runs import sae_dir

EARLY, MAIN = "blocks.0.hook_mlp_out-sae", "blocks.1.hook_mlp_out-sae"


def picker_script(run_dir: str) -> None:
    from pathlib import Path

    from explorer.app.pickers import render_sae_picker

    render_sae_picker(Path(run_dir))


def two_sae_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    for sae_id in (EARLY, MAIN):
        sae_dir(run, sae_id).mkdir(parents=True)
        (sae_dir(run, sae_id) / "cfg.json").write_text(json.dumps({"metadata": {"hook_name": sae_id.split("-")[0]}}))
    (run / artifacts.PROFILE_FILE).write_text(DEMO.to_json())  # its hook: blocks.1.hook_mlp_out
    return run


def test_the_sae_picker_opens_on_the_sae_at_the_profiles_hook(tmp_path):
    run = two_sae_run(tmp_path)
    at = AppTest.from_function(picker_script, kwargs={"run_dir": str(run)}).run()
    assert not at.exception
    assert at.sidebar.selectbox(key="sae_picker").options == [EARLY, MAIN]
    assert at.sidebar.selectbox(key="sae_picker").value == MAIN
    assert at.query_params["sae"] == MAIN

    linked = AppTest.from_function(picker_script, kwargs={"run_dir": str(run)})
    linked.query_params["sae"] = EARLY
    assert linked.run().sidebar.selectbox(key="sae_picker").value == EARLY

    stale = AppTest.from_function(picker_script, kwargs={"run_dir": str(run)})
    stale.query_params["sae"] = "gone"
    stale.run()
    assert stale.sidebar.selectbox(key="sae_picker").value == MAIN
    assert f"showing SAE `{MAIN}` instead" in stale.warning[0].value  # the link rule (docs/reliability.md)
