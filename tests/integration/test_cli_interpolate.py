"""``qdgap interpolate``: the gap of every frame from the labels and the xTB gaps, no model; its held-out
score beside interpolation, its earlier stretch, and its one-line errors with no output left behind."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from qdgap.core.common import schema
from qdgap.core.data.trajectory import write_trajectory
from qdgap.core.store.results import read_results
from tests.conftest import assert_one_line_error


@pytest.fixture(scope="module")
def with_xtb(tmp_path_factory):
    """400 1-fs frames, every other labelled: a slow drift plus 0.7 x the fast wiggles of the cheap gap."""
    from qdgap.testing.synthetic import synthetic_trajectory

    traj = synthetic_trajectory(400, seed=3)
    rng = np.random.default_rng(3)
    t = traj.time_fs
    fast = 0.04 * rng.standard_normal(len(t))
    slow = 0.06 * np.sin(t / 40.0)
    gap = (1.75 + slow + 0.7 * fast).astype(np.float32)
    gap[1::2] = np.nan
    traj = replace(traj, gap_ev=gap, xtb_gap_ev=(1.3 + fast).astype(np.float32))
    folder = tmp_path_factory.mktemp("interp")
    write_trajectory(traj, folder / "all.h5")
    write_trajectory(traj.select(np.arange(0, 200)), folder / "first.h5")
    write_trajectory(traj.select(np.arange(200, 400)), folder / "second.h5")
    return folder, traj


def test_interpolate_with_xtb_beats_interpolation_on_held_out_frames_and_writes_its_interval(
    run_cli, with_xtb, tmp_path
):
    folder, traj = with_xtb
    out = tmp_path / "gaps.h5"
    r = run_cli("interpolate", "--data", folder / "all.h5", "--stride", 20, "--frames", "held-out", "-o", out)
    assert r.exit_code == 0, r.stderr
    assert "a Gaussian process on time and the xTB gap" in r.stdout
    assert "on the 180 labelled frames outside the pool" in r.stdout and "linear interpolation in time" in r.stdout
    data, attrs = read_results(out, fmt=schema.INTERPOLATION_FORMAT)
    assert attrs[schema.ATTR_ESTIMATOR] == "gp-time-xtb" and attrs[schema.ATTR_POOL_STRIDE] == 20
    frames = data[schema.FRAME_INDEX]
    pool = np.arange(0, 400, 20)
    expected = np.setdiff1d(np.arange(0, 400, 2), pool)
    np.testing.assert_array_equal(frames, expected)
    assert not data[schema.IN_POOL].any()
    mean, sd = data[schema.GAP_MEAN_EV], data[schema.GAP_SD_EV]
    assert np.all(data[schema.GAP_LO_EV] < mean) and np.all(mean < data[schema.GAP_HI_EV])
    np.testing.assert_allclose(data[schema.GAP_HI_EV] - mean, 1.96 * sd, rtol=1e-3)
    y = traj.gap_ev[frames].astype(np.float64)
    linear = np.interp(traj.time_fs[frames], traj.time_fs[pool], traj.gap_ev[pool].astype(np.float64))
    rmse = lambda p: float(np.sqrt(np.mean((p - y) ** 2)))  # noqa: E731
    assert rmse(mean) < 0.6 * rmse(linear), (rmse(mean), rmse(linear))
    assert attrs["heldout_linear_rmse_mev"] == pytest.approx(1e3 * rmse(linear), rel=1e-6)
    assert (tmp_path / "gaps.csv").is_file()


def test_interpolate_all_frames_without_xtb_falls_back_to_time_and_says_why(run_cli, synthetic_h5, tmp_path):
    r = run_cli("interpolate", "--data", synthetic_h5, "-o", tmp_path / "g.h5")
    assert r.exit_code == 0, r.stderr
    assert "time alone (the trajectory has no xTB gaps)" in r.stdout
    data, attrs = read_results(tmp_path / "g.h5", fmt=schema.INTERPOLATION_FORMAT)
    assert attrs[schema.ATTR_ESTIMATOR] == "gp-time" and data[schema.IN_POOL].all()
    assert "outside the pool" not in r.stdout  # every label conditioned it: nothing held out to score


def test_interpolate_an_earlier_stretch_conditions_a_sparse_later_one(run_cli, with_xtb, tmp_path):
    folder, _ = with_xtb
    r = run_cli(
        "interpolate", "--data", folder / "second.h5", "--earlier", folder / "first.h5", "--stride", 50,
        "--frames", "held-out", "-o", tmp_path / "g.h5",
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    _, attrs = read_results(tmp_path / "g.h5", fmt=schema.INTERPOLATION_FORMAT)
    assert attrs["earlier_labels"] == 100 and "4 labels (and 100 of" in r.stdout
    backwards = run_cli(
        "interpolate", "--data", folder / "first.h5", "--earlier", folder / "second.h5", "-o", tmp_path / "b.h5"
    )
    assert_one_line_error(backwards, "--earlier takes an earlier stretch")
    assert not (tmp_path / "b.h5").exists()
    from qdgap.testing.synthetic import synthetic_trajectory

    other = synthetic_trajectory(50, seed=1)
    other = replace(other, numbers=other.numbers[::-1].copy(), positions_ang=other.positions_ang[:, ::-1].copy())
    write_trajectory(other, tmp_path / "other.h5")
    assert_one_line_error(
        run_cli(
            "interpolate", "--data", folder / "second.h5", "--earlier", tmp_path / "other.h5", "-o", tmp_path / "c.h5"
        ),
        "other.h5",
        "same atom order",
    )


def test_interpolate_bad_input_is_one_line_and_leaves_nothing(run_cli, synthetic_h5, with_xtb, tmp_path):
    out = tmp_path / "g.h5"
    assert_one_line_error(
        run_cli("interpolate", "--data", synthetic_h5, "--xtb", "yes", "-o", out), "no xTB gaps", "qdgap data xtb"
    )
    assert_one_line_error(
        run_cli("interpolate", "--data", synthetic_h5, "--frames", "some", "-o", out), "--frames must be one of"
    )
    assert_one_line_error(run_cli("interpolate", "--data", synthetic_h5, "--stride", 1000, "-o", out), "at least 3")
    assert_one_line_error(run_cli("interpolate", "--data", tmp_path / "none.h5", "-o", out), "none.h5")
    assert_one_line_error(run_cli("interpolate", "--data", synthetic_h5, "--level", 1.5, "-o", out), "--level must lie")
    assert_one_line_error(run_cli("interpolate", "--data", synthetic_h5, "--xtb", "maybe", "-o", out), "--xtb must be")
    assert not out.exists() and not out.with_suffix(".csv").exists()
    assert run_cli("interpolate", "--data", synthetic_h5, "-o", out).exit_code == 0
    assert_one_line_error(run_cli("interpolate", "--data", synthetic_h5, "-o", out), "output exists", "--force")


def test_interpolate_warns_where_a_simpler_estimator_measured_better(run_cli, synthetic_h5, with_xtb, tmp_path):
    from qdgap.core.workflow.interpolate import advice

    assert advice("gp-time", 20.0) == "" and advice("gp-time-xtb", 100.0) == ""
    assert "linear interpolation" in advice("gp-time", 50.0) and "xTB-corrected" in advice("gp-time-xtb", 200.0)
    sparse = run_cli("interpolate", "--data", synthetic_h5, "--stride", 40, "-o", tmp_path / "a.h5")
    assert sparse.exit_code == 0, sparse.stderr
    assert "lost to linear interpolation" in " ".join(sparse.stderr.split())
    dense = run_cli("interpolate", "--data", with_xtb[0] / "all.h5", "--stride", 20, "-o", tmp_path / "b.h5")
    assert dense.exit_code == 0 and "WARNING" not in dense.stderr


def test_the_python_api_gives_the_command_s_numbers(run_cli, with_xtb, tmp_path):
    import qdgap

    folder, traj = with_xtb
    out = tmp_path / "g.h5"
    assert run_cli("interpolate", "--data", folder / "all.h5", "--stride", 20, "-o", out).exit_code == 0
    data, _ = read_results(out, fmt=schema.INTERPOLATION_FORMAT)
    g = qdgap.interpolate(folder / "all.h5", stride=20)
    np.testing.assert_array_equal(g.frame_index, data[schema.FRAME_INDEX])
    np.testing.assert_allclose(g.mean_ev, data[schema.GAP_MEAN_EV], atol=1e-6)  # float32 in the file
    np.testing.assert_allclose(g.hi_ev - g.lo_ev, data[schema.GAP_HI_EV] - data[schema.GAP_LO_EV], atol=2e-6)
    in_memory = qdgap.interpolate(traj, stride=20, frames="held-out")
    assert in_memory.estimator == "gp-time-xtb" and in_memory.heldout.scores[0].frames == in_memory.frames == 180
    with pytest.raises(qdgap.QdgapError, match="--frames must be one of"):
        qdgap.interpolate(traj, frames="some")
