"""OpenMP's wait policy for this process, chosen before torch loads OpenMP.

torch's CPU operators and the fused attention kernel run their threads on OpenMP (libgomp, loaded with
torch). By default an OpenMP thread that runs out of work spins for a while before it sleeps. A GE-ViT
step runs hundreds of short parallel regions, so beside any other busy process (a second job, a data
loader, a sweep on the same node) the spinning threads hold the cores the working ones need, and a step
costs several times what its CPU time predicts (``docs/benchmarks.md``). ``import gevit`` therefore sets
``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep at once) unless the environment already chooses a policy.

OpenMP reads the variable once, when torch is imported. :func:`spinning_note` says when that happened
before gevit could set it (torch imported first, no policy in the environment); ``train.py`` imports
gevit before anything that imports torch.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

VARIABLE = "OMP_WAIT_POLICY"
POLICY = "PASSIVE"

chosen_by_environment = os.environ.get(VARIABLE)
torch_loaded_first = "torch" in sys.modules
os.environ.setdefault(VARIABLE, POLICY)  # also inherited by child processes (workers, launched runs)


def spinning_note() -> Optional[str]:
    """A one-line note when this process's OpenMP threads spin (``None`` when the policy took effect
    or the environment chose one)."""
    if chosen_by_environment is None and torch_loaded_first:
        return (
            f"torch was imported before gevit, so its OpenMP threads spin between parallel regions "
            f"(beside other busy processes that can cost a multiple of the step time); import gevit "
            f"first or start Python with {VARIABLE}={POLICY}"
        )
    return None
