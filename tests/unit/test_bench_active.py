"""bench/bench_active.py's scoring on planted predictions: every arm on the same frames, each beside
interpolation of its own labels (float64, exact answers)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_active", BENCH / "bench_active.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arms_are_scored_on_frames_outside_every_arms_labels_beside_their_own_interpolation(monkeypatch):
    from qdgap.core.common import schema
    from qdgap.core.data import trajectory
    from qdgap.core.store import results

    b = _bench(monkeypatch)
    n = 101
    t = np.arange(n, dtype=np.float64)  # fs
    gap = 2.0 + 0.001 * t + 0.02 * np.sin(t / 3.0)  # eV: interpolation misses the wiggle
    traj = SimpleNamespace(gap_ev=gap, time_fs=t)
    pools = {Path("grid/runs"): np.arange(0, n, 20), Path("chosen/runs"): np.array([0, 7, 33, 60, 100])}
    offsets = {"grid": 0.010, "chosen": -0.005}  # eV: each ensemble is the truth shifted by a constant

    def fake_pred(path, fmt):
        off = offsets[Path(path).parent.name]
        members = np.stack([gap + off - 0.001, gap + off + 0.001])
        return {schema.FRAME_INDEX: np.arange(n), schema.GAP_MEAN_EV: gap + off, schema.GAP_PRED_EV: members}, {}

    monkeypatch.setattr(trajectory, "read_trajectory", lambda path: traj)
    monkeypatch.setattr(results, "read_results", fake_pred)
    monkeypatch.setattr(b, "pool_of", lambda runs: pools[Path(runs)])
    rec = b.score({"grid": Path("grid/runs"), "chosen": Path("chosen/runs")}, Path("x.h5"))
    scored = np.setdiff1d(np.arange(n), np.concatenate(list(pools.values())))
    assert rec["scored_frames"] == len(scored) == n - 8
    grid, chosen = rec["rows"]
    assert grid["ensemble_rmse_mev"] == pytest.approx(10.0)
    assert chosen["ensemble_rmse_mev"] == pytest.approx(5.0)
    assert grid["member_rmse_mev"] == pytest.approx([9.0, 11.0])
    assert grid["hybrid_rmse_mev"] == pytest.approx(0.0, abs=1e-9)  # a constant offset is all in the residuals
    for row, pool in ((grid, pools[Path("grid/runs")]), (chosen, pools[Path("chosen/runs")])):
        interp = np.interp(t[scored], t[pool], gap[pool])
        assert row["linear_rmse_mev"] == pytest.approx(1e3 * np.sqrt(np.mean((interp - gap[scored]) ** 2)))
        assert row["coverage95"] is None  # no interval in these predictions
    assert chosen["largest_gap_fs"] == 40 and grid["median_gap_fs"] == 20
