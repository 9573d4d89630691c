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


def _accuracy() -> cmp.Accuracy:
    rng = np.random.default_rng(0)
    true = 1.7 + rng.normal(0, 0.1, 50)
    return cmp.accuracy(true, true[None] + rng.normal(0, 0.01, (4, 50)))


def test_render_states_the_study_protocol_known_and_assumed():
    text = cmp.render(
        unseen=_accuracy(), own_test=(np.ones(4), np.ones(4)), rankings={}, finetune_rows=[], finetune_test=None,
        setup={"FNA frames": "every 10th unseen frame", "graph": "the 12 nearest neighbours"},
    )  # fmt: skip
    assert "## The study's FNA protocol" in text
    assert "bond vectors `r` to zero" in text and "assumed: angles were never zeroed" in text
    assert "unknown: which frames the folder held is not published" in text
    assert "| frames |" in text and "every 10th unseen frame |" in text and "the 12 nearest neighbours |" in text
    assert "no unmasked baseline subtracted" in text


def test_render_ranks_by_masked_rmse_and_marks_atoms_that_stand_out():
    rng = np.random.default_rng(1)
    n = len(LABELS)
    masked_mean = _score_for(list(cmp.PUBLISHED_TOP23))  # the study's statistic orders the table
    members = masked_mean + rng.normal(0, 0.5, size=(6, n))
    importance = rng.uniform(1.0, 2.0, n)
    importance[LABELS.index("Se5")] = 9.0  # ranks lower by masked RMSE, but is the one that stands out
    stands_out = np.zeros(n, bool)
    stands_out[LABELS.index("Se5")] = True
    stats = {
        "importance_mean_mev": importance,
        "importance_ci_mev": np.stack([importance - 0.5, importance + 0.5], 1),
        "nonzero": np.ones(n, bool),
        "stands_out": stands_out,
        "rank_ci": np.tile([1, 3], (n, 1)),
    }
    comparison = cmp.compare_ranking(LABELS, masked_mean, member_scores=members)
    text = cmp.render(
        unseen=_accuracy(), own_test=(np.ones(4), np.ones(4)),
        rankings={"seed": (comparison, masked_mean, LABELS, stats)}, finetune_rows=[], finetune_test=None, setup={},
    )  # fmt: skip
    rows = [line for line in text.splitlines() if line.startswith("| 3 | Se5 |")]
    assert len(rows) == 1 and rows[0].split(" | ")[3] == "Se5"  # qdgap's third atom by masked RMSE is Se5
    assert "+9.0 (+8.5 to +9.5) * | 1-3 |" in rows[0]
    assert sum(" * |" in line for line in text.splitlines()) == 1
    assert "(1 do: Se5)" in text and f"({n} of {n})" in text
    h = comparison.split_half
    assert h is not None and h.members == 3 and 0.5 < h.rho < h.full_rho < 1.0  # 44 tied atoms ranked by noise
    assert f"Spearman's rho {comparison.split_half.rho:.2f} between the masked-RMSE rankings" in text
