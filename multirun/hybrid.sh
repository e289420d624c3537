#!/usr/bin/env bash
# The hybrid ViT (escnn stem + GE-ViT) on RotMNIST: groups p4, p4m x stems escnn, patch_embed, 3 seeds, then
# the table with accuracy, parameters and training images/s (compare with gevit_grid.sh's p4 rows).
#   bash multirun/hybrid.sh data.data_dir=DIR hydra/launcher=slurm trainer=gpu
#   EXPERIMENT=hybrid_pcam bash multirun/hybrid.sh ...     # the PCam version
#   bash multirun/hybrid.sh smoke       # tiny networks on the embedded digits (CPU)
source "$(dirname "$0")/lib.sh" "$@"
use_experiment "${EXPERIMENT:-hybrid_rotmnist}"
if $SMOKE; then SETTINGS+=(+model/tiny=hybrid); fi
SWEEP_DIR=$(new_sweep_dir "$TASK")
"$PY" train.py -m "${SETTINGS[@]}" task_name="$TASK" hydra.sweep.dir="$SWEEP_DIR" \
    model.net.group=p4,p4m model.net.stem=escnn,patch_embed seed="$GRID_SEEDS" "${ARGS[@]}"
results_table "$SWEEP_DIR" --rows model.net.group model.net.stem --columns \
    --metrics val/acc_best test/acc test/invariance_error_rot90 model/params train/images_per_s \
    --title "Hybrid ViT ($EXPERIMENT)"
