"""``qdgap data import`` and ``qdgap data info`` through the real entry point."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms
from ase.io import write

from qdgap.core.data.trajectory import read_trajectory
from tests.conftest import assert_one_line_error


def _frames(traj, n=None, *, with_gap=True, cell=None):
    out = []
    for i in range(n or traj.num_frames):
        a = Atoms(numbers=traj.numbers, positions=traj.positions_ang[i], cell=cell, pbc=cell is not None)
        if with_gap:
            a.info["gap"] = float(traj.gap_ev[i])
        out.append(a)
    return out


def test_data_help(run_cli):
    r = run_cli("data", "import", "--help")
    assert r.exit_code == 0 and "--gap-column" in r.stdout and "--stride" in r.stdout


def test_import_extxyz_roundtrip(run_cli, tmp_path, synthetic_traj):
    src = tmp_path / "md.extxyz"
    write(src, _frames(synthetic_traj, 30), format="extxyz")
    r = run_cli("data", "import", src, "-o", tmp_path / "t.h5", "--dt-fs", "0.5")
    assert r.exit_code == 0, r.stderr
    t = read_trajectory(tmp_path / "t.h5")
    np.testing.assert_allclose(t.positions_ang, synthetic_traj.positions_ang[:30], atol=1e-5)
    np.testing.assert_allclose(t.gap_ev, synthetic_traj.gap_ev[:30], atol=1e-6)
    np.testing.assert_allclose(t.time_fs, np.arange(30) * 0.5)
    assert not t.pbc.any()


def test_import_ase_traj_with_stride_and_gap_key(run_cli, tmp_path, synthetic_traj):
    frames = _frames(synthetic_traj, 20, with_gap=False, cell=np.eye(3) * 30)
    for a, g in zip(frames, synthetic_traj.gap_ev, strict=False):
        a.info["homo_lumo"] = float(g)
    write(tmp_path / "md.traj", frames)
    r = run_cli(
        "data", "import", tmp_path / "md.traj", "-o", tmp_path / "t.h5", "--gap-key", "homo_lumo", "--stride", "3"
    )
    assert r.exit_code == 0, r.stderr
    t = read_trajectory(tmp_path / "t.h5")
    assert t.num_frames == 7
    np.testing.assert_allclose(t.gap_ev, synthetic_traj.gap_ev[:20:3], atol=1e-6)
    np.testing.assert_allclose(t.time_fs, np.arange(0, 20, 3))
    assert t.pbc.all() and t.cell_ang.shape == (3, 3)


def test_import_xdatcar_with_gaps_csv(run_cli, tmp_path, synthetic_traj):
    frames = _frames(synthetic_traj, 12, with_gap=False, cell=np.eye(3) * 25)
    write(tmp_path / "XDATCAR", frames, format="vasp-xdatcar")
    # Only odd frames labelled, as in the published data.
    rows = "".join(f"{i},{synthetic_traj.gap_ev[i - 1]:.6f}\n" for i in range(1, 13, 2))
    (tmp_path / "gaps.csv").write_text(rows)
    r = run_cli("data", "import", tmp_path / "XDATCAR", "--gaps", tmp_path / "gaps.csv", "-o", tmp_path / "t.h5")
    assert r.exit_code == 0, r.stderr
    t = read_trajectory(tmp_path / "t.h5")
    assert t.num_frames == 12 and int(t.labelled.sum()) == 6
    np.testing.assert_allclose(t.gap_ev[::2], synthetic_traj.gap_ev[:12:2], atol=1e-5)
    assert np.isnan(t.gap_ev[1::2]).all()
    np.testing.assert_allclose(t.positions_ang, synthetic_traj.positions_ang[:12], atol=1e-4)


def test_import_poscar_folder_with_id_prop(run_cli, tmp_path, synthetic_traj):
    folder = tmp_path / "structures"
    folder.mkdir()
    # Written out of order and with gaps in the numbering; the import orders by N.
    for n in (3, 1, 10, 2):
        write(folder / f"st{n}.vasp", _frames(synthetic_traj, n, cell=np.eye(3) * 22)[n - 1], format="vasp")
    (folder / "id_prop.csv").write_text("st1.vasp,1.5\nst2.vasp,1.6\nst10.vasp,1.7\n")
    r = run_cli("data", "import", folder, "-o", tmp_path / "t.h5", "--dt-fs", "2")
    assert r.exit_code == 0, r.stderr
    t = read_trajectory(tmp_path / "t.h5")
    np.testing.assert_allclose(t.time_fs, [2, 4, 6, 20])
    np.testing.assert_allclose(t.gap_ev, [1.5, 1.6, np.nan, 1.7])
    np.testing.assert_allclose(t.positions_ang[3], synthetic_traj.positions_ang[9], atol=1e-5)


def test_import_published_seed_folder(run_cli, tmp_path, seed_data):
    """The original study's files, as they are: st<N>.vasp with label suffixes, a 6-column CSV."""
    out = tmp_path / "seed.h5"
    r = run_cli(
        "data",
        "import",
        seed_data / "cl_qd" / "structures",
        "--gaps",
        seed_data / "cl_qd" / "Cl_QD_elec_1-10k.csv",
        "-o",
        out,
    )
    assert r.exit_code == 0, r.stderr
    t = read_trajectory(out)
    assert t.formula == "Cd28Se17Cl22" and t.num_frames == 50
    np.testing.assert_allclose(t.time_fs, np.arange(1, 51))
    assert np.isfinite(t.gap_ev[::2]).all() and np.isnan(t.gap_ev[1::2]).all()  # odd st<N> labelled
    assert t.gap_ev[0] == pytest.approx(1.664289, abs=1e-6)  # st1 in the CSV
    assert t.atom_labels[27:30] == ["Cd28", "Se1", "Se2"] and t.atom_labels[-1] == "Cl22"
    info = run_cli("data", "info", out, "--json")
    summary = json.loads(info.stdout)
    assert summary["labelled_frames"] == 25 and summary["formula"] == "Cd28Se17Cl22"


def test_info_prints_summary(run_cli, synthetic_h5):
    r = run_cli("data", "info", synthetic_h5)
    assert r.exit_code == 0
    for text in ("Cd4Se13", "120", "labelled", "sha256", "eV"):
        assert text in r.stdout


# --------------------------------------------------------------------------------------
# Every validation error: exit 2, one line naming the problem, no output file left behind.
# --------------------------------------------------------------------------------------


def _bad_inputs(tmp_path, traj):
    cases = {}
    frames = _frames(traj, 6)
    mixed = [a.copy() for a in frames]
    mixed[3] = mixed[3][:-1]
    write(tmp_path / "count.extxyz", mixed)
    cases["atom count"] = ([tmp_path / "count.extxyz"], [], "has 16 atoms, the first frame has 17")
    swapped = [a.copy() for a in frames]
    z = swapped[2].numbers.copy()
    z[[0, 5]] = z[[5, 0]]
    swapped[2].numbers = z
    write(tmp_path / "order.extxyz", swapped)
    cases["species order"] = ([tmp_path / "order.extxyz"], [], "species order differs")
    nan = [a.copy() for a in frames]
    nan[4].positions[2, 1] = np.nan
    write(tmp_path / "nan.extxyz", nan)
    cases["nan coordinates"] = ([tmp_path / "nan.extxyz"], [], "NaN or infinite coordinates")
    infgap = [a.copy() for a in frames]
    infgap[1].info["gap"] = float("inf")
    write(tmp_path / "infgap.extxyz", infgap)
    cases["infinite gap"] = ([tmp_path / "infgap.extxyz"], [], "infinite band gap")
    close = [a.copy() for a in frames]
    close[5].positions[1] = close[5].positions[0] + [0.2, 0, 0]
    write(tmp_path / "close.extxyz", close)
    cases["close atoms"] = ([tmp_path / "close.extxyz"], [], "0.200 Å apart")
    folder = tmp_path / "dup"
    folder.mkdir()
    boxed = _frames(traj, 2, cell=np.eye(3) * 22)
    write(folder / "st1.vasp", boxed[0], format="vasp")
    write(folder / "st01.vasp", boxed[1], format="vasp")
    cases["time not increasing"] = ([folder], [], "two files have frame number 1")
    (tmp_path / "empty.extxyz").write_text("")
    cases["empty input"] = ([tmp_path / "empty.extxyz"], [], "empty")
    (tmp_path / "emptydir").mkdir()
    cases["empty folder"] = ([tmp_path / "emptydir"], [], "no POSCAR or .vasp files")
    (tmp_path / "noise.xyz").write_text("this is not\na structure file\n")
    cases["unreadable"] = ([tmp_path / "noise.xyz"], [], "noise.xyz")
    (tmp_path / "weird.qqq").write_text("hello\n")
    cases["unknown format"] = ([tmp_path / "weird.qqq"], [], "weird.qqq")
    cases["missing file"] = ([tmp_path / "nope.xyz"], [], "no such file")
    write(tmp_path / "ok.extxyz", frames)
    (tmp_path / "short.csv").write_text("1.0\n1.1\n")
    cases["labels count"] = ([tmp_path / "ok.extxyz"], ["--gaps", tmp_path / "short.csv"], "2 label rows for 6 frames")
    (tmp_path / "far.csv").write_text("st100,1.0\nst101,1.1\n")
    cases["labels match nothing"] = (
        [tmp_path / "ok.extxyz"],
        ["--gaps", tmp_path / "far.csv"],
        "no label row matches a frame",
    )
    (tmp_path / "twice.csv").write_text("st1,1.0\nst1,1.1\n")
    cases["labels twice"] = (
        [tmp_path / "ok.extxyz"],
        ["--gaps", tmp_path / "twice.csv"],
        "frame 1 is labelled more than once",
    )
    cases["bad stride"] = ([tmp_path / "ok.extxyz"], ["--stride", "0"], "--stride must be a positive integer")
    return cases


def test_import_rejects_bad_input(run_cli, tmp_path, synthetic_traj):
    cases = _bad_inputs(tmp_path, synthetic_traj)
    for name, (sources, extra, message) in cases.items():
        out = tmp_path / f"out-{name.replace(' ', '_')}.h5"
        r = run_cli("data", "import", *sources, *extra, "-o", out)
        assert r.exit_code == 2, (name, r.stderr)
        assert_one_line_error(r, message)
        assert not out.exists(), name
        assert not list(tmp_path.glob(f".{out.name}*")), name


def test_import_refuses_existing_output(run_cli, tmp_path, synthetic_traj):
    write(tmp_path / "ok.extxyz", _frames(synthetic_traj, 4))
    out = tmp_path / "t.h5"
    out.write_text("precious")
    r = run_cli("data", "import", tmp_path / "ok.extxyz", "-o", out)
    assert_one_line_error(r, "output exists", "--force")
    assert out.read_text() == "precious"
    assert run_cli("data", "import", tmp_path / "ok.extxyz", "-o", out, "--force").exit_code == 0
    assert read_trajectory(out).num_frames == 4


def test_info_rejects_non_trajectory(run_cli, tmp_path):
    (tmp_path / "x.h5").write_bytes(b"not hdf5 at all")
    assert_one_line_error(run_cli("data", "info", tmp_path / "x.h5"), "x.h5", "not a readable HDF5 file")


# --------------------------------------------------------------------------------------
# Tar archives of st<N>.vasp (the original study's release format) and --numbers
# --------------------------------------------------------------------------------------


def _tar(path, files, mode="w:xz"):
    """Pack ``files`` (name inside the archive -> bytes) into ``path``, in the order given."""
    import io
    import tarfile

    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _poscar_folder(tmp_path, traj, numbers):
    folder = tmp_path / "structures"
    folder.mkdir()
    for n in numbers:
        write(folder / f"st{n}.vasp", _frames(traj, n, cell=np.eye(3) * 22)[n - 1], format="vasp")
    return folder


@pytest.mark.parametrize("mode", ["w:xz", "w:gz", "w"])
def test_import_archive_equals_folder_import(run_cli, tmp_path, synthetic_traj, mode):
    numbers = (3, 1, 12, 2, 7)
    folder = _poscar_folder(tmp_path, synthetic_traj, numbers)
    suffix = {"w:xz": ".tar.xz", "w:gz": ".tar.gz", "w": ".tar"}[mode]
    # Members in a sub-folder and out of order, with a directory entry and macOS litter, as real archives have.
    files = {f"traj/st{n}.vasp": (folder / f"st{n}.vasp").read_bytes() for n in numbers}
    files["traj/._st1.vasp"] = b"\x00\x05\x16\x07 AppleDouble"
    archive = _tar(tmp_path / f"traj{suffix}", files, mode)
    labels = tmp_path / "labels.csv"
    labels.write_text("Files,Bandgap (eV)\nst1,1.5\nst3,1.6\nst7,1.7\n")
    a, b = tmp_path / "from_folder.h5", tmp_path / "from_archive.h5"
    assert run_cli("data", "import", folder, "--gaps", labels, "-o", a).exit_code == 0
    r = run_cli("data", "import", archive, "--gaps", labels, "-o", b)
    assert r.exit_code == 0, r.stderr
    ta, tb = read_trajectory(a), read_trajectory(b)
    for name in ("numbers", "positions_ang", "time_fs", "gap_ev", "cell_ang", "pbc"):
        np.testing.assert_array_equal(getattr(ta, name), getattr(tb, name), err_msg=name)
    np.testing.assert_array_equal(tb.time_fs, [1, 2, 3, 7, 12])


def test_import_numbers_range_for_folder_and_archive(run_cli, tmp_path, synthetic_traj):
    numbers = (1, 2, 3, 4, 5, 6)
    folder = _poscar_folder(tmp_path, synthetic_traj, numbers)
    archive = _tar(
        tmp_path / "t.tar.gz", {f"st{n}.vasp": (folder / f"st{n}.vasp").read_bytes() for n in numbers}, "w:gz"
    )
    for i, source in enumerate((folder, archive)):
        out = tmp_path / f"r{i}.h5"
        r = run_cli("data", "import", source, "--numbers", "2-4", "-o", out)
        assert r.exit_code == 0, r.stderr
        t = read_trajectory(out)
        np.testing.assert_array_equal(t.time_fs, [2, 3, 4])
        np.testing.assert_allclose(t.positions_ang[0], synthetic_traj.positions_ang[1], atol=1e-5)


def test_import_archive_bad_input(run_cli, tmp_path, synthetic_traj):
    folder = _poscar_folder(tmp_path, synthetic_traj, (1, 2))
    good = {f"st{n}.vasp": (folder / f"st{n}.vasp").read_bytes() for n in (1, 2)}
    whole = _tar(tmp_path / "whole.tar.xz", good).read_bytes()
    (tmp_path / "damaged.tar.xz").write_bytes(whole[: len(whole) // 2])
    _tar(tmp_path / "readme.tar.gz", {**good, "README.txt": b"hello"}, "w:gz")
    _tar(tmp_path / "notposcar.tar.gz", {**good, "st3.vasp": b"this is not a POSCAR\n"}, "w:gz")
    _tar(tmp_path / "twice.tar", {**good, "other/st2.vasp": good["st2.vasp"]}, "w")
    cases = {
        "damaged": (tmp_path / "damaged.tar.xz", [], "damaged or unreadable archive"),
        "readme": (tmp_path / "readme.tar.gz", [], "README.txt: not a POSCAR file"),
        "not poscar": (tmp_path / "notposcar.tar.gz", [], "st3.vasp: not a readable POSCAR file"),
        "repeated number": (tmp_path / "twice.tar", [], "two members have frame number 2"),
        "range matches nothing": (tmp_path / "whole.tar.xz", ["--numbers", "5-9"], "no structure has a number in 5-9"),
        "range reversed": (tmp_path / "whole.tar.xz", ["--numbers", "9-5"], "the range is empty"),
        "range garbage": (tmp_path / "whole.tar.xz", ["--numbers", "five"], "expected A-B"),
        "range on a file": (tmp_path / "ok.extxyz", ["--numbers", "1-2"], "--numbers selects st<N> structures"),
    }
    write(tmp_path / "ok.extxyz", _frames(synthetic_traj, 4))
    for name, (source, extra, message) in cases.items():
        out = tmp_path / f"out-{name.replace(' ', '_')}.h5"
        r = run_cli("data", "import", source, *extra, "-o", out)
        assert_one_line_error(r, message)
        assert not out.exists(), name
        assert not list(tmp_path.glob(f".{out.name}*")), name


def test_import_published_archive_matches_published_folder(run_cli, tmp_path, seed_data):
    """The first 50 members of the real 15,001-frame archive equal the 50 published files, labels and all."""
    cl = seed_data / "cl_qd"
    a, b = tmp_path / "folder.h5", tmp_path / "archive.h5"
    labels = cl / "Cl_QD_elec_1-10k.csv"
    assert run_cli("data", "import", cl / "structures", "--gaps", labels, "-o", a).exit_code == 0
    r = run_cli("data", "import", cl / "structures_15001.tar.xz", "--numbers", "1-50", "--gaps", labels, "-o", b)
    assert r.exit_code == 0, r.stderr
    ta, tb = read_trajectory(a), read_trajectory(b)
    np.testing.assert_array_equal(ta.positions_ang, tb.positions_ang)
    np.testing.assert_array_equal(ta.gap_ev, tb.gap_ev)
    np.testing.assert_array_equal(ta.time_fs, tb.time_fs)
