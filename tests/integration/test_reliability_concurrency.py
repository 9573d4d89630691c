"""Concurrency: two processes pointed at the same runs folder train each member once; two writers of
the same result file do not corrupt it (the second refuses, with one line, while the first works).

Where an overlap must be certain, the first process freezes itself (SIGSTOP, through the test-only
hook ``QDGAP_TEST_KILL``, see ``qdgap/core/faults.py``) at a known point while holding its lock, and
the test lets it go on (SIGCONT) once the second has had its turn.
"""

from __future__ import annotations

import contextlib
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from qdgap.core.common import schema
from qdgap.core.store import runs as rf
from qdgap.core.store.results import read_results
from tests.conftest import assert_one_line_error
from tests.integration import reliability as rel

EPOCHS = 4  # the tiny preset's


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "gone"


def _wait_stopped(proc, timeout_s: float = 120) -> None:
    """Wait until ``proc`` has frozen itself (SIGSTOP from its kill rule)."""
    deadline = time.monotonic() + timeout_s
    while _state(proc.pid) != "T":
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.05)


def _summary(stdout: str) -> dict[str, int]:
    """``runs: 3 trained, 1 busy`` -> {"trained": 3, "busy": 1}."""
    line = [ln for ln in stdout.splitlines() if re.search(r"\d+ (trained|busy|done|failed|interrupted)", ln)][-1]
    return {k: int(n) for n, k in re.findall(r"(\d+) (trained|busy|done|failed|interrupted)", line)}


def _check_trained_once(runs: Path, seeds: range, *outputs: str) -> None:
    """Every member finished with one unbroken sequence of epochs, and the processes' summaries
    add up to one training per member, the others reported busy or done."""
    trained = 0
    for out in outputs:
        counts = _summary(out)
        assert sum(counts.values()) == len(seeds), out
        assert set(counts) <= {"trained", "busy", "done"}, out
        trained += counts.get("trained", 0)
    assert trained == len(seeds), outputs
    for s in seeds:
        run = rf.run_dir(runs, s)
        assert rf.member_state(run) == "done" and not (run / rf.FAILED).exists()
        epochs = [int(r["epoch"]) for r in rf.read_metrics_csv(run / rf.METRICS_CSV)]
        assert epochs == list(range(1, EPOCHS + 1)), (s, epochs)


def _train_args(data: Path, runs: Path, members: int) -> list[object]:
    return ["ensemble", "train", "--members", members, "--data", data, "--preset", "tiny", "-o", runs,
            "--jobs", 1, "--device", "cpu"]  # fmt: skip


@pytest.mark.timeout(240)
def test_two_ensembles_one_folder_train_each_member_once(synthetic_h5, tmp_path):
    """The first process freezes in member 0's first step (holding its lock); the second trains the
    rest and reports member 0 busy; the first, let go, finishes member 0 and finds the rest done."""
    runs = tmp_path / "runs"
    args = _train_args(synthetic_h5, runs, 4)
    first = rel.popen(*args, kill="step@1!STOP")
    try:
        _wait_stopped(first)
        second = rel.qdgap(*args)
        assert re.search(r"seed 0: busy .*in use by pid \d+", second.stdout), second.stdout
        assert _summary(second.stdout) == {"trained": 3, "busy": 1}
    finally:
        with contextlib.suppress(ProcessLookupError):
            first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-2000:]
    assert _summary(out) == {"trained": 1, "done": 3}
    _check_trained_once(runs, range(4), out, second.stdout)


@pytest.mark.timeout(240)
def test_two_ensembles_started_together_train_each_member_once(synthetic_h5, tmp_path):
    """No choreography: both start at once and race for the members."""
    runs = tmp_path / "runs"
    args = _train_args(synthetic_h5, runs, 4)
    procs = [rel.popen(*args) for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-2000:]
        outs.append(out)
    _check_trained_once(runs, range(4), *outs)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("command", ["predict", "fna"])
def test_second_writer_of_one_output_refuses_while_first_works(command, run_cli, tiny_runs, synthetic_h5, tmp_path):
    out = tmp_path / f"{command}.h5"
    args = [command, "--runs", tiny_runs, "--data", synthetic_h5, "--frames", "all", "-o", out, "--device", "cpu"]
    if command == "fna":
        args += ["--every", 20]
    first = rel.popen(*args, kill="forward@1!STOP")  # frozen in its first forward, its output lock held
    try:
        _wait_stopped(first)
        r = run_cli(*args)
        assert_one_line_error(r, f"output {out}", "is in use by pid", f".{out.name}.lock")
        assert not out.exists() and not list(tmp_path.glob(f".{out.name}.*.tmp"))
    finally:
        with contextlib.suppress(ProcessLookupError):
            first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-2000:]
    fmt = schema.PREDICTIONS_FORMAT if command == "predict" else schema.FNA_FORMAT
    data, _ = read_results(out, fmt=fmt)  # the first writer's file, whole
    again = run_cli(*[a if a != out else tmp_path / "again.h5" for a in args])  # the lock was released
    assert again.exit_code == 0, again.stderr
    ref, _ = read_results(tmp_path / "again.h5", fmt=fmt)
    key = schema.GAP_PRED_EV if command == "predict" else schema.MASKED_EV
    np.testing.assert_allclose(data[key], ref[key], rtol=0, atol=1e-6)
