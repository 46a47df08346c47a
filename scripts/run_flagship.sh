#!/usr/bin/env bash
# The flagship study, all local, W&B offline: what `make run` does.
#   1. estimator study on three tabular MDPs (bias / variance / SNR vs N for every estimator)
#   2. tabular gradient ascent over a grid of step sizes (exact gradient vs estimators)
#   3. a small CartPole N × α × seed grid (step-size collapse), in parallel with joblib
#   4. the report: figures + one HTML page, from the stored results only
# Re-running skips finished jobs (resumable sweeps) and regenerates the report.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-results}"
PY=.venv/bin/python
export WANDB_SILENT=true
stamp() { date +%s; }
t0=$(stamp)

echo "== 1/4 estimator study -> $OUT/multirun/estimator_variance/flagship"
# γ = 0.9 so that dropping the γ^t factor (reward_to_go_dropped_discount) shows its bias
$PY experiments/estimator_variance.py -m paths.output_dir="$OUT" sweep_name=flagship \
    mdp=two_state,chain,gridworld mdp.gamma=0.9
t1=$(stamp)

echo "== 2/4 tabular ascent -> $OUT/multirun/tabular_ascent/flagship"
$PY experiments/tabular_ascent.py -m paths.output_dir="$OUT" sweep_name=flagship \
    gradient=exact,reinforce step_size=0.1,1,10,100 hydra/launcher=joblib
t2=$(stamp)

echo "== 3/4 CartPole grid -> $OUT/multirun/cartpole/cartpole_small"
$PY experiments/cartpole.py -m experiment=cartpole_small paths.output_dir="$OUT" \
    hydra/launcher=batched progress=false
t3=$(stamp)

echo "== 4/4 report -> $OUT/report"
$PY -m analysis.report "$OUT/multirun" --out "$OUT/report"
t4=$(stamp)

echo "done in $((t4 - t0)) s (estimators $((t1 - t0)) s, ascent $((t2 - t1)) s, cartpole $((t3 - t2)) s, report $((t4 - t3)) s)"
echo "open $OUT/report/report.html; upload a sweep's W&B runs with: $PY -m pglab_jobs.sync $OUT/multirun/cartpole/cartpole_small"
