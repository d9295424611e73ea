# Two commands: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test check lint format bench clean figures lab teach

# torch is pinned and installed first: unpinned, pip would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[notebooks,landscapes,dev,lightning,accelerate,tensorboard,wandb]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/msam-lab demo

# ruff: lint and format (pyproject.toml); `make format` applies the formatting
lint: $(STAMP)
	$(VENV)/bin/ruff check msam_lab tests bench
	$(VENV)/bin/ruff format --check msam_lab tests bench

format: $(STAMP)
	$(VENV)/bin/ruff check --fix msam_lab tests bench
	$(VENV)/bin/ruff format msam_lab tests bench

# The inner loop: lint and the core tests (no `slow` marker) on both cores, under two minutes on 2 quiet cores.
check: lint
	$(PY) -m pytest -q -m "not slow" -n 2

# Everything, as CI runs it.
test: lint
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/step_cost.py

clean:
	rm -rf $(VENV) runs .pytest_cache

# --- notebooks and figures (issue 5) ----------------------------------------
# Regenerate every file in figures/ (trains or reuses the runs under runs/notebooks/;
# plotly PNGs only where a Chromium is installed).
figures: $(STAMP)
	$(PY) -m msam_lab.figures --out figures

# JupyterLab on the notebooks (http://127.0.0.1:8888, token printed in the log).
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ip=127.0.0.1 --no-browser --ServerApp.root_dir=notebooks \
		$(if $(filter 0,$(shell id -u)),--allow-root,)

# The teaching lab (notebooks/06_teaching_demo.ipynb) as a Voilà app: sliders and figures, no code
# (Voilà strips the sources by default). Voilà's defaults otherwise: no token (it listens on 127.0.0.1
# only); it has no root check, so nothing like lab's --allow-root is needed.
# `make teach TEACH_PORT=9000` for another port; a taken port is an error, so the URL printed is the one served.
TEACH_PORT ?= 8866
teach: $(STAMP)
	@echo "Teaching lab (Voilà): http://127.0.0.1:$(TEACH_PORT)/  (Ctrl-C to stop)"
	$(VENV)/bin/voila notebooks/06_teaching_demo.ipynb --no-browser --Voila.ip=127.0.0.1 \
		--port=$(TEACH_PORT) --Voila.port_retries=0
