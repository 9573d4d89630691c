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
            "bootstrap_stated_top": {1: 1.0, 2: 1.0},
            "redraw_top": {1: 0.7, 2: 0.6},
            "redraw_rho": 0.5,
            "predicted_top": {1: 0.8, 2: 0.7},
            "predicted_rho": 0.6,
            "predicted_top_members": {1: 0.9, 2: 0.8},
            "predicted_rho_members": 0.7,
            "split_half_rho": 0.4,
            "split_half_full_rho": 0.8 / 1.4,
        },
        {
            "stated_top": {1: 0.6, 2: 0.7},
            "bootstrap_stated_top": {1: 0.8, 2: 0.9},
            "redraw_top": {1: 0.3, 2: 0.4},
            "redraw_rho": 0.3,
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
    assert s["bootstrap_stated_top"] == pytest.approx({1: 0.9, 2: 0.95})
    assert s["redraw_top"] == pytest.approx({1: 0.5, 2: 0.5}) and s["redraw_rho"] == pytest.approx(0.4)
    assert s["predicted_rho"] == pytest.approx(0.5) and s["split_half_rho"] == pytest.approx(0.3)
    assert s["observed_rho"] == pytest.approx(0.4) and s["observed_top"] == pytest.approx({1: 0.5, 2: 0.5})
    assert s["observed_coverage"] == pytest.approx(0.75)
    assert s["overconfidence_points"] == pytest.approx({1: 30.0, 2: 30.0})
    text = bench.render([{**e, "file": f"e{i}", "members": 4, "frames": 9, "score": "rmse", "stand_out": []}
                         for i, e in enumerate(ensembles)],
                        [{**p, "pair": ["e0", "e1"]} for p in pairs], s, ks, "cmd",
                        [{"size": 4, "k": 2, "pairs": 30, "observed": 0.5, "observed_pair_sd": 0.2, "stated": 0.45,
                          "predicted": 0.62, "bootstrap_stated": 0.8, "bootstrap_pairs": 0.7}])  # fmt: skip
    assert s["predicted_top_members"] == pytest.approx({1: 0.7, 2: 0.7}) and s["predicted_rho_members"] == 0.6
    assert "| top-2 overlap | 80 % | 95 %; 60 %; 70 % | 50 % | | 50 % |" in text
    assert "printed (simulated re-draw pairs) minus observed +0 points (within 10 points)" in text
    assert "top 2 minus observed +30 points (overconfident)" in text
    assert "| 4 | 2 | 30 | 50 % (20) | 45 % | 62 % | 80 % | 70 % | -5 points | +12 points |" in text


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
    pseudo = report["pseudo_ensembles"]  # 12 members dealt into ensembles of 4 and of 2
    assert [(r["size"], r["k"]) for r in pseudo] == [(4, 5), (4, 10), (2, 5), (2, 10)]
    assert [r["pairs"] for r in pseudo] == [3 * 40, 3 * 40, 15 * 40, 15 * 40]
    for r in pseudo:
        assert 0.0 <= r["observed"] <= 1.0 and 0.0 <= r["stated"] <= 1.0 and 0.0 <= r["predicted"] <= 1.0
    assert pseudo[0]["observed"] >= 0.4  # the two planted atoms in the top 5 of ensembles of 4


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


def test_redraw_overlap_and_rank_stability_predict_independent_ensembles():
    """Three ensembles of 20 from one population, three populations: the top-10 share two re-trained ensembles
    have in common is predicted within 10 points both by ``redraw_overlap`` and by ``rank_stability`` averaged
    over an ensemble's top 10."""
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
    assert abs(np.mean(stated) - np.mean(observed)) <= 0.10, (np.mean(stated), np.mean(observed))


def _noisy_ensembles(pop: int, *, noise: float, members: int = 60, atoms: int = 67) -> list[np.ndarray]:
    """Three disjoint ensembles of one population: member scores = true scores (sd 1.3 meV over atoms) plus
    training noise (sd ``noise`` meV per member and atom); the demo's members have about 4.8 meV."""
    rng = np.random.default_rng(pop)
    truth = rng.normal(0.0, 1.3, atoms)
    return np.split(truth + noise * rng.standard_normal((members, atoms)), 3)


def test_simulated_redraws_predict_what_the_bootstrap_overstates():
    """Where training noise dominates (as on the demo), the bootstrap's replicate pairs and its stated top-10
    overstate how much two ensembles share; the simulated re-draws predict it within 5 points."""
    from qdgap.core.analysis.ranking import redraw_agreement, simulate_redraws

    observed, predicted, stated, boot_pairs, boot_stated = [], [], [], [], []
    for pop in range(8):
        ens = _noisy_ensembles(pop, noise=4.0)
        rng = np.random.default_rng(100 + pop)
        for a, x in enumerate(ens):
            sims = simulate_redraws(x, draws=600, seed=pop)
            reps = (rng.multinomial(20, np.full(20, 0.05), size=600) / 20) @ x
            predicted.append(redraw_agreement(sims, ks=(10,)).overlap[10])
            stated.append(stated_top_k(x.mean(0), sims, 10))
            boot_pairs.append(replicate_agreement(reps, ks=(10,), seed=pop).overlap[10])
            boot_stated.append(stated_top_k(x.mean(0), reps, 10))
            observed += [top_k_overlap(x.mean(0), ens[b].mean(0), 10) for b in range(3) if b != a]
    obs = np.mean(observed)
    assert abs(np.mean(predicted) - obs) <= 0.05, (np.mean(predicted), obs)
    assert abs(np.mean(stated) - obs) <= 0.05, (np.mean(stated), obs)
    assert np.mean(boot_pairs) - obs > 0.05 and np.mean(boot_stated) - obs > 0.10, (boot_pairs, boot_stated, obs)


def test_simulated_redraws_shape_seed_and_limits():
    from qdgap.core.analysis.ranking import redraw_agreement, simulate_redraws

    x = _noisy_ensembles(0, noise=2.0)[0]
    a, b = simulate_redraws(x, draws=101, seed=3), simulate_redraws(x, draws=101, seed=3)
    assert a.shape == (101, 67)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, simulate_redraws(x, draws=101, seed=4))
    # Without training noise every re-drawn ensemble is this one: the whole top 10 is shared.
    same = np.repeat(x[:1], 5, axis=0)
    np.testing.assert_allclose(simulate_redraws(same, draws=10), np.repeat(x[:1], 10, axis=0))
    assert redraw_agreement(simulate_redraws(same, draws=10), ks=(10,)).overlap[10] == 1.0
    with pytest.raises(QdgapError, match="at least 2 members"):
        simulate_redraws(x[:1])
