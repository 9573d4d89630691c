"""Trajectory graphs (core.graphs) against upstream ALIGNN's pure-torch builder, batching and cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from alignn.torch_graph_builder import build_pure_torch_graph
from ase.build import bulk
from ase.data import chemical_symbols
from jarvis.core.atoms import Atoms as JarvisAtoms

from qdgap.core.config import GraphConfig
from qdgap.core.data.trajectory import make_trajectory, read_trajectory, write_trajectory
from qdgap.core.graphs.build import build_graphs, graph_cache_path, load_or_build_graphs
from qdgap.kernels.batch import gather_frames


def _upstream(traj, f, params):
    atoms = JarvisAtoms(
        lattice_mat=traj.frame_cells()[f],
        coords=traj.positions_ang[f].astype(np.float64),
        elements=[chemical_symbols[z] for z in traj.numbers],
        cartesian=True,
    )
    return build_pure_torch_graph(
        atoms,
        two_body_cutoff=params.cutoff_ang,
        three_body_cutoff=params.three_body_cutoff_ang,
        max_neighbors=params.max_neighbors,
        use_matscipy_topology=False,
    )


def _assert_frame_matches_upstream(packed, traj, f, params):
    g, lg = _upstream(traj, f, params)
    e0, e1 = packed.edge_ptr[f], packed.edge_ptr[f + 1]
    t0, t1 = packed.lg_ptr[f], packed.lg_ptr[f + 1]
    # The same bonds in the same order, the same triplets, the same lengths and cosines.
    assert torch.equal(packed.edge_src[e0:e1], g.src) and torch.equal(packed.edge_dst[e0:e1], g.dst)
    assert torch.equal(packed.lg_src[t0:t1], lg.src) and torch.equal(packed.lg_dst[t0:t1], lg.dst)
    torch.testing.assert_close(packed.bond_len[e0:e1], g.edata["r"].norm(dim=1), rtol=0, atol=1e-6)
    torch.testing.assert_close(packed.angle_cos[t0:t1], lg.edata["h"], rtol=0, atol=1e-6)


def test_graph_bonds_match_upstream_on_published_frames(tmp_path, run_cli, seed_data):
    out = tmp_path / "seed.h5"
    args = (
        "data",
        "import",
        seed_data / "cl_qd" / "structures",
        "--gaps",
        seed_data / "cl_qd" / "Cl_QD_elec_1-10k.csv",
    )
    assert run_cli(*args, "-o", out).exit_code == 0
    traj = read_trajectory(out)
    params = GraphConfig(cutoff_ang=5.0, max_neighbors=12, three_body_cutoff_ang=3.5)
    packed = build_graphs(traj, params)
    for f in range(traj.num_frames):
        _assert_frame_matches_upstream(packed, traj, f, params)


@pytest.mark.parametrize(
    "params", [GraphConfig(), GraphConfig(cutoff_ang=4.0, max_neighbors=8, three_body_cutoff_ang=3.0)]
)
def test_graph_bonds_match_upstream_periodic_crystal(params):
    """A bulk crystal, where periodic images are real neighbours."""
    crystal = bulk("CdSe", "zincblende", a=6.05).repeat((2, 1, 1))
    rng = np.random.default_rng(0)
    pos = crystal.get_positions()[None] + rng.normal(0, 0.05, size=(3, len(crystal), 3))
    traj = make_trajectory(crystal.numbers, pos, time_fs=np.arange(3.0), cell_ang=crystal.cell[:], pbc=[True] * 3)
    packed = build_graphs(traj, params)
    assert (packed.edge_dst >= 0).all() and (packed.edge_dst < len(crystal)).all()
    for f in range(3):
        _assert_frame_matches_upstream(packed, traj, f, params)


def test_graph_isolated_cluster_has_no_images(synthetic_traj):
    packed = build_graphs(synthetic_traj.select(np.arange(5)), GraphConfig(max_neighbors=64))
    assert (packed.bond_len <= 5.0).all() and (packed.bond_len > 0.5).all()
    # Without the neighbour cap every bond appears in both directions.
    e0, e1 = packed.edge_ptr[0], packed.edge_ptr[1]
    pairs = set(zip(packed.edge_src[e0:e1].tolist(), packed.edge_dst[e0:e1].tolist(), strict=True))
    assert all((j, i) in pairs for i, j in pairs)


def test_gather_frames_matches_frames_alone(synthetic_traj):
    packed = build_graphs(synthetic_traj, GraphConfig())
    frames = torch.tensor([5, 0, 17, 5])
    b = gather_frames(packed, frames)
    n = synthetic_traj.num_atoms
    assert b.num_graphs == 4 and b.z.numel() == 4 * n
    edge_start = 0
    for k, f in enumerate(frames.tolist()):
        one = gather_frames(packed, torch.tensor([f]))
        e = one.edge_src.numel()
        assert torch.equal(b.edge_src[edge_start : edge_start + e], one.edge_src + k * n)
        assert torch.equal(b.bond_len[edge_start : edge_start + e], one.bond_len)
        edge_start += e
    # Angle endpoints are bonds of the same graph.
    assert torch.equal(b.node_graph[b.edge_src[b.lg_src]], b.node_graph[b.edge_dst[b.lg_dst]])
    assert torch.equal(b.edge_dst[b.lg_src], b.edge_src[b.lg_dst])  # the shared atom


def test_graph_cache_roundtrip(tmp_path, synthetic_traj):
    write_trajectory(synthetic_traj, tmp_path / "t.h5")
    traj = read_trajectory(tmp_path / "t.h5")
    params = GraphConfig()
    first = load_or_build_graphs(traj, params, cache_dir=tmp_path / "cache")
    path = graph_cache_path(tmp_path / "cache", traj, params)
    assert path.exists()
    again = load_or_build_graphs(traj, params, cache_dir=tmp_path / "cache")
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    other = graph_cache_path(tmp_path / "cache", traj, GraphConfig(max_neighbors=8))
    assert other != path
    path.write_bytes(b"garbage")  # a corrupt cache is rebuilt, not trusted
    rebuilt = load_or_build_graphs(traj, params, cache_dir=tmp_path / "cache")
    assert torch.equal(rebuilt.edge_src, first.edge_src)
