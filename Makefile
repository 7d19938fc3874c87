# EQ-VAE reproducibility kit. The two commands a new user needs:
#   make reproduce   # set-up (venv, data) + every notebook of the profile (default: cpu) through papermill
#   make test        # set-up + unit tests + the notebooks under the smoke profile (nbval)
# Stages run one after another on purpose: two CPU-heavy jobs on 2 cores slow each other ~10x.

SHELL      := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.NOTPARALLEL:
.DELETE_ON_ERROR:

PROFILE    ?= cpu
PARAMS     ?=
PYTHON     ?= python3
VENV       := .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed
RUNS       := runs
NB_OUT     := $(RUNS)/$(PROFILE)/notebooks
# Notebooks a profile leaves out (their claims are listed as "not run in this profile" by the report).
SKIP_cpu   := 10_discrete_vq_maskgit
SKIP_paper := 00_design_pilot 10_discrete_vq_maskgit
NOTEBOOKS  := $(filter-out $(patsubst %,notebooks/%.ipynb,$(SKIP_$(PROFILE))),$(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb)))
EXECUTED   := $(patsubst notebooks/%,$(NB_OUT)/%,$(NOTEBOOKS))
LIB        := $(shell find eqvae_lib -name '*.py' 2>/dev/null)
PYTEST_ARGS ?=

export EQVAE_PROFILE := $(PROFILE)
export PYTHONUNBUFFERED := 1
export TQDM_MININTERVAL ?= 15

# JupyterLab as `make lab` starts it: headless-friendly (no browser), and --allow-root when run as root (containers),
# where Jupyter otherwise stops at once with "Running as root is not recommended". LAB_IP=0.0.0.0 to reach it from
# outside a container.
LAB_IP     ?= 127.0.0.1
LAB_ARGS   := --notebook-dir=notebooks --no-browser --ip=$(LAB_IP) $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: help venv data reproduce project test unit-test nb-test lab lab-command check-params clean bench strip
help:
	@echo "make reproduce [PROFILE=smoke|cpu|cpu-full|paper] [PARAMS='-p name value ...'] [FORCE=1]"
	@echo "make project   projected wall time of each notebook of PROFILE on this machine (make reproduce prints it)"
	@echo "make test      unit tests + notebooks under the smoke profile (= make unit-test nb-test)"
	@echo "make venv      create .venv from requirements.lock (every target does this when needed)"
	@echo "make data      fetch Fashion-MNIST (Debian package as root, else download into data/)"
	@echo "make lab       JupyterLab with the kit's kernel"
	@echo "make bench     benchmarks in bench/ (one at a time)"
	@echo "make strip     strip outputs from notebooks/ before committing"
	@echo "make clean     remove generated outputs (runs/, figures of smoke/paper); never data/ or the committed figures"

# ---------------------------------------------------------------------------------------------------- set-up
venv: $(STAMP)
$(STAMP): requirements.lock pyproject.toml
	@echo "== creating $(VENV) from requirements.lock (first time: ~4 min, ~6.7 GB)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name eqvae-kit --display-name "EQ-VAE kit (.venv)" >/dev/null
	@touch $@

data: $(STAMP)
	$(PY) -m eqvae_lib.data fetch

# ---------------------------------------------------------------------------------------------------- reproduce
reproduce: $(STAMP) check-params data project $(EXECUTED)
	@if grep -q '<!-- results:$(PROFILE) -->' README.md; then $(PY) -m eqvae_lib report --profile $(PROFILE) --readme; fi
	@echo "== $(PROFILE): executed notebooks in $(NB_OUT), records in $(RUNS)/$(PROFILE)/records, figures in figures/$(PROFILE)"

# The projected wall time of each notebook on this machine (eqvae_lib/experiment/projection.py: measured throughput x
# the work the profile's configuration implies), printed once before the notebooks run. It never fails the build: when it
# cannot measure, it says why and the notebooks run anyway.
project: $(STAMP)
	@$(PY) -m eqvae_lib project --profile $(PROFILE) $(if $(filter smoke,$(PROFILE)),--seconds 0.5) \
	    --notebooks $(notdir $(NOTEBOOKS)) $(PARAMS) \
	    || echo "== projection of the wall times failed (exit $$?; see above); running the notebooks anyway"

# Every -p NAME VALUE of PARAMS must be a key of a stage config of the profile (eqvae_lib/experiment/config.py): checked
# any notebook runs, so a misspelled override fails in seconds instead of being ignored.
check-params: $(STAMP)
	@$(if $(strip $(PARAMS)),$(PY) -m eqvae_lib config check $(PARAMS),true)

# One executed notebook per source notebook; re-run only when its source, the profile (or the cpu profile it
# inherits) or the library changed, or when PARAMS / FORCE=1 is given (overrides always re-run every notebook).
FORCE_DEP := $(if $(strip $(PARAMS)$(FORCE)),FORCE_RUN)
.PHONY: FORCE_RUN
FORCE_RUN:

# The report is rebuilt whenever any other notebook of the profile ran.
$(NB_OUT)/99_report.ipynb: $(filter-out $(NB_OUT)/99_report.ipynb,$(EXECUTED))

$(NB_OUT)/%.ipynb: notebooks/%.ipynb profiles/$(PROFILE).yaml profiles/cpu.yaml $(LIB) $(STAMP) $(FORCE_DEP)
	@mkdir -p $(NB_OUT)
	@echo "== running $< (profile $(PROFILE)) at $$(date +%H:%M:%S)"
	@start=$$(date +%s); \
	$(PY) -m papermill $< $(@:.ipynb=.tmp.ipynb) -p profile $(PROFILE) $(PARAMS) \
	    --cwd notebooks --log-output --progress-bar --kernel python3 && mv $(@:.ipynb=.tmp.ipynb) $@; \
	echo "== finished $< in $$(( $$(date +%s) - start )) s"

# ---------------------------------------------------------------------------------------------------- tests
test: $(STAMP) data unit-test nb-test

unit-test: $(STAMP)
	$(PY) -m pytest tests --durations=15 $(PYTEST_ARGS)

nb-test: $(STAMP)
	EQVAE_PROFILE=smoke $(PY) -m pytest --nbval-lax notebooks --durations=15 -p no:cacheprovider $(PYTEST_ARGS)

bench: $(STAMP) data
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b; done

# ---------------------------------------------------------------------------------------------------- other
lab: $(STAMP) data
	$(VENV)/bin/jupyter lab $(LAB_ARGS)

# the command `make lab` runs (tests/test_lab.py starts the server the same way)
lab-command:
	@echo $(VENV)/bin/jupyter lab $(LAB_ARGS)

strip: $(STAMP)
	$(VENV)/bin/nbstripout notebooks/*.ipynb

clean:
	rm -rf $(RUNS) figures/smoke figures/paper .pytest_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
