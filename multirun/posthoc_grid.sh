#!/usr/bin/env bash
# The grid of one post-hoc results table, sourced by the multirun/posthoc_<table>.sh scripts, which set
#   EXPERIMENT (stage 2), VIEW_GROUPS, REGIMES, SMOKE_STAGE1 and SMOKE_EXPERIMENT (the miniature versions).
# Three Hydra multiruns of train.py:
#   1. the plain backbone (the trivial group c1: one view, so the backbone itself), zero_shot;
#   2. the parameter-free aggregators x REGIMES x VIEW_GROUPS;
#   3. the learned aggregators x REGIMES (zero_shot -> aggregator_only: they must be trained) x VIEW_GROUPS.
# Real data: pass the stage-1 checkpoint, model.backbone.ckpt_path=RUN/checkpoints/best-....ckpt.
# `smoke` (first argument): train a tiny stage-1 backbone for one epoch on the embedded digits, then run
# the same grid on it in miniature (CPU, minutes). Further arguments go to every Hydra call.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-.venv/bin/python}"
FIXED=mean,max,sum,mean_probs,most_probable,most_certain,equizero
LEARNED=lambda,transformer,equiattention
STAGE2="experiment=$EXPERIMENT"
TASK="$EXPERIMENT"
if [[ "${1:-}" == "smoke" ]]; then
    shift
    SMALL=(data.variant=upright_train data.train_size=256 data.val_size=128 data.test_size=128 data.batch_size=64
           trainer.max_epochs=1 callbacks.rotation_robustness.max_samples=32 callbacks.rotation_robustness.step_deg=45)
    SMOKE_DIR="logs/${EXPERIMENT}_smoke/$(date +%Y-%m-%d_%H-%M-%S)"
    # shellcheck disable=SC2086
    "$PY" train.py $SMOKE_STAGE1 "${SMALL[@]}" task_name="${EXPERIMENT}_smoke" hydra.run.dir="$SMOKE_DIR/backbone"
    CKPT=$(ls "$SMOKE_DIR"/backbone/checkpoints/best-*.ckpt)
    STAGE2="$SMOKE_EXPERIMENT"
    TASK="${EXPERIMENT}_smoke"
    set -- "${SMALL[@]}" model.backbone.ckpt_path="$CKPT" task_name="$TASK" "$@"
fi
# The three sweeps of the table share one folder (named here: the default sweep dir goes through
# ${hydra:runtime.cwd}, which Hydra cannot resolve for a sweep's own directory).
SWEEP_DIR="logs/$TASK/multiruns/$(date +%Y-%m-%d_%H-%M-%S)"
# shellcheck disable=SC2086
run() { "$PY" train.py -m $STAGE2 hydra.sweep.dir="$SWEEP_DIR/$1" "${@:2}"; }
run backbone model.group=c1 model/aggregator=mean model.regime=zero_shot "$@"
run fixed model.group="$VIEW_GROUPS" model/aggregator="$FIXED" model.regime="$REGIMES" "$@"
run learned model.group="$VIEW_GROUPS" model/aggregator="$LEARNED" model.regime="${REGIMES/zero_shot/aggregator_only}" "$@"
