"""Calibration of the ensemble spread on synthetic members whose errors and label noise are known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qdgap.core.analysis import calibration as cb
from qdgap.core.common import metrics
from qdgap.core.common.errors import QdgapError
from qdgap.core.data.splits import split_frames

NUM_FRAMES = 3000
STRIDE = 5  # pool of 600 frames, ~560 held out by two or more members
MEMBERS = 20
SHARED = 0.3  # label noise variance, in units of the members' own variance


def _synthetic(seed: int = 0, members: int = MEMBERS, shared: float = SHARED):
    """A trajectory whose labels carry noise of known size, and M members' predictions of it.

    The member spread sigma(t) wanders between 5 and 30 meV along the trajectory. Every member
    predicts the noise-free gap plus its own error N(0, sigma^2); the labels add noise
    N(0, shared sigma^2), which no member can know. On its own training frames a member
    sits on the label (within 1 meV). The raw spread is then too wide: the mean errs by
    sqrt(shared + 1/M) sigma, about 0.57 sigma here.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(NUM_FRAMES, dtype=np.float64)
    sigma = 0.005 + 0.025 * (0.5 + 0.5 * np.sin(t / 170.0) * np.cos(t / 53.0))  # eV
    clean = 2.0 + 0.05 * np.sin(t / 40.0)
    labels = clean + rng.normal(0.0, np.sqrt(shared) * sigma)
    pred = clean + rng.normal(0.0, 1.0, (members, NUM_FRAMES)) * sigma
    splits = []
    for m in range(members):
        split = split_frames(labels.astype(np.float32), seed=m, stride=STRIDE)
        pred[m, split.train] = labels[split.train] + rng.normal(0.0, 0.001, len(split.train))
        splits.append(split.to_json())
    return labels, pred, splits


def _fit(labels, pred, splits):
    pool = np.unique(np.concatenate([np.concatenate(list(s.values())) for s in splits]))
    held = cb.held_out_predictions(splits, pool, labels[pool], pred[:, pool])
    return cb.fit_calibration(held, num_members=pred.shape[0])


def test_held_out_uses_only_members_that_held_the_frame_out():
    labels, pred, splits = _synthetic()
    frames = np.unique(np.concatenate([s["val"] for s in splits]))
    held = cb.held_out_predictions(splits, frames, labels[frames], pred[:, frames])
    assert len(held.frame_index) > 100 and (held.num_honest >= 2).all()
    for j, f in enumerate(held.frame_index[:20]):
        honest = [m for m, s in enumerate(splits) if f in s["val"] or f in s["test"]]
        assert f not in np.concatenate([splits[m]["train"] for m in honest])
        assert held.num_honest[j] == len(honest)
        np.testing.assert_allclose(held.mean_ev[j], pred[honest, f].mean(), atol=1e-12)
        np.testing.assert_allclose(held.std_ev[j], pred[honest, f].std(ddof=1), atol=1e-12)
    never = cb.held_out_predictions(splits, frames, labels[frames], pred[:, frames], parts=("train",))
    assert len(never.frame_index) > 0  # the function itself does what it is told; the default is what matters
    assert cb.HELD_OUT_PARTS == ("val", "test")


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_calibration_coverage_on_held_out_frames(seed):
    labels, pred, splits = _synthetic(seed)
    cal = _fit(labels, pred, splits)
    assert cal.shared == pytest.approx(SHARED, abs=0.15)
    pool = np.unique(np.concatenate([np.concatenate(list(s.values())) for s in splits]))
    unseen = np.setdiff1d(np.arange(NUM_FRAMES), pool)
    mean, std = pred[:, unseen].mean(0), pred[:, unseen].std(0)
    summary = cb.calibration_summary(labels[unseen], mean, std, cal)
    assert summary["coverage95_raw"] > 0.99 and summary["coverage68_raw"] > 0.85  # too wide before
    assert 0.90 <= summary["coverage95_cal"] <= 0.99
    assert 0.60 <= summary["coverage68_cal"] <= 0.76
    assert 0.90 <= summary["coverage95_conformal"] <= 0.99
    assert summary["miscal_area_cal"] < summary["miscal_area_raw"]
    assert summary["spearman_std_abs_err"] > 0.2  # larger spread, larger errors


def test_calibration_interval_and_flags():
    labels, pred, splits = _synthetic()
    cal = _fit(labels, pred, splits)
    mean = np.array([2.0, 2.0, 2.0])
    std = np.array([0.0, 0.01, 10.0])
    out = cb.apply_calibration(cal, mean, std, level=0.95)
    np.testing.assert_allclose(out.std_ev, std * cal.scale, rtol=1e-6)
    np.testing.assert_allclose(out.hi_ev - mean, 1.959964 * std * cal.scale, rtol=1e-5)
    assert out.extrapolating.tolist() == [False, False, True]
    conf = cb.apply_calibration(cal, mean, std, level=0.95, method="conformal")
    assert conf.method == "conformal" and np.all(conf.hi_ev >= mean)
    with pytest.raises(QdgapError, match="--level"):
        cb.apply_calibration(cal, mean, std, level=1.5)


def test_conformal_interval_is_unbounded_on_too_few_calibration_frames(capsys):
    """With n calibration frames the split-conformal 95 % quantile needs rank ceil(0.95 (n + 1)) <= n, i.e.
    n >= 19: below that the interval is unbounded, its coverage undefined (NaN, not 100 %), and the
    command's line says why instead of printing "nan"."""
    import dataclasses

    from qdgap.cli import render

    labels, pred, splits = _synthetic()
    cal = _fit(labels, pred, splits)
    for n, bounded in ((18, False), (19, True)):
        few = dataclasses.replace(cal, scores=cal.scores[:: len(cal.scores) // n][:n], n_frames=n)
        assert len(few.scores) == n
        assert np.isfinite(few.half_width(0.95, "conformal")) == bounded
        mean, std = pred.mean(0), pred.std(0)
        summary = cb.calibration_summary(labels, mean, std, few)
        assert np.isnan(summary["coverage95_conformal"]) != bounded
        assert np.isfinite(summary["coverage68_conformal"])
        summary.update(
            n_extrapolating=0, extrapolation_threshold_mev=1.0, calibration_scale=few.scale, calibration_frames=n,
            threshold_frames="between",
        )  # fmt: skip
        render._print_calibration(NUM_FRAMES, summary)
        line = capsys.readouterr().out
        assert "nan" not in line
        assert ("unbounded: 18 calibration frames, 19 needed at 95 %" in line) != bounded


def test_calibration_json_roundtrip():
    labels, pred, splits = _synthetic()
    cal = _fit(labels, pred, splits)
    back = cb.Calibration.from_json(json.loads(json.dumps(cal.to_json())))
    assert back == cal
    with pytest.raises(QdgapError, match="not a qdgap calibration"):
        cb.Calibration.from_json({"format": "x"})


def test_calibration_refuses_too_few_frames():
    labels, pred, splits = _synthetic(members=3)
    frames = np.unique(np.concatenate([s["val"] for s in splits]))[:5]
    held = cb.held_out_predictions(splits, frames, labels[frames], pred[:, frames])
    with pytest.raises(QdgapError, match="train more members"):
        cb.fit_calibration(held, num_members=3)


def test_miscalibration_area_is_zero_for_gaussian_errors():
    rng = np.random.default_rng(0)
    std = rng.uniform(0.01, 0.03, 20000)
    err = rng.normal(0.0, std)
    assert metrics.miscalibration_area(err, std) < 0.01
    assert metrics.miscalibration_area(err, 3 * std) > 0.2
