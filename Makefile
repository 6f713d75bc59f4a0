# make demo: qsched on the embedded default (embedded Redis, local devices, no Slurm), 4 VQE clients.
# make test: ruff and mypy, then the whole suite (unit, in-process, integration against real Redis/workers/Slurm, e2e).
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST ?= -q

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	# torch is optional (the torch examples); a local CPU wheel installs quickly where one exists
	$(PY) -m pip install -q torch==2.13.0 || echo "torch not installed: torch examples will be skipped"
	touch $@

demo: $(VENV)/.installed
	$(PY) -m qsched.demo

test: lint
	$(PY) -m pytest $(PYTEST)

lint: $(VENV)/.installed
	$(PY) -m ruff check qsched tests benchmarks examples
	$(PY) -m mypy

bench: $(VENV)/.installed
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) build *.egg-info
