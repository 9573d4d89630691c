"""The batched FNA kernel (kernels.fna) and the ensemble driver (core.fna)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from qdgap.core.config import PRESETS, GraphConfig
from qdgap.core.graphs.build import build_graphs
from qdgap.core.model.network import GapModel
from qdgap.kernels.batch import gather_frames
from qdgap.kernels.fna import MODES, NO_ATOM, fna_loop, fna_masked_gaps, tile_masked


def _randomised(preset="demo", dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    model = GapModel(PRESETS[preset].model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.set_target_stats(1.73, 0.11)
    return model.to(dtype).eval()


@pytest.fixture(scope="module")
def packed(synthetic_traj):
    return build_graphs(synthetic_traj, GraphConfig())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_fna_kernel_matches_loop(packed, synthetic_traj, mode, dtype, tol):
    """Every atom of several random frames: batched kernel == one masked forward per atom."""
    model = _randomised(dtype=dtype)
    frames = torch.tensor(np.random.default_rng(1).choice(synthetic_traj.num_frames, 4, replace=False))
    base = gather_frames(packed, frames)
    if dtype == torch.float64:
        base = base._replace(bond_len=base.bond_len.double(), angle_cos=base.angle_cos.double())
    n = synthetic_traj.num_atoms
    kernel = fna_masked_gaps(model, base, num_atoms=n, mode=mode, chunk_size=7).double()
    for b, f in enumerate(frames.tolist()):
        one = gather_frames(packed, torch.tensor([f]))
        if dtype == torch.float64:
            one = one._replace(bond_len=one.bond_len.double(), angle_cos=one.angle_cos.double())
        loop = fna_loop(model, one, num_atoms=n, mode=mode).double()
        torch.testing.assert_close(kernel[b], loop, rtol=0, atol=tol)
    # Nullifying an atom changes the prediction: the masks are not no-ops.
    assert (kernel[:, 1:] - kernel[:, :1]).abs().min() > 0


@pytest.mark.parametrize("mode", MODES)
def test_fna_shared_embedding_path_equals_plain_forward_path(packed, mode):
    """The kernel embeds each frame once and tiles its rows (models with ``embed``/``propagate``); a model
    that offers only the plain forward (ONNX Runtime) takes the masked-input path. Both give the same gaps."""
    model = _randomised()

    class PlainForwardOnly:
        def __call__(self, *args):
            return model(*args)

    base = gather_frames(packed, torch.tensor([2, 40]))
    shared = fna_masked_gaps(model, base, num_atoms=17, mode=mode, chunk_size=9)
    plain = fna_masked_gaps(PlainForwardOnly(), base, num_atoms=17, mode=mode, chunk_size=9)
    torch.testing.assert_close(shared, plain, rtol=0, atol=1e-6)
    assert (shared[:, 1:] - shared[:, :1]).abs().min() > 0


def test_embed_then_propagate_is_the_forward(packed):
    model = _randomised()
    b = gather_frames(packed, torch.tensor([0, 7]))
    scripted = torch.jit.script(model)
    with torch.no_grad():
        x, y, a = scripted.embed(b.z, b.bond_len, b.angle_cos, None, None, None)
        split = scripted.propagate(x, y, a, b.edge_src, b.edge_dst, b.lg_src, b.lg_dst, b.node_graph, b.num_graphs)
        torch.testing.assert_close(split, model(*b), rtol=0, atol=1e-6)


def test_fna_unmasked_copy_equals_plain_forward(packed):
    model = _randomised()
    base = gather_frames(packed, torch.tensor([3, 30, 60]))
    with torch.no_grad():
        plain = model(*base)
    out = fna_masked_gaps(model, base, num_atoms=17, chunk_size=10)
    torch.testing.assert_close(out[:, 0], plain, rtol=0, atol=1e-6)


def test_fna_chunking_does_not_change_results(packed):
    model = _randomised()
    base = gather_frames(packed, torch.arange(5))
    whole = fna_masked_gaps(model, base, num_atoms=17, chunk_size=5 * 18)
    for chunk in (1, 4, 18, 31):
        torch.testing.assert_close(
            fna_masked_gaps(model, base, num_atoms=17, chunk_size=chunk), whole, rtol=0, atol=1e-6
        )


def test_tile_masked_masks_the_right_atom_bonds_and_angles(packed):
    base = gather_frames(packed, torch.tensor([0, 1]))
    copies = tile_masked(base, torch.tensor([1, 0, 1]), torch.tensor([NO_ATOM, 5, 16]), 17, "full")
    b = copies.batch
    assert b.num_graphs == 3 and b.z.numel() == 51
    assert copies.node_mask.sum() == 51 - 2 and copies.node_mask[17 + 5] == 0 and copies.node_mask[34 + 16] == 0
    masked_bonds = copies.edge_mask == 0
    touches = (b.edge_src == 22) | (b.edge_dst == 22) | (b.edge_src == 50) | (b.edge_dst == 50)
    assert torch.equal(masked_bonds, touches)
    masked_angles = copies.angle_mask == 0
    assert torch.equal(masked_angles, masked_bonds[b.lg_src] | masked_bonds[b.lg_dst])
    seed_mode = tile_masked(base, torch.tensor([0]), torch.tensor([5]), 17, "seed")
    assert seed_mode.edge_mask is None and seed_mode.angle_mask is None
    zero = seed_mode.batch.bond_len == 0
    assert torch.equal(zero, (seed_mode.batch.edge_src == 5) | (seed_mode.batch.edge_dst == 5))


def test_fna_ranks_the_atoms_the_label_depends_on(tmp_path):
    """Two dopants (Te for Se) set the label through their bonds: every atom not bonded to one ranks below both."""
    from qdgap.core.data.splits import split_frames
    from qdgap.core.deploy.checkpoint import load_weights
    from qdgap.core.train.loop import train_member
    from qdgap.testing.synthetic import small_cdse_cluster, synthetic_trajectory

    numbers, pos = small_cdse_cluster()
    important = [6, 13]
    numbers = numbers.copy()
    numbers[important] = 52
    traj = synthetic_trajectory(150, seed=1, base=(numbers, pos), important=important, correlation_fs=1.0)
    config = replace(
        PRESETS["tiny"], train=replace(PRESETS["tiny"].train, epochs=40, patience=40, stride=1, learning_rate=1e-2)
    )
    train_member(traj, config, seed=0, run_dir=tmp_path, device="cpu")
    model = GapModel(config.model)
    model.load_state_dict(load_weights(tmp_path / "best.pt"))
    model.eval()
    test = split_frames(traj.gap_ev, seed=0, stride=1).test
    out = fna_masked_gaps(model, gather_frames(build_graphs(traj, config.graph), torch.tensor(test)), num_atoms=17)
    rmse = (out - torch.tensor(traj.gap_ev[test])[:, None]).double().pow(2).mean(0).sqrt()[1:]
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    bonded = (d[important] <= 1.2 * d.min()).any(axis=0)
    unrelated = [a for a in range(17) if a not in important and not bonded[a]]
    assert rmse[important].min() > rmse[unrelated].max(), (rmse[important], rmse[unrelated].max())


def test_fna_result_tables_agree(tiny_runs, synthetic_h5, tmp_path):
    """fna.h5 and average_rmse_results.csv tell the same story, and RMSEs are what they claim."""
    import csv

    from qdgap.core.analysis.fna import run_fna, write_fna
    from qdgap.core.common import schema
    from qdgap.core.data.trajectory import read_trajectory
    from qdgap.core.store.results import read_results
    from qdgap.core.store.runs import load_members

    members = load_members(tiny_runs)
    traj = read_trajectory(synthetic_h5)
    frames = np.arange(0, traj.num_frames, 15)
    result = run_fna(members, traj, frames, cache_dir=tmp_path / "cache", partial_dir=tmp_path / "partial")
    write_fna(result, tmp_path / "fna.h5", tmp_path / "fna.csv", attrs={schema.ATTR_INPUT_SHA256: traj.sha256})
    data, attrs = read_results(tmp_path / "fna.h5", fmt=schema.FNA_FORMAT)
    assert data[schema.MASKED_EV].shape == (2, len(frames), 17)
    assert data[schema.BASELINE_EV].shape == (2, len(frames))
    err = data[schema.MASKED_EV].astype(np.float64) - traj.gap_ev[frames][None, :, None]
    np.testing.assert_allclose(data[schema.RMSE_MEV], np.sqrt((err**2).mean(axis=1)) * 1000, rtol=1e-9)
    np.testing.assert_allclose(data[schema.RMSE_MEV_MEAN], data[schema.RMSE_MEV].mean(0), rtol=1e-12)
    np.testing.assert_allclose(data[schema.RMSE_MEV_STD], data[schema.RMSE_MEV].std(0), rtol=1e-12)
    assert attrs[schema.ATTR_INPUT_SHA256] == traj.sha256 and list(attrs[schema.ATTR_SEEDS]) == [0, 1]
    with open(tmp_path / "fna.csv") as fh:
        rows = list(csv.DictReader(fh))
    labels = list(data[schema.ATOM_LABEL])
    assert [int(r["rank"]) for r in rows] == list(range(1, 18))
    means = [float(r["rmse_mev_mean"]) for r in rows]
    assert means == sorted(means, reverse=True)
    for r in rows:
        i = labels.index(r["atom_label"])
        assert float(r["rmse_mev_mean"]) == pytest.approx(data[schema.RMSE_MEV_MEAN][i], abs=1e-5)
        assert float(r["rmse_mev_std"]) == pytest.approx(data[schema.RMSE_MEV_STD][i], abs=1e-5)
        assert float(r["delta_rmse_mev"]) == pytest.approx(
            float(r["rmse_mev_mean"]) - data[schema.BASELINE_RMSE_MEV].mean(), abs=1e-5
        )
    # A rerun finds every member's numbers in the partial folder and recomputes nothing.
    calls = []
    again = run_fna(
        members, traj, frames, cache_dir=tmp_path / "cache", partial_dir=tmp_path / "partial", progress=calls.append
    )
    np.testing.assert_array_equal(again.masked_ev, result.masked_ev)
    assert calls == [len(frames) * 18] * 2
