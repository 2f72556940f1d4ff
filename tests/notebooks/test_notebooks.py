"""The walkthrough notebooks (DESIGN.md test tier 6): each runs top to bottom on the
built-in models, and is stored without outputs, exactly as notebooks/build_notebooks.py
writes it."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
EXPECTED = [
    "01_quickstart",
    "02_flow_and_rollout",
    "03_head_importance",
    "04_position_and_sinks",
    "05_spectral",
]
#: No single cell may take longer (each notebook is meant to run in well under 2 minutes).
CELL_TIMEOUT_S = 120
#: A script or stylesheet fetched from the network (a CDN) in any output.
REMOTE_RESOURCE = re.compile(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", re.IGNORECASE)


def _kernel_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYDEVD_DISABLE_FILE_VALIDATION="1",  # silences ipykernel's debugger warning
        # One intra-op thread: the models are tiny, and on a loaded 2-core machine two
        # OpenMP threads oversubscribe and make CHG and ablation 5-20x slower.
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    return env


def _execute(notebook, cwd: Path):
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(cwd)}},  # the kernel's working directory
    )
    # kwargs of execute() reach the kernel manager's start_kernel (a subprocess env)
    return client.execute(env=_kernel_env())


def _builder():
    spec = importlib.util.spec_from_file_location(
        "build_notebooks", NOTEBOOK_DIR / "build_notebooks.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_five_notebooks_are_there():
    assert [path.stem for path in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_is_saved_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [], f"{path.name} cell {index} was saved with outputs"
        assert cell.execution_count is None, f"{path.name} cell {index} has an execution count"


def test_notebooks_match_their_source():
    """notebooks/build_notebooks.py is the source; the .ipynb files are its output."""
    builder = _builder()
    assert sorted(builder.NOTEBOOKS) == EXPECTED
    for name in builder.NOTEBOOKS:
        on_disk = (NOTEBOOK_DIR / f"{name}.ipynb").read_text(encoding="utf-8")
        assert on_disk == builder.render(builder.build(name)), (
            f"{name}.ipynb differs from notebooks/build_notebooks.py: edit the cell there "
            "and run `.venv/bin/python notebooks/build_notebooks.py`"
        )


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
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    try:
        _execute(notebook, tmp_path)
    except nbclient.exceptions.CellExecutionError as error:
        pytest.fail(f"{path.name} failed:\n{error}", pytrace=False)
    elapsed = time.perf_counter() - start
    print(f"{path.name}: {elapsed:.1f} s")
    figures = 0
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            figures += "application/vnd.plotly.v1+json" in data
            for mime, value in data.items():
                text = value if isinstance(value, str) else str(value)
                assert not REMOTE_RESOURCE.search(text), (
                    f"{path.name} cell {index} output ({mime}) loads a remote resource"
                )
    assert figures >= 1, f"{path.name} showed no figure"
    assert list(tmp_path.iterdir()) == [], f"{path.name} left files in its working directory"
