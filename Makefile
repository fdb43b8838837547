# `make` or `make help` lists the targets. Only `make install` installs anything: it builds
# .venv, and every other target runs inside it. On a machine that already has PyTorch and DALI
# (the lent GPU machine), pass PYTHON=python3 to use that interpreter instead.
PYTHON ?= .venv/bin/python
VENV_PYTHON := .venv/bin/python
# DALI build: auto picks the one matching the installed PyTorch's CUDA major version (cuda13
# for CUDA 13; cuda12 for CUDA 12 or a CPU-only PyTorch); or name one: make install DALI=cuda12
# (nvidia-dali-cuda120 and nvidia-dali-cuda130 work too).
DALI ?= auto
DEPTH ?= 50
SD ?= 0
# Processes per node for train, evaluate and compare: every GPU of this machine (torch counts
# the visible ones), one process on a machine without a GPU.
GPUS ?= $(shell $(PYTHON) -c 'import torch; print(max(1, torch.cuda.device_count()))' 2>/dev/null || echo 1)
# Several nodes: make train NODES=2 RDZV=head-node:29500 on every node (torchrun's c10d rendezvous).
NODES ?= 1
RDZV ?=
RDZV_ID ?= $(or $(SLURM_JOB_ID),imagenet-sd)
# torchrun restarts the whole group this many times after a failure; the trainer resumes by itself.
MAX_RESTARTS ?= 0
DATA ?=
SHARDS ?= shards
OUT ?= results/rn$(DEPTH)-sd$(SD)
# make compare writes to OUT when it is given, else to its own folder.
COMPARE_OUT = $(if $(filter command line environment,$(origin OUT)),$(OUT),results/compare-rn$(DEPTH))
WEIGHTS ?=
# make export: a run folder (or checkpoint), the format, and where (default: beside the run).
RUN ?=
FORMAT ?= safetensors
EXPORT_OUT ?= $(if $(filter %.pt %.pth,$(RUN)),$(dir $(RUN)),$(RUN:/=)/)export-$(FORMAT)
IMAGES ?=
MODE ?= sequential
ARGS ?=
# The benchmarks read SHARDS when it holds shards, else a generated ImageNet-like set.
BENCH_DATA = $(if $(wildcard $(SHARDS)/manifest.json),--data_dir "$(SHARDS)",--imagenet_like)

.DEFAULT_GOAL := help
.PHONY: help install venv test test-slow test-gpu lint docs models shards verify-shards \
	train evaluate export predict compare demo bench-prep bench-input bench-train bench-checkpoint

help: ## list the targets (this)
	@echo "make TARGET [VARIABLE=value ...]; the variables are at the top of the Makefile"
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-17s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: .venv/.installed ## create .venv: PyTorch, the matching DALI build, ONNX export, the dev tools (DALI=cuda12 to choose)

.venv/.installed: pyproject.toml tests/constraints.txt Makefile
	test -x $(VENV_PYTHON) || python3 -m venv .venv
	$(VENV_PYTHON) -m pip install -q -c tests/constraints.txt -e '.[dev,export]'
	extra="$(DALI)"; \
	case "$$extra" in nvidia-dali-cuda120) extra=cuda12;; nvidia-dali-cuda130) extra=cuda13;; esac; \
	if [ "$$extra" = auto ]; then \
	  extra=$$($(VENV_PYTHON) -c 'import torch; print("cuda13" if (torch.version.cuda or "").startswith("13") else "cuda12")'); \
	fi; \
	echo "installing DALI as .[$$extra] (PyTorch CUDA: $$($(VENV_PYTHON) -c 'import torch; print(torch.version.cuda or "none")'))"; \
	$(VENV_PYTHON) -m pip install -q -c tests/constraints.txt -e ".[dev,export,$$extra]"
	$(VENV_PYTHON) -c 'import torch, nvidia.dali; print("torch", torch.__version__, "| DALI", nvidia.dali.__version__)'
	touch $@

venv:
	@if [ "$(PYTHON)" = "$(VENV_PYTHON)" ] && [ ! -f .venv/.installed ]; then \
	  echo "no .venv here: run make install first (or PYTHON=python3 for an interpreter with PyTorch and DALI)"; \
	  exit 2; \
	fi

test: venv ## the fast tests (CPU; GPU tests are skipped without a GPU)
	$(PYTHON) -m pytest -q -m "not slow"

test-slow: venv ## the slow end-to-end tests (CI runs them after make test)
	$(PYTHON) -m pytest -q -m slow

test-gpu: venv ## the tests that need a GPU (on a GPU machine)
	$(PYTHON) -m pytest -q -m gpu

lint: venv ## ruff check and ruff format --check
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

docs: venv ## write docs/flags.md: every flag of every command, from the parsers
	$(PYTHON) -m tests.flags_doc

models: venv ## parameters, GFLOPs and survival probabilities of ResNet-DEPTH (SD=1: with SD)
	$(PYTHON) -m models --depth $(DEPTH) --sd $(SD) $(ARGS)

shards: venv ## ImageNet (DATA=downloads or folders) -> shards in SHARDS; rerun to resume
	@test -n "$(DATA)" || { echo "usage: make shards DATA=/path/imagenet [SHARDS=shards] [ARGS='--processes 32']"; echo "DATA: the folder of ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz, Kaggle's zip, or extracted folders"; exit 2; }
	$(PYTHON) -m prep "$(DATA)" "$(SHARDS)" $(ARGS)

verify-shards: venv ## check every byte of SHARDS against its manifest
	$(PYTHON) -m prep verify "$(SHARDS)"

# TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: every restart attempt gets a fresh store (see
# train/environment.py).
train: venv ## train ResNet-DEPTH (SD=1: stochastic depth) on SHARDS into OUT, on GPUS GPUs (NODES, RDZV)
	@test "$(NODES)" = 1 -o -n "$(RDZV)" || { echo "make train NODES=$(NODES) needs RDZV=host:port (the first node's address, the same on every node)"; exit 2; }
	TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 $(PYTHON) -m torch.distributed.run \
	  $(if $(RDZV),--nnodes=$(NODES) --rdzv_backend=c10d --rdzv_endpoint=$(RDZV) --rdzv_id=$(RDZV_ID),--standalone) \
	  --nproc_per_node=$(GPUS) --max_restarts=$(MAX_RESTARTS) -m train \
	  --data_dir "$(SHARDS)" --out "$(OUT)" --depth $(DEPTH) --sd $(SD) $(ARGS)

evaluate: venv ## top-1/top-5 of WEIGHTS (a run, checkpoint, export or torchvision .pth) on SHARDS' val
	@test -n "$(WEIGHTS)" || { echo "usage: make evaluate WEIGHTS=results/rn50-sd1/best.pt [SHARDS=shards] [GPUS=1] [ARGS='--json eval.json']"; exit 2; }
	$(PYTHON) -m torch.distributed.run --standalone --nproc_per_node=$(GPUS) -m train.evaluate \
	  --data_dir "$(SHARDS)" --weights "$(WEIGHTS)" $(ARGS)

export: venv ## RUN's best weights as FORMAT (torchvision, safetensors, pt2, onnx) into EXPORT_OUT
	@test -n "$(RUN)" || { echo "usage: make export RUN=results/rn50-sd1 [FORMAT=safetensors] [EXPORT_OUT=RUN/export-FORMAT] [ARGS='--no_ema']"; exit 2; }
	$(PYTHON) -m train.export "$(RUN)" --format $(FORMAT) --out "$(EXPORT_OUT)" $(ARGS)

predict: venv ## the top-5 classes of IMAGES (files, folders, globs) with WEIGHTS (a run or export)
	@test -n "$(IMAGES)" -a -n "$(WEIGHTS)" || { echo "usage: make predict IMAGES='photos/*.jpg' WEIGHTS=results/rn50-sd1 [ARGS='--topk 3 --json predictions.json']"; exit 2; }
	$(PYTHON) -m train.predict $(IMAGES) --weights "$(WEIGHTS)" $(ARGS)

compare: venv ## baseline against SD (or any arms: ARGS) into OUT, on GPUS GPUs; MODE=parallel
	$(PYTHON) -m train.compare --data_dir "$(SHARDS)" --out "$(COMPARE_OUT)" --gpus $(GPUS) \
	  --depth $(DEPTH) --mode $(MODE) $(if $(filter parallel,$(MODE)),--gpu_split) $(ARGS)

demo: venv ## the whole product on scikit-learn's digits: prep, baseline vs SD, the comparison
	$(PYTHON) -m train.demo $(ARGS)

bench-prep: venv ## prep's images/s against a bare read + decode (JSON in benchmarks/runs/)
	$(PYTHON) -m prep.bench $(ARGS)

bench-input: venv ## the train reader against DALI's webdataset reader and a DataLoader
	$(PYTHON) -m train.bench input $(BENCH_DATA) $(ARGS)

bench-train: venv ## training images/s, synthetic and DALI input (ARGS="--sd_modes off,batch,sample")
	$(PYTHON) -m train.bench train --depth $(DEPTH) $(BENCH_DATA) $(ARGS)

bench-checkpoint: venv ## seconds to save ResNet-DEPTH's last.pt into OUT's folder
	$(PYTHON) -m train.bench checkpoint --depth $(DEPTH) --out "$(dir $(OUT))" $(ARGS)
