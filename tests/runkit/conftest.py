"""The real train.py processes the lifecycle and run-directory tests share (started once, side by side)."""

from __future__ import annotations

import signal

import pytest

from tests.support.processes import finish, launch, wait_for


@pytest.fixture(scope="session")
def processes(tmp_path_factory):
    """Real train.py processes, started side by side:

    - ``reference``: 3 epochs, never interrupted;
    - ``killed``: the same command, SIGKILLed in the middle of epoch 1, then started again (same command,
      same run dir) to the end;
    - ``sigterm``: paused in epoch 1, a second process started into its run dir (must be refused), then
      SIGTERM; ``sigint``: paused, then SIGINT;
    - ``badtype``: ``trainer.max_epochs=abc`` (refused before any data is read);
    - one per :data:`PHASES` entry: 1 epoch, paused at that point of the run, then signalled;
    - ``finished``, ``aside``, ``extended``: completed 1-epoch runs the run-directory tests run again;
    - ``workers_reference`` and ``workers_killed`` (SIGKILLed mid-epoch 1, then rerun): 2 data-loading workers
      and per-image rotation augmentation.
    """
    tmp = tmp_path_factory.mktemp("lifecycle")
    names = ("reference", "killed", "sigterm", "sigint", *PHASES, *RERUN, "workers_reference", "workers_killed")
    dirs = {name: tmp / name for name in names}
    procs = {
        "reference": launch(dirs["reference"]),
        "killed": launch(dirs["killed"], pause=True),
        "sigterm": launch(dirs["sigterm"], pause=True),
        "sigint": launch(dirs["sigint"], pause=True),
        "badtype": launch(tmp / "badtype", "trainer.max_epochs=abc"),
    }
    results: dict = {"dirs": dirs}
    wait_for(dirs["killed"] / "paused_at", procs["killed"])
    assert (dirs["killed"] / "checkpoints" / "last.ckpt").is_file()  # epoch 0 is on disk
    procs["killed"].kill()  # SIGKILL in the middle of epoch 1
    results["killed_rc"] = procs["killed"].wait()
    procs["resumed"] = launch(dirs["killed"], pause=True)

    wait_for(dirs["sigterm"] / "paused_at", procs["sigterm"])
    results["sigterm_pid"] = procs["sigterm"].pid
    intruder = launch(tmp / "intruder_log_only", f"hydra.run.dir={dirs['sigterm']}")
    results["intruder"] = finish(intruder, tmp / "intruder_log_only")
    procs["sigterm"].send_signal(signal.SIGTERM)
    wait_for(dirs["sigint"] / "paused_at", procs["sigint"])
    procs["sigint"].send_signal(signal.SIGINT)
    # the second wave, once the first has passed its pauses (fewer processes compete for the cores at once)
    procs.update({phase: launch(dirs[phase], "trainer.max_epochs=1", pause=phase.split("-", 1)[1]) for phase in PHASES})
    procs.update({name: launch(dirs[name], "trainer.max_epochs=1") for name in RERUN})
    procs["workers_reference"] = launch(dirs["workers_reference"], *WORKERS)
    procs["workers_killed"] = launch(dirs["workers_killed"], *WORKERS, pause=True)
    for phase in PHASES:  # every other point of a run
        wait_for(dirs[phase] / "paused_at", procs[phase])
        procs[phase].send_signal(signal.SIGTERM if phase.startswith("sigterm") else signal.SIGINT)
    wait_for(dirs["workers_killed"] / "paused_at", procs["workers_killed"])
    procs["workers_killed"].kill()
    results["workers_killed_rc"] = procs["workers_killed"].wait()
    procs["workers_resumed"] = launch(dirs["workers_killed"], *WORKERS, pause=True)
    resumed = {"resumed": "killed", "workers_resumed": "workers_killed"}
    for name in ("reference", "resumed", "sigterm", "sigint", "badtype", *PHASES, *RERUN, *WORKER_RUNS):
        results[name] = finish(procs[name], dirs.get(resumed.get(name, name), tmp / name))
    return results


# A signal at each point of a run outside the training batches: data preparation, the end of fit, the test's
# data preparation and its batches.
PHASES = (
    *(f"sigterm-{point}" for point in ("fit_setup", "fit_teardown", "test_setup", "test_batch")),
    *(f"sigint-{point}" for point in ("fit_setup", "test_batch")),
)
RERUN = ("finished", "aside", "extended")
WORKERS = ("data.num_workers=2", "data.augmentation=rotation")
WORKER_RUNS = ("workers_reference", "workers_resumed")
