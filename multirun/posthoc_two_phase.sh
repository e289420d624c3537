#!/usr/bin/env bash
# Write-up 003's two-phase protocol for the learned post-hoc methods: phase 1 "pre-finetune" trains the
# aggregator alone (regime aggregator_only, backbone frozen); phase 2 "fine-tune" starts every run from its
# own phase-1 aggregator (model.init_aggregator_from) and trains the backbone — with the aggregator
# (regime full: the write-up's update) or with it frozen (regime backbone_only: Basu et al.'s original).
# One table: rows aggregator x group, columns the phase-1 and phase-2 regimes.
#   bash multirun/posthoc_two_phase.sh model.backbone.ckpt_path=RUN/checkpoints/best-....ckpt data.data_dir=DIR
#   bash multirun/posthoc_two_phase.sh smoke     # in miniature on the embedded digits (CPU, minutes)
# EXPERIMENT (default posthoc_mnist_to_rotmnist), VIEW_GROUPS (c4), PHASE2_REGIMES (full,backbone_only),
# POSTHOC_LEARNED (default: every learned method of conf/model/aggregator/), SEEDS choose the grid.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh" "$@"
EXPERIMENT="${EXPERIMENT:-posthoc_mnist_to_rotmnist}"
VIEW_GROUPS="${VIEW_GROUPS:-p4}"
PHASE2_REGIMES="${PHASE2_REGIMES:-full,backbone_only}"
LEARNED="${POSTHOC_LEARNED:-$("$PY" -m runkit.posthoc_methods aggregators --learned)}"
STAGE2="experiment=$EXPERIMENT"
TASK="${EXPERIMENT}_two_phase"
GRID_SEEDS="${SEEDS:-0,1,2}"
if $SMOKE; then
    SMALL=("${SMOKE_DATA[@]}" data.variant=upright_train data.batch_size=64)
    TASK="${TASK}_smoke"
    GRID_SEEDS="${SEEDS:-0}"
    SWEEP_DIR=$(new_sweep_dir "$TASK")
    "$PY" train.py experiment=vit_rotmnist_mini +model/tiny=vit "${SMALL[@]}" task_name="$TASK" hydra.run.dir="$SWEEP_DIR/stage1_backbone"
    CKPT=$(ls "$SWEEP_DIR"/stage1_backbone/checkpoints/best-*.ckpt)
    STAGE2="experiment=posthoc_rotmnist_mini"
    ARGS=("${SMALL[@]}" model.backbone.ckpt_path="$CKPT" "${ARGS[@]}")
else
    SWEEP_DIR=$(new_sweep_dir "$TASK")
fi
# Each phase-1 run lives in a folder named by what it is, so that phase 2 finds its own aggregator.
RUN_NAME='${hydra:runtime.choices.model/aggregator}_${model.group}_seed${seed}'
# shellcheck disable=SC2086
run() { "$PY" train.py -m $STAGE2 task_name="$TASK" hydra.sweep.dir="$SWEEP_DIR/$1" hydra.sweep.subdir="$2" \
        seed="$GRID_SEEDS" model/aggregator="$LEARNED" model.group="$VIEW_GROUPS" "${@:3}"; }
run phase1_prefinetune "$RUN_NAME" model.regime=aggregator_only "${ARGS[@]}"
run phase2_finetune "${RUN_NAME}_"'${model.regime}' model.regime="$PHASE2_REGIMES" \
    model.init_aggregator_from="$SWEEP_DIR/phase1_prefinetune/$RUN_NAME" "${ARGS[@]}"
results_table "$SWEEP_DIR/phase1_prefinetune" "$SWEEP_DIR/phase2_finetune" --out "$SWEEP_DIR" \
    --rows model/aggregator model.group --columns model.regime --title "Post-hoc two phases ($EXPERIMENT)"
