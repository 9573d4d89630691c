"""``qdgap export``, and ``predict``/``fna`` with ``--backend onnxruntime``, through the real entry point."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from qdgap.core.common import schema
from qdgap.core.common.files import sha256_file
from qdgap.core.store import runs as rf
from qdgap.core.store.results import read_results
from tests.conftest import assert_one_line_error

TOL_EV = 1e-5


@pytest.fixture(scope="module")
def onnx_runs(tiny_runs, tmp_path_factory):
    """A copy of ``tiny_runs`` whose members have model.onnx, written by ``qdgap export``."""
    pytest.importorskip("onnxruntime")
    from qdgap.cli.app import main

    runs = tmp_path_factory.mktemp("onnx_runs") / "runs"
    shutil.copytree(tiny_runs, runs)
    with pytest.raises(SystemExit) as exc:
        main(["export", str(runs), "--format", "onnx"])
    assert exc.value.code == 0
    return runs


def test_export_help(run_cli):
    r = run_cli("export", "--help")
    assert r.exit_code == 0 and "--format" in r.stdout and "onnx" in r.stdout


def test_export_onnx_writes_model_and_records_sha(run_cli, tiny_runs, tmp_path):
    pytest.importorskip("onnxruntime")
    run = tmp_path / "run_0"
    shutil.copytree(rf.run_dir(tiny_runs, 0), run)
    r = run_cli("export", run, "--format", "onnx")
    assert r.exit_code == 0, r.stderr
    assert "model.onnx" in r.stdout and "recorded in model.onnx.json" in r.stdout
    record = rf.read_json(run / "model.onnx.json")
    assert record["sha256"] == sha256_file(run / "model.onnx")
    assert record["source_model_sha256"] == rf.read_json(run / rf.DONE)["model_sha256"]
    assert record["opset"] >= 17
    # -o elsewhere: written, nothing recorded in the run folder
    r = run_cli("export", run, "--format", "onnx", "-o", tmp_path / "copy.onnx")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "copy.onnx").exists() and "not recorded" in r.stdout
    assert rf.read_json(run / "model.onnx.json") == record


def test_export_torchscript_rewrites_model_ts_and_done(run_cli, tiny_runs, tmp_path):
    run = tmp_path / "run_1"
    shutil.copytree(rf.run_dir(tiny_runs, 1), run)
    r = run_cli("export", run, "--format", "torchscript")
    assert r.exit_code == 0, r.stderr
    assert rf.read_json(run / rf.DONE)["model_sha256"] == sha256_file(run / rf.MODEL_TS)
    member = rf.load_member(run)  # still loads, its model.ts verified by the predict below
    r = run_cli("predict", "--runs", member.path, "--data", rf.read_json(run / rf.CONFIG_JSON)["data"]["path"],
                "--frames", "all", "-o", tmp_path / "p.h5", "--device", "cpu")  # fmt: skip
    assert r.exit_code == 0, r.stderr


def test_export_refuses_folder_without_done(run_cli, tiny_runs, tmp_path):
    run = tmp_path / "run_0"
    shutil.copytree(rf.run_dir(tiny_runs, 0), run)
    (run / rf.DONE).unlink()
    assert_one_line_error(run_cli("export", run, "--format", "onnx"), str(run), "no DONE marker")
    assert not (run / "model.onnx").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_cli("export", empty, "--format", "torchscript"), "no DONE marker")
    assert_one_line_error(run_cli("export", tmp_path / "nowhere", "--format", "onnx"), "no such run folder")


def test_export_refuses_bad_format_and_missing_weights(run_cli, tiny_runs, tmp_path):
    run = tmp_path / "run_0"
    shutil.copytree(rf.run_dir(tiny_runs, 0), run)
    assert_one_line_error(run_cli("export", run, "--format", "tflite"), "--format must be one of torchscript, onnx")
    (run / rf.BEST_PT).unlink()
    assert_one_line_error(run_cli("export", run, "--format", "torchscript"), "best.pt: missing")


def test_predict_onnxruntime_matches_torchscript(run_cli, onnx_runs, synthetic_h5, tmp_path):
    preds = {}
    for backend in ("torchscript", "onnxruntime"):
        out = tmp_path / f"pred_{backend}.h5"
        r = run_cli("predict", "--runs", onnx_runs, "--data", synthetic_h5, "--frames", "all", "-o", out,
                    "--device", "cpu", "--backend", backend)  # fmt: skip
        assert r.exit_code == 0, r.stderr
        data, attrs = read_results(out, fmt=schema.PREDICTIONS_FORMAT)
        assert attrs["backend"] == backend
        preds[backend] = data[schema.GAP_PRED_EV]
    assert preds["onnxruntime"].shape == (2, 120)
    np.testing.assert_allclose(preds["onnxruntime"], preds["torchscript"], atol=TOL_EV, rtol=0)


def test_fna_onnxruntime_matches_torchscript(run_cli, onnx_runs, synthetic_h5, tmp_path):
    masked = {}
    for backend in ("torchscript", "onnxruntime"):
        out = tmp_path / backend / "fna.h5"
        out.parent.mkdir()
        r = run_cli("fna", "--runs", onnx_runs, "--data", synthetic_h5, "--frames", "all", "--every", 15, "-o", out,
                    "--device", "cpu", "--backend", backend)  # fmt: skip
        assert r.exit_code == 0, r.stderr
        data, _ = read_results(out, fmt=schema.FNA_FORMAT)
        masked[backend] = (data[schema.BASELINE_EV], data[schema.MASKED_EV])
    assert masked["onnxruntime"][1].shape == (2, 8, 17)
    for got, want in zip(masked["onnxruntime"], masked["torchscript"], strict=True):
        np.testing.assert_allclose(got, want, atol=TOL_EV, rtol=0)


def test_predict_refuses_altered_onnx(run_cli, onnx_runs, synthetic_h5, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(onnx_runs, runs)
    with (runs / "run_1" / "model.onnx").open("ab") as fh:
        fh.write(b"tampered")
    r = run_cli("predict", "--runs", runs, "--data", synthetic_h5, "-o", tmp_path / "p.h5", "--backend", "onnxruntime")
    assert_one_line_error(r, "model.onnx", "sha256 differs")
    assert not (tmp_path / "p.h5").exists()


def test_predict_rejects_unknown_backend(run_cli, tiny_runs, synthetic_h5, tmp_path):
    r = run_cli("predict", "--runs", tiny_runs, "--data", synthetic_h5, "-o", tmp_path / "p.h5", "--backend", "tvm")
    assert_one_line_error(r, "--backend must be one of torchscript, onnxruntime")
    r = run_cli("fna", "--runs", tiny_runs, "--data", synthetic_h5, "-o", tmp_path / "f.h5", "--backend", "tvm")
    assert_one_line_error(r, "--backend must be one of torchscript, onnxruntime")
