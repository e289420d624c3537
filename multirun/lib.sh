# Sourced by the multirun/*.sh scripts: the interpreter, the smoke switch, sweep folders and the table.
#   source "$(dirname "$0")/lib.sh" "$@"; then  "${ARGS[@]}"  holds the arguments after `smoke`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-.venv/bin/python}"
SMOKE=false
ARGS=("$@")
if [[ "${1:-}" == "smoke" ]]; then
    SMOKE=true
    ARGS=("${@:2}")
fi
# Runs and sweeps of the smoke variants: a few hundred embedded digits, one epoch, a coarse rotation curve.
SMOKE_DATA=(data=rotmnist_mini data.train_size=256 data.val_size=128 data.test_size=128 data.batch_size=32
            trainer.max_epochs=1 callbacks.rotation_robustness.max_samples=32 callbacks.rotation_robustness.step_deg=45)

# In smoke mode "+model/tiny=<model>" (the model shrunk by its conf/model/tiny/<model>.yaml), else nothing:
#   "$PY" train.py model=vit $(tiny vit) ...
tiny() { if $SMOKE; then echo "+model/tiny=$1"; fi; }

# A fresh folder for one table's sweeps (named here so several sweeps can share it); GEVIT_LOG_DIR moves it.
new_sweep_dir() { echo "${GEVIT_LOG_DIR:-logs}/$1/multiruns/$(date +%Y-%m-%d_%H-%M-%S)"; }

# The markdown/CSV table of a sweep folder (scripts/results_table.py; extra arguments go to it), also
# logged to W&B when the sweep itself logged there (logger=wandb among the arguments).
results_table() {
    local extra=()
    if [[ " ${ARGS[*]:-} " == *" logger=wandb "* ]]; then extra=(--wandb); fi
    "$PY" -m scripts.results_table "$@" "${extra[@]}"
}

# One experiment's sweep: sets TASK (default: the experiment's name, + _smoke), SETTINGS (the experiment,
# plus SMOKE_DATA in smoke mode) and GRID_SEEDS (SEEDS, default 0,1,2; 0,1 in smoke mode).
use_experiment() {
    EXPERIMENT="$1"
    TASK="${2:-$1}"
    SETTINGS=(experiment="$EXPERIMENT")
    GRID_SEEDS="${SEEDS:-0,1,2}"
    if $SMOKE; then
        TASK="${TASK}_smoke"
        SETTINGS+=("${SMOKE_DATA[@]}")
        GRID_SEEDS="${SEEDS:-0,1}"
    fi
}
