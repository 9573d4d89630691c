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
    assert "| its calibrated 95 % interval covers | 90-98 % | 70.0 % | a |" in text
    assert "| 10-15 ps, 25 labels | 20 | 76.4 | fine-tuned | 77.2 | 84.7 | 79.6 |" in text
    assert "| 10-15 ps, no label | 40 | 95.0 | pretrained |" in text
    assert "| b | 4 | **60.0** | 61.0-65.0 | +0.25 | 50.0 % | 70.0 |" in text  # skill = 1 - 60 / 80
    assert "| c | 1 | **120.0** | 121.0-125.0 | -0.50 | - | 70.0 |" in text


def test_an_arm_needs_a_name_and_a_folder(monkeypatch):
    b = _bench(monkeypatch)
    assert b._arm("x=work/runs") == ("x", Path("work/runs"))
    with pytest.raises(Exception, match="NAME=RUNS"):
        b._arm("work/runs")


def test_paired_difference_matches_seeds_and_states_its_interval(monkeypatch):
    bench = _bench(monkeypatch)
    a = {"arm": "gap", "seeds": [0, 1, 2, 3, 4, 5, 9], "member_rmse_mev": [10.0, 12, 11, 13, 10, 14, 99]}
    b = {"arm": "edges", "seeds": [5, 4, 3, 2, 1, 0], "member_rmse_mev": [13.0, 9, 11, 10, 11, 8]}
    d = bench.paired_difference(a, b)  # seed 9 has no partner; differences -2, -1, -1, -2, -1, -1
    assert (d["n"], d["lower"]) == (6, 6)
    assert d["mean_mev"] == pytest.approx(-8 / 6)
    sd = (sum((x + 8 / 6) ** 2 for x in (-2, -1, -1, -2, -1, -1)) / 5) ** 0.5
    assert d["sd_mev"] == pytest.approx(sd)
    half = 2.5706 * sd / 6**0.5  # t(0.975, 5 dof)
    assert d["ci95_mev"] == pytest.approx([-8 / 6 - half, -8 / 6 + half], abs=1e-3)
    assert 0 < d["wilcoxon_p"] < 0.05
    text = bench.render([{**_row("gap", 100.0, 0.8)}], None, None, "cmd", [d])
    assert "edges minus gap, member RMSE paired by seed over 6 seeds: -1.3 meV" in text


def test_aims_with_xtb_pick_the_best_xtb_estimator_beside_the_same_frames_baselines(monkeypatch):
    b = _bench(monkeypatch)
    est = {"xtb_linear_map": 95.0, "delta_in_time": 61.0, "control_variate": 59.0, "gp_time_xtb": 60.0}
    mf = {
        "spacing": [{"spacing_fs": 100, **est, "linear": 73.8, "nearest": 81.2, "mean": 114.6,
                     "gp_time_xtb_coverage_pct": 85.8}],
        "extension": [{"k": 0, **est, "xtb_linear_map": 48.0, "mean": 110.0},
                      {"k": 25, **est, "ext_only_linear": 77.2, "ext_only_nearest": 84.7, "ext_only_mean": 79.6}],
        "delta": [{"slope": 1.0, "spacing": {"ensemble_rmse_mev": 58.0, "hybrid_rmse_mev": 70.0}}],
    }  # fmt: skip
    lines = b.multifidelity_aims(mf)
    assert (
        lines[0]
        == "| 0-10 ps, 100 labels, xTB on every frame | 15 | 58.0 | ALIGNN on PBE - xTB | 73.8 | 81.2 | 114.6 |"
    )
    mf["delta"].append(
        {
            "slope": 0.54,
            "spacing": {"ensemble_rmse_mev": 90.0, "hybrid_rmse_mev": 57.5},
            "extension": [
                {"k": 0, "ensemble_rmse_mev": 45.0, "hybrid_rmse_mev": 30.0},  # no residuals to interpolate at K = 0
                {"k": 25, "ensemble_rmse_mev": 80.0, "hybrid_rmse_mev": 58.5},
            ],
        }
    )
    with_readout = b.multifidelity_aims(mf)
    assert "| 57.5 | ALIGNN on PBE - 0.54 xTB + interpolated residuals |" in with_readout[0]
    assert "| 58.5 | ALIGNN on PBE - 0.54 xTB + interpolated residuals |" in with_readout[2]
    assert "| 45.0 | ALIGNN on PBE - 0.54 xTB |" in with_readout[3]
    assert "85.8 %" in lines[1]
    assert lines[2].startswith(
        "| 10-15 ps, 25 labels, xTB on every frame | 20 | 59.0 | xTB-corrected interpolation | 77.2"
    )
    assert lines[3].startswith("| 10-15 ps, no label, xTB on every frame | 40 | 48.0 | xTB, linear map |")
    assert b.multifidelity_aims(None) == []
