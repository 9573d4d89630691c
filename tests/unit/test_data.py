"""Trajectory file round-trips, labels CSV parsing and validation (core.data)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from qdgap.core.common import schema
from qdgap.core.common.errors import QdgapError
from qdgap.core.common.labels import atom_labels, formula
from qdgap.core.data.importers import read_labels_csv
from qdgap.core.data.trajectory import (
    TrajectoryAppender,
    make_trajectory,
    read_frame,
    read_trajectory,
    trajectory_info,
    validate_trajectory,
    write_trajectory,
)


def test_trajectory_h5_roundtrip(tmp_path, synthetic_traj):
    path = tmp_path / "t.h5"
    write_trajectory(synthetic_traj, path, source="test")
    back = read_trajectory(path)
    np.testing.assert_array_equal(back.numbers, synthetic_traj.numbers)
    np.testing.assert_array_equal(back.positions_ang, synthetic_traj.positions_ang)
    np.testing.assert_array_equal(back.time_fs, synthetic_traj.time_fs)
    np.testing.assert_array_equal(back.gap_ev, synthetic_traj.gap_ev)
    np.testing.assert_array_equal(back.pbc, synthetic_traj.pbc)
    assert back.positions_ang.dtype == np.float32 and back.gap_ev.dtype == np.float32
    assert back.attrs["source"] == "test" and back.attrs["qdgap_version"]
    assert len(back.sha256) == 64
    with h5py.File(path) as h5:
        assert h5.attrs[schema.ATTR_FORMAT] == schema.TRAJECTORY_FORMAT
        assert h5[schema.POSITIONS].chunks[0] <= 64 and h5[schema.POSITIONS].compression == "gzip"


def test_trajectory_read_frame_matches_full_read(tmp_path, synthetic_traj):
    path = tmp_path / "t.h5"
    write_trajectory(synthetic_traj, path)
    numbers, pos = read_frame(path, 17)
    np.testing.assert_array_equal(pos, synthetic_traj.positions_ang[17])
    np.testing.assert_array_equal(numbers, synthetic_traj.numbers)
    with pytest.raises(QdgapError, match="out of range"):
        read_frame(path, 10_000)


def test_trajectory_varying_cell_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    pos = rng.uniform(0, 8, size=(5, 4, 3))
    pos[:, :, 0] += np.arange(4) * 3.0
    cells = np.stack([np.eye(3) * (20 + i) for i in range(5)])
    traj = make_trajectory([1, 6, 7, 8], pos, time_fs=np.arange(5.0), cell_ang=cells, pbc=[True] * 3)
    write_trajectory(traj, tmp_path / "c.h5")
    back = read_trajectory(tmp_path / "c.h5")
    assert back.cell_ang.shape == (5, 3, 3)
    np.testing.assert_array_equal(back.cell_ang, cells)


def test_write_refuses_existing_without_force(tmp_path, synthetic_traj):
    path = tmp_path / "t.h5"
    write_trajectory(synthetic_traj, path)
    with pytest.raises(QdgapError, match="output exists"):
        write_trajectory(synthetic_traj, path)
    write_trajectory(synthetic_traj.select(np.arange(3)), path, force=True)
    assert read_trajectory(path).num_frames == 3


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["positions"].__setitem__((3, 0, 0), np.nan), "frame 3 has NaN or infinite coordinates"),
        (lambda d: d["positions"].__setitem__((2, 1, 1), np.inf), "frame 2 has NaN or infinite coordinates"),
        (lambda d: d["gap"].__setitem__(4, np.inf), "frame 4 has an infinite band gap"),
        (lambda d: d["time"].__setitem__(5, d["time"][4]), "not strictly increasing at frame 5"),
        (
            lambda d: d["positions"].__setitem__((6, 1), d["positions"][6, 0] + [0.3, 0, 0]),
            "frame 6 has two atoms 0.300 Å apart",
        ),
    ],
)
def test_validate_rejects(mutate, message, synthetic_traj):
    d = {
        "positions": synthetic_traj.positions_ang.copy(),
        "gap": synthetic_traj.gap_ev.copy(),
        "time": synthetic_traj.time_fs.copy(),
    }
    mutate(d)
    traj = make_trajectory(synthetic_traj.numbers, d["positions"], time_fs=d["time"], gap_ev=d["gap"])
    with pytest.raises(QdgapError, match=message):
        validate_trajectory(traj, source="x.h5")


def test_validate_allows_nan_gaps(synthetic_traj):
    gaps = synthetic_traj.gap_ev.copy()
    gaps[::2] = np.nan
    traj = make_trajectory(
        synthetic_traj.numbers, synthetic_traj.positions_ang, time_fs=synthetic_traj.time_fs, gap_ev=gaps
    )
    validate_trajectory(traj, source="x")
    assert trajectory_info(traj)["unlabelled_frames"] == (len(gaps) + 1) // 2


def test_validate_minimum_image_under_pbc():
    # Two atoms 0.2 Å apart across the cell boundary: close only under periodic boundaries.
    pos = np.array([[[0.1, 5, 5], [9.9, 5, 5]]])
    traj = make_trajectory([1, 1], pos, time_fs=[0.0], cell_ang=np.eye(3) * 10, pbc=[True] * 3)
    with pytest.raises(QdgapError, match="0.200 Å apart"):
        validate_trajectory(traj, source="x")
    validate_trajectory(make_trajectory([1, 1], pos, time_fs=[0.0]), source="x")


def test_read_rejects_wrong_format_and_version(tmp_path, synthetic_traj):
    path = tmp_path / "t.h5"
    write_trajectory(synthetic_traj, path)
    with h5py.File(path, "a") as h5:
        h5.attrs[schema.ATTR_VERSION] = 99
    with pytest.raises(QdgapError, match="version 99 is not supported"):
        read_trajectory(path)
    with h5py.File(path, "a") as h5:
        h5.attrs[schema.ATTR_FORMAT] = "something.else"
    with pytest.raises(QdgapError, match="not a qdgap trajectory"):
        read_trajectory(path)


def test_read_rejects_missing_dataset_and_garbage(tmp_path, synthetic_traj):
    path = tmp_path / "t.h5"
    write_trajectory(synthetic_traj, path)
    with h5py.File(path, "a") as h5:
        del h5[schema.GAP_EV]
    with pytest.raises(QdgapError, match="missing dataset.*gap_ev"):
        read_trajectory(path)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    with pytest.raises(QdgapError, match="not a readable HDF5 file"):
        read_trajectory(junk)


def test_appender_grows_resumes_and_finishes(tmp_path, synthetic_traj):
    path = tmp_path / "md.h5"
    first = synthetic_traj.select(np.arange(1))
    with TrajectoryAppender.create(path, first) as app:
        app.append(synthetic_traj.positions_ang[1], 1.0, 1.7, velocities=np.ones((17, 3)))
    with pytest.raises(QdgapError, match="unfinished trajectory"):
        read_trajectory(path)
    with TrajectoryAppender(path) as app:  # a resumed run
        assert app.num_frames == 2
        np.testing.assert_array_equal(app.read_state()["velocities"], np.ones((17, 3)))
        app.append(synthetic_traj.positions_ang[2], 2.0, 1.8)
        app.finish()
    back = read_trajectory(path)
    assert back.num_frames == 3
    np.testing.assert_array_equal(back.positions_ang, synthetic_traj.positions_ang[:3])


def test_labels_csv_variants(tmp_path):
    (tmp_path / "a.csv").write_text("st1.vasp,1.5\nst3.vasp,1.6\n")
    ids, gaps = read_labels_csv(tmp_path / "a.csv")
    assert ids == [1, 3] and gaps.tolist() == [1.5, 1.6]
    (tmp_path / "b.csv").write_text("Files,HOMO (eV),LUMO (eV),Bandgap (eV),LUMO-lumo+1 gap (eV)\nst5,-5,-3,2.0,0.5\n")
    ids, gaps = read_labels_csv(tmp_path / "b.csv")
    assert ids == [5] and gaps.tolist() == [2.0]
    ids, gaps = read_labels_csv(tmp_path / "b.csv", gap_column="LUMO (eV)")
    assert gaps.tolist() == [-3.0]
    (tmp_path / "c.csv").write_text("1.1\n1.2\n")
    ids, gaps = read_labels_csv(tmp_path / "c.csv")
    assert ids == [None, None] and gaps.tolist() == [1.1, 1.2]
    (tmp_path / "d.csv").write_text("st1,abc\n")
    with pytest.raises(QdgapError, match="row 1: the gap 'abc' is not a number"):
        read_labels_csv(tmp_path / "d.csv")
    with pytest.raises(QdgapError, match="no column 'Gap'"):
        read_labels_csv(tmp_path / "b.csv", gap_column="Gap")


def test_atom_labels_count_within_species():
    numbers = np.array([48, 48, 34, 17, 48, 34, 17])
    assert atom_labels(numbers) == ["Cd1", "Cd2", "Se1", "Cl1", "Cd3", "Se2", "Cl2"]
    assert formula(numbers) == "Cd3Se2Cl2"
