"""``qdgap finetune`` through the real entry point: the run folders, the report, predict on the result,
resume, one member at a time, the Slurm script, and refusals."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from qdgap.core.store import runs as rf
from tests.conftest import assert_one_line_error
from tests.unit.test_slurm import fake_slurm  # noqa: F401  (fixture: stand-in sbatch/squeue)

EXT_FRAMES = 45
STRIDE = 3  # pool of 15 extension frames: 11 train, 2 val, 2 test; 30 held out


@pytest.fixture(scope="module")
def ext_h5(tmp_path_factory) -> Path:
    """A later stretch of motion of the cluster ``synthetic_h5`` holds (same composition, other seed)."""
    from qdgap.core.data.trajectory import write_trajectory
    from qdgap.testing.synthetic import synthetic_trajectory

    path = tmp_path_factory.mktemp("ext") / "ext.h5"
    write_trajectory(synthetic_trajectory(EXT_FRAMES, seed=11), path)
    return path


def _args(runs, ext, out, *extra):
    return (
        "finetune",
        "--runs",
        runs,
        "--data",
        ext,
        "-o",
        out,
        "--freeze-blocks",
        1,
        "--epochs",
        2,
        "--stride",
        STRIDE,
        "--device",
        "cpu",
        "-j",
        1,
        *extra,
    )


def test_finetune_help(run_cli):
    r = run_cli("finetune", "--help")
    assert r.exit_code == 0
    for opt in (
        "--runs",
        "--data",
        "--freeze-blocks",
        "--freeze-embeddings",
        "--epochs",
        "--lr",
        "--stride",
        "--seed",
        "--baselines",
        "--report",
        "--backend",
        "--partition",
    ):
        assert opt in r.stdout, opt


def test_finetune_writes_members_report_and_predicts(run_cli, tmp_path, tiny_runs, ext_h5):
    work = tmp_path / "work"
    r = run_cli(*_args(tiny_runs, ext_h5, work / "runs_ft"))
    assert r.exit_code == 0, r.stderr
    assert "frozen" in r.stdout and "trainable parameters" in r.stdout
    for s in (0, 1):
        run = rf.run_dir(work / "runs_ft", s)
        for name in (
            rf.CONFIG_JSON,
            rf.SPLIT_JSON,
            rf.METRICS_CSV,
            rf.CHECKPOINT_PT,
            rf.BEST_PT,
            rf.MODEL_TS,
            rf.TEST_METRICS_JSON,
            rf.DONE,
        ):
            assert (run / name).is_file(), (s, name)
        done = json.loads((run / rf.DONE).read_text())
        assert done["frozen_params"] > 0 and done["trainable_params"] > 0
        assert json.loads((run / rf.CONFIG_JSON).read_text())["finetune"]["freeze_blocks"] == 1
        assert rf.member_state(rf.run_dir(work / "runs_scratch", s)) == "done"
    # The report lands beside the fine-tuned runs folder, as layout.Workdir has it.
    with open(work / "finetune_report.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [row["model"] for row in rows] == [
        "pretrained", "finetuned", "scratch", "labels_mean", "nearest", "interpolation", "kriging",
        "pretrained_offset", "pretrained_affine",
    ]  # fmt: skip
    assert list(rows[0]) == ["model", "rmse_mev", "mae_mev", "wall_s", "n_frames", "finetuned_skill"]
    held_out = EXT_FRAMES - len(range(0, EXT_FRAMES, STRIDE))
    assert all(int(row["n_frames"]) == held_out for row in rows)
    assert rows[0]["wall_s"] == "" and float(rows[1]["wall_s"]) > 0 and float(rows[2]["wall_s"]) > 0
    assert all(float(row["rmse_mev"]) >= float(row["mae_mev"]) > 0 for row in rows)
    rmse = {row["model"]: float(row["rmse_mev"]) for row in rows}
    for row in rows:  # skill of the fine-tuned ensemble against each row, 1 - RMSE_ft / RMSE_row
        assert float(row["finetuned_skill"]) == pytest.approx(1 - rmse["finetuned"] / rmse[row["model"]], abs=1e-5)
    assert "verdict:" in r.stdout and "interpolation" in r.stdout
    assert json.loads((work / "finetune_report.json").read_text())["parameters"]["frozen"] > 0
    # predict reads the fine-tuned ensemble unchanged, on the same held-out frames.
    pred = run_cli("predict", "--runs", work / "runs_ft", "--data", ext_h5, "-o", tmp_path / "p.h5", "--device", "cpu")
    assert pred.exit_code == 0, pred.stderr
    from qdgap.core.common import schema
    from qdgap.core.store.results import read_results

    data, _ = read_results(tmp_path / "p.h5", fmt=schema.PREDICTIONS_FORMAT)
    assert data[schema.GAP_PRED_EV].shape == (2, held_out)
    err = data[schema.GAP_MEAN_EV].astype(np.float64) - data[schema.GAP_TRUE_EV]
    assert np.sqrt(np.mean(err**2)) * 1000 == pytest.approx(float(rows[1]["rmse_mev"]), rel=1e-4)
    fna = run_cli(
        "fna", "--runs", work / "runs_ft", "--data", ext_h5, "--every", 10, "-o", tmp_path / "fna.h5", "--device", "cpu"
    )
    assert fna.exit_code == 0, fna.stderr
    assert (tmp_path / "average_rmse_results.csv").is_file()


def test_finetune_one_seed_then_rest_and_resume(run_cli, tmp_path, tiny_runs, ext_h5):
    """--seed fine-tunes one member (an array task's job); an interrupted one resumes; the full command
    then finishes only what is missing."""
    from qdgap.core.common.errors import Interrupted
    from qdgap.core.data.trajectory import read_trajectory
    from qdgap.core.workflow import finetune as ft

    out = tmp_path / "runs_ft"
    r = run_cli(*_args(tiny_runs, ext_h5, out, "--seed", 1))
    assert r.exit_code == 0, r.stderr
    assert rf.member_state(rf.run_dir(out, 1)) == "done" and not rf.run_dir(out, 0).exists()
    assert not (tmp_path / "finetune_report.csv").exists()  # one member: no report
    # Seed 0 stops part-way, as a killed run would leave it.
    settings = ft.FinetuneSettings(freeze_blocks=1, epochs=2, stride=STRIDE)
    member = rf.load_member(rf.run_dir(tiny_runs, 0))
    calls = {"n": 0}
    with pytest.raises(Interrupted):
        ft.finetune_member(
            read_trajectory(ext_h5),
            member,
            settings,
            runs=tiny_runs,
            output=out,
            device="cpu",
            data_path=str(ext_h5),
            should_stop=lambda: (calls.__setitem__("n", calls["n"] + 1), calls["n"] > 1)[1],
        )
    assert rf.member_state(rf.run_dir(out, 0)) == "interrupted"
    r = run_cli(*_args(tiny_runs, ext_h5, out, "--no-baselines"))
    assert r.exit_code == 0, r.stderr
    assert "1 done, 1 trained" in r.stdout or "1 trained, 1 done" in r.stdout
    assert len(rf.read_metrics_csv(rf.run_dir(out, 0) / rf.METRICS_CSV)) == 2
    with open(tmp_path / "finetune_report.csv", newline="") as fh:
        assert [row["model"] for row in csv.DictReader(fh)] == [
            "finetuned", "labels_mean", "nearest", "interpolation", "kriging"
        ]  # fmt: skip
    assert not (tmp_path / "runs_scratch").exists()
    # A rerun trains nothing; here with an explicit report path (its JSON twin beside it).
    mtime = (rf.run_dir(out, 0) / rf.MODEL_TS).stat().st_mtime_ns
    r = run_cli(*_args(tiny_runs, ext_h5, out, "--no-baselines", "--report", tmp_path / "k1.csv"))
    assert r.exit_code == 0, r.stderr
    assert "2 done" in r.stdout and (tmp_path / "k1.csv").is_file() and (tmp_path / "k1.json").is_file()
    assert (rf.run_dir(out, 0) / rf.MODEL_TS).stat().st_mtime_ns == mtime
    assert (tmp_path / "k1.csv").read_text() == (tmp_path / "finetune_report.csv").read_text()


def test_finetune_slurm_dry_run_lists_one_task_per_member(run_cli, tmp_path, tiny_runs, ext_h5, fake_slurm):  # noqa: F811
    r = run_cli(
        *_args(tiny_runs, ext_h5, tmp_path / "runs_ft", "--backend", "slurm", "--dry-run", "--partition", "gpu")
    )
    assert r.exit_code == 0, r.stderr
    assert "finetune --seed 0" in r.stdout and "finetune --seed 1" in r.stdout
    assert "--freeze-blocks 1" in r.stdout and "--no-freeze-embeddings" not in r.stdout
    assert "train --seed 1" in r.stdout and str(tmp_path / "runs_scratch") in r.stdout
    assert "#SBATCH --partition=gpu" in r.stdout
    assert not (tmp_path / "runs_ft").exists()


def test_finetune_rejects_bad_input(run_cli, tmp_path, tiny_runs, ext_h5, synthetic_h5):
    from qdgap.core.data.trajectory import write_trajectory
    from qdgap.testing.synthetic import small_cdse_cluster, synthetic_trajectory

    out = tmp_path / "runs_ft"
    other = tmp_path / "other.h5"
    write_trajectory(synthetic_trajectory(20, base=small_cdse_cluster(radius_ang=5.5), seed=3), other)
    unfinished = tmp_path / "unfinished"
    (unfinished / "run_0").mkdir(parents=True)
    shutil.copy(rf.run_dir(tiny_runs, 0) / rf.CONFIG_JSON, unfinished / "run_0" / rf.CONFIG_JSON)
    cases = [
        (("--freeze-blocks", 2), "--freeze-blocks 2: the model of", "has only 1 ALIGNN block"),
        (("--epochs", -1), "--epochs must be >= 0"),
        (("--lr", 0), "--lr must be positive"),
        (("--seed", 9), "no finished member with seed 9"),
        (("--stride", 1), "--stride 1: every labelled frame"),
        (("--backend", "pbs"), "--backend must be local or slurm"),
        (("--wait",), "--dry-run and --wait belong to --backend slurm"),
        (("--seed", 0, "--backend", "slurm"), "--seed fine-tunes one member here"),
        (("--device", "tpu"), "--device must be auto, cpu or cuda"),
    ]
    for extra, *message in cases:
        assert_one_line_error(run_cli(*_args(tiny_runs, ext_h5, out, *extra)), *message)
    assert_one_line_error(run_cli(*_args(tiny_runs, other, out)), "trained on Cd4Se13", "the data is")
    assert_one_line_error(run_cli(*_args(unfinished, ext_h5, out)), "none finished")
    assert_one_line_error(run_cli(*_args(tmp_path / "nowhere", ext_h5, out)), "no such runs folder")
    assert_one_line_error(
        run_cli(*_args(tiny_runs, tmp_path / "missing.h5", out)), "missing.h5", "no such trajectory file"
    )
    assert_one_line_error(
        run_cli(*_args(tiny_runs, ext_h5, tiny_runs)), "would be both the pretrained runs (--runs) and the output (-o)"
    )
    assert not out.exists() or not list(out.glob("run_*/DONE"))


def test_finetune_slurm_submits_arrays_then_reports_when_done(run_cli, tmp_path, tiny_runs, ext_h5, fake_slurm):  # noqa: F811
    """One array of `finetune --seed S` tasks (and one of scratch `train` tasks); once every member is
    done, the same command submits nothing and writes the report."""
    work = tmp_path / "work"
    r = run_cli(*_args(tiny_runs, ext_h5, work / "runs_ft", "--backend", "slurm"))
    assert r.exit_code == 0, r.stderr
    assert "submitted job array 100: 2 member(s), seeds 0-1" in r.stdout
    assert "submitted job array 101: 2 member(s), seeds 0-1" in r.stdout
    assert "rerun this command once every member is done" in r.stdout
    ft_job = json.loads((work / "runs_ft" / ".slurm" / "job_100.json").read_text())
    assert [t["member"] for t in ft_job["tasks"]] == [0, 1]
    assert ft_job["tasks"][1]["argv"][:4] == ["--quiet", "finetune", "--seed", "1"]
    scratch_job = json.loads((work / "runs_scratch" / ".slurm" / "job_101.json").read_text())
    assert scratch_job["tasks"][0]["argv"][1:3] == ["train", "--seed"] and "--epochs" in scratch_job["tasks"][0]["argv"]
    assert not (work / "finetune_report.csv").exists()
    # The members finish (here, trained locally: 0 epochs keeps the pretrained weights).
    done = tmp_path / "done"
    assert run_cli(*_args(tiny_runs, ext_h5, done / "runs_ft", "--no-baselines", "--epochs", 0)).exit_code == 0
    r = run_cli(*_args(tiny_runs, ext_h5, done / "runs_ft", "--no-baselines", "--epochs", 0, "--backend", "slurm"))
    assert r.exit_code == 0, r.stderr
    assert "nothing to submit (2 done)" in r.stdout and (done / "finetune_report.csv").is_file()
