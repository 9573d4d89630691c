"""The whole ensemble in one forward (kernels.ensemble, core.ensemble_forward) against member by member."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from qdgap.core.config import PRESETS, GraphConfig
from qdgap.core.deploy.stacked import load_stacked, stack_models, stack_reason, use_stacked
from qdgap.core.graphs.build import build_graphs
from qdgap.core.model.network import GapModel
from qdgap.kernels.batch import gather_frames
from qdgap.kernels.ensemble import StackedGapModel, ensemble_fna_masked_gaps, ensemble_predict
from qdgap.kernels.fna import MODES, fna_masked_gaps

TOL_EV = 1e-5  # float32 rounding
# Two blocks of each kind, so the stacked layers are chained as the paper model's are.
DEEP_TINY = replace(PRESETS["tiny"].model, alignn_layers=2, gcn_layers=2)


def _members(count=3, config=DEEP_TINY):
    out = []
    for seed in range(count):
        torch.manual_seed(seed)
        model = GapModel(config)
        with torch.no_grad():  # off the symmetric initial weights, so members and frames differ
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        model.set_target_stats(1.7 + 0.01 * seed, 0.1 + 0.02 * seed)
        out.append(model.eval())
    return out


@pytest.fixture(scope="module")
def packed(synthetic_traj):
    return build_graphs(synthetic_traj, GraphConfig())


def test_ensemble_forward_predict_matches_members(packed):
    members = _members()
    batch = gather_frames(packed, torch.tensor([0, 5, 17, 63]))
    stacked = stack_models(members)
    got = ensemble_predict(stacked, batch)
    with torch.inference_mode():
        want = torch.stack([m(*batch) for m in members])
    assert got.shape == (3, 4)
    torch.testing.assert_close(got, want, rtol=0, atol=TOL_EV)
    assert (want[0] - want[1]).abs().min() > 1e-4  # the members really differ


@pytest.mark.parametrize("mode", MODES)
def test_ensemble_forward_fna_matches_members_kernel(packed, synthetic_traj, mode):
    members = _members()
    n = synthetic_traj.num_atoms
    base = gather_frames(packed, torch.tensor([3, 40, 99]))
    got = ensemble_fna_masked_gaps(stack_models(members), base, num_atoms=n, mode=mode, chunk_size=7)
    want = torch.stack([fna_masked_gaps(m, base, num_atoms=n, mode=mode, chunk_size=11) for m in members])
    assert got.shape == (3, 3, n + 1)
    torch.testing.assert_close(got, want, rtol=0, atol=TOL_EV)
    assert (got[:, :, 1:] - got[:, :, :1]).abs().min() > 0  # the masks are not no-ops


def test_ensemble_forward_progress_counts_member_evaluations(packed, synthetic_traj):
    seen = []
    n = synthetic_traj.num_atoms
    base = gather_frames(packed, torch.tensor([1, 2]))
    ensemble_fna_masked_gaps(stack_models(_members(2)), base, num_atoms=n, chunk_size=5, progress=seen.append)
    assert sum(seen) == 2 * 2 * (n + 1)


def test_ensemble_forward_refuses_members_of_other_sizes():
    small, wide = _members(1)[0], GapModel(replace(DEEP_TINY, hidden_features=8))
    with pytest.raises(ValueError, match="other parameters or shapes"):
        stack_models([small, wide])
    with pytest.raises(ValueError, match="no members"):
        StackedGapModel.from_states([], alignn_layers=1, gcn_layers=1, bond_gamma=1.0, angle_gamma=1.0)


def test_ensemble_forward_default_is_member_by_member_on_cpu(tiny_runs):
    from qdgap.core.store.runs import load_members

    members = load_members(tiny_runs)
    assert stack_reason(members) is None
    assert not use_stacked("cpu", members)
    other = replace(
        members[1], config=replace(members[1].config, model=replace(members[1].config.model, hidden_features=8))
    )
    assert "model sizes" in stack_reason([members[0], other])
    assert not use_stacked("cuda", [members[0], other])


def test_ensemble_forward_predict_and_fna_match_exported_members(tiny_runs, synthetic_traj):
    """``predict_ensemble``/``run_fna`` with ``stacked=True`` (best.pt weights) equal the member-by-member
    runs of the exported model.ts files."""
    from qdgap.core.analysis.fna import run_fna
    from qdgap.core.analysis.predict import predict_ensemble, runs_cache_dir
    from qdgap.core.store.runs import load_members

    members = load_members(tiny_runs)
    cache = runs_cache_dir(tiny_runs)
    frames = np.array([0, 7, 33, 101])
    one_by_one = predict_ensemble(members, synthetic_traj, frames, cache_dir=cache, stacked=False)
    at_once = predict_ensemble(members, synthetic_traj, frames, cache_dir=cache, stacked=True)
    np.testing.assert_allclose(at_once.gap_pred_ev, one_by_one.gap_pred_ev, rtol=0, atol=TOL_EV)
    fna_frames = frames[:2]
    ref = run_fna(members, synthetic_traj, fna_frames, cache_dir=cache, stacked=False)
    got = run_fna(members, synthetic_traj, fna_frames, cache_dir=cache, stacked=True, chunk=9)
    np.testing.assert_allclose(got.baseline_ev, ref.baseline_ev, rtol=0, atol=TOL_EV)
    np.testing.assert_allclose(got.masked_ev, ref.masked_ev, rtol=0, atol=TOL_EV)
    stacked = load_stacked(members)
    assert stacked.num_members == len(members)
