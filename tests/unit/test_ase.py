"""``qdgap.ase.GapLogger`` on a short ASE run: one row per logged step, the ensemble's numbers, finite values."""

from __future__ import annotations

import csv

import numpy as np
import pytest


def _dot(traj):
    """The synthetic dot's first frame with a Lennard-Jones calculator whose minimum sits at its bond length."""
    from ase import Atoms
    from ase.calculators.lj import LennardJones

    atoms = Atoms(numbers=traj.numbers, positions=traj.positions_ang[0].astype(np.float64), pbc=False)
    d = np.linalg.norm(atoms.positions[:, None] - atoms.positions[None], axis=-1)
    bond = d[d > 0].min()
    atoms.calc = LennardJones(sigma=bond / 2 ** (1 / 6), epsilon=0.05, rc=2.5 * bond, smooth=True)
    return atoms


@pytest.mark.parametrize("with_dyn", [True, False])
def test_gap_logger_writes_one_row_per_logged_step(tmp_path, calibrated_runs, synthetic_traj, with_dyn):
    from ase import units
    from ase.io import read
    from ase.md.verlet import VelocityVerlet

    from qdgap import Ensemble
    from qdgap.ase import COLUMNS, GapLogger

    ens = Ensemble.load(calibrated_runs, device="cpu")
    atoms = _dot(synthetic_traj)
    # Maxwell-Boltzmann velocities at 300 K, by hand: ASE renamed its helper between the versions qdgap allows.
    sigma = np.sqrt(300 * units.kB / atoms.get_masses())[:, None]
    atoms.set_velocities(np.random.default_rng(0).normal(size=(len(atoms), 3)) * sigma)
    dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    log, xyz = tmp_path / "gap.csv", tmp_path / "gap.xyz"
    logger = GapLogger(ens, atoms, log, interval=5, dyn=dyn if with_dyn else None, xyz=xyz)
    seen = []
    dyn.attach(lambda: seen.append(atoms.positions.copy()), interval=5)  # what the logger saw, for a check
    dyn.attach(logger, interval=logger.interval)
    dyn.run(20)
    logger.close()

    with open(log, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == logger.rows == len(seen) == 5  # steps 0, 5, ..., 20
    assert tuple(rows[0]) == COLUMNS
    assert [int(r["step"]) for r in rows] == [0, 5, 10, 15, 20]
    if with_dyn:
        np.testing.assert_allclose([float(r["time_fs"]) for r in rows], [0, 5, 10, 15, 20], atol=1e-9)
    values = np.array([[float(r[c]) for c in COLUMNS[2:7]] for r in rows])
    assert np.isfinite(values).all() and (values[:, 1:3] > 0).all()  # gaps, raw and calibrated spread
    assert (values[:, 3] < values[:, 0]).all() and (values[:, 0] < values[:, 4]).all()  # lo < mean < hi
    assert {r["extrapolating"] for r in rows} <= {"0", "1"}
    # The rows are the ensemble's predictions of the structures the dynamics visited.
    from ase import Atoms

    frames = [Atoms(numbers=atoms.numbers, positions=p) for p in seen]
    expect = ens.predict(frames)
    np.testing.assert_allclose(values[:, 0], expect.mean_ev, atol=2e-6)
    np.testing.assert_allclose(values[:, 2], expect.std_calibrated_ev, atol=2e-6)
    assert len(set(values[:, 0])) > 1, "the structure moved, so should the gap"
    written = read(xyz, index=":")
    assert len(written) == 5
    assert written[-1].info["gap_mean_ev"] == pytest.approx(values[-1, 0], abs=2e-6)
    np.testing.assert_allclose(written[-1].positions, seen[-1], atol=1e-6)


def test_gap_logger_refuses_bad_input(tmp_path, tiny_runs, synthetic_traj):
    from ase import Atoms

    from qdgap import Ensemble, QdgapError
    from qdgap.ase import GapLogger

    ens = Ensemble.load(tiny_runs, device="cpu")
    with pytest.raises(QdgapError, match="interval"):
        GapLogger(ens, _dot(synthetic_traj), tmp_path / "a.csv", interval=0)
    wrong = Atoms("Cd2Se2", positions=[[0, 0, 0], [2.6, 0, 0], [0, 2.6, 0], [2.6, 2.6, 0]])
    with GapLogger(ens, wrong, tmp_path / "b.csv") as logger, pytest.raises(QdgapError, match="trained on"):
        logger()
    assert logger.rows == 0
