"""The published-results comparison: ranking overlap, Spearman's rho, accuracy on a frame set."""

from __future__ import annotations

import numpy as np
import pytest

from qdgap.core.analysis import comparison as cmp
from qdgap.core.common.labels import atom_labels

LABELS = atom_labels(np.array([48] * 28 + [34] * 17 + [17] * 22))


def _score_for(order: list[str]) -> np.ndarray:
    """Scores that rank ``order`` first, in that order, and every other atom after them."""
    score = np.zeros(len(LABELS))
    for r, atom in enumerate(order):
        score[LABELS.index(atom)] = 100.0 - r
    return score


def test_compare_ranking_identical_order_is_perfect():
    c = cmp.compare_ranking(LABELS, _score_for(list(cmp.PUBLISHED_TOP23)))
    assert c.overlap == {4: 4, 8: 8, 15: 15}
    assert c.rho == pytest.approx(1.0)
    assert c.rank_of_published == list(range(1, 24))


def test_compare_ranking_reversed_and_disjoint():
    rev = cmp.compare_ranking(LABELS, _score_for(list(reversed(cmp.PUBLISHED_TOP23))))
    assert rev.rho == pytest.approx(-1.0)
    assert rev.overlap[4] == 0
    others = [a for a in LABELS if a not in cmp.PUBLISHED_TOP23]
    disjoint = cmp.compare_ranking(LABELS, _score_for(others))
    assert disjoint.overlap == {4: 0, 8: 0, 15: 0}
    assert all(r > len(others) for r in disjoint.rank_of_published)


def test_compare_ranking_member_interval_widens_with_member_noise():
    rng = np.random.default_rng(0)
    base = _score_for(list(cmp.PUBLISHED_TOP23))
    quiet = base + rng.normal(0, 0.01, size=(10, len(LABELS)))
    noisy = base + rng.normal(0, 8.0, size=(10, len(LABELS)))
    cq = cmp.compare_ranking(LABELS, quiet.mean(axis=0), member_scores=quiet, seed=1)
    cn = cmp.compare_ranking(LABELS, noisy.mean(axis=0), member_scores=noisy, seed=1)
    assert cq.rho_ci == pytest.approx((1.0, 1.0))
    assert cn.rho_ci[0] < cn.rho_ci[1] < 1.0 and cn.rho_ci[1] - cn.rho_ci[0] > 0.01
    assert cn.rho_ci[0] <= cn.rho <= cn.rho_ci[1] + 0.01  # resampled members add noise: the interval sits low
    again = cmp.compare_ranking(LABELS, noisy.mean(axis=0), member_scores=noisy, seed=1)
    assert again.rho_ci == cn.rho_ci


def test_compare_ranking_refuses_other_atoms():
    from qdgap.core.common.errors import QdgapError

    with pytest.raises(QdgapError, match="not in this trajectory"):
        cmp.compare_ranking(["Cd1", "Se1"], np.array([1.0, 2.0]))


def test_accuracy_against_float64_reference():
    rng = np.random.default_rng(3)
    true = 1.7 + rng.normal(0, 0.1, 200)
    true[::7] = np.nan
    pred = true[None, :] + rng.normal(0, 0.01, (4, 200))
    acc = cmp.accuracy(true, pred.astype(np.float32))
    ok = np.isfinite(true)
    err = pred[:, ok].astype(np.float32).astype(np.float64) - true[ok]
    assert acc.frames == ok.sum()
    np.testing.assert_allclose(acc.member_rmse_mev, np.sqrt((err**2).mean(axis=1)) * 1000, rtol=1e-9)
    mean_err = pred[:, ok].astype(np.float32).astype(np.float64).mean(axis=0) - true[ok]
    assert acc.ensemble_rmse_mev == pytest.approx(np.sqrt((mean_err**2).mean()) * 1000, rel=1e-9)
    assert acc.ensemble_rmse_mev < acc.member_rmse_mev.min()  # averaging independent errors helps
