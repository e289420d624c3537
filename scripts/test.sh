#!/usr/bin/env bash
# The test command of the README (and of CI): set up the environment, then run the whole suite.
# Extra arguments go to pytest, e.g.  bash scripts/test.sh -k datamodules -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export WANDB_MODE=disabled WANDB_SILENT=true HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -q "$@"
