#!/usr/bin/env bash
# The grid of one post-hoc results table, sourced by the multirun/posthoc_<table>.sh scripts, which set
#   EXPERIMENT (stage 2), VIEW_GROUPS, REGIMES, SMOKE_STAGE1 and SMOKE_EXPERIMENT (the miniature versions).
# The methods are the yamls of conf/model/aggregator/ (a new yaml is swept without editing this file), split by
# their class's `learned` attribute; POSTHOC_FIXED / POSTHOC_LEARNED (comma lists) choose a subset instead.
# A part of the grid: VIEW_GROUPS=p4 REGIMES=zero_shot POSTHOC_FIXED=mean POSTHOC_LEARNED=lambda SEEDS=0.
# Three Hydra multiruns of train.py into one folder, then its table (rows: aggregator x group, columns: regime):
#   1. the plain backbone (the trivial group c1: one view, so the backbone itself), zero_shot;
#   2. the parameter-free aggregators x REGIMES x VIEW_GROUPS;
#   3. the learned aggregators x REGIMES (zero_shot -> aggregator_only: they must be trained) x VIEW_GROUPS.
# Real data: pass the stage-1 checkpoint, model.backbone.ckpt_path=RUN/checkpoints/best-....ckpt; 3 seeds
# (SEEDS=0,1,2 by default; the seed changes what is trained and the batch order, not the backbone).
# `smoke` (first argument): train a tiny stage-1 backbone for one epoch on the embedded digits, then run
# the same grid on it in miniature (CPU, minutes). Further arguments go to every Hydra call.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh" "$@"
FIXED="${POSTHOC_FIXED:-$("$PY" -m runkit.posthoc_methods aggregators --fixed)}"
LEARNED="${POSTHOC_LEARNED:-$("$PY" -m runkit.posthoc_methods aggregators --learned)}"
STAGE2="experiment=$EXPERIMENT"
TASK="$EXPERIMENT"
GRID_SEEDS="${SEEDS:-0,1,2}"
if $SMOKE; then
    SMALL=("${SMOKE_DATA[@]}" data.variant=upright_train data.batch_size=64)
    TASK="${EXPERIMENT}_smoke"
    GRID_SEEDS="${SEEDS:-0}"
    SWEEP_DIR=$(new_sweep_dir "$TASK")
    # shellcheck disable=SC2086
    "$PY" train.py $SMOKE_STAGE1 "${SMALL[@]}" task_name="$TASK" hydra.run.dir="$SWEEP_DIR/stage1_backbone"
    CKPT=$(ls "$SWEEP_DIR"/stage1_backbone/checkpoints/best-*.ckpt)
    STAGE2="$SMOKE_EXPERIMENT"
    ARGS=("${SMALL[@]}" model.backbone.ckpt_path="$CKPT" "${ARGS[@]}")
else
    SWEEP_DIR=$(new_sweep_dir "$TASK")
fi
# shellcheck disable=SC2086
run() { "$PY" train.py -m $STAGE2 task_name="$TASK" hydra.sweep.dir="$SWEEP_DIR/$1" seed="$GRID_SEEDS" "${@:2}"; }
run backbone model.group=c1 model/aggregator=mean model.regime=zero_shot "${ARGS[@]}"
run fixed model.group="$VIEW_GROUPS" model/aggregator="$FIXED" model.regime="$REGIMES" "${ARGS[@]}"
run learned model.group="$VIEW_GROUPS" model/aggregator="$LEARNED" model.regime="${REGIMES/zero_shot/aggregator_only}" "${ARGS[@]}"
results_table "$SWEEP_DIR/backbone" "$SWEEP_DIR/fixed" "$SWEEP_DIR/learned" --out "$SWEEP_DIR" \
    --rows model/aggregator model.group --columns model.regime --title "Post-hoc ($EXPERIMENT)"
