"""The Cd28Se17Cl22 cluster (core.qd): construction without tblite, relaxation (slow) with it."""

from __future__ import annotations

import numpy as np
import pytest

from qdgap.core.common.labels import formula
from qdgap.core.sim import qd


@pytest.fixture(scope="module")
def cluster():
    return qd.build_cluster()


def test_build_cluster_counts_and_order(cluster):
    numbers, positions = cluster
    assert positions.shape == (67, 3)
    assert formula(numbers) == "Cd28Se17Cl22"
    # Cd, then Se, then Cl, as in the study's POSCAR files.
    assert numbers.tolist() == [qd.CD] * 28 + [qd.SE] * 17 + [qd.CL] * 22


def test_build_cluster_is_charge_neutral(cluster):
    assert qd.total_formal_charge(cluster[0]) == 0


def test_build_cluster_no_close_contacts(cluster):
    assert qd.min_distances(cluster[1]) > 2.0


def test_build_cluster_every_cd_bonded(cluster):
    numbers, positions = cluster
    coord = qd.coordination_numbers(numbers, positions)
    assert (coord[numbers == qd.CD] >= 3).all()  # no Cd left with more than one dangling bond
    assert (coord[numbers != qd.CD] >= 1).all()  # every Se and Cl sits on a Cd
    stats = qd.bond_stats(numbers, positions)
    assert stats.cdse_mean_ang == pytest.approx(qd.ZINCBLENDE_CDSE_A_ANG * np.sqrt(3) / 4)


def test_build_cluster_central_se_and_deterministic(cluster):
    numbers, positions = cluster
    se = positions[numbers == qd.SE]
    assert np.linalg.norm(se, axis=1).min() == 0.0  # the central Se sits at the origin
    again = qd.build_cluster()
    np.testing.assert_array_equal(again[1], positions)


def test_chloride_sites_prefer_bridges():
    se, cd = qd.core_sites()
    cl = qd.chloride_sites(se, cd)
    assert len({tuple(c) for c in cl.tolist()}) == 22
    assert not ({tuple(c) for c in cl.tolist()} & {tuple(s) for s in se.tolist()})
    numbers, positions = qd.build_cluster()
    cl_coord = qd.coordination_numbers(numbers, positions)[numbers == qd.CL]
    assert (cl_coord == 2).sum() == 14  # every bridging site the core offers is used


def test_coordination_is_vectorised_over_frames(cluster):
    numbers, positions = cluster
    frames = np.stack([positions, positions * 1.5])
    coord = qd.coordination_numbers(numbers, frames)
    assert coord.shape == (2, 67)
    np.testing.assert_array_equal(coord[0], qd.coordination_numbers(numbers, positions))
    assert coord[1].sum() == 0  # stretched by 1.5: every bond (2.62 Å -> 3.93 Å) broken
    np.testing.assert_allclose(qd.min_distances(frames), [2.6197, 3.9296], atol=1e-3)


def test_check_method_rejects_unknown():
    from qdgap.core.common.errors import QdgapError

    with pytest.raises(QdgapError, match="--method 'PM6'"):
        qd.check_method("PM6")


@pytest.mark.slow
def test_relax_cluster_converges(cluster):
    pytest.importorskip("tblite")
    numbers, positions = cluster
    relaxed = qd.relax_cluster(numbers, positions, method="GFN1-xTB")
    assert relaxed.max_force_ev_ang < qd.FMAX_EV_ANG
    coord = qd.coordination_numbers(numbers, relaxed.positions_ang)
    assert (coord[numbers == qd.CD] >= 3).all()
    assert qd.min_distances(relaxed.positions_ang) > 2.2
