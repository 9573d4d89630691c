"""The ensemble: members trained in parallel worker processes or as one Slurm job array.

Member i trains with seed ``seed_base + i`` through ``train.train_member``
(the code behind ``qdgap train``). A member with ``DONE`` is skipped, an
interrupted one resumes from its checkpoint, and one that another process
is training (its lock is held) is left alone, so two ensemble runs pointed
at the same folder train each member once.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qdgap.core.common.errors import Interrupted, QdgapError
from qdgap.core.common.logs import LOG_FORMAT
from qdgap.core.common.numerics import reproducible_requested, reproducible_threads
from qdgap.core.config import RunConfig
from qdgap.core.store import runs as rf

if TYPE_CHECKING:
    from qdgap.core.train.loop import InitFrom

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemberOutcome:
    """What became of one member in this run: trained, done (already), busy (another
    process holds it), interrupted or failed."""

    seed: int
    outcome: str
    message: str = ""
    test_rmse_mev: float | None = None
    seconds: float | None = None


def member_seeds(members: int, seed_base: int = 0) -> list[int]:
    """Seeds ``seed_base .. seed_base + members - 1``."""
    if members < 1:
        raise QdgapError(f"--members must be at least 1, got {members}")
    if seed_base < 0:
        raise QdgapError(f"--seed-base must be a non-negative integer, got {seed_base}")
    return list(range(seed_base, seed_base + members))


def usable_cores() -> int:
    """Cores this process may run on (Slurm's and taskset's limits included)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def threads_per_job(jobs: int) -> int:
    """Torch threads for each of ``jobs`` parallel members: the usable cores shared out, but never
    more than ``OMP_NUM_THREADS`` when the user (or Slurm's ``--cpus-per-task`` recipe) set it.

    More threads than free cores do not just waste time: on a loaded machine the threads of
    one small-graph member wait on each other and an epoch can take a hundred times longer.
    Under ``QDGAP_REPRODUCIBLE=1`` it is the mode's fixed count instead (``QDGAP_THREADS``, default 1):
    float sums depend on the thread count, and the results must not depend on the machine's cores.
    """
    if reproducible_requested():
        return reproducible_threads()
    threads = max(1, usable_cores() // jobs)
    try:
        cap = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return threads
    return max(1, min(threads, cap)) if cap >= 1 else threads


def default_jobs(n_members: int, device: str) -> int:
    """Parallel members: one per core on the CPU (small graphs scale poorly across threads), one on a GPU."""
    if device.startswith("cuda"):
        return 1
    # Under the reproducible mode each member runs its fixed thread count; no more members than fit the cores.
    per_member = reproducible_threads() if reproducible_requested() else 1
    return max(1, min(n_members, usable_cores() // per_member))


# ==========================================================================
# Local backend
# ==========================================================================


def train_local(
    data_path: Path,
    config: RunConfig,
    *,
    seeds: Sequence[int],
    runs: Path,
    jobs: int,
    device: str = "auto",
    init: Callable[[int], InitFrom] | None = None,
    progress: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[MemberOutcome]:
    """Train the members with ``jobs`` worker processes, each with cores // jobs torch threads.

    Args:
        data_path: the trajectory file (each worker reads it).
        config: the resolved run configuration.
        seeds: member seeds.
        runs: the ensemble folder (``run_<seed>/`` inside).
        jobs: worker processes.
        init: seed -> the weights a member starts from (fine-tuning); random weights if None.
            Called in the worker, so it must pickle (a module-level class or function).
        progress: called with the number of epochs finished, as they finish.
        should_stop: polled; True stops the workers at their next batch (checkpoints stay).

    Returns:
        One outcome per seed, in seed order.
    """
    from qdgap.core.data.trajectory import read_trajectory
    from qdgap.core.graphs.build import load_or_build_graphs

    if jobs < 1:
        raise QdgapError(f"--jobs must be at least 1, got {jobs}")
    traj = read_trajectory(data_path)
    todo = [s for s in seeds if not (rf.run_dir(runs, s) / rf.DONE).exists()]
    outcomes = {s: MemberOutcome(s, "done", "already finished") for s in seeds if s not in todo}
    if not todo:
        return [outcomes[s] for s in seeds]
    from qdgap.core.train.loop import check_splittable

    for seed in todo:  # too few labelled frames: one error now, not a failed member (and a graph cache) per seed
        check_splittable(traj, config.train, seed=seed, data_path=str(data_path))
    from qdgap.core.common.files import check_writable_dir

    check_writable_dir(Path(runs))  # an unwritable place: one error now, not a failed member per seed
    # Build the graphs once here, so the workers find them in the cache instead of racing to build them.
    load_or_build_graphs(traj, config.graph, cache_dir=runs / rf.CACHE_DIR)
    jobs = min(jobs, len(todo))
    threads = threads_per_job(jobs)
    if jobs == 1:
        import torch

        torch.set_num_threads(threads)
        for seed in todo:
            if should_stop is not None and should_stop():
                outcomes[seed] = MemberOutcome(seed, "interrupted", "not started")
                continue
            outcomes[seed] = _train_one(traj, config, seed, runs, device, str(data_path), progress, should_stop, init)
        return [outcomes[s] for s in seeds]

    ctx = mp.get_context("spawn")  # fork after torch has started its thread pools can deadlock
    ticks = ctx.Queue()
    # Spawned workers start with no logging set up: hand them the log files (e.g. the pipeline's qdgap.log).
    log_files = [h.baseFilename for h in logging.getLogger("qdgap").handlers if isinstance(h, logging.FileHandler)]
    with ProcessPoolExecutor(
        max_workers=jobs, mp_context=ctx, initializer=_worker_init, initargs=(threads, ticks, log_files)
    ) as pool:
        pending: dict[Future, int] = {
            pool.submit(_worker_train, str(data_path), config.to_json(), seed, str(runs), device, init): seed
            for seed in todo
        }
        stopping = False
        while pending:
            done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(ticks, progress)
            for fut in done:
                seed = pending.pop(fut)
                try:
                    outcomes[seed] = fut.result()
                except Exception as exc:  # a worker died (killed, out of memory)
                    outcomes[seed] = MemberOutcome(seed, "failed", f"worker process failed: {exc}")
            if not stopping and should_stop is not None and should_stop():
                stopping = True
                for fut in pending:
                    if fut.cancel():
                        outcomes[pending[fut]] = MemberOutcome(pending[fut], "interrupted", "not started")
                pending = {f: s for f, s in pending.items() if not f.cancelled()}
                for proc in list(getattr(pool, "_processes", {}).values()):
                    _signal(proc.pid, signal.SIGTERM)  # workers stop at their next batch, checkpoints intact
        _drain(ticks, progress)
    return [outcomes[s] for s in seeds]


def _train_one(traj, config, seed, runs, device, data_path, progress, should_stop, init=None) -> MemberOutcome:
    from qdgap.core.common.files import LockHeld
    from qdgap.core.train.loop import train_member

    run = rf.run_dir(runs, seed)
    if (run / rf.DONE).exists():  # finished by another process since this one made its list
        return MemberOutcome(seed, "done", "finished by another process")
    try:
        result = train_member(
            traj,
            config,
            seed=seed,
            run_dir=run,
            device=device,
            cache_dir=runs / rf.CACHE_DIR,
            init=None if init is None else init(seed),
            data_path=data_path,
            progress=progress,
            should_stop=should_stop,
        )
    except LockHeld as exc:
        return MemberOutcome(seed, "busy", str(exc))
    except Interrupted as exc:
        return MemberOutcome(seed, "interrupted", str(exc))
    except QdgapError as exc:  # train_member wrote the FAILED marker
        if (run / rf.DONE).exists():  # another process finished it between the check above and the lock
            return MemberOutcome(seed, "done", "finished by another process")
        return MemberOutcome(seed, "failed", str(exc))
    except Exception as exc:  # a bug: train_member kept the traceback in FAILED
        return MemberOutcome(seed, "failed", f"internal error: {exc!r} (traceback in {run / rf.FAILED})")
    return MemberOutcome(seed, "trained", test_rmse_mev=result.test_rmse_mev, seconds=result.seconds)


# Worker-process state: set once by the pool's initializer.
_WORKER: dict = {}
PARENT_POLL_S = 1.0  # how often a worker checks that its parent is alive
ORPHAN_EXIT = 3  # a worker's exit status when it found its parent gone


def _worker_init(threads: int, ticks, log_files: Sequence[str] = ()) -> None:
    import torch

    torch.set_num_threads(threads)
    logger = logging.getLogger("qdgap")
    for path in log_files:
        handler = logging.FileHandler(path)  # append mode: whole lines from several processes interleave cleanly
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logger.addHandler(handler)
    if log_files:
        logger.setLevel(logging.DEBUG)
    _WORKER["ticks"] = ticks
    _WORKER["stop"] = False
    # A parent killed outright (SIGKILL, the OOM killer) sends no SIGTERM: its workers would train on as orphans,
    # holding memory and run locks, then wait forever for the next task (each holds the task queue's write end,
    # so none ever reads its end). Reparenting changes getppid(): the watch stops a training worker like SIGTERM
    # does (checkpoint intact) and lets it exit after; an idle worker exits at once.
    _WORKER["parent"] = os.getppid()
    _WORKER["busy"] = False
    threading.Thread(target=_watch_parent, name="qdgap-parent-watch", daemon=True).start()

    def handler(signum, frame):  # noqa: ARG001
        _WORKER["stop"] = True

    signal.signal(signal.SIGTERM, handler)
    # Ctrl-C reaches the whole process group; the parent decides, the worker stops cleanly.
    signal.signal(signal.SIGINT, handler)


def _orphaned() -> bool:
    return os.getppid() != _WORKER["parent"]


def _watch_parent() -> None:
    while True:
        time.sleep(PARENT_POLL_S)
        if _orphaned():
            _WORKER["stop"] = True
            if not _WORKER["busy"]:
                os._exit(ORPHAN_EXIT)


def _worker_train(data_path: str, config_json: dict, seed: int, runs: str, device: str, init=None) -> MemberOutcome:
    _WORKER["busy"] = True
    try:
        outcome = _worker_train_one(data_path, config_json, seed, runs, device, init)
    finally:
        _WORKER["busy"] = False
    if _orphaned():  # nobody to hand the outcome to; the run folder says what happened
        os._exit(ORPHAN_EXIT)
    return outcome


def _worker_train_one(data_path: str, config_json: dict, seed: int, runs: str, device: str, init) -> MemberOutcome:
    from qdgap.core.data.trajectory import read_trajectory

    traj = read_trajectory(data_path)
    ticks = _WORKER["ticks"]
    return _train_one(
        traj,
        RunConfig.from_json(config_json),
        seed,
        Path(runs),
        device,
        data_path,
        progress=lambda n: ticks.put(n),
        should_stop=lambda: _WORKER["stop"] or _orphaned(),  # per batch; the watch covers a worker between tasks
        init=init,
    )


def _drain(ticks, progress: Callable[[int], None] | None) -> None:
    while True:
        try:
            n = ticks.get_nowait()
        except (queue.Empty, OSError, ValueError):
            return
        if progress is not None:
            progress(n)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# ==========================================================================
# Slurm backend
# ==========================================================================


def train_argv(
    seed: int, *, data: Path, runs: Path, preset: str, device: str, overrides: dict[str, object]
) -> list[str]:
    """The ``qdgap train`` arguments of one member (what an array task runs)."""
    argv = ["--quiet", "train", "--seed", str(seed), "--data", str(Path(data).absolute()), "--preset", preset]
    argv += ["-o", str(Path(runs).absolute()), "--device", device]
    for key, value in overrides.items():
        if value is not None:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


# ==========================================================================
# Status
# ==========================================================================


@dataclass(frozen=True)
class MemberStatus:
    """One row of ``qdgap ensemble status``."""

    seed: int
    state: str  # done, running, pending, interrupted, failed, missing
    epochs: int
    best_val_mae_mev: float
    test_rmse_mev: float
    message: str = ""


def ensemble_status(runs: Path, *, seeds: Sequence[int] | None = None) -> list[MemberStatus]:
    """Each member's state, epochs, best validation MAE and test RMSE (meV; NaN when unknown).

    Members come from the ``run_<seed>/`` folders, the given ``seeds`` and the
    Slurm records in ``runs/.slurm``; Slurm's view (pending, running, failed)
    fills in for members whose folder does not say more.
    """
    runs = Path(runs)
    slurm = _slurm_states(runs)
    found = {rf.seed_of(d) for d in rf.member_dirs(runs)}
    all_seeds = sorted(found | set(seeds or []) | {s for s in slurm if isinstance(s, int)})
    rows = []
    for seed in all_seeds:
        run = rf.run_dir(runs, seed)
        state = rf.member_state(run)
        metrics = rf.read_metrics_csv(run / rf.METRICS_CSV) if run.exists() else []
        message = ""
        test = np.nan
        if (run / rf.TEST_METRICS_JSON).exists():
            test = float(rf.read_json(run / rf.TEST_METRICS_JSON)["rmse_mev"])
        task = slurm.get(seed)
        if state != "done" and task is not None:
            if task.pending:
                state = "pending"
                from qdgap.core.workflow.slurm_states import pending_note

                note = pending_note(task)
                message = f"Slurm {task.job_id}: {note}" if note else ""
            elif task.running:
                state = "running"
            elif task.failed:
                state, message = "failed", f"Slurm {task.job_id}: {task.message or task.state}"
        if state == "failed" and not message and (run / rf.FAILED).exists():
            message = (run / rf.FAILED).read_text().strip().splitlines()[-1]
        rows.append(
            MemberStatus(
                seed=seed,
                state=state,
                epochs=len(metrics),
                best_val_mae_mev=min((r["val_mae_mev"] for r in metrics), default=np.nan),
                test_rmse_mev=test,
                message=message,
            )
        )
    return rows


def _slurm_states(runs: Path) -> dict:
    folder = runs / ".slurm"
    if not folder.is_dir():
        return {}
    from qdgap.core.workflow import slurm_states

    try:
        return slurm_states.member_states(folder)
    except QdgapError as exc:
        log.warning("could not read the Slurm records in %s: %s", folder, exc)
        return {}


def members_to_submit(runs: Path, seeds: Sequence[int]) -> tuple[list[int], list[int]]:
    """(seeds to submit, seeds already queued or running) for a Slurm array into ``runs``.

    The one resubmission policy: rerunning a command submits every member that
    is neither done nor in Slurm's queue (never started, failed, lost), and
    nothing else.
    """
    status = {row.seed: row.state for row in ensemble_status(runs, seeds=seeds)}
    todo = [s for s in seeds if status.get(s) not in ("done", "running", "pending")]
    busy = [s for s in seeds if status.get(s) in ("running", "pending")]
    return todo, busy
