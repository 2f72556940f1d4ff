"""create_app(): the headscope dashboard as a Dash app; run_dashboard(): serve it.

    from headscope.dashboard.app import create_app, run_dashboard
    app = create_app("toy-induction")          # or create_app(model=loaded_model)
    run_dashboard("minilm", port=8050)         # http://127.0.0.1:8050/

One model and one prompt box drive seven pages (see `routes.PAGES`); an
eighth, Long context (`routes.LONG`), takes its own text up to the model's
context. The app works offline: dash serves its own scripts (no CDN) and the stylesheet is
inlined. Long jobs run in background processes (dash DiskcacheManager with a
cache in a temporary folder).

`run_dashboard(..., server="waitress")` serves with waitress instead of
werkzeug's development server; beyond loopback every request needs an access
token (`serving.TokenGate`; given, or generated and printed once in the URL).

`run_dashboard` binds its socket before it announces the URL (a port in use or
a host that cannot be bound raises `ServeError`, and nothing is printed), and
stops cleanly on Ctrl+C or SIGTERM: the listening socket closes, requests in
progress and the warm-up thread are given a few seconds to finish (the warm-up
stops between its steps), background jobs are killed and the cache folder is
removed. A thread must not be inside torch when the interpreter shuts down:
Python 3.11 ends such a daemon thread with pthread_exit, whose unwinding
through torch's C++ frames calls std::terminate ("terminate called without an
active exception", SIGABRT). That is why the threads are waited for, and why
the CLI (`exit_process=True`) leaves with os._exit, after the clean-up, when
one is still busy.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable

from dash import Dash, html

from headscope.dashboard import (
    clusters,
    contributions,
    dynamics,
    flow,
    head,
    importance,
    longcontext,
    overview,
    patching,
    playground,
    position,
    refusals,
    results,
    retrieval,
    shell,
    spectral,
    vision,
)
from headscope.dashboard.background import background_manager
from headscope.dashboard.serving import (
    TOKEN_PARAM,
    TokenGate,
    check_server,
    check_token,
    make_server,
    new_token,
)
from headscope.dashboard.session import DEFAULT_MAX_FLOW_TOKENS, DEFAULT_MAX_TOKENS, ModelSession
from headscope.dashboard.theme import index_string
from headscope.errors import InputError, ServeError
from headscope.models.loading import HeadscopeModel
from headscope.models.zoo import DEFAULT_MODEL

log = logging.getLogger("headscope.dashboard")

#: Seconds `run_dashboard` waits, on exit, for requests in progress and the warm-up.
SHUTDOWN_GRACE_S = 5.0


def create_app(
    model_name: str = DEFAULT_MODEL,
    *,
    model: HeadscopeModel | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_prompts: int = 32,
    max_cache_bytes: int = 1 << 30,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    max_flow_tokens: int = DEFAULT_MAX_FLOW_TOKENS,
    warm_up: bool = True,
    record: str | os.PathLike | None = None,
    report: str | os.PathLike | None = None,
) -> Dash:
    """Build the dashboard for `model` (already loaded) or `model_name`
    (loaded here). A model that fails to load gives an app whose pages say
    why, instead of an exception.

    `cache_dir`: where background jobs keep results (default: a temporary
    folder removed at exit). `max_prompts` / `max_cache_bytes` bound the
    server's per-prompt LRU cache; `max_tokens` caps prompt length (and the
    model's context caps it too); `max_flow_tokens` caps the prompts the Flow
    page solves exact attention flow for (longer ones get rollout only).
    `warm_up` starts computing the QK/OV spectra (weights only) in a
    background thread right away. The session is `app.headscope_session`;
    `stop_app(app)` stops the warm-up and the background jobs.

    `record` (a saved capture: `AttentionRecord` / `HeadStats` directory) or
    `report` (a `headscope report` directory) serves it with no model instead
    (`offline.create_offline_app`; the model arguments are then not used).
    """
    if record is not None or report is not None:
        from headscope.dashboard.offline import create_offline_app

        if model is not None:
            raise InputError("give a model or a saved capture or report, not both")
        return create_offline_app(record=record, report=report, cache_dir=cache_dir)
    options = {
        "max_prompts": max_prompts,
        "max_bytes": max_cache_bytes,
        "max_tokens": max_tokens,
        "max_flow_tokens": max_flow_tokens,
    }
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
        "patching": lambda: patching.layout(session),
        "contributions": lambda: contributions.layout(session),
        "clusters": lambda: clusters.layout(session),
        "dynamics": lambda: dynamics.layout(session),
        "retrieval": lambda: retrieval.layout(session),
        "long": lambda: longcontext.layout(session),
        "vision": lambda: vision.layout(session),
    }
    app.layout = shell.layout(session)
    # Every page's components, so dash can check the callbacks' ids up front.
    app.validation_layout = html.Div(
        [shell.layout(session), *(component for page in pages.values() for component in page())]
    )
    # A vision model lands on the Vision page; its text pages say they need a text model.
    shell.register(app, session, vision.pages_for(session, pages))
    overview.register(app, session)
    head.register(app, session)
    flow.register(app, session, manager)
    importance.register(app, session, manager)
    position.register(app, session)
    spectral.register(app, session, manager)
    playground.register(app, session)
    patching.register(app, session, manager)
    contributions.register(app, session)
    clusters.register(app, session, manager)
    dynamics.register(app, session, manager)
    retrieval.register(app, session, manager)
    longcontext.register(app, session, manager)
    vision.register(app, session, manager)
    refusals.register(app)
    _answer_unexpected_errors(app)
    app.headscope_session = session
    app.headscope_manager = manager
    app.headscope_stop = threading.Event()
    app.headscope_warm_up = None
    if warm_up and session.model is not None:
        thread = threading.Thread(
            target=results.warm_up,
            args=(session, app.headscope_stop),
            name="headscope-warm-up",
            daemon=True,
        )
        app.headscope_warm_up = thread
        thread.start()
    return app


def stop_app(app: Dash, timeout: float = SHUTDOWN_GRACE_S) -> bool:
    """Stop what `create_app` started: kill the background jobs and remove
    their cache folder, ask the warm-up thread to stop and wait up to
    `timeout` seconds for it. True when no warm-up thread is left running."""
    app.headscope_stop.set()
    app.headscope_manager.shutdown()
    thread = app.headscope_warm_up
    if thread is not None:
        thread.join(timeout)
        return not thread.is_alive()
    return True


def _answer_unexpected_errors(app: Dash) -> None:
    """The last line behind the guarded callbacks: an exception that still
    escapes a callback request (a malformed request dash itself cannot read)
    is logged and answered with 204 (no update) instead of a 500 and a
    traceback. Debug mode replaces this with dash's own error display."""
    from flask import request
    from werkzeug.exceptions import HTTPException, InternalServerError

    @app.server.errorhandler(Exception)
    def _unexpected(error: Exception):
        if isinstance(error, HTTPException):
            return error
        log.error("dashboard request %s failed", request.path, exc_info=error)
        if request.path.endswith("/_dash-update-component"):
            return "", 204
        return InternalServerError()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- binding -------------------------------------------------------------------------------------


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host`:`port` (port 0: any free port), or
    ServeError saying why not: an invalid or unresolvable host, an address
    that is not this machine's, a port in use or not allowed."""
    from werkzeug.serving import LISTEN_QUEUE, select_address_family

    if (
        not isinstance(host, str)
        or not host
        or len(host) > 253
        or any(c.isspace() or not c.isprintable() for c in host)
    ):
        raise ServeError(
            f"invalid host {host!r}: give an address or name such as 127.0.0.1, ::1 or localhost"
        )
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ServeError(f"port must be between 1 and 65535, got {port!r}")
    family = select_address_family(host, port)
    try:
        address = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ServeError(
            f"cannot serve on {host}: the host does not resolve ({reason}); "
            "use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
        ) from None
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as error:
        raise ServeError(f"cannot serve on {host}: {error.strerror or error}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address[0][4])
        sock.listen(LISTEN_QUEUE)
    except OSError as error:
        sock.close()
        raise ServeError(_bind_problem(host, port, error)) from None
    return sock


def _bind_problem(host: str, port: int, error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return (
            f"port {port} is in use on {host}: stop the program using it or choose another --port"
        )
    if error.errno == errno.EADDRNOTAVAIL:
        return (
            f"cannot serve on {host}: it is not an address of this machine; "
            "use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
        )
    if error.errno == errno.EACCES:
        return f"no permission to serve on port {port} (ports below 1024 need privileges)"
    return f"cannot serve on {host}:{port}: {error.strerror or error}"


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


# -- serving and stopping ------------------------------------------------------------------------


class _Requests:
    """WSGI middleware counting the requests in progress; once closing, it
    answers 503 instead of starting new work."""

    def __init__(self, app: Callable) -> None:
        self.app = app
        self.active = 0
        self.closing = False
        self.changed = threading.Condition()

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        with self.changed:
            if self.closing:
                start_response(
                    "503 Service Unavailable",
                    [("Content-Type", "text/plain"), ("Connection", "close")],
                )
                return [b"the dashboard is stopping\n"]
            self.active += 1
        try:
            return self.app(environ, start_response)
        finally:
            with self.changed:
                self.active -= 1
                self.changed.notify_all()

    def close(self, timeout: float) -> bool:
        """Refuse new requests; wait up to `timeout` s for those in progress.
        True when none is left."""
        with self.changed:
            self.closing = True
            return self.changed.wait_for(lambda: self.active == 0, timeout)


class _Stop(BaseException):
    """Raised in the main thread by SIGINT or SIGTERM while the server runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Signals:
    """SIGINT and SIGTERM handlers for the main thread: while serving (`armed`)
    a signal raises `_Stop`; while starting or stopping it is only noted, so
    neither is cut short half-way (a second Ctrl+C does not interrupt the
    clean-up). Off the main thread nothing is installed."""

    def __init__(self) -> None:
        self.armed = False
        self.received: int | None = None
        self.previous: dict[int, object] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is None:
            self.received = signum
        if self.armed:
            self.armed = False
            raise _Stop(signum)

    def arm(self) -> None:
        if self.received is not None:
            raise _Stop(self.received)
        self.armed = True

    def disarm(self) -> None:
        self.armed = False

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self.previous.clear()


def run_dashboard(
    model: str | HeadscopeModel = DEFAULT_MODEL,
    host: str = "127.0.0.1",
    port: int = 8050,
    debug: bool = False,
    *,
    server: str = "werkzeug",
    token: str | None = None,
    exit_process: bool = False,
    **options,
) -> None:
    """Serve the dashboard (blocking) and print its URL. Binds 127.0.0.1 and
    runs with debug off unless asked; warns when either is changed, since the
    app runs models on request and debug mode allows code execution.

    `server`: "werkzeug" (threaded development server, the default) or
    "waitress" (a production WSGI server, for a team). A host beyond loopback
    requires an access token (`serving.TokenGate`): `token`, or one generated
    here and printed once, in the URL; loopback needs none unless `token` is
    given. Debug mode is refused beyond loopback (ServeError).

    The socket is bound before anything is printed: ServeError when it
    cannot be (port in use, bad host). Ctrl+C (SIGINT) and SIGTERM stop the
    server cleanly (see the module docstring), then raise KeyboardInterrupt
    or SystemExit(143). `exit_process=True` (the CLI) ends the process with
    os._exit when a request or the warm-up is still computing after the
    clean-up, instead of letting the interpreter shut down under it.
    `options` go to `create_app`.
    """
    server = check_server(server)
    loopback = _is_loopback(host) if isinstance(host, str) else False
    if debug and not loopback:
        raise ServeError(
            f"debug mode allows running code: it is only served on loopback (127.0.0.1, ::1, "
            f"localhost), not on {host}"
        )
    if token is not None:
        token = check_token(token)
    elif not loopback:
        token = new_token()
    listener = listen(host, port)
    signals = _Signals()
    signals.install()
    app = requests = None
    wsgi_server = None
    signum = None
    try:
        if isinstance(model, HeadscopeModel):
            app = create_app(model=model, **options)
        else:
            app = create_app(str(model), **options)
        wsgi_server, requests = _make_server(app, host, listener, debug, server, token)
        if not loopback:
            print(
                f"warning: serving on {host}, reachable from other machines; every request "
                "needs the access token, and the dashboard runs models on request"
            )
        if debug:
            print("warning: debug mode is on: the debugger allows running code; never expose it")
        url = _url(host, wsgi_server.port) + (f"?{TOKEN_PARAM}={token}" if token else "")
        print(f"headscope dashboard: {url}  (Ctrl+C to stop)", flush=True)
        if hasattr(wsgi_server, "stopped"):
            wsgi_server.stopped = lambda: signals.received is not None
        signals.arm()
        wsgi_server.serve_forever()
        if signals.received is not None:  # the loop saw the stop request itself
            raise _Stop(signals.received)
    except _Stop as stop:
        signum = stop.signum
        name = signal.Signals(signum).name
        print(f"headscope dashboard: {name} received, stopping", file=sys.stderr, flush=True)
    finally:
        signals.disarm()
        listener.close()
        try:
            busy = _shut_down(app, wsgi_server, requests)
        finally:
            signals.restore()
        if signum is None and signals.received is not None:
            signum = signals.received
    code = 0 if signum is None else 128 + signum
    if busy and exit_process:
        sys.stderr.write(
            f"headscope: still computing ({', '.join(busy)}); exiting without waiting\n"
        )
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if busy:
        log.warning("the dashboard stopped while %s was still computing", ", ".join(busy))
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    if signum is not None:
        raise SystemExit(code)


def _make_server(
    app: Dash,
    host: str,
    listener: socket.socket,
    debug: bool,
    server: str = "werkzeug",
    token: str | None = None,
):
    """A `server` (threaded werkzeug, or waitress) on the already bound
    `listener`, behind the token gate when there is a `token`."""
    wsgi: Callable = app.server
    if debug:
        from werkzeug.debug import DebuggedApplication

        app.enable_dev_tools(debug=True, dev_tools_hot_reload=False)
        app.server.debug = True
        wsgi = DebuggedApplication(app.server, evalex=True)
    if token is not None:
        wsgi = TokenGate(wsgi, token)
    requests = _Requests(wsgi)
    return make_server(requests, host, listener, server), requests


def _shut_down(app: Dash | None, server, requests: _Requests | None) -> list[str]:
    """Stop serving, then stop everything the app started (see the module
    docstring). Returns what is still computing after the grace period."""
    deadline = time.monotonic() + SHUTDOWN_GRACE_S
    busy = []
    if server is not None:
        server.server_close()
    if app is not None:
        app.headscope_stop.set()  # the warm-up stops at its next step
    if requests is not None and not requests.close(max(0.0, deadline - time.monotonic())):
        busy.append(f"{requests.active} request(s)")
    if app is not None and not stop_app(app, max(0.0, deadline - time.monotonic())):
        busy.append("the spectra warm-up")
    return busy
