"""Pure (result) -> plotly Figure builders shared by the dashboard, reports and notebooks.

- `maps`: one head's attention map with token labels; the layer × head thumbnail grid.
- `heads`: layer × head heatmaps of a score, head-label grids, importance, pruning curves.
- `flow`: raw attention vs rollout vs flow for one query token, with baselines.
- `position`: sink scores per head and key; influence by distance vs a mask baseline.
- `spectral`: singular spectra, Marchenko–Pastur fits, composition matrices.
- `predictions`: next-token distributions, sentence-embedding similarities.
- `style` / `arrays`: the shared template, label escaping, float32 conversion, downsampling.

Builders never touch a model: they take tensors, arrays or result dataclasses
and return a `plotly.graph_objects.Figure`. Numeric data go to plotly as
float32 numpy arrays; user text (prompts, tokens) is escaped so plotly shows it
literally.
"""
