"""Dashboard latency in a real browser (headless Chromium driven by selenium).

    .venv/bin/python benchmarks/dashboard.py [--models toy-induction,minilm] [--tokens 128]
                                             [--submits 8] [--switches 40]

For each model the dashboard is served on 127.0.0.1 (werkzeug, threaded, as
`run_dashboard` does) and the head page is opened. Two latencies are timed in
the browser with performance.now(), from the user action to plotly's
`plotly_afterplot` event of the head map showing the expected content:

- submit: a new prompt of exactly --tokens tokens is put in the prompt box and
  Run is clicked (tokenize, capture of every head, figure, transfer, draw). Each
  prompt is new, so the server cache never has it.
- head switch: a head-picker link is clicked on a cached prompt (client-side
  navigation, one callback builds the map from the cached record, draw).

Weight-only results (spectra) are computed before timing so that no background
work competes. Target: head switch p95 under 300 ms. Writes
benchmarks/results/dashboard.json (machine, date, load average, every sample).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "dashboard.json"
CHROMIUM = os.environ.get("DASH_TEST_CHROMEPATH", "/usr/bin/chromium")
TARGET_SWITCH_P95_MS = 300.0

WORDS = {
    "toy-induction": (
        "the a cat dog red blue green sun moon star tree leaf rock sea sky bird fish one two "
        "three four five big small old new hot cold up down left right run walk sing jump "
        "read write eat drink sleep open shut door key box cup pen book ship car road rain "
        "snow wind fire ice gold salt milk tea"
    ).split(),
    "default": (
        "the cat sat on mat and dog ran to park while children played with ball near old "
        "house by river in town under blue sky after long day at school before dinner time "
        "when sun went down over hills behind green trees"
    ).split(),
}

WAIT_FOR_MAP = """
const [action, expected, n, done] = [arguments[0], arguments[1], arguments[2],
                                     arguments[arguments.length - 1]];
const gd = document.querySelector('#head-map .js-plotly-plot');
let finished = false;
const matches = () => {
  const trace = gd.data && gd.data[0];
  if (!trace || !trace.x || trace.x.length !== n) return false;
  if (action === 'switch') {
    const title = gd.layout && gd.layout.title && gd.layout.title.text;
    return typeof title === 'string' && title.startsWith(expected);
  }
  return trace.x[1] === expected;
};
const finish = (value) => {
  if (finished) return;
  finished = true;
  gd.removeListener('plotly_afterplot', check);
  done(value);
};
const check = () => { if (matches()) finish(performance.now() - t0); };
gd.on('plotly_afterplot', check);
const t0 = performance.now();
if (action === 'switch') {
  document.getElementById(arguments[3]).click();
} else {
  const box = document.getElementById('prompt-input');
  const set = Object.getOwnPropertyDescriptor(Object.getPrototypeOf(box), 'value').set;
  set.call(box, arguments[3]);
  box.dispatchEvent(new Event('input', {bubbles: true}));
  setTimeout(() => document.getElementById('prompt-run').click(), 0);
}
setTimeout(() => finish(-1), 60000);
"""


def _prompt(session, words: list[str], tokens: int, rng: random.Random) -> str:
    """A prompt of exactly `tokens` tokens (words appended until it fits)."""
    chosen: list[str] = []
    while True:
        candidate = " ".join([*chosen, rng.choice(words)])
        length = session.tokenize(candidate).lengths[0]
        if length > tokens:
            if session.tokenize(" ".join(chosen)).lengths[0] == tokens:
                return " ".join(chosen)
            chosen = []  # a word split into several tokens overshot: start again
            continue
        chosen = candidate.split()
        if length == tokens:
            return candidate


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _summary(samples: list[float]) -> dict:
    return {
        "n": len(samples),
        "median_ms": round(statistics.median(samples), 1),
        "p95_ms": round(_percentile(samples, 95), 1),
        "max_ms": round(max(samples), 1),
        "samples_ms": [round(s, 1) for s in samples],
    }


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.remote.remote_connection import RemoteConnection

    RemoteConnection.set_timeout(120)  # selenium 3.141 + urllib3 2 (see tests/dashboard)
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options)
    driver.set_script_timeout(120)
    return driver


def _serve(app):
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app.server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_port}"


def measure(model_name: str, tokens: int, submits: int, switches: int, seed: int) -> dict:
    import logging

    import headscope as hs
    from headscope.dashboard import results
    from headscope.dashboard.app import create_app
    from headscope.figures.style import token_label

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    model = hs.load_model(model_name)
    app = create_app(model=model, warm_up=False)
    session = app.headscope_session
    results.spectra(session)  # weight-only work done before timing
    spec = model.spec
    rng = random.Random(seed)
    words = WORDS.get(model_name, WORDS["default"])
    server, url = _serve(app)
    driver = _browser()
    try:
        first = _prompt(session, words, tokens, rng)
        driver.get(f"{url}/head/0/0?prompt={quote(first)}")
        first_tokens = session.tokenize(first).tokens[0]
        deadline = time.time() + 120
        while time.time() < deadline:
            ready = driver.execute_script(
                "const gd = document.querySelector('#head-map .js-plotly-plot');"
                "return !!(gd && gd.data && gd.data[0] && gd.data[0].x"
                " && gd.data[0].x.length === arguments[0]);",
                len(first_tokens),
            )
            if ready:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError("the head map never appeared")
        time.sleep(1.0)

        submit_ms: list[float] = []
        previous = first
        for _ in range(submits):
            prompt = _prompt(session, words, tokens, rng)
            while (
                prompt == previous
                or session.tokenize(prompt).tokens[0][1]
                == (session.tokenize(previous).tokens[0][1])
            ):
                prompt = _prompt(session, words, tokens, rng)
            batch_tokens = session.tokenize(prompt).tokens[0]
            expected = f"1 {token_label(batch_tokens[1])}"
            elapsed = driver.execute_async_script(
                WAIT_FOR_MAP, "submit", expected, len(batch_tokens), prompt
            )
            if elapsed < 0:
                raise RuntimeError("a submitted prompt's map never appeared")
            submit_ms.append(float(elapsed))
            previous = prompt
            time.sleep(0.8)  # let the page's other callbacks finish
        n = len(session.tokenize(previous).tokens[0])

        heads = [(layer, head) for layer in range(spec.n_layers) for head in range(spec.n_heads)]
        order = [h for h in heads if h != (0, 0)]
        rng.shuffle(order)
        switch_ms: list[float] = []
        for i in range(switches):
            layer, head = order[i % len(order)]
            elapsed = driver.execute_async_script(
                WAIT_FOR_MAP, "switch", f"Layer {layer}, head {head}", n, f"pick-{layer}-{head}"
            )
            if elapsed < 0:
                raise RuntimeError(f"switching to head {layer}.{head} never drew")
            switch_ms.append(float(elapsed))
            time.sleep(0.25)
    finally:
        driver.quit()
        server.shutdown()
    return {
        "model": model_name,
        "tokens": n,
        "layers": spec.n_layers,
        "heads": spec.n_heads,
        "submit": _summary(submit_ms),
        "head_switch": _summary(switch_ms),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="toy-induction,minilm")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--submits", type=int, default=8)
    parser.add_argument("--switches", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not Path(CHROMIUM).exists():
        print(f"needs {CHROMIUM} and chromedriver (apt-get install chromium chromium-driver)")
        return 2
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    rows = []
    for name in args.models.split(","):
        print(f"measuring {name} at {args.tokens} tokens…", flush=True)
        rows.append(measure(name, args.tokens, args.submits, args.switches, args.seed))

    header = (
        f"{'model':<15}{'tokens':>7}{'submit median':>15}{'submit p95':>12}"
        f"{'switch median':>15}{'switch p95':>12}{'switch max':>12}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for row in rows:
        submit, switch = row["submit"], row["head_switch"]
        print(
            f"{row['model']:<15}{row['tokens']:>7}{submit['median_ms']:>13.0f}ms"
            f"{submit['p95_ms']:>10.0f}ms{switch['median_ms']:>13.0f}ms"
            f"{switch['p95_ms']:>10.0f}ms{switch['max_ms']:>10.0f}ms"
        )
    worst = max(row["head_switch"]["p95_ms"] for row in rows)
    verdict = "meets" if worst < TARGET_SWITCH_P95_MS else "misses"
    print(f"\nhead switch p95 {worst:.0f} ms {verdict} the {TARGET_SWITCH_P95_MS:.0f} ms target")

    import dash
    import plotly

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "dashboard",
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {
                    "platform": platform.platform(),
                    "python": sys.version.split()[0],
                    "cpus": os.cpu_count(),
                    "load_average": os.getloadavg(),
                    "torch_threads": torch.get_num_threads(),
                },
                "versions": {
                    "dash": dash.__version__,
                    "plotly": plotly.__version__,
                    "torch": torch.__version__,
                },
                "target_head_switch_p95_ms": TARGET_SWITCH_P95_MS,
                "results": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS.relative_to(ROOT.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
