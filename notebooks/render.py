"""Execute the walkthrough notebooks and render each one to a standalone HTML page.

`make notebooks` runs this. For each notebooks/NN_name.py (jupytext percent format, the
source of the notebook) it builds the notebook with jupytext, executes it with nbclient on
the `python3` kernel in an empty temporary directory (HF_HUB_OFFLINE=1, one OpenMP thread,
as tests/notebooks does), keeps the executed notebook as build/notebooks/NN_name.ipynb and
writes docs/notebooks/NN_name.html.

The notebooks show plotly figures as JSON (the `plotly_mimetype` renderer), which
JupyterLab, Notebook 7 and VS Code draw but nbconvert's HTML does not. Here every figure
becomes a <div> drawn by plotly.js, inlined once per page, and the page loads nothing
else (no require.js, MathJax or mermaid from a CDN): it opens offline, from file://.

    .venv/bin/python notebooks/render.py                            # all five
    .venv/bin/python notebooks/render.py notebooks/05_spectral.py   # one
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SOURCES = sorted(HERE.glob("[0-9][0-9]_*.py"))
PLOTLY_MIME = "application/vnd.plotly.v1+json"
#: No single cell may take longer (each notebook is meant to run in well under 2 minutes).
CELL_TIMEOUT_S = 120

#: nbconvert's JupyterLab page, with plotly.js inlined and nothing fetched from a CDN.
TEMPLATE_NAME = "headscope_offline.html.j2"
TEMPLATE = """\
{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}
<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>
<script>{{ resources.plotly_js }}</script>
{%- endblock html_head_js -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""


def kernel_env() -> dict[str, str]:
    """The kernel's environment: offline, and one intra-op thread (the models are tiny)."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYDEVD_DISABLE_FILE_VALIDATION="1",  # silences ipykernel's debugger warning
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    return env


def load(source: Path):
    """The notebook (nbformat v4, no outputs) of a percent script."""
    import jupytext

    return jupytext.read(source)


def execute(notebook, cwd: Path, timeout: int = CELL_TIMEOUT_S):
    """Run every cell of `notebook` in place on the `python3` kernel, in directory `cwd`."""
    import nbclient

    client = nbclient.NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(cwd)}},  # the kernel's working directory
    )
    # kwargs of execute() reach the kernel manager's start_kernel (a subprocess env)
    return client.execute(env=kernel_env())


def with_figure_html(notebook):
    """A copy of `notebook` in which each plotly output also carries a text/html <div>
    (no plotly.js in it: the page loads plotly.js once)."""
    import plotly.io as pio

    notebook = copy.deepcopy(notebook)
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            figure = output.get("data", {}).get(PLOTLY_MIME)
            if figure is None:
                continue
            output["data"]["text/html"] = pio.to_html(
                {"data": figure.get("data", []), "layout": figure.get("layout", {})},
                config=figure.get("config"),
                include_plotlyjs=False,
                include_mathjax=False,
                full_html=False,
                default_width="100%",
                default_height=525,
                validate=False,
            )
    return notebook


def to_html(notebook, name: str = "notebook") -> str:
    """A standalone HTML page of an executed notebook, its plotly figures drawn offline."""
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter
    from plotly.offline import get_plotlyjs

    exporter = HTMLExporter(
        template_name="lab",
        extra_loaders=[DictLoader({TEMPLATE_NAME: TEMPLATE})],
        template_file=TEMPLATE_NAME,
    )
    resources = {"metadata": {"name": name}, "plotly_js": get_plotlyjs()}
    body, _ = exporter.from_notebook_node(with_figure_html(notebook), resources=resources)
    return body


def render(source: Path, html_dir: Path, ipynb_dir: Path) -> float:
    """Execute one notebook, write its .ipynb and .html; returns the execution time (s)."""
    import nbformat

    notebook = load(source)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"{source.stem}-") as cwd:
        execute(notebook, Path(cwd))
    elapsed = time.perf_counter() - start
    ipynb_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, ipynb_dir / f"{source.stem}.ipynb")
    html_dir.mkdir(parents=True, exist_ok=True)
    (html_dir / f"{source.stem}.html").write_text(to_html(notebook, source.stem), "utf-8")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="*", type=Path, help="percent scripts (default: all)")
    parser.add_argument("--html-dir", type=Path, default=ROOT / "docs" / "notebooks")
    parser.add_argument("--ipynb-dir", type=Path, default=ROOT / "build" / "notebooks")
    args = parser.parse_args(argv)

    import nbclient

    failed = []
    total = time.perf_counter()
    for source in args.sources or SOURCES:
        try:
            elapsed = render(source.resolve(), args.html_dir, args.ipynb_dir)
        except nbclient.exceptions.CellExecutionError as error:
            print(f"{source.name} failed:\n{error}", file=sys.stderr)
            failed.append(source.name)
            continue
        html = args.html_dir / f"{source.stem}.html"
        size = html.stat().st_size / 1e6
        print(f"{source.stem}: executed in {elapsed:.1f} s -> {html} ({size:.1f} MB)")
    print(f"{len(args.sources or SOURCES)} notebooks in {time.perf_counter() - total:.1f} s")
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
