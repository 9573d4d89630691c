"""bench/bench_multifidelity.py's estimators and bench/xtb_gaps.py's shards on fixed inputs, where the exact
answer is known in closed form (float64)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(monkeypatch, name: str):
    monkeypatch.syspath_prepend(str(BENCH))  # the bench scripts import their siblings
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _series(seed: int = 0, n: int = 400):
    """A cheap gap x with fast wiggles and an expensive gap y = 1.2 + 0.6 x + a drift linear in time."""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64) * 10.0  # fs
    x = 1.3 + 0.05 * np.sin(t / 37.0) + 0.03 * rng.standard_normal(n)
    y = 1.2 + 0.6 * x + 2e-6 * t
    return t, x, y


def test_loo_slope_recovers_the_control_variate_coefficient():
    from qdgap.core.analysis.baselines import loo_slope

    t, x, y = _series()
    pool = np.arange(0, len(t), 7)
    # leave-one-out interpolation is exact on the drift (linear in time), so only 0.6 x departs from it
    assert loo_slope(t[pool], y[pool], x[pool]) == pytest.approx(0.6, abs=1e-10)
    assert loo_slope(t[pool], y[pool], np.ones(len(pool))) == 0.0  # a flat cheap gap carries nothing


def test_control_variate_is_exact_and_interpolation_is_not(monkeypatch):
    mf = _load(monkeypatch, "bench_multifidelity")
    t, x, y = _series(1)
    pool = np.arange(0, len(t), 10)
    rest = np.setdiff1d(np.arange(len(t)), pool)
    rest = rest[rest < pool[-1]]
    pred, sd, fit = mf.estimators(t[pool], y[pool], x[pool], t[rest], x[rest])
    scores = mf.score(pred, sd, y[rest])
    assert fit["control_variate_b"] == pytest.approx(0.6, abs=1e-10)
    assert scores["control_variate"] < 1e-9  # meV
    assert scores["linear"] > 5.0  # the fast wiggles of x move y between labels
    # Delta in time assumes b = 1: off by 0.4 times x's wiggles
    assert scores["delta_in_time"] == pytest.approx(
        1e3 * np.sqrt(np.mean((0.4 * (x[rest] - np.interp(t[rest], t[pool], x[pool]))) ** 2)), rel=1e-9
    )
    # the GP on time and xTB learns the linear relation: far below interpolation, interval not empty
    assert scores["gp_time_xtb"] < 0.2 * scores["linear"]
    assert 0.0 < scores["gp_time_xtb_coverage_pct"] <= 100.0


def test_linear_map_is_least_squares_on_the_pool(monkeypatch):
    mf = _load(monkeypatch, "bench_multifidelity")
    t, x, _ = _series(2)
    y = 0.9 - 0.3 * x
    pool = np.arange(0, len(t), 5)
    pred, _, fit = mf.estimators(t[pool], y[pool], x[pool], t, x)
    assert fit["linear_map"]["b"] == pytest.approx(-0.3, abs=1e-10)
    np.testing.assert_allclose(pred["xtb_linear_map"], y, atol=1e-12)


def test_xtb_shards_are_contiguous_and_merge_in_frame_order(monkeypatch, tmp_path):
    xg = _load(monkeypatch, "xtb_gaps")
    labelled = np.arange(0, 21, 2)
    pieces = [xg.shard_frames(labelled, i, 3) for i in range(3)]
    np.testing.assert_array_equal(np.concatenate(pieces), labelled)
    assert all(np.all(np.diff(p) == 2) for p in pieces)
    for i, p in reversed(list(enumerate(pieces))):  # written out of order on purpose
        xg._save(tmp_path / f"shard{i}of3.npz", p.tolist(), (p * 0.1).tolist(), 1.0)
    frames, gaps = xg.load_shards(tmp_path)
    np.testing.assert_array_equal(frames, labelled)
    np.testing.assert_allclose(gaps, labelled * 0.1)
    assert xg.load_shards(tmp_path / "none")[0].size == 0


def test_every_phase_of_the_pool_is_scored_and_the_right_correction_wins_in_each(monkeypatch):
    from types import SimpleNamespace

    mf = _load(monkeypatch, "bench_multifidelity")
    t, x, y = _series(3, n=600)
    y = y.copy()
    y[1::2] = np.nan  # labels on even frames only, as the real trajectory
    traj = SimpleNamespace(gap_ev=y, time_fs=t, num_frames=len(t))
    row = mf.phase_row(traj, x, 10)
    assert row["phases"] == 5  # offsets 0, 2, 4, 6, 8: the odd ones hold no label
    # exact between labels; past the last label both hold the end, where the drift leaves a trace (meV)
    assert row["corrected_lower"] == 5 and row["corrected_mean"] < 0.02 * row["linear_mean"]
    assert row["b_min"] == pytest.approx(0.6) and row["b_max"] == pytest.approx(0.6)


def test_delta_labels_subtract_the_scaled_xtb_gap_and_keep_only_frames_with_both(monkeypatch, tmp_path):
    from qdgap.core.data.trajectory import read_trajectory

    xg = _load(monkeypatch, "xtb_gaps")
    demo = BENCH.parent / "data" / "cd28se17cl22_demo.h5"
    traj = read_trajectory(demo)
    labelled = np.flatnonzero(np.isfinite(traj.gap_ev))[:5]
    xtb = np.array([1.0, 1.2, 1.4, 1.6, 1.8])
    xg._save(tmp_path / "shard0of1.npz", labelled.tolist(), xtb.tolist(), 1.0)
    for slope in (1.0, 0.54):
        out = tmp_path / f"delta{slope}.h5"
        assert xg.write_labels(demo, tmp_path, out, delta=True, slope=slope) == 5
        got = read_trajectory(out).gap_ev
        np.testing.assert_allclose(got[labelled], traj.gap_ev[labelled] - slope * xtb, rtol=0, atol=1e-6)  # float32
        assert np.isnan(np.delete(got, labelled)).all()
