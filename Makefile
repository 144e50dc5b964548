# One-command entry points; see README.md.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[test]"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/mtl train --config experiments/demo.yaml
	$(PY) -c "from mtl.data.adapters.phantoms import write_example_slice as w; print('example slice (synthetic):', w('runs/demo/example_slice.png'))"

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache *.egg-info
