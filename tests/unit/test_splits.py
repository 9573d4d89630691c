"""The split of DESIGN.md: pool every stride-th labelled frame, 80/10/10 per seed (core.splits)."""

from __future__ import annotations

import numpy as np
import pytest

from qdgap.core.common.errors import QdgapError
from qdgap.core.data.splits import labelled_pool, split_frames, split_from_json


def test_split_partitions_pool_80_10_10():
    gaps = np.full(10_001, 1.7, dtype=np.float32)
    s = split_frames(gaps, seed=3, stride=10)
    assert (len(s.train), len(s.val), len(s.test)) == (801, 100, 100)
    pool = labelled_pool(gaps, stride=10)
    np.testing.assert_array_equal(s.pool, pool)
    assert (
        len(np.intersect1d(s.train, s.val))
        == len(np.intersect1d(s.train, s.test))
        == len(np.intersect1d(s.val, s.test))
        == 0
    )
    assert len(s.unseen) == 10_001 - len(pool)
    assert len(np.intersect1d(s.unseen, pool)) == 0
    assert np.all(pool % 10 == 0)


def test_split_is_deterministic_and_distinct_across_seeds():
    gaps = np.full(1001, 1.7, dtype=np.float32)
    a, b = split_frames(gaps, seed=7), split_frames(gaps, seed=7)
    for part in ("train", "val", "test", "unseen"):
        np.testing.assert_array_equal(getattr(a, part), getattr(b, part))
    tests = {tuple(split_frames(gaps, seed=s).test) for s in range(20)}
    assert len(tests) == 20


def test_split_known_values_are_stable_across_machines():
    # numpy's default_rng(PCG64) stream is fixed; pin it so a platform change cannot slip by.
    s = split_frames(np.ones(101, dtype=np.float32), seed=0, stride=10)
    assert s.train.tolist() == [0, 20, 30, 40, 50, 60, 70, 90, 100]
    assert s.val.tolist() == [80] and s.test.tolist() == [10]


def test_split_skips_unlabelled_pool_frames():
    gaps = np.full(200, 1.7, dtype=np.float32)
    gaps[::20] = np.nan
    pool = labelled_pool(gaps, stride=10)
    assert np.isfinite(gaps[pool]).all() and len(pool) == 10


@pytest.mark.parametrize("n_labelled", [0, 1, 2])
def test_split_rejects_tiny_pool(n_labelled):
    gaps = np.full(100, np.nan, dtype=np.float32)
    gaps[: n_labelled * 10 : 10] = 1.7
    with pytest.raises(QdgapError, match="needs at least 3"):
        split_frames(gaps, seed=0)


def test_split_json_roundtrip():
    gaps = np.ones(300, dtype=np.float32)
    s = split_frames(gaps, seed=5)
    back = split_from_json(s.to_json(), 300)
    for part in ("train", "val", "test", "unseen"):
        np.testing.assert_array_equal(getattr(back, part), getattr(s, part))
    with pytest.raises(QdgapError, match="outside"):
        split_from_json(s.to_json(), 100)


def _blocked_case(seed: int, block_fs: float = 100.0):
    t = np.arange(0.0, 5001.0)  # fs
    gaps = np.where(np.arange(5001) % 2 == 0, 1.7, np.nan).astype(np.float32)
    return t, split_frames(gaps, seed=seed, stride=10, scheme="blocked", time_fs=t, block_fs=block_fs)


def test_blocked_split_never_shares_a_block_between_train_val_and_test():
    for seed in range(10):
        t, s = _blocked_case(seed)
        blocks = {k: set((t[getattr(s, k)] // 100).astype(int)) for k in ("train", "val", "test")}
        assert not blocks["train"] & blocks["test"] and not blocks["train"] & blocks["val"]
        assert not blocks["val"] & blocks["test"]
        assert len(blocks["val"]) == len(blocks["test"]) == 5  # 10 % of the 51 blocks, rounded
        np.testing.assert_array_equal(s.pool, np.arange(0, 5001, 10))
        # a test frame in the middle of its block lies half a block from every training frame
        d = np.abs(t[s.test][:, None] - t[s.train][None, :]).min(axis=1)
        assert d.max() >= 40 and s.scheme == "blocked" and s.block_fs == 100.0


def test_blocked_split_is_deterministic_per_seed_and_recorded():
    _, a = _blocked_case(4)
    _, b = _blocked_case(4)
    _, c = _blocked_case(5)
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(a, part), getattr(b, part))
    assert not np.array_equal(a.test, c.test)
    record = a.to_json()
    assert record["scheme"] == "blocked" and record["block_fs"] == 100.0
    back = split_from_json(record, 5001)
    assert back.scheme == "blocked" and back.block_fs == 100.0
    np.testing.assert_array_equal(back.test, a.test)
    # the random scheme's split.json is unchanged: index lists only
    assert set(split_frames(np.ones(300, np.float32), seed=5).to_json()) == {"train", "val", "test"}


def test_blocked_split_default_block_is_five_correlation_times():
    from qdgap.core.data.timeseries import correlation_time_fs

    rng = np.random.default_rng(1)
    t = np.arange(0.0, 20_001.0)
    x = np.convolve(rng.normal(size=len(t) + 200), np.exp(-np.arange(200) / 30.0), mode="valid")[: len(t)]
    gaps = (1.7 + 0.01 * x).astype(np.float32)
    s = split_frames(gaps, seed=0, stride=10, scheme="blocked", time_fs=t)
    pool = np.arange(0, len(t), 10)
    assert s.block_fs == pytest.approx(5 * correlation_time_fs(t[pool], gaps[pool].astype(float)))
    assert 100 < s.block_fs < 300


@pytest.mark.parametrize("block_fs", [0.0, -5.0, 3000.0, float("nan")])
def test_blocked_split_rejects_bad_blocks(block_fs):
    t = np.arange(0.0, 5001.0)
    with pytest.raises(QdgapError, match="block"):
        split_frames(np.ones(5001, np.float32), seed=0, scheme="blocked", time_fs=t, block_fs=block_fs)
