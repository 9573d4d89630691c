"""``qdgap pipeline`` and ``qdgap report`` through the real entry point, on a tiny synthetic study."""

from __future__ import annotations

import re

import pytest

from qdgap.core.data.trajectory import write_trajectory
from qdgap.core.store.layout import Workdir
from qdgap.testing.synthetic import synthetic_trajectory
from tests.conftest import assert_one_line_error

FIGURES = (
    "learning_curves.png",
    "parity_unseen.png",
    "reliability_unseen.png",
    "gap_vs_time.png",
    "atom_importance.png",
    "quantum_dot_3d.png",
    "transfer_learning.png",
    "extension_gap_vs_time.png",
)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    write_trajectory(synthetic_trajectory(150, seed=1), root / "traj.h5")
    write_trajectory(synthetic_trajectory(80, seed=2), root / "ext.h5")
    return root


def _pipeline(run_cli, study, *extra):
    return run_cli(
        "pipeline", "--data", study / "traj.h5", "--extended", study / "ext.h5", "--workdir", study / "work",
        "--preset", "tiny", "--members", 2, "--jobs", 1, "--device", "cpu", "--fna-every", 20, "--finetune-epochs", 3, *extra,
    )  # fmt: skip


def test_pipeline_runs_every_stage_and_resumes(run_cli, study):
    r = _pipeline(run_cli, study)
    assert r.exit_code == 0, r.stderr
    wd = Workdir(study / "work")
    for stage in ("train", "predict", "fna", "finetune", "predict-ext", "report"):
        assert re.search(rf"^{re.escape(stage)}\s+done in", r.stdout, re.M), stage
    for path in (wd.predictions, wd.fna, wd.fna_csv, wd.finetune_csv, wd.predictions_extended, wd.report_html, wd.log):
        assert path.is_file(), path
    for name in FIGURES:
        assert (wd.figures / name).is_file(), name
    html = wd.report_html.read_text()
    assert html.count('src="data:image/png;base64,') >= len(FIGURES)
    assert not re.search(r'(src|href)="(?!data:|#)', html)  # only embedded images, no external references

    # Everything complete: nothing runs again.
    again = _pipeline(run_cli, study)
    assert again.exit_code == 0 and again.stdout.count("up to date") == 6

    # Interrupted after fine-tuning (its later outputs missing): only the later stages run.
    wd.predictions_extended.unlink()
    wd.report_html.unlink()
    resumed = _pipeline(run_cli, study)
    assert resumed.exit_code == 0, resumed.stderr
    for stage in ("train", "predict", "fna", "finetune"):
        assert re.search(rf"^{re.escape(stage)}\s+up to date", resumed.stdout, re.M), stage
    for stage in ("predict-ext", "report"):
        assert re.search(rf"^{re.escape(stage)}\s+done in", resumed.stdout, re.M), stage

    # --from redoes that stage and the later ones.
    ext_mtime = wd.predictions_extended.stat().st_mtime_ns
    redo = _pipeline(run_cli, study, "--from", "predict-ext")
    assert redo.exit_code == 0, redo.stderr
    assert re.search(r"^fna\s+up to date", redo.stdout, re.M)
    assert re.search(r"^predict-ext\s+done in", redo.stdout, re.M)
    assert wd.predictions_extended.stat().st_mtime_ns != ext_mtime


def test_pipeline_log_holds_stage_lines_and_worker_records(run_cli, tmp_path):
    """WORKDIR/qdgap.log: every stage line with its time, and the records of the worker processes (--jobs 2)."""
    write_trajectory(synthetic_trajectory(150, seed=1), tmp_path / "traj.h5")
    write_trajectory(synthetic_trajectory(80, seed=2), tmp_path / "ext.h5")
    r = run_cli(
        "pipeline", "--data", tmp_path / "traj.h5", "--extended", tmp_path / "ext.h5", "--workdir", tmp_path / "w",
        "--preset", "tiny", "--members", 2, "--jobs", 2, "--device", "cpu", "--fna-every", 20, "--finetune-epochs", 3,
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    lines = Workdir(tmp_path / "w").log.read_text().splitlines()
    stamp = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ pid (\d+) "
    assert all(re.match(stamp, line) for line in lines if line and not line.startswith((" ", "Traceback"))), lines[:5]
    for stage in ("train", "predict", "fna", "finetune", "predict-ext", "report"):
        assert any(re.search(rf"stage {re.escape(stage)}: done in", line) for line in lines), stage
    main_pid = int(re.match(stamp, next(ln for ln in lines if "stage train: started" in ln)).group(1))
    member_lines = [ln for ln in lines if "run_" in ln and "test RMSE" in ln]
    worker_pids = {int(re.match(stamp, ln).group(1)) for ln in member_lines}
    assert len(member_lines) >= 4  # 2 members trained, 2 fine-tuned (and the scratch baseline)
    assert worker_pids and main_pid not in worker_pids  # written by the spawned workers themselves


def test_pipeline_rejects_bad_options(run_cli, study, tmp_path):
    assert_one_line_error(_pipeline(run_cli, study, "--from", "nowhere"), "--from must be one of")
    assert_one_line_error(_pipeline(run_cli, study, "--members", 0), "--members must be at least 1")
    assert_one_line_error(_pipeline(run_cli, study, "--backend", "pbs"), "--backend must be local or slurm")
    r = run_cli("pipeline", "--data", tmp_path / "none.h5", "--workdir", tmp_path / "w")
    assert_one_line_error(r, "none.h5", "no such file")


def test_report_refuses_empty_workdir(run_cli, tmp_path):
    (tmp_path / "empty").mkdir()
    r = run_cli("report", tmp_path / "empty")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
