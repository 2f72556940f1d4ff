"""The frame around every page: header with the model and the page links, the
one prompt box that drives all pages, and the URL router.

The prompt lives in the browser (`prompt-store`, session storage) and in the
URL (`?prompt=`); the server only caches results keyed by prompt text.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from dash import Dash, Input, Output, State, ctx, dcc, html, no_update

from headscope.dashboard import routes
from headscope.dashboard.components import card
from headscope.dashboard.examples import default_prompt
from headscope.dashboard.messages import alert, describe, guarded, safe_text
from headscope.dashboard.session import ModelSession
from headscope.errors import HeadscopeError


def model_line(session: ModelSession) -> str:
    spec = session.spec
    if spec is None:
        return f"{session.name} · not loaded"
    kind = "causal" if spec.causal else "bidirectional"
    kv = f" ({spec.n_kv_heads} kv heads)" if spec.n_kv_heads != spec.n_heads else ""
    lm = "" if spec.has_lm_head else " · no LM head"
    return (
        f"{spec.name} · {spec.architecture} · {spec.n_layers} layers × {spec.n_heads} heads{kv}"
        f" · {kind} · {spec.positional} positions{lm}"
    )


def layout(session: ModelSession) -> html.Div:
    nav = [
        dcc.Link(page.title, href=page.path, id=f"nav-{page.kind}", title=page.description)
        for page in routes.NAV_PAGES
    ]
    load_problem = (
        alert(f"The model could not be loaded: {session.load_error}")
        if session.load_error
        else None
    )
    return html.Div(
        [
            dcc.Location(id="url", refresh="callback-nav"),
            dcc.Store(id="prompt-store", storage_type="session"),
            dcc.Store(id="page-kind", storage_type="memory"),
            dcc.Store(id="page-path", storage_type="memory"),
            html.Div(
                [
                    html.Div(
                        [
                            html.Span("headscope", className="hs-brand"),
                            html.Span(model_line(session), className="hs-model", id="model-line"),
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
                        placeholder="Type a prompt and press Run (Ctrl+Enter)",
                        spellCheck=False,
                        value="",
                    ),
                    html.Div(
                        [
                            html.Button("Run", id="prompt-run", className="hs-button", n_clicks=0),
                            html.Div(id="prompt-info", className="hs-prompt-info"),
                        ],
                        className="hs-prompt-side",
                    ),
                ],
                className="hs-promptbar",
            ),
            html.Main(
                [html.Div(load_problem, id="model-message"), html.Div(id="page-content")],
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
        message = alert(describe(error))
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
    url_search = no_update if candidate == from_url else routes.search_for(candidate)
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
  }
};
""".replace("KINDS", json.dumps([k for k in routes.PAGE_KINDS if k not in ("overview", "head")]))


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
    )
    @guarded(lambda m: (no_update, no_update, no_update, no_update, alert(m)), "the prompt box")
    def _sync_prompt(_clicks, search, typed, stored):
        result = resolve_prompt(session, ctx.triggered_id, search, typed, stored)
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
        function(pathname, store) {
            const pages = PAGES;
            const search = (store && store.search) || "";
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
    )

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
