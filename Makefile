# pglab: two commands do all the setup on a fresh machine.
#   make run    build .venv if missing, run the flagship study, write results + report
#   make test   build .venv if missing, start the test services (SLURM), run the tests
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch 2.13.0 lies in /opt/wheels on the reference machines.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
PYTEST_ARGS ?=
OUT ?= results

.PHONY: venv run test test-fast lint format bench report readme-figures lock clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements/lock.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install $(FIND_LINKS) -c requirements/lock.txt -e '.[dev]'
	@touch $(STAMP)

run: venv
	bash scripts/run_flagship.sh $(OUT)

test: venv
	bash scripts/run_tests.sh $(PYTEST_ARGS)

test-fast: venv
	$(BIN)/pytest -n auto --dist loadgroup -m "not slow and not slurm" $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

bench: venv
	$(BIN)/python benchmarks/bench_tabular_sampling.py
	$(BIN)/python benchmarks/bench_cartpole_rollouts.py
	$(BIN)/python benchmarks/bench_job_overhead.py
	$(BIN)/python benchmarks/bench_update_rules.py
	$(BIN)/python benchmarks/bench_lockstep.py
	$(BIN)/python benchmarks/bench_tabular_batched.py
	$(BIN)/python benchmarks/bench_calibration_study.py
	$(BIN)/python benchmarks/bench_episode_selection.py
	$(BIN)/python benchmarks/bench_batched_launcher.py

report: venv
	$(BIN)/python -m analysis.report $(OUT)/multirun --out $(OUT)/report

# The README's figures: regenerate from the flagship results (make run) and copy them to docs/figures.
README_FIGURES := estimator_relative_bias estimator_variance ascent_expected_return cartpole_learning_curves cartpole_collapse
readme-figures: report
	mkdir -p docs/figures
	for f in $(README_FIGURES); do cp $(OUT)/report/figures/$$f.png docs/figures/; done

lock: venv
	{ grep '^#' requirements/lock.txt; $(BIN)/pip freeze --exclude-editable | sed 's/+cpu//'; } > requirements/lock.txt.new
	mv requirements/lock.txt.new requirements/lock.txt

clean:
	rm -rf outputs multirun $(OUT) .pytest_cache .ruff_cache

# Compare in W&B (README): upload every offline W&B run of a sweep (wandb sync per run, in
# parallel), or only link them into $(SWEEP)/wandb/ for `wandb leet $(SWEEP)/wandb`.
#   make wandb-sync SWEEP=outputs/multirun/cartpole/<sweep_name>
.PHONY: wandb-sync wandb-link
wandb-sync: venv
	@test -n "$(SWEEP)" || { echo "usage: make wandb-sync SWEEP=outputs/multirun/<app>/<sweep_name>"; exit 2; }
	$(BIN)/python -m pglab_jobs.sync "$(SWEEP)"

wandb-link: venv
	@test -n "$(SWEEP)" || { echo "usage: make wandb-link SWEEP=outputs/multirun/<app>/<sweep_name>"; exit 2; }
	$(BIN)/python -m pglab_jobs.sync --link-only "$(SWEEP)"
