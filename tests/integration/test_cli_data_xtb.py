"""``qdgap data xtb``: the GFN1-xTB gap of chosen frames into the optional dataset xtb_gap_ev, resumable from
its parts, and its one-line errors. The demo trajectory was made with GFN1-xTB, so its own gaps are the
reference (float32 positions: agreement to a fraction of a meV)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from qdgap.cli.options import DEMO_EXTENDED
from qdgap.core.common import schema
from qdgap.core.data.trajectory import make_trajectory, read_trajectory, validate_trajectory, write_trajectory
from qdgap.core.workflow import label as lb
from tests.conftest import assert_one_line_error


def test_xtb_gap_dataset_round_trips_and_is_validated(tmp_path, synthetic_traj):
    from dataclasses import replace

    from qdgap.core.common.errors import QdgapError
    from qdgap.core.data.trajectory import trajectory_info

    f = synthetic_traj.num_frames
    xtb = np.full(f, np.nan, np.float32)
    xtb[[0, 3]] = [1.25, 1.5]
    traj = replace(synthetic_traj, xtb_gap_ev=xtb, attrs={schema.ATTR_XTB_METHOD: "GFN1-xTB"})
    write_trajectory(traj, tmp_path / "t.h5")
    back = read_trajectory(tmp_path / "t.h5")
    np.testing.assert_array_equal(back.xtb_gap_ev, xtb)
    assert back.select(np.array([3, 0])).xtb_gap_ev.tolist() == [1.5, 1.25]
    info = trajectory_info(back)
    assert (info["xtb_gap_frames"], info["xtb_method"]) == (2, "GFN1-xTB")
    assert read_trajectory(tmp_path / "t.h5").gap_ev.tolist() == pytest.approx(
        synthetic_traj.gap_ev.tolist(), nan_ok=True
    )
    bad = make_trajectory(traj.numbers, traj.positions_ang, time_fs=traj.time_fs, xtb_gap_ev=np.full(f, np.inf))
    with pytest.raises(QdgapError, match="infinite value in the xTB gaps"):
        validate_trajectory(bad, source="x")


def test_data_xtb_computes_the_chosen_frames_and_resumes_from_parts(run_cli, tmp_path, monkeypatch):
    pytest.importorskip("tblite.interface")
    data = tmp_path / "ext.h5"
    shutil.copy(DEMO_EXTENDED, data)
    before = read_trajectory(data)
    # An interrupted run left the first of two chunks (frames 0 and 250) with a planted value: the rerun
    # must take it from the parts, compute only frame 500, then remove the parts.
    monkeypatch.setattr(lb, "XTB_CHUNK_FRAMES", 2)
    parts = lb.xtb_parts_dir(data)
    parts.mkdir()
    np.savez(parts / "chunk000000.npz", frames=np.array([0, 250]), gap_ev=np.array([9.0, 8.0]), method="GFN1-xTB")
    r = run_cli("data", "xtb", data, "--every", "250")
    assert r.exit_code == 0, r.stderr
    assert "3 frame(s) (1 computed now)" in r.stdout
    assert not parts.exists()
    after = read_trajectory(data)
    assert after.attrs[schema.ATTR_XTB_METHOD] == "GFN1-xTB"
    assert after.xtb_gap_ev[[0, 250]].tolist() == [9.0, 8.0]
    assert abs(after.xtb_gap_ev[500] - before.gap_ev[500]) < 2e-3  # eV: the demo's own GFN1-xTB gap
    assert np.isnan(np.delete(after.xtb_gap_ev, [0, 250, 500])).all()
    np.testing.assert_array_equal(after.gap_ev, before.gap_ev)  # the labels are untouched
    assert "xTB gaps      GFN1-xTB on 3 frames" in run_cli("data", "info", data).stdout
    again = run_cli("data", "xtb", data, "--every", "250")
    assert again.exit_code == 0 and "nothing to compute" in again.stdout
    assert_one_line_error(run_cli("data", "xtb", data, "--method", "GFN2-xTB"), "GFN1-xTB gaps already")


def test_data_xtb_bad_input_is_one_line(run_cli, tmp_path, synthetic_h5):
    assert_one_line_error(run_cli("data", "xtb", synthetic_h5, "--frames", "some"), "--frames")
    assert_one_line_error(run_cli("data", "xtb", synthetic_h5, "--every", "0"), "--every")
    assert_one_line_error(run_cli("data", "xtb", synthetic_h5, "--method", "PBE"), "PBE")
    out = tmp_path / "exists.h5"
    out.write_text("")
    assert_one_line_error(run_cli("data", "xtb", synthetic_h5, "-o", out), "exists")
    assert out.read_text() == ""
    assert_one_line_error(run_cli("data", "xtb", tmp_path / "none.h5"), "none.h5")


def test_predict_prints_the_xtb_corrected_baseline_when_the_trajectory_has_xtb_gaps(
    run_cli, tmp_path, tiny_runs, synthetic_traj
):
    from dataclasses import replace

    import h5py

    # PBE = xTB + 0.3 eV exactly: the xTB-corrected interpolation is exact (b = 1), interpolation in time is not
    xtb = np.where(np.isfinite(synthetic_traj.gap_ev), synthetic_traj.gap_ev - 0.3, np.nan)
    data = tmp_path / "with_xtb.h5"
    write_trajectory(replace(synthetic_traj, xtb_gap_ev=xtb, attrs={schema.ATTR_XTB_METHOD: "GFN1-xTB"}), data)
    pred = tmp_path / "p.h5"
    r = run_cli("predict", "--runs", tiny_runs, "--data", data, "--frames", "all", "-o", pred)
    assert r.exit_code == 0, r.stderr
    assert "interpolation in time corrected by the xTB gap: RMSE 0.0 meV" in r.stdout
    with h5py.File(pred) as f:
        assert f.attrs["baseline_xtb_corrected_rmse_mev"] == pytest.approx(0.0, abs=1e-3)
        assert f.attrs["baseline_linear_rmse_mev"] > 1.0
        assert f.attrs["baseline_gp_xtb_rmse_mev"] < 0.5 * f.attrs["baseline_linear_rmse_mev"]
    assert "Gaussian process on time and the xTB gap: RMSE" in r.stdout


def test_data_xtb_as_labels_writes_a_pretraining_file_and_leaves_the_source_alone(run_cli, tmp_path, monkeypatch):
    pytest.importorskip("tblite.interface")
    data = tmp_path / "ext.h5"
    shutil.copy(DEMO_EXTENDED, data)
    before = read_trajectory(data)
    assert_one_line_error(run_cli("data", "xtb", data, "--as-labels"), "-o")
    out = tmp_path / "xtb_labels.h5"
    r = run_cli("data", "xtb", data, "--every", "250", "--as-labels", "-o", out)
    assert r.exit_code == 0, r.stderr
    assert "as its labels" in r.stdout
    labels = read_trajectory(out)
    assert np.flatnonzero(np.isfinite(labels.gap_ev)).tolist() == [0, 250, 500]
    np.testing.assert_array_equal(labels.gap_ev, labels.xtb_gap_ev)
    assert labels.homo_ev is None and "GFN1-xTB" in labels.attrs[lb.ATTR_LABELLED]
    np.testing.assert_array_equal(read_trajectory(data).gap_ev, before.gap_ev)
    assert read_trajectory(data).xtb_gap_ev is None
