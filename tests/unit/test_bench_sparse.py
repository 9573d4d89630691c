"""bench/bench_sparse.py's scorecard arithmetic on fixed inputs (the scoring itself is
bench_label_spacing.score_outside_pool, the label-spacing curve's)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_sparse.py"


def _bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH.parent))  # it imports bench_label_spacing beside it
    spec = importlib.util.spec_from_file_location("bench_sparse", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(arm: str, rmse: float, coverage: float | None, members: int = 4) -> dict:
    return {
        "arm": arm, "members": members, "pool": 100, "scored_frames": 4900, "ensemble_rmse_mev": rmse,
        "member_rmse_mev": [rmse + 1.0, rmse + 5.0], "linear_rmse_mev": 80.0, "pchip_rmse_mev": 81.0,
        "nearest_rmse_mev": 90.0, "mean_rmse_mev": 114.0, "hybrid_rmse_mev": 70.0, "coverage95": coverage,
    }  # fmt: skip


def test_scorecard_picks_the_best_row_and_states_skill_against_interpolation(monkeypatch):
    b = _bench(monkeypatch)
    ext = {
        "pretrained_rmse_mev": 95.0, "train_mean_rmse_mev": 110.0, "persistence_rmse_mev": 76.0,
        "oracle_mean_rmse_mev": 75.8,
        "rows": [{"k": 25, "finetuned": 76.4, "scratch": 79.7, "pretrained_offset": 86.8, "pretrained_affine": 81.6,
                  "interpolation": 77.2, "nearest": 84.7, "labels_mean": 79.6}],
    }  # fmt: skip
    text = b.render([_row("a", 100.0, 0.7), _row("b", 60.0, 0.5), _row("c", 120.0, None, 1)], ext, None, "cmd")
    assert "| 0-10 ps, 100 labels | 15 | 60.0 | b (4 members) | 80.0 | 90.0 | 114.0 |" in text
    assert "| its calibrated 95 % interval covers | 90-98 % | 70 % | a |" in text
    assert "| 10-15 ps, 25 labels | 20 | 76.4 | fine-tuned | 77.2 | 84.7 | 79.6 |" in text
    assert "| 10-15 ps, no label | 40 | 95.0 | pretrained |" in text
    assert "| b | 4 | **60.0** | 61.0-65.0 | +0.25 | 50 % | 70.0 |" in text  # skill = 1 - 60 / 80
    assert "| c | 1 | **120.0** | 121.0-125.0 | -0.50 | - | 70.0 |" in text


def test_an_arm_needs_a_name_and_a_folder(monkeypatch):
    b = _bench(monkeypatch)
    assert b._arm("x=work/runs") == ("x", Path("work/runs"))
    with pytest.raises(Exception, match="NAME=RUNS"):
        b._arm("work/runs")
