"""``qdgap select`` and ``qdgap label`` through the real entry point, ``--frames-from`` for finetune and
ensemble train, and the calibrated datasets ``predict`` writes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from qdgap.core.store import runs as rf
from tests.conftest import assert_one_line_error


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_select_help(run_cli):
    r = run_cli("select", "--help")
    assert r.exit_code == 0
    for opt in ("--runs", "--data", "--budget", "--strategy", "--candidates", "--min-separation-fs", "--structures"):
        assert opt in r.stdout, opt
    assert run_cli("label", "--help").exit_code == 0


@pytest.mark.parametrize("strategy", ["spread", "spread-diverse", "random", "grid"])
def test_select_writes_frames_outside_the_pools(run_cli, tmp_path, tiny_runs, synthetic_h5, strategy):
    out = tmp_path / "selection.csv"
    r = run_cli(
        "select", "--runs", tiny_runs, "--data", synthetic_h5, "--budget", 6, "--strategy", strategy,
        "-o", out, "--structures", tmp_path / "dft", "--device", "cpu", "--min-separation-fs", 3,
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    rows = _rows(out)
    frames = [int(row["frame_index"]) for row in rows]
    assert len(frames) == 6 and len(set(frames)) == 6
    pools = set()
    for m in rf.load_members(tiny_runs):
        for k in ("train", "val", "test"):
            pools |= set(m.split[k])
    assert not pools & set(frames)
    times = np.sort([float(row["time_fs"]) for row in rows])
    assert np.diff(times).min() >= 3
    assert sorted(p.name for p in (tmp_path / "dft").iterdir()) == sorted(f"st{f}.vasp" for f in frames)
    again = tmp_path / "again.csv"
    assert run_cli(
        "select", "--runs", tiny_runs, "--data", synthetic_h5, "--budget", 6, "--strategy", strategy,
        "-o", again, "--device", "cpu", "--min-separation-fs", 3,
    ).exit_code == 0  # fmt: skip
    assert [row["frame_index"] for row in _rows(again)] == [str(f) for f in frames]


def test_select_refuses_bad_input(run_cli, tmp_path, tiny_runs, synthetic_h5):
    base = ("select", "--runs", tiny_runs, "--data", synthetic_h5, "--device", "cpu", "-o", tmp_path / "s.csv")
    assert_one_line_error(run_cli(*base, "--strategy", "best"), "--strategy")
    assert_one_line_error(run_cli(*base, "--budget", 0), "--budget")
    assert_one_line_error(run_cli(*base, "--budget", 5000), "--budget 5000")
    assert_one_line_error(run_cli(*base, "--budget", 50, "--min-separation-fs", 100), "lower --min-separation-fs")
    assert_one_line_error(run_cli("select", "--runs", tmp_path / "none", *base[3:]), "no such runs folder")
    assert not (tmp_path / "s.csv").exists()


def test_predict_writes_calibrated_datasets(run_cli, tmp_path, tiny_runs, synthetic_h5):
    """Two tiny members hold too few frames out together to calibrate: predict says so and writes the raw spread."""
    from qdgap.core.common import schema
    from qdgap.core.store.results import read_results

    out = tmp_path / "p.h5"
    r = run_cli("predict", "--runs", tiny_runs, "--data", synthetic_h5, "-o", out, "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    assert "not calibrated" in r.stdout
    data, _ = read_results(out, fmt=schema.PREDICTIONS_FORMAT)
    assert schema.GAP_STD_EV in data and schema.GAP_STD_CALIBRATED_EV not in data
    assert_one_line_error(
        run_cli("predict", "--runs", tiny_runs, "--data", synthetic_h5, "-o", out, "--level", 1.2), "--level"
    )


def test_predict_with_a_calibration(run_cli, tmp_path, tiny_runs, synthetic_h5):
    from qdgap.core.analysis import calibration as cb
    from qdgap.core.common import schema
    from qdgap.core.store.results import read_results

    members = rf.load_members(tiny_runs)
    cal = cb.Calibration(
        shared=0.2, num_members=2, scores=tuple(np.linspace(0.1, 3.0, 40)), threshold_std_ev=1e-4, n_frames=40,
        seeds=tuple(m.seed for m in members), model_sha256=tuple(m.model_sha256 for m in members),
    )  # fmt: skip
    runs = tmp_path / "runs"
    runs.mkdir()
    for m in members:
        (runs / m.path.name).symlink_to(m.path, target_is_directory=True)
    (runs / cb.CALIBRATION_JSON).write_text(json.dumps(cal.to_json()))
    out = tmp_path / "p.h5"
    r = run_cli("predict", "--runs", runs, "--data", synthetic_h5, "-o", out, "--device", "cpu", "--level", 0.9)
    assert r.exit_code == 0, r.stderr
    assert "coverage on" in r.stdout and "outside what the ensemble knows" in r.stdout
    data, attrs = read_results(out, fmt=schema.PREDICTIONS_FORMAT)
    np.testing.assert_allclose(data[schema.GAP_STD_CALIBRATED_EV], data[schema.GAP_STD_EV] * cal.scale, rtol=1e-5)
    half = data[schema.GAP_HI_EV] - data[schema.GAP_MEAN_EV]
    np.testing.assert_allclose(half, 1.6448536 * data[schema.GAP_STD_CALIBRATED_EV], rtol=1e-4, atol=1e-6)
    assert data[schema.EXTRAPOLATING].dtype == bool
    assert attrs[schema.ATTR_INTERVAL_LEVEL] == pytest.approx(0.9)


def test_frames_from_trains_on_exactly_those_frames(run_cli, tmp_path, synthetic_h5):
    sel = tmp_path / "sel.csv"
    frames = list(range(3, 60, 3))  # 19 labelled frames, none of them on the stride-10 grid
    sel.write_text("frame_index\n" + "\n".join(map(str, frames)) + "\n")
    out = tmp_path / "runs"
    r = run_cli(
        "ensemble", "train", "--members", 1, "--preset", "tiny", "--epochs", 1, "--data", synthetic_h5,
        "-o", out, "--device", "cpu", "-j", 1, "--frames-from", sel,
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    split = json.loads((out / "run_0" / rf.SPLIT_JSON).read_text())
    assert sorted(split["train"] + split["val"] + split["test"]) == frames
    assert json.loads((out / "run_0" / rf.CONFIG_JSON).read_text())["train"]["pool_frames"] == frames


def test_frames_from_refuses_unlabelled_or_out_of_range(run_cli, tmp_path, tiny_runs):
    from qdgap.core.data.trajectory import read_trajectory, write_trajectory
    from qdgap.testing.synthetic import synthetic_trajectory

    traj = synthetic_trajectory(40, seed=11)
    gap = traj.gap_ev.copy()
    gap[7] = np.nan
    ext = tmp_path / "ext.h5"
    write_trajectory(type(traj)(**{**traj.__dict__, "gap_ev": gap}), ext)
    assert not np.isfinite(read_trajectory(ext).gap_ev[7])
    for frames, fragment in ((["1", "7", "9"], "frame 7 has no gap"), (["1", "400"], "frame 400 is outside")):
        sel = tmp_path / "sel.csv"
        sel.write_text("frame_index\n" + "\n".join(frames) + "\n")
        for args in (
            ("finetune", "--runs", tiny_runs, "--data", ext, "-o", tmp_path / "ft", "--epochs", 1, "-j", 1),
            ("ensemble", "train", "--members", 1, "--preset", "tiny", "--data", ext, "-o", tmp_path / "r"),
        ):
            r = run_cli(*args, "--device", "cpu", "--frames-from", sel)
            assert_one_line_error(r, fragment, "sel.csv")
        assert not (tmp_path / "ft").exists() and not (tmp_path / "r").exists()


def test_label_needs_xtb_flag_and_a_good_selection(run_cli, tmp_path, synthetic_h5):
    sel = tmp_path / "sel.csv"
    sel.write_text("frame_index\n1\n1\n")
    assert_one_line_error(run_cli("label", sel, "--data", synthetic_h5), "--xtb")
    assert_one_line_error(run_cli("label", sel, "--data", synthetic_h5, "--xtb"), "more than once")
    sel.write_text("frame_index\n999\n")
    assert_one_line_error(run_cli("label", sel, "--data", synthetic_h5, "--xtb"), "outside")


def test_label_without_tblite_is_one_line(run_cli, tmp_path, synthetic_h5, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tblite.interface", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "tblite", None)
    sel = tmp_path / "sel.csv"
    sel.write_text("frame_index\n1\n")
    assert_one_line_error(run_cli("label", sel, "--data", synthetic_h5, "--xtb"), "tblite")


@pytest.mark.slow
def test_label_writes_xtb_gaps_into_the_trajectory(run_cli, tmp_path):
    pytest.importorskip("tblite.interface")
    import shutil

    from qdgap.cli.options import DEMO_EXTENDED
    from qdgap.core.data.trajectory import read_trajectory

    data = tmp_path / "ext.h5"
    shutil.copy(DEMO_EXTENDED, data)
    before = read_trajectory(data).gap_ev
    sel = tmp_path / "sel.csv"
    sel.write_text("frame_index\n10\n200\n")
    r = run_cli("label", sel, "--data", data, "--xtb")
    assert r.exit_code == 0, r.stderr
    after = read_trajectory(data).gap_ev
    np.testing.assert_allclose(after[[10, 200]], before[[10, 200]], atol=2e-3)  # float32 positions: sub-meV
    np.testing.assert_array_equal(np.delete(after, [10, 200]), np.delete(before, [10, 200]))
