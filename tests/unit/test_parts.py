"""predict and FNA cut into parts (member x block of frames) and merged, without a Slurm cluster.

Parts are computed in-process through ``--part`` (what an array task runs); the merge through
``--backend slurm`` needs no Slurm when every part is there. Submission of the missing parts goes
through submitit against the stand-in ``sbatch``/``squeue`` of ``test_slurm.fake_slurm``.
"""

from __future__ import annotations

import csv
import json

import h5py
import numpy as np
import pytest

from qdgap.core.analysis import parts as pt
from qdgap.core.common.errors import QdgapError
from qdgap.core.data.trajectory import read_trajectory, write_trajectory
from qdgap.core.workflow import part_array as pa
from qdgap.testing.synthetic import synthetic_trajectory
from tests.conftest import assert_one_line_error
from tests.unit.test_slurm import fake_slurm  # noqa: F401 - a fixture

F32 = dict(rtol=1e-5, atol=1e-5)  # float32 rounding of gaps near 2 eV (eV)


def _h5(path):
    with h5py.File(path, "r") as h5:
        return {k: h5[k][()] for k in h5}, dict(h5.attrs)


def _assert_same_datasets(a, b, skip=()):
    da, _ = _h5(a)
    db, _ = _h5(b)
    assert sorted(da) == sorted(db)
    for k in da:
        if k in skip:
            continue
        if da[k].dtype.kind == "f":
            # float32 rounding of ~2 eV gaps: 1e-5 eV; meV and the statistics made from them: 1e-2.
            atol = 1e-5 if k.endswith("_ev") else 1e-2
            np.testing.assert_allclose(da[k], db[k], rtol=1e-5, atol=atol, err_msg=k)
        else:
            assert np.array_equal(da[k], db[k]), k


# --------------------------------------------------------------------------
# Plan, blocks, part names
# --------------------------------------------------------------------------
def test_parts_plan_cuts_each_member_into_blocks():
    plan = pt.plan_parts("fna", [3, 4], 25, 10)
    assert [p.name for p in plan] == ["3:0", "3:1", "3:2", "4:0", "4:1", "4:2"]
    assert plan[0].file_name == "fna-seed3-b0.npz"
    assert [p.name for p in pt.plan_parts("predict", [3, 4], 25, None)] == ["3:0", "4:0"]
    frames = np.arange(100, 125)
    assert pt.block_frames(frames, 2, 10).tolist() == list(range(120, 125))
    assert np.concatenate([pt.block_frames(frames, b, 10) for b in range(3)]).tolist() == frames.tolist()
    assert pt.block_frames(frames, 0, None).tolist() == frames.tolist()
    assert pt.parse_part("predict", "7") == pt.Part("predict", 7, 0)
    assert pt.parse_part("predict", "7:2") == pt.Part("predict", 7, 2)


@pytest.mark.parametrize("bad", ["", "a", "3:x", "-1", "3:1:2"])
def test_parts_parse_rejects_bad_names(bad):
    with pytest.raises(QdgapError, match="SEED:BLOCK"):
        pt.parse_part("fna", bad)


def test_parts_block_out_of_range_is_refused():
    with pytest.raises(QdgapError, match="make 3 block"):
        pt.block_frames(np.arange(25), 3, 10)


def test_parts_task_argv_repeats_the_options(tmp_path):
    argv = pa.task_argv(
        "fna",
        pt.Part("fna", 3, 1),
        options={"runs": tmp_path / "r", "every": 2, "chunk": None, "allow_data_change": True, "x": False},
        frames_per_task=10,
    )
    assert argv == [
        "--quiet", "fna", "--runs", str(tmp_path / "r"), "--every", "2", "--allow-data-change",
        "--part", "3:1", "--frames-per-task", "10",
    ]  # fmt: skip


# --------------------------------------------------------------------------
# Bad input: exit 2, one line, nothing merged or submitted
# --------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["predict", "fna"])
def test_parts_frames_per_task_zero_is_refused(run_cli, tmp_path, tiny_runs, synthetic_h5, command):
    out = tmp_path / f"{command}.h5"
    result = run_cli(command, "--runs", tiny_runs, "--data", synthetic_h5, "-o", out, "--backend", "slurm",
                     "--frames-per-task", "0")  # fmt: skip
    assert_one_line_error(result, "--frames-per-task must be at least 1, got 0")
    assert not out.exists() and not pt.parts_folder(out).exists()


def test_parts_slurm_options_need_slurm_backend(run_cli, tmp_path, tiny_runs, synthetic_h5):
    out = tmp_path / "p.h5"
    result = run_cli("predict", "--runs", tiny_runs, "--data", synthetic_h5, "-o", out, "--frames-per-task", "5")
    assert_one_line_error(result, "belong to --backend slurm")
    result = run_cli("predict", "--runs", tiny_runs, "--data", synthetic_h5, "-o", out, "--backend", "slurm",
                     "--part", "0:0")  # fmt: skip
    assert_one_line_error(result, "--part")


# --------------------------------------------------------------------------
# Parts merged equal the one-process run
# --------------------------------------------------------------------------
def _parts(run_cli, command, runs, data, out, k, *, every=1, skip=(), extra=()):
    """Compute the parts of seeds 0 and 1 through ``--part`` (as array tasks do), but those in ``skip``."""
    from qdgap.core.analysis.predict import select_frames
    from qdgap.core.store.runs import load_members

    traj = read_trajectory(data)
    chosen = select_frames(load_members(runs), traj, "unseen")[::every]
    chosen = chosen[np.isfinite(traj.gap_ev[chosen])]
    for part in pt.plan_parts(command, [0, 1], len(chosen), k):
        if (part.seed, part.block) in skip:
            continue
        r = run_cli("--quiet", command, "--runs", runs, "--data", data, "-o", out, "--device", "cpu",
                    "--part", part.name, "--frames-per-task", k, *extra)  # fmt: skip
        assert r.exit_code == 0, r.stderr


def test_parts_predict_merge_equals_local_run(run_cli, tmp_path, tiny_runs, synthetic_h5):
    local = tmp_path / "local" / "predictions.h5"
    assert run_cli("--quiet", "predict", "--runs", tiny_runs, "--data", synthetic_h5, "-o", local,
                   "--device", "cpu").exit_code == 0  # fmt: skip
    out = tmp_path / "array" / "predictions.h5"
    _parts(run_cli, "predict", tiny_runs, synthetic_h5, out, 40)
    files = sorted(p.name for p in pt.parts_folder(out).glob("*.npz"))
    assert files == [f"predict-seed{s}-b{b}.npz" for s in (0, 1) for b in range(3)]  # 108 unseen frames / 40

    # Every part is there: --backend slurm merges at once, without asking Slurm anything.
    r = run_cli("--quiet", "predict", "--runs", tiny_runs, "--data", synthetic_h5, "-o", out, "--device", "cpu",
                "--backend", "slurm", "--frames-per-task", "40")  # fmt: skip
    assert r.exit_code == 0, r.stderr
    _assert_same_datasets(local, out)
    _, attrs = _h5(out)
    assert attrs["slurm_parts"] == 6 and attrs["frames_per_task"] == 40
    assert attrs["slurm_jobs"] == ""  # computed outside Slurm
    with open(out.with_suffix(".csv")) as a, open(local.with_suffix(".csv")) as b:
        ra, rb = list(csv.DictReader(a)), list(csv.DictReader(b))
    assert len(ra) == len(rb) and ra[0].keys() == rb[0].keys()
    for x, y in zip(ra, rb, strict=True):
        np.testing.assert_allclose([float(v) for v in x.values()], [float(v) for v in y.values()], **F32)


def test_parts_fna_merge_equals_local_run(run_cli, tmp_path, tiny_runs, synthetic_h5):
    opts = ("--every", "12", "--bootstrap", "200")
    local = tmp_path / "local" / "fna.h5"
    r = run_cli("--quiet", "fna", "--runs", tiny_runs, "--data", synthetic_h5, "-o", local, "--device", "cpu", *opts)
    assert r.exit_code == 0, r.stderr
    out = tmp_path / "array" / "fna.h5"
    _parts(run_cli, "fna", tiny_runs, synthetic_h5, out, 4, every=12, extra=opts)
    r = run_cli("--quiet", "fna", "--runs", tiny_runs, "--data", synthetic_h5, "-o", out, "--device", "cpu",
                "--backend", "slurm", "--frames-per-task", "4", *opts)  # fmt: skip
    assert r.exit_code == 0, r.stderr
    _assert_same_datasets(local, out)
    _, attrs = _h5(out)
    assert attrs["slurm_parts"] == 2 * 3  # 9 frames in blocks of 4
    by_atom = {}
    for path in (local.parent / "average_rmse_results.csv", out.parent / "average_rmse_results.csv"):
        with open(path) as fh:
            by_atom[path] = {row["atom_label"]: row for row in csv.DictReader(fh)}
    a, b = by_atom.values()
    assert a.keys() == b.keys()
    for label in a:
        for col in ("rmse_mev_mean", "importance_mev", "mean_abs_shift_mev"):
            np.testing.assert_allclose(float(a[label][col]), float(b[label][col]), rtol=1e-4, atol=1e-3)


# --------------------------------------------------------------------------
# Missing parts resubmitted alone; a part from other inputs refused
# --------------------------------------------------------------------------
def test_parts_only_the_missing_part_is_submitted(run_cli, tmp_path, tiny_runs, synthetic_h5, fake_slurm):  # noqa: F811
    out = tmp_path / "array" / "predictions.h5"
    _parts(run_cli, "predict", tiny_runs, synthetic_h5, out, 40, skip={(1, 1)})
    assert not (pt.parts_folder(out) / "predict-seed1-b1.npz").exists()
    (fake_slurm / "squeue.txt").write_text("100|PENDING\n")
    r = run_cli("--quiet", "predict", "--runs", tiny_runs, "--data", synthetic_h5, "-o", out, "--device", "cpu",
                "--backend", "slurm", "--frames-per-task", "40", "--partition", "debug")  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert "submitted job array 100: 1 of 6 predict part(s)" in r.stdout
    assert not out.exists()  # nothing merged while a part is missing
    script = (fake_slurm / "script_100.sh").read_text()
    assert "--array" not in script and "--partition=debug" in script
    assert "--part 1:1 --frames-per-task 40" in script
    record = json.loads((pt.parts_folder(out) / ".slurm" / "job_100.json").read_text())
    assert [t["member"] for t in record["tasks"]] == ["1:1"]

    # Still queued: a rerun submits nothing again; status shows the part pending beside the done ones.
    r = run_cli("--quiet", "predict", "--runs", tiny_runs, "--data", synthetic_h5, "-o", out, "--device", "cpu",
                "--backend", "slurm", "--frames-per-task", "40")  # fmt: skip
    assert r.exit_code == 0 and "already queued or running" in r.stdout, r.stdout
    assert not (fake_slurm / "script_101.sh").exists()
    states = {s.part: s.state for s in pa.part_states(pt.parts_folder(out))}
    assert states == {"0:0": "done", "0:1": "done", "0:2": "done", "1:0": "done", "1:1": "pending", "1:2": "done"}
    r = run_cli("status", out)
    assert r.exit_code == 0 and "1:1" in r.stdout and "pending" in r.stdout and "5 done" in r.stdout


def test_parts_from_another_input_are_refused(run_cli, tmp_path, tiny_runs, synthetic_h5, fake_slurm):  # noqa: F811
    other = tmp_path / "other.h5"
    write_trajectory(synthetic_trajectory(120, seed=5), other)
    out = tmp_path / "array" / "predictions.h5"
    for data in (other, synthetic_h5):
        r = run_cli("--quiet", "predict", "--runs", tiny_runs, "--data", data, "-o", out, "--device", "cpu",
                    "--frames", "all", "--part", "0:0")  # fmt: skip
        assert r.exit_code == 0, r.stderr
        if data == other:  # the other input's part, renamed as part 1 of this run
            (pt.parts_folder(out) / "predict-seed0-b0.npz").rename(pt.parts_folder(out) / "predict-seed1-b0.npz")
    r = run_cli("predict", "--runs", tiny_runs, "--data", synthetic_h5, "-o", out, "--device", "cpu",
                "--frames", "all", "--backend", "slurm")  # fmt: skip
    assert_one_line_error(r, "predict-seed1-b0.npz", "computed from another input")
    assert not out.exists() and not out.with_suffix(".csv").exists()
    assert not list(fake_slurm.glob("script_*.sh"))  # refused before submitting anything


def test_parts_merge_refuses_a_missing_part(tmp_path, tiny_runs, synthetic_h5):
    from qdgap.core.store.runs import load_members

    members = load_members(tiny_runs)
    traj = read_trajectory(synthetic_h5)
    frames = np.arange(10)
    folder = tmp_path / ".p.parts"
    pt.compute_part(pt.Part("predict", 0, 0), members, traj, frames, frames_per_task=None, folder=folder)
    with pytest.raises(QdgapError, match=r"1 of 2 predict part\(s\) missing \(1:0\)"):
        pt.merge_parts("predict", members, traj, frames, frames_per_task=None, folder=folder)
