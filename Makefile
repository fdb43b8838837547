# Every target runs inside .venv, created by `make install`. On a machine that already has
# PyTorch and DALI (the lent GPU machine), pass PYTHON=python3 to skip the venv.
PYTHON ?= .venv/bin/python
VENV_PYTHON := .venv/bin/python
# DALI build: auto picks the one matching the installed PyTorch's CUDA major version
# (cuda130 for CUDA 13, cuda120 for CUDA 12 or a CPU-only PyTorch); or name one:
# make install DALI=nvidia-dali-cuda120
DALI ?= auto
DEPTH ?= 50
SD ?= 0
GPUS ?= 1
# Several nodes: make train NODES=2 RDZV=head-node:29500 on every node (torchrun's c10d rendezvous).
NODES ?= 1
RDZV ?=
RDZV_ID ?= $(or $(SLURM_JOB_ID),imagenet-sd)
# torchrun restarts the whole group this many times after a failure; the trainer resumes by itself.
MAX_RESTARTS ?= 0
DATA ?=
SHARDS ?= shards
OUT ?= results/rn$(DEPTH)-sd$(SD)
ARGS ?=

# Install only when the default interpreter (the venv) is used.
INSTALL_DEP := $(if $(filter $(VENV_PYTHON),$(PYTHON)),install)

.PHONY: install test test-slow test-gpu lint models shards verify-shards bench-prep bench-input bench-train bench-checkpoint train evaluate compare demo

install: .venv/.installed

.venv/.installed: pyproject.toml Makefile
	test -x $(VENV_PYTHON) || python3 -m venv .venv
	$(VENV_PYTHON) -m pip install -q -e '.[dev]'
	pkg="$(DALI)"; \
	if [ "$$pkg" = auto ]; then \
	  pkg=$$($(VENV_PYTHON) -c 'import torch; c = torch.version.cuda or ""; print("nvidia-dali-cuda130" if c.startswith("13") else "nvidia-dali-cuda120")'); \
	fi; \
	echo "installing $$pkg (PyTorch CUDA: $$($(VENV_PYTHON) -c 'import torch; print(torch.version.cuda or "none")'))"; \
	$(VENV_PYTHON) -m pip install -q "$$pkg"
	$(VENV_PYTHON) -c 'import torch, nvidia.dali; print("torch", torch.__version__, "| DALI", nvidia.dali.__version__)'
	touch $@

# The fast tests (GPU tests skip without a GPU). CI also runs test-slow.
test: $(INSTALL_DEP)
	$(PYTHON) -m pytest -q -m "not slow"

# The slow end-to-end tests alone.
test-slow: $(INSTALL_DEP)
	$(PYTHON) -m pytest -q -m slow

# The tests that need a GPU (run on the lent GPU machine).
test-gpu: $(INSTALL_DEP)
	$(PYTHON) -m pytest -q -m gpu

lint: $(INSTALL_DEP)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

# Parameter count, GFLOPs and survival probabilities of one model.
models: $(INSTALL_DEP)
	$(PYTHON) -m models --depth $(DEPTH) --sd $(SD)

# ImageNet (the downloaded archives, Kaggle's zip or extracted folders) -> WebDataset shards +
# DALI indexes + manifest (resumable: rerun after a crash).
shards: $(INSTALL_DEP)
	@test -n "$(DATA)" || { echo "usage: make shards DATA=/path/imagenet [SHARDS=shards] [ARGS='--processes 32']"; echo "DATA: the folder of ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz, Kaggle's zip, or extracted folders"; exit 2; }
	$(PYTHON) -m prep "$(DATA)" "$(SHARDS)" $(ARGS)

verify-shards: $(INSTALL_DEP)
	$(PYTHON) -m prep verify "$(SHARDS)"

# prep's images/s against a bare read + decode loop on a generated ImageNet-like set.
bench-prep: $(INSTALL_DEP)
	$(PYTHON) -m prep.bench $(ARGS)

# DALI train pipeline images/s against torchvision + PIL in a DataLoader (same shards, workers).
bench-input: $(INSTALL_DEP)
	$(PYTHON) -m train.bench input $(if $(filter-out shards,$(SHARDS)),--data_dir "$(SHARDS)") $(ARGS)

# Training images/s with synthetic and with DALI input (ARGS="--sd_modes off,batch,sample --compile").
bench-train: $(INSTALL_DEP)
	$(PYTHON) -m train.bench train --depth $(DEPTH) $(if $(filter-out shards,$(SHARDS)),--data_dir "$(SHARDS)") $(ARGS)

# Seconds to save last.pt (ResNet-DEPTH) into OUT's folder, and its share of the run per interval.
bench-checkpoint: $(INSTALL_DEP)
	$(PYTHON) -m train.bench checkpoint --depth $(DEPTH) --out "$(dir $(OUT))" $(ARGS)

# Train with torchrun on GPUS GPUs of this machine, or of each of NODES nodes meeting at RDZV
# (python -m train alone: one process). TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: every restart
# attempt gets a fresh store (see train/environment.py).
train: $(INSTALL_DEP)
	@test "$(NODES)" = 1 -o -n "$(RDZV)" || { echo "make train NODES=$(NODES) needs RDZV=host:port (the first node's address, the same on every node)"; exit 2; }
	TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 $(PYTHON) -m torch.distributed.run \
	  $(if $(RDZV),--nnodes=$(NODES) --rdzv_backend=c10d --rdzv_endpoint=$(RDZV) --rdzv_id=$(RDZV_ID),--standalone) \
	  --nproc_per_node=$(GPUS) --max_restarts=$(MAX_RESTARTS) -m train \
	  --data_dir "$(SHARDS)" --out "$(OUT)" --depth $(DEPTH) --sd $(SD) $(ARGS)

# Top-1/top-5/loss of a checkpoint or a torchvision .pth on the val shards (GPUS processes).
WEIGHTS ?=
evaluate: $(INSTALL_DEP)
	@test -n "$(WEIGHTS)" || { echo "usage: make evaluate WEIGHTS=results/rn50-sd1/best.pt [SHARDS=shards] [GPUS=1] [ARGS='--json eval.json']"; exit 2; }
	$(PYTHON) -m torch.distributed.run --standalone --nproc_per_node=$(GPUS) -m train.evaluate \
	  --data_dir "$(SHARDS)" --weights "$(WEIGHTS)" $(ARGS)

# Baseline and stochastic depth, everything else equal, then the side-by-side report.
# MODE=parallel runs both at once, each on half of the visible GPUs.
MODE ?= sequential
compare: $(INSTALL_DEP)
	$(PYTHON) -m train.compare --data_dir "$(SHARDS)" --out "results/compare-rn$(DEPTH)" \
	  --depth $(DEPTH) --mode $(MODE) $(if $(filter parallel,$(MODE)),--gpu_split) $(ARGS)

# The whole product on scikit-learn's handwritten digits: prep, baseline vs SD, comparison.
demo: $(INSTALL_DEP)
	$(PYTHON) -m train.demo $(ARGS)
