# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint docs clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,docs]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m paramshape demo

lint: $(STAMP)
	$(BIN)/ruff check paramshape tests notebooks benchmarks docs/hooks conftest.py
	$(BIN)/ruff format --check paramshape tests notebooks benchmarks docs/hooks conftest.py

# The site goes to site/; --strict turns every warning (a broken link, a docstring that does not
# render, a notebook that fails) into an error. The tutorials are executed during the build, on one
# thread: their models are tiny, and spinning OpenMP threads on a busy machine slow them down tenfold.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 OMP_NUM_THREADS=1 $(BIN)/mkdocs build --strict --clean

test: lint
	$(BIN)/python -m pytest
	$(MAKE) docs

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis site
