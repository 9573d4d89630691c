"""Choose the frames to label next: where the ensemble is least sure, spread out along the trajectory.

    qdgap select --runs runs/ --data traj.h5 --budget 50 -o selection.csv [--structures dft/]

Candidates are the frames outside every member's pool (on data the members
were not trained on, every frame), optionally only the labelled or unlabelled
ones. Every strategy picks ``budget`` frames greedily and never two closer in
time than ``min_separation_fs`` (default ``auto``: half the spacing of an even
grid of ``budget`` frames over the candidates' time span, lowered to the next
spacing that occurs between candidates while the strategy cannot fit ``budget``
picks, as when K is most of the candidates), so that K picks are not K
neighbouring frames of one excursion:

- ``spread``: largest calibrated std first.
- ``spread-diverse``: largest calibrated std times a diversity factor
  1 - exp(-(d / l)^2), d the distance in structure (RMS difference of all
  interatomic distances, Å) to the nearest frame picked so far, l half the
  median such distance over the candidates: a second frame of a geometry
  already picked counts for little even when it is far away in time.
- ``random``: uniformly at random (seeded).
- ``grid``: evenly spaced in time, the fixed-grid labelling of the original study.

The same inputs and ``seed`` give the same selection (the seed breaks ties and
drives ``random``).
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qdgap.core.common.errors import QdgapError

log = logging.getLogger(__name__)

STRATEGIES = ("spread", "spread-diverse", "random", "grid")
# What measured best (bench/bench_selection.py on the demo extension, 4 members, README "Uncertainty you can
# act on"): the even grid, at K = 50 and 100; ranking by spread was the worst at every K. To be measured
# again on the real 10-15 ps extension.
DEFAULT_STRATEGY = "grid"
CANDIDATE_SETS = ("all", "labelled", "unlabelled")
SELECTION_COLUMNS = ("rank", "frame_index", "time_fs", "gap_mean_ev", "gap_std_ev", "gap_std_calibrated_ev")
FRAME_COLUMN = "frame_index"  # what --frames-from reads


# ==========================================================================
# Candidates
# ==========================================================================


def candidate_frames(
    pools: Sequence[np.ndarray], gap_ev: np.ndarray, *, which: str = "all", exclude: Sequence[int] = ()
) -> np.ndarray:
    """Frames no member trained, validated or tested on, minus ``exclude``, optionally only (un)labelled ones.

    Args:
        pools: per member, (P,) frames of its pool on this trajectory (none when trained on other data).
        gap_ev: (F,) eV, NaN where unlabelled.
        which: ``all``, ``labelled`` (to measure strategies on labels already known) or ``unlabelled``.
        exclude: frames never to offer (a benchmark's held-out test frames).

    Returns:
        (C,) int64, sorted.
    """
    if which not in CANDIDATE_SETS:
        raise QdgapError(f"--candidates must be one of {', '.join(CANDIDATE_SETS)}, got {which!r}")
    frames = np.arange(len(gap_ev), dtype=np.int64)
    taken = np.concatenate([np.asarray(p, np.int64) for p in pools] + [np.asarray(exclude, np.int64)])
    frames = np.setdiff1d(frames, taken)
    labelled = np.isfinite(np.asarray(gap_ev)[frames])
    if which == "labelled":
        frames = frames[labelled]
    elif which == "unlabelled":
        frames = frames[~labelled]
    return frames


# ==========================================================================
# Strategies
# ==========================================================================


def auto_separation_fs(time_fs: np.ndarray, budget: int) -> float:
    """Half the spacing of ``budget`` frames evenly spread over the span of ``time_fs``, fs."""
    t = np.asarray(time_fs, np.float64)
    return 0.0 if len(t) < 2 or budget < 1 else 0.5 * float(t.max() - t.min()) / budget


def pairwise_distance_descriptors(positions_ang: np.ndarray) -> np.ndarray:
    """Every interatomic distance of each frame: a rotation- and translation-free fingerprint.

    Args:
        positions_ang: (C, N, 3) Å.

    Returns:
        (C, N(N-1)/2) float32, Å.
    """
    pos = np.asarray(positions_ang, np.float32)
    i, j = np.triu_indices(pos.shape[1], k=1)
    return np.linalg.norm(pos[:, i] - pos[:, j], axis=-1)  # (C, P)


def choose(
    time_fs: np.ndarray,
    std_ev: np.ndarray,
    *,
    budget: int,
    strategy: str = DEFAULT_STRATEGY,
    min_separation_fs: float | None = None,
    seed: int = 0,
    descriptors: np.ndarray | None = None,
) -> np.ndarray:
    """Pick ``budget`` of C candidates: ``choose_separated`` without the separation kept.

    Returns:
        (K,) int64 positions into the candidates, in the order picked.
    """
    order, _ = choose_separated(
        time_fs, std_ev, budget=budget, strategy=strategy, min_separation_fs=min_separation_fs, seed=seed,
        descriptors=descriptors,
    )  # fmt: skip
    return order


def choose_separated(
    time_fs: np.ndarray,
    std_ev: np.ndarray,
    *,
    budget: int,
    strategy: str = DEFAULT_STRATEGY,
    min_separation_fs: float | None = None,
    seed: int = 0,
    descriptors: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Pick ``budget`` of C candidates.

    Args:
        time_fs: (C,) fs, the candidates' times.
        std_ev: (C,) eV, their (calibrated) ensemble spread; finite.
        budget: K, frames to pick.
        strategy: one of ``STRATEGIES``.
        min_separation_fs: no two picks closer in time; None for ``auto_separation_fs``.
        seed: ties and ``random``.
        descriptors: (C, D) structure fingerprints (``spread-diverse`` only; Å).

    Returns:
        (K,) int64 positions into the candidates, in the order picked; the separation kept, fs
        (``auto``'s, lowered until the strategy fits ``budget`` picks).

    Raises:
        QdgapError: a bad strategy or budget, or fewer than K candidates fit a separation given.
    """
    if strategy not in STRATEGIES:
        raise QdgapError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    t = np.asarray(time_fs, np.float64)
    std = np.asarray(std_ev, np.float64)
    if budget < 1:
        raise QdgapError(f"--budget must be at least 1, got {budget}")
    if budget > len(t):
        raise QdgapError(f"--budget {budget}: only {len(t)} candidate frame(s) to choose from")
    auto = min_separation_fs is None
    sep = auto_separation_fs(t, budget) if auto else float(min_separation_fs)
    if sep < 0 or not math.isfinite(sep):
        raise QdgapError(f"--min-separation-fs must be >= 0, got {min_separation_fs}")
    if strategy == "spread-diverse" and descriptors is None:
        raise QdgapError("spread-diverse needs the candidates' structures")
    picked = _pick(t, std, descriptors, budget, sep, strategy, seed)
    if auto and len(picked) < budget:
        # K is most of the candidates (K = 200 of 280 frames on a 10 fs label grid does not fit 12.5 fs
        # apart). What fits changes only at a time difference between two candidates, so the largest
        # separation that fits is one of those below ``sep``: bisect them (0 always fits, K <= C).
        below = _differences_below(t, sep)
        lo, hi = 0, len(below)  # below[lo] fits; below[hi:] do not
        best = None
        while hi - lo > 1:
            mid = (lo + hi) // 2
            trial = _pick(t, std, descriptors, budget, float(below[mid]), strategy, seed)
            if len(trial) >= budget:
                lo, best = mid, trial
            else:
                hi = mid
        sep = float(below[lo])
        picked = best if best is not None else _pick(t, std, descriptors, budget, sep, strategy, seed)
    if len(picked) < budget:
        raise QdgapError(
            f"only {len(picked)} of the {budget} frames fit {sep:g} fs apart among the {len(t)} candidates; "
            "lower --min-separation-fs or --budget"
        )
    return np.asarray(picked, np.int64), sep


def _differences_below(t: np.ndarray, limit: float) -> np.ndarray:
    """0 and every time difference between two candidates below ``limit``, ascending, fs."""
    ts = np.sort(t)
    found = [np.zeros(1)]
    for k in range(1, len(ts)):  # ts[i + k] - ts[i] grows with k: stop at the first k with none below
        d = ts[k:] - ts[:-k]
        d = d[d < limit]
        if not d.size:
            break
        found.append(d)
    return np.unique(np.concatenate(found))


def _pick(t, std, descriptors, budget: int, sep: float, strategy: str, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    jitter = rng.permutation(len(t))  # tie-breaker: equal scores are taken in a seeded random order
    if strategy == "grid":
        return _grid(t, budget, sep)
    if strategy == "spread-diverse":
        return _diverse(t, std, np.asarray(descriptors, np.float32), budget, sep, jitter)
    order = rng.permutation(len(t)) if strategy == "random" else np.lexsort((jitter, -std))
    return _greedy(t, order, budget, sep)


def _far_enough(t: np.ndarray, picked_t: list[float], i: int, sep: float) -> bool:
    return sep <= 0 or not picked_t or float(np.min(np.abs(np.asarray(picked_t) - t[i]))) >= sep


def _greedy(t: np.ndarray, order: np.ndarray, budget: int, sep: float) -> list[int]:
    picked: list[int] = []
    picked_t: list[float] = []
    for i in order:
        if _far_enough(t, picked_t, int(i), sep):
            picked.append(int(i))
            picked_t.append(float(t[i]))
            if len(picked) == budget:
                break
    return picked


def _grid(t: np.ndarray, budget: int, sep: float) -> list[int]:
    """The candidate nearest to each of ``budget`` evenly spaced times (each used once)."""
    targets = np.linspace(t.min(), t.max(), budget) if budget > 1 else np.array([np.median(t)])
    free = np.ones(len(t), dtype=bool)
    picked: list[int] = []
    picked_t: list[float] = []
    for target in targets:
        order = np.argsort(np.abs(t - target), kind="stable")
        for i in order:
            if free[i] and _far_enough(t, picked_t, int(i), sep):
                free[i] = False
                picked.append(int(i))
                picked_t.append(float(t[i]))
                break
    return picked


def _diverse(
    t: np.ndarray, std: np.ndarray, desc: np.ndarray, budget: int, sep: float, jitter: np.ndarray
) -> list[int]:
    n, width = len(t), desc.shape[1]
    # Length scale: half the median distance of a candidate to a random other one (64 probes bound the cost).
    probe = jitter[: min(64, n)]
    sample = np.sqrt(((desc[probe][:, None, :] - desc[None, probe, :]) ** 2).mean(-1))  # (p, p) Å
    scale = 0.5 * float(np.median(sample[np.triu_indices(len(probe), 1)])) if len(probe) > 1 else 1.0
    scale = scale if scale > 0 else 1.0
    nearest = np.full(n, np.inf)  # RMS distance to the nearest pick so far, Å
    blocked = np.zeros(n, dtype=bool)
    rank = np.empty(n)
    rank[jitter] = np.arange(n)
    picked: list[int] = []
    for _ in range(budget):
        diversity = 1.0 - np.exp(-((nearest / scale) ** 2))
        score = np.where(blocked, -np.inf, std * diversity)
        best = np.flatnonzero(score == score.max())
        if not np.isfinite(score.max()):
            break
        i = int(best[np.argmin(rank[best])])
        picked.append(i)
        blocked |= np.abs(t - t[i]) < sep
        blocked[i] = True
        d = np.sqrt(((desc - desc[i]) ** 2).sum(-1) / width)  # (C,) Å
        nearest = np.minimum(nearest, d)
    return picked


# ==========================================================================
# The command's work: predict the candidates, pick, write
# ==========================================================================


@dataclass(frozen=True)
class Selection:
    """Frames chosen to label next, in the order picked.

    Attributes:
        frame_index: (K,) int64.
        time_fs: (K,) fs.
        gap_mean_ev, gap_std_ev, gap_std_calibrated_ev: (K,) eV, the ensemble on each (calibrated: NaN if uncalibrated).
        strategy: how they were picked.
        min_separation_fs: fs, the separation kept.
        num_candidates: C.
    """

    frame_index: np.ndarray
    time_fs: np.ndarray
    gap_mean_ev: np.ndarray
    gap_std_ev: np.ndarray
    gap_std_calibrated_ev: np.ndarray
    strategy: str
    min_separation_fs: float
    num_candidates: int


def select_for_labelling(
    members,
    traj,
    *,
    budget: int,
    strategy: str = DEFAULT_STRATEGY,
    candidates: str = "all",
    exclude: Sequence[int] = (),
    min_separation_fs: float | None = None,
    seed: int = 0,
    calibration=None,
    cache_dir: Path | None = None,
    device: str = "cpu",
    backend: str | None = None,
    progress=None,
) -> Selection:
    """Predict every candidate with the ensemble and pick ``budget`` of them by ``strategy``.

    Args:
        members: the ensemble (``runs.load_members``).
        traj: the trajectory to choose from.
        budget, strategy, min_separation_fs, seed: as ``choose``.
        candidates: ``all``, ``labelled`` or ``unlabelled`` frames outside every member's pool.
        exclude: frames never to offer.
        calibration: ``calibration.Calibration`` of the members; None ranks by the raw spread (the same order).
        cache_dir, device, backend, progress: as ``predict.predict_ensemble``.
    """
    from qdgap.core.analysis.predict import predict_ensemble

    pools = [
        np.concatenate([np.asarray(m.split[k], np.int64) for k in ("train", "val", "test")])
        for m in members
        if m.data_sha256 == traj.sha256
    ]
    frames = candidate_frames(pools, traj.gap_ev, which=candidates, exclude=exclude)
    if frames.size == 0:
        raise QdgapError(f"no {candidates} frame lies outside the members' pools: nothing to choose from")
    if budget > frames.size:
        raise QdgapError(f"--budget {budget}: only {frames.size} {candidates} candidate frame(s) outside the pools")
    needs_spread = strategy in ("spread", "spread-diverse")
    if needs_spread:
        pred = predict_ensemble(
            members, traj, frames, cache_dir=cache_dir, device=device, backend=backend, progress=progress
        )
        mean, std = pred.gap_mean_ev.astype(np.float64), pred.gap_std_ev.astype(np.float64)
    else:
        mean = std = np.full(frames.size, np.nan)
    scale = calibration.scale if calibration is not None else math.nan
    desc = pairwise_distance_descriptors(traj.positions_ang[frames]) if strategy == "spread-diverse" else None
    t = traj.time_fs[frames]
    # Calibration multiplies every std by one number: the order, and so the picks, are the raw spread's.
    order, sep = choose_separated(
        t,
        np.nan_to_num(std, nan=0.0),
        budget=budget,
        strategy=strategy,
        min_separation_fs=min_separation_fs,
        seed=seed,
        descriptors=desc,
    )
    if not needs_spread:  # the spread of what random or grid picked is still worth writing down
        chosen = frames[order]
        pred = predict_ensemble(members, traj, chosen, cache_dir=cache_dir, device=device, backend=backend)
        mean_c, std_c = pred.gap_mean_ev.astype(np.float64), pred.gap_std_ev.astype(np.float64)
    else:
        mean_c, std_c = mean[order], std[order]
    return Selection(
        frame_index=frames[order],
        time_fs=t[order],
        gap_mean_ev=mean_c,
        gap_std_ev=std_c,
        gap_std_calibrated_ev=std_c * scale,
        strategy=strategy,
        min_separation_fs=sep,
        num_candidates=int(frames.size),
    )


def write_selection(sel: Selection, path: Path, *, force: bool = False) -> None:
    """``selection.csv``: one row per frame in the order picked (columns ``SELECTION_COLUMNS``), atomically."""
    from qdgap.core.store.results import write_csv

    write_csv(
        path,
        {
            "rank": np.arange(1, len(sel.frame_index) + 1),
            "frame_index": sel.frame_index,
            "time_fs": sel.time_fs,
            "gap_mean_ev": sel.gap_mean_ev,
            "gap_std_ev": sel.gap_std_ev,
            "gap_std_calibrated_ev": sel.gap_std_calibrated_ev,
        },
        force=force,
    )


def read_selection(path: str | Path) -> np.ndarray:
    """The frames of a selection CSV (its ``frame_index`` column), in file order.

    Raises:
        QdgapError: missing or unreadable file, no ``frame_index`` column, a value that is not a
            non-negative integer, or no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise QdgapError(f"{path}: no such selection file")
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or FRAME_COLUMN not in reader.fieldnames:
                raise QdgapError(f"{path}: no {FRAME_COLUMN} column (expected a `qdgap select` CSV)")
            values = [row[FRAME_COLUMN] for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise QdgapError(f"{path}: not a readable CSV ({exc})") from exc
    frames = []
    for line, value in enumerate(values, start=2):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not (math.isfinite(number) and number.is_integer() and number >= 0):
            raise QdgapError(f"{path}, line {line}: {FRAME_COLUMN} {value!r} is not a frame index")
        frames.append(int(number))
    if not frames:
        raise QdgapError(f"{path}: no frames listed")
    return np.asarray(frames, np.int64)


def frames_from(path: str | Path, gap_ev: np.ndarray) -> tuple[int, ...]:
    """``--frames-from``: the selection's frames, each in range, labelled and named once.

    Raises:
        QdgapError: naming the file and the first bad frame.
    """
    from qdgap.core.data.splits import chosen_pool

    frames = read_selection(path)
    try:
        return tuple(int(f) for f in chosen_pool(gap_ev, frames))
    except QdgapError as exc:
        raise QdgapError(f"{path}: {exc}") from None


VACUUM_ANG = 10.0  # empty space around an isolated cluster in its POSCAR box, Å on every side


def write_structures(traj, frames: np.ndarray, folder: Path) -> list[Path]:
    """POSCARs ``st<frame>.vasp`` of ``frames`` (the original study's naming), ready for DFT.

    An isolated cluster (zero cell) is centred in a cubic box with ``VACUUM_ANG``
    of vacuum on every side; a periodic frame keeps its cell. Each file's comment
    line gives the frame index and time.
    """
    from ase import Atoms
    from ase.io import write

    from qdgap.core.common.files import atomic_output, check_writable_dir

    folder = Path(folder)
    check_writable_dir(folder)
    cells = traj.frame_cells()
    written = []
    for f in np.asarray(frames, np.int64):
        pos = traj.positions_ang[f].astype(np.float64)
        cell = cells[f]
        if not np.any(cell):
            side = float(np.ptp(pos, axis=0).max()) + 2 * VACUUM_ANG
            pos = pos - pos.mean(axis=0) + side / 2
            atoms = Atoms(numbers=traj.numbers, positions=pos, cell=np.eye(3) * side, pbc=True)
        else:
            atoms = Atoms(numbers=traj.numbers, positions=pos, cell=cell, pbc=traj.pbc)
        path = folder / f"st{int(f)}.vasp"
        with atomic_output(path, force=True) as tmp:
            write(tmp, atoms, format="vasp", direct=True, sort=False)
            lines = tmp.read_text().splitlines(keepends=True)
            species = lines[0].strip()  # ASE's first line names the species; keep them beside the frame and time
            lines[0] = f"{species} | qdgap frame {int(f)} t={traj.time_fs[f]:g} fs\n"
            tmp.write_text("".join(lines))
        written.append(path)
    return written


def with_pool_from(config, path, data):
    """``config`` (a ``RunConfig``) training on exactly the frames listed in the CSV ``path``.

    The frames are checked against the trajectory ``data``: in range, labelled, each once.
    """
    from dataclasses import replace

    from qdgap.core.data.trajectory import read_trajectory

    pool = frames_from(path, read_trajectory(data).gap_ev)
    return replace(config, train=replace(config.train, pool_frames=pool))
