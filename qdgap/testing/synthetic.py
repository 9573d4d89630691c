"""Synthetic trajectories for fast tests: thermal-like motion of a small cluster, smooth labels.

Seconds to make and no quantum chemistry: frames are a base structure plus
displacements correlated in time (an AR(1) process, like MD), and the "gap"
is a smooth function of bond lengths. With ``important`` atoms given, the
label depends only on the bonds of those atoms, so FNA has a known answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qdgap.core.data.trajectory import Trajectory, make_trajectory
from qdgap.core.sim.qd import ZINCBLENDE_CDSE_A_ANG

GAP_MEAN_EV = 1.73  # centre and spread of the published PBE gaps of Cd28Se17Cl22
GAP_STD_EV = 0.11


def small_cdse_cluster(radius_ang: float = 4.6) -> tuple[np.ndarray, np.ndarray]:
    """A bare zinc-blende CdSe cluster: every atom within ``radius_ang`` of a central Se.

    Returns:
        (numbers (N,) int64, positions (N, 3) float64 Å), centred at the origin;
        17 atoms for the default radius.
    """
    from ase.build import bulk

    crystal = bulk("CdSe", "zincblende", a=ZINCBLENDE_CDSE_A_ANG).repeat((4, 4, 4))
    pos = crystal.get_positions()
    numbers = crystal.get_atomic_numbers()
    se = np.flatnonzero(numbers == 34)
    centre = pos[se[np.argmin(np.linalg.norm(pos[se] - pos.mean(0), axis=1))]]
    keep = np.linalg.norm(pos - centre, axis=1) <= radius_ang
    order = np.argsort(numbers[keep] != 48, kind="stable")  # Cd first, as in the study's files
    return numbers[keep][order].astype(np.int64), (pos[keep] - centre)[order]


def _bonds(pos0: np.ndarray, atoms: np.ndarray, *, factor: float = 1.2) -> tuple[np.ndarray, np.ndarray]:
    """Bonds (i in ``atoms``, any j) of the base structure: pairs within ``factor`` x the shortest distance."""
    d = np.linalg.norm(pos0[:, None] - pos0[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    i, j = np.nonzero((d <= factor * d.min()) & np.isin(np.arange(len(pos0)), atoms)[:, None])
    keep = ~np.isin(j, atoms) | (i < j)  # a bond between two chosen atoms counts once
    return i[keep], j[keep]


def synthetic_trajectory(
    num_frames: int = 200,
    *,
    base: tuple[np.ndarray, np.ndarray] | None = None,
    important: Sequence[int] | None = None,
    amplitude_ang: float = 0.12,
    correlation_fs: float = 20.0,
    dt_fs: float = 1.0,
    seed: int = 0,
) -> Trajectory:
    """Make a labelled trajectory in memory.

    Args:
        num_frames: F.
        base: (numbers (N,), positions (N, 3) Å); ``small_cdse_cluster()`` if None.
        important: atom indices the label depends on; all atoms if None.
        amplitude_ang: rms displacement of each coordinate, Å.
        correlation_fs: decay time of the displacement autocorrelation, fs.
        dt_fs: time step, fs.
        seed: random seed.

    Returns:
        Trajectory with every frame labelled; gaps scaled to mean 1.73 eV and
        std 0.11 eV (the published PBE values) over the trajectory.
    """
    numbers, pos0 = base if base is not None else small_cdse_cluster()
    pos0 = np.asarray(pos0, dtype=np.float64)
    rng = np.random.default_rng(seed)
    rho = float(np.exp(-dt_fs / correlation_fs))
    disp = np.empty((num_frames, len(numbers), 3))
    disp[0] = rng.normal(0.0, amplitude_ang, size=pos0.shape)
    kick = amplitude_ang * np.sqrt(1.0 - rho**2)
    for t in range(1, num_frames):
        disp[t] = rho * disp[t - 1] + rng.normal(0.0, kick, size=pos0.shape)
    positions = pos0[None] + disp
    who = np.arange(len(numbers)) if important is None else np.asarray(important)
    i, j = _bonds(pos0, who)
    stretch = np.linalg.norm(positions[:, i] - positions[:, j], axis=-1) - np.linalg.norm(
        pos0[i] - pos0[j], axis=-1
    )  # (F, B) Å
    # Smooth and nonlinear in the bond lengths, local as a GNN sees them.
    raw = stretch.sum(1) - 0.5 * (stretch**2).sum(1)
    gap = GAP_MEAN_EV + GAP_STD_EV * (raw - raw.mean()) / (raw.std() + 1e-12)
    return make_trajectory(
        numbers,
        positions,
        time_fs=np.arange(num_frames) * dt_fs,
        gap_ev=gap,
        attrs={"source": f"qdgap.testing.synthetic (seed {seed}, important {list(who)[:8]})"},
    )
