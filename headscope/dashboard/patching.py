"""Patching page: the prompt box's text is the clean prompt; a corrupted
version (typed, or built by a helper of `experiments.corruption`) is run, and
each head's clean z is put back into the corrupted run (docs/methods.md §2.5):
exactly (activation patching) or to first order (attribution patching), per
head and per (head, position).

Every number is the fraction of the clean − corrupted metric gap a patch
restores: 0 is the corrupted run, 1 the clean run. The per-head maps come from
`experiments.score_heads` (methods "activation" and "attribution"), the call
the Importance page and `headscope report` make, so the metric and the target
tokens mean the same there; the (head × position) map from
`experiments.scoring.position_patching`. When the corruption does not change
the metric (the gap is ~0) the fractions divide by nothing: the page says so
and draws no map.
"""

from __future__ import annotations

from collections.abc import Callable

from dash import Dash, Input, Output, State, ctx, dcc, html, no_update
from dash.exceptions import PreventUpdate

from headscope.dashboard.background import job_options, on_death
from headscope.dashboard.components import card, graph, page_header, progress_block, token_chips
from headscope.dashboard.importance import TARGET, TARGET_CHOICES, metric_choices, metric_for
from headscope.dashboard.inputs import as_int, choice
from headscope.dashboard.messages import alert, describe, guarded
from headscope.dashboard.pickers import metric_picker, target_picker
from headscope.dashboard.session import ModelSession, check_prompt_text
from headscope.errors import InputError
from headscope.experiments.corruption import (
    Corruption,
    replace_repeat,
    shuffle_words,
    swap_token,
    token_difference,
)
from headscope.experiments.scoring import (
    PATCHING_METHODS,
    HeadScores,
    PatchingBaseline,
    ScoringPrompt,
    patching_baseline,
    position_patching,
    score_heads,
)
from headscope.figures.patching import head_name, patching_heatmap, position_heatmap
from headscope.figures.style import message_figure

#: The per-head maps, one per method, then the (head × position) map.
OUTPUT_IDS = ("patch-activation", "patch-attribution", "patch-positions")
METHOD_NAMES = {"activation": "activation patching", "attribution": "attribution patching"}
#: Heads the (head × position) map shows when it shows the top heads.
TOP_HEADS = 6
SCALE = "0 = the corrupted run, 1 = the clean run"
TOKENS_SHOWN = 200
#: Separates the clean and the corrupted prompt on a line of more pairs.
PAIR_SEPARATOR = "||"
#: Pairs the page scores at most (the prompt box's pair included).
MAX_PAIRS = 32


def row_options(session: ModelSession) -> list[dict]:
    """What the (head × position) map shows: the top heads, or one layer."""
    spec = session.spec
    options = [{"label": f"the {TOP_HEADS} heads restoring most", "value": "top"}]
    if spec is not None:
        options += [
            {"label": f"layer {layer} (all {spec.n_heads} heads)", "value": f"layer-{layer}"}
            for layer in range(spec.n_layers)
        ]
    return options


def layout(session: ModelSession) -> list:
    spec = session.spec
    _, described = metric_for(session) if spec is not None else ("", "")
    return [
        *page_header(
            "Patching",
            "The prompt box holds the clean prompt. Each head's clean z is put into the run "
            f"of the corrupted prompt; the maps show the fraction of the metric's clean − "
            f"corrupted gap that restores ({SCALE}). Default metric: {described}.",
            "patch-message",
        ),
        card(
            None,
            html.Div(
                [
                    html.Div(
                        [
                            html.Label("clean prompt (the prompt box)"),
                            html.Div(id="patch-clean", className="hs-tokens"),
                            html.Label("corrupted prompt", htmlFor="patch-corrupted"),
                            dcc.Textarea(
                                id="patch-corrupted",
                                value="",
                                placeholder="the corrupted prompt: the same number of tokens, "
                                "some changed (or build one with the buttons below)",
                                spellCheck=False,
                                style={
                                    "width": "560px",
                                    "height": "64px",
                                    "fontFamily": "var(--hs-mono)",
                                    "fontSize": "12px",
                                },
                            ),
                            html.Div(id="patch-corrupted-tokens", className="hs-tokens"),
                            html.Div(id="patch-counts", className="hs-muted"),
                            html.Div(
                                [
                                    html.Button(
                                        "replace the repeated half",
                                        id="patch-replace-repeat",
                                        className="hs-button hs-button-quiet",
                                        n_clicks=0,
                                        title="the later copy of the longest repeated run of "
                                        "words, replaced by words absent from the prompt",
                                    ),
                                    html.Button(
                                        "shuffle the words",
                                        id="patch-shuffle",
                                        className="hs-button hs-button-quiet",
                                        n_clicks=0,
                                    ),
                                    html.Button(
                                        "swap the word at token",
                                        id="patch-swap",
                                        className="hs-button hs-button-quiet",
                                        n_clicks=0,
                                    ),
                                    dcc.Input(
                                        id="patch-swap-position",
                                        type="number",
                                        min=0,
                                        step=1,
                                        value=1,
                                        style={"width": "64px"},
                                    ),
                                ],
                                style={"display": "flex", "gap": "6px", "alignItems": "center"},
                            ),
                            html.Div(id="patch-helper-note", className="hs-note"),
                            html.Details(
                                [
                                    html.Summary(
                                        "more prompt pairs (optional): the per-head maps then "
                                        "show the mean over pairs, with 95% bootstrap intervals"
                                    ),
                                    dcc.Textarea(
                                        id="patch-pairs",
                                        value="",
                                        placeholder=f"one pair per line: clean prompt "
                                        f"{PAIR_SEPARATOR} corrupted prompt",
                                        spellCheck=False,
                                        style={
                                            "width": "560px",
                                            "height": "64px",
                                            "fontFamily": "var(--hs-mono)",
                                            "fontSize": "12px",
                                        },
                                    ),
                                ],
                                className="hs-muted",
                            ),
                        ],
                        className="hs-control",
                    ),
                    html.Div(
                        [
                            html.Label("methods"),
                            dcc.Checklist(
                                id="patch-methods",
                                options=[
                                    {
                                        "label": " activation patching (exact)",
                                        "value": "activation",
                                    },
                                    {
                                        "label": " attribution patching (first order)",
                                        "value": "attribution",
                                    },
                                ],
                                value=["activation", "attribution"],
                            ),
                            html.Label("by position: heads", htmlFor="patch-rows"),
                            dcc.Dropdown(
                                id="patch-rows",
                                value="top",
                                clearable=False,
                                options=row_options(session),
                                style={"width": "250px"},
                            ),
                            html.Label("by position: method"),
                            dcc.RadioItems(
                                id="patch-position-method",
                                value="activation",
                                inline=True,
                                options=[
                                    {"label": " activation ", "value": "activation"},
                                    {"label": " attribution ", "value": "attribution"},
                                ],
                            ),
                        ],
                        className="hs-control",
                    ),
                    html.Div(
                        [
                            html.Label("metric", htmlFor="patch-metric"),
                            metric_picker("patch-metric", spec),
                            html.Label("target tokens (loss)", htmlFor="patch-target"),
                            target_picker("patch-target"),
                        ],
                        className="hs-control",
                    ),
                    html.Button("Patch heads", id="patch-run", className="hs-button", n_clicks=0),
                ],
                className="hs-controls",
            ),
            progress_block("patch"),
        ),
        html.Div(
            [
                card(
                    "Activation patching",
                    graph("patch-activation", message="Press Patch heads"),
                    note=f"One head's clean z put into the corrupted run, at every position. "
                    f"Fraction of the gap restored: {SCALE}.",
                ),
                card(
                    "Attribution patching",
                    graph("patch-attribution", message="Press Patch heads"),
                    note="(z_clean − z_corrupted)·∂metric/∂z on the corrupted run: the first-order "
                    f"estimate of activation patching. {SCALE}.",
                ),
            ],
            className="hs-grid-2",
        ),
        card(
            "By head and position",
            graph("patch-positions", message="Press Patch heads", height=320),
            note="One head's clean z put back at one position only. Columns are the clean "
            f"prompt's tokens (* changed in the corrupted prompt). {SCALE}.",
        ),
    ]


# -- callback bodies (plain functions, unit-tested) --------------------------------------------


def _clean_prompt(store: object) -> str:
    prompt = store.get("prompt") if isinstance(store, dict) else None
    return check_prompt_text(prompt)


def corrupt(session: ModelSession, helper: str, store: object, position: object, seed: int):
    """(corrupted text, note) from one helper ("repeat", "shuffle", "swap") on the
    clean prompt; InputError when it cannot be built."""
    clean = _clean_prompt(store)
    session.tokenize(clean)  # a clear message for a bad clean prompt
    model = session.require_model()
    seed = max(0, seed)
    corruption: Corruption
    if helper == "repeat":
        corruption = replace_repeat(model, clean, seed=seed)
    elif helper == "shuffle":
        corruption = shuffle_words(model, clean, seed=seed)
    elif helper == "swap":
        index = as_int(position)
        if index is None:
            raise InputError("give the token position of the word to swap (an integer)")
        corruption = swap_token(model, clean, index, seed=seed)
    else:
        raise InputError(f"unknown corruption helper {helper!r}")
    return corruption.text, f"{corruption.description}; {corruption.difference.described}."


def default_corruption(session: ModelSession, store: object) -> tuple[str, str]:
    """The corrupted prompt a new clean prompt starts with: its repeated half
    replaced where it has one, else its first word swapped (a change every
    later position sees, in a causal model too); ("", why) when neither can be
    built."""
    try:
        text, note = corrupt(session, "repeat", store, None, 0)
        return text, f"Built by 'replace the repeated half': {note}"
    except InputError:
        pass
    try:
        clean = _clean_prompt(store)
        first = len(session.require_model().added_tokens(clean).prefix)
        text, note = corrupt(session, "swap", store, first, 0)
        return text, f"Built by 'swap the word at token': {note}"
    except InputError as error:
        return "", f"Write a corrupted prompt ({describe(error)})."


def token_views(session: ModelSession, store: object, corrupted: object) -> tuple:
    """(clean chips, corrupted chips, counts line): both prompts' tokens, the
    changed ones shaded, and both token counts, with a warning when they
    differ (patching needs equal counts)."""
    clean = _clean_prompt(store)
    model = session.require_model()
    clean_tokens = session.tokenize(clean).tokens[0]
    clean_chips = token_chips(clean_tokens, limit=TOKENS_SHOWN)
    if not isinstance(corrupted, str) or not corrupted.strip():
        return clean_chips, [], f"clean {len(clean_tokens)} tokens; no corrupted prompt yet"
    difference = token_difference(model, clean, check_prompt_text(corrupted))
    changed = set(difference.changed)
    weights = [1.0 if i in changed else 0.0 for i in range(len(difference.corrupted_tokens))]
    corrupted_chips = token_chips(difference.corrupted_tokens, weights=weights, limit=TOKENS_SHOWN)
    if not difference.equal_length:
        counts = alert(
            f"The clean prompt has {len(difference.clean_tokens)} tokens and the corrupted "
            f"prompt {len(difference.corrupted_tokens)}: patching puts clean activations back "
            "position by position, so it needs equal token counts.",
            kind="warning",
        )
    else:
        counts = difference.described
    return clean_chips, corrupted_chips, counts


def _rows(scores: HeadScores, method: str, rows: object, n_layers: int, n_heads: int) -> list:
    if isinstance(rows, str) and rows.startswith("layer-"):
        layer = as_int(rows.removeprefix("layer-"))
        if layer is not None and 0 <= layer < n_layers:
            return [(layer, head) for head in range(n_heads)]
    ranking = scores.methods[method].ranking()
    return [(layer, head) for layer, head, _ in ranking[:TOP_HEADS]]


def extra_pairs(text: object) -> list[ScoringPrompt]:
    """More (clean, corrupted) pairs from the optional box: one per line,
    `clean || corrupted`; blank lines skipped. InputError naming the line
    that has no separator or an empty side."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return []
    if not isinstance(text, str):
        raise InputError("the prompt pairs must be text")
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) > MAX_PAIRS - 1:
        raise InputError(f"{len(lines)} more pairs; the page takes at most {MAX_PAIRS - 1}")
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(PAIR_SEPARATOR)
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise InputError(
                f"line {number} of the prompt pairs is not 'clean prompt {PAIR_SEPARATOR} "
                "corrupted prompt'"
            )
        clean, corrupted = (check_prompt_text(part.strip()) for part in parts)
        pairs.append(ScoringPrompt(clean, corrupted=corrupted, label=f"pair {len(pairs) + 2}"))
    return pairs


def patching_outputs(
    session: ModelSession,
    store: object,
    corrupted: object,
    methods: object,
    metric: object = None,
    target: object = TARGET,
    rows: object = "top",
    position_method: object = "activation",
    progress: Callable[[int, int, str], None] | None = None,
    *,
    pairs: object = None,
) -> tuple:
    """The three figures (activation, attribution, head × position) and a
    message: the clean and corrupted metric, their gap, the scored tokens and
    the heads that restore most. With more pairs (`pairs`, see `extra_pairs`)
    the per-head maps show the mean over pairs with 95% bootstrap intervals;
    the (head × position) map stays on the prompt box's pair. No map when the
    prompt box's gap is ~0; other pairs without a gap are left out, and the
    message says which."""
    report = progress or (lambda done, total, label: None)
    chosen = [m for m in PATCHING_METHODS if isinstance(methods, list) and m in methods]
    if not chosen:
        return _failed("choose at least one method")
    clean = _clean_prompt(store)
    session.tokenize(clean)
    if not isinstance(corrupted, str) or not corrupted.strip():
        raise InputError("no corrupted prompt: write one or build one with the buttons")
    session.tokenize(check_prompt_text(corrupted))
    model = session.require_model()
    spec = model.spec
    default, _ = metric_for(session)
    metric_name = choice(metric, metric_choices(spec), default)
    rule = choice(target, TARGET_CHOICES, TARGET)
    difference = token_difference(model, clean, corrupted)
    if not difference.equal_length:
        raise InputError(
            f"the clean prompt has {len(difference.clean_tokens)} tokens and the corrupted "
            f"prompt {len(difference.corrupted_tokens)}; patching needs equal token counts"
        )
    if not difference.changed:
        raise InputError("the corrupted prompt has the clean prompt's tokens: nothing to patch")
    prompt = ScoringPrompt(clean, corrupted=corrupted, label="prompt box")
    prompts = [prompt, *extra_pairs(pairs)]
    for item in prompts[1:]:
        session.tokenize(item.prompt)
        session.tokenize(item.corrupted)
    report(0, 100, "clean and corrupted runs…")
    with session.lock:
        baseline = patching_baseline(model, prompts, metric_name, rule)  # type: ignore[arg-type]
    if 0 in baseline.without_gap:
        return _no_gap(patching_baseline(model, [prompt], metric_name, rule))  # type: ignore[arg-type]
    notes = []
    if baseline.without_gap:
        left_out = [prompts[i].label for i in baseline.without_gap]
        notes.append(
            f"left out {', '.join(str(label) for label in left_out)}: the corruption does not "
            "change the metric there, so no fraction of it can be restored"
        )
        prompts = [p for i, p in enumerate(prompts) if i not in baseline.without_gap]
        with session.lock:
            baseline = patching_baseline(model, prompts, metric_name, rule)  # type: ignore[arg-type]

    def scoring(done: int, total: int, label: str) -> None:
        report(5 + 60 * done // max(1, total), 100, label)

    with session.lock:
        scores = score_heads(model, prompts, chosen, metric_name, rule, progress=scoring)  # type: ignore[arg-type]
    figures = dict.fromkeys(OUTPUT_IDS[:2], message_figure("not selected"))
    for method in chosen:
        if len(prompts) > 1:
            spread = scores.interval(method)
            figures[f"patch-{method}"] = patching_heatmap(
                spread.mean,
                interval=(spread.low, spread.high),
                support=f"95% bootstrap over {len(prompts)} prompt pairs",
            )
        else:
            figures[f"patch-{method}"] = patching_heatmap(scores.mean(method))
    by_position = choice(position_method, PATCHING_METHODS, "activation")
    ranked_by = by_position if by_position in scores.methods else chosen[0]
    heads = _rows(scores, ranked_by, rows, spec.n_layers, spec.n_heads)

    def positions(done: int, total: int, label: str) -> None:
        report(65 + 35 * done // max(1, total), 100, label)

    report(65, 100, f"{by_position} patching by position…")
    with session.lock:
        per_position = position_patching(
            model,
            prompt,
            heads,
            by_position,
            metric_name,
            rule,  # type: ignore[arg-type]
            progress=positions,
        )
    which = "top heads" if not str(rows).startswith("layer-") else f"layer {str(rows)[6:]}"
    figures["patch-positions"] = position_heatmap(
        per_position.scores,
        per_position.heads,
        per_position.clean_tokens,
        per_position.corrupted_tokens,
        title=f"{METHOD_NAMES[by_position]} by position, {which} (the prompt box's pair)",
    )
    message = _message(baseline, scores, chosen, notes)
    return (*(figures[key] for key in OUTPUT_IDS), message)


def _message(baseline: PatchingBaseline, scores: HeadScores, chosen: list[str], notes: list[str]):
    n = len(baseline.prompts)
    pairs = "1 prompt pair" if n == 1 else f"{n} prompt pairs"
    parts = [f"{pairs} · {baseline.described} · fractions of the gap: {SCALE}"]
    for method in chosen:
        top = scores.methods[method].ranking()[:3]
        listed = ", ".join(f"{head_name(layer, head)} {value:+.3f}" for layer, head, value in top)
        parts.append(f"{METHOD_NAMES[method]}, largest: {listed}")
    return alert(" · ".join([*parts, *notes]), kind="warning" if notes else "info")


def _no_gap(baseline: PatchingBaseline) -> tuple:
    text = (
        f"The corruption does not change the metric ({baseline.described}): patching "
        "fractions divide by this gap, so they are meaningless here and no map is drawn. "
        "Corrupt tokens the metric depends on (for the loss, tokens before the target tokens)."
    )
    blank = message_figure("no clean − corrupted gap: nothing to restore")
    return (*(blank,) * len(OUTPUT_IDS), alert(text, kind="warning"))


def _failed(message: str) -> tuple:
    blank = message_figure(message)
    return (*(blank,) * len(OUTPUT_IDS), alert(message))


HELPERS = {"patch-replace-repeat": "repeat", "patch-shuffle": "shuffle", "patch-swap": "swap"}


def register(app: Dash, session: ModelSession, manager) -> None:
    @app.callback(
        Output("patch-corrupted", "value"),
        Output("patch-helper-note", "children"),
        Input("prompt-store", "data"),
        Input("patch-replace-repeat", "n_clicks"),
        Input("patch-shuffle", "n_clicks"),
        Input("patch-swap", "n_clicks"),
        State("patch-swap-position", "value"),
    )
    @guarded(lambda message: (no_update, alert(message)), "the corruption helper")
    def _corrupt(store, repeat_clicks, shuffle_clicks, swap_clicks, position):
        trigger = ctx.triggered_id
        if trigger in HELPERS:
            clicks = {"repeat": repeat_clicks, "shuffle": shuffle_clicks, "swap": swap_clicks}
            helper = HELPERS[trigger]
            seed = as_int(clicks[helper]) or 0
            text, note = corrupt(session, helper, store, position, seed)
            return text, note
        if store is None:
            raise PreventUpdate
        return default_corruption(session, store)

    @app.callback(
        Output("patch-clean", "children"),
        Output("patch-corrupted-tokens", "children"),
        Output("patch-counts", "children"),
        Input("prompt-store", "data"),
        Input("patch-corrupted", "value"),
    )
    @guarded(lambda message: (no_update, [], alert(message)), "the token counts")
    def _tokens(store, corrupted):
        return token_views(session, store, corrupted)

    @app.callback(
        *(Output(key, "figure") for key in OUTPUT_IDS),
        Output("patch-message", "children"),
        Input("patch-run", "n_clicks"),
        State("prompt-store", "data"),
        State("patch-corrupted", "value"),
        State("patch-methods", "value"),
        State("patch-metric", "value"),
        State("patch-target", "value"),
        State("patch-rows", "value"),
        State("patch-position-method", "value"),
        State("patch-pairs", "value"),
        **job_options("patch", manager),
    )
    @on_death(_failed, "the patching job")
    def _patching(
        set_progress,
        _clicks,
        store,
        corrupted,
        methods,
        metric,
        target,
        rows,
        position_method,
        pairs,
    ):
        def report(done, total, label):
            set_progress((str(done), str(total), label))

        try:
            return patching_outputs(
                session,
                store,
                corrupted,
                methods,
                metric,
                target,
                rows,
                position_method,
                progress=report,
                pairs=pairs,
            )
        except Exception as error:
            return _failed(describe(error, "the patching job"))
