"""Clusters page: heads that attend alike, and whether they stand in for each
other (docs/methods.md §2.12; CHAI, Agarwal et al. 2024).

Over a prompt set, every head's attention maps are flattened over the visible
(query, key) pairs and correlated (Pearson r); each layer's heads are
clustered (k-means at the elbow of the within-cluster error, or hierarchical),
and every cluster of two or more heads is checked by ablation: each member
alone vs the whole cluster, mean over prompts with 95% bootstrap intervals.
The work runs in `experiments.redundancy.redundancy`, as a background job; the
layer heat map is redrawn from the stored result without recomputing. The
layer and the clustering method are in the URL (`layer=`, `cluster=`, see
`dashboard.state`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from dash import Dash, Input, Output, State, dcc, html, no_update

from headscope.analyses.clustering import CLUSTER_METHODS, LayerClusters
from headscope.dashboard.background import job_options, on_death
from headscope.dashboard.components import (
    card,
    graph,
    page_header,
    progress_block,
    prompt_set_box,
    table_panel,
)
from headscope.dashboard.examples import prompt_set
from headscope.dashboard.importance import TARGET, TARGET_CHOICES, metric_choices, metric_for
from headscope.dashboard.inputs import as_int, choice, prompt_lines
from headscope.dashboard.messages import alert, describe, guarded
from headscope.dashboard.pickers import metric_picker, target_picker
from headscope.dashboard.session import ModelSession
from headscope.dashboard.state import decode_layer, state_out, state_out_id
from headscope.errors import InputError
from headscope.experiments.redundancy import REDUNDANCY_MODES, Redundancy, redundancy
from headscope.figures.clusters import (
    correlation_heatmap,
    cross_layer_heatmap,
    elbow_figure,
    redundancy_bars,
)
from headscope.figures.style import message_figure

#: The figures the job fills, then the table, the stored result and the message.
OUTPUT_IDS = ("clu-elbow", "clu-cross", "clu-bars")
MEASURE = (
    "Pearson correlation of two heads' attention maps, flattened over every prompt's "
    "visible (query, key) pairs"
)
#: A whole-cluster harm below this (metric units) reads as no change.
NEGLIGIBLE = 1e-3
#: Prompts the page clusters at most.
MAX_PROMPTS = 32
#: The clustering methods the page offers (the URL's `cluster=`).
METHODS = CLUSTER_METHODS


def layout(session: ModelSession) -> list:
    spec = session.spec
    _, described = metric_for(session) if spec is not None else ("", "")
    n_heads = spec.n_heads if spec is not None else 1
    n_layers = spec.n_layers if spec is not None else 1
    return [
        *page_header(
            "Head clusters",
            f"Heads that attend alike (CHAI, Agarwal et al. 2024): {MEASURE}. Each layer's "
            "heads are clustered; each cluster is checked by ablating one head vs the whole "
            f"cluster. Default metric: {described}.",
            "clu-message",
        ),
        card(
            None,
            html.Div(
                [
                    prompt_set_box("clu-prompts", prompt_set(spec)),
                    html.Div(
                        [
                            html.Label("clustering"),
                            dcc.RadioItems(
                                id="clu-method",
                                value="kmeans",
                                inline=True,
                                options=[
                                    {"label": " k-means ", "value": "kmeans"},
                                    {"label": " hierarchical ", "value": "hierarchical"},
                                ],
                            ),
                            html.Label("clusters per layer", htmlFor="clu-k"),
                            dcc.Dropdown(
                                id="clu-k",
                                value="elbow",
                                clearable=False,
                                options=[{"label": "at the elbow", "value": "elbow"}]
                                + [
                                    {"label": str(k), "value": str(k)}
                                    for k in range(1, n_heads + 1)
                                ],
                                style={"width": "160px"},
                            ),
                            html.Label("ablation"),
                            dcc.RadioItems(
                                id="clu-mode",
                                value="zero",
                                inline=True,
                                options=[{"label": f" {m} ", "value": m} for m in REDUNDANCY_MODES],
                            ),
                        ],
                        className="hs-control",
                    ),
                    html.Div(
                        [
                            html.Label("metric", htmlFor="clu-metric"),
                            metric_picker("clu-metric", spec),
                            html.Label("target tokens (loss)", htmlFor="clu-target"),
                            target_picker("clu-target"),
                        ],
                        className="hs-control",
                    ),
                    html.Button("Cluster heads", id="clu-run", className="hs-button", n_clicks=0),
                    state_out("clusters"),
                ],
                className="hs-controls",
            ),
            progress_block("clu"),
        ),
        dcc.Store(id="clu-store"),
        html.Div(
            [
                card(
                    "Correlation within a layer",
                    html.Div(
                        [
                            html.Label("layer", htmlFor="clu-layer"),
                            dcc.Dropdown(
                                id="clu-layer",
                                value=n_layers - 1,
                                clearable=False,
                                options=[
                                    {"label": f"layer {i}", "value": i} for i in range(n_layers)
                                ],
                                style={"width": "140px"},
                            ),
                        ],
                        className="hs-control",
                    ),
                    graph("clu-heatmap", message="Press Cluster heads", height=360),
                    note="Heads ordered cluster by cluster; each cluster boxed. Baseline in the "
                    "hover: the correlation of random maps on the same visible pairs.",
                ),
                card(
                    "Elbow",
                    graph("clu-elbow", message="Press Cluster heads", height=340),
                    note="Within-cluster error: the fraction of the standardized map variance "
                    "left inside clusters (the k-means objective). Diamonds: the k chosen; "
                    "hollow where the curve has no clear elbow.",
                ),
            ],
            className="hs-grid-2",
        ),
        card(
            "Clusters and the ablation check",
            html.Div("Press Cluster heads", id="clu-table", className="hs-panel hs-muted"),
            graph("clu-bars", message="Press Cluster heads", height=360),
            note="Harm: how much worse the metric gets with the heads' z ablated, mean over "
            "prompts [95% bootstrap interval]. Backups cost little alone and much together.",
        ),
        card(
            "Across layers",
            graph("clu-cross", message="Press Cluster heads", height=420),
            note="Every head against every head; layers boxed. Heads of different layers "
            "that attend alike (as cross-layer cache sharing assumes) stand out off the boxes.",
        ),
    ]


# -- callback bodies (plain functions, unit-tested) --------------------------------------------


def _signed(value: float) -> str:
    """+0.123; a value that rounds to zero reads +0.000, never −0.000."""
    return f"{value:+.3f}" if abs(value) >= 5e-4 else "+0.000"


def _interval_text(mean: float, low: float, high: float) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return _signed(mean)
    flag = "" if (low > 0 or high < 0) else " n.s."
    return f"{_signed(mean)} [{_signed(low)}, {_signed(high)}]{flag}"


def verdict(result: Redundancy, index: int) -> str:
    """What one cluster's check says, in words."""
    check = result.ablations[index]
    if check.clean.numel() < 2:
        return "one prompt: no interval, no verdict"
    whole = check.whole_interval()
    if float(whole.low[0]) <= 0 <= float(whole.high[0]):
        return "ablating the whole cluster changes nothing significant (n.s.)"
    if abs(float(whole.mean[0])) < NEGLIGIBLE:
        return f"ablating the whole cluster changes the metric by less than {NEGLIGIBLE:g}"
    excess = check.excess_interval()
    if float(excess.low[0]) > 0:
        return "the whole cluster costs more than its costliest member alone"
    return "its costliest member accounts for the cluster's harm"


def cluster_rows(result: Redundancy) -> list[dict]:
    """One row per cluster (every layer, singletons too): the heads, their mean
    pairwise r, and for checked clusters each member's harm, the whole
    cluster's harm, the excess over the costliest member, and the verdict."""
    rows = []
    for layer in result.clusters.layers:
        for heads in layer.clusters:
            index = torch.tensor(heads)
            block = layer.correlation[index][:, index]
            n = len(heads)
            mean_r = float((block.sum() - n) / (n * (n - 1))) if n > 1 else float("nan")
            row = {
                "layer": layer.layer,
                "heads": ", ".join(f"{layer.layer}.{h}" for h in heads),
                "mean_r": "–" if n < 2 else f"{mean_r:.3f}",
                "alone": "–",
                "whole": "–",
                "excess": "–",
                "verdict": "one head: nothing to compare",
            }
            check = result.ablation_of(layer.layer, heads[0])
            if n > 1 and check is not None:
                position = result.ablations.index(check)
                single = check.single_interval()
                row["alone"] = "; ".join(
                    f"{layer.layer}.{h} {_interval_text(*map(float, (m, lo, hi)))}"
                    for h, m, lo, hi in zip(
                        check.heads, single.mean, single.low, single.high, strict=True
                    )
                )
                whole, excess = check.whole_interval(), check.excess_interval()
                row["whole"] = _interval_text(
                    float(whole.mean[0]), float(whole.low[0]), float(whole.high[0])
                )
                row["excess"] = _interval_text(
                    float(excess.mean[0]), float(excess.low[0]), float(excess.high[0])
                )
                row["verdict"] = verdict(result, position)
            rows.append(row)
    return rows


COLUMNS = (
    ("layer", "layer"),
    ("heads", "cluster"),
    ("mean_r", "mean r within"),
    ("alone", "harm, one head ablated"),
    ("whole", "harm, whole cluster"),
    ("excess", "whole − costliest alone"),
    ("verdict", "reading"),
)


CELL = {"padding": "4px 8px", "borderBottom": "1px solid #eef0f3", "verticalAlign": "top"}
NUMERIC = {**CELL, "fontFamily": "var(--hs-mono)", "fontSize": "12px"}
HEADER = {**CELL, "textAlign": "left", "fontWeight": 600, "borderBottom": "1px solid #c9ced6"}


def cluster_table(result: Redundancy) -> html.Div:
    """The cluster table (every value as text, never HTML)."""
    rows = cluster_rows(result)
    numeric = {"mean_r", "alone", "whole", "excess"}
    head = html.Thead(html.Tr([html.Th(title, style=HEADER) for _, title in COLUMNS]))
    body = html.Tbody(
        [
            html.Tr(
                [
                    html.Td(str(row[key]), style=NUMERIC if key in numeric else CELL)
                    for key, _ in COLUMNS
                ]
            )
            for row in rows
        ]
    )
    table = html.Table(
        [head, body],
        id="clu-cluster-table",
        style={"borderCollapse": "collapse", "width": "100%", "fontSize": "13px"},
    )
    return table_panel(table, name="clusters")


def _store(result: Redundancy) -> dict:
    return {
        "layers": [
            {
                "layer": layer.layer,
                "correlation": layer.correlation.tolist(),
                "labels": layer.labels.tolist(),
                "k": layer.k,
                "errors": layer.errors.tolist(),
                "clear": layer.clear,
                "method": layer.method,
            }
            for layer in result.clusters.layers
        ],
        "baseline": result.clusters.baseline,
        "support": result.clusters.support,
    }


def layer_heatmap(store: object, layer: object):
    """The correlation heat map of one layer, from the stored result."""
    if not isinstance(store, dict) or not store.get("layers"):
        return message_figure("Press Cluster heads")
    layers = store["layers"]
    index = as_int(layer)
    if index is None or not 0 <= index < len(layers):
        index = len(layers) - 1
    item = layers[index]
    clusters = LayerClusters(
        layer=int(item["layer"]),
        correlation=torch.tensor(item["correlation"], dtype=torch.float64),
        labels=torch.tensor(item["labels"], dtype=torch.long),
        k=int(item["k"]),
        errors=torch.tensor(item["errors"], dtype=torch.float64),
        clear=bool(item["clear"]),
        method=str(item["method"]),
    )
    return correlation_heatmap(
        clusters, baseline=float(store["baseline"]), support=str(store["support"])
    )


def cluster_outputs(
    session: ModelSession,
    prompts_text: object,
    method: object = "kmeans",
    k: object = "elbow",
    mode: object = "zero",
    metric: object = None,
    target: object = TARGET,
    progress: Callable[[int, int, str], None] | None = None,
) -> tuple:
    """(elbow, cross-layer, bars figures, cluster table, stored result, message)
    for the prompt set: `experiments.redundancy` with the page's choices
    (values the page does not offer fall back to the defaults)."""
    prompts = prompt_lines(prompts_text, limit=MAX_PROMPTS)
    for prompt in prompts:
        session.tokenize(prompt)
    model = session.require_model()
    spec = model.spec
    default, _ = metric_for(session)
    fixed = as_int(k)
    if fixed is not None and not 1 <= fixed <= spec.n_heads:
        raise InputError(f"clusters per layer must be between 1 and {spec.n_heads}")
    with session.lock:
        result = redundancy(
            model,
            prompts,
            method=choice(method, CLUSTER_METHODS, "kmeans"),  # type: ignore[arg-type]
            k=fixed,
            metric=choice(metric, metric_choices(spec), default),
            target=choice(target, TARGET_CHOICES, TARGET),  # type: ignore[arg-type]
            mode=choice(mode, REDUNDANCY_MODES, "zero"),
            progress=progress,
        )
    clusters = result.clusters
    elbow = elbow_figure(clusters.layers)
    cross = cross_layer_heatmap(
        clusters.cross_layer, baseline=clusters.baseline, support=clusters.support
    )
    if result.ablations:
        bars = redundancy_bars(
            [a.name for a in result.ablations],
            [[f"{a.layer}.{h}" for h in a.heads] for a in result.ablations],
            [
                (
                    a.single_interval().mean.tolist(),
                    a.single_interval().low.tolist(),
                    a.single_interval().high.tolist(),
                )
                for a in result.ablations
            ],
            [
                (
                    float(a.whole_interval().mean[0]),
                    float(a.whole_interval().low[0]),
                    float(a.whole_interval().high[0]),
                )
                for a in result.ablations
            ],
            harm=f"harm ({result.metric.name}, {result.metric.unit})",
        )
    else:
        bars = message_figure("every cluster is a single head: nothing to check by ablation")
    ks = ", ".join(
        f"layer {layer.layer}: {layer.k}{'' if layer.clear else ' (no clear elbow)'}"
        for layer in clusters.layers
    )
    off = [layer.mean_off_diagonal for layer in clusters.layers]
    off_text = ", ".join("–" if math.isnan(v) else f"{v:.2f}" for v in off)
    message = alert(
        f"{MEASURE}; {clusters.support}. Baseline: random maps on the same pairs correlate "
        f"r = {clusters.baseline:.3f}; mean r between distinct heads by layer: {off_text}. "
        f"Clusters ({clusters.layers[0].method}): {ks}. Ablation check: {result.described}; "
        "harm intervals are 95% bootstrap over prompts.",
        kind="info",
    )
    return elbow, cross, bars, cluster_table(result), _store(result), message


def _failed(message: str) -> tuple:
    blank = message_figure(message)
    return (*(blank,) * len(OUTPUT_IDS), html.Div(), no_update, alert(message))


def sync_pickers(
    session: ModelSession, trigger: object, view: object, layer: object, method: object
) -> tuple:
    """(layer picker, method radio, state edits) between the pickers and the
    URL's state (`dashboard.state`): when the page opens or the URL changes, the
    state's `layer` and `cluster` set the pickers; when one changes, the state
    (and so the URL) follows. Values the page does not offer are ignored."""
    spec = session.spec
    if trigger is None or trigger == "view-state":
        current = view if isinstance(view, dict) else {}
        try:
            wanted_layer: object = decode_layer(current.get("layer"), spec)
        except InputError:
            wanted_layer = no_update
        wanted_method = current.get("cluster")
        return wanted_layer, wanted_method if wanted_method in METHODS else no_update, no_update
    edits = {}
    index = as_int(layer)
    if index is not None and 0 <= index < (spec.n_layers if spec is not None else 0):
        edits["layer"] = str(index)
    if method in METHODS:
        edits["cluster"] = method
    return no_update, no_update, edits or no_update


def register(app: Dash, session: ModelSession, manager) -> None:
    # The URL's layer and clustering method set the pickers; the pickers' values go to the URL.
    @app.callback(
        Output("clu-layer", "value"),
        Output("clu-method", "value"),
        Input("view-state", "data"),
    )
    @guarded(lambda message: (no_update, no_update), "the layer and method pickers")
    def _pickers(view):
        return sync_pickers(session, "view-state", view, None, None)[:2]

    @app.callback(
        Output(state_out_id("clusters"), "data"),
        Input("clu-layer", "value"),
        Input("clu-method", "value"),
        prevent_initial_call=True,
    )
    @guarded(lambda message: no_update, "the layer and method in the URL")
    def _report(layer, method):
        return sync_pickers(session, "clu-layer", None, layer, method)[2]

    @app.callback(
        Output("clu-heatmap", "figure"),
        Input("clu-store", "data"),
        Input("clu-layer", "value"),
    )
    @guarded(lambda message: (message_figure(message),), "the correlation map")
    def _heatmap(store, layer):
        return layer_heatmap(store, layer)

    @app.callback(
        *(Output(key, "figure") for key in OUTPUT_IDS),
        Output("clu-table", "children"),
        Output("clu-store", "data"),
        Output("clu-message", "children"),
        Input("clu-run", "n_clicks"),
        State("clu-prompts", "value"),
        State("clu-method", "value"),
        State("clu-k", "value"),
        State("clu-mode", "value"),
        State("clu-metric", "value"),
        State("clu-target", "value"),
        **job_options("clu", manager),
    )
    @on_death(_failed, "the clustering job")
    def _clusters(set_progress, _clicks, prompts, method, k, mode, metric, target):
        def report(done, total, label):
            set_progress((str(done), str(total), label))

        try:
            return cluster_outputs(session, prompts, method, k, mode, metric, target, report)
        except Exception as error:
            return _failed(describe(error, "the clustering job"))
