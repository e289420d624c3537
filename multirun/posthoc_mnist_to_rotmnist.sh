#!/usr/bin/env bash
# Seed table (2): train on upright MNIST, evaluate on RotMNIST. Every aggregator x regime on the stage-1 ViT
# (experiment=vit_mnist_to_rotmnist, or the original ViT: model/backbone=peer_vit), groups C4 and C16.
#   bash multirun/posthoc_mnist_to_rotmnist.sh model.backbone.ckpt_path=RUN/checkpoints/best-....ckpt data.data_dir=DIR
#   bash multirun/posthoc_mnist_to_rotmnist.sh smoke   # the same grid in miniature on the embedded data, CPU
EXPERIMENT=posthoc_mnist_to_rotmnist
VIEW_GROUPS="${VIEW_GROUPS:-p4,p16}"
REGIMES="${REGIMES:-zero_shot,mlp,full}"
SMOKE_STAGE1="experiment=vit_rotmnist_mini +model/tiny=vit"
SMOKE_EXPERIMENT="experiment=posthoc_rotmnist_mini"
source "$(dirname "$0")/posthoc_grid.sh"
