"""Importance statistics (core.importance): paired scores, block bootstrap, p-values, groups.

No training: the statistics are a function of ``masked_ev``, ``baseline_ev`` and the
true gaps, so the tests plant importances in synthetic per-member predictions.
"""

from __future__ import annotations

import numpy as np
import pytest

from qdgap.core.analysis.bootstrap import block_length, block_weights
from qdgap.core.analysis.importance import (
    adjust_p,
    frame_shift_mev,
    group_stats,
    importance_stats,
)
from qdgap.core.analysis.sites import atom_groups, site_classes
from qdgap.core.common.errors import QdgapError
from qdgap.core.common.metrics import rmse_mev, weighted_mae_mev, weighted_rmse_mev

N_BOOT = 500  # enough for the checks, fast on two cores


def _ar1(rng: np.random.Generator, shape: tuple[int, ...], rho: float) -> np.ndarray:
    """Unit-variance AR(1) noise along the last axis (frames): MD frames are correlated."""
    x = rng.normal(size=shape)
    out = np.empty(shape)
    out[..., 0] = x[..., 0]
    for t in range(1, shape[-1]):
        out[..., t] = rho * out[..., t - 1] + np.sqrt(1 - rho**2) * x[..., t]
    return out


def synthetic_fna(
    *, members: int = 20, frames: int = 90, atoms: int = 67, planted: dict[int, float] | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(masked (M, F, N), baseline (M, F), true (F,)) in eV.

    Members differ in quality (10-50 meV errors, the demo's spread). With an atom
    nullified, a member errs as much as unmasked but with other noise (importance
    0), or ``planted[atom]`` times as much (importance > 0).
    """
    rng = np.random.default_rng(seed)
    true = 1.7 + 0.05 * _ar1(rng, (frames,), 0.9)
    quality = rng.uniform(0.01, 0.05, members)
    baseline = true + quality[:, None] * _ar1(rng, (members, frames), 0.7)
    err = _ar1(rng, (members, atoms, frames), 0.7).transpose(0, 2, 1)
    scale = np.ones(atoms)
    for atom, factor in (planted or {}).items():
        scale[atom] = factor
    masked = true[None, :, None] + quality[:, None, None] * scale * err
    return masked.astype(np.float32), baseline.astype(np.float32), true.astype(np.float32)


PLANTED = {3: 2.0, 40: 1.8, 60: 1.9}


@pytest.fixture(scope="module")
def planted_stats():
    masked, baseline, true = synthetic_fna(planted=PLANTED)
    return importance_stats(masked, baseline, true, n_boot=N_BOOT, top_k=len(PLANTED))


def test_importance_planted_atoms_significant_and_first_in_every_bootstrap(planted_stats):
    s = planted_stats
    planted = sorted(PLANTED)
    assert s.significant[planted].all()
    assert (s.ci_mev[planted, 0] > 0).all()
    # top_k = the planted atoms' count: they fill the top in every replicate
    np.testing.assert_array_equal(s.rank_stability[planted], 1.0)
    assert set(np.argsort(-s.mean_mev)[: len(planted)]) == set(planted)
    others = np.setdiff1d(np.arange(len(s.mean_mev)), planted)
    assert s.significant[others].mean() < 0.05
    assert s.p_value.shape == s.p_adjusted.shape == s.rank_stability.shape == (67,)
    assert np.all(s.p_adjusted >= s.p_value)


def test_importance_paired_score_is_masked_minus_unmasked_rmse(planted_stats):
    masked, baseline, true = synthetic_fna(planted=PLANTED)
    base = rmse_mev(baseline.astype(np.float64) - true, axis=1)
    masked_rmse = rmse_mev(masked.astype(np.float64) - true[None, :, None], axis=1)
    np.testing.assert_allclose(planted_stats.per_member_mev, masked_rmse - base[:, None], rtol=1e-10)
    np.testing.assert_allclose(planted_stats.mean_mev, (masked_rmse - base[:, None]).mean(0), rtol=1e-10)


@pytest.mark.parametrize("correction", ["holm", "bh"])
def test_importance_nothing_significant_without_a_planted_effect(correction):
    masked, baseline, true = synthetic_fna(seed=3)
    for score in ("rmse", "shift"):
        s = importance_stats(masked, baseline, true, score=score, n_boot=N_BOOT, correction=correction)
        if score == "rmse":
            assert not s.significant.any(), s.p_adjusted.min()


def test_importance_shift_planted_atoms_beat_the_ensemble_spread():
    """No labels: masking a planted atom moves the prediction further than the members disagree."""
    rng = np.random.default_rng(5)
    m, f, n = 12, 80, 30
    _, baseline, _ = synthetic_fna(members=m, frames=f, atoms=n, seed=5)
    spread = np.abs(baseline - baseline.mean(0)).mean() * 1000  # meV
    moves = np.full(n, 0.2 * spread / 1000)
    moves[[2, 17]] = 4.0 * spread / 1000
    masked = baseline[:, :, None] + moves * rng.choice([-1.0, 1.0], size=(m, f, n)) * rng.uniform(0.5, 1.5, (m, f, n))
    s = importance_stats(masked, baseline, None, score="shift", n_boot=N_BOOT, top_k=2)
    assert s.score == "shift" and s.null_mev == pytest.approx(spread, rel=0.05)
    assert set(np.flatnonzero(s.significant)) == {2, 17}
    np.testing.assert_array_equal(s.rank_stability[[2, 17]], 1.0)
    np.testing.assert_allclose(s.mean_mev, np.abs(masked - baseline[:, :, None]).mean((0, 1)) * 1000, rtol=1e-5)
    # no atom moved beyond the spread: none significant
    quiet = baseline[:, :, None] + 0.2 * spread / 1000 * rng.choice([-1.0, 1.0], size=(m, f, n))
    assert not importance_stats(quiet, baseline, None, score="shift", n_boot=N_BOOT).significant.any()


def positive_fna(
    *, members: int = 20, frames: int = 90, atoms: int = 67, planted: dict[int, float] | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(masked (M, F, N), baseline (M, F), true (F,)) in eV, where nullifying any atom makes every member worse.

    A masked prediction is the member's unmasked one plus further noise: half the member's own error for an
    ordinary atom (importance about 0.12 x the member's RMSE, all positive), ``planted[atom]`` times it for a
    planted one. Every atom passes the test against 0; only the planted ones matter more than the rest.
    """
    rng = np.random.default_rng(seed)
    true = 1.7 + 0.05 * _ar1(rng, (frames,), 0.9)
    quality = rng.uniform(0.01, 0.05, members)
    baseline = true + quality[:, None] * _ar1(rng, (members, frames), 0.7)
    scale = np.full(atoms, 0.5)
    for atom, factor in (planted or {}).items():
        scale[atom] = factor
    extra = _ar1(rng, (members, atoms, frames), 0.7).transpose(0, 2, 1)
    masked = baseline[:, :, None] + quality[:, None, None] * scale * extra
    return masked.astype(np.float32), baseline.astype(np.float32), true.astype(np.float32)


STANDOUT_PLANTED = {3: 1.5, 40: 1.3}  # ranks 1 and 2
STANDOUT_SETS = 20  # seeded replicate data sets
STANDOUT_BOOT = 200


def test_importance_planted_atoms_stand_out_from_all_positive_importances():
    planted = sorted(STANDOUT_PLANTED)
    others = np.setdiff1d(np.arange(67), planted)
    both_out, others_out, nonzero, rank_hit = [], [], [], []
    for seed in range(STANDOUT_SETS):
        masked, baseline, true = positive_fna(planted=STANDOUT_PLANTED, seed=seed)
        s = importance_stats(masked, baseline, true, n_boot=STANDOUT_BOOT, seed=seed)
        both_out.append(s.stands_out[planted].all())
        others_out.append(s.stands_out[others].mean())
        nonzero.append(s.significant.mean())
        # rank intervals contain the planted ranks (3 first, 40 second by construction)
        rank_hit.append(s.rank_ci[3, 0] <= 1 <= s.rank_ci[3, 1] and s.rank_ci[40, 0] <= 2 <= s.rank_ci[40, 1])
        np.testing.assert_allclose(s.excess_mev, s.mean_mev - np.median(s.mean_mev), rtol=1e-12)
        assert np.all(s.excess_p_adjusted >= s.excess_p_value)
        assert np.all(s.rank_ci[:, 0] <= s.rank) and np.all(s.rank <= s.rank_ci[:, 1])
    assert np.mean(both_out) >= 0.95, both_out
    assert np.mean(others_out) <= 0.05, others_out
    assert np.all(rank_hit), rank_hit
    # the test against 0 cannot tell them apart: most atoms pass it
    assert np.mean(nonzero) > 0.5, nonzero


def test_importance_no_atom_stands_out_without_a_planted_one():
    """All importances positive and equal in expectation: the family-wise error stays at alpha (5 %)."""
    any_out = []
    for seed in range(STANDOUT_SETS):
        masked, baseline, true = positive_fna(seed=100 + seed)
        s = importance_stats(masked, baseline, true, n_boot=STANDOUT_BOOT, seed=seed)
        any_out.append(bool(s.stands_out.any()))
        assert s.mean_mev.min() > -5.0 and np.median(s.mean_mev) > 0  # importances positive, as on real data
    assert np.mean(any_out) <= 0.05, any_out


def test_rank_interval_of_fixed_replicates():
    from qdgap.core.analysis.ranking import rank_interval, ranks_of

    reps = np.array([[3.0, 2.0, 1.0], [2.0, 3.0, 1.0], [3.0, 1.0, 2.0], [3.0, 2.0, 1.0]])
    np.testing.assert_array_equal(ranks_of(reps), [[1, 2, 3], [2, 1, 3], [1, 3, 2], [1, 2, 3]])
    np.testing.assert_array_equal(rank_interval(reps, 0.95), [[1, 2], [1, 3], [2, 3]])
    np.testing.assert_array_equal(rank_interval(reps, 0.0), [[1, 1], [2, 2], [3, 3]])


def test_importance_two_identical_ensembles_give_the_interval_of_one():
    masked, baseline, true = synthetic_fna(members=8, frames=50, atoms=20, planted={4: 2.0})
    seeds = np.arange(8) + 100
    one = importance_stats(masked, baseline, true, seeds=seeds, n_boot=N_BOOT, seed=1)
    two = importance_stats(
        np.concatenate([masked, masked]),
        np.concatenate([baseline, baseline]),
        true,
        seeds=np.concatenate([seeds, seeds]),
        n_boot=N_BOOT,
        seed=1,
    )
    assert two.n_members == one.n_members == 8
    np.testing.assert_allclose(two.mean_mev, one.mean_mev, rtol=1e-12)
    np.testing.assert_allclose(two.ci_mev, one.ci_mev, rtol=1e-10)
    np.testing.assert_allclose(two.p_value, one.p_value, rtol=1e-9)
    np.testing.assert_array_equal(two.rank_stability, one.rank_stability)
    groups = atom_groups([f"Cd{i}" for i in range(10)] + [f"Se{i}" for i in range(10)])
    np.testing.assert_allclose(group_stats(two, groups).sum_ci_mev, group_stats(one, groups).sum_ci_mev, rtol=1e-10)


def test_importance_bootstrap_is_seeded_and_reproducible():
    masked, baseline, true = synthetic_fna(members=6, frames=40, atoms=15, planted={1: 1.5})
    a = importance_stats(masked, baseline, true, n_boot=N_BOOT, seed=7)
    b = importance_stats(masked, baseline, true, n_boot=N_BOOT, seed=7)
    c = importance_stats(masked, baseline, true, n_boot=N_BOOT, seed=8)
    np.testing.assert_array_equal(a.replicates_mev, b.replicates_mev)
    np.testing.assert_array_equal(a.ci_mev, b.ci_mev)
    np.testing.assert_array_equal(a.p_value, b.p_value)
    assert not np.array_equal(a.replicates_mev, c.replicates_mev)
    np.testing.assert_array_equal(a.mean_mev, c.mean_mev)  # the estimate does not depend on the draws


def test_importance_rmse_needs_labels_and_rejects_bad_options():
    masked, baseline, _ = synthetic_fna(members=3, frames=10, atoms=5)
    with pytest.raises(QdgapError, match="none of the chosen frames has a true gap"):
        importance_stats(masked, baseline, np.full(10, np.nan), score="rmse")
    for kwargs, message in [
        ({"score": "l1"}, "--score must be one of"),
        ({"correction": "bonferroni"}, "--correction must be one of"),
        ({"n_boot": 5}, "--bootstrap must be at least"),
        ({"top_k": 0}, "--top-k must be at least 1"),
    ]:
        with pytest.raises(QdgapError, match=message):
            importance_stats(masked, baseline, None, **{"score": "shift", **kwargs})


def test_importance_unlabelled_frames_are_left_out_of_rmse():
    masked, baseline, true = synthetic_fna(members=4, frames=30, atoms=6)
    partial = true.copy()
    partial[::3] = np.nan
    s = importance_stats(masked, baseline, partial, n_boot=N_BOOT)
    known = np.isfinite(partial)
    ref = importance_stats(masked[:, known], baseline[:, known], true[known], n_boot=N_BOOT)
    assert s.n_frames == known.sum()
    np.testing.assert_allclose(s.mean_mev, ref.mean_mev)


def test_block_length_follows_the_autocorrelation():
    rng = np.random.default_rng(0)
    assert block_length(rng.normal(size=400)) <= 3
    slow = block_length(_ar1(rng, (400,), 0.9))
    fast = block_length(_ar1(rng, (400,), 0.5))
    assert slow > fast and 5 <= slow <= 60
    assert block_length(np.ones(50)) == 1 and block_length(np.arange(2.0)) == 1


def test_block_weights_draw_whole_blocks_of_consecutive_frames():
    w = block_weights(23, 5, 200, np.random.default_rng(0))
    assert w.shape == (200, 23)
    np.testing.assert_array_equal(w.sum(1), 23)
    w1 = block_weights(23, 1, 2000, np.random.default_rng(0))
    assert abs(w1.mean() - 1.0) < 0.05  # uniform over frames


def test_adjust_p_holm_and_bh_known_values():
    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan])
    np.testing.assert_allclose(adjust_p(p, "holm")[:4], [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(adjust_p(p, "bh")[:4], [0.02, 0.04, 0.04, 0.02])
    assert np.isnan(adjust_p(p, "holm")[4])


def test_weighted_metrics_with_unit_weights_are_the_plain_ones():
    err = np.random.default_rng(0).normal(0, 0.02, (3, 11, 4))
    np.testing.assert_allclose(weighted_rmse_mev(err, np.ones((1, 11)))[0], rmse_mev(err, axis=1), rtol=1e-12)
    np.testing.assert_allclose(weighted_mae_mev(err, np.ones((1, 11)))[0], np.abs(err).mean(1) * 1000, rtol=1e-12)
    w = np.zeros((1, 11))
    w[0, [2, 5]] = [2, 1]  # frame 2 drawn twice, frame 5 once
    np.testing.assert_allclose(weighted_rmse_mev(err, w)[0], rmse_mev(err[:, [2, 2, 5]], axis=1), rtol=1e-12)


def test_group_stats_mean_and_sum_over_species_and_sites(planted_stats):
    labels = [f"Cd{i}" for i in range(1, 29)] + [f"Se{i}" for i in range(1, 18)] + [f"Cl{i}" for i in range(1, 23)]
    sites = ["Cd core"] * 10 + ["Cd surface"] * 18 + ["Se core"] * 12 + ["Se surface"] * 5 + ["Cl bridging"] * 22
    groups = atom_groups(labels, sites)
    assert list(groups)[:3] == ["Cd", "Se", "Cl"] and "Cl terminal" not in groups
    g = group_stats(planted_stats, groups)
    i = g.label.index("Se")
    np.testing.assert_allclose(g.mean_mev[i], planted_stats.mean_mev[28:45].mean())
    np.testing.assert_allclose(g.sum_mev, g.mean_mev * g.n_atoms)
    assert (g.ci_mev[:, 0] <= g.mean_mev).all() and (g.mean_mev <= g.ci_mev[:, 1]).all()


def test_site_classes_on_the_demo_dot():
    from qdgap.cli.options import DEMO_DATA
    from qdgap.core.common.labels import atom_labels
    from qdgap.core.data.trajectory import read_trajectory

    traj = read_trajectory(DEMO_DATA)
    sites = dict(zip(atom_labels(traj.numbers), site_classes(traj.numbers, traj.positions_ang[::100]), strict=True))
    assert sites["Se1"] == "Se core" and sites["Se2"] == "Se core" and sites["Se14"] == "Se surface"
    assert sites["Cd1"] == "Cd core" and sites["Cd17"] == "Cd surface"
    assert sites["Cl1"] == "Cl bridging" and sites["Cl13"] == "Cl terminal"


def test_site_classes_terminal_and_bridging_chloride():
    # Cd-Cl-Cd bridge and one Cl on one Cd, far apart
    numbers = np.array([48, 17, 48, 48, 17])
    pos = np.array([[0, 0, 0], [2.5, 0, 0], [5.0, 0, 0], [20, 0, 0], [22.5, 0, 0]], dtype=float)
    assert site_classes(numbers, pos) == ["Cd surface", "Cl bridging", "Cd surface", "Cd surface", "Cl terminal"]


def test_frame_shift_is_the_ensemble_mean_absolute_shift():
    masked, baseline, _ = synthetic_fna(members=3, frames=7, atoms=4)
    out = frame_shift_mev(masked, baseline)
    assert out.shape == (7, 4)
    np.testing.assert_allclose(out, np.abs(masked - baseline[:, :, None]).mean(0) * 1000, rtol=1e-6)


def test_split_half_reliability_on_fixed_members():
    from qdgap.core.analysis.ranking import split_half_reliability

    a = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    b = np.array([4.0, 5.0, 3.0, 1.0, 2.0])  # rho(a, b) = 1 - 6 * 4 / (5 * 24) = 0.8
    two = split_half_reliability(np.stack([a, b]), splits=10)
    assert two.members == 1 and two.rho == pytest.approx(0.8) and two.full_rho == pytest.approx(1.6 / 1.8)
    np.testing.assert_allclose(two.rho_splits, 0.8)
    # odd M: each split leaves one member out; identical members agree perfectly
    same = split_half_reliability(np.stack([a, a, a]), splits=5)
    assert same.members == 1 and same.rho == pytest.approx(1.0) and same.full_rho == pytest.approx(1.0)
    # four members, two copies each of a and b: a split pairs (a, a | b, b) or mixes them (a, b | a, b)
    four = split_half_reliability(np.stack([a, a, b, b]), splits=300, seed=2)
    assert set(np.round(four.rho_splits, 6)) == {0.8, 1.0}
    with pytest.raises(QdgapError, match="at least 2 members"):
        split_half_reliability(a[None])
