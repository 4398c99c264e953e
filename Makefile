# ccd-study: `make reproduce` regenerates reports/, `make test` runs pytest + nbval. `make help` lists targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export CCDLIB_CACHE ?= $(CURDIR)/.cache/ccdlib
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb))
REPORTED  := $(patsubst notebooks/%.ipynb,reports/notebooks/%.ipynb,$(NOTEBOOKS))
PARAMS    ?= notebooks/params/default.yaml
STAMP     := $(VENV)/.installed

.PHONY: help setup data test pytest nbval reproduce report screenshot lab lab-screenshot clean clean-cache lock

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# Installs exactly requirements.lock (every version, with sha256 hashes; scripts/lock.py regenerates it), then
# the project itself without dependencies, then checks that the installed set is consistent.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --require-hashes --no-deps -r requirements.lock
	$(BIN)/pip install --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $@

setup: $(STAMP) data ## create .venv, install everything (idempotent), fetch the photo packages

data: $(STAMP) ## fetch the Debian packages of the embedded study (tuxpaint photos, WordNet 3.0)
	@if { { [ ! -d /usr/share/tuxpaint/stamps ] && [ ! -d "$(CCDLIB_CACHE)/tuxpaint" ]; } \
	      || { [ ! -f /usr/share/wordnet/data.noun ] && [ ! -d "$(CCDLIB_CACHE)/wordnet" ]; }; } \
	    && [ "$$(id -u)" = 0 ] && ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then \
	  echo "apt package lists are missing: running apt-get update"; apt-get update -qq; fi
	$(BIN)/python -m ccdlib data fetch

test: setup ## pytest + nbval over notebooks/ (offline, CPU)
	$(BIN)/python -m pytest -q tests
	$(BIN)/python -m pytest -q --nbval-lax --nbval-current-env -p no:cacheprovider $(NOTEBOOKS)

pytest: setup ## only the unit tests
	$(BIN)/python -m pytest -q tests

reports/notebooks/%.ipynb: notebooks/%.ipynb $(PARAMS) $(STAMP)
	@mkdir -p reports/notebooks
	$(BIN)/papermill -k python3 --cwd notebooks -f $(PARAMS) --log-level WARNING $< $@

reproduce: setup ## run every notebook with papermill (params/default.yaml) into reports/
	@start=$$(date +%s); rm -f $(REPORTED); \
	$(MAKE) --no-print-directory $(REPORTED) && \
	$(BIN)/python -m ccdlib.report_index --reports reports --params $(PARAMS) --seconds $$(( $$(date +%s) - start ))

report: ## rebuild reports/README.md, index.html and the HTML renderings from what is there
	$(BIN)/python -m ccdlib.report_index --reports reports --params $(PARAMS)

screenshot: ## render reports/index.html in headless Chromium to reports/screenshot.png
	bash scripts/screenshot.sh reports/index.html reports/screenshot.png

# JupyterLab reads the project's settings overrides (.jupyter/lab/settings/overrides.json: no "Jupyter news" prompt, no
# update check) as its application settings folder; the user's own settings (~/.jupyter/lab/user-settings) still apply.
LAB_SETTINGS := $(CURDIR)/.jupyter/lab/settings

lab: setup ## open JupyterLab on the notebooks (project settings: no news pop-up)
	$(BIN)/jupyter lab --notebook-dir=notebooks --LabApp.app_settings_dir=$(LAB_SETTINGS)

lab-screenshot: setup ## headless JupyterLab + Chromium on notebook 04 -> reports/lab_screenshot.png; fails on the news prompt
	VENV=$(VENV) LAB_APP_SETTINGS_DIR=$(LAB_SETTINGS) bash scripts/lab_screenshot.sh notebooks/04_main_table.ipynb reports/lab_screenshot.png

lock: ## re-resolve pyproject.toml into requirements.lock (to keep .venv's versions: scripts/lock.py --keep-installed)
	$(PYTHON) scripts/lock.py

clean: ## remove executed notebooks and scratch outputs (keeps caches and .venv)
	rm -rf reports/notebooks notebooks/_scratch .pytest_cache

clean-cache: ## remove the disk caches (teacher embeddings, student features, mosaics, fetched packages)
	rm -rf $(CCDLIB_CACHE)
