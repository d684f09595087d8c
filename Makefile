# The two set-up commands of README.md: `make demo` and `make test`.
# Both create .venv with the pinned dependencies on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test benchmark study-demo clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/breasttumorseg demo --output demo-output --overwrite

study-demo: $(STAMP)
	$(VENV)/bin/breasttumorseg study synthetic study-demo --overwrite
	$(VENV)/bin/breasttumorseg study analyze study-demo/study.json --output study-demo/report --overwrite

test: $(STAMP)
	$(VENV)/bin/ruff check BreastTumorSeg Testing
	$(PY) -m pytest -n 2 --dist loadfile Testing

benchmark: $(STAMP)
	$(PY) Testing/benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo-output study-demo
