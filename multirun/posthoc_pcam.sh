#!/usr/bin/env bash
# Seed table (4): PCam with a ResNet-50 (stage 1: experiment=resnet50_pcam). Every aggregator x regime with
# the groups flip, C4 and D4 (the original used D4); like the original, the whole network is not fine-tuned.
#   bash multirun/posthoc_pcam.sh model.backbone.ckpt_path=RUN/checkpoints/best-....ckpt data.data_dir=DIR
#   bash multirun/posthoc_pcam.sh smoke     # in miniature: a ResNet-18 on the embedded digits, CPU
EXPERIMENT=posthoc_pcam
VIEW_GROUPS="${VIEW_GROUPS:-mz2,p4,p4m}"
REGIMES="${REGIMES:-zero_shot,mlp}"
SMOKE_STAGE1="experiment=resnet50_pcam data=rotmnist_mini model.net.arch=resnet18"
SMOKE_EXPERIMENT="experiment=posthoc_pcam data=rotmnist_mini"
source "$(dirname "$0")/posthoc_grid.sh"
