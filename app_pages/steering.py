"""Steering: add a feature's direction (or clamp it) while the model generates, and count backtracking."""

import streamlit as st

from explorer.app import index_cache, model_cache, pickers, run_cache, steering_run, steering_views

st.title("Steering")

run_dir, sae_id, summary = pickers.pick_sae_with_summary_or_stop()
st.caption(
    "Does the feature *cause* backtracking? Generate with the feature's decoder direction added (or the feature "
    "clamped through the SAE) and compare the rate of backtracking phrases per 1,000 generated tokens with a "
    "baseline that uses the same prompts and random seeds."
)
loaded = model_cache.load_model_and_sae(run_dir, summary.profile, sae_id)
if loaded is None:
    st.stop()
model, sae, hook_name = loaded
max_tokens, max_samples = steering_run.page_bounds(model.cfg.device)

feature = int(st.number_input(
    "Feature", 0, sae.cfg.d_sae - 1, steering_run.feature_from_query(sae_id, sae.cfg.d_sae), key="steer_feature"
))
st.query_params[steering_run.FEATURE_PARAM] = str(feature)

corpus_prompts = run_cache.load_corpus_prompts(run_dir)
steering_run.init_prompt(corpus_prompts)
left, right = st.columns([2, 1])
with left:
    if corpus_prompts and st.button("Prompt of a random corpus trace", key="steer_random_prompt"):
        steering_run.pick_random_prompt(corpus_prompts)
    prompt_text = st.text_area("Prompt (a problem, or a full prompt ending in <think>)", height=110,
                               key=steering_run.PROMPT_KEY)
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
steering_run.say_if_interrupted(stopped)

if generate:
    steering_run.generate(run_dir, sae_id, loaded, prompt_text, feature=feature, mode=mode, coefs_text=coefs_text,
                          n_samples=n_samples, max_new_tokens=n_tokens, temperature=temperature, save=save)

fresh = steering_run.session_result(sae_id, feature)
if fresh is not None:
    steering_views.render_generation(fresh, sae_id, hook_name, feature)

st.subheader(f"Stored results for feature {feature}")
runs = index_cache.load_stored_runs(run_dir, sae_id, feature)
if runs is None:  # a damaged database: said at the top of the page
    st.stop()
if not runs:
    st.info(f"No stored steering result for feature {feature} yet: generate above, or run `python -m precompute "
            f"steer --out {run_dir} --sae {sae_id} --features {feature} --coefs=-8,8 --from-corpus 20`.")
    st.stop()
chosen = st.selectbox("Stored run", runs, format_func=steering_views.describe_run, key="steer_stored_run")
stored = index_cache.load_stored_result(run_dir, chosen.run_id)
if stored is not None:
    steering_views.render_result(stored.prompts, stored.samples, stored.summaries, stored.run.mode, feature, key="stored")
