"""The one train/val/test split of a trajectory (seed README, section 2.1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qdgap.core.common.errors import QdgapError
from qdgap.core.common.schema import SPLIT_SCHEMES

DEFAULT_STRIDE = 10  # every 10th frame: 10 fs at a 1 fs MD step, as in the original study
FRACTIONS = (0.8, 0.1, 0.1)  # train, val, test
MIN_POOL = 3  # one frame each for train, val and test
SCHEMES = SPLIT_SCHEMES
BLOCK_CORRELATION_TIMES = 5.0  # --split blocked: default block length in correlation times of the pool's gaps


@dataclass(frozen=True)
class Split:
    """Frame indices of one ensemble member; each array sorted, int64.

    ``train``, ``val`` and ``test`` partition the labelled pool; ``unseen`` is
    every frame outside the pool (labelled or not).
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    unseen: np.ndarray
    scheme: str = "random"
    block_fs: float | None = None  # the blocked scheme's block length, fs (measured when not given)

    @property
    def pool(self) -> np.ndarray:
        return np.sort(np.concatenate([self.train, self.val, self.test]))

    def to_json(self) -> dict:
        """The contents of a run's ``split.json`` (the random scheme's as before: index lists only)."""
        out: dict = {"train": self.train.tolist(), "val": self.val.tolist(), "test": self.test.tolist()}
        if self.scheme != "random":
            out.update(scheme=self.scheme, block_fs=self.block_fs)
        return out


def labelled_pool(gap_ev: np.ndarray, *, stride: int = DEFAULT_STRIDE) -> np.ndarray:
    """Indices of the labelled pool: every ``stride``-th frame (0, stride, 2*stride, ...) that has a gap.

    Args:
        gap_ev: (F,) band gaps, eV; NaN where a frame has no label.
        stride: pool spacing in frames.

    Returns:
        (P,) int64, sorted.
    """
    if stride < 1:
        raise QdgapError(f"--stride must be a positive integer, got {stride}")
    frames = np.arange(0, len(gap_ev), stride, dtype=np.int64)
    return frames[np.isfinite(np.asarray(gap_ev)[frames])]


def chosen_pool(gap_ev: np.ndarray, frames: Sequence[int]) -> np.ndarray:
    """Indices of a pool named frame by frame (``--frames-from``), checked: in range, labelled, each once.

    Args:
        gap_ev: (F,) band gaps, eV; NaN where a frame has no label.
        frames: (P,) frame indices.

    Returns:
        (P,) int64, sorted.

    Raises:
        QdgapError: a frame out of range, without a label, or named twice.
    """
    pool = np.asarray(list(frames), dtype=np.int64)
    gap_ev = np.asarray(gap_ev)
    bad = pool[(pool < 0) | (pool >= len(gap_ev))]
    if bad.size:
        raise QdgapError(f"frame {int(bad[0])} is outside the trajectory's frames 0-{len(gap_ev) - 1}")
    unlabelled = pool[~np.isfinite(gap_ev[pool])]
    if unlabelled.size:
        raise QdgapError(
            f"frame {int(unlabelled[0])} has no gap ({unlabelled.size} unlabelled frame(s) chosen); "
            "label them first (`qdgap label`) or leave them out"
        )
    unique, counts = np.unique(pool, return_counts=True)
    if (counts > 1).any():
        raise QdgapError(f"frame {int(unique[counts > 1][0])} is named more than once")
    return unique


def split_frames(
    gap_ev: np.ndarray,
    *,
    seed: int,
    stride: int = DEFAULT_STRIDE,
    pool: Sequence[int] | None = None,
    scheme: str = "random",
    time_fs: np.ndarray | None = None,
    block_fs: float | None = None,
) -> Split:
    """Split the labelled pool 80/10/10 into train/val/test for member ``seed``.

    ``random`` (the study's): the pool (``labelled_pool``, or the frames of ``pool`` when given) is
    shuffled with ``numpy.random.default_rng(seed)`` and cut in order: the first 80 % train, the next
    10 % val, the rest test (val and test each get round(10 %), at least one frame). A test frame then
    lies one pool spacing from training frames, so its error measures interpolation in time.

    ``blocked``: the pool is cut into contiguous time blocks of ``block_fs`` and whole blocks are
    shuffled and cut the same way (10 % of the blocks each to val and test, at least one), so a test
    frame is up to half a block from every training frame: the error of a frame far from any label.

    The same seed and labels give the same split on any machine.

    Args:
        gap_ev: (F,) band gaps, eV; NaN where a frame has no label.
        seed: the member's seed (a non-negative integer).
        stride: pool spacing in frames (ignored with ``pool``).
        pool: exactly these labelled frames form the pool (``--frames-from``,
            checked by ``chosen_pool``); None for every ``stride``-th labelled frame.
        scheme: ``random`` or ``blocked``.
        time_fs: (F,) frame times, fs (the blocked scheme needs them; frame numbers are used when None).
        block_fs: block length, fs; None for ``BLOCK_CORRELATION_TIMES`` correlation times of the pool's gaps.

    Raises:
        QdgapError: the pool has fewer than ``MIN_POOL`` frames, ``pool`` names a bad frame, or the
        blocks are not positive or too long to give three of them.
    """
    if seed < 0:
        raise QdgapError(f"--seed must be a non-negative integer, got {seed}")
    if scheme not in SCHEMES:
        raise QdgapError(f"--split must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    named = pool is not None
    pool = chosen_pool(gap_ev, pool) if named else labelled_pool(gap_ev, stride=stride)
    n = len(pool)
    if n < MIN_POOL:
        where, mend = (
            ("chosen (--frames-from)", "choose more frames")
            if named
            else (f"in the pool (every {stride}th frame with a gap)", "label more frames or lower --stride")
        )
        raise QdgapError(
            f"only {n} labelled frame(s) {where}; a train/val/test split needs at least {MIN_POOL}: {mend}"
        )
    unseen = np.setdiff1d(np.arange(len(gap_ev), dtype=np.int64), pool)
    if scheme == "blocked":
        return _blocked(gap_ev, pool, unseen, seed=seed, time_fs=time_fs, block_fs=block_fs)
    n_val = max(1, round(FRACTIONS[1] * n))
    n_test = max(1, round(FRACTIONS[2] * n))
    n_train = n - n_val - n_test
    perm = np.random.default_rng(seed).permutation(pool)
    return Split(
        train=np.sort(perm[:n_train]),
        val=np.sort(perm[n_train : n_train + n_val]),
        test=np.sort(perm[n_train + n_val :]),
        unseen=unseen,
    )


def default_block_fs(time_fs: np.ndarray, gap_ev: np.ndarray) -> float:
    """``BLOCK_CORRELATION_TIMES`` correlation times of the given labelled gaps, fs (NaN when not measurable)."""
    from qdgap.core.data.timeseries import correlation_time_fs

    return BLOCK_CORRELATION_TIMES * correlation_time_fs(time_fs, gap_ev)


def _blocked(gap_ev, pool, unseen, *, seed, time_fs, block_fs) -> Split:
    t = np.arange(len(gap_ev), dtype=np.float64) if time_fs is None else np.asarray(time_fs, np.float64)
    tp = t[pool]
    if block_fs is None:
        block_fs = default_block_fs(tp, np.asarray(gap_ev, np.float64)[pool])
        if not np.isfinite(block_fs):
            raise QdgapError(
                "--split blocked: the pool's gaps give no correlation time to size blocks by; set --block-fs"
            )
    if not (block_fs > 0 and np.isfinite(block_fs)):
        raise QdgapError(f"--block-fs must be a positive number of fs, got {block_fs}")
    block = np.floor((tp - tp[0]) / block_fs).astype(np.int64)
    ids = np.unique(block)
    if len(ids) < MIN_POOL:
        raise QdgapError(
            f"--block-fs {block_fs:g} fs cuts the pool ({tp[-1] - tp[0]:g} fs) into {len(ids)} block(s); "
            f"a blocked train/val/test split needs at least {MIN_POOL}: use shorter blocks"
        )
    n_val = max(1, round(FRACTIONS[1] * len(ids)))
    n_test = max(1, round(FRACTIONS[2] * len(ids)))
    n_train = len(ids) - n_val - n_test
    perm = np.random.default_rng(seed).permutation(ids)
    part = {"train": perm[:n_train], "val": perm[n_train : n_train + n_val], "test": perm[n_train + n_val :]}
    frames = {k: np.sort(pool[np.isin(block, v)]) for k, v in part.items()}
    return Split(**frames, unseen=unseen, scheme="blocked", block_fs=float(block_fs))


def split_from_json(record: dict, num_frames: int) -> Split:
    """Rebuild a ``Split`` from a run's ``split.json`` for a trajectory of ``num_frames`` frames."""
    try:
        parts = [np.asarray(record[k], dtype=np.int64) for k in ("train", "val", "test")]
    except (KeyError, TypeError, ValueError) as exc:
        raise QdgapError(f"split.json lacks train/val/test index lists ({exc})") from exc
    pool = np.concatenate(parts)
    if len(pool) and (pool.min() < 0 or pool.max() >= num_frames):
        raise QdgapError(f"split.json names frames outside the trajectory's {num_frames} frames")
    unseen = np.setdiff1d(np.arange(num_frames, dtype=np.int64), pool)
    scheme = str(record.get("scheme", "random"))
    block = record.get("block_fs")
    return Split(
        *[np.sort(p) for p in parts], unseen=unseen, scheme=scheme, block_fs=None if block is None else float(block)
    )
