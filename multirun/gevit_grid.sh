#!/usr/bin/env bash
# GE-ViT and GSA-Nets on RotMNIST over groups x neighbourhood sizes, 3 seeds each (the rows of the GSA-Nets
# and GE-ViT tables: z2, p4, p8, p12, p16, p4m at 3x3 and 5x5), then the table
# (rows: encoding x group, columns: neighbourhood size; val = best validation accuracy, test = test accuracy).
#   bash multirun/gevit_grid.sh data.data_dir=DIR hydra/launcher=slurm trainer=gpu
#   GEVIT_GROUPS=p4,p12 GEVIT_PATCHES=5 SEEDS=0 bash multirun/gevit_grid.sh ...   # a part of the grid
#   bash multirun/gevit_grid.sh smoke       # z2, p4 x 3, 5 x 2 seeds, tiny networks, embedded digits (CPU)
# The cost grows with |G|^3 (p16 is ~64x p4 per step): on Slurm give the big groups more time
# (GEVIT_SLURM_TIME_MIN) or run them as their own sweep.
source "$(dirname "$0")/lib.sh" "$@"
TASK=gevit_grid
SETTINGS=(experiment=gevit_rotmnist)
GRID_GROUPS="${GEVIT_GROUPS:-z2,p4,p8,p12,p16,p4m}"
GRID_PATCHES="${GEVIT_PATCHES:-3,5}"
GRID_SEEDS="${SEEDS:-0,1,2}"
if $SMOKE; then
    TASK=gevit_grid_smoke
    GRID_GROUPS="${GEVIT_GROUPS:-z2,p4}"
    GRID_SEEDS="${SEEDS:-0,1}"
    SETTINGS+=("${SMOKE_DATA[@]}" data.train_size=96 data.val_size=32 data.test_size=32 data.batch_size=16
               callbacks.rotation_robustness.max_samples=16 +model/tiny=gevit)
fi
SWEEP_DIR=$(new_sweep_dir "$TASK")
"$PY" train.py -m "${SETTINGS[@]}" task_name="$TASK" hydra.sweep.dir="$SWEEP_DIR" \
    model.net.encoding=gevit,gsanet model.net.group="$GRID_GROUPS" model.net.attention_window="$GRID_PATCHES" \
    seed="$GRID_SEEDS" "${ARGS[@]}"
results_table "$SWEEP_DIR" --rows model.net.encoding model.net.group --columns model.net.attention_window \
    --title "GE-ViT / GSA-Nets: accuracy (%) by group and neighbourhood"
