#!/usr/bin/env bash
# The ViT backbones of the post-hoc experiments, 3 seeds each (stage 1 of every post-hoc table), then their
# table (rows: experiment).
#   bash multirun/vit_baselines.sh                 # real data (data.data_dir / GEVIT_DATA_DIR)
#   bash multirun/vit_baselines.sh smoke           # the same sweep in miniature on the embedded data, CPU
source "$(dirname "$0")/lib.sh" "$@"
TASK=vit_baselines
SETTINGS=(experiment=vit_rotmnist,vit_mnist_to_rotmnist,vit_rotmnist_10pct)
GRID_SEEDS="${SEEDS:-0,1,2}"
if $SMOKE; then
    TASK=vit_baselines_smoke
    GRID_SEEDS="${SEEDS:-0,1}"
    SETTINGS=(experiment=vit_rotmnist_mini data.variant=rotated,upright_train "${SMOKE_DATA[@]}" +model/tiny=vit)
fi
SWEEP_DIR=$(new_sweep_dir "$TASK")
"$PY" train.py -m "${SETTINGS[@]}" task_name="$TASK" hydra.sweep.dir="$SWEEP_DIR" seed="$GRID_SEEDS" "${ARGS[@]}"
results_table "$SWEEP_DIR" --metrics val/acc_best test/acc test/rot_acc_mean --title "ViT baselines"
