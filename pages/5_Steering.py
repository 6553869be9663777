"""Steering: add a feature's direction (or clamp it) while the model generates, and count backtracking."""

import random

import streamlit as st

from explorer import steering_ui, ui
from explorer.live import EXAMPLE_PROBLEM
from explorer.steering import SteeringConfig, SteeringInputError, as_prompt, compute_steering, parse_coefficients

st.set_page_config(page_title="Steering · Backtracking feature explorer", layout="wide")
st.title("Steering")

run_dir, sae_id, summary = ui.pick_sae_with_summary_or_stop()
st.caption(
    "Does the feature *cause* backtracking? Generate with the feature's decoder direction added (or the feature "
    "clamped through the SAE) and compare the rate of backtracking phrases per 1,000 generated tokens with a "
    "baseline that uses the same prompts and random seeds."
)
loaded = ui.load_model_and_sae(run_dir, summary.profile, sae_id)
if loaded is None:
    st.stop()
model, sae, hook_name = loaded
max_tokens, max_samples = steering_ui.page_bounds(model.cfg.device)

feature = int(st.number_input(
    "Feature", 0, sae.cfg.d_sae - 1, steering_ui.feature_from_query(sae.cfg.d_sae), key="steer_feature"
))
st.query_params[steering_ui.FEATURE_PARAM] = str(feature)

corpus_prompts = steering_ui.load_corpus_prompts(run_dir)
if "steer_prompt" not in st.session_state:
    st.session_state["steer_prompt"] = corpus_prompts[0] if corpus_prompts else as_prompt(EXAMPLE_PROBLEM)
left, right = st.columns([2, 1])
with left:
    if corpus_prompts and st.button("Prompt of a random corpus trace", key="steer_random_prompt"):
        st.session_state["steer_prompt"] = random.choice(corpus_prompts)
    prompt_text = st.text_area("Prompt (a problem, or a full prompt ending in <think>)", height=110, key="steer_prompt")
with right:
    mode = st.radio("Mode", ["add", "clamp"], horizontal=True, key="steer_mode",
                    help="add: coefficient x decoder direction. clamp: set the feature to this value through the SAE.")
    coefs_text = st.text_input("Coefficient, or a sweep (comma-separated)", "-8, 8", key="steer_coefs")
a, b, c = st.columns(3)
n_samples = int(a.number_input("Samples", 1, max_samples, min(4, max_samples), key="steer_n"))
n_tokens = int(b.number_input("Max new tokens", 1, max_tokens, min(128, max_tokens), key="steer_max_tokens"))
temperature = float(c.number_input("Temperature (0 = greedy)", 0.0, 2.0, 1.0, step=0.1, key="steer_temperature"))
save = st.checkbox("Save the result in the run's database", value=True, key="steer_save")
go_col, stop_col = st.columns([1, 5])
generate = go_col.button("Generate", type="primary", key="steer_run")
stopped = stop_col.button("Stop", key="steer_stop")
if st.session_state.pop("steer_running", False):  # the last run ended before it finished: a click stopped it
    st.info("Generation stopped; nothing was kept." if stopped else "Generation interrupted by a change of settings.")

if generate:
    try:
        config = SteeringConfig(
            feature_id=feature, mode=mode, coefs=parse_coefficients(coefs_text)[: steering_ui.PAGE_MAX_COEFS],
            n_samples=n_samples, max_new_tokens=n_tokens, temperature=temperature,
        )
        progress, should_stop = steering_ui.make_progress("Generating")
        st.session_state["steer_running"] = True
        result = compute_steering(model, sae, hook_name, [as_prompt(prompt_text)], config,
                                  progress=progress, should_stop=should_stop)
        st.session_state["steer_running"] = False
        st.session_state["steer_result"] = (sae_id, result)
        if not result.complete:
            st.warning(f"Stopped after {steering_ui.PAGE_TIME_LIMIT_S:.0f} s: the numbers below cover a partial "
                       "generation and were not saved.")
        elif save:
            steering_ui.save_result(run_dir, sae_id, result)
    except SteeringInputError as hint:
        st.session_state["steer_running"] = False
        st.error(str(hint))

shown = st.session_state.get("steer_result")
if shown is not None and shown[0] == sae_id and shown[1].config.feature_id == feature:
    result = shown[1]
    st.subheader("This generation")
    st.caption(f"{result.n_generated_tokens:,} tokens in {result.seconds:.1f} s on {result.device} · at most "
               f"{result.max_new_tokens} new tokens · SAE `{sae_id}` at `{hook_name}`")
    steering_ui.render_result(
        result.prompts, result.samples, result.summaries, result.config.mode, feature, key="fresh"
    )

st.subheader(f"Stored results for feature {feature}")
runs = steering_ui.load_stored_runs(run_dir, sae_id, feature)
if not runs:
    st.info(f"No stored steering result for feature {feature} yet: generate above, or run `python -m precompute "
            f"steer --out {run_dir} --sae {sae_id} --features {feature} --coefs=-8,8 --from-corpus 20`.")
    st.stop()
chosen = st.selectbox("Stored run", runs, format_func=steering_ui.describe_run, key="steer_stored_run")
stored = steering_ui.load_stored_result(run_dir, chosen.run_id)
if stored is not None:
    steering_ui.render_result(stored.prompts, stored.samples, stored.summaries, stored.run.mode, feature, key="stored")
