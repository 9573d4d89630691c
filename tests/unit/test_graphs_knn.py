"""k-nearest graphs (core.graphs, ``neighbor_strategy="k-nearest"``) against upstream ALIGNN's DGL-era builder.

The reference is the ``alignn`` package's own ``nearest_neighbor_edges`` (cutoff
5 Å, 12 neighbours, ``use_canonize=False``) and ``build_undirected_edgedata``,
as ``Graph.atom_dgl_multigraph`` called them for the original study, and a
plain-Python line graph with backtracking (DGL's ``line_graph(shared=True)``:
every pair of bonds u -> v, v -> w).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import torch
from alignn.graphs import build_undirected_edgedata, nearest_neighbor_edges
from alignn.models.alignn_atomwise_pure import ALIGNNAtomWisePure, ALIGNNAtomWisePureConfig
from alignn.torch_graph_builder import TorchGraph, batch_torch_graph_pairs
from ase.build import bulk
from ase.data import chemical_symbols
from jarvis.core.atoms import Atoms as JarvisAtoms

from qdgap.core.config import K_NEAREST, PRESETS, GraphConfig
from qdgap.core.data.trajectory import make_trajectory
from qdgap.core.graphs.build import build_graphs, graph_cache_path
from qdgap.core.model.network import GapModel, species_table
from qdgap.kernels.batch import gather_frames
from qdgap.kernels.fna import MODES, fna_loop, fna_masked_gaps

KNN = GraphConfig(cutoff_ang=5.0, max_neighbors=12, neighbor_strategy=K_NEAREST)
KNN_CANON = GraphConfig(cutoff_ang=5.0, max_neighbors=12, neighbor_strategy=K_NEAREST, use_canonize=True)
COS_TOL = 1e-6
LEN_TOL_ANG = 1e-5  # float32 rounding of lengths up to ~8 Å
PUBLISHED_FRAMES = range(1, 51)  # st1.vasp .. st50.vasp


# ==========================================================================
# References: upstream's builder and a plain-Python line graph
# ==========================================================================


def _jarvis(traj, f) -> JarvisAtoms:
    return JarvisAtoms(
        lattice_mat=traj.frame_cells()[f],
        coords=traj.positions_ang[f].astype(np.float64),
        elements=[chemical_symbols[z] for z in traj.numbers],
        cartesian=True,
    )


def _upstream_edges(atoms: JarvisAtoms, params: GraphConfig):
    """(u, v, r, keys): upstream's bonds, bond vectors (E, 3) Å and its (i, j) -> images dict."""
    edges, _ = nearest_neighbor_edges(
        atoms=atoms, cutoff=params.cutoff_ang, max_neighbors=params.max_neighbors, use_canonize=params.use_canonize
    )
    u, v, r, _ = build_undirected_edgedata(atoms, edges)
    return u, v, r.float(), edges


def _reference_line_graph(u, v, r) -> tuple[np.ndarray, np.ndarray]:
    """Every bond pair (a = u -> v, b = v -> w), w == u and duplicate bonds included, sorted; and the cosines.

    Cosines as ``alignn.graphs.compute_bond_cosines``: r1 = -r[a], r2 = r[b], clamped to [-1, 1].
    """
    leaving = defaultdict(list)
    for b, s in enumerate(u.tolist()):
        leaving[s].append(b)
    pairs = [(a, b) for a, mid in enumerate(v.tolist()) for b in leaving[mid]]
    pairs.sort()
    ab = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    r1, r2 = -r[ab[:, 0]], r[ab[:, 1]]
    cos = torch.clamp((r1 * r2).sum(1) / (r1.norm(dim=1) * r2.norm(dim=1)), -1, 1)
    return ab, cos.numpy()


def _frame(packed, f):
    e0, e1 = int(packed.edge_ptr[f]), int(packed.edge_ptr[f + 1])
    t0, t1 = int(packed.lg_ptr[f]), int(packed.lg_ptr[f + 1])
    return (
        packed.edge_src[e0:e1],
        packed.edge_dst[e0:e1],
        packed.bond_len[e0:e1],
        packed.lg_src[t0:t1],
        packed.lg_dst[t0:t1],
        packed.angle_cos[t0:t1],
    )


def _assert_triplets_match(packed, f, u, v, r):
    *_, lg_src, lg_dst, angle_cos = _frame(packed, f)
    ref_ab, ref_cos = _reference_line_graph(u, v, r)
    ours = np.stack([lg_src.numpy(), lg_dst.numpy()], 1)
    order = np.lexsort((ours[:, 1], ours[:, 0]))
    np.testing.assert_array_equal(ours[order], ref_ab)
    np.testing.assert_allclose(angle_cos.numpy()[order], ref_cos, rtol=0, atol=COS_TOL)
    # Each bond a = (u -> v) pairs with every bond leaving v, the way back included: T = sum over atoms of
    # in-degree x out-degree, and as every bond comes with its reverse, in-degree == out-degree.
    degree = np.bincount(u.numpy(), minlength=packed.z.numel())
    assert np.array_equal(degree, np.bincount(v.numpy(), minlength=packed.z.numel()))
    assert len(lg_src) == int((degree * degree).sum())


@pytest.fixture(scope="module")
def published(seed_data):
    """st1..st50 of the published AIMD trajectory, read by ASE (periodic 22 Å box, as the POSCARs say)."""
    import ase.io

    frames = [ase.io.read(seed_data / "cl_qd" / "structures" / f"st{i}.vasp", format="vasp") for i in PUBLISHED_FRAMES]
    assert all(a.pbc.all() for a in frames)
    return make_trajectory(
        frames[0].numbers,
        np.stack([a.get_positions() for a in frames]),
        time_fs=np.arange(len(frames), dtype=np.float64),
        cell_ang=np.stack([a.cell[:] for a in frames]),
        pbc=frames[0].pbc,
    )


# ==========================================================================
# Equality with upstream
# ==========================================================================


def test_knn_graph_matches_upstream_on_published_frames(published, seed_data):
    from jarvis.io.vasp.inputs import Poscar

    packed = build_graphs(published, KNN)
    assert packed.num_frames == len(PUBLISHED_FRAMES)
    for f, number in enumerate(PUBLISHED_FRAMES):
        # jarvis reads the POSCAR itself, as the original workflow did.
        atoms = Poscar.from_file(str(seed_data / "cl_qd" / "structures" / f"st{number}.vasp")).atoms
        u, v, r, edges = _upstream_edges(atoms, KNN)
        src, dst, bond_len, *_ = _frame(packed, f)
        # The same bonds in the same order: edge for edge.
        assert torch.equal(src, u) and torch.equal(dst, v), f"st{number}"
        torch.testing.assert_close(bond_len, r.norm(dim=1), rtol=0, atol=LEN_TOL_ANG)
        # Every bond lies within the box (no periodic image), so its vector is the positions' difference.
        assert all(images == {(0.0, 0.0, 0.0)} for images in edges.values())
        pos = torch.from_numpy(published.positions_ang[f])
        torch.testing.assert_close(pos[dst] - pos[src], r, rtol=0, atol=LEN_TOL_ANG)
        # The cutoff was widened: 12 neighbours per atom (no ties on real data), so 2 x 67 x 12 bonds, and
        # pairs in both atoms' lists twice each way.
        assert len(edges) == published.num_atoms * KNN.max_neighbors and len(u) == 2 * len(edges)
        assert bond_len.max() > KNN.cutoff_ang
        if number % 10 == 1:  # the line graph in plain Python is slow; st1, st11, ..., st41
            _assert_triplets_match(packed, f, u, v, r)


def test_canonised_knn_graph_matches_upstream_on_published_frames(published, seed_data):
    """use_canonize=True (train_alignn.py's default, the paper preset): each neighbour pair bonded once each way."""
    from jarvis.io.vasp.inputs import Poscar

    assert PRESETS["paper"].graph == KNN_CANON
    packed = build_graphs(published, KNN_CANON)
    for f, number in enumerate(PUBLISHED_FRAMES):
        atoms = Poscar.from_file(str(seed_data / "cl_qd" / "structures" / f"st{number}.vasp")).atoms
        u, v, r, edges = _upstream_edges(atoms, KNN_CANON)
        src, dst, bond_len, *_ = _frame(packed, f)
        assert torch.equal(src, u) and torch.equal(dst, v), f"st{number}"
        pos = torch.from_numpy(published.positions_ang[f])
        torch.testing.assert_close(pos[dst] - pos[src], r, rtol=0, atol=LEN_TOL_ANG)
        # Unordered pairs, each once: no (i, j) twice, and every bond has its reverse.
        pairs = set(zip(src.tolist(), dst.tolist(), strict=True))
        assert len(pairs) == len(src) and all((j, i) in pairs for i, j in pairs)
        if number % 25 == 1:  # st1, st26
            _assert_triplets_match(packed, f, u, v, r)
    first = build_graphs(published.select(np.array([0])), KNN_CANON)
    # st1: of the 804 neighbour-list entries, 640 are mutual (320 pairs listed by both atoms): 484 pairs, 968 bonds.
    assert int(first.edge_ptr[1]) == 2 * (67 * 12 - 640 // 2) == 968


def test_knn_triplet_counts_on_published_frame(published):
    """st1: 1,608 bonds and 39,812 triplets (against 702 and 976 with qdgap's default graph)."""
    packed = build_graphs(published.select(np.array([0])), KNN)
    default = build_graphs(published.select(np.array([0])), GraphConfig())
    assert (int(packed.edge_ptr[1]), int(packed.lg_ptr[1])) == (1608, 39812)
    assert (int(default.edge_ptr[1]), int(default.lg_ptr[1])) == (702, 976)
    # Backtracking pairs (u -> v, v -> u) have cosine 1: one per bond, two per bond of a pair that is
    # bonded twice each way (640 of the 804 neighbour-list entries are mutual: 1,608 + 2 x 640).
    _, _, _, lg_src, lg_dst, angle_cos = _frame(packed, 0)
    src, dst = packed.edge_src, packed.edge_dst
    back = (src[lg_dst] == dst[lg_src]) & (dst[lg_dst] == src[lg_src])
    assert int(back.sum()) == 1608 + 2 * 640
    torch.testing.assert_close(angle_cos[back], torch.ones(int(back.sum())), rtol=0, atol=COS_TOL)


# (1, 1, 1): 2 atoms for 4 neighbours, so the cutoff is widened over images. The k-th nearest is never an
# image of the atom itself: images s and -s lie at the same distance, and which of the two makes the cut
# is float rounding, in upstream's float64 as in qdgap's float32 (with 6 neighbours in (1, 1, 1) it does).
@pytest.mark.parametrize("repeat, max_neighbors", [((1, 1, 1), 4), ((2, 2, 2), 12)])
def test_knn_graph_matches_upstream_periodic_crystal(repeat, max_neighbors):
    """A bulk crystal, where periodic images are neighbours and one pair bonds through several images."""
    crystal = bulk("CdSe", "zincblende", a=6.05).repeat(repeat)
    rng = np.random.default_rng(0)
    pos = crystal.get_positions()[None] + rng.normal(0, 0.05, size=(3, len(crystal), 3))
    traj = make_trajectory(crystal.numbers, pos, time_fs=np.arange(3.0), cell_ang=crystal.cell[:], pbc=[True] * 3)
    params = GraphConfig(cutoff_ang=3.0, max_neighbors=max_neighbors, neighbor_strategy=K_NEAREST)
    _check_crystal(traj, params, crystal)
    # Canonised: the same bonds as upstream's, as a multiset per (i, j) (images of one pair may come in
    # another order: upstream's follows a Python set).
    canon = GraphConfig(cutoff_ang=3.0, max_neighbors=max_neighbors, neighbor_strategy=K_NEAREST, use_canonize=True)
    packed = build_graphs(traj, canon)
    for f in range(3):
        u, v, r, _ = _upstream_edges(_jarvis(traj, f), canon)
        src, dst, bond_len, *_ = _frame(packed, f)
        mine = sorted(zip(src.tolist(), dst.tolist(), bond_len.tolist(), strict=True))
        theirs = sorted(zip(u.tolist(), v.tolist(), r.norm(dim=1).tolist(), strict=True))
        assert [m[:2] for m in mine] == [t[:2] for t in theirs]
        np.testing.assert_allclose([m[2] for m in mine], [t[2] for t in theirs], rtol=0, atol=LEN_TOL_ANG)


def _check_crystal(traj, params, crystal):
    packed = build_graphs(traj, params)
    for f in range(3):
        u, v, r, edges = _upstream_edges(_jarvis(traj, f), params)
        src, dst, bond_len, *_ = _frame(packed, f)
        # The same (src, dst) sequence; within one (i, j) key upstream orders the images as a Python set does,
        # so the lengths are compared per key, as sorted lists.
        assert torch.equal(src, u) and torch.equal(dst, v)
        key = (src * len(crystal) + dst).numpy()
        mine, theirs = bond_len.numpy(), r.norm(dim=1).numpy()
        for k in np.unique(key):
            np.testing.assert_allclose(np.sort(mine[key == k]), np.sort(theirs[key == k]), rtol=0, atol=LEN_TOL_ANG)
        assert any(len(images) > 1 for images in edges.values())
        t0, t1 = int(packed.lg_ptr[f]), int(packed.lg_ptr[f + 1])
        degree = np.bincount(src.numpy(), minlength=len(crystal))
        assert t1 - t0 == int((degree * degree).sum())


# ==========================================================================
# Vectorised over frames, and the run-folder plumbing
# ==========================================================================


@pytest.mark.parametrize("periodic", [False, True])
def test_knn_batch_of_frames_equals_frames_one_by_one(synthetic_traj, periodic):
    """Chunks of many frames (one search radius for all) give each frame's graph as it is alone."""
    traj = synthetic_traj.select(np.arange(40))
    if periodic:  # a box small enough that images are among the 12 nearest of surface atoms
        pos = traj.positions_ang - traj.positions_ang.mean(axis=(0, 1)) + 6.0
        traj = make_trajectory(traj.numbers, pos, time_fs=traj.time_fs, cell_ang=np.eye(3) * 12.0, pbc=[True] * 3)
    packed = build_graphs(traj, KNN)
    if periodic:  # images really are among the nearest: bonds are shorter than in the isolated cluster
        isolated = make_trajectory(traj.numbers, traj.positions_ang, time_fs=traj.time_fs)
        assert packed.bond_len.max() < build_graphs(isolated, KNN).bond_len.max()
    for f in (0, 13, 39):
        alone = build_graphs(traj.select(np.array([f])), KNN)
        for a, b in zip(_frame(packed, f), _frame(alone, 0), strict=True):
            assert torch.equal(a, b)


def test_knn_is_its_own_cache_entry_and_default_records_unchanged(tmp_path, synthetic_traj):
    traj = synthetic_traj.select(np.arange(3))
    default, knn = GraphConfig(), GraphConfig(neighbor_strategy=K_NEAREST)
    assert graph_cache_path(tmp_path, traj, default) != graph_cache_path(tmp_path, traj, knn)
    # The default strategy is left out of config.json (and the cache key): older runs still match.
    assert default.to_json() == {"cutoff_ang": 5.0, "max_neighbors": 12, "three_body_cutoff_ang": 3.5}
    assert knn.to_json()["neighbor_strategy"] == "k-nearest"
    assert GraphConfig(**knn.to_json()) == knn and GraphConfig(**default.to_json()) == default
    assert PRESETS["paper"].graph.neighbor_strategy == K_NEAREST
    from qdgap.core.common.errors import QdgapError

    with pytest.raises(QdgapError, match="neighbor_strategy 'voronoi' is not supported"):
        GraphConfig(neighbor_strategy="voronoi")


# ==========================================================================
# The model and the FNA kernel on a multigraph
# ==========================================================================


def _randomised(preset, seed=0):
    gen = torch.Generator().manual_seed(seed)
    model = GapModel(PRESETS[preset].model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    model.set_target_stats(1.73, 0.11)
    return model.eval()


def test_model_on_knn_graph_matches_upstream_forward(published):
    """On the original study's graphs qdgap's forward equals upstream's forward(g) on upstream's own
    multigraph (duplicate bonds, backtracking triplets), built by the reference above. (The demo model:
    the paper model's 4 ALIGNN blocks on 40k triplets per frame take seconds, and test nothing more.)"""
    from qdgap.core.model.network import upstream_state_dict

    config = PRESETS["demo"]
    model = _randomised("demo")
    upstream = ALIGNNAtomWisePure(ALIGNNAtomWisePureConfig(**config.to_json()["model"])).eval()
    upstream.load_state_dict(upstream_state_dict(model), strict=True)
    table = torch.from_numpy(species_table("cgcnn", 92))
    frames = [0, 25]
    pairs = []
    for f in frames:
        u, v, r, _ = _upstream_edges(_jarvis(published, f), KNN)
        ab, cos = _reference_line_graph(u, v, r)
        z = torch.from_numpy(published.numbers)
        g = TorchGraph(num_nodes=len(z), src=u, dst=v, ndata={"atom_features": table[z]}, edata={"r": r})
        lg = TorchGraph(
            num_nodes=len(u), src=torch.from_numpy(ab[:, 0]), dst=torch.from_numpy(ab[:, 1]),
            edata={"h": torch.from_numpy(cos)},
        )  # fmt: skip
        pairs.append((g, lg))
    g, lg = batch_torch_graph_pairs(pairs)
    packed = build_graphs(published, KNN)
    with torch.no_grad():
        theirs = upstream([g, lg, torch.zeros(3, 3)])["out"]
        ours = model.predict_batch(gather_frames(packed, torch.tensor(frames)))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


@pytest.mark.parametrize("mode", MODES)
def test_fna_kernel_on_knn_multigraph_matches_loop(synthetic_traj, mode):
    model = _randomised("demo")
    packed = build_graphs(synthetic_traj.select(np.arange(6)), KNN)
    frames = torch.tensor([1, 4])
    n = synthetic_traj.num_atoms
    kernel = fna_masked_gaps(model, gather_frames(packed, frames), num_atoms=n, mode=mode, chunk_size=5)
    for b, f in enumerate(frames.tolist()):
        loop = fna_loop(model, gather_frames(packed, torch.tensor([f])), num_atoms=n, mode=mode)
        torch.testing.assert_close(kernel[b], loop, rtol=0, atol=1e-5)
    assert (kernel[:, 1:] - kernel[:, :1]).abs().min() > 0
