"""Serving the dashboard to a team: the WSGI server (werkzeug's threaded
development server, or waitress, a production server) and the access token
that a dashboard bound beyond loopback requires.

    gate = TokenGate(wsgi_app, token)     # 401 without the token
    server = make_server(gate, "0.0.0.0", listener, "waitress")
    server.serve_forever()

A request passes the gate with the token as `Authorization: Bearer <token>`,
as the `headscope_token` cookie, or once as the `?token=` query parameter: a
GET with a valid one is redirected to the same URL without it and sets the
cookie (HttpOnly; SameSite=Lax, so that a link opened from a chat or a mail
still carries it, while other sites cannot POST with it), so the token leaves
the address bar and the browser's history. Tokens are compared in constant time
(`hmac.compare_digest`). Anything else gets 401 and a one-line text body.
"""

from __future__ import annotations

import hmac
import re
import secrets
import socket
from collections.abc import Callable, Iterable
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qsl, quote, urlencode

from headscope.errors import ServeError

#: The WSGI servers `run_dashboard(server=...)` knows.
SERVERS = ("werkzeug", "waitress")
TOKEN_COOKIE = "headscope_token"
TOKEN_PARAM = "token"
#: Shortest token accepted from a user (a generated one has 32 characters).
MIN_TOKEN_CHARS = 16
_TOKEN = re.compile(r"^[A-Za-z0-9._~-]+$")
#: waitress's worker threads (requests computed at once; background jobs run apart).
WAITRESS_THREADS = 8


def new_token() -> str:
    """A fresh random token (24 bytes, URL-safe base64: 32 characters)."""
    return secrets.token_urlsafe(24)


def check_token(token: object) -> str:
    """`token` if usable (URL-safe characters, at least MIN_TOKEN_CHARS long), else ServeError."""
    if not isinstance(token, str) or not token:
        raise ServeError("the access token is empty: give one with --token or let one be generated")
    if not _TOKEN.match(token):
        raise ServeError(
            "the access token may only hold letters, digits and . _ ~ - "
            "(it travels in URLs and cookies)"
        )
    if len(token) < MIN_TOKEN_CHARS:
        raise ServeError(
            f"the access token is too short ({len(token)} characters; at least "
            f"{MIN_TOKEN_CHARS}): leave --token out to have one generated"
        )
    return token


def check_server(server: object) -> str:
    if server not in SERVERS:
        raise ServeError(f"unknown server {server!r}: choose one of {', '.join(SERVERS)}")
    return str(server)


class TokenGate:
    """WSGI middleware that lets through only requests carrying `token` (see
    the module docstring); the rest get 401."""

    def __init__(self, app: Callable, token: str) -> None:
        self.app = app
        self._token = check_token(token).encode("ascii")

    def _valid(self, candidate: str | None) -> bool:
        if not candidate:
            return False
        try:
            given = candidate.encode("ascii")
        except UnicodeEncodeError:
            return False
        return hmac.compare_digest(given, self._token)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "bearer" and self._valid(credentials.strip()):
            return self.app(environ, start_response)
        if self._valid(_cookie(environ.get("HTTP_COOKIE", ""))):
            return self.app(environ, start_response)
        query = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        given = [value for name, value in query if name == TOKEN_PARAM]
        if given and self._valid(given[-1]):
            rest = urlencode([(name, value) for name, value in query if name != TOKEN_PARAM])
            cookie = f"{TOKEN_COOKIE}={self._token.decode()}; Path=/; HttpOnly; SameSite=Lax"
            if environ.get("REQUEST_METHOD", "GET") in ("GET", "HEAD"):
                path = quote(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "/"))
                start_response(
                    "303 See Other",
                    [
                        ("Location", path + (f"?{rest}" if rest else "")),
                        ("Set-Cookie", cookie),
                        ("Cache-Control", "no-store"),
                        ("Content-Type", "text/plain; charset=utf-8"),
                    ],
                )
                return [b"access granted\n"]
            return self.app(environ, start_response)
        start_response(
            "401 Unauthorized",
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("WWW-Authenticate", 'Bearer realm="headscope"'),
                ("Cache-Control", "no-store"),
            ],
        )
        return [
            b"headscope dashboard: an access token is required. Open the address printed by "
            b"`headscope dashboard` (it ends in ?token=...), or send "
            b"'Authorization: Bearer <token>'.\n"
        ]


def _cookie(header: str) -> str | None:
    try:
        jar = SimpleCookie(header)
    except CookieError:
        return None
    morsel = jar.get(TOKEN_COOKIE)
    return morsel.value if morsel is not None else None


class WaitressServer:
    """waitress on an already bound socket, with the two methods `run_dashboard`
    calls (`serve_forever`, `server_close`) and the bound `port`."""

    def __init__(self, app: Callable, listener: socket.socket, threads: int) -> None:
        from waitress.server import create_server

        self.port = listener.getsockname()[1]
        self.server = create_server(
            app,
            sockets=[listener],
            threads=threads,
            ident="headscope",
            clear_untrusted_proxy_headers=True,
        )
        #: Set by `run_dashboard`: True once a stop signal has been received.
        self.stopped: Callable[[], bool] = lambda: False

    def serve_forever(self) -> None:
        """waitress's loop, one poll at a time, until `stopped()`. A signal handler's
        exception raised while the loop handles a connection's event is swallowed by
        that connection's error handler (wasyncore re-raises only KeyboardInterrupt
        and SystemExit there), so the loop also checks `stopped` after every poll
        (at most `asyncore_loop_timeout`, 1 s, apart)."""
        from waitress import wasyncore

        adj = self.server.adj
        # server_close() empties the map: wasyncore.loop then returns at once, so
        # the loop ends there too instead of spinning.
        while not self.stopped() and self.server._map:
            wasyncore.loop(
                timeout=adj.asyncore_loop_timeout,
                map=self.server._map,
                use_poll=adj.asyncore_use_poll,
                count=1,
            )

    def server_close(self) -> None:
        """Stop accepting connections; the worker threads end after their request."""
        self.server.close()
        self.server.task_dispatcher.shutdown(cancel_pending=True, timeout=0.1)


def make_server(
    app: Callable, host: str, listener: socket.socket, server: str = "werkzeug"
) -> object:
    """A `server` ("werkzeug": threaded development server; "waitress") serving
    `app` on the bound `listener`. Both answer `serve_forever()`,
    `server_close()` and `.port`."""
    if check_server(server) == "waitress":
        return WaitressServer(app, listener, WAITRESS_THREADS)
    from werkzeug.serving import make_server as werkzeug_server

    return werkzeug_server(host, 0, app, threaded=True, fd=listener.fileno())
