"""MD integrators and the resumable simulate run (core.md), on a cheap spring potential.

Only the tests marked ``slow`` need tblite; the rest run anywhere in seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from qdgap.core.common.errors import QdgapError
from qdgap.core.data.trajectory import read_trajectory, read_trajectory_extras
from qdgap.core.sim import md
from qdgap.testing.synthetic import small_cdse_cluster

REPO = Path(__file__).resolve().parents[2]


class SpringPotential:
    """Harmonic springs between the atoms of a reference geometry closer than 3 Å; smooth fake gap.

    Energy 0.5 k sum (|r_ij| - r0_ij)², eV; gap 1.7 eV + 0.5 * mean bond strain.
    Deterministic, so a resumed run must retrace an uninterrupted one exactly.
    """

    def __init__(
        self,
        numbers,
        positions_ang,
        method="GFN1-xTB",
        *,
        k_ev_ang2=2.0,
        delay_s=0.0,
        fail_after=None,
    ):
        ref = np.asarray(positions_ang, dtype=np.float64)
        d = np.linalg.norm(ref[:, None] - ref[None], axis=-1)
        self.i, self.j = np.nonzero(np.triu(d < 3.0, k=1))
        self.r0 = d[self.i, self.j]
        self.k = k_ev_ang2
        self.delay_s = delay_s
        self.fail_after = fail_after
        self.calls = 0

    def __call__(self, positions_ang):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt  # stands in for a kill in the middle of a run
        if self.delay_s:
            time.sleep(self.delay_s)
        x = np.asarray(positions_ang, dtype=np.float64)
        diff = x[self.i] - x[self.j]  # (E, 3)
        r = np.linalg.norm(diff, axis=1)
        strain = r - self.r0
        f_pair = (-self.k * strain / r)[:, None] * diff  # force on i, (E, 3)
        forces = np.zeros_like(x)
        np.add.at(forces, self.i, f_pair)
        np.add.at(forces, self.j, -f_pair)
        return md.Evaluation(float(0.5 * self.k * (strain**2).sum()), forces, float(1.7 + 0.5 * strain.mean()))


def _start(tmp_path=None):
    numbers, positions = small_cdse_cluster()
    return md.Start(numbers=numbers, positions_ang=positions, source="test", source_sha256="0" * 64)


CONFIG = md.SimulationConfig(method="GFN1-xTB", thermalise_steps=20, seed=3)


def test_homo_lumo_gap_uses_electron_count():
    e = np.array([-3.0, -2.0, -1.0, 0.5, 1.0])
    occ = np.array([2.0, 2.0, 1.999, 0.001, 0.0])  # Fermi smearing: fractional occupations
    assert md.homo_lumo_gap_ev(e, occ) == pytest.approx(1.5)


def test_remove_drift_kills_momentum_and_rotation():
    rng = np.random.default_rng(0)
    numbers, x = small_cdse_cluster()
    m = md._masses(numbers)
    v = md.remove_drift(x, rng.normal(size=x.shape), m)
    np.testing.assert_allclose((m[:, None] * v).sum(0), 0.0, atol=1e-10)
    r = x - (m[:, None] * x).sum(0) / m.sum()
    np.testing.assert_allclose((m[:, None] * np.cross(r, v)).sum(0), 0.0, atol=1e-9)


def test_maxwell_boltzmann_temperature():
    m = np.full(3000, 50.0)
    v = md.maxwell_boltzmann(m, 300.0, np.random.default_rng(1))
    assert md.temperature_k(v, m, dof=3 * len(m)) == pytest.approx(300.0, rel=0.03)


def test_verlet_conserves_energy():
    start = _start()
    pot = SpringPotential(start.numbers, start.positions_ang)
    m = md._masses(start.numbers)
    v = md.maxwell_boltzmann(m, 300.0, np.random.default_rng(0))
    state = md.MDState(start.positions_ang, v, pot(start.positions_ang))
    e0 = state.evaluation.energy_ev + md.kinetic_energy_ev(v, m)
    for _ in range(500):
        state = md.verlet_step(state, pot, m, 1.0)
    e1 = state.evaluation.energy_ev + md.kinetic_energy_ev(state.velocities_ang_per_fs, m)
    assert abs(e1 - e0) < 1e-3 * md.kinetic_energy_ev(v, m) + 1e-4


def test_langevin_reaches_temperature():
    start = _start()
    pot = SpringPotential(start.numbers, start.positions_ang)
    m = md._masses(start.numbers)
    rng = np.random.default_rng(0)
    state = md.MDState(start.positions_ang, np.zeros_like(start.positions_ang), pot(start.positions_ang))
    temps = []
    for step in range(3000):
        state = md.langevin_step(state, pot, m, 1.0, temperature=300.0, friction_per_fs=0.05, rng=rng)
        if step >= 500:
            temps.append(md.temperature_k(state.velocities_ang_per_fs, m, dof=3 * len(m)))
    assert np.mean(temps) == pytest.approx(300.0, rel=0.1)


def test_simulate_writes_contract_and_extras(tmp_path):
    out = tmp_path / "t.h5"
    md.simulate(_start(), out, steps=10, config=CONFIG, potential_factory=SpringPotential)
    t = read_trajectory(out)
    assert t.num_frames == 11 and t.labelled.all()
    np.testing.assert_allclose(t.time_fs, np.arange(11.0))
    extras = read_trajectory_extras(out)
    assert extras[md.VELOCITIES].shape == (len(t.numbers), 3)
    assert extras[md.POTENTIAL_EV].shape == (11,)
    np.testing.assert_allclose(extras[md.POSITIONS_F64], t.positions_ang[-1], atol=1e-5)
    assert not md.partial_path(out).exists()


def test_simulate_resumes_after_interrupt_exactly(tmp_path):
    whole = tmp_path / "whole.h5"
    md.simulate(_start(), whole, steps=30, config=CONFIG, potential_factory=SpringPotential)

    cut = tmp_path / "cut.h5"
    # 1 call for frame 0, 20 thermalisation steps, then 10 recorded steps before the "kill".
    failing = lambda z, x, m: SpringPotential(z, x, m, fail_after=31)  # noqa: E731
    with pytest.raises(KeyboardInterrupt):
        md.simulate(_start(), cut, steps=30, config=CONFIG, potential_factory=failing)
    assert not cut.exists() and md.partial_path(cut).exists()
    assert read_trajectory(md.partial_path(cut), allow_partial=True).num_frames == 11
    calls = []

    def counting(z, x, m):
        pot = SpringPotential(z, x, m)
        calls.append(pot)
        return pot

    md.simulate(_start(), cut, steps=30, config=CONFIG, potential_factory=counting)
    assert calls[0].calls == 1 + 20  # resumed: one evaluation of the saved frame, then the 20 missing steps
    a, b = read_trajectory(whole), read_trajectory(cut)
    np.testing.assert_array_equal(a.positions_ang, b.positions_ang)
    np.testing.assert_array_equal(a.gap_ev, b.gap_ev)
    np.testing.assert_array_equal(a.time_fs, b.time_fs)


def test_simulate_resume_refuses_other_options(tmp_path):
    cut = tmp_path / "cut.h5"
    failing = lambda z, x, m: SpringPotential(z, x, m, fail_after=25)  # noqa: E731
    with pytest.raises(KeyboardInterrupt):
        md.simulate(_start(), cut, steps=10, config=CONFIG, potential_factory=failing)
    other = md.SimulationConfig(method="GFN1-xTB", thermalise_steps=20, seed=4)
    with pytest.raises(QdgapError, match="different method, time step, thermostat or seed"):
        md.simulate(_start(), cut, steps=10, config=other, potential_factory=SpringPotential)


def test_continue_from_finished_run(tmp_path):
    ref = _start().positions_ang
    springs = lambda z, x, m: SpringPotential(z, ref, m)  # noqa: E731  the same springs wherever a run starts
    whole = tmp_path / "whole.h5"
    md.simulate(_start(), whole, steps=20, config=CONFIG, potential_factory=springs)
    first = tmp_path / "first.h5"
    md.simulate(_start(), first, steps=10, config=CONFIG, potential_factory=springs)
    start, config = md.start_from_finished(first)
    assert config.thermalise_steps == 0 and start.time_fs == 10.0
    ext = tmp_path / "ext.h5"
    md.simulate(start, ext, steps=10, config=config, potential_factory=springs)
    a, b = read_trajectory(whole), read_trajectory(ext)
    np.testing.assert_allclose(b.time_fs, np.arange(10.0, 21.0))
    np.testing.assert_array_equal(b.positions_ang, a.positions_ang[10:])  # the continuation retraces the long run


def test_simulate_rejects_bad_options(tmp_path):
    with pytest.raises(QdgapError, match="--steps"):
        md.simulate(_start(), tmp_path / "t.h5", steps=0, config=CONFIG, potential_factory=SpringPotential)
    with pytest.raises(QdgapError, match="--method"):
        md.simulate(_start(), tmp_path / "t.h5", steps=2, config=md.SimulationConfig(method="PM6"))


_CHILD = """
import sys
from qdgap.core.sim import md
from tests.unit.test_md import CONFIG, SpringPotential, _start
slow = lambda z, x, m: SpringPotential(z, x, m, delay_s=0.1)
def tick(n):
    print("step", flush=True)
md.simulate(_start(), sys.argv[1], steps=30, config=CONFIG, potential_factory=slow, progress=tick)
"""


def test_simulate_resumes_after_sigkill(tmp_path):
    out = tmp_path / "killed.h5"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(out)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    seen = 0
    for _ in child.stdout:
        seen += 1
        if seen == 20 + 8:  # thermalisation done and 8 frames recorded
            break
    # The child is now inside a 0.1 s force call, between two appends.
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    part = md.partial_path(out)
    assert not out.exists() and part.exists()
    assert read_trajectory(part, allow_partial=True).num_frames >= 9
    md.simulate(_start(), out, steps=30, config=CONFIG, potential_factory=SpringPotential)
    whole = tmp_path / "whole.h5"
    md.simulate(_start(), whole, steps=30, config=CONFIG, potential_factory=SpringPotential)
    np.testing.assert_array_equal(read_trajectory(out).positions_ang, read_trajectory(whole).positions_ang)


@pytest.mark.slow
def test_xtb_simulate_resumes_after_interrupt(tmp_path):
    pytest.importorskip("tblite")
    numbers, positions = small_cdse_cluster(3.0)  # Cd4Se: 5 atoms, a fraction of a second per step
    start = md.Start(numbers=numbers, positions_ang=positions, source="test")
    config = md.SimulationConfig(method="GFN1-xTB", thermalise_steps=3, seed=1)
    calls = {"n": 0}

    def failing(z, x, m):
        pot = md.XtbPotential(z, x, method=m)

        def call(pos):
            calls["n"] += 1
            if calls["n"] > 1 + 3 + 4:
                raise KeyboardInterrupt
            return pot(pos)

        return call

    out = tmp_path / "x.h5"
    with pytest.raises(KeyboardInterrupt):
        md.simulate(start, out, steps=8, config=config, potential_factory=failing)
    assert read_trajectory(md.partial_path(out), allow_partial=True).num_frames == 5
    md.simulate(start, out, steps=8, config=config)
    whole = tmp_path / "whole.h5"
    md.simulate(start, whole, steps=8, config=config)
    a, b = read_trajectory(out), read_trajectory(whole)
    assert a.num_frames == 9 and np.isfinite(a.gap_ev).all() and (a.gap_ev > 0).all()
    # The SCF restarts from a guess after the resume, so frames agree to SCF tolerance, not bitwise.
    np.testing.assert_allclose(a.positions_ang, b.positions_ang, atol=1e-4)
    np.testing.assert_allclose(a.gap_ev, b.gap_ev, atol=1e-3)


def test_simulate_refuses_a_second_concurrent_run(tmp_path):
    from qdgap.core.common.files import exclusive_lock

    out = tmp_path / "t.h5"
    with exclusive_lock(tmp_path / "t.h5.lock", what="test"):  # as a live run holds it
        with pytest.raises(QdgapError, match="in use"):
            md.simulate(_start(), out, steps=2, config=CONFIG, potential_factory=SpringPotential)
    md.simulate(_start(), out, steps=2, config=CONFIG, potential_factory=SpringPotential)
    assert out.exists() and not (tmp_path / "t.h5.lock").exists()
