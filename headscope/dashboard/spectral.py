"""Page 6, Spectral: singular spectra of every head's QK (W_Q·W_Kᵀ) and OV
(W_V·W_O) circuits, their stable and effective ranks, copying scores (Elhage
et al. 2021), a Marchenko–Pastur fit of one weight matrix, and the head-to-head
composition matrix next to its random baseline (≈ 1/√d_model).

Everything here depends on the weights only, not on the prompt. Composition
scores take seconds, so they run as a background job with progress and cancel.
"""

from __future__ import annotations

from dash import Dash, Input, Output, dcc, html

from headscope.dashboard import results
from headscope.dashboard.background import job_options, on_death
from headscope.dashboard.components import card, graph, page_header, progress_block
from headscope.dashboard.inputs import check_head, choice
from headscope.dashboard.messages import alert, describe, guarded
from headscope.dashboard.session import ModelSession
from headscope.figures.heads import layer_head_heatmap
from headscope.figures.spectral import composition_matrix, marchenko_pastur, singular_spectra
from headscope.figures.style import message_figure

CIRCUITS = ("QK", "OV")
KINDS = ("K", "Q", "V")


def _dropdown(component_id: str, options: list, value, width: str = "110px") -> dcc.Dropdown:
    return dcc.Dropdown(
        id=component_id, options=options, value=value, clearable=False, style={"width": width}
    )


def layout(session: ModelSession) -> list:
    spec = session.spec
    layers = range(spec.n_layers) if spec is not None else range(1)
    heads = range(spec.n_heads) if spec is not None else range(1)
    controls = html.Div(
        [
            html.Div(
                [
                    html.Label("layer"),
                    _dropdown("spec-layer", [{"label": str(i), "value": i} for i in layers], 0),
                ],
                className="hs-control",
            ),
            html.Div(
                [
                    html.Label("head"),
                    _dropdown("spec-head", [{"label": str(i), "value": i} for i in heads], 0),
                ],
                className="hs-control",
            ),
            html.Div(
                [
                    html.Label("circuit"),
                    dcc.RadioItems(
                        id="spec-circuit",
                        value="QK",
                        inline=True,
                        options=[{"label": f" {c} ", "value": c} for c in CIRCUITS],
                    ),
                ],
                className="hs-control",
            ),
            html.Div(
                [
                    html.Label("MP fit of"),
                    _dropdown(
                        "spec-matrix",
                        [{"label": m, "value": m} for m in results.MP_MATRICES],
                        "W_Q",
                    ),
                ],
                className="hs-control",
            ),
        ],
        className="hs-controls",
    )
    return [
        *page_header(
            "Spectral",
            "Weights only (the prompt does not matter here). Norm gains are folded into the "
            "weights; row-vector convention as in transformer-lens.",
            "spec-message",
        ),
        card(None, controls),
        html.Div(
            [
                card(
                    "Singular values",
                    graph("spec-spectra", message="Computing…"),
                    note="Every head in grey, the selected head in colour.",
                ),
                card(
                    "Marchenko–Pastur fit",
                    graph("spec-mp", message="Computing…"),
                    note="Eigenvalues of WᵀW/N for the selected head's matrix; outliers lie "
                    "above the bulk edge plus a Tracy–Widom margin.",
                ),
            ],
            className="hs-grid-2",
        ),
        html.Div(
            [
                card(
                    "Stable rank",
                    graph("spec-stable", height=260),
                    note="‖W‖²_F / ‖W‖²₂ of the selected circuit.",
                ),
                card(
                    "Effective rank",
                    graph("spec-effective", height=260),
                    note="exp(entropy of σ/Σσ) of the selected circuit.",
                ),
                card(
                    "Copying score",
                    graph("spec-copying", height=260),
                    note="Re(Σλ)/Σ|λ| of W_E·OV·W_U: +1 copies tokens, −1 suppresses them.",
                ),
            ],
            className="hs-grid-3",
        ),
        card(
            "Composition",
            html.Div(
                [
                    html.Div(
                        [
                            html.Label("kind"),
                            dcc.RadioItems(
                                id="spec-kind",
                                value="K",
                                inline=True,
                                options=[
                                    {"label": f" {k}-composition ", "value": k} for k in KINDS
                                ],
                            ),
                        ],
                        className="hs-control",
                    )
                ],
                className="hs-controls",
            ),
            progress_block("spec"),
            graph("spec-composition", message="Computing…", height=420),
            note="‖W_OV(writer)·W(reader)‖_F / (‖W_OV‖_F‖W‖_F) for every writer in an earlier "
            "layer; the colour scale starts at the random baseline.",
        ),
    ]


def spectral_outputs(
    session: ModelSession, layer: object, head: object, circuit: object, matrix: object
) -> tuple:
    """(spectra, MP fit, stable rank, effective rank, copying figures, message)."""
    spec = session.require_model().spec
    layer_i, head_i = check_head(spec, layer, head)
    which = choice(circuit, CIRCUITS, "QK")
    matrix_name = choice(matrix, results.MP_MATRICES, "W_Q")
    result = results.spectra(session)
    circuit_spectrum = result.qk if which == "QK" else result.ov
    values = circuit_spectrum.singular_values
    curves = {
        f"{layer}.{head} {which}": values[layer, head]
        for layer in range(spec.n_layers)
        for head in range(spec.n_heads)
    }
    chosen = f"{layer_i}.{head_i} {which}"
    spectra_figure = singular_spectra(curves, highlight=[chosen], title=f"{which} singular values")
    selected = (layer_i, head_i)
    stable = layer_head_heatmap(
        circuit_spectrum.stable_rank, colorbar_title="stable rank", selected=selected, fmt=".1f"
    )
    effective = layer_head_heatmap(
        circuit_spectrum.effective_rank,
        colorbar_title="effective rank",
        selected=selected,
        fmt=".1f",
    )
    if result.copying is not None:
        copying = layer_head_heatmap(
            result.copying, colorbar_title="copying", signed=True, selected=selected
        )
    else:
        copying = message_figure(f"{spec.name} has no trained LM head: copying scores need W_U")
    problems = []
    try:
        fit = results.mp_fit(session, layer_i, head_i, matrix_name)
        mp = marchenko_pastur(
            fit.eigenvalues,
            sigma2=fit.sigma2,
            ratio=fit.aspect_ratio,
            outlier_threshold=fit.threshold,
            title=f"{matrix_name} of head {layer_i}.{head_i} ({fit.n_rows}×{fit.n_columns})",
        )
    except Exception as error:
        problems.append(describe(error, "the Marchenko–Pastur fit"))
        mp = message_figure("Marchenko–Pastur fit unavailable")
    message = alert("; ".join(problems), kind="warning") if problems else None
    return spectra_figure, mp, stable, effective, copying, message


def composition_output(session: ModelSession, kind: object) -> tuple:
    """(composition figure, message) for one composition kind."""
    spec = session.require_model().spec
    which = choice(kind, KINDS, "K")
    scores = results.composition(session, which)
    if spec.n_layers < 2:
        return message_figure("composition needs at least two layers"), None
    # Writers in layers 0..L−2 (rows), readers in layers 1..L−1 (columns).
    grid = scores.scores[:-1, :, 1:, :].reshape((spec.n_layers - 1) * spec.n_heads, -1)
    writers = [
        f"{layer}.{head}" for layer in range(spec.n_layers - 1) for head in range(spec.n_heads)
    ]
    readers = [
        f"{layer}.{head}" for layer in range(1, spec.n_layers) for head in range(spec.n_heads)
    ]
    figure = composition_matrix(
        grid, writers, readers=readers, baseline=scores.baseline, kind=which
    )
    return figure, None


def head_spectra_figure(session: ModelSession, layer: int, head: int):
    """The head page's QK and OV singular values of one head."""
    result = results.spectra(session)
    curves = {}
    for name, circuit in (("QK", result.qk), ("OV", result.ov)):
        stable = float(circuit.stable_rank[layer, head])
        effective = float(circuit.effective_rank[layer, head])
        curves[f"{name} (stable rank {stable:.1f}, effective {effective:.1f})"] = (
            circuit.singular_values[layer, head]
        )
    figure = singular_spectra(curves, highlight=list(curves), title=f"head {layer}.{head}")
    figure.update_layout(
        height=330,
        margin={"b": 100},
        legend={"y": -0.42, "yanchor": "top", "x": 0, "xanchor": "left"},
    )
    return figure


def _composition_failed(message: str) -> tuple:
    return message_figure(message), alert(message)


def register(app: Dash, session: ModelSession, manager) -> None:
    @app.callback(
        Output("spec-spectra", "figure"),
        Output("spec-mp", "figure"),
        Output("spec-stable", "figure"),
        Output("spec-effective", "figure"),
        Output("spec-copying", "figure"),
        Output("spec-message", "children"),
        Input("spec-layer", "value"),
        Input("spec-head", "value"),
        Input("spec-circuit", "value"),
        Input("spec-matrix", "value"),
    )
    @guarded(lambda m: (*(message_figure(m),) * 5, alert(m)), "the spectral analysis")
    def _spectral(layer, head, circuit, matrix):
        return spectral_outputs(session, layer, head, circuit, matrix)

    @app.callback(
        Output("spec-composition", "figure"),
        Output("spec-message", "children", allow_duplicate=True),
        Input("spec-kind", "value"),
        **job_options("spec", manager, run_button=False, prevent_initial_call="initial_duplicate"),
    )
    @on_death(_composition_failed, "the composition job")
    def _composition(set_progress, kind):
        set_progress(("0", "1", f"computing {choice(kind, KINDS, 'K')}-composition scores…"))
        try:
            return composition_output(session, kind)
        except Exception as error:
            return _composition_failed(describe(error, "the composition scores"))
