"""The Cd28Se17Cl22 model quantum dot: construction, GFN-xTB relaxation, bond analysis.

The cluster is cut from zinc-blende CdSe around a central Se and passivated
with Cl on the dangling bonds of the surface Cd, the way the reference
system of the study was made (28 Cd2+, 17 Se2-, 22 Cl-: charge neutral).
Construction is pure integer lattice arithmetic, so tests need neither ASE
nor tblite; only ``relax_cluster`` imports tblite.

Lattice sites are kept as integer triples in units of a/4 (a the cubic
lattice constant) with the central Se at the origin: anion (Se) sites have
even coordinates summing to 0 mod 4, cation (Cd) sites odd ones summing to
3 mod 4, and every Cd bonds to the anion sites at ``_CATION_TO_ANION``.

Conventions: lengths in Å, energies in eV, forces in eV/Å.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qdgap.core.common.errors import QdgapError

ZINCBLENDE_CDSE_A_ANG = 6.05  # lattice constant of zinc-blende CdSe, Å

log = logging.getLogger(__name__)

CD, SE, CL = 48, 34, 17  # atomic numbers
NUM_CD, NUM_SE, NUM_CL = 28, 17, 22
FORMAL_CHARGE = {CD: 2, SE: -2, CL: -1}  # oxidation states, e
# Cd-Se / Cd-Cl bond cutoff, Å: published MD bonds reach 3.22 Å, second neighbours start at 3.6 Å.
BOND_CUTOFF_ANG = 3.2
FMAX_EV_ANG = 0.05  # relaxation stops when the largest force is below this
DEFAULT_METHOD = "GFN1-xTB"  # GFN2-xTB does not reach SCF convergence for the relaxed cluster (data/README.md)
METHODS = ("GFN2-xTB", "GFN1-xTB")

# Bond vectors from a cation site to its four anion neighbours, units of a/4.
_CATION_TO_ANION = np.array([[-1, -1, -1], [-1, 1, 1], [1, -1, 1], [1, 1, -1]], dtype=np.int64)
_CORE_SE_R2 = 8  # 1 + 12 Se within a/sqrt(2) of the centre (squared radius, (a/4)^2 units)
_AXIS_SE_R2 = 16  # the next Se shell: 6 sites on the cube axes at distance a
_CD_R2 = 19  # the 4 + 12 + 12 = 28 Cd within a*sqrt(19)/4


def lattice_sites(max_index: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """All zinc-blende sites in a cube of half-width ``max_index`` (a/4 units).

    Returns:
        (anion (S, 3) int64, cation (C, 3) int64) integer coordinates in a/4,
        the anion at the origin included.
    """
    r = range(-max_index, max_index + 1)
    grid = np.array(list(itertools.product(r, r, r)), dtype=np.int64)  # (G, 3)
    even, odd, mod4 = (grid % 2 == 0).all(1), (grid % 2 == 1).all(1), grid.sum(1) % 4
    return grid[even & (mod4 == 0)], grid[odd & (mod4 == 3)]


def core_sites() -> tuple[np.ndarray, np.ndarray]:
    """The Cd28Se17 core around a central Se, integer coordinates in a/4.

    Se: the centre, its 12 second neighbours, and 4 of the 6 sites at distance
    a (the pair on the z axis is left out, which keeps a two-fold axis; 17 is
    not a closed shell). Cd: the three nearest cation shells, 4 + 12 + 12.

    Returns:
        (se (17, 3) int64, cd (28, 3) int64), each sorted by distance from the centre.
    """
    anion, cation = lattice_sites()
    r2a, r2c = (anion**2).sum(1), (cation**2).sum(1)
    se = anion[(r2a <= _CORE_SE_R2) | ((r2a == _AXIS_SE_R2) & (anion[:, 2] == 0))]
    cd = cation[r2c <= _CD_R2]
    se = se[np.argsort((se**2).sum(1), kind="stable")]
    cd = cd[np.argsort((cd**2).sum(1), kind="stable")]
    assert len(se) == NUM_SE and len(cd) == NUM_CD, (len(se), len(cd))
    return se, cd


def chloride_sites(se: np.ndarray, cd: np.ndarray, *, num_cl: int = NUM_CL) -> np.ndarray:
    """Pick the empty anion sites that receive Cl, integer coordinates in a/4.

    Candidates are the anion sites next to a Cd that hold no Se. Greedy, one
    site at a time: first the sites that bridge the most Cd (a bridging Cl
    saturates two dangling bonds, as most Cl in the published structure do),
    then those whose Cd is least coordinated so far, then the nearest to the
    centre; ties fall to lexicographic order, so the result is deterministic.

    Args:
        se: (S, 3) int64 Se sites.
        cd: (C, 3) int64 Cd sites.
        num_cl: how many Cl to place.

    Returns:
        (num_cl, 3) int64 Cl sites, in the order picked.
    """
    occupied = {tuple(s) for s in se.tolist()}
    neighbours = cd[:, None, :] + _CATION_TO_ANION[None]  # (C, 4, 3) anion sites around each Cd
    coordination = np.array([sum(tuple(x) in occupied for x in row) for row in neighbours.tolist()])
    candidates: dict[tuple[int, ...], list[int]] = {}
    for i, row in enumerate(neighbours.tolist()):
        for site in row:
            if tuple(site) not in occupied:
                candidates.setdefault(tuple(site), []).append(i)
    if len(candidates) < num_cl:
        raise ValueError(f"only {len(candidates)} free anion sites for {num_cl} Cl")
    chosen: list[tuple[int, ...]] = []
    for _ in range(num_cl):

        def rank(site: tuple[int, ...]) -> tuple:
            who = candidates[site]
            return (-len(who), int(coordination[who].min()), sum(c * c for c in site), site)

        best = min((s for s in candidates if s not in chosen), key=rank)
        chosen.append(best)
        coordination[candidates[best]] += 1
    return np.array(chosen, dtype=np.int64)


def build_cluster(*, lattice_ang: float = ZINCBLENDE_CDSE_A_ANG) -> tuple[np.ndarray, np.ndarray]:
    """The unrelaxed Cd28Se17Cl22 cluster on ideal zinc-blende sites.

    Args:
        lattice_ang: cubic lattice constant a, Å (6.05 Å, zinc-blende CdSe).

    Returns:
        (numbers (67,) int64, positions (67, 3) float64 Å), atoms ordered Cd,
        Se, Cl as in the study's POSCAR files, central Se at the origin.
    """
    se, cd = core_sites()
    cl = chloride_sites(se, cd)
    numbers = np.concatenate([np.full(len(cd), CD), np.full(len(se), SE), np.full(len(cl), CL)]).astype(np.int64)
    positions = np.concatenate([cd, se, cl]).astype(np.float64) * (lattice_ang / 4.0)
    return numbers, positions


def total_formal_charge(numbers: np.ndarray) -> int:
    """Sum of the formal charges (Cd +2, Se -2, Cl -1) of ``numbers`` (N,), e."""
    return int(sum(FORMAL_CHARGE[int(z)] for z in np.asarray(numbers).tolist()))


# ==========================================================================
# Bond analysis (the comparison with the published structure, MD sanity)
# ==========================================================================


def pair_distances(positions_ang: np.ndarray) -> np.ndarray:
    """All interatomic distances.

    Args:
        positions_ang: (..., N, 3) Å, an isolated cluster (no periodic images).

    Returns:
        (..., N, N) float64 Å, zeros on the diagonal.
    """
    pos = np.asarray(positions_ang, dtype=np.float64)
    return np.linalg.norm(pos[..., :, None, :] - pos[..., None, :, :], axis=-1)


def bond_matrix(numbers: np.ndarray, positions_ang: np.ndarray, *, cutoff_ang: float = BOND_CUTOFF_ANG) -> np.ndarray:
    """Cd-anion bonds: Cd-Se and Cd-Cl pairs closer than ``cutoff_ang``.

    Only cation-anion pairs count; Se-Se, Cl-Cl and Cd-Cd contacts are not bonds.

    Args:
        numbers: (N,) atomic numbers.
        positions_ang: (..., N, 3) Å.

    Returns:
        (..., N, N) bool, symmetric.
    """
    z = np.asarray(numbers)
    cation = z == CD
    unlike = cation[:, None] != cation[None, :]  # (N, N): one Cd, one anion
    return (pair_distances(positions_ang) < cutoff_ang) & unlike


def coordination_numbers(
    numbers: np.ndarray, positions_ang: np.ndarray, *, cutoff_ang: float = BOND_CUTOFF_ANG
) -> np.ndarray:
    """Bonded neighbours of every atom (``bond_matrix``).

    Returns:
        (..., N) int64.
    """
    return bond_matrix(numbers, positions_ang, cutoff_ang=cutoff_ang).sum(-1).astype(np.int64)


def min_distances(positions_ang: np.ndarray) -> np.ndarray:
    """Closest pair distance of every frame.

    Args:
        positions_ang: (..., N, 3) Å.

    Returns:
        (...) float64 Å.
    """
    d = pair_distances(positions_ang)
    n = d.shape[-1]
    return np.where(np.eye(n, dtype=bool), np.inf, d).min(axis=(-2, -1))


@dataclass(frozen=True)
class BondStats:
    """Bond lengths and coordination of one structure (Å; counts per atom)."""

    cdse_mean_ang: float
    cdse_min_ang: float
    cdse_max_ang: float
    cdcl_mean_ang: float
    cdcl_min_ang: float
    cdcl_max_ang: float
    cd_coordination: dict[int, int]  # bonds per Cd -> how many Cd
    se_coordination: dict[int, int]  # Cd neighbours per Se -> how many Se
    cl_coordination: dict[int, int]  # Cd neighbours per Cl -> how many Cl
    min_distance_ang: float


def bond_stats(numbers: np.ndarray, positions_ang: np.ndarray, *, cutoff_ang: float = BOND_CUTOFF_ANG) -> BondStats:
    """Summarise the bonds of one structure: numbers (N,), positions (N, 3) Å."""
    z = np.asarray(numbers)
    d = pair_distances(positions_ang)
    bonds = bond_matrix(z, positions_ang, cutoff_ang=cutoff_ang)
    cd, se, cl = z == CD, z == SE, z == CL
    cdse = d[np.ix_(cd, se)][bonds[np.ix_(cd, se)]]
    cdcl = d[np.ix_(cd, cl)][bonds[np.ix_(cd, cl)]]
    coord = bonds.sum(1)

    def hist(mask: np.ndarray) -> dict[int, int]:
        values, counts = np.unique(coord[mask], return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts, strict=True)}

    def stats(x: np.ndarray) -> tuple[float, float, float]:
        return (float(x.mean()), float(x.min()), float(x.max())) if len(x) else (np.nan, np.nan, np.nan)

    return BondStats(
        *stats(cdse),
        *stats(cdcl),
        cd_coordination=hist(cd),
        se_coordination=hist(se),
        cl_coordination=hist(cl),
        min_distance_ang=float(min_distances(positions_ang)),
    )


# ==========================================================================
# GFN-xTB relaxation (needs the `xtb` extra)
# ==========================================================================


@dataclass(frozen=True)
class Relaxed:
    """A relaxed structure.

    Attributes:
        positions_ang: (N, 3) float64, Å.
        energy_ev: total xTB energy, eV.
        max_force_ev_ang: the largest atomic force left, eV/Å.
        steps: optimiser steps taken.
    """

    positions_ang: np.ndarray
    energy_ev: float
    max_force_ev_ang: float
    steps: int


def relax_cluster(
    numbers: np.ndarray,
    positions_ang: np.ndarray,
    *,
    method: str = DEFAULT_METHOD,
    fmax_ev_ang: float = FMAX_EV_ANG,
    max_steps: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> Relaxed:
    """Relax an isolated cluster with GFN-xTB (tblite) until every force is below ``fmax_ev_ang``.

    Uses ASE's BFGS optimiser with tblite's ASE calculator, which restarts
    each SCF from the previous step's wavefunction.

    Args:
        numbers: (N,) atomic numbers.
        positions_ang: (N, 3) Å, the starting geometry.
        method: ``GFN2-xTB`` or ``GFN1-xTB``.
        fmax_ev_ang: convergence threshold on the largest atomic force, eV/Å.
        max_steps: optimiser steps before giving up.
        progress: called with 1 after every optimiser step.

    Raises:
        QdgapError: tblite is missing, the SCF fails, or the optimiser does
            not converge within ``max_steps``.
    """
    from ase import Atoms
    from ase.optimize import BFGS

    tblite_ase = import_tblite_ase()
    check_method(method)
    atoms = Atoms(numbers=np.asarray(numbers), positions=np.asarray(positions_ang, dtype=np.float64))
    atoms.calc = tblite_ase.TBLite(method=method, verbosity=0)
    optimiser = BFGS(atoms, logfile=None, maxstep=0.2)

    def report() -> None:
        fmax = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
        log.debug(
            "relax step %d: E = %.5f eV, max force %.4f eV/Å",
            optimiser.nsteps,
            atoms.get_potential_energy(),
            fmax,
        )
        if progress is not None:
            progress(1)

    optimiser.attach(report, interval=1)
    try:
        converged = optimiser.run(fmax=fmax_ev_ang, steps=max_steps)
    except Exception as exc:  # tblite raises CalculationFailed (a RuntimeError) on SCF failure
        raise QdgapError(f"{method} failed during the relaxation ({str(exc).splitlines()[0][:160]})") from exc
    fmax = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
    if not converged:
        raise QdgapError(
            f"relaxation did not converge in {max_steps} steps "
            f"(largest force {fmax:.3f} eV/Å > {fmax_ev_ang} eV/Å); "
            "raise --max-steps"
        )
    log.info(
        "relaxed in %d steps: E = %.4f eV, max force %.4f eV/Å",
        optimiser.nsteps,
        atoms.get_potential_energy(),
        fmax,
    )
    return Relaxed(atoms.get_positions(), float(atoms.get_potential_energy()), fmax, int(optimiser.nsteps))


def check_method(method: str) -> None:
    """Raise ``QdgapError`` unless ``method`` is one of ``METHODS``."""
    if method not in METHODS:
        raise QdgapError(f"--method {method!r} is not supported; choose one of {', '.join(METHODS)}")


def import_tblite_ase():
    """``tblite.ase``, or a ``QdgapError`` saying how to install it."""
    try:
        import tblite.ase as tblite_ase
    except ImportError as exc:
        raise QdgapError("GFN-xTB needs tblite: pip install 'qdgap[xtb]' (or pip install tblite)") from exc
    return tblite_ase
