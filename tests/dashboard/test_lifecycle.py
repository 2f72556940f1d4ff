"""Starting and stopping the dashboard: it binds before it announces its URL,
stops cleanly on SIGINT and SIGTERM (threads joined, jobs killed, cache
folder removed, no SIGABRT), and a background job that dies says so on its
page instead of leaving it idle."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from dash_client import DashClient, text_of

from headscope.dashboard import flow
from headscope.dashboard.app import create_app, listen, run_dashboard, stop_app
from headscope.errors import ServeError

PROMPT = {"prompt": "red cat blue dog red cat blue dog"}
TOKEN = "lifecycle-test-token-0123456789"
FLOW_INPUTS = {"prompt-store.data": PROMPT, "flow-query.value": 3, "flow-residual.value": 0.5}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cache_folders(root: Path) -> list[Path]:
    return sorted(root.glob("headscope-dashboard-*"))


# -- binding -------------------------------------------------------------------------------------


def test_a_port_in_use_fails_before_anything_is_announced(toy_model, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        before = threading.active_count()
        with pytest.raises(ServeError, match=f"port {port} is in use"):
            run_dashboard(toy_model, port=port)
    out = capsys.readouterr()
    assert "http://" not in out.out + out.err and "Dash is running" not in out.out + out.err
    assert threading.active_count() == before  # nothing was started


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("bad host", "invalid host"),
        ("", "invalid host"),
        ("no-such-host.invalid", "does not resolve"),
        ("192.0.2.1", "not an address of this machine"),  # TEST-NET-1: never local
    ],
)
def test_bad_hosts_are_refused_with_a_reason(host, message, monkeypatch):
    real = socket.getaddrinfo

    def offline(name, *args, **kwargs):  # no DNS query leaves the test
        if isinstance(name, str) and name.endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    with pytest.raises(ServeError, match=message):
        listen(host, free_port())


def test_listen_binds_port_zero_and_ipv4_loopback():
    sock = listen("127.0.0.1", 0)
    try:
        assert sock.getsockname()[1] > 0
    finally:
        sock.close()


# -- serving and stopping in this process ----------------------------------------------------------


def _serve_then_signal(signum: int, port: int, seen: dict) -> threading.Thread:
    """A thread that waits for the dashboard to answer, then signals this process."""

    def run() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/", headers={"Authorization": f"Bearer {TOKEN}"}
                )
                with urllib.request.urlopen(request, timeout=5) as page:
                    seen["status"] = page.status
                    break
            except OSError:
                time.sleep(0.1)
        seen["threads"] = [t.name for t in threading.enumerate()]
        os.kill(os.getpid(), signum)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_server_and_everything_it_started(
    signum, toy_model, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    port, seen = free_port(), {}
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    helper = _serve_then_signal(signum, port, seen)
    expected = KeyboardInterrupt if signum == signal.SIGINT else SystemExit
    with pytest.raises(expected) as stopped:
        # beyond loopback with the token; debug is only served on loopback
        host = "0.0.0.0" if signum == signal.SIGINT else "127.0.0.1"
        run_dashboard(toy_model, host=host, port=port, debug=signum == signal.SIGTERM, token=TOKEN)
    helper.join(10)
    assert seen.get("status") == 200
    if signum == signal.SIGTERM:
        assert stopped.value.code == 143
    out = capsys.readouterr()
    assert f"http://127.0.0.1:{port}/" in out.out and "Dash is running" not in out.out
    assert out.out.count("warning") == 1  # 0.0.0.0, or debug
    assert f"{signal.Signals(signum).name} received, stopping" in out.err
    # everything it started is gone, and the signal handlers are back
    assert not [t for t in threading.enumerate() if t.name == "headscope-warm-up"]
    assert cache_folders(tmp_path) == []
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_stop_app_stops_the_warm_up_and_removes_the_cache(toy_model, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    app = create_app(model=toy_model)
    assert len(cache_folders(tmp_path)) == 1 and app.headscope_warm_up is not None
    assert stop_app(app, timeout=30)
    assert not app.headscope_warm_up.is_alive() and cache_folders(tmp_path) == []
    stop_app(app)  # twice is fine


# -- the command line (a real process: Ctrl+C, SIGTERM, exit codes) --------------------------------


def _start_cli(port: int, tmp_path: Path, *args: str) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, TMPDIR=str(tmp_path), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from headscope.cli import main; main()",
            "dashboard",
            "--port",
            str(port),
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # a shell that starts a job in the background ignores SIGINT for it: undo that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    first = process.stdout.readline() if process.stdout else ""
    return process, first


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_the_command_stops_cleanly_right_after_start(signum, code, tmp_path):
    """Signalled as soon as it prints its URL (the warm-up thread is computing):
    before, Ctrl+C here aborted with SIGABRT ("terminate called without an
    active exception") and SIGTERM left the cache folder behind."""
    process, first = _start_cli(free_port(), tmp_path)
    assert "headscope dashboard: http://127.0.0.1:" in first
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    assert "terminate called" not in err and "Traceback" not in err
    assert cache_folders(tmp_path) == []


@pytest.mark.slow
def test_the_command_reports_a_port_in_use_in_one_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        process, first = _start_cli(busy.getsockname()[1], tmp_path)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert first + out == ""  # no URL, no "Dash is running"
    assert err.strip().count("\n") == 0 and err.startswith("headscope: error: port")
    assert cache_folders(tmp_path) == []


# -- background jobs that die ----------------------------------------------------------------------


def _exit_at_once(*args, **kwargs):
    os._exit(3)


def _sleep_long(*args, **kwargs):
    time.sleep(120)


@pytest.fixture
def fresh_client(toy_model, tmp_path):
    """A new app (its own result cache: no job is answered from an earlier one)."""
    app = create_app(model=toy_model, warm_up=False, cache_dir=tmp_path / "cache")
    yield app, DashClient(app)
    stop_app(app)


def test_a_job_that_exits_without_a_result_says_so(fresh_client, monkeypatch):
    _, client = fresh_client
    monkeypatch.setattr(flow, "flow_page", _exit_at_once)  # inherited by the forked job
    response = client.call("flow-figure", FLOW_INPUTS, changed=["prompt-store.data"])
    assert response.status_code == 200
    text = text_of(response)
    assert "the flow job stopped without a result" in text and "exited with status 3" in text
    assert "hs-alert" in text  # the message box, next to the blank figure


def test_a_killed_job_says_so(fresh_client, monkeypatch):
    app, client = fresh_client
    monkeypatch.setattr(flow, "flow_page", _sleep_long)
    body, handles = client.start("flow-figure", FLOW_INPUTS, changed=["prompt-store.data"])
    (pid,) = app.headscope_manager.running_jobs()
    os.kill(pid, signal.SIGKILL)  # as the OOM killer would
    response = client.poll(body, handles, timeout=30)
    assert response.status_code == 200
    assert "killed (SIGKILL, e.g. out of memory)" in text_of(response)


def test_a_cancelled_job_stays_quiet(fresh_client, monkeypatch):
    app, client = fresh_client
    monkeypatch.setattr(flow, "flow_page", _sleep_long)
    body, handles = client.start("flow-figure", FLOW_INPUTS, changed=["prompt-store.data"])
    (pid,) = app.headscope_manager.running_jobs()
    cancel = client.payload(
        "flow-cancel", {"flow-cancel.n_clicks": 1}, changed=["flow-cancel.n_clicks"]
    )
    assert client.post(cancel, cancelJob=handles["job"]).status_code in (200, 204)
    deadline = time.monotonic() + 10
    while pid in app.headscope_manager.running_jobs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.post(body, **handles).status_code == 204  # no update, no message


def test_stopping_the_app_kills_its_running_jobs(fresh_client, monkeypatch):
    app, client = fresh_client
    monkeypatch.setattr(flow, "flow_page", _sleep_long)
    client.start("flow-figure", FLOW_INPUTS, changed=["prompt-store.data"])
    (pid,) = app.headscope_manager.running_jobs()
    stop_app(app)
    assert app.headscope_manager.running_jobs() == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


_SERVER_WITH_A_JOB = """
import sys, time
sys.path.insert(0, sys.argv[1])
from dash_client import DashClient
from headscope.dashboard import flow
from headscope.dashboard.app import create_app

flow.flow_page = lambda *args, **kwargs: time.sleep(120)
app = create_app("toy-induction", warm_up=False, cache_dir=sys.argv[2])
client = DashClient(app)
client.start("flow-figure", {"prompt-store.data": {"prompt": "red cat"}, "flow-query.value": 1},
             changed=["prompt-store.data"])
print(*app.headscope_manager.running_jobs(), flush=True)
time.sleep(120)
"""


@pytest.mark.slow
def test_jobs_end_when_the_server_process_is_killed(tmp_path):
    psutil = pytest.importorskip("psutil")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    here = str(Path(__file__).parent)
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER_WITH_A_JOB, here, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        job = psutil.Process(int(server.stdout.readline()))
        assert job.is_running()
        server.kill()  # no chance to stop its jobs
        server.wait(10)
        job.wait(timeout=10)  # it notices within a second or two and exits
    finally:
        if server.poll() is None:
            server.kill()


_STUCK_WARM_UP = """
import sys, time, torch
from headscope.dashboard import app, results

def busy(session, stop):  # torch work that never looks at `stop`
    x = torch.randn(256, 256)
    end = time.monotonic() + 60
    while time.monotonic() < end:
        torch.linalg.svdvals(x @ x.T)

results.warm_up = busy
app.SHUTDOWN_GRACE_S = 0.5
try:
    app.run_dashboard("toy-induction", port=int(sys.argv[1]), exit_process=True)
except KeyboardInterrupt:
    sys.exit(130)
"""


@pytest.mark.slow
def test_a_thread_stuck_in_torch_does_not_abort_the_exit(tmp_path):
    """The warm-up ignores its stop event and keeps torch busy: after the grace
    period the command leaves with os._exit (clean-up done) instead of letting
    the interpreter shut down under a torch thread, which aborts (SIGABRT)."""
    env = dict(os.environ, TMPDIR=str(tmp_path), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, "-c", _STUCK_WARM_UP, str(free_port())],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert "headscope dashboard: http://" in process.stdout.readline()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "still computing (the spectra warm-up); exiting without waiting" in err
    assert "terminate called" not in err
    assert cache_folders(tmp_path) == []
