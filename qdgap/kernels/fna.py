"""Feature Nullification Analysis: every atom of a frame nullified, all in one batched forward.

For each frame the batch holds the unmasked graph plus one copy per atom with
that atom nullified. Copies share the frame's topology, tiled with index
offsets; the nullification is expressed as mask tensors, so one forward
(chunked to bound memory) evaluates them all.

Modes (what "nullify atom a" means):

* ``full``: zero a's input node features, the basis-expanded input features
  of every bond that touches a, and the input features of every bond angle
  built on those bonds (the seed README's description).
* ``seed``: what the original ``predict_atom_imp.py`` did: zero a's input node
  features and give its bonds zero length before the basis expansion (so they
  carry the expansion of 0 Å); angles untouched.

``model`` is anything called as ``model(*graph_batch, node_mask, edge_mask,
angle_mask)`` returning one gap (eV) per graph: an eager ``GapModel``, a
loaded ``model.ts`` or an ONNX Runtime session. Where it also offers
``embed`` and ``propagate`` (``GapModel`` and its TorchScript export), the
work the copies share is skipped: each frame is embedded once and its rows
are tiled over the copies, with the nullified rows swapped in (measured on
the demo model: 1,548 -> 2,221 masked evaluations/s at 17 copies per forward).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import torch
from torch import Tensor

from qdgap.kernels.batch import GraphBatch, segment_ranges

MODES = ("full", "seed")
NO_ATOM = -1  # masked_atom of an unmasked copy


class MaskedBatch(NamedTuple):
    """Copies of graphs with masks ready for the model, and where each row of the copies comes from."""

    batch: GraphBatch
    node_mask: Optional[Tensor]  # (n,) float, 0 on the nullified atom
    edge_mask: Optional[Tensor]  # (e,) float, 0 on its bonds (full mode)
    angle_mask: Optional[Tensor]  # (t,) float, 0 on angles built on its bonds (full mode)
    node_from: Tensor  # (n,) int64, the base atom each copy atom repeats
    edge_from: Tensor  # (e,) int64, the base bond each copy bond repeats
    angle_from: Tensor  # (t,) int64, the base triplet each copy triplet repeats
    bond_keep: Tensor  # (e,) float, 0 on the bonds of the nullified atom (both modes)


def tile_masked(base: GraphBatch, copy_graph: Tensor, masked_atom: Tensor, num_atoms: int, mode: str) -> MaskedBatch:
    """Build C copies of graphs of ``base``; copy c is graph ``copy_graph[c]`` with atom ``masked_atom[c]`` nullified.

    Args:
        base: B graphs of ``num_atoms`` atoms each (a trajectory batch).
        copy_graph: (C,) int64, which graph each copy repeats.
        masked_atom: (C,) int64, the atom (local index) each copy nullifies, or ``NO_ATOM``.
        num_atoms: N, atoms per graph.
        mode: ``full`` or ``seed``.

    Returns:
        A ``MaskedBatch`` of C graphs, in the order of ``copy_graph``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    n = num_atoms
    b = base.num_graphs
    c = int(copy_graph.numel())
    dev = base.z.device
    # Bonds and triplets of each base graph are contiguous; find where each graph's run starts.
    graph_of_edge = base.node_graph.index_select(0, base.edge_src)  # (e,)
    e_count = torch.bincount(graph_of_edge, minlength=b)  # (B,)
    t_count = torch.bincount(graph_of_edge.index_select(0, base.lg_src), minlength=b)  # (B,)
    e_off = torch.cumsum(e_count, 0) - e_count
    t_off = torch.cumsum(t_count, 0) - t_count

    ec, tc = e_count[copy_graph], t_count[copy_graph]  # (C,) bonds and triplets of each copy
    copies = torch.arange(c, device=dev)
    eidx = segment_ranges(e_off[copy_graph], ec)  # (e_out,) source bond of each output bond
    tidx = segment_ranges(t_off[copy_graph], tc)  # (t_out,)
    copy_of_edge = torch.repeat_interleave(copies, ec, output_size=int(eidx.numel()))
    copy_of_angle = torch.repeat_interleave(copies, tc, output_size=int(tidx.numel()))
    # Atom numbering: copy c owns atoms c*N .. c*N + N-1; base graph g owned g*N ...
    node_shift = (copies - copy_graph) * n  # (C,)
    src = base.edge_src.index_select(0, eidx) + node_shift.index_select(0, copy_of_edge)
    dst = base.edge_dst.index_select(0, eidx) + node_shift.index_select(0, copy_of_edge)
    new_e_off = torch.cumsum(ec, 0) - ec  # (C,) first bond of each copy in the output
    edge_shift = (new_e_off - e_off[copy_graph]).index_select(0, copy_of_angle)
    lg_src = base.lg_src.index_select(0, tidx) + edge_shift
    lg_dst = base.lg_dst.index_select(0, tidx) + edge_shift
    node_from = (copy_graph.unsqueeze(1) * n + torch.arange(n, device=dev)).reshape(-1)  # (C*N,)
    z = base.z.index_select(0, node_from)
    node_graph = torch.repeat_interleave(copies, n)
    bond_len = base.bond_len.index_select(0, eidx)

    # Masks: the nullified atom, in the copy's numbering, and the bonds that touch it.
    target = masked_atom + copies * n  # (C,); negative or foreign for unmasked copies
    has_mask = masked_atom >= 0
    node_keep = torch.ones(c * n, dtype=bond_len.dtype, device=dev)
    node_keep[target[has_mask]] = 0.0
    atom_of_edge = target.index_select(0, copy_of_edge)
    bond_keep = ((src != atom_of_edge) & (dst != atom_of_edge)).to(bond_len.dtype)  # (e_out,)
    batch = GraphBatch(z, src, dst, bond_len, lg_src, lg_dst, base.angle_cos.index_select(0, tidx), node_graph, c)
    if mode == "seed":
        return MaskedBatch(
            batch._replace(bond_len=bond_len * bond_keep), node_keep, None, None, node_from, eidx, tidx, bond_keep
        )
    angle_keep = bond_keep.index_select(0, lg_src) * bond_keep.index_select(0, lg_dst)
    return MaskedBatch(batch, node_keep, bond_keep, angle_keep, node_from, eidx, tidx, bond_keep)


def _shared_embedding_forward(model: Any, base: GraphBatch, mode: str) -> Callable[[MaskedBatch], Tensor]:
    """A forward for masked copies of ``base`` that embeds ``base`` once and tiles its rows.

    Embedding rows depend on their own inputs only (``GapModel.embed``), so a copy's rows are the
    base frame's, except the nullified atom, its bonds and (full mode) their angles, whose rows are
    the embedding of a nullified input: computed once here, from a one-row input.
    """
    x0, y0, a0 = model.embed(base.z, base.bond_len, base.angle_cos, None, None, None)
    one = torch.ones(1, dtype=base.bond_len.dtype, device=base.z.device)
    zero = torch.zeros_like(one)
    # Nullified rows: an atom with zeroed features; a bond of 0 Å (seed) or with a zeroed basis (full);
    # an angle with a zeroed basis (full).
    if mode == "seed":
        x_null, y_null, a_null = model.embed(base.z[:1], zero, one, zero, None, zero)
    else:
        x_null, y_null, a_null = model.embed(base.z[:1], one, one, zero, zero, zero)

    def forward(tiled: MaskedBatch) -> Tensor:
        g = tiled.batch
        x = x0.index_select(0, tiled.node_from)
        x[tiled.node_mask == 0] = x_null[0]
        y = y0.index_select(0, tiled.edge_from)
        y[tiled.bond_keep == 0] = y_null[0]
        a = a0.index_select(0, tiled.angle_from)
        if mode == "full":
            a[tiled.angle_mask == 0] = a_null[0]
        return model.propagate(x, y, a, g.edge_src, g.edge_dst, g.lg_src, g.lg_dst, g.node_graph, g.num_graphs)

    return forward


def fna_masked_gaps(
    model: Callable[..., Tensor],
    base: GraphBatch,
    *,
    num_atoms: int,
    mode: str = "full",
    chunk_size: int = 256,
    progress: Optional[Callable[[int], None]] = None,
) -> Tensor:
    """Predict each frame unmasked and with each of its atoms nullified.

    Args:
        model: one trained ensemble member, in eval mode.
        base: B frames of N = ``num_atoms`` atoms, E bonds and T angle triplets. With a model that
            offers ``embed``, the embeddings of all B frames ((N + E + T) x hidden) are held during the call.
        mode: ``full`` or ``seed`` (module docstring).
        chunk_size: masked copies per forward; bounds peak memory.
        progress: called with the number of copies evaluated after each forward.

    Returns:
        (B, N + 1) float32, eV. Column 0 is the unmasked baseline; column i + 1 masks atom i.
    """
    b, n = base.num_graphs, num_atoms
    dev = base.z.device
    copy_graph = torch.arange(b, device=dev).repeat_interleave(n + 1)  # (B*(N+1),) graph-major
    masked_atom = torch.arange(-1, n, device=dev).repeat(b)  # -1 is the unmasked copy
    out = []
    with torch.inference_mode():
        if hasattr(model, "embed") and hasattr(model, "propagate"):
            forward = _shared_embedding_forward(model, base, mode)
        else:  # a back end with the plain forward only (ONNX Runtime, or a model.ts from before embed existed)
            forward = lambda t: model(*t.batch, t.node_mask, t.edge_mask, t.angle_mask)  # noqa: E731
        for start in range(0, b * (n + 1), chunk_size):
            sl = slice(start, start + chunk_size)
            out.append(forward(tile_masked(base, copy_graph[sl], masked_atom[sl], n, mode)).float())
            if progress is not None:
                progress(int(copy_graph[sl].numel()))
    return torch.cat(out).view(b, n + 1)


def fna_loop(model: Callable[..., Tensor], frame: GraphBatch, *, num_atoms: int, mode: str = "full") -> Tensor:
    """The reference: one forward per atom on a single frame, masks built directly on its graph.

    Args:
        frame: one graph (B = 1) of N atoms.

    Returns:
        (N + 1,) float32, eV, laid out as ``fna_masked_gaps``.
    """
    if frame.num_graphs != 1:
        raise ValueError("fna_loop takes one frame")
    results = []
    with torch.inference_mode():
        results.append(model(*frame, None, None, None).float())
        for atom in range(num_atoms):
            node_keep = torch.ones(num_atoms, dtype=frame.bond_len.dtype, device=frame.z.device)
            node_keep[atom] = 0.0
            bond_keep = ((frame.edge_src != atom) & (frame.edge_dst != atom)).to(frame.bond_len.dtype)
            if mode == "seed":
                results.append(
                    model(*frame._replace(bond_len=frame.bond_len * bond_keep), node_keep, None, None).float()
                )
            else:
                angle_keep = bond_keep[frame.lg_src] * bond_keep[frame.lg_dst]
                results.append(model(*frame, node_keep, bond_keep, angle_keep).float())
    return torch.cat(results)
