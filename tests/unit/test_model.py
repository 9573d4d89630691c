"""The ALIGNN gap model (core.model): upstream parity, TorchScript, batching, invariances."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from alignn.models.alignn_atomwise_pure import ALIGNNAtomWisePure, ALIGNNAtomWisePureConfig
from alignn.torch_graph_builder import batch_torch_graph_pairs, build_pure_torch_graph
from ase.data import chemical_symbols
from jarvis.core.atoms import Atoms as JarvisAtoms

from qdgap.core.config import PRESETS, GraphConfig
from qdgap.core.data.trajectory import make_trajectory
from qdgap.core.deploy.checkpoint import load_weights
from qdgap.core.graphs.build import build_graphs
from qdgap.core.model.network import FOLDED_STATS, UPSTREAM_EXTRA_BUFFERS, GapModel, upstream_state_dict
from qdgap.core.store import runs as rf
from qdgap.kernels.batch import gather_frames

TOL_EV = 1e-5


def _boxed(traj, box=22.0):
    """The synthetic cluster in a cubic box, as the published POSCARs hold it (upstream needs a cell)."""
    pos = traj.positions_ang - traj.positions_ang.mean(axis=(0, 1)) + box / 2
    return make_trajectory(
        traj.numbers, pos, time_fs=traj.time_fs, gap_ev=traj.gap_ev, cell_ang=np.eye(3) * box, pbc=[True] * 3
    )


def _upstream_out(model, traj, frames, params):
    pairs = []
    for f in frames:
        atoms = JarvisAtoms(
            lattice_mat=traj.frame_cells()[f],
            coords=traj.positions_ang[f].astype(np.float64),
            elements=[chemical_symbols[z] for z in traj.numbers],
            cartesian=True,
        )
        pairs.append(
            build_pure_torch_graph(
                atoms,
                two_body_cutoff=params.cutoff_ang,
                three_body_cutoff=params.three_body_cutoff_ang,
                max_neighbors=params.max_neighbors,
                use_matscipy_topology=False,
            )
        )
    g, lg = batch_torch_graph_pairs(pairs)
    with torch.no_grad():
        return model([g, lg, torch.zeros(3, 3)])["out"]


def _randomise(model, seed=0):
    """Perturb every parameter so the test does not pass on symmetric initial weights."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model


def test_model_matches_upstream_paper_size(synthetic_traj):
    """The paper-size model, random weights: qdgap's fused forward equals upstream's forward(g)."""
    config = PRESETS["paper"]
    model = _randomise(GapModel(config.model)).eval()
    model.set_target_stats(1.73, 0.11)
    upstream = ALIGNNAtomWisePure(ALIGNNAtomWisePureConfig(**config.to_json()["model"])).eval()
    upstream.load_state_dict(upstream_state_dict(model), strict=True)
    traj = _boxed(synthetic_traj)
    frames = [0, 9, 50]
    # Upstream's pure_torch graphs (the paper preset's k-nearest ones: tests/unit/test_graphs_knn.py).
    graph = GraphConfig()
    ours = model.predict_batch(gather_frames(build_graphs(traj, graph), torch.tensor(frames))).detach()
    theirs = _upstream_out(upstream, traj, frames, graph)
    assert ours.std() > 10 * TOL_EV  # the frames really differ
    torch.testing.assert_close(ours, theirs, rtol=0, atol=TOL_EV)


def test_best_pt_loads_into_upstream(tiny_runs, synthetic_h5):
    """A run's config.json model section is an upstream config and best.pt its weights: upstream's own
    forward on the file as it lies predicts the gap in eV, as qdgap does."""
    from qdgap.core.data.trajectory import read_trajectory

    run = rf.run_dir(tiny_runs, 0)
    record = json.loads((run / rf.CONFIG_JSON).read_text())
    upstream = ALIGNNAtomWisePure(ALIGNNAtomWisePureConfig(**record["model"])).eval()
    raw = torch.load(run / rf.BEST_PT, weights_only=True)  # as an upstream user loads it
    result = upstream.load_state_dict(raw, strict=False)
    assert result.missing_keys == []
    assert sorted(result.unexpected_keys) == sorted(UPSTREAM_EXTRA_BUFFERS + FOLDED_STATS)
    ours = GapModel(PRESETS["tiny"].model).eval()
    ours.load_state_dict(load_weights(run / rf.BEST_PT))
    assert abs(float(ours.target_std) - 1.0) > 0.5  # trained on standardised gaps: there was something to fold
    traj = _boxed(read_trajectory(synthetic_h5))
    frames = [3, 4, 100]
    mine = ours.predict_batch(gather_frames(build_graphs(traj, GraphConfig()), torch.tensor(frames))).detach()
    theirs = _upstream_out(upstream, traj, frames, GraphConfig())
    torch.testing.assert_close(theirs, mine, rtol=0, atol=1e-4)
    assert (theirs - float(ours.target_mean)).abs().max() < 3 * float(ours.target_std)  # eV, not standardised
    # Without qdgap's keys the file loads strictly, with the same result.
    upstream.load_state_dict({k: v for k, v in raw.items() if k not in result.unexpected_keys}, strict=True)
    torch.testing.assert_close(_upstream_out(upstream, traj, frames, GraphConfig()), theirs, rtol=0, atol=0)
    torch.testing.assert_close(upstream_state_dict(ours)["fc.bias"], raw["fc.bias"], rtol=0, atol=1e-6)


def test_best_pt_folded_and_unfolded_load_alike(tmp_path, synthetic_traj):
    """best.pt as written now (statistics folded into fc) and as written before (unfolded) load into the
    same model, to float32 rounding; the folded file predicts eV with target_mean 0 and target_std 1."""
    from qdgap.core.deploy.checkpoint import save_weights

    model = _randomise(GapModel(PRESETS["tiny"].model)).eval()
    model.set_target_stats(1.73, 0.11)
    state = model.state_dict()
    torch.save(state, tmp_path / "old.pt")
    save_weights(tmp_path / "new.pt", state)
    raw = torch.load(tmp_path / "new.pt", weights_only=True)
    assert (float(raw["target_mean"]), float(raw["target_std"])) == (0.0, 1.0)
    assert torch.equal(raw["folded_target_mean"], state["target_mean"])
    assert torch.equal(raw["folded_target_std"], state["target_std"])
    batch = gather_frames(build_graphs(synthetic_traj, GraphConfig()), torch.arange(6))
    with torch.no_grad():
        want = model.predict_batch(batch)
        as_is = GapModel(PRESETS["tiny"].model).eval()
        as_is.load_state_dict({k: v for k, v in raw.items() if k not in FOLDED_STATS})
        torch.testing.assert_close(as_is.predict_batch(batch), want, rtol=0, atol=1e-6)
        for name in ("old.pt", "new.pt"):
            loaded = load_weights(tmp_path / name)
            assert loaded.keys() == state.keys()
            for k, v in state.items():
                if k.startswith("fc."):
                    # Folded (b * std + mean, rounded to float32) and unfolded again: the rounding of the folded
                    # bias, ~eps32 x 1.73 eV, comes back divided by std = 0.11: up to ~4e-6 in the bias.
                    torch.testing.assert_close(loaded[k], v, rtol=1e-6, atol=2 * 1.2e-7 * 1.73 / 0.11)
                else:
                    assert torch.equal(loaded[k], v), k
            again = GapModel(PRESETS["tiny"].model).eval()
            again.load_state_dict(loaded)
            torch.testing.assert_close(again.predict_batch(batch), want, rtol=0, atol=1e-6)


def test_torchscript_matches_eager(synthetic_traj):
    model = _randomise(GapModel(PRESETS["demo"].model)).eval()
    batch = gather_frames(build_graphs(synthetic_traj, GraphConfig()), torch.arange(8))
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(*batch), model(*batch), rtol=0, atol=1e-6)
        masks = (torch.rand(batch.z.numel()), torch.rand(batch.edge_src.numel()), torch.rand(batch.lg_src.numel()))
        torch.testing.assert_close(scripted(*batch, *masks), model(*batch, *masks), rtol=0, atol=1e-6)


def test_batch_matches_frames_alone(synthetic_traj):
    model = _randomise(GapModel(PRESETS["demo"].model)).eval()
    packed = build_graphs(synthetic_traj, GraphConfig())
    frames = torch.tensor([4, 40, 2, 99])
    with torch.no_grad():
        together = model.predict_batch(gather_frames(packed, frames))
        alone = torch.cat([model.predict_batch(gather_frames(packed, f.view(1))) for f in frames])
    torch.testing.assert_close(together, alone, rtol=0, atol=TOL_EV)


def test_no_gradient_leaks_between_frames(synthetic_traj):
    model = _randomise(GapModel(PRESETS["tiny"].model))
    packed = build_graphs(synthetic_traj, GraphConfig())
    batch = gather_frames(packed, torch.tensor([0, 1]))
    bond_len = batch.bond_len.clone().requires_grad_(True)
    out = model(*batch._replace(bond_len=bond_len))
    out[0].backward()
    in_second = batch.node_graph[batch.edge_src] == 1
    assert bond_len.grad[in_second].abs().max() == 0
    assert bond_len.grad[~in_second].abs().max() > 0


def test_prediction_invariant_under_atom_permutation(synthetic_traj):
    model = _randomise(GapModel(PRESETS["demo"].model)).eval()
    perm = np.random.default_rng(3).permutation(synthetic_traj.num_atoms)
    permuted = make_trajectory(
        synthetic_traj.numbers[perm], synthetic_traj.positions_ang[:, perm], time_fs=synthetic_traj.time_fs
    )
    frames = torch.arange(6)
    # Far more neighbours than atoms: no nearest-neighbour ties to break differently.
    params = GraphConfig(max_neighbors=64)
    with torch.no_grad():
        a = model.predict_batch(gather_frames(build_graphs(synthetic_traj, params), frames))
        b = model.predict_batch(gather_frames(build_graphs(permuted, params), frames))
    torch.testing.assert_close(a, b, rtol=0, atol=TOL_EV)


def test_unit_masks_change_nothing(synthetic_traj):
    model = _randomise(GapModel(PRESETS["tiny"].model)).eval()
    batch = gather_frames(build_graphs(synthetic_traj, GraphConfig()), torch.arange(3))
    ones = (torch.ones(batch.z.numel()), torch.ones(batch.edge_src.numel()), torch.ones(batch.lg_src.numel()))
    with torch.no_grad():
        torch.testing.assert_close(model(*batch, *ones), model(*batch), rtol=0, atol=0)


def _wide(width: int):
    return replace(PRESETS["tiny"].model, output_features=width)


def test_model_width_one_keeps_scalar_stats(synthetic_traj):
    """The default readout (one output) keeps 0-d target statistics, as every checkpoint holds them,
    and gives (B,); setting them from numpy scalars or arrays of one is setting them from floats."""
    model = _randomise(GapModel(PRESETS["tiny"].model)).eval()
    assert model.target_mean.shape == () and model.target_std.shape == ()
    batch = gather_frames(build_graphs(synthetic_traj, GraphConfig()), torch.arange(5))
    model.set_target_stats(1.73, 0.11)
    with torch.no_grad():
        want = model(*batch)
        model.set_target_stats(np.float64(1.73), np.array([0.11]))
        assert want.shape == (5,)
        assert torch.equal(model(*batch), want)
    model.set_target_stats(1.0, 0.0)
    assert float(model.target_std) == pytest.approx(1e-6)  # a constant target is not divided by zero


def test_model_wide_readout_scales_each_output(synthetic_traj):
    """K = 3 outputs: (B, 3), column k scaled by target k's own mean and std; column 0 is what a
    one-output model with the same trunk, the same first readout row and target 0's statistics gives."""
    batch = gather_frames(build_graphs(synthetic_traj, GraphConfig()), torch.arange(6))
    wide = _randomise(GapModel(_wide(3))).eval()
    assert wide.target_mean.shape == (3,)
    mean, std = np.array([1.7, -5.1, -3.4]), np.array([0.11, 0.07, 0.05])
    with torch.no_grad():
        raw = wide(*batch)  # statistics 0 and 1: the standardised output
        wide.set_target_stats(mean, std)
        out = wide(*batch)
        assert out.shape == (6, 3)
        want = raw * torch.tensor(std, dtype=torch.float32) + torch.tensor(mean, dtype=torch.float32)
        torch.testing.assert_close(out, want, rtol=0, atol=1e-6)
        narrow = GapModel(PRESETS["tiny"].model).eval()
        state = {k: (v[:1] if k.startswith("fc.") else v) for k, v in wide.state_dict().items()}
        state["target_mean"], state["target_std"] = state["target_mean"][0], state["target_std"][0]
        narrow.load_state_dict(state)
        torch.testing.assert_close(narrow(*batch), out[:, 0], rtol=0, atol=1e-6)


def test_model_wide_readout_scripts_and_folds(synthetic_traj):
    """A 3-output model scripts to the same outputs, and folding its statistics into the readout (each row
    by its own target's) predicts eV by itself; unfolding gives the standardised layer back."""
    from qdgap.core.model.network import fold_target_stats, unfold_target_stats

    batch = gather_frames(build_graphs(synthetic_traj, GraphConfig()), torch.arange(6))
    model = _randomise(GapModel(_wide(3))).eval()
    model.set_target_stats([1.7, -5.1, -3.4], [0.11, 0.07, 0.05])
    with torch.no_grad():
        want = model(*batch)
        torch.testing.assert_close(torch.jit.script(model)(*batch), want, rtol=0, atol=1e-6)
        folded = fold_target_stats(model.state_dict())
        as_is = GapModel(_wide(3)).eval()
        as_is.load_state_dict({k: v for k, v in folded.items() if k not in FOLDED_STATS})
        torch.testing.assert_close(as_is(*batch), want, rtol=0, atol=1e-5)
        again = GapModel(_wide(3)).eval()
        again.load_state_dict(unfold_target_stats(folded))
        torch.testing.assert_close(again(*batch), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("blocks", [0, 1, 2, 3, 4])
def test_freeze_counts(blocks):
    model = GapModel(PRESETS["paper"].model)
    frozen = set(model.freeze(blocks=blocks, embeddings=True))
    per_block = sum(p.numel() for n, p in model.named_parameters() if n.startswith("alignn_layers.0."))
    embed = sum(p.numel() for n, p in model.named_parameters() if n.split(".")[0].endswith("_embedding"))
    n_frozen = sum(p.numel() for n, p in model.named_parameters() if n in frozen)
    assert n_frozen == embed + blocks * per_block
    assert all(not p.requires_grad for n, p in model.named_parameters() if n in frozen)
    assert all(p.requires_grad for n, p in model.named_parameters() if n not in frozen)
