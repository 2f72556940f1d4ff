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
"""
