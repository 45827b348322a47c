# Photo tagger: train -> archive -> serve on TorchServe.  `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
KSERVE_VENV := .venv-kserve
export PYTHONPATH := $(CURDIR)

# Which training run `make archive` packs, and the version it is served as.
RUN ?= runs/demo
VERSION ?= 1.0
STORE ?= model_store
ARCHIVE := $(STORE)/$(if $(filter 1.0,$(VERSION)),tagger.mar,tagger-$(VERSION).mar)
# Per-model serving settings packed into the archive (benchmarks pack variants of it).
MODEL_CONFIG ?= handler/model-config.yaml
# Staging folder of the archive build (tests give each run its own).
BUILD ?= build
STAGE := $(BUILD)/archive-$(VERSION)

# Demo settings: sized so that `make demo` finishes in under 10 minutes on 2 CPU cores (see README). The demo
# fine-tunes the project's committed warm start (weights/warm-start.pt, made by `make warm-start`): layer4 and the
# time/season/terrain heads on the demo's photos, the object part held as the warm start has it (--freeze-cells:
# a third of the time a step, and the objects keep what 1,082,816 crops taught them). Without a warm start
# (WARM_START=) every part learns, the objects from 32 crops a step.
DEMO_DATA := data/demo
DEMO_TRAIN_IMAGES ?= 1200
DEMO_HOLDOUT_IMAGES ?= 300
WARM_START ?= weights/warm-start.pt
DEMO_TRAIN_ARGS ?= $(if $(WARM_START),--init-from $(WARM_START) --freeze-cells,--crops-per-step 32) --epochs 2 \
	--batch-size 8 --opt adamw --lr 5e-5 --warmup 0.1
# Full run, sized for a GPU and not yet run: the CPU recipe scaled up, 7,500 steps of 32 photos + 256 crops
# (240,000 photos and 1.9M crops seen at 256 px; docs/model.md).
FULL_DATA := data/full
FULL_TRAIN_IMAGES ?= 12000
FULL_TRAIN_ARGS ?= --epochs 20 --batch-size 32 --crops-per-step 256 --opt adamw --lr 5e-4 --warmup 0.03

.PHONY: help setup demo test lint train-demo train-cpu train-full archive serve stop rotate-keys clean

help:
	@echo "make setup        create $(VENV) with the pinned dependencies and generate the gRPC stubs"
	@echo "make demo         synthetic data -> train (demo settings) -> archive -> serve -> tag held-out photos -> stop"
	@echo "make test         the whole test suite (starts real TorchServe instances on free ports)"
	@echo "make lint         ruff over the whole tree (CI runs it before the tests)"
	@echo "make train-cpu    the CPU recipe from random init (resumes after an interruption)"
	@echo "make warm-start   make train-cpu, its model exported in bf16 as $(WARM_START)"
	@echo "make train-full   the full training run on a large synthetic set (README: quality targets)"
	@echo "make quantize     int8 package of RUN=$(RUN) for CPU serving, kept only if its tags match eager's and it is faster"
	@echo "make archive      pack RUN=$(RUN) into $(STORE)/tagger.mar (VERSION=2.0 -> tagger-2.0.mar)"
	@echo "make serve/stop   start TorchServe with config.properties and wait until READY / stop it"
	@echo "make serve-proxy  nginx in front of it on PROXY_LISTEN=$(PROXY_LISTEN): body, key and rate limits (stop-proxy)"
	@echo "make evaluate     metrics + pictures of CHECKPOINT (or SERVER=URL) on DATA into OUT/report.md"
	@echo "make kserve-bundle  $(KSERVE_OUT)/ for KServe: config/config.properties + model-store/$(notdir $(ARCHIVE))"
	@echo "                  (GPU pod settings from $(KSERVE_GPU_CONFIG); MODEL_CONFIG=file for others)"
	@echo "make tag-folder   tag every photo under DIR= into OUT= (tags.jsonl, tags.csv, index.html gallery, search index; XMP=1 sidecars; re-run to resume)"
	@echo "make compare      OLD= and NEW= (archives or checkpoints) on DATA=: metrics side by side, changed photos"
	@echo "make rollout      VERSION=2.0: register tagger-2.0.mar, check it on known photos, then make it the default"
	@echo "make rollback     the default before the last rollout serves again (TO=1.0 for another)"
	@echo "make bench        offline ceiling vs naive vs tuned TorchServe, img/s and latency (reports/bench.json)"
	@echo "make loadtest     Locust (REST + gRPC users) against the running server; report in reports/"
	@echo "make rotate-keys  new inference and management keys for the running server"

# ---- setup: idempotent; does nothing when requirements.txt has not changed ----------------------------------
setup: $(VENV)/.installed generated/.stamp $(KSERVE_VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

generated/.stamp: $(VENV)/.installed serving/protos.py
	$(PY) -m serving.protos
	touch $@

# KServe's own wrapper code (kserve 0.13.0, as in TorchServe 0.12's KServe image) for tests/test_kserve.py. It pins
# numpy<2 and protobuf<4, so it gets a venv of its own instead of changing .venv's pins.
$(KSERVE_VENV)/.installed: requirements-kserve.txt
	test -x $(KSERVE_VENV)/bin/python || $(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(KSERVE_VENV)/bin/python -m pip install --quiet -r requirements-kserve.txt
	touch $@

# ---- data and training ------------------------------------------------------------------------------------------
$(DEMO_DATA)/train/labels.csv: | setup
	$(PY) -m training.synth --out $(DEMO_DATA)/train --count $(DEMO_TRAIN_IMAGES) --seed 1 --max-size 1280

$(DEMO_DATA)/holdout/labels.csv: | setup
	$(PY) -m training.synth --out $(DEMO_DATA)/holdout --count $(DEMO_HOLDOUT_IMAGES) --seed 2 --max-size 1280

runs/demo/model.pt: $(DEMO_DATA)/train/labels.csv $(DEMO_DATA)/holdout/labels.csv $(WARM_START)
	$(PY) -m training.train --data $(DEMO_DATA)/train/labels.csv --test-data $(DEMO_DATA)/holdout/labels.csv \
		--output-dir runs/demo $(DEMO_TRAIN_ARGS)

train-demo: setup runs/demo/model.pt

# The CPU recipe from random init (docs/model.md), in two stages. Objects (runs/cpu-cells): the backbone up to
# layer3 and the per-cell object heads learn from 64 px crops only, 32 a step, no dropout, over one cosine of as
# many steps as fit 90 minutes on this machine (--step-minutes: samples per CPU minute are what the objects learn
# from, and the project's CPUs differ almost threefold; beside whole photos they learned far slower; 32 crops a step
# and no dropout each gained about 0.035 AP in 38,400-crop trials). Scenes (runs/cpu): layer4 and the
# time/season/terrain heads learn on whole 256 px photos on top of the object part, held as it is. Seeds 31/32 are
# nobody's held-out set. Re-running it after an interruption resumes the stage from its resume.pt (its last
# finished epoch, with the step count it measured); a finished stage is skipped.
CPU_DATA := data/warm
CPU_TRAIN_IMAGES ?= 24000
CPU_COMMON_ARGS := --data $(CPU_DATA)/train/labels.csv --test-data $(CPU_DATA)/holdout/labels.csv --opt adamw \
	--val-fraction 0.03 --image-size 256
CPU_OBJECT_ARGS ?= --epochs 8 --step-minutes 90 --batch-size 0 --crops-per-step 32 --dropout 0 --lr 5e-4 \
	--warmup 0.03
CPU_SCENE_ARGS ?= --init-from runs/cpu-cells/model.pt --freeze-cells --epochs 4 --epoch-steps 400 --batch-size 8 \
	--lr 5e-4 --warmup 0.05
# A stage into $(1) with arguments $(2): resumed where an interrupted run left resume.pt; `finished` marks it done.
train_stage = test -f $(1)/finished || { if [ -f $(1)/resume.pt ]; then $(PY) -m training.train --output-dir $(1) \
	--resume; else $(PY) -m training.train --output-dir $(1) $(CPU_COMMON_ARGS) $(2); fi && touch $(1)/finished; }
.PHONY: cpu-data
cpu-data: setup
	test -f $(CPU_DATA)/train/labels.csv || $(PY) -m training.synth --out $(CPU_DATA)/train --count $(CPU_TRAIN_IMAGES) --seed 31 --max-size 1280
	test -f $(CPU_DATA)/holdout/labels.csv || $(PY) -m training.synth --out $(CPU_DATA)/holdout --count 500 --seed 32 --max-size 1280
train-cpu: cpu-data
	$(call train_stage,runs/cpu-cells,$(CPU_OBJECT_ARGS))
	$(call train_stage,runs/cpu,$(CPU_SCENE_ARGS))

# The committed warm start (training/warm_start.py): train-cpu's model in bf16, with the metrics.json of both
# stages. From random init, resumable like train-cpu; a finished train-cpu is only exported again.
.PHONY: warm-start
warm-start: train-cpu
	$(PY) -m training.warm_start --earlier runs/cpu-cells --run runs/cpu --out $(WARM_START)

train-full: setup
	test -f $(FULL_DATA)/train/labels.csv || $(PY) -m training.synth --out $(FULL_DATA)/train --count $(FULL_TRAIN_IMAGES) --seed 11
	test -f $(FULL_DATA)/test/labels.csv || $(PY) -m training.synth --out $(FULL_DATA)/test --count 2000 --seed 12
	$(PY) -m training.train --data $(FULL_DATA)/train/labels.csv --test-data $(FULL_DATA)/test/labels.csv \
		--output-dir runs/full $(FULL_TRAIN_ARGS)

# ---- archive ----------------------------------------------------------------------------------------------------
# The shared package travels inside the archive: --extra-files copies a folder's *contents*, so it is staged one
# level down (build/.../extra/phototag) to arrive as the importable package phototag/ next to the handler.
# The run's int8 package and its check report travel too when `make quantize` made them (phototag/int8.py).
INT8_FILES = $(wildcard $(RUN)/tagger-int8.pt2 $(RUN)/tagger-int8.json)
comma := ,
space := $(empty) $(empty)
archive: setup $(RUN)/model.pt
	rm -rf $(STAGE) && mkdir -p $(STAGE)/extra $(STORE)
	cp -r phototag $(STAGE)/extra/phototag
	find $(STAGE) -name __pycache__ -prune -exec rm -rf {} +
	# torch-model-archiver stages in $$TMPDIR/tagger: a private TMPDIR keeps parallel builds apart.
	mkdir -p $(STAGE)/tmp && TMPDIR=$(abspath $(STAGE))/tmp $(BIN)/torch-model-archiver --model-name tagger --version $(VERSION) \
		--handler handler/tagger_handler.py --serialized-file $(RUN)/model.pt \
		--extra-files $(subst $(space),$(comma),$(strip $(RUN)/taxonomy.json $(INT8_FILES) $(STAGE)/extra)) \
		--config-file $(MODEL_CONFIG) --export-path $(STAGE) --force
	mv $(STAGE)/tagger.mar $(ARCHIVE)
	@echo "built $(ARCHIVE) (model tagger, version $(VERSION), weights from $(RUN))"

# int8 package of RUN for CPU serving: built and checked against the eager model's tags (training/quantize.py).
.PHONY: quantize
quantize: setup $(RUN)/model.pt
	$(PY) -m training.quantize --run $(RUN) $(QUANTIZE_ARGS)

# ---- serving ----------------------------------------------------------------------------------------------------
# Settings always come from config.properties; the models, versions and default version registered through the
# management API come back from TorchServe's last snapshot in logs/config (FRESH=1: only load_models).
serve: setup
	test -f $(STORE)/tagger.mar || { echo "no $(STORE)/tagger.mar: run make archive (or make demo) first"; exit 1; }
	$(PY) -m serving.serve_config --out build/serve.properties $(if $(FRESH),--fresh)
	# The frontend keeps the start command's stdout open: a file, not the caller's pipe (`make serve | tee` would hang).
	mkdir -p logs && $(BIN)/torchserve --start --ts-config build/serve.properties --model-store $(STORE) > logs/torchserve.out 2>&1
	$(PY) -m client wait-ready --timeout 300

stop:
	-$(BIN)/torchserve --stop --foreground

# The front proxy: nginx (Debian's nginx-light) in front of the TorchServe that `make serve` started, as an ordinary
# background process with its config, logs, pid file and temp bodies in PROXY_PREFIX (serving/proxy.py, README
# "Serving behind the proxy"). TLS: PROXY_ARGS="--cert cert.pem --key key.pem" with PROXY_LISTEN=0.0.0.0:8443.
PROXY_LISTEN ?= 127.0.0.1:8090
PROXY_PREFIX ?= build/nginx
PROXY_ARGS ?=
.PHONY: serve-proxy stop-proxy
serve-proxy: setup
	$(PY) -m serving.proxy start --listen $(PROXY_LISTEN) --prefix $(PROXY_PREFIX) $(PROXY_ARGS)

stop-proxy:
	$(PY) -m serving.proxy stop --prefix $(PROXY_PREFIX)

# New inference and management keys (TorchServe's token API, authorised by the API key in key_file.json).
rotate-keys: setup
	$(PY) -m client rotate-keys

# ---- the main job and the tests ---------------------------------------------------------------------------------
demo: setup runs/demo/model.pt
	$(MAKE) --no-print-directory archive RUN=runs/demo VERSION=1.0
	$(MAKE) --no-print-directory serve FRESH=1 || { $(MAKE) --no-print-directory stop; exit 1; }
	$(PY) -m client.demo --labels $(DEMO_DATA)/holdout/labels.csv --count 6 --metrics runs/demo/metrics.json; status=$$?; \
		$(MAKE) --no-print-directory stop; exit $$status

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# ruff, configured in pyproject.toml (one line length, import order, bugbear, blind excepts, unused noqa markers).
lint: setup
	$(BIN)/ruff check .

clean:
	-$(BIN)/torchserve --stop --foreground 2>/dev/null
	rm -rf data runs build logs generated $(STORE)/*.mar key_file.json

# ---- evaluation with pictures: a checkpoint in process, or the running server with SERVER=URL --------------------
DATA ?= $(DEMO_DATA)/holdout/labels.csv
IMAGES ?=
CHECKPOINT ?= runs/demo/model.pt
SERVER ?=
OUT ?= reports/eval
.PHONY: evaluate
evaluate: setup
	$(PY) -m training.evaluate --data $(DATA) $(if $(IMAGES),--images $(IMAGES)) \
		$(if $(SERVER),--server $(SERVER),--checkpoint $(CHECKPOINT)) --out $(OUT) $(EVAL_ARGS)

# ---- KServe: the storage layout of KServe's TorchServe runtime (deploy/kserve/, README "Scaling out") ----------
KSERVE_OUT ?= build/kserve
# The pod's serving settings (archive and model_snapshot): the GPU file, unless MODEL_CONFIG= is given on the
# command line or in the environment (MODEL_CONFIG's own default is the CPU file that `make archive` packs).
KSERVE_GPU_CONFIG := deploy/kserve/model-config.gpu.yaml
KSERVE_MODEL_CONFIG := $(if $(filter file,$(origin MODEL_CONFIG)),$(KSERVE_GPU_CONFIG),$(MODEL_CONFIG))
.PHONY: kserve-bundle
kserve-bundle: setup
	$(PY) -m serving.kserve_bundle --mar $(ARCHIVE) --out $(KSERVE_OUT) --model-config $(KSERVE_MODEL_CONFIG)

# ---- bulk tagging of a photo folder (needs a running server: make serve) ----------------------------------------
.PHONY: tag-folder
tag-folder: setup
	@test -n "$(DIR)" -a -n "$(OUT)" || { echo "usage: make tag-folder DIR=photos OUT=results/photos [XMP=1] [TAG_ARGS='--grpc --concurrency 8 --lang ru']"; exit 2; }
	$(PY) -m client.tag_folder "$(DIR)" --out "$(OUT)" $(if $(XMP),--xmp) $(TAG_ARGS)

# ---- the review loop (README "Review, corrections and the next version") ------------------------------------------
# Compare two versions before rolling one out. OUT defaults to reports/compare here (reports/eval is evaluate's).
OLD ?= $(STORE)/tagger.mar
NEW ?=
COMPARE_OUT := $(if $(filter file,$(origin OUT)),reports/compare,$(OUT))
# Known photos a new version must answer well before it becomes the default.
CHECK_DATA ?= $(DEMO_DATA)/holdout/labels.csv
TO ?=
.PHONY: compare rollout rollback
compare: setup
	@test -n "$(NEW)" || { echo "usage: make compare OLD=$(STORE)/tagger.mar NEW=$(STORE)/tagger-2.0.mar DATA=labels.csv [IMAGES=dir] [OUT=reports/compare]"; exit 2; }
	$(PY) -m training.compare --old $(OLD) --new $(NEW) --data $(DATA) $(if $(IMAGES),--images $(IMAGES)) \
		--out $(COMPARE_OUT) $(COMPARE_ARGS)

# Against the running server (make serve); ROLLOUT_ARGS="--key-file ... --management-url ..." for another one.
rollout: setup
	@test "$(origin VERSION)" != file || { echo "usage: make rollout VERSION=2.0 [CHECK_DATA=labels.csv] (rolls out $(STORE)/tagger-2.0.mar, built by make archive VERSION=2.0)"; exit 2; }
	$(PY) -m serving.rollout rollout --version $(VERSION) --check-data $(CHECK_DATA) $(ROLLOUT_ARGS)

rollback: setup
	$(PY) -m serving.rollout rollback $(if $(TO),--to $(TO)) $(ROLLOUT_ARGS)

# ---- benchmark: offline ceiling vs naive vs shipped serving settings (real TorchServe on free ports) -----------
BENCH_SECONDS ?= 20
BENCH_SIZES ?= small,phone,camera
# The served alternatives to the shipped settings that chose them (docs/performance.md), and the big-photo mode
# off (what reading the objects of 12 MP photos again at 768 px costs: the camera size class; docs/where.md).
BENCH_VARIANTS ?= --variant batchSize=4 --variant batchSize=16 \
	--variant minWorkers=1,maxWorkers=1,handler.torch_threads=0,handler.decode_threads=2 \
	--variant handler.big_photo_side=0
.PHONY: bench
# The figures are for the model size in RUN's checkpoint. `make bench RUN=runs/random-256` benches the full-size
# (256 px) ResNet34 without a trained full run: random weights, the project's taxonomy and model config.
runs/random-%/model.pt: | setup
	$(PY) -m loadtests.random_model --out runs/random-$* --image-size $*
bench: setup $(RUN)/model.pt
	$(PY) -m loadtests.bench --run $(RUN) --out reports/bench.json --seconds $(BENCH_SECONDS) --sizes $(BENCH_SIZES) \
		$(BENCH_VARIANTS)

# ---- load test (needs a running server: make serve) -------------------------------------------------------------
.PHONY: loadtest
# Locust runs distributed: a master and LOCUST_PROCESSES forked workers, one per 4 cores (at least one), leaving
# the other cores to a server on the same machine. Point it at another host with LOCUST_ARGS="--host ...".
LOCUST_PROCESSES ?= $(shell $(PY) -c "import os; print(max(1, (os.cpu_count() or 1) // 4))")
loadtest: setup
	mkdir -p reports
	$(BIN)/locust --config loadtests/locust.conf --processes $(LOCUST_PROCESSES) $(LOCUST_ARGS)
