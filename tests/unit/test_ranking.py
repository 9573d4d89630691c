"""Rankings (core.analysis.ranking) and the FNA re-draw benchmark's arithmetic (bench/bench_fna_redraw.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from qdgap.core.analysis.ranking import (
    rank_coverage,
    replicate_agreement,
    stated_top_k,
    top_k_overlap,
)
from qdgap.core.common.errors import QdgapError

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_fna_redraw.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_fna_redraw", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


def test_top_k_overlap_on_fixed_scores():
    a = np.array([9.0, 8.0, 7.0, 6.0, 5.0, 1.0])
    b = np.array([9.0, 1.0, 7.0, 8.0, 5.0, 6.0])  # top 3: 0, 3, 2
    assert top_k_overlap(a, b, 1) == 1.0
    assert top_k_overlap(a, b, 3) == pytest.approx(2 / 3)  # {0, 1, 2} vs {0, 3, 2}
    assert top_k_overlap(a, -a, 3) == 0.0
    assert top_k_overlap(a, b, 6) == 1.0


def test_stated_top_k_is_rank_stability_of_the_top_atoms():
    score = np.array([3.0, 2.0, 1.0, 0.0])
    reps = np.array([[3.0, 2.0, 1.0, 0.0], [3.0, 0.0, 1.0, 2.0], [0.0, 3.0, 2.0, 1.0], [3.0, 2.0, 1.0, 0.0]])
    # top 2 = atoms 0, 1: atom 0 in the replicates' top 2 in 3 of 4, atom 1 in 3 of 4
    assert stated_top_k(score, reps, 2) == pytest.approx(0.75)
    assert stated_top_k(score, reps, 1) == pytest.approx(0.75)
    assert stated_top_k(score, reps, 4) == 1.0


def test_replicate_agreement_on_fixed_replicates():
    same = np.tile(np.arange(5.0), (10, 1))
    agree = replicate_agreement(same, ks=(2,), pairs=50)
    assert agree.rho == pytest.approx(1.0) and agree.overlap == {2: 1.0}
    # two kinds of replicate, reversed orders: a pair is alike (rho 1) or opposite (rho -1)
    two = np.stack([np.arange(4.0), np.arange(4.0)[::-1]] * 50)
    flip = replicate_agreement(two, ks=(2,), pairs=4000, seed=1)
    p_alike = 49 / 99  # of the 99 other replicates, 49 are the same kind
    assert flip.rho == pytest.approx(2 * p_alike - 1, abs=0.05)
    assert flip.overlap[2] == pytest.approx(p_alike, abs=0.03)  # opposite top-2s share nothing
    with pytest.raises(QdgapError, match="at least 2 replicates"):
        replicate_agreement(same[:1])


def test_rank_coverage_counts_ranks_inside_the_intervals():
    rank_ci = np.array([[1, 1], [2, 3], [2, 4], [3, 4]])
    assert rank_coverage(rank_ci, np.array([4.0, 3.0, 2.0, 1.0])) == 1.0  # ranks 1, 2, 3, 4
    # atom 0 ranks 2, outside [1, 1]; atom 1 ranks 1, outside [2, 3]
    assert rank_coverage(rank_ci, np.array([3.0, 4.0, 2.0, 1.0])) == 0.5


def test_bench_fna_redraw_summary_on_fixed_inputs():
    bench = _bench()
    ks = (1, 2)
    ensembles = [
        {
            "stated_top": {1: 1.0, 2: 0.9},
            "predicted_top": {1: 0.8, 2: 0.7},
            "predicted_rho": 0.6,
            "predicted_top_members": {1: 0.9, 2: 0.8},
            "predicted_rho_members": 0.7,
            "split_half_rho": 0.4,
            "split_half_full_rho": 0.8 / 1.4,
        },
        {
            "stated_top": {1: 0.6, 2: 0.7},
            "predicted_top": {1: 0.4, 2: 0.5},
            "predicted_rho": 0.4,
            "predicted_top_members": {1: 0.5, 2: 0.6},
            "predicted_rho_members": 0.5,
            "split_half_rho": 0.2,
            "split_half_full_rho": 0.4 / 1.2,
        },
    ]
    pairs = [
        {"rho": 0.5, "top": {1: 1.0, 2: 0.5}, "coverage_ab": 1.0, "coverage_ba": 0.5},
        {"rho": 0.3, "top": {1: 0.0, 2: 0.5}, "coverage_ab": 0.75, "coverage_ba": 0.75},
    ]
    s = bench.summarise(ensembles, pairs, ks)
    assert s["stated_top"] == pytest.approx({1: 0.8, 2: 0.8})
    assert s["predicted_top"] == pytest.approx({1: 0.6, 2: 0.6})
    assert s["predicted_rho"] == pytest.approx(0.5) and s["split_half_rho"] == pytest.approx(0.3)
    assert s["observed_rho"] == pytest.approx(0.4) and s["observed_top"] == pytest.approx({1: 0.5, 2: 0.5})
    assert s["observed_coverage"] == pytest.approx(0.75)
    assert s["overconfidence_points"] == pytest.approx({1: 30.0, 2: 30.0})
    text = bench.render([{**e, "file": f"e{i}", "members": 4, "frames": 9, "score": "rmse", "stand_out": []}
                         for i, e in enumerate(ensembles)],
                        [{**p, "pair": ["e0", "e1"]} for p in pairs], s, ks, "cmd")  # fmt: skip
    assert s["predicted_top_members"] == pytest.approx({1: 0.7, 2: 0.7}) and s["predicted_rho_members"] == 0.6
    assert "| top-2 overlap | 80 % | 60 %; 70 % | | 50 % |" in text and "+30 points (overconfident)" in text


def test_bench_fna_redraw_runs_on_three_ensembles(tmp_path):
    """Three ensembles drawn from one population of members: the files are read and every number is in range."""
    from qdgap.core.analysis.fna import FnaResult, write_fna
    from qdgap.core.common.labels import atom_labels
    from tests.unit.test_importance import positive_fna

    masked, baseline, true = positive_fna(members=12, frames=40, atoms=67, planted={3: 1.5, 40: 1.3}, seed=5)
    labels = atom_labels(np.array([48] * 28 + [34] * 17 + [17] * 22))
    files = []
    for e, members in enumerate((slice(0, 4), slice(4, 8), slice(8, 12))):
        result = FnaResult(
            frame_index=np.arange(40), time_fs=np.arange(40.0), gap_true_ev=true, atom_label=labels,
            baseline_ev=baseline[members], masked_ev=masked[members], seeds=np.arange(4) + 1000 * e,
        )  # fmt: skip
        files.append(tmp_path / f"fna{e}.h5")
        write_fna(result, files[-1], tmp_path / f"fna{e}.csv", attrs={})
    out = tmp_path / "redraw"
    assert _bench().main([*map(str, files), "--bootstrap", "200", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert len(report["ensembles"]) == 3 and len(report["pairs"]) == 3
    for e in report["ensembles"]:
        assert e["members"] == 4 and e["frames"] == 40 and {"Cd4", "Se13"} <= set(e["top"][:2])
        assert 0.0 <= e["stated_top"]["10"] <= 1.0 and -1.0 <= e["split_half_rho"] <= 1.0
    for p in report["pairs"]:
        assert p["top"]["5"] >= 0.4  # the planted atoms are in every ensemble's top 5
    assert "## Stated against observed" in out.with_suffix(".md").read_text()


def _population(seed: int, *, members: int = 60, frames: int = 150, atoms: int = 67):
    """Members drawn from one population, with graded importances and member-to-member (training) noise in
    how much each member relies on each atom: (masked (M, F, N), baseline (M, F), true (F,)) in eV."""
    from tests.unit.test_importance import _ar1

    rng = np.random.default_rng(seed)
    true = 1.7 + 0.05 * _ar1(rng, (frames,), 0.9)
    quality = rng.uniform(0.01, 0.03, members)
    base = true + quality[:, None] * _ar1(rng, (members, frames), 0.7)
    scale = np.linspace(0.3, 1.2, atoms)[rng.permutation(atoms)]
    member_scale = scale * np.exp(0.25 * rng.normal(size=(members, atoms)))
    extra = _ar1(rng, (members, atoms, frames), 0.7).transpose(0, 2, 1)
    masked = base[:, :, None] + quality[:, None, None] * member_scale[:, None, :] * extra
    return masked.astype(np.float32), base.astype(np.float32), true.astype(np.float32)


def test_redraw_overlap_predicts_independent_ensembles_and_rank_stability_overstates():
    """Three ensembles of 20 from one population, three populations: the top-10 share a re-drawn ensemble has
    in common with this one is predicted by replicate pairs within 10 points; rank_stability states more."""
    from qdgap.core.analysis.importance import importance_stats

    stated, predicted, observed = [], [], []
    for pop in range(3):
        masked, baseline, true = _population(pop)
        ens = [importance_stats(masked[e], baseline[e], true, n_boot=400, seed=pop) for e in np.split(np.arange(60), 3)]
        for a in range(3):
            top = np.argsort(-ens[a].mean_mev)[:10]
            stated.append(ens[a].rank_stability[top].mean())
            predicted.append(ens[a].redraw_overlap)
            observed += [top_k_overlap(ens[a].mean_mev, ens[b].mean_mev, 10) for b in range(3) if b != a]
    assert abs(np.mean(predicted) - np.mean(observed)) <= 0.10, (np.mean(predicted), np.mean(observed))
    assert np.mean(stated) > np.mean(predicted)
