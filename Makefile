# Two commands: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench clean figures lab

# torch is pinned and installed first: unpinned, pip would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[notebooks,landscapes,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/msam-lab demo

test: $(STAMP)
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
