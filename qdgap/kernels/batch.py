"""Batched graphs as plain tensors, and their vectorised assembly from packed trajectory graphs.

A trajectory's graphs are kept packed: all frames' bonds in one array with a
per-frame pointer, indices local to the frame. A batch is the union of some
frames' graphs with indices offset into one numbering, built with tensor ops
only (no Python loop over frames).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class GraphBatch(NamedTuple):
    """B graphs with n atoms, e bonds and t angle triplets in total.

    Bonds are directed (both directions present). Angle triplet k joins bond
    ``lg_src[k]`` = (u -> v) and bond ``lg_dst[k]`` = (v -> w) at atom v.
    """

    z: Tensor  # (n,) int64 | atomic numbers
    edge_src: Tensor  # (e,) int64 | bond start atom
    edge_dst: Tensor  # (e,) int64 | bond end atom
    bond_len: Tensor  # (e,) float32, Å
    lg_src: Tensor  # (t,) int64 | first bond of the angle
    lg_dst: Tensor  # (t,) int64 | second bond of the angle
    angle_cos: Tensor  # (t,) float32 | cosine of the bond angle at the shared atom
    node_graph: Tensor  # (n,) int64 | graph of each atom, 0..B-1
    num_graphs: int  # B

    def to(self, device: torch.device | str) -> GraphBatch:
        """Move every tensor (non-blocking where the source is pinned)."""
        return GraphBatch(*(x.to(device, non_blocking=True) if isinstance(x, Tensor) else x for x in self))


class PackedGraphs(NamedTuple):
    """Graphs of F frames of one N-atom trajectory, packed; indices local to each frame."""

    z: Tensor  # (N,) int64
    edge_src: Tensor  # (E_all,) int64, 0..N-1
    edge_dst: Tensor  # (E_all,) int64, 0..N-1
    bond_len: Tensor  # (E_all,) float32, Å
    edge_ptr: Tensor  # (F + 1,) int64 | bonds of frame f are edge_ptr[f]:edge_ptr[f + 1]
    lg_src: Tensor  # (T_all,) int64 | index of the first bond within its frame
    lg_dst: Tensor  # (T_all,) int64
    angle_cos: Tensor  # (T_all,) float32
    lg_ptr: Tensor  # (F + 1,) int64

    @property
    def num_frames(self) -> int:
        return int(self.edge_ptr.numel()) - 1


def segment_ranges(starts: Tensor, counts: Tensor) -> Tensor:
    """Concatenate ``arange(starts[i], starts[i] + counts[i])`` for all i, without a loop.

    Args:
        starts: (K,) int64.
        counts: (K,) int64, non-negative.

    Returns:
        (counts.sum(),) int64.
    """
    total = int(counts.sum())
    seg_start = torch.cumsum(counts, 0) - counts  # (K,) where each segment begins in the output
    offset = torch.repeat_interleave(starts - seg_start, counts, output_size=total)
    return torch.arange(total, dtype=torch.int64, device=starts.device) + offset


def gather_frames(packed: PackedGraphs, frames: Tensor) -> GraphBatch:
    """Assemble one batch from the graphs of ``frames`` (in that order).

    Args:
        packed: the trajectory's packed graphs.
        frames: (B,) int64 frame indices.

    Returns:
        A ``GraphBatch`` whose graph b is frame ``frames[b]``.
    """
    num_atoms = int(packed.z.numel())
    b = int(frames.numel())
    e0, e1 = packed.edge_ptr[frames], packed.edge_ptr[frames + 1]
    t0, t1 = packed.lg_ptr[frames], packed.lg_ptr[frames + 1]
    ecount, tcount = e1 - e0, t1 - t0  # (B,)
    eidx = segment_ranges(e0, ecount)  # (e,)
    tidx = segment_ranges(t0, tcount)  # (t,)
    graph_ids = torch.arange(b, dtype=torch.int64, device=frames.device)
    node_off = torch.repeat_interleave(graph_ids * num_atoms, ecount)  # (e,)
    edge_off = torch.repeat_interleave(torch.cumsum(ecount, 0) - ecount, tcount)  # (t,)
    return GraphBatch(
        z=packed.z.repeat(b),
        edge_src=packed.edge_src[eidx] + node_off,
        edge_dst=packed.edge_dst[eidx] + node_off,
        bond_len=packed.bond_len[eidx],
        lg_src=packed.lg_src[tidx] + edge_off,
        lg_dst=packed.lg_dst[tidx] + edge_off,
        angle_cos=packed.angle_cos[tidx],
        node_graph=torch.repeat_interleave(graph_ids, num_atoms),
        num_graphs=b,
    )


# Bonds x hidden features per forward. On a CPU the elementwise work of the message passing is
# memory-bound: once a layer's tensors leave the cache, a larger batch is slower per frame. Measured
# in bench/results.md (2 cores): demo model 1,597 frames/s at batch 16 vs 445 at 256; paper model
# 38 frames/s at batch 1 vs 13 at 64; FNA best at 17 (demo) and 1-10 (paper) masked copies per
# forward. 400k puts both presets at those sizes. A GPU wants the opposite: enough work per launch.
CPU_FEATURE_BUDGET = 400_000
# Training splits each batch into micro-batches of this size and adds their gradients. Paper model,
# batch 64, 2 cores: 4.1 frames/s in one piece, 11.4 / 11.8 / 11.8 / 11.5 / 10.6 in micro-batches of
# 16 / 8 / 4 / 2 / 1 frames; the demo model (hidden 32) is fastest whole (batch 16: 394 vs 312 at 8).
# 1.5M gives the paper model 8 frames and leaves demo batches whole.
CPU_TRAIN_FEATURE_BUDGET = 1_500_000
GPU_FEATURE_BUDGET = 64_000_000


def graphs_per_forward(
    device_type: str, edges_per_graph: float, hidden_features: int, *, training: bool = False
) -> int:
    """Graphs (frames, or masked copies of one) per forward so that bonds x features fits the device.

    Args:
        device_type: ``"cpu"`` or ``"cuda"``.
        edges_per_graph: mean bonds per graph.
        hidden_features: the model's hidden width.
        training: size a training micro-batch (forward and backward) instead of an inference batch.
    """
    if device_type == "cuda":
        budget = GPU_FEATURE_BUDGET
    else:
        budget = CPU_TRAIN_FEATURE_BUDGET if training else CPU_FEATURE_BUDGET
    return int(max(1, min(4096, budget // (max(1.0, edges_per_graph) * hidden_features))))
