# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint docs site-check chromium clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,docs]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m paramshape demo

lint: $(STAMP)
	$(BIN)/ruff check paramshape tests notebooks benchmarks docs/hooks conftest.py
	$(BIN)/ruff format --check paramshape tests notebooks benchmarks docs/hooks conftest.py
	$(BIN)/mypy

# The site goes to site/; --strict turns every warning (a broken link, a docstring that does not
# render, a notebook that fails) into an error. The tutorials are executed during the build, on one
# thread: their models are tiny, and spinning OpenMP threads on a busy machine slow them down tenfold.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 OMP_NUM_THREADS=1 $(BIN)/mkdocs build --strict --clean

# Debian's chromium for the browser check of the site (tests/test_site.py). Installed when missing
# and apt-get can (root, a Debian-like system); otherwise the check is skipped and says why. Never
# a browser download of its own: Playwright's would need a host outside the package registries.
chromium:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
	    || [ -n "$$PARAMSHAPE_CHROMIUM" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the site check"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "chromium could not be installed: the browser check of the site will be skipped"; \
	else \
	    echo "no chromium, and apt-get is unavailable or needs root: the browser check of the site will be skipped"; \
	fi

# The built site, opened page by page in headless Chromium (raw TeX, broken images, console
# errors, requests to the network, search). Screenshots go to build/site-screenshots/.
site-check: $(STAMP) chromium
	$(BIN)/python -m pytest -m site tests/test_site.py

# The suite runs on every core (pytest-xdist; at most 8 workers, each test in one of them), one
# thread per worker: the tests' tensors are small, and workers that each spin a thread per core
# slow one another down.
test: lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m "not site" -n auto --maxprocesses=8
	$(MAKE) docs
	$(MAKE) site-check

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis site build dist

# Mutation testing of the core modules (tests/mutation.py; scope in CONTRIBUTING.md): not part of `make test`. JOBS mutants run
# in parallel, each in its own copy of the repository; SAMPLE=N tests a random sample of N. Writes
# mutation-report.txt and prints the kill rate.
JOBS ?= 2
SAMPLE ?= 0
.PHONY: mutation
mutation: $(STAMP)
	JOBS=$(JOBS) SAMPLE=$(SAMPLE) $(BIN)/python -m tests.mutation
