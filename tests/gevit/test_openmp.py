"""``import gevit`` chooses OpenMP's wait policy before torch loads OpenMP, unless the environment chose one,
and says when torch was imported first (then OpenMP's threads spin)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = "import os, gevit; print(os.environ['OMP_WAIT_POLICY'], gevit.openmp.spinning_note() is None)"


def run(code: str, **env) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | env
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def test_gevit_sets_a_passive_wait_policy_unless_the_environment_chose_one():
    assert run(PROBE) == "PASSIVE True"
    assert run(PROBE, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE True"


def test_a_note_when_torch_was_imported_first():
    assert run("import torch; " + PROBE) == "PASSIVE False"
