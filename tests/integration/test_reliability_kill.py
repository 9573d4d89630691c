"""Interruptions: qdgap killed (SIGKILL) at chosen moments, then rerun, ends with the same results as an
uninterrupted run, bit for bit on the CPU; and a result file is never readable but wrong meanwhile.

Each command runs as a real subprocess (``python -m qdgap``, one torch thread, ``--jobs 1``). The
moment of death is set with the test-only hook ``QDGAP_TEST_KILL`` (``qdgap/core/faults.py``): the
process sends itself SIGKILL the N-th time it reaches a point: a training step (``step``), a
batch going into a model (``forward``), or a finished temporary file about to be renamed into place
(``write/<file name>``, i.e. mid-write). A test runs a chain: killed, rerun and killed again at a
later point, ... then rerun to the end; after every kill, everything on disk is checked against the
reference (``reliability.check_*``), and at the end all of it must be there and equal.

The reference is a study run once per module, file for file what ``qdgap pipeline`` makes:
``runs/``, ``predictions.h5``, ``fna.h5``, ``runs_ft/``, ``runs_scratch/``, ``predictions_ext.h5``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from pathlib import Path

import pytest

from qdgap.core.common import schema
from qdgap.core.data.trajectory import write_trajectory
from qdgap.core.store import runs as rf
from qdgap.core.store.layout import Workdir
from qdgap.core.store.results import read_results
from qdgap.testing.synthetic import synthetic_trajectory
from tests.integration import reliability as rel

MEMBERS = 2
FT_EPOCHS = 3
FNA_EVERY = 20
# tiny preset on 120 frames: 12 labelled, 9 train frames, batch 8: 2 steps per epoch, 4 epochs per member.
STEPS_PER_EPOCH = 2


def _train_args(data: Path, runs: Path, *extra: object) -> list[object]:
    return [
        "ensemble",
        "train",
        "--members",
        MEMBERS,
        "--data",
        data,
        "--preset",
        "tiny",
        "-o",
        runs,
        "--jobs",
        1,
        "--device",
        "cpu",
        *extra,
    ]


def _predict_args(runs: Path, data: Path, out: Path) -> list[object]:
    return ["predict", "--runs", runs, "--data", data, "--frames", "all", "-o", out, "--device", "cpu"]


def _fna_args(runs: Path, data: Path, out: Path) -> list[object]:
    return ["fna", "--runs", runs, "--data", data, "--frames", "unseen", "--every", FNA_EVERY, "--mask", "full",
            "-o", out, "--csv", out.parent / "average_rmse_results.csv", "--device", "cpu"]  # fmt: skip


def _finetune_args(runs: Path, data: Path, out: Path) -> list[object]:
    return [
        "finetune",
        "--runs",
        runs,
        "--data",
        data,
        "-o",
        out,
        "--epochs",
        FT_EPOCHS,
        "--jobs",
        1,
        "--device",
        "cpu",
    ]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, Path, Workdir]:
    """(trajectory, extension, the reference work folder made by the separate commands)."""
    root = tmp_path_factory.mktemp("killstudy")
    data, ext = root / "traj.h5", root / "ext.h5"
    write_trajectory(synthetic_trajectory(120, seed=0), data)
    write_trajectory(synthetic_trajectory(80, seed=2), ext)
    ref = Workdir(root / "ref")
    rel.qdgap(*_train_args(data, ref.runs))
    rel.qdgap(*_predict_args(ref.runs, data, ref.predictions))
    rel.qdgap(*_fna_args(ref.runs, data, ref.fna))
    rel.qdgap(*_finetune_args(ref.runs, ext, ref.runs_finetuned))
    rel.qdgap(*_predict_args(ref.runs_finetuned, ext, ref.predictions_extended))
    return data, ext, ref


def _chain(args: list[object], kills: list[str], check, *, finish: bool = True) -> list[str]:
    """Run ``args`` killed at each rule of ``kills`` in turn (each run resuming the last), checking
    the disk after every kill, then (``finish``) once more to the end; return each run's stdout + stderr."""
    out = []
    for rule in kills:
        proc = rel.qdgap(*args, kill=rule)
        check(final=False)
        out.append(proc.stdout + proc.stderr)
    if finish:
        proc = rel.qdgap(*args)
        check(final=True)
        out.append(proc.stdout + proc.stderr)
    return out


# ==========================================================================
# ensemble train
# ==========================================================================

ENSEMBLE_CHAINS = {
    # member 0 mid-epoch 2; after the resume, member 0 with every file but DONE written; then
    # member 1 mid-write of its model.ts
    "fast": ["step@3", "write/DONE@1", "write/model.ts@1"],
    # Every file of the run-folder contract mid-write, and steps early, mid-epoch and at an epoch's
    # start, over both members. Each run resumes the last; with --jobs 1 a run trains member 0, then
    # member 1, and a fault point counts within one run. The comments say where each kill lands.
    "full": [
        "step@1",  # member 0's first step: only config.json and split.json exist
        "write/checkpoint.pt@1",  # epoch 1 again (no checkpoint yet), killed writing its checkpoint
        "write/metrics.csv@1",  # epoch 1 again, checkpoint kept, killed writing metrics.csv
        "write/metrics.csv@2",  # resumed after epoch 1: epoch 2 fine, killed writing epoch 3's metrics.csv
        f"step@{STEPS_PER_EPOCH}",  # resumed after epoch 3: killed at the last step of epoch 4
        "write/best.pt@1",  # epoch 4 done, killed writing best.pt
        "write/model.ts@1",  # no epoch left: best.pt written again, killed writing model.ts
        "write/test_metrics.json@1",
        "write/DONE@1",  # member 0 complete but for DONE
        "write/config.json@1",  # member 0 done and skipped; member 1 killed writing its config.json
        "write/split.json@1",
        f"step@{2 * STEPS_PER_EPOCH + 1}",  # member 1 from scratch: killed at the first step of epoch 3
        "write/checkpoint.pt@2",  # resumed after epoch 2: killed writing epoch 4's checkpoint
        "write/DONE@1",
    ],  # fmt: skip
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("chain", ["fast", pytest.param("full", marks=pytest.mark.slow)])
def test_ensemble_train_killed_resumes_to_identical_members(study, tmp_path, chain):
    data, _, ref = study
    runs = tmp_path / "runs"
    out = _chain(
        _train_args(data, runs), ENSEMBLE_CHAINS[chain], lambda final: rel.check_runs(runs, ref.runs, final=final)
    )
    assert any("resuming after epoch" in e for e in out)  # a killed member picked up from its checkpoint
    rel.check_no_visible_partials(runs)


# ==========================================================================
# SIGTERM: what Slurm sends at the time limit
# ==========================================================================


@pytest.mark.timeout(180)
def test_train_sigterm_saves_checkpoint_exits_143_and_resumes(study, tmp_path):
    data, _, ref = study
    out = tmp_path / "runs"
    args = ["train", "--seed", 0, "--data", data, "--preset", "tiny", "-o", out, "--device", "cpu"]
    # SIGTERM arrives in the first step of epoch 3: epochs 1 and 2 are checkpointed, epoch 3 is dropped.
    proc = rel.qdgap(*args, kill=f"step@{2 * STEPS_PER_EPOCH + 1}!TERM", expect=143)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "stopped during epoch 3" in lines[-1] and "rerun the same command to resume" in lines[-1]
    assert "Traceback" not in proc.stderr
    run = rf.run_dir(out, 0)
    assert rel.load_pt(run / rf.CHECKPOINT_PT)["epoch"] == 2
    assert len(rf.read_metrics_csv(run / rf.METRICS_CSV)) == 2 and not (run / rf.DONE).exists()
    rel.check_run(run, rf.run_dir(ref.runs, 0), final=False)
    again = rel.qdgap(*args)
    assert "resuming after epoch 2" in again.stderr
    rel.check_run(run, rf.run_dir(ref.runs, 0), final=True)  # epochs 1..4 once each, weights as uninterrupted


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return "gone"


def _sigterm_pending(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    pending = [int(m, 16) for m in re.findall(r"^(?:SigPnd|ShdPnd):\s*([0-9a-f]+)", status, re.M)]
    return any(p & (1 << (signal.SIGTERM - 1)) for p in pending)


@contextlib.contextmanager
def _frozen_parallel_train(data: Path, runs: Path, deadline: float):
    """``ensemble train --jobs 2`` whose two workers freeze themselves (SIGSTOP) at the first step of epoch 2.

    Yields (the parent process, member seed -> worker pid) once both are stopped; on leaving, every worker
    found is let go on (SIGCONT), whatever the test did in between.
    """
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc")
    args = ["ensemble", "train", "--members", MEMBERS, "--data", data, "--preset", "tiny", "-o", runs,
            "--jobs", 2, "--device", "cpu"]  # fmt: skip
    proc = rel.popen(*args, kill=f"step@{STEPS_PER_EPOCH + 1}!STOP")
    workers: dict[int, int] = {}
    try:
        _wait_frozen(proc, runs, workers, deadline)
        yield proc, workers
    finally:
        for pid in workers.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def _wait_frozen(proc, runs: Path, workers: dict[int, int], deadline: float) -> None:
    """Fill ``workers`` (member seed -> pid, from the run locks) until every worker is stopped ("T")."""
    while len(workers) < MEMBERS or any(_proc_state(pid) != "T" for pid in workers.values()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        for s in range(MEMBERS):
            lock = rf.run_dir(runs, s) / rf.LOCK
            holder = re.match(r"pid (\d+)", lock.read_text() if lock.exists() else "")
            if holder:
                workers[s] = int(holder.group(1))
        time.sleep(0.05)


@pytest.mark.timeout(240)
def test_ensemble_sigterm_reaches_parallel_workers(study, tmp_path):
    """SIGTERM to the parent of two worker processes: the parent passes it on, both workers stop at
    their next batch with their checkpoints intact, the parent exits 143 and no worker outlives it;
    a rerun finishes both members exactly as an uninterrupted run.

    The workers freeze themselves (SIGSTOP) in epoch 2, so the signal lands at a known step:
    the test waits until the parent has passed SIGTERM on to both, then lets them go on.
    """
    data, _, ref = study
    runs = tmp_path / "runs"
    deadline = time.monotonic() + 120
    with _frozen_parallel_train(data, runs, deadline) as (proc, workers):
        proc.send_signal(signal.SIGTERM)
        while not all(_sigterm_pending(pid) for pid in workers.values()):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert "rerun the same command" in err.strip().splitlines()[-1]
    for s, pid in workers.items():
        assert _proc_state(pid) == "gone"
        run = rf.run_dir(runs, s)
        assert rf.member_state(run) == "interrupted"  # not "running": its lock died with the worker
        assert rel.load_pt(run / rf.CHECKPOINT_PT)["epoch"] == 1 and not (run / rf.DONE).exists()
        rel.check_run(run, rf.run_dir(ref.runs, s), final=False)
    rel.qdgap(*_train_args(data, runs))  # one worker is enough to finish; the members come out the same
    rel.check_runs(runs, ref.runs, final=True)


def test_ensemble_workers_stop_when_their_parent_is_killed(study, tmp_path):
    """SIGKILL to the parent of two worker processes (as the OOM killer does): no signal reaches the workers,
    yet they stop at their next batch with their checkpoints intact instead of training on as orphans;
    a rerun finishes both members exactly as an uninterrupted run."""
    data, _, ref = study
    runs = tmp_path / "runs"
    deadline = time.monotonic() + 120
    with _frozen_parallel_train(data, runs, deadline) as (proc, workers):
        proc.kill()
        proc.wait(timeout=60)  # not communicate(): the stopped workers still hold its pipes open
    while any(_proc_state(pid) not in ("gone", "Z") for pid in workers.values()):  # Z: exited, not yet reaped
        if time.monotonic() > deadline:
            for pid in workers.values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            pytest.fail("a worker outlived its killed parent")
        time.sleep(0.05)
    proc.communicate(timeout=60)
    for s in workers:
        run = rf.run_dir(runs, s)
        assert not (run / rf.DONE).exists()  # an orphan would have trained the member to the end
        assert rf.member_state(run) == "interrupted"
        assert rel.load_pt(run / rf.CHECKPOINT_PT)["epoch"] == 1
        rel.check_run(run, rf.run_dir(ref.runs, s), final=False)
    rel.qdgap(*_train_args(data, runs))
    rel.check_runs(runs, ref.runs, final=True)


# ==========================================================================
# predict and fna
# ==========================================================================


PREDICT_CHAINS = {
    "fast": ["write/predictions.h5@1", "write/predictions.csv@1"],  # mid-write; between the HDF5 file and its CSV
    "full": ["forward@1", "forward@2", "write/predictions.h5@1", "write/predictions.csv@1"],  # early, mid-member, ...
}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("chain", ["fast", pytest.param("full", marks=pytest.mark.slow)])
def test_predict_killed_never_leaves_a_wrong_file(study, tmp_path, chain):
    data, _, ref = study
    out = tmp_path / "out" / "predictions.h5"
    check = lambda final: rel.check_prediction_outputs(out, ref.predictions, final=final)  # noqa: E731
    _chain(_predict_args(ref.runs, data, out), PREDICT_CHAINS[chain], check)
    rel.check_no_visible_partials(out.parent)


FNA_CHAINS = {
    # member 0 finished and kept, member 1 mid-way; the rerun skips member 0 (its numbers are kept)
    # and dies in its first forward, which is member 1's; then mid-write of fna.h5
    "fast": ["forward@2", "forward@1", "write/fna.h5@1"],
    # early; mid-write of member 0's kept numbers; as fast; mid-write of member 1's kept numbers
    # (the first write of that run); both result files mid-write
    "full": [
        "forward@1",
        "write@1",
        "forward@2",
        "forward@1",
        "write@1",
        "write/fna.h5@1",
        "write/average_rmse_results.csv@1",
    ],
}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("chain", ["fast", pytest.param("full", marks=pytest.mark.slow)])
def test_fna_killed_resumes_per_member(study, tmp_path, chain):
    import numpy as np

    data, _, ref = study
    out = tmp_path / "out" / "fna.h5"
    partial = out.parent / f".{out.name}.partial"
    ref_data, _ = read_results(ref.fna, fmt=schema.FNA_FORMAT)

    def check(final: bool) -> None:
        rel.check_results(out, ref.fna, schema.FNA_FORMAT, final=final)
        rel.check_text(out.parent / "average_rmse_results.csv", ref.fna_csv, final=final)
        for npz in partial.glob("*.npz") if partial.exists() else []:
            with np.load(npz, allow_pickle=False) as z:  # a member's kept numbers are whole and the reference's
                seed = int(re.match(r"seed(\d+)-", npz.name).group(1))
                rel.assert_same(z["masked_ev"], ref_data[schema.MASKED_EV][seed], str(npz))
                rel.assert_same(z["baseline_ev"], ref_data[schema.BASELINE_EV][seed], str(npz))
        if final:
            assert not partial.exists()

    args = _fna_args(ref.runs, data, out)
    kills = FNA_CHAINS[chain]
    i = kills.index("forward@2")
    _chain(args, kills[:i], check, finish=False)
    rel.qdgap(*args, kill="forward@2")
    check(final=False)
    assert len(list(partial.glob("seed0-*.npz"))) == 1 and not list(partial.glob("seed1-*.npz"))
    _chain(args, kills[i + 1 :], check)
    rel.check_no_visible_partials(out.parent)


# ==========================================================================
# finetune and pipeline
# ==========================================================================


# The extension's pool gives 6 training frames: one step per epoch, FT_EPOCHS steps per member.
FINETUNE_CHAINS = {
    # fine-tuned member 0 mid-epoch 2; then the report's JSON twin mid-write (its CSV written)
    "fast": ["step@2", "write/finetune_report.json@1"],
    # as fast, and in the rerun, the scratch baseline's member 1 mid-epoch 2 (member 0 resumes with
    # 2 steps, member 1 takes 3, scratch member 0 3 more); the report CSV mid-write
    "full": ["step@2", f"step@{2 + 2 * FT_EPOCHS + 2}", "write/finetune_report.csv@1", "write/finetune_report.json@1"],
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("chain", ["fast", pytest.param("full", marks=pytest.mark.slow)])
def test_finetune_killed_resumes_to_identical_members_and_report(study, tmp_path, chain):
    _, ext, ref = study
    out = tmp_path / "runs_ft"
    wd = Workdir(tmp_path)

    def check(final: bool) -> None:
        rel.check_runs(wd.runs_finetuned, ref.runs_finetuned, final=final)
        if final or wd.runs_scratch.exists():
            rel.check_runs(wd.runs_scratch, ref.runs_scratch, final=final)
        rel.check_text(wd.finetune_csv, ref.finetune_csv, final=final, drop_columns=("wall_s",))
        if wd.finetune_json.exists():
            drop = ("runs", "wall_s", "member_wall_s")
            rows = [{k: v for k, v in r.items() if k not in drop} for r in rf.read_json(wd.finetune_json)["rows"]]
            ref_rows = [{k: v for k, v in r.items() if k not in drop} for r in rf.read_json(ref.finetune_json)["rows"]]
            assert rows == ref_rows

    _chain(_finetune_args(ref.runs, ext, out), FINETUNE_CHAINS[chain], check)
    rel.check_no_visible_partials(tmp_path)


PIPELINE_CHAINS = {
    # between each stage's HDF5 result and its CSV (predict, fna), and the report mid-write
    "fast": ["write/predictions.csv@1", "write/average_rmse_results.csv@1", "write/report.html@1"],
    # training mid-epoch, predictions between HDF5 and CSV, FNA mid-member, its CSV mid-write,
    # fine-tuning mid-epoch, the extension's predictions mid-write, and the report mid-write
    "full": [
        "step@3",
        "write/predictions.csv@1",
        "forward@2",
        "write/average_rmse_results.csv@1",
        "step@4",
        "write/predictions_ext.h5@1",
        "write/report.html@1",
    ],  # fmt: skip
}


@pytest.mark.timeout(420)
@pytest.mark.parametrize("chain", ["fast", pytest.param("full", marks=pytest.mark.slow)])
def test_pipeline_killed_at_every_stage_resumes_to_identical_results(study, tmp_path, chain):
    data, ext, ref = study
    wd = Workdir(tmp_path / "work")
    args = ["pipeline", "--data", data, "--extended", ext, "--workdir", wd.root, "--preset", "tiny", "--members", MEMBERS,
            "--jobs", 1, "--device", "cpu", "--fna-every", FNA_EVERY, "--finetune-epochs", FT_EPOCHS]  # fmt: skip

    def check(final: bool) -> None:
        rel.check_runs(wd.runs, ref.runs, final=final)
        rel.check_prediction_outputs(wd.predictions, ref.predictions, final=final)
        rel.check_results(wd.fna, ref.fna, schema.FNA_FORMAT, final=final)
        rel.check_text(wd.fna_csv, ref.fna_csv, final=final)
        if final or wd.runs_finetuned.exists():
            rel.check_runs(wd.runs_finetuned, ref.runs_finetuned, final=final)
        if final or wd.runs_scratch.exists():
            rel.check_runs(wd.runs_scratch, ref.runs_scratch, final=final)
        rel.check_text(wd.finetune_csv, ref.finetune_csv, final=final, drop_columns=("wall_s",))
        rel.check_prediction_outputs(wd.predictions_extended, ref.predictions_extended, final=final)
        if final:
            assert wd.report_html.is_file() and len(list(wd.figures.glob("*.png"))) >= 5

    out = _chain(args, PIPELINE_CHAINS[chain], check)
    assert "up to date" in out[-1]
    rel.check_no_visible_partials(wd.root)
