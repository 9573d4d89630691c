"""``qdgap data build-qd`` and ``qdgap data simulate`` through the real entry point.

The MD runs here swap GFN-xTB for the spring potential of tests/unit/test_md.py,
so they need no tblite and take seconds.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from qdgap.core.data.importers import read_structure
from qdgap.core.data.trajectory import read_trajectory, read_trajectory_extras
from qdgap.core.sim import md
from tests.conftest import assert_one_line_error
from tests.unit.test_md import SpringPotential


@pytest.fixture
def qd_xyz(run_cli, tmp_path):
    path = tmp_path / "qd.xyz"
    r = run_cli("data", "build-qd", "--no-relax", "-o", path)
    assert r.exit_code == 0, r.stderr
    return path


@pytest.fixture
def springs(monkeypatch):
    """Replace GFN-xTB by springs around the structure a run starts from."""
    monkeypatch.setattr(md, "XtbPotential", lambda z, x, method: SpringPotential(z, x, method))


def test_build_qd_help(run_cli):
    r = run_cli("data", "build-qd", "--help")
    assert r.exit_code == 0 and "--no-relax" in r.stdout


def test_build_qd_unrelaxed(run_cli, qd_xyz):
    traj = read_structure(qd_xyz)
    assert traj.formula == "Cd28Se17Cl22" and traj.num_atoms == 67


def test_build_qd_refuses_existing_output(run_cli, qd_xyz):
    before = qd_xyz.read_bytes()
    r = run_cli("data", "build-qd", "--no-relax", "-o", qd_xyz)
    assert_one_line_error(r, str(qd_xyz), "--force")
    assert qd_xyz.read_bytes() == before
    assert run_cli("data", "build-qd", "--no-relax", "-o", qd_xyz, "--force").exit_code == 0


def test_build_qd_without_tblite(run_cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tblite.ase", None)  # import fails as if tblite were absent
    r = run_cli("data", "build-qd", "-o", tmp_path / "qd.xyz")
    assert_one_line_error(r, "tblite")
    assert not (tmp_path / "qd.xyz").exists()


def test_build_qd_rejects_unknown_method(run_cli, tmp_path):
    assert_one_line_error(run_cli("data", "build-qd", "--method", "PM6", "-o", tmp_path / "q.xyz"), "PM6")


def test_simulate_help(run_cli):
    r = run_cli("data", "simulate", "--help")
    assert r.exit_code == 0 and "--continue-from" in r.stdout and "--thermalise-steps" in r.stdout


def test_simulate_and_continue(run_cli, tmp_path, qd_xyz, springs):
    out = tmp_path / "traj.h5"
    r = run_cli("data", "simulate", qd_xyz, "-o", out, "--steps", 6, "--thermalise-steps", 4, "--seed", 2)
    assert r.exit_code == 0, r.stderr
    t = read_trajectory(out)
    assert t.formula == "Cd28Se17Cl22" and t.num_frames == 7 and t.labelled.all()
    np.testing.assert_allclose(t.time_fs, np.arange(7.0))
    assert not md.partial_path(out).exists()

    ext = tmp_path / "ext.h5"
    r = run_cli("data", "simulate", "--continue-from", out, "-o", ext, "--steps", 3)
    assert r.exit_code == 0, r.stderr
    e = read_trajectory(ext)
    np.testing.assert_allclose(e.time_fs, np.arange(6.0, 10.0))
    np.testing.assert_allclose(e.positions_ang[0], t.positions_ang[-1], atol=1e-6)
    assert md.VELOCITIES in read_trajectory_extras(ext)


def test_simulate_missing_input(run_cli, tmp_path):
    r = run_cli("data", "simulate", tmp_path / "nope.xyz", "-o", tmp_path / "t.h5", "--steps", 2)
    assert_one_line_error(r, "nope.xyz", "no such file")


def test_simulate_unreadable_input(run_cli, tmp_path):
    bad = tmp_path / "qd.xyz"
    bad.write_text("this is not\nan xyz file\n")
    r = run_cli("data", "simulate", bad, "-o", tmp_path / "t.h5", "--steps", 2)
    assert_one_line_error(r, "qd.xyz")
    assert not (tmp_path / "t.h5").exists()


def test_simulate_refuses_existing_output(run_cli, tmp_path, qd_xyz):
    out = tmp_path / "t.h5"
    out.write_bytes(b"keep me")
    r = run_cli("data", "simulate", qd_xyz, "-o", out, "--steps", 2)
    assert_one_line_error(r, "t.h5", "--force")
    assert out.read_bytes() == b"keep me"


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--steps", "0"], "--steps"),
        (["--steps", "-3"], "--steps"),
        (["--steps", "2", "--temperature", "0"], "--temperature"),
        (["--steps", "2", "--method", "PM6"], "PM6"),
        (["--steps", "2", "--dt-fs", "0"], "--dt-fs"),
    ],
)
def test_simulate_rejects_bad_options(run_cli, tmp_path, qd_xyz, args, fragment):
    r = run_cli("data", "simulate", qd_xyz, "-o", tmp_path / "t.h5", *args)
    assert_one_line_error(r, fragment)


def test_simulate_needs_exactly_one_input(run_cli, tmp_path, qd_xyz, synthetic_h5):
    assert_one_line_error(run_cli("data", "simulate", "-o", tmp_path / "t.h5"), "exactly one")
    r = run_cli("data", "simulate", qd_xyz, "--continue-from", synthetic_h5, "-o", tmp_path / "t.h5")
    assert_one_line_error(r, "exactly one")


def test_simulate_continue_from_foreign_file(run_cli, tmp_path, synthetic_h5):
    r = run_cli("data", "simulate", "--continue-from", synthetic_h5, "-o", tmp_path / "t.h5", "--steps", 2)
    assert_one_line_error(r, str(synthetic_h5), "no final velocities")


def test_simulate_without_tblite(run_cli, tmp_path, qd_xyz, monkeypatch):
    monkeypatch.setitem(sys.modules, "tblite.interface", None)  # import fails as if tblite were absent
    out = tmp_path / "t.h5"
    r = run_cli("data", "simulate", qd_xyz, "-o", out, "--steps", 2)
    assert_one_line_error(r, "tblite")
    assert list(tmp_path.glob("t.h5*")) == []  # no output, partial file or lock left behind
