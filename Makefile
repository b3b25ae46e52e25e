# Two commands on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

#: 100 digits, 0 to 9 in each row of the pretrained model's grid
DIGITS := 0,1,2,3,4,5,6,7,8,9,0,1,2,3,4,5,6,7,8,9,0,1,2,3,4,5,6,7,8,9,0,1,2,3,4,5,6,7,8,9,0,1,2,3,4,5,6,7,8,9,0,1,2,3,4,5,6,7,8,9,0,1,2,3,4,5,6,7,8,9,0,1,2,3,4,5,6,7,8,9,0,1,2,3,4,5,6,7,8,9,0,1,2,3,4,5,6,7,8,9

#: run a command and print its wall time: $(PHASE) "name" command...
PHASE = bash -c 'TIMEFORMAT="[$$0: %1R s]"; time "$$@"'

.PHONY: install demo test test-fast lint bench vae-compare quality clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

## The main job: train the noise-conditional MLP on the two-mode mixture, sample, evaluate, plot.
## Then the same mixture as a user who wants samples of p: a continuous-noise EDM denoiser
## (sigma down to 0.01) and the fast samplers; its export is the toy model to serve. Then the
## class-conditional toy: each class, p, and guided rows against the exact denoisers. Last, 100
## digits from the MNIST model shipped with tf_score (tf_score/pretrained/).
demo: $(STAMP)
	@$(PHASE) "NCSN toy: train and evaluate" $(BIN)/python run_train.py \
		--flagfile=flags/presets/toy_mixture.cfg --workdir=runs/toy_mixture --evaluate
	@$(PHASE) "EDM toy: train, export and evaluate" $(BIN)/python run_train.py \
		--flagfile=flags/presets/toy_edm.cfg --workdir=runs/toy_edm --export_dir=runs/toy_edm/export \
		--evaluate
	@$(PHASE) "conditional EDM toy: train and evaluate" $(BIN)/python run_train.py \
		--flagfile=flags/presets/toy_edm_cond.cfg --workdir=runs/toy_edm_cond --evaluate
	@$(PHASE) "the picture" $(BIN)/python run_sample.py \
		--overview=runs/toy_mixture,runs/toy_edm,runs/toy_edm_cond --output_dir=runs
	@$(PHASE) "digits from the pretrained MNIST model" $(BIN)/python run_sample.py \
		--pretrained=mnist_edm_cond --num_samples=100 --labels=$(DIGITS) \
		--output_dir=runs/pretrained_mnist

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## pytest-randomly shuffles the test order; the seed is on the command line make prints
## (make test TEST_SEED=N repeats an order).
TEST_SEED ?= $(shell date +%s)
test: lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --randomly-seed=$(TEST_SEED)

## The edit loop: the layout and docstring rules, config, losses, grids, the a4ac31d and cdb1b46
## references and the golden samples, the new solver, network and family contracts (no
## end-to-end runs).
FAST_TESTS = tests/test_layout.py tests/test_docstrings.py tests/test_config.py \
	tests/test_losses.py tests/test_sigmas.py tests/test_a4ac31d.py tests/test_cdb1b46.py \
	tests/test_golden_samples.py tests/test_new_solver.py tests/test_new_network.py \
	tests/test_new_family.py
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow" $(FAST_TESTS)

## Throughput grid (issue 16) -> runs/bench/bench.json; e.g. BENCH_FLAGS='--baseline_repo=/tmp/base --rounds=3'.
## PyTorch NCSN in the same rounds: TORCH_PYTHON=<a python with torch> NCSN_REPO=<ermongroup/ncsn checkout>;
## without them, the figures in benchmarks/reference/ (measured earlier) are shown.
TORCH_FLAGS = $(if $(TORCH_PYTHON),--torch_python=$(TORCH_PYTHON) --ncsn_repo=$(NCSN_REPO),\
	--torch_json=benchmarks/reference/torch_ncsn_fp32.json,benchmarks/reference/torch_ncsn_bf16.json)
bench: $(STAMP)
	$(BIN)/python benchmarks/run_bench.py --bench_out=runs/bench/bench.json $(TORCH_FLAGS) $(BENCH_FLAGS)

## Score-entropy VAE vs Gaussian VAE on MNIST, same budget, AIS NLL (STEPS=..., DATA_DIR=...).
vae-compare: $(STAMP)
	PY=$(BIN)/python bash benchmarks/vae_compare.sh

## Classifier FID/KID against network evaluations for each sampler on a trained image model
## (MODEL=runs/mnist_cpu, SINGLE=runs/mnist_single_dsm optional, DATA_DIR=..., N=500).
MODEL ?= runs/mnist_cpu
N ?= 500
quality: $(STAMP)
	test -f runs/mnist_classifier/classifier.keras || $(BIN)/python run_train.py \
		--flagfile=flags/presets/mnist_classifier.cfg --workdir=runs/mnist_classifier \
		$(if $(DATA_DIR),--data_dir=$(DATA_DIR))
	$(BIN)/python benchmarks/sampler_quality.py --workdir=$(MODEL) --num_samples=$(N) \
		--classifier=runs/mnist_classifier $(if $(DATA_DIR),--data_dir=$(DATA_DIR)) \
		$(if $(SINGLE),--single_dsm_workdir=$(SINGLE))

clean:
	rm -rf runs .pytest_cache .ruff_cache
