"""The commands' work as core calls, without the CLI: what ``qdgap pipeline`` and a script call.

Each call takes a ``Hooks``; these tests record what core says and shows, and check that the
files are those the commands write.
"""

from __future__ import annotations

import numpy as np
import pytest

from qdgap.core.common import schema
from qdgap.core.common.errors import QdgapError
from qdgap.core.common.hooks import Hooks
from qdgap.core.store.results import read_results
from qdgap.core.workflow import inference as inf


class Recorder:
    def __init__(self):
        self.lines: list[str] = []
        self.shown: list[object] = []
        self.bars: list[tuple[str, float | None]] = []

    def hooks(self) -> Hooks:
        import contextlib

        @contextlib.contextmanager
        def progress(description, total, *, unit=""):  # noqa: ARG001
            self.bars.append((description, total))
            yield lambda n=1: None

        return Hooks(progress=progress, say=self.lines.append, show=self.shown.append)


def test_predict_and_fna_as_core_calls(tmp_path, tiny_runs, synthetic_h5):
    rec = Recorder()
    out = tmp_path / "predictions.h5"
    pred = inf.predict_to_file(tiny_runs, synthetic_h5, out, frames="unseen", device="cpu", hooks=rec.hooks())
    assert rec.shown == [pred] and isinstance(pred, inf.PredictOutcome)
    data, attrs = read_results(out, fmt=schema.PREDICTIONS_FORMAT)
    assert data[schema.GAP_PRED_EV].shape == (pred.n_members, pred.n_frames)
    assert (out.with_suffix(".csv")).is_file()
    assert rec.bars[0] == (f"predict ({pred.n_members} members)", pred.n_members * pred.n_frames)
    assert attrs["ensemble_rmse_mev"] == pytest.approx(pred.summary["ensemble_rmse_mev"])

    fna_out = tmp_path / "fna.h5"
    stats = inf.FnaStatistics(bootstrap=200)
    res = inf.fna_to_file(tiny_runs, synthetic_h5, fna_out, every=20, device="cpu", statistics=stats, hooks=rec.hooks())
    assert rec.shown[-1] is res and isinstance(res, inf.FnaOutcome)
    assert res.csv == tmp_path / "average_rmse_results.csv" and res.csv.is_file()
    table, _ = read_results(fna_out, fmt=schema.FNA_FORMAT)
    assert len(res.table["atom_label"]) == res.n_atoms
    assert np.all(np.diff(res.table["rank"]) > 0)
    assert not list(tmp_path.glob(".fna.h5.partial"))


def test_core_calls_refuse_bad_values_before_work(tmp_path, tiny_runs, synthetic_h5):
    out = tmp_path / "fna.h5"
    with pytest.raises(QdgapError, match="--every must be at least 1"):
        inf.fna_to_file(tiny_runs, synthetic_h5, out, every=0)
    with pytest.raises(QdgapError, match="--bootstrap must be at least"):
        inf.fna_to_file(tiny_runs, synthetic_h5, out, statistics=inf.FnaStatistics(bootstrap=1))
    with pytest.raises(QdgapError, match="--frames must be one of"):
        inf.predict_to_file(tiny_runs, synthetic_h5, tmp_path / "p.h5", frames="some")
    assert not list(tmp_path.iterdir())


def test_pipeline_as_a_core_call(tmp_path):
    """``run_pipeline`` with silent-but-recording hooks: every stage said, each outcome shown once, and
    rerunning finds everything up to date."""
    from qdgap.core.data.trajectory import write_trajectory
    from qdgap.core.pipeline.study import STAGES, StudySettings, run_pipeline
    from qdgap.core.workflow import finetune_run, members
    from qdgap.testing.synthetic import synthetic_trajectory

    write_trajectory(synthetic_trajectory(150, seed=1), tmp_path / "traj.h5")
    write_trajectory(synthetic_trajectory(80, seed=2), tmp_path / "ext.h5")
    settings = StudySettings(preset="tiny", members=2, jobs=1, device="cpu", fna_every=20, finetune_epochs=3)
    rec = Recorder()
    html = run_pipeline(tmp_path / "traj.h5", tmp_path / "ext.h5", tmp_path / "w", settings, hooks=rec.hooks())
    assert html == tmp_path / "w" / "report.html" and html.is_file()
    for stage in STAGES:
        assert sum(line.startswith(f"{stage} ") and "done in" in line for line in rec.lines) == 1, stage
    kinds = [type(o) for o in rec.shown]
    assert kinds == [
        members.MembersOutcome,  # train
        inf.PredictOutcome,
        inf.FnaOutcome,
        members.MembersOutcome,  # fine-tuned
        members.MembersOutcome,  # scratch baseline
        finetune_run.TransferOutcome,
        inf.PredictOutcome,  # the extension
    ]
    assert [o.folder.name for o in rec.shown if isinstance(o, members.MembersOutcome)] == [
        "runs",
        "runs_ft",
        "runs_scratch",
    ]
    again = Recorder()
    run_pipeline(tmp_path / "traj.h5", tmp_path / "ext.h5", tmp_path / "w", settings, hooks=again.hooks())
    assert sum("up to date" in line for line in again.lines) == len(STAGES) and not again.shown
    with pytest.raises(QdgapError, match="--from must be one of"):
        run_pipeline(tmp_path / "traj.h5", None, tmp_path / "w2", settings, from_stage="nowhere")
    assert not (tmp_path / "w2").exists()  # refused before anything is written
