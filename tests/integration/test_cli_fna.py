"""``qdgap predict`` and ``qdgap fna`` through the real entry point."""

from __future__ import annotations

import numpy as np

from qdgap.core.common import schema
from qdgap.core.store import runs as rf
from qdgap.core.store.results import read_results
from tests.conftest import assert_one_line_error


def test_predict_writes_ensemble_mean_and_std(run_cli, tiny_runs, synthetic_h5, tmp_path):
    out = tmp_path / "pred.h5"
    r = run_cli("predict", "--runs", tiny_runs, "--data", synthetic_h5, "-o", out, "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    data, attrs = read_results(out, fmt=schema.PREDICTIONS_FORMAT)
    pred = data[schema.GAP_PRED_EV]
    assert pred.shape == (2, len(data[schema.FRAME_INDEX]))
    np.testing.assert_allclose(data[schema.GAP_MEAN_EV], pred.astype(np.float64).mean(0), atol=1e-6)
    np.testing.assert_allclose(data[schema.GAP_STD_EV], pred.astype(np.float64).std(0), atol=1e-6)
    # unseen = outside both members' labelled pools
    pools = set()
    for seed in (0, 1):
        split = rf.read_json(rf.run_dir(tiny_runs, seed) / rf.SPLIT_JSON)
        pools |= set(split["train"]) | set(split["val"]) | set(split["test"])
    assert not pools & set(data[schema.FRAME_INDEX].tolist())
    assert len(data[schema.FRAME_INDEX]) == 120 - len(pools)
    assert "ensemble RMSE" in r.stdout and out.with_suffix(".csv").exists()
    assert 0 <= attrs["coverage_2std"] <= 1


def test_predict_refuses_unfinished_member_and_other_composition(run_cli, tiny_runs, synthetic_h5, tmp_path):
    import shutil

    from qdgap.core.data.trajectory import write_trajectory
    from qdgap.testing.synthetic import small_cdse_cluster, synthetic_trajectory

    runs = tmp_path / "runs"
    shutil.copytree(tiny_runs, runs)
    (runs / "run_1" / rf.DONE).unlink()
    r = run_cli("predict", "--runs", runs, "--data", synthetic_h5, "-o", tmp_path / "p.h5")
    assert_one_line_error(r, "not finished", "run_1")
    numbers, pos = small_cdse_cluster(radius_ang=5.1)
    write_trajectory(synthetic_trajectory(30, base=(numbers, pos)), tmp_path / "other.h5")
    r = run_cli("predict", "--runs", tiny_runs, "--data", tmp_path / "other.h5", "-o", tmp_path / "p.h5")
    assert_one_line_error(r, "trained on Cd4Se13 (17 atoms)", "Cd16Se13")
    assert not (tmp_path / "p.h5").exists()


def test_fna_writes_h5_and_csv(run_cli, tiny_runs, synthetic_h5, tmp_path):
    out = tmp_path / "fna.h5"
    r = run_cli(
        "fna",
        "--runs",
        tiny_runs,
        "--data",
        synthetic_h5,
        "--frames",
        "all",
        "--every",
        10,
        "-o",
        out,
        "--mask",
        "seed",
    )
    assert r.exit_code == 0, r.stderr
    data, attrs = read_results(out, fmt=schema.FNA_FORMAT)
    assert data[schema.MASKED_EV].shape == (2, 12, 17) and attrs["mask"] == "seed"
    assert (tmp_path / "average_rmse_results.csv").read_text().startswith("atom_label,rmse_mev_mean,rmse_mev_std")
    assert not (tmp_path / ".fna.h5.partial").exists()
    assert "most important atoms" in r.stdout


def test_fna_rejects_bad_options(run_cli, tiny_runs, synthetic_h5, tmp_path):
    out = tmp_path / "fna.h5"
    for extra, message in [
        (("--mask", "half"), "--mask must be one of full, seed"),
        (("--every", "0"), "--every must be at least 1"),
        (("--chunk", "0"), "--chunk must be at least 1"),
        (("--frames", "some"), "--frames must be one of"),
    ]:
        assert_one_line_error(run_cli("fna", "--runs", tiny_runs, "--data", synthetic_h5, "-o", out, *extra), message)
    assert not out.exists()


def test_fna_writes_importance_statistics_groups_and_xyz(run_cli, tiny_runs, synthetic_h5, tmp_path):
    import csv

    from ase.io import read

    out, xyz = tmp_path / "fna.h5", tmp_path / "importance.extxyz"
    args = ("fna", "--runs", tiny_runs, "--data", synthetic_h5, "--frames", "all", "--every", 8, "-o", out)
    r = run_cli(*args, "--xyz", xyz, "--bootstrap", 300, "--top-k", 3, "--seed", 4)
    assert r.exit_code == 0, r.stderr
    data, attrs = read_results(out, fmt=schema.FNA_FORMAT)
    n_frames = len(data[schema.FRAME_INDEX])
    assert data[schema.IMPORTANCE_MEV].shape == (2, 17) and data[schema.IMPORTANCE_CI_MEV].shape == (17, 2)
    for name in (
        schema.P_VALUE_VS_ZERO, schema.P_ADJUSTED_VS_ZERO, schema.NONZERO, schema.RANK_STABILITY, schema.SHIFT_MEAN_MEV,
        schema.STANDOUT_MEV, schema.P_VALUE_VS_MEDIAN, schema.P_ADJUSTED_VS_MEDIAN, schema.STANDS_OUT,
        schema.SHIFT_STANDS_OUT,
    ):  # fmt: skip
        assert data[name].shape == (17,), name
    assert data[schema.NONZERO].dtype == bool and data[schema.STANDS_OUT].dtype == bool
    assert len(data[schema.SITE_CLASS]) == 17
    assert data[schema.RANK_CI].shape == data[schema.STANDOUT_CI_MEV].shape == (17, 2)
    imp = data[schema.IMPORTANCE_MEAN_MEV]
    np.testing.assert_allclose(data[schema.STANDOUT_MEV], imp - np.median(imp), atol=1e-9)
    assert schema.LEGACY_SIGNIFICANT not in data and schema.LEGACY_P_VALUE not in data  # renamed, not duplicated
    # paired importance = the member's masked RMSE minus its own unmasked RMSE
    np.testing.assert_allclose(
        data[schema.IMPORTANCE_MEV], data[schema.RMSE_MEV] - data[schema.BASELINE_RMSE_MEV][:, None], atol=1e-9
    )
    assert attrs[schema.ATTR_RANKED_BY] == "rmse" and attrs["importance_correction"] == "holm"
    assert attrs["importance_top_k"] == 3 and attrs["importance_seed"] == 4 and attrs["importance_block_frames"] >= 1
    rows = list(csv.DictReader(open(tmp_path / "average_rmse_results.csv")))
    assert list(rows[0])[:7] == [
        "atom_label",
        "rmse_mev_mean",
        "rmse_mev_std",
        "baseline_rmse_mev",
        "delta_rmse_mev",
        "mean_abs_shift_mev",
        "rank",
    ]
    assert {"ranked_by", "importance_ci_lo_mev", "p_value_vs_zero", "nonzero", "rank_stability"} <= set(rows[0])
    assert {"standout_mev", "p_adjusted_vs_median", "stands_out", "rank_lo", "rank_hi"} <= set(rows[0])
    assert all(int(float(row["rank_lo"])) <= int(row["rank"]) <= int(float(row["rank_hi"])) for row in rows)
    values = [float(row["importance_mev"]) for row in rows]
    assert values == sorted(values, reverse=True) and rows[0]["ranked_by"] == "rmse"
    groups = list(csv.DictReader(open(tmp_path / "importance_groups.csv")))
    assert [g["group"] for g in groups][:2] == ["Cd", "Se"] and any(g["kind"] == "site" for g in groups)
    assert sum(int(g["n_atoms"]) for g in groups if g["kind"] == "species") == 17
    frames = read(xyz, index=":")
    assert len(frames) == n_frames and frames[0].arrays["importance"].shape == (17,)
    shift = np.abs(data[schema.MASKED_EV].astype(np.float64) - data[schema.BASELINE_EV][:, :, None]).mean(0) * 1000
    np.testing.assert_allclose(frames[1].arrays["importance"], shift[1], rtol=1e-5)
    assert frames[1].info["frame_index"] == data[schema.FRAME_INDEX][1]
    assert "of 17 atoms stand out" in r.stdout and "[" in r.stdout and "ranked by importance" in r.stdout
    # the same seed gives the same numbers
    r2 = run_cli(*args[:-1], tmp_path / "again.h5", "--bootstrap", 300, "--top-k", 3, "--seed", 4)
    assert r2.exit_code == 0, r2.stderr
    again, _ = read_results(tmp_path / "again.h5", fmt=schema.FNA_FORMAT)
    np.testing.assert_array_equal(again[schema.IMPORTANCE_CI_MEV], data[schema.IMPORTANCE_CI_MEV])


def test_fna_ranks_unlabelled_frames_by_shift(run_cli, tiny_runs, synthetic_traj, tmp_path):
    import csv
    from dataclasses import replace

    from qdgap.core.data.trajectory import write_trajectory

    path = tmp_path / "unlabelled.h5"
    write_trajectory(replace(synthetic_traj, gap_ev=np.full_like(synthetic_traj.gap_ev, np.nan)), path)
    out = tmp_path / "fna.h5"
    r = run_cli("fna", "--runs", tiny_runs, "--data", path, "--every", 12, "-o", out, "--bootstrap", 200)
    assert r.exit_code == 0, r.stderr
    data, attrs = read_results(out, fmt=schema.FNA_FORMAT)
    assert attrs[schema.ATTR_RANKED_BY] == "shift" and "importance_correction" not in attrs
    assert np.isnan(data[schema.RMSE_MEV]).all() and np.isnan(data[schema.IMPORTANCE_MEAN_MEV]).all()
    assert np.isfinite(data[schema.SHIFT_CI_MEV]).all()
    rows = list(csv.DictReader(open(tmp_path / "average_rmse_results.csv")))
    assert rows[0]["ranked_by"] == "shift" and rows[0]["rmse_mev_mean"] == ""
    shifts = [float(row["mean_abs_shift_mev"]) for row in rows]
    assert shifts == sorted(shifts, reverse=True)
    assert "ranked by shift" in r.stdout
    assert_one_line_error(
        run_cli("fna", "--runs", tiny_runs, "--data", path, "-o", tmp_path / "x.h5", "--score", "rmse"),
        "--score rmse needs labels",
    )
    assert not (tmp_path / "x.h5").exists()


def test_fna_rejects_bad_statistics_options(run_cli, tiny_runs, synthetic_h5, tmp_path):
    out = tmp_path / "fna.h5"
    for extra, message in [
        (("--score", "l1"), "--score must be one of auto, rmse, shift"),
        (("--correction", "bonferroni"), "--correction must be one of holm, bh"),
        (("--bootstrap", "10"), "--bootstrap must be at least 100"),
        (("--top-k", "0"), "--top-k must be at least 1"),
    ]:
        assert_one_line_error(run_cli("fna", "--runs", tiny_runs, "--data", synthetic_h5, "-o", out, *extra), message)
    assert not out.exists()
