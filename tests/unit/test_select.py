"""Frame selection: never a pool frame, never twice, the separation kept, the same picks for the same seed."""

from __future__ import annotations

import numpy as np
import pytest

from qdgap.core.analysis import select as sl
from qdgap.core.common.errors import QdgapError


def _candidates(n: int = 400, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    std = 0.01 + 0.02 * np.exp(-(((t - 120) / 6.0) ** 2)) + rng.uniform(0, 0.002, n)  # one sharp excursion
    pos = np.cumsum(rng.normal(0, 0.01, (n, 6, 3)), axis=0) + np.arange(18).reshape(6, 3)
    return t, std, sl.pairwise_distance_descriptors(pos)


@pytest.mark.parametrize("strategy", sl.STRATEGIES)
def test_choose_unique_separated_and_reproducible(strategy):
    t, std, desc = _candidates()
    a = sl.choose(t, std, budget=20, strategy=strategy, min_separation_fs=7.0, seed=3, descriptors=desc)
    b = sl.choose(t, std, budget=20, strategy=strategy, min_separation_fs=7.0, seed=3, descriptors=desc)
    assert len(a) == 20 and len(set(a.tolist())) == 20
    np.testing.assert_array_equal(a, b)
    gaps = np.diff(np.sort(t[a]))
    assert gaps.min() >= 7.0


def test_choose_spread_is_not_one_excursion():
    t, std, _ = _candidates()
    picked = sl.choose(t, std, budget=10, strategy="spread", min_separation_fs=None)
    assert abs(t[picked[0]] - 120) <= 1  # the largest spread first
    assert np.sum(np.abs(t[picked] - 120) < 20) <= 2  # then elsewhere, not the neighbours of the peak
    unseparated = sl.choose(t, std, budget=10, strategy="spread", min_separation_fs=0)
    assert np.all(np.abs(t[unseparated] - 120) < 20)


def test_choose_random_depends_on_seed():
    t, std, _ = _candidates()
    a = sl.choose(t, std, budget=10, strategy="random", seed=0)
    b = sl.choose(t, std, budget=10, strategy="random", seed=1)
    assert set(a.tolist()) != set(b.tolist())


def test_choose_grid_is_even():
    t, std, _ = _candidates()
    picked = np.sort(t[sl.choose(t, std, budget=5, strategy="grid")])
    np.testing.assert_allclose(picked, [0, 100, 200, 299, 399], atol=1)


def test_choose_refusals():
    t, std, _ = _candidates(50)
    with pytest.raises(QdgapError, match="--strategy"):
        sl.choose(t, std, budget=3, strategy="best")
    with pytest.raises(QdgapError, match="only 50 candidate"):
        sl.choose(t, std, budget=51)
    with pytest.raises(QdgapError, match="fit 30 fs apart"):
        sl.choose(t, std, budget=5, min_separation_fs=30)


def test_candidates_never_in_a_pool():
    gap = np.full(100, 1.5, np.float32)
    gap[::7] = np.nan
    pools = [np.arange(0, 100, 10), np.arange(5, 100, 10)]
    frames = sl.candidate_frames(pools, gap, which="labelled", exclude=[1, 2])
    assert not set(frames.tolist()) & set(np.concatenate(pools).tolist())
    assert not set(frames.tolist()) & {1, 2}
    assert np.isfinite(gap[frames]).all()
    unl = sl.candidate_frames(pools, gap, which="unlabelled")
    assert np.isnan(gap[unl]).all()


def test_read_selection_and_frames_from(tmp_path):
    gap = np.full(20, 2.0, np.float32)
    gap[3] = np.nan
    good = tmp_path / "sel.csv"
    good.write_text("rank,frame_index,time_fs\n1,5,5.0\n2,9,9.0\n3,1,1.0\n")
    assert sl.frames_from(good, gap) == (1, 5, 9)
    for text, match in [
        ("rank,frame\n1,5\n", "no frame_index column"),
        ("frame_index\n2.5\n", "not a frame index"),
        ("frame_index\n", "no frames"),
        ("frame_index\n3\n", "frame 3 has no gap"),
        ("frame_index\n20\n", "outside the trajectory"),
        ("frame_index\n4\n4\n", "more than once"),
    ]:
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(QdgapError, match=match):
            sl.frames_from(bad, gap)


@pytest.mark.parametrize("strategy", sl.STRATEGIES)
def test_auto_separation_steps_down_when_the_budget_is_most_of_the_candidates(strategy):
    """K = 200 of 280 frames on a 10 fs label grid (the real extension's bench): half the even spacing
    (12.5 fs) fits only about 140, so auto lowers the separation to the largest spacing that fits."""
    rng = np.random.default_rng(4)
    t = np.sort(rng.choice(np.arange(500) * 10.0, size=280, replace=False))  # 0-4990 fs
    std = rng.random(280)
    desc = rng.random((280, 6)).astype(np.float32)
    order, sep = sl.choose_separated(t, std, budget=200, strategy=strategy, descriptors=desc, seed=1)
    assert len(order) == len(set(order.tolist())) == 200
    assert sep < sl.auto_separation_fs(t, 200) and sep % 10 == 0 and sep >= 10
    gaps = np.diff(np.sort(t[order]))
    assert gaps.min() >= sep
    # One step above does not fit: the separation kept is the largest that does.
    with pytest.raises(QdgapError, match="fit"):
        sl.choose(t, std, budget=200, strategy=strategy, min_separation_fs=sep + 10, descriptors=desc, seed=1)
    # A separation the user gives is kept as given, and refused when it does not fit.
    with pytest.raises(QdgapError, match="lower --min-separation-fs"):
        sl.choose(t, std, budget=200, strategy=strategy, min_separation_fs=12.5, descriptors=desc, seed=1)
