# Photo tagger: train -> archive -> serve on TorchServe.  `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
export PYTHONPATH := $(CURDIR)

# Which training run `make archive` packs, and the version it is served as.
RUN ?= runs/demo
VERSION ?= 1.0
STORE ?= model_store
ARCHIVE := $(STORE)/$(if $(filter 1.0,$(VERSION)),tagger.mar,tagger-$(VERSION).mar)

# Demo settings: sized so that `make demo` finishes in under 10 minutes on 2 CPU cores (see README).
DEMO_DATA := data/demo
DEMO_TRAIN_IMAGES ?= 1200
DEMO_HOLDOUT_IMAGES ?= 300
DEMO_TRAIN_ARGS ?= --epochs 6 --batch-size 32 --lr 2e-3 --image-size 128
# Full run: the README's quality targets (GPU, or a long CPU run).
FULL_DATA := data/full
FULL_TRAIN_IMAGES ?= 12000
FULL_TRAIN_ARGS ?= --epochs 20 --batch-size 64 --lr 1e-3

.PHONY: help setup demo test train-demo train-full archive serve stop clean

help:
	@echo "make setup        create $(VENV) with the pinned dependencies and generate the gRPC stubs"
	@echo "make demo         synthetic data -> train (demo settings) -> archive -> serve -> tag held-out photos -> stop"
	@echo "make test         the whole test suite (starts real TorchServe instances on free ports)"
	@echo "make train-full   the full training run on a large synthetic set (README: quality targets)"
	@echo "make archive      pack RUN=$(RUN) into $(STORE)/tagger.mar (VERSION=2.0 -> tagger-2.0.mar)"
	@echo "make serve/stop   start TorchServe with config.properties and wait until READY / stop it"

# ---- setup: idempotent; does nothing when requirements.txt has not changed ----------------------------------
setup: $(VENV)/.installed generated/.stamp

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

generated/.stamp: $(VENV)/.installed client/protos.py
	$(PY) -m client.protos
	touch $@

# ---- data and training ------------------------------------------------------------------------------------------
$(DEMO_DATA)/train/labels.csv: | setup
	$(PY) -m training.synth --out $(DEMO_DATA)/train --count $(DEMO_TRAIN_IMAGES) --seed 1 --max-size 1280

$(DEMO_DATA)/holdout/labels.csv: | setup
	$(PY) -m training.synth --out $(DEMO_DATA)/holdout --count $(DEMO_HOLDOUT_IMAGES) --seed 2 --max-size 1280

runs/demo/model.pt: $(DEMO_DATA)/train/labels.csv $(DEMO_DATA)/holdout/labels.csv
	$(PY) -m training.train --data $(DEMO_DATA)/train/labels.csv --test-data $(DEMO_DATA)/holdout/labels.csv \
		--output-dir runs/demo $(DEMO_TRAIN_ARGS)

train-demo: setup runs/demo/model.pt

train-full: setup
	test -f $(FULL_DATA)/train/labels.csv || $(PY) -m training.synth --out $(FULL_DATA)/train --count $(FULL_TRAIN_IMAGES) --seed 11
	test -f $(FULL_DATA)/test/labels.csv || $(PY) -m training.synth --out $(FULL_DATA)/test --count 2000 --seed 12
	$(PY) -m training.train --data $(FULL_DATA)/train/labels.csv --test-data $(FULL_DATA)/test/labels.csv \
		--output-dir runs/full $(FULL_TRAIN_ARGS)

# ---- archive ----------------------------------------------------------------------------------------------------
# The shared package travels inside the archive: --extra-files copies a folder's *contents*, so it is staged one
# level down (build/.../extra/phototag) to arrive as the importable package phototag/ next to the handler.
archive: setup $(RUN)/model.pt
	rm -rf build/archive-$(VERSION) && mkdir -p build/archive-$(VERSION)/extra $(STORE)
	cp -r phototag build/archive-$(VERSION)/extra/phototag
	find build/archive-$(VERSION) -name __pycache__ -prune -exec rm -rf {} +
	$(BIN)/torch-model-archiver --model-name tagger --version $(VERSION) \
		--handler handler/tagger_handler.py --serialized-file $(RUN)/model.pt \
		--extra-files $(RUN)/taxonomy.json,build/archive-$(VERSION)/extra \
		--config-file handler/model-config.yaml --export-path build/archive-$(VERSION) --force
	mv build/archive-$(VERSION)/tagger.mar $(ARCHIVE)
	@echo "built $(ARCHIVE) (model tagger, version $(VERSION), weights from $(RUN))"

# ---- serving ----------------------------------------------------------------------------------------------------
serve: setup
	test -f $(STORE)/tagger.mar || { echo "no $(STORE)/tagger.mar: run make archive (or make demo) first"; exit 1; }
	$(BIN)/torchserve --start --ts-config config.properties --model-store $(STORE)
	$(PY) -m client wait-ready --timeout 300

stop:
	-$(BIN)/torchserve --stop --foreground

# ---- the main job and the tests ---------------------------------------------------------------------------------
demo: setup runs/demo/model.pt
	$(MAKE) --no-print-directory archive RUN=runs/demo VERSION=1.0
	$(MAKE) --no-print-directory serve || { $(MAKE) --no-print-directory stop; exit 1; }
	$(PY) -m client.demo --labels $(DEMO_DATA)/holdout/labels.csv --count 6; status=$$?; \
		$(MAKE) --no-print-directory stop; exit $$status

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	-$(BIN)/torchserve --stop --foreground 2>/dev/null
	rm -rf data runs build logs generated $(STORE)/*.mar key_file.json

# ---- load test (needs a running server: make serve) -------------------------------------------------------------
.PHONY: loadtest
loadtest: setup
	mkdir -p reports
	$(BIN)/locust --config loadtests/locust.conf $(LOCUST_ARGS)
