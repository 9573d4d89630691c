"""ALIGNN's bond graph and line graph for a whole trajectory at once, and their cache.

Bonds follow upstream ALIGNN's pure-torch builder (``alignn.torch_graph_builder``):
each atom's ``max_neighbors`` nearest atoms within ``cutoff_ang`` (periodic
images included), as directed bonds ordered by source atom, then distance.
Angle triplets pair bond (u -> v) with every bond (v -> w), both no longer
than ``three_body_cutoff_ang``, in upstream's order. The build is vectorised
over frames and atoms: no Python loop per atom or per frame.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from qdgap.core.config import GraphConfig
from qdgap.core.data import Trajectory
from qdgap.core.errors import QdgapError
from qdgap.core.files import atomic_output
from qdgap.kernels.batch import PackedGraphs

log = logging.getLogger(__name__)

GRAPH_CACHE_VERSION = 1
_PAIR_BUDGET = 1 << 20  # max (frames x atoms x candidate neighbours) held at once, bounds memory


def build_graphs(
    traj: Trajectory,
    params: GraphConfig,
    *,
    progress: Callable[[int], None] | None = None,
) -> PackedGraphs:
    """Build the bond and angle graphs of every frame.

    Args:
        traj: the trajectory (positions in Å).
        params: cutoffs (Å) and neighbour count.
        progress: called with the number of frames done after each chunk.

    Returns:
        ``PackedGraphs`` on the CPU: bond lengths (Å) and angle cosines in float32,
        computed from float32 positions with upstream's arithmetic.
    """
    f, n = traj.num_frames, traj.num_atoms
    positions = torch.from_numpy(np.ascontiguousarray(traj.positions_ang, dtype=np.float32))
    cells = torch.from_numpy(np.ascontiguousarray(traj.frame_cells(), dtype=np.float32))
    shifts = _image_shifts(traj, params.cutoff_ang) if traj.pbc.any() else torch.zeros(1, 3)
    chunk = max(1, _PAIR_BUDGET // max(1, n * n * shifts.shape[0]))
    parts = []
    for start in range(0, f, chunk):
        stop = min(f, start + chunk)
        parts.append(_frame_graphs(positions[start:stop], cells[start:stop], shifts, params))
        if progress is not None:
            progress(stop - start)
    edge_src, edge_dst, bond_len, edge_counts, lg_src, lg_dst, angle_cos, lg_counts = (
        torch.cat(column) for column in zip(*parts)
    )
    return PackedGraphs(
        z=torch.from_numpy(traj.numbers.astype(np.int64)),
        edge_src=edge_src,
        edge_dst=edge_dst,
        bond_len=bond_len,
        edge_ptr=_pointer(edge_counts),
        lg_src=lg_src,
        lg_dst=lg_dst,
        angle_cos=angle_cos,
        lg_ptr=_pointer(lg_counts),
    )


def _pointer(counts: torch.Tensor) -> torch.Tensor:
    ptr = torch.zeros(counts.numel() + 1, dtype=torch.int64)
    ptr[1:] = torch.cumsum(counts, 0)
    return ptr


def _image_shifts(traj: Trajectory, cutoff: float) -> torch.Tensor:
    """(K, 3) integer cell shifts that can bring an atom within ``cutoff`` Å of another, zero shift first.

    Shifts are enumerated to cover the cutoff sphere, as upstream does, then
    pruned: image s can only hold a neighbour if |offset_s| <= cutoff + the
    largest extent of the atoms in any frame. For a cluster in a big box this
    leaves only the zero shift, which makes the search as cheap as without PBC.
    """
    cells = traj.frame_cells()
    recip = np.linalg.inv(cells).transpose(0, 2, 1)  # (F, 3, 3) reciprocal vectors / 2pi, as rows
    n_max = np.ceil(cutoff * np.linalg.norm(recip, axis=2).max(axis=0)).astype(int)  # (3,)
    n_max = np.where(traj.pbc, n_max, 0)
    grid = np.array(list(itertools.product(*[range(-m, m + 1) for m in n_max])), dtype=np.float64)
    grid = grid[np.argsort(np.abs(grid).sum(1), kind="stable")]  # zero shift first
    pos = traj.positions_ang
    extent = float(np.linalg.norm(pos.max(axis=1) - pos.min(axis=1), axis=1).max())  # bounding-box diagonal, Å
    shortest = np.linalg.norm(np.einsum("kj,fjl->fkl", grid, cells), axis=2).min(axis=0)  # (K,) Å, over frames
    keep = shortest <= cutoff + extent + 1e-6
    return torch.tensor(grid[keep], dtype=torch.float32)


def _frame_graphs(
    pos: torch.Tensor, cell: torch.Tensor, shifts: torch.Tensor, params: GraphConfig
) -> tuple[torch.Tensor, ...]:
    """Bonds and angle triplets of C frames, with indices local to each frame.

    Args:
        pos: (C, N, 3) float32, Å.
        cell: (C, 3, 3) float32, Å.
        shifts: (K, 3) integer image shifts, the zero shift first.

    Returns:
        edge_src, edge_dst (E,) int64 atoms; bond_len (E,) Å; bonds per frame (C,);
        lg_src, lg_dst (T,) int64 bonds; angle_cos (T,); triplets per frame (C,).
    """
    c, n, _ = pos.shape
    k = shifts.shape[0]
    offsets = torch.einsum("kj,cjl->ckl", shifts, cell)  # (C, K, 3) Å
    # Candidate neighbour j in image s, flattened as s * N + j; its offset from atom i is
    # (pos[j] + offset[s]) - pos[i], coordinate by coordinate, as upstream computes it.
    cand = (pos[:, None, :, :] + offsets[:, :, None, :]).reshape(c, k * n, 3)  # (C, K*N, 3)
    dist2 = None
    for axis in range(3):
        d = cand[:, None, :, axis] - pos[:, :, None, axis]  # (C, N, K*N)
        dist2 = d * d if dist2 is None else dist2 + d * d
    inside = (dist2 <= params.cutoff_ang * params.cutoff_ang) & (dist2 > 1e-8)  # 1e-8: upstream's self tolerance
    key = torch.where(inside, dist2, torch.full_like(dist2, math.inf))
    kk = min(params.max_neighbors, k * n)
    # Ranking by squared distance is ranking by distance; the result is each atom's neighbour table.
    nearest, cand_idx = torch.topk(key, kk, dim=2, largest=False, sorted=True)  # (C, N, kk)
    keep = torch.isfinite(nearest).reshape(-1)  # (C*N*kk,) the neighbour table, flat: (frame, atom, slot)
    nb_atom = (cand_idx % n).reshape(-1)
    # Flat indices throughout: one index_select per lookup instead of multi-tensor advanced indexing.
    # Bond ids local to each frame, in (source atom, distance) order: upstream's edge order.
    nb_edge = (torch.cumsum(keep.view(c, n * kk), 1) - 1).reshape(-1)
    bond_at = torch.nonzero(keep).squeeze(1)  # (E,) table position of each bond, row-major
    frame = torch.div(bond_at, n * kk, rounding_mode="floor")
    src = torch.div(bond_at, kk, rounding_mode="floor") - frame * n
    dst = nb_atom.index_select(0, bond_at)
    # Bond vectors exactly as upstream: r = pos[dst] - pos[src] + shift @ lattice.
    flat_pos = pos.reshape(c * n, 3)
    r = flat_pos.index_select(0, frame * n + dst) - flat_pos.index_select(0, frame * n + src)  # (E, 3) Å
    if k > 1:
        shift_of_bond = torch.div(cand_idx.reshape(-1).index_select(0, bond_at), n, rounding_mode="floor")
        r = r + offsets.reshape(c * k, 3).index_select(0, frame * k + shift_of_bond)
    bond_len = torch.linalg.vector_norm(r, dim=1)
    edge_counts = keep.view(c, n * kk).sum(dim=1)
    edge_base = torch.cumsum(edge_counts, 0) - edge_counts  # (C,) first bond of each frame in r

    # Line graph: bond A = (u -> v) joins every allowed bond B = (v -> w), read from v's row of the table.
    allowed = torch.zeros_like(keep)
    allowed[bond_at] = bond_len <= params.three_body_cutoff_ang
    a_at = torch.nonzero(allowed).squeeze(1)  # (A,) in bond order
    a_frame = torch.div(a_at, n * kk, rounding_mode="floor")
    a_v_row = a_frame * n + nb_atom.index_select(0, a_at)  # (A,) row (frame, v) of the table
    a_row, b_slot = torch.nonzero(allowed.view(c * n, kk).index_select(0, a_v_row), as_tuple=True)  # (T,) A-major
    t_frame = a_frame.index_select(0, a_row)
    lg_src = nb_edge.index_select(0, a_at).index_select(0, a_row)
    lg_dst = nb_edge.index_select(0, a_v_row.index_select(0, a_row) * kk + b_slot)
    base = edge_base.index_select(0, t_frame)
    ia, ib = base + lg_src, base + lg_dst
    # The norms are the bond lengths already computed from the same vectors (bit for bit).
    angle_cos = _bond_cosines(r.index_select(0, ia), r.index_select(0, ib), bond_len.index_select(0, ia), bond_len.index_select(0, ib))
    lg_counts = torch.bincount(t_frame, minlength=c)
    return src, dst, bond_len, edge_counts, lg_src, lg_dst, angle_cos, lg_counts


def _bond_cosines(r_a: torch.Tensor, r_b: torch.Tensor, len_a: torch.Tensor, len_b: torch.Tensor) -> torch.Tensor:
    """Cosine of the angle at the shared atom between bonds (u -> v) and (v -> w): upstream's convention.

    Args:
        r_a, r_b: (T, 3) bond vectors, Å.
        len_a, len_b: (T,) their lengths, Å.
    """
    num = -(r_a * r_b).sum(-1)
    return (num / (len_a.clamp_min(1e-12) * len_b.clamp_min(1e-12))).clamp(-1.0, 1.0)


# ==========================================================================
# Cache: built once per (trajectory sha256, graph parameters)
# ==========================================================================


def graph_cache_path(cache_dir: Path, traj: Trajectory, params: GraphConfig) -> Path:
    """Where the graphs of ``traj`` with ``params`` are cached (needs ``traj.sha256``)."""
    tag = hashlib.sha256(json.dumps([GRAPH_CACHE_VERSION, vars(params)], sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / f"graphs-{traj.sha256[:16]}-{tag}.npz"


def load_or_build_graphs(
    traj: Trajectory,
    params: GraphConfig,
    *,
    cache_dir: Path | None,
    progress: Callable[[int], None] | None = None,
) -> PackedGraphs:
    """Graphs of ``traj`` from the cache in ``cache_dir``, building and caching them if missing.

    Without a ``cache_dir`` or a file hash (an in-memory trajectory) the graphs
    are built and not cached. A corrupt cache file is rebuilt.
    """
    if cache_dir is None or not traj.sha256:
        return build_graphs(traj, params, progress=progress)
    path = graph_cache_path(cache_dir, traj, params)
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as npz:
                packed = PackedGraphs(*(torch.from_numpy(npz[name]) for name in PackedGraphs._fields))
            if packed.num_frames == traj.num_frames and packed.z.numel() == traj.num_atoms:
                if progress is not None:
                    progress(traj.num_frames)
                return packed
        except (OSError, ValueError, KeyError):
            pass
        log.warning("%s: graph cache unreadable or stale; rebuilding", path)
    packed = build_graphs(traj, params, progress=progress)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path, force=True) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **{name: t.numpy() for name, t in zip(PackedGraphs._fields, packed)})
    except (OSError, QdgapError) as exc:  # a cache we cannot write is not worth failing over
        log.warning("could not cache graphs at %s (%s)", path, exc)
    return packed
