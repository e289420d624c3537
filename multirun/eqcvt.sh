#!/usr/bin/env bash
# EqCvT against its published (not exactly invariant) variant and the plain CvT, 3 seeds each, then the
# table with accuracy, rotation robustness (mean accuracy over 24 angles, logit change under rot90) and
# parameters. Default data: RotMNIST; the write-up's lensing data: EXPERIMENT=eqcvt_lensing.
#   bash multirun/eqcvt.sh data.data_dir=DIR hydra/launcher=slurm trainer=gpu
#   bash multirun/eqcvt.sh smoke        # tiny networks on the embedded digits (CPU)
source "$(dirname "$0")/lib.sh" "$@"
use_experiment "${EXPERIMENT:-eqcvt_rotmnist}"
SWEEP_DIR=$(new_sweep_dir "$TASK")
run() { "$PY" train.py -m "${SETTINGS[@]}" task_name="$TASK" hydra.sweep.dir="$SWEEP_DIR/$1" seed="$GRID_SEEDS" "${@:2}"; }
# shellcheck disable=SC2046
run eqcvt model=eqcvt model.net.invariant=true,false $(tiny eqcvt) "${ARGS[@]}"
# shellcheck disable=SC2046
run cvt model=cvt $(tiny cvt) "${ARGS[@]}"
results_table "$SWEEP_DIR" --rows model model.net.invariant --columns \
    --metrics val/acc_best test/acc test/rot_acc_mean test/invariance_error_rot90 model/params \
    --title "EqCvT vs CvT ($EXPERIMENT)"
