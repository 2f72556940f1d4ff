"""Pure (result) -> plotly Figure builders shared by the dashboard, reports and notebooks.

- `maps`: one head's attention map with token labels; the layer × head thumbnail grid.
- `heads`: layer × head heatmaps of a score, head-label grids, importance, pruning curves.
- `flow`: raw attention vs rollout vs flow for one query token, with baselines.
- `position`: sink scores per head and key; influence by distance vs a mask baseline.
- `spectral`: singular spectra, Marchenko–Pastur fits, composition matrices.
- `predictions`: next-token distributions, sentence-embedding similarities.
- `clusters`: head × head correlation by cluster, elbow curves, cross-layer
  similarity, the one-head vs whole-cluster ablation check.
- `vision`: a patch map over the image (rollout, flow, relevance), per-head
  overlays, mean attention distance by layer, attention by relative patch offset.
- `dynamics`: scores and the in-context loss against the training step with the
  phase change shaded, importance over steps, a model diff's delta and matching maps.
- `style` / `arrays`: the shared template, label escaping, float32 conversion, downsampling.

Builders never touch a model: they take tensors, arrays or result dataclasses
and return a `plotly.graph_objects.Figure`. Numeric data go to plotly as
float32 numpy arrays; user text (prompts, tokens) is escaped so plotly shows it
literally.
"""
