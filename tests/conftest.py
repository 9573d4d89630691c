"""Shared fixtures: a CLI runner that goes through ``main`` (so exit codes are the real ones),
the published seed data (skipped when absent), and small synthetic trajectories."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

SEED_DATA = Path(__file__).resolve().parents[2] / "shared" / "seed-data"
if "QDGAP_SEED_DATA" in os.environ:
    SEED_DATA = Path(os.environ["QDGAP_SEED_DATA"])

# Tests must not depend on how many cores the machine has, and must not oversubscribe two.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capsys):
    """Run ``qdgap ARGS...`` in-process through the real entry point."""
    from qdgap.cli.app import main

    def run(*args: object) -> CliResult:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
        out = capsys.readouterr()
        return CliResult(int(exc.value.code), out.out, out.err)

    return run


@pytest.fixture(scope="session")
def seed_data() -> Path:
    if not SEED_DATA.is_dir():
        pytest.skip(f"published seed data not found at {SEED_DATA}")
    return SEED_DATA


@pytest.fixture(scope="session")
def synthetic_traj():
    from qdgap.testing.synthetic import synthetic_trajectory

    return synthetic_trajectory(120, seed=0)


@pytest.fixture(scope="session")
def synthetic_h5(tmp_path_factory, synthetic_traj) -> Path:
    from qdgap.core.data.trajectory import write_trajectory

    path = tmp_path_factory.mktemp("traj") / "synthetic.h5"
    write_trajectory(synthetic_traj, path)
    return path


def assert_one_line_error(result: CliResult, *fragments: str) -> None:
    """Exit code 2, exactly one line on stderr naming each fragment, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, synthetic_h5) -> Path:
    """A runs folder with two finished tiny members (seeds 0 and 1) trained on ``synthetic_h5``."""
    from qdgap.core.config import PRESETS
    from qdgap.core.data.trajectory import read_trajectory
    from qdgap.core.store import runs as rf
    from qdgap.core.train.loop import train_member

    runs = tmp_path_factory.mktemp("runs")
    traj = read_trajectory(synthetic_h5)
    for seed in (0, 1):
        train_member(
            traj,
            PRESETS["tiny"],
            seed=seed,
            run_dir=rf.run_dir(runs, seed),
            device="cpu",
            cache_dir=runs / rf.CACHE_DIR,
            data_path=str(synthetic_h5),
        )
    return runs


@pytest.fixture(scope="session")
def calibrated_runs(tmp_path_factory, tiny_runs, synthetic_h5) -> Path:
    """``tiny_runs``' two members beside a stored calibration (two tiny members hold too few frames out
    together to fit one), so the calibrated columns are exercised; the threshold flags half the frames."""
    import dataclasses
    import json

    import numpy as np

    from qdgap import Ensemble
    from qdgap.core.analysis import calibration as cb
    from qdgap.core.store import runs as rf

    members = rf.load_members(tiny_runs)
    cal = cb.Calibration(
        shared=0.2, num_members=2, scores=tuple(np.linspace(0.1, 3.0, 40)), threshold_std_ev=0.0, n_frames=40,
        seeds=tuple(m.seed for m in members), model_sha256=tuple(m.model_sha256 for m in members),
    )  # fmt: skip
    raw_std = Ensemble.load(tiny_runs, device="cpu").predict(synthetic_h5).std_ev
    cal = dataclasses.replace(cal, threshold_std_ev=float(np.median(raw_std) * cal.scale))
    runs = tmp_path_factory.mktemp("calibrated") / "runs"
    runs.mkdir()
    for m in members:
        (runs / m.path.name).symlink_to(m.path, target_is_directory=True)
    (runs / cb.CALIBRATION_JSON).write_text(json.dumps(cal.to_json()))
    return runs
