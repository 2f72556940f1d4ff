"""create_app(): the headscope dashboard as a Dash app; run_dashboard(): serve it.

    from headscope.dashboard.app import create_app, run_dashboard
    app = create_app("toy-induction")          # or create_app(model=loaded_model)
    run_dashboard("minilm", port=8050)         # http://127.0.0.1:8050/

One model and one prompt box drive seven pages (see `routes.PAGES`). The app
works offline: dash serves its own scripts (no CDN) and the stylesheet is
inlined. Long jobs run in background processes (dash DiskcacheManager with a
cache in a temporary folder).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading

from dash import Dash, html

from headscope.dashboard import (
    flow,
    head,
    importance,
    overview,
    playground,
    position,
    results,
    shell,
    spectral,
)
from headscope.dashboard.background import background_manager
from headscope.dashboard.session import DEFAULT_MAX_TOKENS, ModelSession
from headscope.dashboard.theme import index_string
from headscope.models.loading import HeadscopeModel
from headscope.models.zoo import DEFAULT_MODEL

log = logging.getLogger("headscope.dashboard")


def create_app(
    model_name: str = DEFAULT_MODEL,
    *,
    model: HeadscopeModel | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_prompts: int = 32,
    max_cache_bytes: int = 1 << 30,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    warm_up: bool = True,
) -> Dash:
    """Build the dashboard for `model` (already loaded) or `model_name`
    (loaded here). A model that fails to load gives an app whose pages say
    why, instead of an exception.

    `cache_dir`: where background jobs keep results (default: a temporary
    folder removed at exit). `max_prompts` / `max_cache_bytes` bound the
    server's per-prompt LRU cache; `max_tokens` caps prompt length (and the
    model's context caps it too). `warm_up` starts computing the QK/OV
    spectra (weights only) in a background thread right away. The
    session is `app.headscope_session`.
    """
    options = {"max_prompts": max_prompts, "max_bytes": max_cache_bytes, "max_tokens": max_tokens}
    if model is not None:
        session = ModelSession(model, **options)
    else:
        session = ModelSession.load(model_name, **options)
    manager = background_manager(session, cache_dir)
    app = Dash(
        __name__,
        title=f"headscope · {session.name}",
        serve_locally=True,
        suppress_callback_exceptions=True,
        update_title=None,
        background_callback_manager=manager,
        assets_ignore=".*",
    )
    app.index_string = index_string(shell.ROUTING_SCRIPT)
    pages = {
        "overview": overview.layout,
        "head": head.layout,
        "flow": flow.layout,
        "importance": lambda: importance.layout(session),
        "position": lambda: position.layout(session),
        "spectral": lambda: spectral.layout(session),
        "playground": lambda: playground.layout(session),
    }
    app.layout = shell.layout(session)
    # Every page's components, so dash can check the callbacks' ids up front.
    app.validation_layout = html.Div(
        [shell.layout(session), *(component for page in pages.values() for component in page())]
    )
    shell.register(app, session, pages)
    overview.register(app, session)
    head.register(app, session)
    flow.register(app, session, manager)
    importance.register(app, session, manager)
    position.register(app, session)
    spectral.register(app, session, manager)
    playground.register(app, session)
    app.headscope_session = session
    if warm_up and session.model is not None:
        threading.Thread(
            target=results.warm_up, args=(session,), name="headscope-warm-up", daemon=True
        ).start()
    return app


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_dashboard(
    model: str | HeadscopeModel = DEFAULT_MODEL,
    host: str = "127.0.0.1",
    port: int = 8050,
    debug: bool = False,
    **options,
) -> None:
    """Serve the dashboard (blocking) and print its URL. Binds 127.0.0.1 and
    runs with debug off unless asked; warns when either is changed, since the
    app runs models on request and debug mode allows code execution."""
    if isinstance(model, HeadscopeModel):
        app = create_app(model=model, **options)
    else:
        app = create_app(str(model), **options)
    if not _is_loopback(host):
        print(
            f"warning: serving on {host}, reachable from other machines; the dashboard has "
            "no authentication and runs models on request"
        )
    if debug:
        print("warning: debug mode is on: the debugger allows running code; never expose it")
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(f"headscope dashboard: http://{shown}:{port}/  (Ctrl+C to stop)", flush=True)
    app.run(host=host, port=port, debug=debug)
