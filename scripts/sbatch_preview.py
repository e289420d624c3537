"""Print the sbatch file a Slurm sweep would submit, without submitting anything.

    python -m scripts.sbatch_preview experiment=gevit_rotmnist model.net.group=p4,p8 seed=0,1,2 trainer=ddp
    python -m scripts.sbatch_preview seed=0,1 --output job.sbatch

Runs ``python train.py -m hydra/launcher=slurm <overrides>`` for real — Hydra, the sweeper,
hydra-submitit-launcher and submitit build the job array exactly as they would on the cluster — up to the
moment submitit calls ``sbatch``: there the sbatch file is printed (or written to ``--output``) and the
program stops. Settings Slurm would refuse stop it before, with the one line a real sweep prints
(``runkit/slurm.py``). Nothing is submitted and nothing is trained; only the sweep folder (with Hydra's
``multirun.yaml`` and submitit's pickles) is created. submitit refuses to start without an ``srun`` on
PATH, so on a machine without Slurm a stub that is never called is put there for the preview.
"""

from __future__ import annotations

import argparse
import os
import runpy
import shutil
import sys
import tempfile
from pathlib import Path

from runkit.resolvers import PROJECT_ROOT


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=None, help="write the sbatch file here instead of stdout")
    args, overrides = parser.parse_known_args(argv)

    from submitit.slurm.slurm import SlurmExecutor

    def show_instead_of_submitting(executor: SlurmExecutor, command: str):
        text = executor._make_submission_file_text(command, "preview")
        if args.output:
            args.output.write_text(text)
        else:
            sys.stdout.write(text)
        raise SystemExit(0)

    SlurmExecutor._submit_command = show_instead_of_submitting
    with tempfile.TemporaryDirectory() as stub_dir:
        if shutil.which("srun") is None:
            stub = Path(stub_dir) / "srun"
            stub.write_text("#!/bin/sh\nexit 1\n")
            stub.chmod(0o755)
            os.environ["PATH"] = f"{stub_dir}{os.pathsep}{os.environ.get('PATH', '')}"
        sys.argv = ["train.py", "-m", "hydra/launcher=slurm", *overrides]
        runpy.run_path(str(PROJECT_ROOT / "train.py"), run_name="__main__")


if __name__ == "__main__":
    main()
