"""Serving a team (headscope.dashboard.serving): a real dashboard on an ephemeral
port, served by waitress or werkzeug; beyond loopback every request needs the
access token (a Bearer header, or the query parameter once and then a cookie),
loopback needs none; debug mode is refused beyond loopback."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import threading
import time

import pytest
from browser_wait import until

from headscope.dashboard import app as app_module
from headscope.dashboard import serving
from headscope.dashboard.app import create_app, listen, run_dashboard, stop_app
from headscope.dashboard.serving import TOKEN_COOKIE, TokenGate, check_token, new_token
from headscope.errors import ServeError

TOKEN = "correct-horse-battery-staple-42"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(port: int, path: str = "/", headers: dict | None = None) -> http.client.HTTPResponse:
    """One GET (redirects not followed); the response is read before returning."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    response.body = response.read()
    connection.close()
    return response


def serve_while(check, port: int, **kwargs) -> dict:
    """Run the dashboard on `port` in this (main) thread; `check(port)` runs in
    another once the server answers, then SIGINT stops it. Returns what check saw."""
    seen: dict = {}

    def helper() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        try:
            seen.update(check(port))
        except BaseException as error:  # reported by the test, not lost in the thread
            seen["error"] = error
        finally:
            os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=helper, daemon=True)
    thread.start()
    with pytest.raises(KeyboardInterrupt):
        run_dashboard(port=port, warm_up=False, **kwargs)
    thread.join(30)
    if "error" in seen:
        raise seen["error"]
    return seen


def _token_checks(token: str):
    def check(port: int) -> dict:
        out = {}
        out["none"] = get(port).status
        out["wrong"] = get(port, headers={"Authorization": "Bearer " + "x" * len(token)}).status
        out["wrong_query"] = get(port, "/?token=" + "y" * len(token)).status
        out["layout_without"] = get(port, "/_dash-layout").status
        bearer = get(port, "/_dash-layout", headers={"Authorization": f"Bearer {token}"})
        out["bearer"], out["server"] = bearer.status, bearer.getheader("Server")
        redirect = get(port, f"/head/1/2?prompt=red+cat&token={token}")
        out["redirect"] = redirect.status
        out["location"] = redirect.getheader("Location")
        out["cookie"] = redirect.getheader("Set-Cookie")
        cookie = out["cookie"].split(";")[0]
        out["with_cookie"] = get(port, "/head/1/2?prompt=red+cat", {"Cookie": cookie}).status
        out["bad_cookie"] = get(port, "/", {"Cookie": f"{TOKEN_COOKIE}=nope"}).status
        return out

    return check


@pytest.mark.parametrize("server", ["waitress", "werkzeug"])
def test_beyond_loopback_every_request_needs_the_token(server, toy_model, capsys):
    seen = serve_while(
        _token_checks(TOKEN),
        free_port(),
        model=toy_model,
        host="0.0.0.0",
        server=server,
        token=TOKEN,
    )
    assert seen["none"] == seen["wrong"] == seen["wrong_query"] == 401
    assert seen["layout_without"] == seen["bad_cookie"] == 401
    assert seen["bearer"] == 200 and seen["with_cookie"] == 200
    # the query parameter is taken once: a redirect drops it and sets the cookie
    assert seen["redirect"] == 303
    assert seen["location"] == "/head/1/2?prompt=red+cat"
    assert seen["cookie"].startswith(f"{TOKEN_COOKIE}={TOKEN};")
    assert "HttpOnly" in seen["cookie"] and "SameSite=Lax" in seen["cookie"]
    # waitress names itself after headscope (ident); werkzeug says Werkzeug
    assert (seen["server"] == "headscope") == (server == "waitress")
    out = capsys.readouterr().out
    assert f"?token={TOKEN}" in out and "needs the access token" in out


def test_a_token_is_generated_and_printed_once_when_none_is_given(toy_model, capsys, monkeypatch):
    generated = []

    def spy() -> str:
        generated.append(new_token())
        return generated[-1]

    monkeypatch.setattr(app_module, "new_token", spy)

    def check(port: int) -> dict:
        return {
            "none": get(port).status,
            "bearer": get(port, headers={"Authorization": f"Bearer {generated[0]}"}).status,
        }

    seen = serve_while(check, free_port(), model=toy_model, host="0.0.0.0", server="waitress")
    assert seen == {"none": 401, "bearer": 200}
    assert len(generated) == 1 and len(generated[0]) >= 32
    assert capsys.readouterr().out.count(generated[0]) == 1


@pytest.mark.parametrize("server", ["waitress", "werkzeug"])
def test_loopback_needs_no_token_by_default(server, toy_model, capsys):
    seen = serve_while(
        lambda port: {"status": get(port).status, "server": get(port).getheader("Server")},
        free_port(),
        model=toy_model,
        server=server,
    )
    assert seen["status"] == 200
    assert (seen["server"] == "headscope") == (server == "waitress")
    out = capsys.readouterr().out
    assert "token" not in out and "warning" not in out


def test_refusals_come_before_anything_is_bound(toy_model, capsys):
    port = free_port()
    with pytest.raises(ServeError, match="only served on loopback"):
        run_dashboard(toy_model, host="0.0.0.0", port=port, debug=True)
    with pytest.raises(ServeError, match="too short"):
        run_dashboard(toy_model, host="0.0.0.0", port=port, token="short")
    with pytest.raises(ServeError, match="may only hold"):
        run_dashboard(toy_model, host="0.0.0.0", port=port, token="a token with spaces!!")
    with pytest.raises(ServeError, match="unknown server"):
        run_dashboard(toy_model, port=port, server="gunicorn")
    assert capsys.readouterr().out == ""
    with socket.socket() as sock:  # the port was never taken
        sock.bind(("127.0.0.1", port))


def test_the_gate_compares_tokens_in_constant_time(monkeypatch):
    calls = []
    real = serving.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(serving.hmac, "compare_digest", spy)
    answered = []

    def app(environ, start_response):
        start_response("200 OK", [])
        return [b"ok"]

    gate = TokenGate(app, check_token(TOKEN))

    def call(**environ) -> str:
        gate(
            {"REQUEST_METHOD": "GET", "PATH_INFO": "/", **environ}, lambda s, h: answered.append(s)
        )
        return answered[-1]

    assert call(HTTP_AUTHORIZATION=f"Bearer {TOKEN}") == "200 OK"
    assert call(HTTP_AUTHORIZATION=f"bearer {TOKEN[:-1]}x").startswith("401")
    assert call(HTTP_AUTHORIZATION="Bearer tökén").startswith("401")  # not ASCII: refused
    assert call(HTTP_COOKIE=f"a=b; {TOKEN_COOKIE}={TOKEN}") == "200 OK"
    assert call(HTTP_COOKIE="malformed;;==").startswith("401")
    assert call(QUERY_STRING=f"token={TOKEN}&prompt=x").startswith("303")
    assert call(QUERY_STRING=f"token={TOKEN}", REQUEST_METHOD="POST") == "200 OK"
    assert (TOKEN.encode(), TOKEN.encode()) in calls
    assert all(isinstance(a, bytes) and b == TOKEN.encode() for a, b in calls)


def test_the_cli_passes_server_and_token_and_says_what_is_wrong():
    from typer.testing import CliRunner

    from headscope.cli import app

    runner = CliRunner()
    port = str(free_port())
    for args, message in (
        (["--host", "0.0.0.0", "--token", "short"], "too short"),
        (["--host", "0.0.0.0", "--debug"], "only served on loopback"),
        (["--server", "gunicorn"], "unknown server"),
    ):
        result = runner.invoke(app, ["dashboard", "--port", port, *args])
        assert result.exit_code == 2, args
        assert message in result.output, args
    assert "--server" in runner.invoke(app, ["dashboard", "--help"]).output


@pytest.mark.browser
def test_a_browser_opens_the_token_link_once_then_works_by_cookie(dash_duo, toy_model):
    """Chromium behind the gate (waitress): without the token the page says so;
    the ?token= link drops the token from the address and every request after
    it (the page, dash's callbacks) passes on the cookie."""
    app = create_app(model=toy_model, warm_up=False)
    listener = listen("127.0.0.1", 0)
    server = serving.make_server(TokenGate(app.server, TOKEN), "127.0.0.1", listener, "waitress")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.port}"
    driver = dash_duo.driver
    try:
        driver.get(base + "/")
        assert "access token is required" in driver.find_element("tag name", "body").text
        driver.get(f"{base}/?prompt=sun+moon+star&token={TOKEN}")
        until(
            lambda: (
                "sun"
                in driver.execute_script(
                    "const t = document.getElementById('overview-tokens'); return t ? t.innerText : '';"
                )
            ),
            timeout=60,
        )
        assert driver.current_url == f"{base}/?prompt=sun+moon+star"
        assert TOKEN not in driver.current_url
    finally:
        server.server_close()
        listener.close()
        stop_app(app)


def test_the_waitress_loop_ends_once_stopped_without_an_exception():
    """A stop signal whose exception a connection's error handler swallowed (wasyncore
    calls handle_error for anything but KeyboardInterrupt/SystemExit) still ends the
    loop: it checks `stopped()` after every poll."""
    listener = listen("127.0.0.1", 0)

    def hello(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    server = serving.make_server(hello, "127.0.0.1", listener, "waitress")
    stop = threading.Event()
    server.stopped = stop.is_set
    runner = threading.Thread(target=server.serve_forever, daemon=True)
    runner.start()
    assert get(server.port).status == 200
    time.sleep(0.2)
    assert runner.is_alive()  # serving until told
    stop.set()
    runner.join(5)
    assert not runner.is_alive()
    server.server_close()
    listener.close()


def test_the_waitress_loop_ends_when_the_server_is_closed():
    """`server_close()` from another thread ends `serve_forever` (no busy loop left)."""
    listener = listen("127.0.0.1", 0)
    server = serving.make_server(lambda e, s: [], "127.0.0.1", listener, "waitress")
    runner = threading.Thread(target=server.serve_forever, daemon=True)
    runner.start()
    time.sleep(0.2)
    server.server_close()
    runner.join(5)
    assert not runner.is_alive()
    listener.close()
