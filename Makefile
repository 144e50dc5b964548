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

# two test processes with one TensorFlow thread each: 12.5-14 min instead of 17.4 min for one
# process with two threads on a 2-core AVX2 CPU (README -> Tests); loadgroup: the tests that
# read one shared training run (pytest.mark.xdist_group) go to one process, which trains it once
test: setup
	TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadgroup

clean:
	rm -rf $(VENV) runs .pytest_cache *.egg-info
