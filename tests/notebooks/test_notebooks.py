"""The walkthrough notebooks (DESIGN.md test tier 6): notebooks/NN_name.py (jupytext
percent scripts) are their source; each becomes a notebook through jupytext and runs top
to bottom on the built-in models. Nothing here reads an .ipynb from notebooks/: those are
generated (and git-ignored), so opening and saving a notebook in Jupyter cannot fail a test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
jupytext = pytest.importorskip("jupytext")

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
SOURCES = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))
EXPECTED = [
    "01_quickstart",
    "02_flow_and_rollout",
    "03_head_importance",
    "04_position_and_sinks",
    "05_spectral",
    "06_head_clusters",
    "07_retrieval_heads",
    "08_training_dynamics",
    "09_vision",
]
#: No single cell may take longer (each notebook is meant to run in well under 2 minutes).
CELL_TIMEOUT_S = 120
#: A script or stylesheet fetched from the network (a CDN) in any output.
REMOTE_RESOURCE = re.compile(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", re.IGNORECASE)
#: A <script src=...> or <link href=...> tag that loads from the network.
REMOTE_TAG = re.compile(
    r"""<(script|link)\b[^>]*\b(src|href)\s*=\s*["']?\s*(https?:)?//""", re.IGNORECASE
)
PLOTLY_MIME = "application/vnd.plotly.v1+json"


def _execute(notebook, cwd: Path):
    """Execute as `make notebooks` does (notebooks/render.py: offline, one OpenMP thread)."""
    return _render_module().execute(notebook, cwd, timeout=CELL_TIMEOUT_S)


def _generate(source: Path, directory: Path) -> Path:
    """notebooks/NN_name.py -> directory/NN_name.ipynb, through jupytext's Python API."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{source.stem}.ipynb"
    jupytext.write(jupytext.read(source), path)
    return path


def _render_module():
    spec = importlib.util.spec_from_file_location("render", NOTEBOOK_DIR / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_five_notebooks_are_there():
    assert [path.stem for path in SOURCES] == EXPECTED


@pytest.mark.parametrize("source", SOURCES, ids=[path.stem for path in SOURCES])
def test_source_round_trips_through_jupytext(source, tmp_path):
    """Each percent script reads as a notebook of non-empty markdown and code cells, and
    survives .py -> .ipynb -> .py with the same cells."""
    notebook = jupytext.read(source)
    kinds = [cell.cell_type for cell in notebook.cells]
    assert "markdown" in kinds and "code" in kinds, f"{source.name}: {kinds}"
    for index, cell in enumerate(notebook.cells):
        assert cell.cell_type in ("markdown", "code"), f"{source.name} cell {index}"
        assert cell.source.strip(), f"{source.name} cell {index} is empty"
    assert notebook.metadata["kernelspec"]["name"] == "python3"

    path = _generate(source, tmp_path)
    generated = nbformat.read(path, as_version=4)
    nbformat.validate(generated)
    for cell in generated.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    again = jupytext.reads(jupytext.writes(generated, fmt="py:percent"), fmt="py:percent")
    cells = [(cell.cell_type, cell.source) for cell in notebook.cells]
    assert [(cell.cell_type, cell.source) for cell in generated.cells] == cells
    assert [(cell.cell_type, cell.source) for cell in again.cells] == cells


def test_html_draws_plotly_figures_offline():
    """`make notebooks` (notebooks/render.py) turns plotly's JSON outputs into figures that
    an HTML page draws with plotly.js inlined once, loading nothing from the network."""
    pytest.importorskip("nbconvert")
    import plotly.graph_objects as go

    render = _render_module()
    assert [path.stem for path in render.SOURCES] == EXPECTED
    notebook = nbformat.v4.new_notebook()
    cells = [nbformat.v4.new_markdown_cell("# A figure"), nbformat.v4.new_code_cell("")]
    for title in ("first", "second"):
        figure = json.loads(go.Figure(go.Bar(y=[1, 3, 2]), layout={"title": title}).to_json())
        cells[1].outputs.append(
            nbformat.v4.new_output(
                "display_data", data={PLOTLY_MIME: figure, "text/plain": "Figure"}
            )
        )
    notebook.cells = cells
    html = render.to_html(notebook, "figures")
    assert html.count("Plotly.newPlot(") == 2
    assert html.count("plotly.js v") == 1  # the library's banner: inlined once
    assert not REMOTE_TAG.search(html), REMOTE_TAG.search(html).group(0)
    assert "require.js" not in html and "MathJax.js" not in html


@pytest.mark.notebook
@pytest.mark.slow
def test_the_kernel_is_this_interpreter(tmp_path):
    """The `python3` kernel must run the interpreter (and so the environment) of the tests."""
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell("import sys; print(sys.executable)")]
    _execute(notebook, tmp_path)
    printed = notebook.cells[0].outputs[0]["text"].strip()
    assert os.path.realpath(printed) == os.path.realpath(sys.executable)


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES, ids=[path.stem for path in SOURCES])
def test_notebook_runs_top_to_bottom(source, tmp_path):
    path = _generate(source, tmp_path / "generated")
    notebook = nbformat.read(path, as_version=4)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    start = time.perf_counter()
    try:
        _execute(notebook, cwd)
    except nbclient.exceptions.CellExecutionError as error:
        pytest.fail(f"{source.name} failed:\n{error}", pytrace=False)
    elapsed = time.perf_counter() - start
    print(f"{source.stem}: {elapsed:.1f} s")
    figures = 0
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            figures += PLOTLY_MIME in data
            for mime, value in data.items():
                text = value if isinstance(value, str) else str(value)
                assert not REMOTE_RESOURCE.search(text), (
                    f"{source.name} cell {index} output ({mime}) loads a remote resource"
                )
    assert figures >= 1, f"{source.name} showed no figure"
    assert list(cwd.iterdir()) == [], f"{source.name} left files in its working directory"
