"""The frame around every page: header with the model and the page links, the
one prompt box that drives all pages, and the URL router.

The prompt lives in the browser (`prompt-store`, session storage) and in the
URL (`?prompt=`); the server only caches results keyed by prompt text.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from dash import ALL, Dash, Input, Output, State, ctx, dcc, html, no_update

from headscope.dashboard import routes, state
from headscope.dashboard.components import card
from headscope.dashboard.examples import default_prompt
from headscope.dashboard.messages import alert, guarded, safe_text
from headscope.dashboard.refusals import prompt_problem
from headscope.dashboard.session import ModelSession
from headscope.errors import HeadscopeError


def model_line(session: ModelSession) -> str:
    spec = session.spec
    if spec is None:
        return f"{session.name} · not loaded"
    kind = "causal" if spec.causal else "bidirectional"
    kv = f" ({spec.n_kv_heads} kv heads)" if spec.n_kv_heads != spec.n_heads else ""
    lm = "" if spec.has_lm_head else " · no LM head"
    if getattr(session, "offline", None) is not None:
        lm += " · no model loaded"
    return (
        f"{spec.name} · {spec.architecture} · {spec.n_layers} layers × {spec.n_heads} heads{kv}"
        f" · {kind} · {spec.positional} positions{lm}"
    )


def state_choices(session: ModelSession) -> state.Choices:
    """The metrics, target rules, clustering methods and dynamics choices the
    URL's state may name for this session's model."""
    from headscope.dashboard import clusters, dynamics
    from headscope.dashboard.importance import TARGET_CHOICES, metric_choices

    return state.Choices(
        metric_choices(session.spec),
        TARGET_CHOICES,
        methods=clusters.METHODS,
        scores=dynamics.SCORES,
        steps=dynamics.series_steps(),
        deltas=dynamics.DIFF_KEYS,
        series_layers=dynamics.series_layers(),
        series=dynamics.SERIES[0],
    )


def session_controls() -> html.Div:
    """Save the view as a session file; load one (size-limited in the browser and here)."""
    return html.Div(
        [
            html.Button(
                "Save session",
                id="session-save",
                className="hs-button hs-button-quiet",
                n_clicks=0,
                title="download this view (page, prompt, gates, heads, metric, target) as JSON",
            ),
            dcc.Upload(
                html.Button(
                    "Load session",
                    className="hs-button hs-button-quiet",
                    title="open a session file saved with Save session",
                ),
                id="session-upload",
                accept=".json,application/json",
                max_size=state.MAX_SESSION_BYTES,
                multiple=False,
            ),
            dcc.Download(id="session-download"),
        ],
        className="hs-session",
        style={"display": "flex", "gap": "6px", "marginLeft": "auto"},
    )


def layout(session: ModelSession) -> html.Div:
    # A vision model takes images (the Vision page): no prompt box, no text pages in the nav.
    vision = bool(getattr(session.spec, "is_vision", False))
    nav = [
        dcc.Link(
            page.title,
            href=page.path,
            id=f"nav-{page.kind}",
            title=page.description,
            style={} if routes.in_navigation(page, vision) else {"display": "none"},
        )
        for page in routes.NAV_PAGES
    ]
    load_problem = (
        alert(f"The model could not be loaded: {session.load_error}")
        if session.load_error
        else None
    )
    # A saved capture or report (`offline`) has its own text: the box shows it, read-only.
    offline = getattr(session, "offline", None) is not None
    return html.Div(
        [
            dcc.Location(id="url", refresh="callback-nav"),
            dcc.Store(id="prompt-store", storage_type="session"),
            dcc.Store(id="page-kind", storage_type="memory"),
            dcc.Store(id="page-path", storage_type="memory"),
            # Gates, heads, metric and target (`state`): what the URL set (pages read it)
            # and that plus the pages' edits (links, the address bar, session files).
            dcc.Store(id="view-state", storage_type="memory"),
            dcc.Store(id="view-current", storage_type="memory"),
            dcc.Store(id="view-state-written", storage_type="memory"),
            html.Div(
                [
                    html.Div(
                        [
                            html.Span("headscope", className="hs-brand"),
                            html.Span(model_line(session), className="hs-model", id="model-line"),
                            session_controls(),
                        ],
                        className="hs-header-top",
                    ),
                    html.Nav(nav, className="hs-nav"),
                ],
                className="hs-header",
            ),
            html.Div(
                [
                    dcc.Textarea(
                        id="prompt-input",
                        placeholder=(
                            "No model is loaded: the saved text cannot be changed"
                            if offline
                            else "Type a prompt and press Run (Ctrl+Enter)"
                        ),
                        spellCheck=False,
                        value="",
                        readOnly=offline,
                    ),
                    html.Div(
                        [
                            html.Button(
                                "Run",
                                id="prompt-run",
                                className="hs-button",
                                n_clicks=0,
                                disabled=offline,
                            ),
                            html.Div(id="prompt-info", className="hs-prompt-info"),
                        ],
                        className="hs-prompt-side",
                    ),
                ],
                className="hs-promptbar",
                style={"display": "none"} if vision else {},
            ),
            html.Main(
                [
                    html.Div(load_problem, id="model-message"),
                    html.Div(id="state-message"),
                    html.Div(id="page-content"),
                ],
                className="hs-main",
            ),
        ]
    )


# -- callback bodies (plain functions, unit-tested) --------------------------------------------


def resolve_prompt(
    session: ModelSession,
    trigger: object,
    search: object,
    typed: object,
    stored: object,
    view: object = None,
) -> tuple:
    """Decide the session's prompt after a Run click or a URL change.

    Returns (store, url search, prompt box value, info line, message); dash's
    `no_update` where nothing changes. A prompt that fails validation (empty,
    too long for the context, not valid text) is not stored: the message says
    why. Values of the wrong type (the browser sends JSON) count as missing.
    """
    current = stored.get("prompt") if isinstance(stored, dict) else None
    current = current if isinstance(current, str) else None
    from_url = routes.prompt_from_search(search)
    if trigger == "prompt-run":
        candidate, typed_now = typed, True
    else:
        candidate, typed_now = from_url or current or default_prompt(session.spec), False
    try:
        batch = session.tokenize(candidate)
    except HeadscopeError as error:
        message = prompt_problem(session, candidate, error, search)
        if typed_now:
            return no_update, no_update, no_update, no_update, message
        # A bad prompt in a shared URL: say so, and keep the box showing it (as
        # text the browser can take back).
        shown = safe_text(candidate) if isinstance(candidate, str) else no_update
        return no_update, no_update, shown, no_update, message
    info = prompt_info(session, candidate, batch.lengths[0])
    store = (
        no_update
        if candidate == current
        else {
            "prompt": candidate,
            "search": routes.search_for(candidate),
        }
    )
    # A new prompt keeps the view state (the address bar's, `view`, when known).
    url_search = (
        no_update
        if candidate == from_url
        else state.search_with_state(candidate, view)
        if isinstance(view, dict)
        else routes.with_prompt(search, candidate)
    )
    return store, url_search, candidate, info, None


#: The unknown words the prompt box lists by name (the rest are counted).
SHOWN_UNKNOWN = 20
_NARROW = {"maxWidth": "360px"}


def prompt_info(session: ModelSession, text: str, n_tokens: int) -> str | list:
    """The prompt box's info line: the token count, the special tokens the
    tokenizer put around the text ("<bos> prepended", "[CLS] and [SEP] added")
    and the limit; plus, when words became the unk token, a warning naming
    them and, for a small word-level vocabulary, the words the model knows.

    A plain string when there is nothing to warn about. Prompt words are
    user text: they go into components as text, never as HTML."""
    model = session.require_model()
    added = model.added_tokens(text)
    framing = "" if not (added.prefix or added.suffix) else f" · {added.described}"
    line = f"{n_tokens} tokens{framing} · limit {session.token_limit}"
    unknown = list(dict.fromkeys(word.text for word in model.unknown_words(text)))
    if not unknown:
        return line
    unk = model.tokenizer.unk_token
    shown = ", ".join(unknown[:SHOWN_UNKNOWN])
    more = f" and {len(unknown) - SHOWN_UNKNOWN} more" if len(unknown) > SHOWN_UNKNOWN else ""
    plural = "s" if len(unknown) != 1 else ""
    verb = "are" if len(unknown) != 1 else "is"
    children: list = [
        html.Div(line),
        html.Div(
            f"⚠ {len(unknown)} word{plural} {verb} not in the model's vocabulary and "
            f"became {unk}: {shown}{more}",
            className="hs-alert hs-alert-info",
            role="status",
            id="prompt-unknown",
            style={**_NARROW, "margin": "2px 0 0 0", "padding": "5px 8px", "fontSize": "12px"},
        ),
    ]
    vocabulary = model.word_vocabulary()
    if vocabulary:
        children.append(
            html.Details(
                [
                    html.Summary(f"the {len(vocabulary)} words {model.spec.name} knows"),
                    html.Div(
                        " ".join(vocabulary),
                        style={"fontFamily": "var(--hs-mono)", "overflowWrap": "anywhere"},
                    ),
                ],
                id="prompt-vocabulary",
                style=_NARROW,
            )
        )
    return children


def render_page(pages: dict[str, Callable[[], list]], pathname: object) -> list:
    """The content of the page at `pathname` (a "not found" card for unknown paths).

    Only called when the page kind changes: a client-side callback compares
    kinds first, so moving between heads keeps the head page and only its
    figures update."""
    route = routes.parse_path(pathname)
    if route.kind == "missing":
        return [
            card(
                "Page not found",
                html.P(f"There is no page at {_shown_path(pathname)}."),
                html.P("Pick a page from the links above."),
            )
        ]
    return pages[route.kind]()


def _shown_path(pathname: object) -> str:
    if isinstance(pathname, str):
        return safe_text(pathname, limit=200)
    return f"{type(pathname).__name__} (not a path)"


def _page_failed(message: str) -> list:
    return [card("This page failed", alert(message))]


#: Client-side helpers (inlined into the page, see theme.INDEX_STRING): the page
#: kind of a path, mirroring routes.parse_path.
ROUTING_SCRIPT = """
window.headscope = {
  kindOf: function(pathname) {
    const path = (pathname || "/").replace(/\\/+$/, "") || "/";
    if (path === "/") { return "overview"; }
    if (path === "/head" || /^\\/head\\/\\d{1,4}\\/\\d{1,4}$/.test(path)) { return "head"; }
    const kinds = KINDS;
    const name = path.slice(1);
    return kinds.indexOf(name) >= 0 ? name : "missing:" + path;
  },
  // Whether two searches hold the same view-state values (the prompt is not compared).
  sameState: function(a, b) {
    const pa = new URLSearchParams(a || ""), pb = new URLSearchParams(b || "");
    return STATE_KEYS.every(function(key) { return (pa.get(key) || "") === (pb.get(key) || ""); });
  },
  // `search` with the view state's values set (empty ones removed); unchanged without a state.
  stateSearch: function(search, state) {
    const params = new URLSearchParams(search || "");
    if (!state) { return search || ""; }
    STATE_KEYS.forEach(function(key) {
      const value = state[key];
      if (typeof value === "string" && value !== "") { params.set(key, value); }
      else { params.delete(key); }
    });
    const text = params.toString();
    return text ? "?" + text : "";
  }
};
""".replace(
    "KINDS", json.dumps([k for k in routes.PAGE_KINDS if k not in ("overview", "head")])
).replace("STATE_KEYS", json.dumps(list(state.STATE_KEYS)))


def register(app: Dash, session: ModelSession, pages: dict[str, Callable[[], list]]) -> None:
    @app.callback(
        Output("prompt-store", "data"),
        Output("url", "search"),
        Output("prompt-input", "value"),
        Output("prompt-info", "children"),
        Output("model-message", "children"),
        Input("prompt-run", "n_clicks"),
        Input("url", "search"),
        State("prompt-input", "value"),
        State("prompt-store", "data"),
        State("view-current", "data"),
    )
    @guarded(lambda m: (no_update, no_update, no_update, no_update, alert(m)), "the prompt box")
    def _sync_prompt(_clicks, search, typed, stored, view):
        if getattr(session, "offline", None) is not None:
            return offline_prompt(session, search, stored)
        if getattr(session.spec, "is_vision", False):  # images, not prompts
            return no_update, no_update, no_update, no_update, None
        result = resolve_prompt(session, ctx.triggered_id, search, typed, stored, view)
        if session.load_error:
            problem = alert(f"The model could not be loaded: {session.load_error}")
            return (*result[:4], problem)
        return result

    # Route: the client decides whether the page kind changed (no round trip when
    # moving between heads); only then does the server render the new page.
    app.clientside_callback(
        """
        function(pathname, current) {
            const kind = window.headscope.kindOf(pathname);
            if (kind === current) { return [window.dash_clientside.no_update,
                                            window.dash_clientside.no_update]; }
            return [kind, pathname];
        }
        """,
        Output("page-kind", "data"),
        Output("page-path", "data"),
        Input("url", "pathname"),
        State("page-kind", "data"),
    )

    @app.callback(Output("page-content", "children"), Input("page-path", "data"))
    @guarded(_page_failed, "the page")
    def _route(pathname):
        return render_page(pages, pathname)

    # Page links carry the prompt; the current page is marked (client side).
    app.clientside_callback(
        """
        function(pathname, store, viewState) {
            const pages = PAGES;
            const search = window.headscope.stateSearch((store && store.search) || "", viewState);
            const kind = window.headscope.kindOf(pathname);
            const path = (pathname || "/").replace(/\\/+$/, "") || "/";
            const hrefs = pages.map(p => (p[0] === "head" && kind === "head" && path !== "/head"
                                          ? path : p[1]) + search);
            const classes = pages.map(p => p[0] === kind ? "hs-active" : "");
            return hrefs.concat(classes);
        }
        """.replace("PAGES", json.dumps([[page.kind, page.path] for page in routes.NAV_PAGES])),
        [Output(f"nav-{page.kind}", "href") for page in routes.NAV_PAGES],
        [Output(f"nav-{page.kind}", "className") for page in routes.NAV_PAGES],
        Input("url", "pathname"),
        Input("prompt-store", "data"),
        Input("view-current", "data"),
    )
    register_state(app, session)

    # Ctrl+Enter in the prompt box clicks Run (client side: no server round trip).
    app.clientside_callback(
        """
        function(id) {
            const box = document.getElementById(id);
            if (box && !box.dataset.hsBound) {
                box.dataset.hsBound = "1";
                box.addEventListener("keydown", function(event) {
                    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
                        event.preventDefault();
                        document.getElementById("prompt-run").click();
                    }
                });
            }
            return window.dash_clientside.no_update;
        }
        """,
        Output("prompt-input", "title"),
        Input("prompt-input", "id"),
    )


# -- saved captures and reports: the fixed prompt ------------------------------------------------


def offline_prompt(session: ModelSession, search: object, stored: object) -> tuple:
    """The prompt box of a dashboard with no model (`session.offline` says what
    it serves): one of the saved capture's prompts, chosen by the URL's
    `?prompt=` (else the first), shown read-only. A report has no prompt."""
    prompts: tuple[str, ...] = getattr(session, "prompt_texts", ())
    info = f"{session.offline} · no model loaded: the text is fixed"
    if not prompts:
        return {"prompt": None, "search": ""}, no_update, "", info, None
    wanted = routes.prompt_from_search(search)
    chosen, message = prompts[0], None
    if wanted is not None and wanted in prompts:
        chosen = wanted
    elif wanted is not None:
        message = alert(
            "The URL's prompt is not one of the saved capture's prompts; showing its first.",
            kind="warning",
        )
    index = prompts.index(chosen)
    if len(prompts) > 1:
        info = f"{info} · prompt {index + 1} of {len(prompts)}"
    current = stored.get("prompt") if isinstance(stored, dict) else None
    store = (
        no_update if current == chosen else {"prompt": chosen, "search": routes.search_for(chosen)}
    )
    return store, no_update, chosen, info, message


# -- view state: the URL and session files -------------------------------------------------------


def model_name(session: ModelSession) -> str:
    """The name a session file is saved under (the model's own name when loaded)."""
    return session.spec.name if session.spec is not None else session.name


def sync_state(session: ModelSession, search: object, applied: object, current: object) -> tuple:
    """(view-state, view-current, message) after the URL changed: the state
    values the URL sets replace the current ones (values it does not name are
    kept, so links that carry only the prompt keep the gates); refused values
    are named in a warning, the rest still applies. `no_update` for a store
    that would not change."""
    updates, problems = state.state_from_search(search, session.spec, state_choices(session))
    base = current if isinstance(current, dict) else {}
    kept = {key: base[key] for key in state.STATE_KEYS if isinstance(base.get(key), str)}
    merged = {**kept, **updates}
    message = alert("; ".join(problems), kind="warning") if problems else None
    return (
        no_update if merged == applied else merged,
        no_update if merged == current else merged,
        message,
    )


def save_session(session: ModelSession, pathname: object, store: object, view: object) -> dict:
    """The session file of the current view, for dcc.Download."""
    prompt = store.get("prompt") if isinstance(store, dict) else None
    page = pathname if isinstance(pathname, str) else "/"
    document = state.session_document(
        model_name(session), page, prompt, view if isinstance(view, dict) else {}, session.spec
    )
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in model_name(session))[:60]
    return dcc.send_string(state.session_json(document), f"headscope-session-{name}.json")


def load_session(session: ModelSession, contents: object) -> str:
    """The URL a session file restores (InputError with the reason when it cannot)."""
    data = state.upload_bytes(contents)
    page, prompt, view = state.read_session(
        data, model_name(session), session.spec, state_choices(session)
    )
    return state.session_href(page, prompt, view)


#: Mirrors the view state into the address bar (history.replaceState: no
#: navigation, no callback), so that the URL always reproduces the view.
URL_WRITER_JS = """
function(viewState, _store, _pathname, _search) {
    if (!viewState) { return window.dash_clientside.no_update; }
    const current = window.location.search;
    const next = window.headscope.stateSearch(current, viewState);
    // Only a change of the state's own keys is written: when a new prompt and its
    // URL are output together this may run before dcc.Location has pushed the new
    // address, and rewriting the whole search would put the old prompt back.
    if (!window.headscope.sameState(current, next)) {
        window.history.replaceState(window.history.state, "",
                                    window.location.pathname + next + window.location.hash);
    }
    return next;
}
"""


def register_state(app: Dash, session: ModelSession) -> None:
    """The view state's callbacks: URL → store, store → URL, Save and Load session."""

    @app.callback(
        Output("view-state", "data"),
        Output("view-current", "data"),
        Output("state-message", "children"),
        Input("url", "search"),
        State("view-state", "data"),
        State("view-current", "data"),
    )
    @guarded(lambda m: (no_update, no_update, alert(m)), "the URL's view state")
    def _sync_state(search, applied, current):
        return sync_state(session, search, applied, current)

    # A page's edits (its `state_out` store) join the current state.
    @app.callback(
        Output("view-current", "data", allow_duplicate=True),
        Input({"type": "state-out", "page": ALL}, "data"),
        State("view-current", "data"),
        prevent_initial_call=True,
    )
    def _merge_edits(edits, current):
        source = ctx.triggered_id
        if not isinstance(source, dict) or not isinstance(edits, list):
            return no_update
        for item, value in zip(ctx.inputs_list[0], edits, strict=False):
            if isinstance(item, dict) and item.get("id") == source:
                merged = state.merge_edits(current, value)
                return no_update if merged is None or merged == current else merged
        return no_update

    app.clientside_callback(
        URL_WRITER_JS,
        Output("view-state-written", "data"),
        Input("view-current", "data"),
        Input("prompt-store", "data"),
        Input("url", "pathname"),
        Input("url", "search"),
    )

    @app.callback(
        Output("session-download", "data"),
        Output("state-message", "children", allow_duplicate=True),
        Input("session-save", "n_clicks"),
        State("url", "pathname"),
        State("prompt-store", "data"),
        State("view-current", "data"),
        prevent_initial_call=True,
    )
    @guarded(lambda m: (no_update, alert(m)), "saving the session")
    def _save(_clicks, pathname, store, view):
        return save_session(session, pathname, store, view), None

    @app.callback(
        Output("url", "href", allow_duplicate=True),
        Output("state-message", "children", allow_duplicate=True),
        Output("session-upload", "contents"),
        Input("session-upload", "contents"),
        prevent_initial_call=True,
    )
    @guarded(lambda m: (no_update, alert(f"The session was not loaded: {m}"), None), "the session")
    def _load(contents):
        if contents is None:
            return no_update, no_update, no_update
        return load_session(session, contents), None, None
