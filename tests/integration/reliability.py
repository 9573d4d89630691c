"""Helpers shared by the reliability tests: qdgap as a real subprocess, and checks that compare what
a (possibly killed) run left behind with an uninterrupted reference run, bit for bit on the CPU.

Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from qdgap.core.common import schema
from qdgap.core.common.files import sha256_file
from qdgap.core.store import runs as rf
from qdgap.core.store.results import read_results
from qdgap.testing.faults import ENV as KILL_ENV

ROOT = Path(__file__).resolve().parents[2]
RUN_FILES = {
    rf.CONFIG_JSON,
    rf.SPLIT_JSON,
    rf.METRICS_CSV,
    rf.CHECKPOINT_PT,
    rf.BEST_PT,
    rf.MODEL_TS,
    rf.TEST_METRICS_JSON,
    rf.DONE,
}
PROC_TIMEOUT_S = 180  # one qdgap process; the tests' own pytest timeouts bound the whole


def env(kill: str | None = None) -> dict[str, str]:
    """The environment of a qdgap subprocess: one torch thread (bitwise-reproducible CPU runs), the
    ``QDGAP_TEST_KILL`` rule when given (``qdgap/testing/faults.py``)."""
    e = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT), COLUMNS="200")
    if kill:
        e[KILL_ENV] = kill
    return e


def qdgap(*args: object, kill: str | None = None, expect: int | None = 0) -> subprocess.CompletedProcess:
    """Run ``python -m qdgap ARGS`` to its end (or its self-inflicted kill); check the exit code.

    ``kill`` is a ``QDGAP_TEST_KILL`` rule; with one, the expected exit is -9 (killed by SIGKILL)
    unless ``expect`` says otherwise. ``expect=None`` checks nothing.
    """
    if kill and expect == 0:
        expect = -9
    proc = subprocess.run(
        [sys.executable, "-m", "qdgap", *map(str, args)],
        env=env(kill),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=PROC_TIMEOUT_S,
    )
    if expect is not None:
        assert proc.returncode == expect, (args, kill, proc.returncode, proc.stderr[-3000:])
    return proc


def popen(*args: object, kill: str | None = None) -> subprocess.Popen:
    """Start ``python -m qdgap ARGS`` without waiting."""
    return subprocess.Popen(
        [sys.executable, "-m", "qdgap", *map(str, args)],
        env=env(kill),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# ==========================================================================
# Comparing with the uninterrupted reference
# ==========================================================================


def assert_same(a, b, where: str) -> None:
    """Equal bit for bit: tensors, arrays, and the dicts/lists/scalars holding them."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b) or (
            a.is_floating_point() and torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
        ), where
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.shape == b.shape, where
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, set(a) ^ set(b))
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and np.isnan(a):
        assert isinstance(b, float) and np.isnan(b), where
    else:
        assert a == b, (where, a, b)


def load_pt(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def ts_state(path: Path) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in torch.jit.load(str(path), map_location="cpu").state_dict().items()}


def metrics_rows(rows: list[dict]) -> list[dict]:
    """Per-epoch metrics without the wall-clock column."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def check_run(run: Path, ref: Path, *, final: bool) -> None:
    """What a member folder holds after a kill (or at the end) agrees with the reference member.

    Every file present is complete and equal to the reference's (metrics and checkpoints: equal to
    the reference's first epochs); a member with DONE loads and its model.ts matches its sha256.
    """
    if final:
        assert (run / rf.DONE).is_file(), run
    if not run.exists():
        return
    visible = {p.name for p in run.iterdir() if not p.name.startswith(".")}
    assert visible <= RUN_FILES, (run, visible - RUN_FILES)
    if final:
        assert visible == RUN_FILES, (run, RUN_FILES - visible)
        assert not list(run.glob(".*.tmp")), list(run.glob(".*.tmp"))
    if (run / rf.CONFIG_JSON).exists():
        assert (
            json.loads((run / rf.CONFIG_JSON).read_text())["seed"]
            == json.loads((ref / rf.CONFIG_JSON).read_text())["seed"]
        )
    if (run / rf.SPLIT_JSON).exists():
        assert rf.read_json(run / rf.SPLIT_JSON) == rf.read_json(ref / rf.SPLIT_JSON)
    ref_rows = metrics_rows(rf.read_metrics_csv(ref / rf.METRICS_CSV))
    if (run / rf.METRICS_CSV).exists():
        rows = metrics_rows(rf.read_metrics_csv(run / rf.METRICS_CSV))
        assert rows and [r["epoch"] for r in rows] == list(range(1, len(rows) + 1)), run
        assert_same(rows, ref_rows[: len(rows)], f"{run}/metrics.csv")
        if final:
            assert len(rows) == len(ref_rows), run
    if (run / rf.CHECKPOINT_PT).exists():
        ck, ref_ck = load_pt(run / rf.CHECKPOINT_PT), load_pt(ref / rf.CHECKPOINT_PT)
        assert_same(
            metrics_rows(ck["metrics"]), metrics_rows(ref_ck["metrics"])[: ck["epoch"]], f"{run}/checkpoint.pt metrics"
        )
        if ck["epoch"] == len(ref_rows):
            for key in ("model", "optimizer", "scheduler", "best_state", "best_epoch", "best_val_mae_mev"):
                assert_same(ck[key], ref_ck[key], f"{run}/checkpoint.pt[{key}]")
    if (run / rf.BEST_PT).exists():
        assert_same(load_pt(run / rf.BEST_PT), load_pt(ref / rf.BEST_PT), f"{run}/best.pt")
    if (run / rf.MODEL_TS).exists():
        assert_same(ts_state(run / rf.MODEL_TS), ts_state(ref / rf.MODEL_TS), f"{run}/model.ts")
    if (run / rf.TEST_METRICS_JSON).exists():
        assert rf.read_json(run / rf.TEST_METRICS_JSON) == rf.read_json(ref / rf.TEST_METRICS_JSON)
    if (run / rf.DONE).exists():
        member = rf.load_member(run)
        assert sha256_file(run / rf.MODEL_TS) == member.model_sha256


def check_runs(runs: Path, ref: Path, *, final: bool) -> None:
    """``check_run`` for every member of the reference ensemble."""
    ref_runs = rf.member_dirs(ref)
    assert ref_runs
    if runs.exists():
        assert {p.name for p in rf.member_dirs(runs)} <= {p.name for p in ref_runs}
    for ref_run in ref_runs:
        check_run(runs / ref_run.name, ref_run, final=final)


def check_results(path: Path, ref: Path, fmt: str, *, final: bool) -> None:
    """A result file is absent (refused) or complete and equal to the reference, dataset by dataset."""
    if not path.exists():
        assert not final, f"{path} missing"
        return
    data, _ = read_results(path, fmt=fmt)
    ref_data, _ = read_results(ref, fmt=fmt)
    assert_same({k: np.asarray(v) if v.dtype.kind != "O" else list(v) for k, v in data.items()},
                {k: np.asarray(v) if v.dtype.kind != "O" else list(v) for k, v in ref_data.items()}, str(path))  # fmt: skip


def check_text(path: Path, ref: Path, *, final: bool, drop_columns: tuple[str, ...] = ()) -> None:
    """A CSV is absent or equal to the reference (bar ``drop_columns``, e.g. wall-clock times)."""
    if not path.exists():
        assert not final, f"{path} missing"
        return

    def rows(p: Path) -> list[dict]:
        with open(p, newline="") as fh:
            return [{k: v for k, v in r.items() if k not in drop_columns} for r in csv.DictReader(fh)]

    assert rows(path) == rows(ref), path


def check_no_visible_partials(folder: Path) -> None:
    """Temporary files are hidden (``.name.XXXX.tmp``): nothing visible is ever half-written."""
    for p in folder.rglob("*"):
        if p.name.endswith(".tmp"):
            assert p.name.startswith("."), p


def check_prediction_outputs(h5: Path, ref_h5: Path, *, final: bool) -> None:
    check_results(h5, ref_h5, schema.PREDICTIONS_FORMAT, final=final)
    check_text(h5.with_suffix(".csv"), ref_h5.with_suffix(".csv"), final=final)
