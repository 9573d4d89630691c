"""Baselines with known answers: interpolation in time, nearest label, persistence, distance bins, correlation time."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qdgap.core.analysis import baselines as bl
from qdgap.core.analysis import gp
from qdgap.core.data.timeseries import autocorrelation_at, correlation_time_fs


def test_linear_series_is_interpolated_exactly_and_nearest_error_is_the_slope_times_the_distance():
    t = np.arange(0.0, 1001.0)  # fs
    gap = 1.7 + 2e-4 * t  # eV: a slope of 0.2 meV per fs
    labels = np.arange(0, 1001, 10)
    query = np.setdiff1d(np.arange(1001), labels)
    pred = bl.baseline_predictions(t[query], t[labels], gap[labels], corr_time_fs=50.0)
    np.testing.assert_allclose(pred["linear"], gap[query], atol=1e-12)
    np.testing.assert_allclose(pred["pchip"], gap[query], atol=1e-12)
    # nearest: error = slope x distance to the nearest label (1..5 fs, a tie at 5 fs either side)
    d = bl.distance_to_labels_fs(t[query], t[labels])
    np.testing.assert_array_equal(np.sort(np.unique(d)), [1, 2, 3, 4, 5])
    np.testing.assert_allclose(np.abs(pred["nearest"] - gap[query]), 2e-4 * d, atol=1e-12)
    expected_rmse = 0.2 * math.sqrt(np.mean(d**2))  # meV
    scores = bl.score_against_baselines(gap[query], pred["nearest"], {"linear": pred["linear"]})
    assert scores[0].rmse_mev == pytest.approx(expected_rmse, rel=1e-9)
    assert scores[1].rmse_mev == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(pred["mean"], gap[labels].mean())


def test_sine_interpolation_error_matches_first_order_theory():
    # Linear interpolation of A sin(w t) at spacing h: error (A w^2 / 2) sin(w t) u (h - u), u in [0, h),
    # so its RMSE over many periods is A w^2 / 2 sqrt(<(u (h - u))^2> / 2) (A w^2 h^2 / (2 sqrt(60)) for continuous u).
    amp, period, h = 0.05, 400.0, 20.0  # eV, fs, fs
    w = 2 * math.pi / period
    t = np.arange(0.0, 40_001.0)  # the last frame is a label: no frame lies past the labels
    gap = 1.7 + amp * np.sin(w * t)
    labels = np.arange(0, len(t), int(h))
    query = np.setdiff1d(np.arange(len(t)), labels)
    pred = bl.baseline_predictions(t[query], t[labels], gap[labels], corr_time_fs=period / 4)
    rmse = math.sqrt(np.mean((pred["linear"] - gap[query]) ** 2))
    # over the query frames only (offsets u = 1..h-1 fs from a label; the labels themselves are exact)
    u = np.arange(1, int(h))
    expected = amp * w**2 / 2 * math.sqrt(0.5 * np.mean((u * (h - u)) ** 2))
    assert rmse == pytest.approx(expected, rel=0.02)


def test_persistence_holds_the_mean_of_the_last_correlation_time_past_the_end():
    t_lab = np.arange(0.0, 100.0, 10.0)  # labels at 0..90 fs
    g_lab = np.arange(10.0)  # eV, rising
    query = np.array([95.0, 200.0, -5.0, 45.0])
    pred = bl.baseline_predictions(query, t_lab, g_lab, corr_time_fs=25.0)
    after = g_lab[t_lab >= 65.0].mean()  # labels within 25 fs of the last one
    before = g_lab[t_lab <= 25.0].mean()
    np.testing.assert_allclose(pred["persistence"], [after, after, before, 4.5])
    np.testing.assert_allclose(pred["linear"][:3], [9.0, 9.0, 0.0])  # numpy.interp holds the end labels


def test_report_keeps_persistence_only_when_a_scored_frame_lies_past_the_labels():
    t = np.arange(0.0, 500.0)
    gap = 1.7 + 0.01 * np.sin(t / 30.0)
    inside = bl.baseline_report(t[5:400:7], gap[5:400:7], gap[5:400:7], t[0:401:20], gap[0:401:20], label_source="x")
    past = bl.baseline_report(t[405:], gap[405:], gap[405:], t[0:401:20], gap[0:401:20], label_source="x")
    assert "persistence" not in [s.name for s in inside.scores]
    assert "persistence" in [s.name for s in past.scores]
    assert inside.scores[0].name == "model" and math.isnan(inside.scores[0].skill)


def test_skill_and_verdict_say_who_wins():
    truth = np.array([1.0, 1.1, 1.2, 1.3])
    good, bad = truth + 0.001, truth + 0.1
    scores = bl.score_against_baselines(truth, good, {"mean": bad})
    assert scores[1].skill == pytest.approx(1 - 1.0 / 100.0)
    assert "beats" in bl.verdict(scores)
    scores = bl.score_against_baselines(truth, bad, {"linear": good})
    assert scores[1].skill == pytest.approx(1 - 100.0)
    assert "better than the model" in bl.verdict(scores)


def test_distance_bins_add_up_to_the_frame_count():
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 5000, 700))
    labels = np.sort(rng.choice(5000, 40, replace=False)).astype(float)
    d = bl.distance_to_labels_fs(t, labels)
    truth = np.where(rng.random(700) < 0.1, np.nan, 1.7)  # some frames without a label are left out
    bins = bl.error_by_distance(d, truth, {"model": np.full(700, 1.71)}, corr_time_fs=50.0)
    assert bins.frames.sum() == np.isfinite(truth).sum()
    assert np.isinf(bins.edges_fs[-1]) and bins.edges_fs[0] == 0
    filled = bins.frames > 0
    np.testing.assert_allclose(bins.rmse_mev["model"][filled], 10.0)
    assert np.isnan(bins.rmse_mev["model"][~filled]).all()


def test_correlation_time_of_an_ar1_series():
    tau = 40.0  # fs
    phi = math.exp(-1.0 / tau)
    rng = np.random.default_rng(3)
    x = np.zeros(200_000)
    noise = rng.normal(size=len(x))
    for i in range(1, len(x)):
        x[i] = phi * x[i - 1] + noise[i]
    t = np.arange(len(x), dtype=float)
    assert correlation_time_fs(t, x) == pytest.approx(tau, rel=0.1)
    # sampled every 2 fs (as the study's labels are), the estimate holds
    assert correlation_time_fs(t[::2], x[::2]) == pytest.approx(tau, rel=0.1)
    np.testing.assert_allclose(autocorrelation_at(t, x, [0.0, tau]), [1.0, math.exp(-1)], atol=0.05)
    assert math.isnan(correlation_time_fs(t[:3], x[:3]))


def _smooth_process(seed: int, n: int = 3000, length_fs: float = 60.0) -> tuple[np.ndarray, np.ndarray]:
    """A stationary smooth gap series (1 fs frames): a sum of random sines with periods about 2 pi length."""
    rng = np.random.default_rng(seed)
    t = np.arange(float(n))
    w = rng.normal(0.0, 1.0 / length_fs, 40)
    phase = rng.uniform(0, 2 * np.pi, 40)
    gap = 1.7 + 0.1 / np.sqrt(40) * np.cos(np.outer(t, w) + phase).sum(axis=1)
    return t, gap


def test_kriging_beats_linear_interpolation_on_a_smooth_series_and_reverts_to_the_mean_far_away():
    t, gap = _smooth_process(0)
    labels = np.arange(0, 2000, 20)
    between = np.setdiff1d(np.arange(2000), labels)
    pred = bl.baseline_predictions(t[between], t[labels], gap[labels], corr_time_fs=50.0)
    krig, lin = (np.sqrt(np.mean((pred[k] - gap[between]) ** 2)) for k in ("kriging", "linear"))
    assert krig < 0.5 * lin, (krig, lin)  # a smooth series: kriging's cubic-like curve beats straight lines
    far = bl.kriging_in_time(np.array([1e6]), t[labels], gap[labels])
    assert far[0] == pytest.approx(gap[labels].mean(), abs=1e-9)


def test_kriging_degenerate_labels_give_their_mean():
    t = np.array([0.0, 10.0])
    np.testing.assert_allclose(bl.kriging_in_time(np.array([5.0]), t, np.array([1.0, 2.0])), [1.5])
    t = np.arange(0.0, 50.0, 10.0)
    np.testing.assert_allclose(bl.kriging_in_time(np.array([5.0, 100.0]), t, np.full(5, 1.8)), [1.8, 1.8])


def test_kriging_in_blocks_matches_one_solve(monkeypatch):
    """With more labels than a block, overlapping blocks give what one solve over all labels gives
    (the neighbours beyond the overlap are many correlation lengths away)."""
    t, gap = _smooth_process(1, n=1200, length_fs=15.0)
    labels = np.arange(0, 1200, 4)  # 300 labels
    query = np.setdiff1d(np.arange(1200), labels)
    one = bl.kriging_in_time(t[query], t[labels], gap[labels])
    monkeypatch.setattr(gp, "KRIGING_BLOCK", 60)
    monkeypatch.setattr(gp, "KRIGING_OVERLAP", 40)
    blocks = bl.kriging_in_time(t[query], t[labels], gap[labels])
    np.testing.assert_allclose(blocks, one, atol=1e-6)  # eV


def test_xtb_corrected_interpolation_is_exact_when_the_gap_follows_the_cheap_one_plus_a_linear_drift():
    t = np.arange(0.0, 2001.0)  # fs
    rng = np.random.default_rng(0)
    xtb = 1.3 + 0.05 * np.sin(t / 9.0) + 0.01 * rng.standard_normal(len(t))  # eV: fast wiggles
    gap = 0.35 + 0.7 * xtb + 1e-5 * t  # PBE: 0.7 of xTB's wiggles plus a slow drift
    labels = np.arange(0, 2001, 100)
    query = np.setdiff1d(np.arange(2001), labels)
    pred = bl.baseline_predictions(
        t[query], t[labels], gap[labels], corr_time_fs=50.0, xtb_ev=xtb[query], label_xtb_ev=xtb[labels]
    )
    np.testing.assert_allclose(pred["xtb_corrected"], gap[query], atol=1e-12)
    assert bl.xtb_corrected(t[query], xtb[query], t[labels], gap[labels], xtb[labels])[1] == pytest.approx(0.7)
    assert bl.rmse_mev(pred["linear"] - gap[query]) > 20.0  # meV: interpolation misses the wiggles
    # without cheap gaps there is no such row; a frame without one, or fewer than three labels, drops it
    assert "xtb_corrected" not in bl.baseline_predictions(t[query], t[labels], gap[labels], corr_time_fs=50.0)
    holed = xtb[query].copy()
    holed[3] = np.nan
    assert bl.xtb_corrected(t[query], holed, t[labels], gap[labels], xtb[labels]) is None
    two = np.full(len(labels), np.nan)
    two[:2] = xtb[labels[:2]]
    assert bl.xtb_corrected(t[query], xtb[query], t[labels], gap[labels], two) is None
    # in the report it is one more row; the model is scored on the same frames as without it
    with_row = bl.baseline_report(t[query], gap[query], xtb[query], t[labels], gap[labels], label_source="x",
                                  xtb_ev=xtb[query], label_xtb_ev=xtb[labels])  # fmt: skip
    without = bl.baseline_report(t[query], gap[query], xtb[query], t[labels], gap[labels], label_source="x")
    names = [s.name for s in with_row.scores]
    assert names == [s.name for s in without.scores] + ["xtb_corrected", "gp_xtb"]
    gp_row = next(s for s in with_row.scores if s.name == "gp_xtb")
    linear_row = next(s for s in with_row.scores if s.name == "linear")
    assert gp_row.rmse_mev < 0.2 * linear_row.rmse_mev  # the process finds the xTB wiggles too
    first, first_without = with_row.scores[0], without.scores[0]
    assert (first.rmse_mev, first.frames) == (first_without.rmse_mev, first_without.frames)
    assert bl.best_baseline(with_row.scores).name == "xtb_corrected"
