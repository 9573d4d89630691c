"""Born-Oppenheimer MD of an isolated cluster with the HOMO-LUMO gap at every step.

A run is a Langevin thermalisation (not recorded) followed by velocity-Verlet
NVE, the way the published trajectory was made, with GFN-xTB (tblite) in place
of plane-wave DFT. Every recorded step goes into the trajectory file through
``TrajectoryAppender``: positions and gap per frame, plus the state a resumed
run needs (float64 positions and velocities, energies so far). An interrupted
run continues from its last written step; the final file appears only when
the run is complete.

The integrators take arrays and a ``Potential`` (positions -> energy, forces,
gap), so they are tested with a cheap analytic potential; only
``XtbPotential`` imports tblite.

Units: Å, fs, eV, amu, K. Velocities are Å/fs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qdgap.core.common import schema
from qdgap.core.common.errors import QdgapError
from qdgap.core.sim.qd import DEFAULT_METHOD, check_method

log = logging.getLogger(__name__)

AMU_ANG2_PER_FS2_EV = 103.642697  # 1 amu Å²/fs² in eV: kinetic energy = 0.5 m v² * this
KB_EV_PER_K = 8.617333262e-5  # Boltzmann constant, eV/K
HARTREE_EV = 27.211386245988  # CODATA 2018, as ASE uses
BOHR_ANG = 0.5291772105638411

PARTIAL_SUFFIX = ".partial"  # an unfinished run lives in <output>.partial until it is complete
ATTR_MD_CONFIG = "md_config"  # str, JSON of SimulationConfig (how the file was simulated)
# Arrays of the appender's resume state and of the finished file's extras group:
POSITIONS_F64 = "last_positions_ang"  # (N, 3) float64, Å, the last recorded frame at full precision
VELOCITIES = "last_velocities_ang_per_fs"  # (N, 3) float64, Å/fs, at the last recorded frame
POTENTIAL_EV = "potential_energy_ev"  # (F,) float64, eV, xTB total energy per recorded frame
KINETIC_EV = "kinetic_energy_ev"  # (F,) float64, eV, nuclear kinetic energy per recorded frame
WALL_S = "wall_s"  # () float64, s, wall time spent so far (thermalisation included), over all resumes


# ==========================================================================
# Potentials
# ==========================================================================


@dataclass(frozen=True)
class Evaluation:
    """What a potential returns for one geometry.

    Attributes:
        energy_ev: total energy, eV.
        forces_ev_ang: (N, 3) float64, eV/Å.
        gap_ev: HOMO-LUMO gap, eV.
    """

    energy_ev: float
    forces_ev_ang: np.ndarray
    gap_ev: float


Potential = Callable[[np.ndarray], Evaluation]  # positions (N, 3) Å -> Evaluation


def homo_lumo_gap_ev(orbital_energies_ev: np.ndarray, occupations: np.ndarray) -> float:
    """HOMO-LUMO gap of a closed-shell system.

    The HOMO is orbital ``n_el / 2 - 1`` in ascending order, n_el the summed
    occupations rounded: the Fermi smearing of xTB makes occupations
    fractional, so "the last occupied orbital" would be ambiguous.

    Args:
        orbital_energies_ev: (norb,) eV, ascending.
        occupations: (norb,) electrons per orbital (0..2).

    Returns:
        gap, eV.
    """
    num_electrons = int(round(float(np.sum(occupations))))
    homo = num_electrons // 2 - 1
    return float(orbital_energies_ev[homo + 1] - orbital_energies_ev[homo])


class XtbPotential:
    """GFN-xTB energy, forces and HOMO-LUMO gap from tblite for an isolated cluster.

    Keeps tblite's result object between calls: each SCF starts from the
    previous geometry's converged wavefunction instead of a fresh guess,
    which is what makes MD affordable (about half the SCF cycles).
    """

    def __init__(self, numbers: np.ndarray, positions_ang: np.ndarray, *, method: str, charge: float = 0.0):
        """Set up the calculator.

        Args:
            numbers: (N,) atomic numbers.
            positions_ang: (N, 3) Å, any geometry of the cluster (sets up the calculator).
            method: ``GFN2-xTB`` or ``GFN1-xTB``.
            charge: total charge, e.
        """
        check_method(method)
        try:
            from tblite.interface import Calculator
        except ImportError as exc:
            raise QdgapError("GFN-xTB needs tblite: pip install 'qdgap[xtb]' (or pip install tblite)") from exc
        self.method = method
        self._calc = Calculator(method, np.asarray(numbers), np.asarray(positions_ang) / BOHR_ANG, charge=charge)
        self._calc.set("verbosity", 0)
        self._result = None
        self.calls = 0

    def __call__(self, positions_ang: np.ndarray) -> Evaluation:
        self._calc.update(positions=np.asarray(positions_ang, dtype=np.float64) / BOHR_ANG)
        try:
            # Passing the last result restarts the SCF from its wavefunction.
            self._result = self._calc.singlepoint(self._result)
        except Exception as exc:  # tblite raises its own RuntimeError subclass when the SCF fails
            raise QdgapError(
                f"{self.method}: the SCF failed ({str(exc).splitlines()[0][:120]}); try --method GFN1-xTB"
            ) from exc
        self.calls += 1
        res = self._result
        gap = homo_lumo_gap_ev(res.get("orbital-energies") * HARTREE_EV, res.get("orbital-occupations"))
        return Evaluation(
            energy_ev=float(res.get("energy")) * HARTREE_EV,
            forces_ev_ang=-np.asarray(res.get("gradient")) * (HARTREE_EV / BOHR_ANG),
            gap_ev=gap,
        )


# ==========================================================================
# Integrators (arrays in, arrays out)
# ==========================================================================


@dataclass(frozen=True)
class MDState:
    """Positions (N, 3) Å, velocities (N, 3) Å/fs, and the potential evaluated at the positions."""

    positions_ang: np.ndarray
    velocities_ang_per_fs: np.ndarray
    evaluation: Evaluation


def _acceleration(forces_ev_ang: np.ndarray, masses_amu: np.ndarray) -> np.ndarray:
    """(N, 3) Å/fs² from forces (N, 3) eV/Å and masses (N,) amu."""
    return forces_ev_ang / (masses_amu[:, None] * AMU_ANG2_PER_FS2_EV)


def kinetic_energy_ev(velocities_ang_per_fs: np.ndarray, masses_amu: np.ndarray) -> float:
    """0.5 sum m v², eV, for velocities (N, 3) Å/fs and masses (N,) amu."""
    return float(0.5 * np.sum(masses_amu[:, None] * velocities_ang_per_fs**2) * AMU_ANG2_PER_FS2_EV)


def temperature_k(velocities_ang_per_fs: np.ndarray, masses_amu: np.ndarray, *, dof: int | None = None) -> float:
    """Instantaneous temperature, K; ``dof`` defaults to 3N - 6 (an isolated cluster at rest)."""
    dof = 3 * len(masses_amu) - 6 if dof is None else dof
    return 2.0 * kinetic_energy_ev(velocities_ang_per_fs, masses_amu) / (dof * KB_EV_PER_K)


def remove_drift(positions_ang: np.ndarray, velocities_ang_per_fs: np.ndarray, masses_amu: np.ndarray) -> np.ndarray:
    """Velocities (N, 3) Å/fs without centre-of-mass translation and overall rotation.

    A Langevin thermostat kicks the cluster as a whole; the NVE part should
    spend its kinetic energy on vibrations only.
    """
    m = masses_amu[:, None]
    v = velocities_ang_per_fs - (m * velocities_ang_per_fs).sum(0) / m.sum()
    r = positions_ang - (m * positions_ang).sum(0) / m.sum()
    angular_momentum = (m * np.cross(r, v)).sum(0)  # (3,) amu Å²/fs
    inertia = (m[:, 0] * (r**2).sum(1)).sum() * np.eye(3) - np.einsum("n,ni,nj->ij", m[:, 0], r, r)  # (3, 3)
    omega = np.linalg.lstsq(inertia, angular_momentum, rcond=None)[0]  # (3,) rad/fs
    return v - np.cross(omega, r)


def maxwell_boltzmann(masses_amu: np.ndarray, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """Random velocities (N, 3) Å/fs at ``temperature`` K, without net momentum."""
    sigma = np.sqrt(KB_EV_PER_K * temperature / (masses_amu * AMU_ANG2_PER_FS2_EV))  # (N,) Å/fs
    v = rng.normal(size=(len(masses_amu), 3)) * sigma[:, None]
    return v - (masses_amu[:, None] * v).sum(0) / masses_amu.sum()


def verlet_step(state: MDState, potential: Potential, masses_amu: np.ndarray, dt_fs: float) -> MDState:
    """One velocity-Verlet (NVE) step of ``dt_fs`` fs."""
    v_half = state.velocities_ang_per_fs + 0.5 * dt_fs * _acceleration(state.evaluation.forces_ev_ang, masses_amu)
    x = state.positions_ang + dt_fs * v_half
    ev = potential(x)
    v = v_half + 0.5 * dt_fs * _acceleration(ev.forces_ev_ang, masses_amu)
    return MDState(x, v, ev)


def langevin_step(
    state: MDState,
    potential: Potential,
    masses_amu: np.ndarray,
    dt_fs: float,
    *,
    temperature: float,
    friction_per_fs: float,
    rng: np.random.Generator,
) -> MDState:
    """One BAOAB Langevin step of ``dt_fs`` fs at ``temperature`` K (one force call per step).

    BAOAB samples configurations with the smallest time-step error of the
    simple Langevin splittings (Leimkuhler & Matthews 2013).
    """
    c1 = np.exp(-friction_per_fs * dt_fs)
    sigma = np.sqrt((1.0 - c1**2) * KB_EV_PER_K * temperature / (masses_amu * AMU_ANG2_PER_FS2_EV))  # (N,) Å/fs
    v = state.velocities_ang_per_fs + 0.5 * dt_fs * _acceleration(state.evaluation.forces_ev_ang, masses_amu)
    x = state.positions_ang + 0.5 * dt_fs * v
    v = c1 * v + sigma[:, None] * rng.normal(size=v.shape)
    x = x + 0.5 * dt_fs * v
    ev = potential(x)
    v = v + 0.5 * dt_fs * _acceleration(ev.forces_ev_ang, masses_amu)
    return MDState(x, v, ev)


# ==========================================================================
# A resumable run
# ==========================================================================


@dataclass(frozen=True)
class SimulationConfig:
    """How a trajectory is simulated; stored in the file, so a resume can check it is the same run.

    Attributes:
        method: ``GFN2-xTB`` or ``GFN1-xTB``.
        dt_fs: time step, fs.
        temperature_k: thermostat temperature, K (also the initial velocities).
        thermalise_steps: unrecorded Langevin steps before the NVE part.
        friction_per_fs: Langevin friction, 1/fs.
        seed: seeds the initial velocities and the Langevin noise.
    """

    method: str = DEFAULT_METHOD
    dt_fs: float = 1.0
    temperature_k: float = 300.0
    thermalise_steps: int = 300
    friction_per_fs: float = 0.02
    seed: int = 0

    def check(self) -> None:
        """Raise ``QdgapError`` naming the option that is out of range."""
        check_method(self.method)
        if not self.dt_fs > 0:
            raise QdgapError(f"--dt-fs must be positive, got {self.dt_fs}")
        if not self.temperature_k > 0:
            raise QdgapError(f"--temperature must be positive (K), got {self.temperature_k}")
        if self.thermalise_steps < 0:
            raise QdgapError(f"--thermalise-steps must be 0 or more, got {self.thermalise_steps}")
        if not self.friction_per_fs > 0:
            raise QdgapError(f"the Langevin friction must be positive (1/fs), got {self.friction_per_fs}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


@dataclass(frozen=True)
class Start:
    """Where a run starts.

    Attributes:
        numbers: (N,) atomic numbers.
        positions_ang: (N, 3) float64, Å.
        velocities_ang_per_fs: (N, 3) float64 Å/fs to continue a finished run
            (no thermalisation), or None to thermalise from rest.
        time_fs: time of the first recorded frame, fs.
        source: what the start was read from, for the file's attrs.
        source_sha256: sha256 of that file.
    """

    numbers: np.ndarray
    positions_ang: np.ndarray
    velocities_ang_per_fs: np.ndarray | None = None
    time_fs: float = 0.0
    source: str = ""
    source_sha256: str = ""


def start_from_structure(path: str | Path) -> Start:
    """A fresh run's start: the isolated cluster in a structure file (e.g. ``qdgap data build-qd``).

    Raises:
        QdgapError: the file is missing or unreadable, or the structure is periodic.
    """
    from qdgap.core.common.files import sha256_file
    from qdgap.core.data.importers import read_structure

    traj = read_structure(path)
    if traj.pbc.any():
        raise QdgapError(f"{path}: the structure is periodic; simulate handles isolated clusters only")
    return Start(
        numbers=traj.numbers,
        positions_ang=traj.positions_ang[0].astype(np.float64),
        source=str(path),
        source_sha256=sha256_file(path),
    )


def start_from_finished(path: str | Path, *, method: str | None = None) -> tuple[Start, SimulationConfig]:
    """Continue a finished run: its last frame, final velocities and time, and its config.

    Args:
        path: a trajectory file written by ``simulate``.
        method: override the run's method (None keeps it).

    Raises:
        QdgapError: the file is not a finished ``simulate`` output.
    """
    from qdgap.core.data.trajectory import read_trajectory, read_trajectory_extras

    traj = read_trajectory(path)
    extras = read_trajectory_extras(path)
    raw = traj.attrs.get(ATTR_MD_CONFIG)
    if VELOCITIES not in extras or POSITIONS_F64 not in extras or raw is None:
        raise QdgapError(
            f"{path}: holds no final velocities (not written by `qdgap data simulate`); cannot continue it"
        )
    try:
        config = SimulationConfig(**json.loads(raw))
    except (TypeError, ValueError) as exc:
        raise QdgapError(f"{path}: unreadable {ATTR_MD_CONFIG} attr ({exc})") from exc
    if method is not None and method != config.method:
        log.warning("continuing a %s run with %s", config.method, method)
        config = dataclasses.replace(config, method=method)
    start = Start(
        numbers=traj.numbers,
        positions_ang=np.asarray(extras[POSITIONS_F64], dtype=np.float64),
        velocities_ang_per_fs=np.asarray(extras[VELOCITIES], dtype=np.float64),
        time_fs=float(traj.time_fs[-1]),
        source=str(path),
        source_sha256=traj.sha256,
    )
    return start, dataclasses.replace(config, thermalise_steps=0)


def partial_path(output: str | Path) -> Path:
    """The file an unfinished run of ``output`` grows in."""
    output = Path(output)
    return output.with_name(output.name + PARTIAL_SUFFIX)


def steps_to_run(output: str | Path, *, steps: int, thermalise_steps: int) -> int:
    """MD steps (thermalisation included) ``simulate`` still has to take: a progress bar's total.

    Counts the frames of ``<output>.partial`` when there is one; ``simulate`` checks that file.
    """
    from qdgap.core.data.trajectory import read_trajectory

    part = partial_path(output)
    if not part.exists():
        return thermalise_steps + steps
    try:
        done = read_trajectory(part, validate=False, allow_partial=True).num_frames
    except QdgapError:
        return steps
    return max(0, steps + 1 - done)


def simulate(
    start: Start,
    output: str | Path,
    *,
    steps: int,
    config: SimulationConfig,
    force: bool = False,
    potential_factory: Callable[[np.ndarray, np.ndarray, str], Potential] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Run (or resume) MD and write ``steps + 1`` frames (t0, t0 + dt, ...) with gaps to ``output``.

    Fresh run: Maxwell-Boltzmann velocities at ``config.temperature_k``,
    ``config.thermalise_steps`` Langevin steps (not recorded), drift and
    rotation removed, then NVE; frame 0 is the thermalised state. A ``start``
    with velocities (a continued run) goes straight to NVE.

    Every recorded frame is appended to ``<output>.partial`` together with the
    resume state. If that file exists from an interrupted run with the same
    start and config, the run continues from its last frame; the final file
    is written (atomically) only when all frames are there, and the partial
    file is then removed.

    Args:
        start: atoms, positions and, to continue a run, velocities.
        output: the finished trajectory file.
        steps: NVE steps to record after frame 0 (at least 1).
        config: method, time step, thermostat, seed.
        force: replace an existing ``output``.
        potential_factory: ``(numbers, start positions, method) -> Potential``;
            ``XtbPotential`` when None (tests pass a cheap one).
        progress: called with 1 after every MD step, thermalisation included.

    Returns:
        ``output``.

    Raises:
        QdgapError: bad options, an existing output without ``force``, a
            partial file from another run, or an SCF failure.
    """
    from qdgap.core.common.files import exclusive_lock

    output = Path(output)
    config.check()
    if steps < 1:
        raise QdgapError(f"--steps must be at least 1, got {steps}")
    if output.exists() and not force:
        raise QdgapError(f"{output}: output exists; choose another name or pass --force")
    factory = potential_factory or (lambda z, x, m: XtbPotential(z, x, method=m))
    lock = output.with_name(output.name + ".lock")
    # Two runs appending to one partial file would interleave frames: the second one stops at once.
    with exclusive_lock(lock, what=f"the simulation of {output}"):
        try:
            _simulate_locked(start, output, steps, config, force, factory, progress or (lambda n: None))
        finally:
            # A killed run leaves the file behind; harmless, the kernel has freed the lock.
            lock.unlink(missing_ok=True)
    return output


def _simulate_locked(
    start: Start, output: Path, steps: int, config: SimulationConfig, force: bool, factory, advance
) -> None:
    """``simulate`` once the lock is held: start or resume, run NVE, write the finished file."""
    from qdgap.core.data.trajectory import (
        TrajectoryAppender,
        make_trajectory,
        read_trajectory,
        write_trajectory,
    )

    masses = _masses(start.numbers)
    fingerprint = _fingerprint(start, config)
    part = partial_path(output)
    t_begin = time.perf_counter()

    if part.exists():
        appender, potential, state, energies, wall_before = _resume(part, start, fingerprint, factory, config)
    else:
        potential, state = _start(start, config, factory, masses, advance)
        wall_before = 0.0
        energies = [(state.evaluation.energy_ev, kinetic_energy_ev(state.velocities_ang_per_fs, masses))]
        first = make_trajectory(
            start.numbers,
            state.positions_ang[None],
            time_fs=np.array([start.time_fs]),
            gap_ev=np.array([state.evaluation.gap_ev]),
        )
        appender = TrajectoryAppender.create(part, first, **fingerprint)
        appender.write_state(**_state_arrays(state, energies, wall_before + time.perf_counter() - t_begin))

    with appender:
        done = appender.num_frames
        if done > steps + 1:
            raise QdgapError(f"{part}: already holds {done - 1} steps, more than --steps {steps}; raise --steps")
        if done > 1:
            log.info("resuming %s at step %d of %d", part, done - 1, steps)
        log.info("NVE: %d steps of %g fs with %s", steps + 1 - done, config.dt_fs, config.method)
        for frame in range(done, steps + 1):
            state = verlet_step(state, potential, masses, config.dt_fs)
            energies.append((state.evaluation.energy_ev, kinetic_energy_ev(state.velocities_ang_per_fs, masses)))
            appender.append(
                state.positions_ang,
                start.time_fs + frame * config.dt_fs,
                state.evaluation.gap_ev,
                **_state_arrays(state, energies, wall_before + time.perf_counter() - t_begin),
            )
            advance(1)
        wall_s = wall_before + time.perf_counter() - t_begin

    # Rewrite into a compact, finished file: the partial file carries freed
    # space from thousands of state updates, and the rename makes it appear whole.
    traj = read_trajectory(part, allow_partial=True)
    energies_arr = np.asarray(energies, dtype=np.float64)  # (F, 2) eV: potential, kinetic
    extras = {
        POSITIONS_F64: state.positions_ang,
        VELOCITIES: state.velocities_ang_per_fs,
        POTENTIAL_EV: energies_arr[:, 0],
        KINETIC_EV: energies_arr[:, 1],
        WALL_S: np.float64(wall_s),
    }
    write_trajectory(traj, output, force=force, extras=extras, **fingerprint)
    part.unlink()
    log.info("wrote %s: %d frames in %.0f s", output, traj.num_frames, wall_s)


def _masses(numbers: np.ndarray) -> np.ndarray:
    from ase.data import atomic_masses

    return np.asarray(atomic_masses[np.asarray(numbers)], dtype=np.float64)


def _fingerprint(start: Start, config: SimulationConfig) -> dict[str, str]:
    return {
        ATTR_MD_CONFIG: config.to_json(),
        schema.ATTR_SOURCE: start.source,
        schema.ATTR_INPUT_SHA256: start.source_sha256,
    }


def _state_arrays(state: MDState, energies: list[tuple[float, float]], wall_s: float) -> dict[str, np.ndarray]:
    e = np.asarray(energies, dtype=np.float64).reshape(-1, 2)
    return {
        POSITIONS_F64: state.positions_ang,
        VELOCITIES: state.velocities_ang_per_fs,
        POTENTIAL_EV: e[:, 0],
        KINETIC_EV: e[:, 1],
        WALL_S: np.float64(wall_s),
    }


def _start(start: Start, config: SimulationConfig, factory, masses: np.ndarray, advance) -> tuple[Potential, MDState]:
    """The potential and frame 0 of a fresh run: thermalised (or continued) and evaluated."""
    x = np.asarray(start.positions_ang, dtype=np.float64)
    potential = factory(start.numbers, x, config.method)
    state = MDState(x, np.zeros_like(x), potential(x))
    if start.velocities_ang_per_fs is not None:
        return potential, MDState(x, np.asarray(start.velocities_ang_per_fs, dtype=np.float64), state.evaluation)
    rng = np.random.default_rng(config.seed)
    state = MDState(x, maxwell_boltzmann(masses, config.temperature_k, rng), state.evaluation)
    log.info("thermalising: %d Langevin steps at %g K", config.thermalise_steps, config.temperature_k)
    for _ in range(config.thermalise_steps):
        state = langevin_step(
            state,
            potential,
            masses,
            config.dt_fs,
            temperature=config.temperature_k,
            friction_per_fs=config.friction_per_fs,
            rng=rng,
        )
        advance(1)
    v = remove_drift(state.positions_ang, state.velocities_ang_per_fs, masses)
    log.info("thermalised: T = %.0f K", temperature_k(v, masses))
    return potential, MDState(state.positions_ang, v, state.evaluation)


def _resume(part: Path, start: Start, fingerprint: dict[str, str], factory, config: SimulationConfig):
    """Open an interrupted run's partial file and rebuild its last state."""
    from qdgap.core.data.trajectory import TrajectoryAppender, read_trajectory

    try:
        attrs = read_trajectory(part, validate=False, allow_partial=True).attrs
    except QdgapError as exc:
        raise QdgapError(f"{exc}; delete {part} to start the run over") from None
    for key, value in fingerprint.items():
        if attrs.get(key) != value:
            raise QdgapError(
                f"{part}: an interrupted run with a different {_what(key)}; "
                "rerun with the same input and options, "
                f"or delete {part} to start over"
            )
    appender = TrajectoryAppender(part)
    saved = appender.read_state()
    energies_pot, energies_kin = saved.get(POTENTIAL_EV), saved.get(KINETIC_EV)
    if (
        any(k not in saved for k in (POSITIONS_F64, VELOCITIES, POTENTIAL_EV, KINETIC_EV))
        or len(energies_pot) != appender.num_frames
    ):
        appender.close()
        raise QdgapError(
            f"{part}: the resume state does not match the frames (killed while writing?); delete it to start over"
        )
    x = np.asarray(saved[POSITIONS_F64], dtype=np.float64)
    potential = factory(start.numbers, np.asarray(start.positions_ang, dtype=np.float64), config.method)
    # The wavefunction is not stored: the first SCF after a resume starts from tblite's guess.
    state = MDState(x, np.asarray(saved[VELOCITIES], dtype=np.float64), potential(x))
    energies = list(zip(energies_pot.tolist(), energies_kin.tolist(), strict=True))
    return appender, potential, state, energies, float(saved.get(WALL_S, 0.0))


def _what(key: str) -> str:
    return {
        ATTR_MD_CONFIG: "method, time step, thermostat or seed",
        schema.ATTR_SOURCE: "input file",
    }.get(key, "input (its sha256 differs)")
