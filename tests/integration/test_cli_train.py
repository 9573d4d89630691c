"""``qdgap train`` through the real entry point."""

from __future__ import annotations

import json

from qdgap.core.store import runs as rf
from tests.conftest import assert_one_line_error


def test_train_help(run_cli):
    r = run_cli("train", "--help")
    assert r.exit_code == 0
    for opt in ("--seed", "--data", "--preset", "--epochs", "--output", "--device"):
        assert opt in r.stdout


def test_train_writes_member_and_skips_when_done(run_cli, tmp_path, synthetic_h5):
    r = run_cli(
        "train", "--seed", 7, "--data", synthetic_h5, "--preset", "tiny", "-o", tmp_path / "runs", "--device", "cpu"
    )
    assert r.exit_code == 0, r.stderr
    run = tmp_path / "runs" / "run_7"
    assert rf.member_state(run) == "done"
    assert "test RMSE" in r.stdout
    record = json.loads((run / rf.CONFIG_JSON).read_text())
    assert record["seed"] == 7 and record["preset"] == "tiny" and record["data"]["formula"] == "Cd4Se13"
    assert list((tmp_path / "runs" / rf.CACHE_DIR).glob("graphs-*.npz"))  # graphs cached beside the runs
    mtime = (run / rf.MODEL_TS).stat().st_mtime_ns
    again = run_cli("train", "--seed", 7, "--data", synthetic_h5, "--preset", "tiny", "-o", tmp_path / "runs")
    assert again.exit_code == 0 and "already done" in again.stdout
    assert (run / rf.MODEL_TS).stat().st_mtime_ns == mtime


def test_train_rejects_bad_input(run_cli, tmp_path, synthetic_h5):
    out = tmp_path / "runs"
    cases = [
        (("--preset", "huge"), "unknown preset 'huge'"),
        (("--epochs", "-3"), "--epochs must be >= 0"),
        (("--seed", "-1"), "--seed must be a non-negative integer"),
        (("--batch-size", "0"), "--batch-size must be positive"),
        (("--lr", "0"), "--lr must be positive"),
        (("--device", "tpu"), "--device must be auto, cpu or cuda"),
        (("--stride", "500"), "labelled frame(s) in the pool"),
    ]
    for extra, message in cases:
        r = run_cli("train", "--data", synthetic_h5, "--preset", "tiny", "-o", out, *extra)
        assert_one_line_error(r, message)
    r = run_cli("train", "--data", tmp_path / "missing.h5", "-o", out)
    assert_one_line_error(r, "missing.h5", "no such file")
    assert not list(out.glob("run_*/DONE"))
