"""FNA's statistics on the original study's real DFT trajectory (slow: trains two demo members on it).

The study published Se2 and Se1 as its two most important atoms. Two demo-preset
members trained on the real 800-frame training sets must find them significant
with the true labels; with the labels permuted across frames (so no atom can
carry information about them) no atom may be significant.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_fna(tmp_path_factory, seed_data):
    from qdgap.core.analysis.fna import run_fna
    from qdgap.core.analysis.predict import select_frames
    from qdgap.core.config import PRESETS
    from qdgap.core.data.importers import import_trajectory
    from qdgap.core.data.trajectory import write_trajectory
    from qdgap.core.store import runs as rf
    from qdgap.core.workflow.ensemble import train_local

    root = tmp_path_factory.mktemp("real")
    cl = seed_data / "cl_qd"
    traj = import_trajectory(
        [cl / "structures_15001.tar.xz"], gaps_csv=cl / "Cl_QD_elec_1-10k.csv", numbers_range=(1, 10001)
    )
    write_trajectory(traj, root / "cl_qd.h5")
    outcomes = train_local(root / "cl_qd.h5", PRESETS["demo"], seeds=[0, 1], runs=root / "runs", jobs=2, device="cpu")
    assert all(o.outcome == "trained" for o in outcomes), outcomes
    from qdgap.core.data.trajectory import read_trajectory

    traj = read_trajectory(root / "cl_qd.h5")
    members = rf.load_members(root / "runs")
    frames = select_frames(members, traj, "unseen")
    frames = frames[np.isfinite(traj.gap_ev[frames])][::10]  # 400 labelled unseen frames, 20 fs apart
    return run_fna(members, traj, frames, mode="seed", cache_dir=root / "runs" / rf.CACHE_DIR)


def test_fna_real_true_labels_find_se2_and_se1(real_fna):
    from qdgap.core.analysis.importance import importance_stats

    stats = importance_stats(real_fna.masked_ev, real_fna.baseline_ev, real_fna.gap_true_ev, seeds=real_fna.seeds)
    significant = {a for a, s in zip(real_fna.atom_label, stats.significant, strict=True) if s}
    assert {"Se2", "Se1"} <= significant, sorted(significant)


def test_fna_real_permuted_labels_find_nothing(real_fna):
    from qdgap.core.analysis.importance import importance_stats

    permuted = np.random.default_rng(0).permutation(real_fna.gap_true_ev)
    stats = importance_stats(real_fna.masked_ev, real_fna.baseline_ev, permuted, seeds=real_fna.seeds)
    assert not stats.significant.any(), [a for a, s in zip(real_fna.atom_label, stats.significant, strict=True) if s]
