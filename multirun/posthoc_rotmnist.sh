#!/usr/bin/env bash
# Seed table (1): train and evaluate on RotMNIST. Every aggregator x regime on the stage-1 ViT
# (experiment=vit_rotmnist), with the groups C4 and C16 (the original used C16).
#   bash multirun/posthoc_rotmnist.sh model.backbone.ckpt_path=RUN/checkpoints/best-....ckpt data.data_dir=DIR
#   bash multirun/posthoc_rotmnist.sh smoke        # the same grid in miniature on the embedded data, CPU
EXPERIMENT=posthoc_rotmnist
VIEW_GROUPS="${VIEW_GROUPS:-p4,p16}"
REGIMES="${REGIMES:-zero_shot,mlp,full}"
SMOKE_STAGE1="experiment=vit_rotmnist_mini +model/tiny=vit"
SMOKE_EXPERIMENT="experiment=posthoc_rotmnist_mini"
source "$(dirname "$0")/posthoc_grid.sh"
