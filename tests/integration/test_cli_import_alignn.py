"""``qdgap import-alignn`` through the real entry point, and the imported member feeding ``qdgap predict``."""

from __future__ import annotations

import datetime

import h5py
import numpy as np
import torch

from qdgap.core.store import runs as rf
from tests.conftest import assert_one_line_error
from tests.unit.test_import_alignn import write_upstream_run


def test_import_alignn_help(run_cli):
    r = run_cli("import-alignn", "--help")
    assert r.exit_code == 0
    for opt in ("checkpoint", "config_json", "--output", "--seed", "--force", "--allow-other-graphs"):
        assert opt in r.stdout, opt


def test_import_alignn_then_predict(run_cli, tmp_path, synthetic_h5, synthetic_traj):
    ckpt, cfg, _ = write_upstream_run(tmp_path / "upstream")
    runs = tmp_path / "runs"
    r = run_cli("import-alignn", ckpt, cfg, "-o", runs / "run_4")
    assert r.exit_code == 0, r.stderr
    assert "imported alignn_atomwise_pure from best_model.pt as seed 4" in r.stdout
    assert rf.member_state(runs / "run_4") == "done"
    # The member has no training pool, so every frame is unseen.
    out = tmp_path / "predictions.h5"
    r = run_cli("predict", "--runs", runs, "--data", synthetic_h5, "--frames", "unseen", "-o", out, "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    with h5py.File(out, "r") as f:
        assert np.array_equal(f["frame_index"][:], np.arange(synthetic_traj.num_frames))
        assert f["gap_pred_ev"].shape == (1, synthetic_traj.num_frames)
        assert np.isfinite(f["gap_pred_ev"][:]).all() and f["gap_pred_ev"][:].std() > 0
        assert f["seeds"][:].tolist() == [4]
    # Its test split is unknown.
    r = run_cli("predict", "--runs", runs, "--data", synthetic_h5, "--frames", "test", "-o", out, "--device", "cpu")
    assert_one_line_error(r, "--frames test", "not trained on this data")


def test_import_alignn_rejects_bad_input(run_cli, tmp_path):
    ckpt, cfg, net = write_upstream_run(tmp_path / "upstream")
    out = tmp_path / "runs" / "run_0"
    assert_one_line_error(
        run_cli("import-alignn", tmp_path / "none.pt", cfg, "-o", out), "none.pt", "no such checkpoint file"
    )
    assert_one_line_error(
        run_cli("import-alignn", ckpt, cfg, "-o", out, "--seed", "-2"), "--seed must be a non-negative integer"
    )
    _, small_cfg, _ = write_upstream_run(tmp_path / "small", model={"hidden_features": 8})
    assert_one_line_error(
        run_cli("import-alignn", ckpt, small_cfg, "-o", out),
        "does not fit",
        "(32, 92) in the checkpoint but (8, 92) by the config",
    )
    torch.save({"model": net.state_dict(), "saved_at": datetime.datetime(2025, 5, 7)}, tmp_path / "pickled.pt")
    assert_one_line_error(
        run_cli("import-alignn", tmp_path / "pickled.pt", cfg, "-o", out), "pickled Python objects (datetime.datetime)"
    )
    assert not out.exists()
    assert run_cli("import-alignn", ckpt, cfg, "-o", out).exit_code == 0
    assert_one_line_error(run_cli("import-alignn", ckpt, cfg, "-o", out), "run_0: exists", "--force")
    assert run_cli("import-alignn", ckpt, cfg, "-o", out, "--force").exit_code == 0
