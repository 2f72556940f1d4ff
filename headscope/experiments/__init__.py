"""Experiments: every method that runs a model, through `headscope.probes`.

Pure analyses of tensors and records live in `headscope.analyses`; what needs
the model (forwards, interventions, gradients) lives here:

- `ablation`: `ablation_scores`, `pruning_curve`, `clean_metric`
- `gradients`: `gradient_importance` (Michel et al. 2019)
- `gating`: `causal_head_gating`, `contrastive_head_gating` (Nam et al. 2025)
- `patching`: `activation_patching`, `attribution_patching`, `patch_heads`
- `relevance`: `attention_gradients`, `relevance` (Chefer et al. 2021)
- `position`: `position_curve` (lost in the middle)
- `spectra`: `head_weights`, `copying_scores`, `composition_scores`, `spectra`
- `metrics`: the metric vocabulary (`VOCABULARY`, `resolve_metric`, ...)
- `scoring`: `score_heads`, the one entry point the dashboard, `headscope report`
  and the notebooks share for head importance
- `redundancy`: `redundancy` (heads clustered by their maps, CHAI, each cluster
  checked by ablating one head vs the whole cluster)
- `retrieval`: `retrieval_scores` (Wu et al. 2024), `streaming_gates` (DuoAttention),
  `long_range_scores`, `ablation_check`, `retrieval_study` (retrieval, streaming,
  echo and dormant heads)
- `dynamics`: `training_dynamics` over a checkpoint series (taxonomy, importance,
  in-context loss; the phase change of Olsson et al. 2022), `profile_model`
- `diffing`: `diff_models` (two models of one shape: score deltas with intervals,
  label changes, heads matched by map correlation)
- `vision`: image classifiers: `classify`, `image_relevance` (Chefer et al. 2021
  from [CLS]), `score_image_heads` / `image_pruning_curves` (what `score_heads` /
  `pruning_curves` run for a vision model)
"""
