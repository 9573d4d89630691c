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
        (("--split", "shuffled"), "--split must be one of random, blocked"),
        (("--split", "blocked", "--block-fs", "0"), "--block-fs must be a positive number of fs"),
        (("--block-fs", "50"), "--block-fs applies to --split blocked only"),
        (("--split", "blocked", "--block-fs", "1e6"), "into 1 block(s)"),
        (("--graph", "knn8"), "--graph must be one of pure-torch, knn12, knn12-multigraph"),
    ]
    for extra, message in cases:
        r = run_cli("train", "--data", synthetic_h5, "--preset", "tiny", "-o", out, *extra)
        assert_one_line_error(r, message)
    r = run_cli("train", "--data", tmp_path / "missing.h5", "-o", out)
    assert_one_line_error(r, "missing.h5", "no such file")
    assert not list(out.glob("run_*/DONE"))


def test_train_blocked_split_is_recorded_and_predict_prints_baselines(run_cli, tmp_path, synthetic_h5):
    import json

    import h5py
    import numpy as np

    out = tmp_path / "runs"
    r = run_cli("train", "--data", synthetic_h5, "--preset", "tiny", "-o", out, "--stride", "2", "--split", "blocked",
                "--block-fs", "12")  # fmt: skip
    assert r.exit_code == 0, r.stderr
    config = json.loads((out / "run_0" / "config.json").read_text())
    assert config["train"]["split"] == "blocked" and config["train"]["block_fs"] == 12.0
    split = json.loads((out / "run_0" / "split.json").read_text())
    assert split["scheme"] == "blocked" and split["block_fs"] == 12.0
    blocks = {k: {f // 12 for f in split[k]} for k in ("train", "test")}  # 1 fs per frame
    assert not blocks["train"] & blocks["test"]
    # the random split's config.json keeps its old keys (older runs still match)
    r = run_cli("train", "--data", synthetic_h5, "--preset", "tiny", "-o", tmp_path / "random", "--epochs", "1")
    assert r.exit_code == 0, r.stderr
    assert "split" not in json.loads((tmp_path / "random" / "run_0" / "config.json").read_text())["train"]

    pred = tmp_path / "p.h5"
    r = run_cli("predict", "--runs", out, "--data", synthetic_h5, "--frames", "all", "-o", pred)
    assert r.exit_code == 0, r.stderr
    assert "linear interpolation in time: RMSE" in r.stdout and "verdict:" in r.stdout
    with h5py.File(pred) as f:
        attrs = dict(f.attrs)
    assert attrs["baseline_labels"] == len(split["train"])
    for name in ("mean", "nearest", "linear", "pchip"):
        assert np.isfinite(attrs[f"baseline_{name}_rmse_mev"]) and f"baseline_{name}_skill" in attrs
    assert attrs["baseline_model_rmse_mev"] > 0 and "union of the 1 member" in attrs["baseline_label_source"]


def test_train_on_the_study_graph_is_recorded_predicted_and_kept(run_cli, tmp_path, synthetic_h5):
    import json

    from qdgap.core.config import GRAPHS, GraphConfig

    out = tmp_path / "runs"
    r = run_cli("train", "--data", synthetic_h5, "--preset", "tiny", "-o", out, "--epochs", "1", "--graph", "knn12")
    assert r.exit_code == 0, r.stderr
    graph = json.loads((out / "run_0" / "config.json").read_text())["graph"]
    assert GraphConfig(**graph) == GRAPHS["knn12"] and graph["neighbor_strategy"] == "k-nearest"
    assert graph["use_canonize"] is True
    r = run_cli("predict", "--runs", out, "--data", synthetic_h5, "--frames", "all", "-o", tmp_path / "p.h5")
    assert r.exit_code == 0, r.stderr
    # an interrupted member may not resume on other graphs: the record says which it started on
    (out / "run_0" / "DONE").unlink()
    again = run_cli("train", "--data", synthetic_h5, "--preset", "tiny", "-o", out, "--epochs", "1")
    assert_one_line_error(again, "holds a member trained with another graph setting")
