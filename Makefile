# bitfit-exp: `make install`, `make test`, `make demo`, `make tables`, `make figures`, `make report`.
# Run inside a virtual environment.
PYTHON ?= python
TORCH_VERSION ?= 2.13.0
# auto: a local GLUE copy where one is found (bitfit_exp/core/data_dir.py), else the hub
DATA_DIR ?= auto
RUNS_DIR ?= $(or $(BITFIT_RUNS_DIR),$(HOME)/bitfit-runs)
OFFLINE = HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

.PHONY: install test test-slow test-all test-min lint demo tables figures report

# torch first, pinned: an unpinned torch pulls whatever build the index serves (a multi-GB CUDA one on Linux).
# On a CUDA box with torch already installed, the installed build is kept.
install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "torch==$(TORCH_VERSION)"
	$(PYTHON) -m pip install -e ".[dev,tracking]"  # tracking: its tests run in CI too

test:
	$(OFFLINE) $(PYTHON) -m pytest -q -m "not slow"

test-slow:
	$(OFFLINE) $(PYTHON) -m pytest -q -m slow || [ $$? -eq 5 ]  # exit 5: no slow test collected

test-all:
	$(OFFLINE) $(PYTHON) -m pytest -q

# The lowest dependency versions pyproject.toml allows (.ci/min-versions.txt), in a second venv, against the tests of
# the code that leans hardest on them (transformers' attention/mask interfaces, training, the CLI through Hydra).
MIN_VENV ?= .venv-min
MIN_TESTS = tests/test_packed.py tests/test_methods.py tests/test_training.py tests/test_cli.py tests/test_optim.py \
	tests/test_peft_export.py tests/test_model_card.py tests/test_serve_api.py tests/test_serve_adapters.py \
	tests/test_serve.py::test_export_round_trip_loads_with_plain_transformers
test-min:
	[ -x $(MIN_VENV)/bin/python ] || python3 -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install -q -c .ci/min-versions.txt -e ".[dev]"
	$(MIN_VENV)/bin/python -m pip check
	$(OFFLINE) $(MIN_VENV)/bin/python -m pytest -q -m "not slow" -p no:cacheprovider $(MIN_TESTS)

lint:
	$(PYTHON) -m ruff check bitfit_exp tests scripts

# Real MiniLM weights, BitFit on 1,000 SST-2 sentences, 3 seeds x 2 epochs; ends with the dev accuracy next to the
# majority class (README: measured time and result). Not forced offline: without a local copy it reads the hub.
demo:
	bitfit-run task=sst2 method=bitfit model=minilm data.dir=$(DATA_DIR) seeds=[0,1,2] train.epochs=2 \
		data.max_train_samples=1000 data.train_eval_samples=300 data.max_length=64 data.padding=longest optim.lr=1e-3

tables:
	bitfit-tables --runs-dir $(RUNS_DIR) --table all --out results/tables

# Figures (bias change, learning curves, generalization gap, data size) from the records under RUNS_DIR.
figures:
	bitfit-plot all --runs-dir $(RUNS_DIR) --out results/figures

# One self-contained page (tables, per-setting seeds and curves, figures, left out, provenance) from the records under
# RUNS_DIR: open results/report/index.html (docs/report.md).
report:
	bitfit-report $(RUNS_DIR) --out results/report
