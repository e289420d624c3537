#!/usr/bin/env bash
# The ViT backbones of the post-hoc experiments, 3 seeds each (stage 1 of every post-hoc table).
#   bash multirun/vit_baselines.sh                 # real data (data.data_dir / GEVIT_DATA_DIR)
#   bash multirun/vit_baselines.sh smoke           # the same sweep in miniature on the embedded data, CPU
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
if [[ "${1:-}" == "smoke" ]]; then
    shift
    exec "$PY" train.py -m task_name=vit_baselines_smoke data=rotmnist_mini \
        data.train_size=256 data.val_size=128 data.test_size=128 trainer.max_epochs=1 \
        callbacks.rotation_robustness.max_samples=64 seed=0,1 "$@"
fi
exec "$PY" train.py -m experiment=vit_rotmnist,vit_mnist_to_rotmnist,vit_rotmnist_10pct seed=0,1,2 "$@"
