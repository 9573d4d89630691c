"""The Gaussian process along a trajectory (core/analysis/gp.py): the xTB input pays where it should, the
closed-form leave-one-out equals refitting without the label (float64), blocks equal one solve, and the
interval covers what it says on a process drawn from the model."""

from __future__ import annotations

import numpy as np
import pytest

from qdgap.core.analysis import gp


def _series(seed: int, n: int = 3000):
    """1-fs frames: a slow Matern-like drift (length ~60 fs) plus 0.7 x the fast wiggles of a cheap gap x."""
    rng = np.random.default_rng(seed)
    t = np.arange(float(n))
    slow = np.convolve(rng.standard_normal(n + 400), np.hanning(120), mode="same")[200 : 200 + n]
    slow = 0.05 * slow / slow.std()
    fast = 0.04 * rng.standard_normal(n)  # uncorrelated between frames: no interpolation can follow it
    x = 1.3 + fast + 0.3 * slow  # the cheap gap shares the fast part and a little of the slow one
    y = 1.8 + slow + 0.7 * fast + 0.002 * rng.standard_normal(n)
    return t, x, y


def test_the_xtb_input_recovers_what_time_cannot_see_and_its_interval_covers():
    t, x, y = _series(0)
    labels = np.arange(0, len(t), 50)
    rest = np.setdiff1d(np.arange(len(t)), labels)
    both = gp.fit_gp(t[labels], y[labels], x[labels])
    mean, sd = gp.gp_predict(both, t[rest], t[labels], y[labels], x[rest], x[labels])
    time_only = gp.kriging_in_time(t[rest], t[labels], y[labels])
    rmse = lambda p: float(np.sqrt(np.mean((p - y[rest]) ** 2)))  # noqa: E731
    assert rmse(mean) < 0.5 * rmse(time_only), (rmse(mean), rmse(time_only))
    assert both.feature_var_ev2 > 0 and both.as_dict()["feature_sd_mev"] > 10


def test_the_interval_covers_what_it_says_on_processes_drawn_from_the_model():
    """Drawn from the prior the fit assumes (Matern 3/2 in time, 40 meV, 30 fs; 30 meV x standardised xTB;
    5 meV noise), 180 labels of 900 frames: the 95 % interval from maximum-likelihood hyperparameters covers
    93-98 % of the other frames on average over six draws (each draw's own fit: 93.6-99.2 % measured)."""
    covers = []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        n = 900
        t = np.arange(float(n))
        x = rng.standard_normal(n)
        k = 0.04**2 * gp.matern32(t, t, 30.0) + 0.03**2 * np.outer(x, x) + 0.005**2 * np.eye(n)
        y = 1.7 + np.linalg.cholesky(k) @ rng.standard_normal(n)
        labels = np.arange(0, n, 5)
        rest = np.setdiff1d(np.arange(n), labels)
        fit = gp.fit_gp(t[labels], y[labels], x[labels])
        mean, sd = gp.gp_predict(fit, t[rest], t[labels], y[labels], x[rest], x[labels])
        covers.append(np.mean(np.abs(mean - y[rest]) <= 1.96 * sd))
    assert 0.93 <= np.mean(covers) <= 0.98, covers
    assert min(covers) >= 0.85, covers


def test_leave_one_out_in_closed_form_equals_conditioning_on_the_others():
    t, x, y = _series(1, n=400)
    labels = np.arange(0, 400, 10)
    fit = gp.fit_gp(t[labels], y[labels], x[labels])
    mean, sd = gp.gp_loo(fit, t[labels], y[labels], x[labels])
    for i in (0, 7, 20, len(labels) - 1):
        keep = np.delete(labels, i)
        m, s = gp.gp_predict(fit, t[labels[i : i + 1]], t[keep], y[keep], x[labels[i : i + 1]], x[keep])
        np.testing.assert_allclose([mean[i], sd[i]], [m[0], s[0]], rtol=0, atol=1e-9)  # eV


def test_blocks_with_the_xtb_input_match_one_solve(monkeypatch):
    t, x, y = _series(2, n=1200)
    labels = np.arange(0, 1200, 4)
    query = np.setdiff1d(np.arange(1200), labels)
    fit = gp.fit_gp(t[labels], y[labels], x[labels])
    one = gp.gp_predict(fit, t[query], t[labels], y[labels], x[query], x[labels])
    monkeypatch.setattr(gp, "KRIGING_BLOCK", 60)
    monkeypatch.setattr(gp, "KRIGING_OVERLAP", 40)
    blocks = gp.gp_predict(fit, t[query], t[labels], y[labels], x[query], x[labels])
    # The linear part couples labels however far apart: blocks are an approximation, here within 2 meV
    # (without features they agree to rounding: test_baselines).
    np.testing.assert_allclose(blocks[0], one[0], atol=2e-3)
    np.testing.assert_allclose(blocks[1], one[1], atol=2e-3)


def test_without_features_the_process_is_kriging_in_time():
    t, _, y = _series(3, n=600)
    labels = np.arange(0, 600, 20)
    fit = gp.fit_gp(t[labels], y[labels])
    assert fit.feature_var_ev2 == 0.0 and fit.feature_mean == ()
    mean, _ = gp.gp_predict(fit, t, t[labels], y[labels])
    np.testing.assert_array_equal(mean, gp.kriging_in_time(t, t[labels], y[labels]))
    assert fit.length_fs >= 20.0 - 1e-9  # time alone: the length stays at or above the label spacing


def test_features_must_match_the_fit():
    t, x, y = _series(4, n=300)
    labels = np.arange(0, 300, 10)
    with_x = gp.fit_gp(t[labels], y[labels], x[labels])
    with pytest.raises(ValueError, match="exactly when"):
        gp.gp_predict(with_x, t, t[labels], y[labels])
    with pytest.raises(ValueError, match="exactly when"):
        gp.gp_predict(gp.fit_gp(t[labels], y[labels]), t, t[labels], y[labels], x, x[labels])
