"""Hydra launchers: the Slurm config composes from environment variables; the local submitit launcher runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from lightning_modules.utils import register_resolvers
from tests.helpers import CONF_DIR
from tests.test_train import FAST

REPO = Path(__file__).resolve().parents[1]


def test_slurm_launcher_reads_the_cluster_from_the_environment(monkeypatch):
    monkeypatch.setenv("GEVIT_SLURM_PARTITION", "gpu-a100")
    monkeypatch.setenv("GEVIT_SLURM_ACCOUNT", "lab42")
    monkeypatch.setenv("GEVIT_SLURM_GPUS", "4")
    monkeypatch.setenv("GEVIT_SLURM_TIME_MIN", "720")
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["_target_"].endswith("SlurmLauncher")
    for key in ("submitit_folder", "name"):
        launcher.pop(key)  # these point at Hydra's runtime, resolved only when a sweep starts
    resolved = OmegaConf.to_container(OmegaConf.create(launcher), resolve=True)
    assert resolved["partition"] == "gpu-a100" and resolved["account"] == "lab42"
    assert resolved["gpus_per_node"] == 4 and resolved["tasks_per_node"] == 4  # one DDP process per GPU
    assert resolved["timeout_min"] == 720 and resolved["max_num_timeout"] == 3


def test_local_submitit_launcher_runs_a_two_job_sweep(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "train.py", "-m", "hydra/launcher=local", f"paths.log_dir={tmp_path}",
           "trainer.max_epochs=1", "seed=0,1", *FAST]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    seeds = sorted(json.loads((sweep / str(i) / "metrics.json").read_text())["seed"] for i in range(2))
    assert seeds == [0, 1]
