"""Where a workflow's outputs live inside one work folder (``qdgap pipeline``, ``qdgap report``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workdir:
    """The files of one workflow run, all under ``root``."""

    root: Path

    @property
    def runs(self) -> Path:  # the trained ensemble, run_<seed>/
        return self.root / "runs"

    @property
    def predictions(self) -> Path:  # ensemble on every frame of the trajectory
        return self.root / "predictions.h5"

    @property
    def predictions_csv(self) -> Path:
        return self.root / "predictions.csv"

    @property
    def fna(self) -> Path:
        return self.root / "fna.h5"

    @property
    def fna_csv(self) -> Path:  # the original workflow's file name
        return self.root / "average_rmse_results.csv"

    @property
    def runs_finetuned(self) -> Path:
        return self.root / "runs_ft"

    @property
    def runs_scratch(self) -> Path:  # baseline: trained from scratch on the extension's labels
        return self.root / "runs_scratch"

    @property
    def finetune_csv(self) -> Path:  # rows pretrained, finetuned, scratch
        return self.root / "finetune_report.csv"

    @property
    def finetune_json(self) -> Path:
        return self.root / "finetune_report.json"

    @property
    def predictions_extended(self) -> Path:  # fine-tuned ensemble on every frame of the extension
        return self.root / "predictions_ext.h5"

    @property
    def selection_json(self) -> Path:  # optional: bench/bench_selection.py's record, drawn by the report
        return self.root / "selection.json"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def log(self) -> Path:
        return self.root / "qdgap.log"
