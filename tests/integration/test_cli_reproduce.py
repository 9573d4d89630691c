"""``qdgap reproduce`` / ``make reproduce``: the original study on its real trajectory."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import assert_one_line_error

ROOT = Path(__file__).resolve().parents[2]


def test_reproduce_help(run_cli):
    r = run_cli("reproduce", "--help")
    assert r.exit_code == 0 and "--archive" in r.stdout and "--ext-labels" in r.stdout


def test_reproduce_rejects_bad_input(run_cli, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("Files,Bandgap (eV)\nst1,1.7\n")
    r = run_cli("reproduce", "--archive", tmp_path / "missing.tar.xz", "--labels", labels, "-w", tmp_path / "w")
    assert_one_line_error(r, "missing.tar.xz", "no such file")
    r = run_cli("reproduce", "--archive", labels, "--labels", labels, "-w", tmp_path / "w", "--members", "0")
    assert_one_line_error(r, "--members must be at least 1")
    r = run_cli("reproduce", "--archive", labels, "--labels", labels, "-w", tmp_path / "w", "--from", "nope")
    assert_one_line_error(r, "--from must be one of")
    r = run_cli("reproduce", "--archive", labels, "--labels", labels, "-w", tmp_path / "w", "--split", "blocked",
                "--block-fs", "-1")  # fmt: skip
    assert_one_line_error(r, "--block-fs must be a positive number of fs")
    assert not (tmp_path / "w" / "cl_qd.h5").exists()


@pytest.mark.slow
def test_make_reproduce_tiny_on_real_frames(tmp_path, seed_data):
    """`make reproduce` end to end: 2 tiny members on the first 401 frames and 401 frames of the extension."""
    work = tmp_path / "reproduce"
    args = [
        "make",
        "-C",
        str(ROOT),
        "reproduce",
        f"SEED_DATA={seed_data}",
        "MEMBERS=2",
        "PRESET=tiny",
        f"REPRO_WORK={work}",
        "REPRO_ARGS=--train-numbers 1-401 --ext-numbers 10001-10401 --finetune-epochs 3 --device cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in (
        "cl_qd.h5",
        "cl_qd_ext.h5",
        "predictions.h5",
        "fna.h5",
        "average_rmse_results.csv",
        "fna_seed.h5",
        "average_rmse_results_seed.csv",
        "finetune_report.csv",
        "predictions_ext.h5",
        "report.html",
        "comparison.md",
    ):
        assert (work / name).is_file(), name
    assert len(list((work / "runs").glob("run_*/DONE"))) == 2
    text = (work / "comparison.md").read_text()
    assert "Spearman's rho over the published 23" in text and "--mask seed" in text and "--mask full" in text
    assert "## Better than what?" in text and "linear interpolation in time" in text and "Verdict:" in text
    assert "distance to the nearest training label" in text and "| interpolation |" in text
    assert "## The study's FNA protocol" in text and "assumed: angles were never zeroed" in text
    assert "Split-half reliability" in text and "stand out: above the median atom" in text and "rank interval" in text
    from qdgap.core.common import schema
    from qdgap.core.store.results import read_results

    pred, _ = read_results(work / "predictions.h5", fmt=schema.PREDICTIONS_FORMAT)
    assert pred[schema.GAP_PRED_EV].shape == (2, 401)
    assert np.isfinite(pred[schema.GAP_TRUE_EV]).sum() == 201  # st1, st3, ..., st401
    # A rerun finds every stage up to date and changes nothing.
    before = (work / "comparison.md").stat().st_mtime_ns
    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "up to date" in again.stdout and (work / "comparison.md").stat().st_mtime_ns == before
