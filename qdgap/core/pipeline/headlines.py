"""Does a study land where independent re-runs put it? The demo's headline numbers as ranges.

Training is a random draw: another seed base, or the same seeds on another CPU (whose float
rounding differs), gives another ensemble. The README states the demo's headline numbers as the
range over independent ensembles (seed bases 0, 1000, 2000), measured and written to
``data/demo_headlines.json`` by ``bench/bench_headlines.py``; ``qdgap pipeline`` on the demo data ends
by saying whether its own numbers fall inside them, so a user on another machine can tell a normal
re-draw from something wrong.

Three re-runs' min-max is not where a fourth lands: by exchangeability a new draw falls outside it
with probability 2/4. The check therefore uses the 95 % prediction interval for one more run,
mean ± t(0.975, n-1) · s · sqrt(1 + 1/n) (normal draws; wide with n = 3, and honest about it).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qdgap.core.store.layout import Workdir

HEADLINES_JSON = Path(__file__).resolve().parents[3] / "data" / "demo_headlines.json"
TRANSFER_ROWS = ("pretrained", "finetuned", "scratch")
TOP_ATOMS = 5  # the FNA headline: the first five atoms of average_rmse_results.csv
NOT_HEADLINES = ("seed_base", "members")
TITLES = {  # what each headline is, in the words of the README's table
    "ensemble_rmse_mev": "ensemble, unseen frames",
    "transfer_pretrained_rmse_mev": "continuation, pretrained",
    "transfer_finetuned_rmse_mev": "continuation, fine-tuned",
    "transfer_scratch_rmse_mev": "continuation, from scratch",
}  # numbers in a run record that describe it, not measure it


def headline_values(workdir: Path) -> dict[str, float | list[str]]:
    """A finished study's headline numbers, read from its work folder.

    Returns:
        ``ensemble_rmse_mev`` (labelled frames outside every member's pool, meV), ``transfer_<row>_rmse_mev``
        for each fine-tuning row present, and ``fna_top`` (the first ``TOP_ATOMS`` atom labels); a key is
        missing when its file is.
    """
    from qdgap.core.common import schema
    from qdgap.core.common.metrics import rmse_mev
    from qdgap.core.store import runs as rf
    from qdgap.core.store.results import read_results

    wd = Workdir(Path(workdir))
    out: dict[str, float | list[str]] = {}
    if wd.predictions.is_file():
        pred, _ = read_results(wd.predictions, fmt=schema.PREDICTIONS_FORMAT)
        pooled = [
            np.asarray(rf.read_json(d / rf.SPLIT_JSON)[k], np.int64)
            for d in rf.member_dirs(wd.runs)
            for k in ("train", "val", "test")
        ]
        frame = np.asarray(pred[schema.FRAME_INDEX])
        truth = np.asarray(pred[schema.GAP_TRUE_EV], np.float64)
        unseen = np.isfinite(truth) & ~np.isin(frame, np.concatenate(pooled) if pooled else [])
        if unseen.any():
            out["ensemble_rmse_mev"] = rmse_mev(
                np.asarray(pred[schema.GAP_MEAN_EV], np.float64)[unseen] - truth[unseen]
            )
    if wd.finetune_csv.is_file():
        with open(wd.finetune_csv, newline="") as fh:
            for row in csv.DictReader(fh):
                if row.get("model") in TRANSFER_ROWS:
                    out[f"transfer_{row['model']}_rmse_mev"] = float(row["rmse_mev"])
    if wd.fna_csv.is_file():
        with open(wd.fna_csv, newline="") as fh:
            out["fna_top"] = [row["atom_label"] for row in csv.DictReader(fh)][:TOP_ATOMS]
    return out


@dataclass(frozen=True)
class HeadlineCheck:
    """One headline of a run against the published range.

    Attributes:
        name: the key (``ensemble_rmse_mev``, ``transfer_finetuned_rmse_mev``, ...).
        value: this run's, meV.
        low, high: the range over the re-runs, meV.
    """

    name: str
    value: float
    low: float
    high: float

    @property
    def inside(self) -> bool:
        return self.low <= self.value <= self.high


@dataclass(frozen=True)
class HeadlineOutcome:
    """What ``check_headlines`` found: each numeric headline against its range, and the FNA leaders'
    overlap with the atoms that led in any re-run."""

    checks: tuple[HeadlineCheck, ...]
    top_atoms: tuple[str, ...]
    known_leaders: tuple[str, ...]
    runs: int

    @property
    def all_inside(self) -> bool:
        return all(c.inside for c in self.checks)


def check_headlines(workdir: Path, data_sha256: str, *, path: Path = HEADLINES_JSON) -> HeadlineOutcome | None:
    """Compare a finished study with the measured ranges; None when the ranges are for other data or absent.

    Args:
        workdir: the study's work folder.
        data_sha256: sha256 of the trajectory it trained on (ranges apply to the demo data only).
        path: the ranges file (``bench/bench_headlines.py`` writes it).
    """
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record.get("data_sha256") != data_sha256:
        return None
    values = headline_values(workdir)
    bounds = record.get("intervals", record["ranges"])
    checks = tuple(
        HeadlineCheck(name, float(values[name]), float(lo), float(hi))
        for name, (lo, hi) in bounds.items()
        if name in values
    )
    leaders = tuple(dict.fromkeys(a for run in record["runs"] for a in run.get("fna_top", [])))
    return HeadlineOutcome(checks, tuple(values.get("fna_top", [])), leaders, len(record["runs"]))


def _headline_keys(runs: list[dict]) -> list[str]:
    return [
        k
        for k, v in runs[0].items()
        if k not in NOT_HEADLINES and isinstance(v, int | float) and all(k in r for r in runs)
    ]


def ranges_from_runs(runs: list[dict]) -> dict[str, tuple[float, float]]:
    """(min, max) over the re-runs of every numeric headline they all have (meV)."""
    return {k: (float(min(r[k] for r in runs)), float(max(r[k] for r in runs))) for k in _headline_keys(runs)}


def intervals_from_runs(runs: list[dict], level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Prediction interval for one more independent run of every numeric headline (meV).

    mean ± t((1 + level) / 2, n - 1) · s · sqrt(1 + 1/n) over the n >= 2 re-runs; s is the sample
    standard deviation.
    """
    from scipy import stats

    n = len(runs)
    if n < 2:
        raise ValueError("a prediction interval needs at least two runs")
    t = float(stats.t.ppf(0.5 + level / 2, n - 1))
    out = {}
    for k in _headline_keys(runs):
        x = np.array([r[k] for r in runs], np.float64)
        half = t * x.std(ddof=1) * np.sqrt(1 + 1 / n)
        out[k] = (float(x.mean() - half), float(x.mean() + half))
    return out
