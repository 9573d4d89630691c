"""``qdgap predict`` and ``qdgap fna`` through the real entry point."""

from __future__ import annotations

import numpy as np

from qdgap.core import runs as rf
from qdgap.core import schema
from qdgap.core.results import read_results
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

    from qdgap.core.data import write_trajectory
    from qdgap.core.synthetic import small_cdse_cluster, synthetic_trajectory

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
    r = run_cli("fna", "--runs", tiny_runs, "--data", synthetic_h5, "--frames", "all", "--every", 10, "-o", out, "--mask", "seed")
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
