"""The whole ensemble in one forward: M members' ALIGNN weights stacked on a leading axis.

Every member runs the same maths (``core.model.GapModel``: embeddings, ALIGNN
blocks, edge-gated convolutions, mean readout) on the same graphs, so their
weights can be stacked and each layer run once for all members: linear maps
as batched matrix products (``baddbmm``, one (rows, in) x (in, out) product per
member), gathers and scatters over the members' rows flattened into one index
(each member's rows offset by its row count), norms and activations over the
(M, rows, H) tensor. The members' shared inputs (atomic features, the radial
basis of bond lengths and angle cosines, graph assembly, the FNA masks) are
computed once instead of M times.

``torch.func.vmap`` over ``functional_call(GapModel)`` gives the same numbers
once the model's in-place ``index_add_`` is made out of place, but measured
2x slower than member-by-member on a CPU (demo model, 20 members x 8 frames:
392 vs 875 member-frames/s); this explicit form is what the benchmark
(``bench/bench_ensemble_forward.py``) compares instead.

Shapes: M members, B graphs, n atoms, e bonds, t angle triplets in the batch,
H hidden features. Kernels import neither ``core`` nor ``cli``: the weights
come in as state dicts with ``GapModel``'s parameter names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor
from torch.nn import functional as F

from qdgap.kernels.batch import GraphBatch
from qdgap.kernels.fna import MODES, MaskedBatch, tile_masked

# ``GapModel``'s norms are torch ``LayerNorm``s with the default epsilon; the convolution divides the
# gated sum by the gates' sum plus this (upstream's ``EdgeGatedGraphConvPure``).
LAYER_NORM_EPS = 1e-5
GATE_EPS = 1e-6
# The radial basis floor of ``core.model.RadialBasis`` (exp() below about -87 takes a slow path).
RBF_EXPONENT_FLOOR = -80.0


@dataclass(frozen=True)
class _Linear:
    weight_t: Tensor  # (M, in, out), each member's weight transposed for baddbmm
    bias: Tensor  # (M, 1, out)

    def __call__(self, x: Tensor) -> Tensor:
        """(M, r, in) -> (M, r, out)."""
        return torch.baddbmm(self.bias, x, self.weight_t)


@dataclass(frozen=True)
class _SharedLinear:
    """A linear map of an input every member shares (the atoms' features, a basis expansion)."""

    weight: Tensor  # (in, M * out), the members' weights side by side
    bias: Tensor  # (M * out,)
    members: int

    def __call__(self, x: Tensor) -> Tensor:
        """(r, in) -> (r, M, out): one matrix product for all members."""
        return torch.addmm(self.bias, x, self.weight).view(x.shape[0], self.members, -1)


@dataclass(frozen=True)
class _Norm:
    weight: Tensor  # (M, 1, H)
    bias: Tensor  # (M, 1, H)

    def __call__(self, x: Tensor) -> Tensor:
        """LayerNorm over the last axis with each member's affine map, then SiLU; (M, r, H)."""
        h = F.layer_norm(x, (x.shape[-1],), None, None, LAYER_NORM_EPS)
        # In place: on a CPU these (M, r, H) tensors outgrow the cache, and each new one costs a pass of memory.
        return F.silu(torch.addcmul(self.bias, h, self.weight, out=h), inplace=True)


@dataclass(frozen=True)
class _Conv:
    """One edge-gated graph convolution (``core.model.EdgeGatedConv``), stacked."""

    # (M, in, 4H): [src_gate | dst_update | dst_gate | src_update]. Gates and update gathered at a bond's
    # source sit side by side, so one row of 2H holds both (see ``forward``).
    node_weight_t: Tensor
    node_bias: Tensor  # (M, 1, 4H); the edge gate's bias rides on the source gate's
    edge_weight_t: Tensor  # (M, in, H)
    norm_nodes: _Norm
    norm_edges: _Norm

    def forward(
        self, src: _Index, dst: _Index, x: Tensor, y: Tensor, update_edges: bool = True
    ) -> tuple[Tensor, Tensor]:
        """Update atoms x (M, n, H) and bonds y (M, e, H) along bonds src -> dst."""
        m_, n, h = x.shape
        proj = torch.baddbmm(self.node_bias, x, self.node_weight_t)  # (M, n, 4H)
        # Row 2r of proj viewed as (2 M n, 2H) is atom r's [src_gate | dst_update]; row 4r + 2 of it viewed
        # as (4 M n, H) is atom r's dst_gate: contiguous rows, so both gathers take the fast path.
        at_src = proj.view(2 * m_ * n, 2 * h).index_select(0, src.flat * 2).view(m_, -1, 2 * h)  # (M, e, 2H)
        at_dst = proj.view(4 * m_ * n, h).index_select(0, dst.flat * 4 + 2).view(m_, -1, h)  # (M, e, H)
        gate = torch.baddbmm(at_src[..., :h] + at_dst, y, self.edge_weight_t)  # (M, e, H)
        sigma = torch.sigmoid(gate)
        summed = dst.scatter_sum(at_src[..., h:] * sigma, n)  # (M, n, H)
        norm = dst.scatter_sum(sigma, n)
        x_new = x + self.norm_nodes(proj[..., 3 * h :] + summed / (norm + GATE_EPS))  # residual
        if not update_edges:
            return x_new, y
        return x_new, y + self.norm_edges(gate)


@dataclass(frozen=True)
class _Index:
    """An index over one member's rows, and the same index over all M members' rows flattened."""

    flat: Tensor  # (M * k,) int64; member j's entries offset by j * rows

    @staticmethod
    def of(index: Tensor, members: int, rows: int) -> _Index:
        offsets = torch.arange(members, dtype=index.dtype, device=index.device).unsqueeze(1) * rows  # (M, 1)
        return _Index((index.unsqueeze(0) + offsets).reshape(-1))

    def gather(self, x: Tensor) -> Tensor:
        """Rows of x (M, r, H) -> (M, k, H)."""
        m_, r, h = x.shape
        return x.reshape(m_ * r, h).index_select(0, self.flat).view(m_, -1, h)

    def scatter_sum(self, src: Tensor, rows: int) -> Tensor:
        """Sum src (M, k, H) into (M, rows, H) buckets; empty buckets are 0."""
        m_, k, h = src.shape
        out = torch.zeros(m_ * rows, h, dtype=src.dtype, device=src.device)
        return out.index_add_(0, self.flat, src.reshape(m_ * k, h)).view(m_, rows, h)


def _radial_basis(values: Tensor, centers: Tensor, gamma: float) -> Tensor:
    """``core.model.RadialBasis`` (no gradient path): (r,) -> (r, bins)."""
    arg = values.unsqueeze(1) - centers
    return arg.mul_(arg).mul_(-gamma).clamp_min_(RBF_EXPONENT_FLOOR).exp_()


class StackedGapModel:
    """M ``GapModel``s of one configuration as one model: ``model(*graph_batch)`` gives (M, B) gaps, eV.

    Built by ``StackedGapModel.from_states``; holds only tensors (on one device) and sizes.
    """

    def __init__(
        self,
        *,
        species_table: Tensor,
        bond_centers: Tensor,
        angle_centers: Tensor,
        bond_gamma: float,
        angle_gamma: float,
        atom_embedding: tuple[_SharedLinear, _Norm],
        edge_embedding: tuple[_SharedLinear, _Norm, _Linear, _Norm],
        angle_embedding: tuple[_SharedLinear, _Norm, _Linear, _Norm],
        alignn_layers: tuple[tuple[_Conv, _Conv], ...],
        gcn_layers: tuple[_Conv, ...],
        fc: _Linear,
        target_mean: Tensor,
        target_std: Tensor,
        num_members: int,
    ):
        self.species_table = species_table  # (Z, F)
        self.bond_centers, self.angle_centers = bond_centers, angle_centers  # (bins,)
        self.bond_gamma, self.angle_gamma = bond_gamma, angle_gamma
        self.atom_embedding = atom_embedding
        self.edge_embedding = edge_embedding
        self.angle_embedding = angle_embedding
        self.alignn_layers = alignn_layers
        self.gcn_layers = gcn_layers
        self.fc = fc
        self.target_mean, self.target_std = target_mean, target_std  # (M, 1) eV
        self.num_members = num_members

    @classmethod
    def from_states(
        cls,
        states: Sequence[Mapping[str, Tensor]],
        *,
        alignn_layers: int,
        gcn_layers: int,
        bond_gamma: float,
        angle_gamma: float,
        device: torch.device | str = "cpu",
    ) -> StackedGapModel:
        """Stack the members' ``GapModel.state_dict()``s (standardised output layer, ``target_mean``/``target_std``).

        Args:
            states: one state dict per member, all of one configuration (equal shapes).
            alignn_layers, gcn_layers: the configuration's block counts.
            bond_gamma, angle_gamma: the radial bases' widths (``RadialBasis.gamma``), 1/Å and 1.
            device: where the stacked weights live.

        Raises:
            ValueError: no states, keys or shapes that differ, or members whose fixed buffers (species
                table, basis centres) differ: such members cannot share one forward.
        """
        if not states:
            raise ValueError("no members to stack")
        keys = list(states[0])
        for i, s in enumerate(states[1:], 1):
            if list(s) != keys or any(s[k].shape != states[0][k].shape for k in keys):
                raise ValueError(f"member {i} has other parameters or shapes than member 0; stack equal configurations")
        for k in ("_species_table", "edge_embedding.0.centers", "angle_embedding.0.centers"):
            if any(not torch.equal(s[k], states[0][k]) for s in states[1:]):
                raise ValueError(f"members differ in {k}; they cannot share one forward")
        m_ = len(states)

        def stacked(key: str) -> Tensor:
            return torch.stack([s[key].detach() for s in states]).to(device=device, dtype=torch.float32)

        def linear(prefix: str) -> _Linear:
            return _Linear(
                stacked(f"{prefix}.weight").transpose(1, 2).contiguous(), stacked(f"{prefix}.bias").unsqueeze(1)
            )

        def shared(prefix: str) -> _SharedLinear:
            w = stacked(f"{prefix}.weight")  # (M, out, in)
            return _SharedLinear(torch.cat(list(w), 0).t().contiguous(), stacked(f"{prefix}.bias").reshape(-1), m_)

        def norm(prefix: str) -> _Norm:
            return _Norm(stacked(f"{prefix}.weight").unsqueeze(1), stacked(f"{prefix}.bias").unsqueeze(1))

        def conv(prefix: str) -> _Conv:
            parts = ("src_gate", "dst_update", "dst_gate", "src_update")
            weight = torch.cat([stacked(f"{prefix}.{p}.weight") for p in parts], 1)  # (M, 4H, in)
            biases = [stacked(f"{prefix}.{p}.bias") for p in parts]
            biases[0] = biases[0] + stacked(f"{prefix}.edge_gate.bias")
            return _Conv(
                weight.transpose(1, 2).contiguous(),
                torch.cat(biases, 1).unsqueeze(1),
                stacked(f"{prefix}.edge_gate.weight").transpose(1, 2).contiguous(),
                norm(f"{prefix}.bn_nodes"),
                norm(f"{prefix}.bn_edges"),
            )

        def embedding(prefix: str) -> tuple[_SharedLinear, _Norm, _Linear, _Norm]:
            return (
                shared(f"{prefix}.1.layer.0"),
                norm(f"{prefix}.1.layer.1"),
                linear(f"{prefix}.2.layer.0"),
                norm(f"{prefix}.2.layer.1"),
            )

        first = states[0]
        return cls(
            species_table=first["_species_table"].to(device=device, dtype=torch.float32),
            bond_centers=first["edge_embedding.0.centers"].to(device=device, dtype=torch.float32),
            angle_centers=first["angle_embedding.0.centers"].to(device=device, dtype=torch.float32),
            bond_gamma=float(bond_gamma),
            angle_gamma=float(angle_gamma),
            atom_embedding=(shared("atom_embedding.layer.0"), norm("atom_embedding.layer.1")),
            edge_embedding=embedding("edge_embedding"),
            angle_embedding=embedding("angle_embedding"),
            alignn_layers=tuple(
                (conv(f"alignn_layers.{i}.node_update"), conv(f"alignn_layers.{i}.edge_update"))
                for i in range(alignn_layers)
            ),
            gcn_layers=tuple(conv(f"gcn_layers.{i}") for i in range(gcn_layers)),
            fc=linear("fc"),
            target_mean=stacked("target_mean").reshape(m_, 1),
            target_std=stacked("target_std").reshape(m_, 1),
            num_members=m_,
        )

    def __call__(
        self,
        z: Tensor,  # (n,) int64
        edge_src: Tensor,  # (e,) int64
        edge_dst: Tensor,  # (e,) int64
        bond_len: Tensor,  # (e,) float32, Å
        lg_src: Tensor,  # (t,) int64
        lg_dst: Tensor,  # (t,) int64
        angle_cos: Tensor,  # (t,) float32
        node_graph: Tensor,  # (n,) int64
        num_graphs: int,
        node_mask: Optional[Tensor] = None,  # (n,) float, 0 nullifies the atom's input features
        edge_mask: Optional[Tensor] = None,  # (e,) float, 0 nullifies the bond's basis features
        angle_mask: Optional[Tensor] = None,  # (t,) float, 0 nullifies the angle's basis features
    ) -> Tensor:
        """Band gap of each graph by each member, (M, B) float32, eV (``GapModel.forward``'s arguments)."""
        x, y, a = self.embed(z, bond_len, angle_cos, node_mask, edge_mask, angle_mask)
        return self.propagate(x, y, a, edge_src, edge_dst, lg_src, lg_dst, node_graph, num_graphs)

    def embed(
        self,
        z: Tensor,
        bond_len: Tensor,
        angle_cos: Tensor,
        node_mask: Optional[Tensor] = None,
        edge_mask: Optional[Tensor] = None,
        angle_mask: Optional[Tensor] = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Input features of every member: atoms (M, n, H), bonds (M, e, H), angles (M, t, H).

        The members share the inputs before the first linear map (atomic features, radial bases,
        masks), which are computed once.
        """
        atom_in = self.species_table.index_select(0, z)  # (n, F)
        if node_mask is not None:
            atom_in = atom_in * node_mask.unsqueeze(1)
        lin, norm = self.atom_embedding
        x = norm(lin(atom_in).transpose(0, 1))  # (M, n, H); layer_norm writes it member-major
        bond_in = _radial_basis(bond_len, self.bond_centers, self.bond_gamma)  # (e, bond bins)
        if edge_mask is not None:
            bond_in = bond_in * edge_mask.unsqueeze(1)
        angle_in = _radial_basis(angle_cos, self.angle_centers, self.angle_gamma)  # (t, angle bins)
        if angle_mask is not None:
            angle_in = angle_in * angle_mask.unsqueeze(1)
        return (
            x,
            self._basis_embedding(self.edge_embedding, bond_in),
            self._basis_embedding(self.angle_embedding, angle_in),
        )

    @staticmethod
    def _basis_embedding(layers: tuple[_SharedLinear, _Norm, _Linear, _Norm], basis: Tensor) -> Tensor:
        """(r, bins) shared basis -> (M, r, H)."""
        lin1, norm1, lin2, norm2 = layers
        return norm2(lin2(norm1(lin1(basis).transpose(0, 1))))

    def propagate(
        self,
        x: Tensor,
        y: Tensor,
        a: Tensor,
        edge_src: Tensor,
        edge_dst: Tensor,
        lg_src: Tensor,
        lg_dst: Tensor,
        node_graph: Tensor,
        num_graphs: int,
    ) -> Tensor:
        """Message passing and readout from embedded features (``embed``); (M, B) eV."""
        m_, n, _ = x.shape
        e = y.shape[1]
        # The flattened indices are built once per forward and shared by every layer.
        src, dst = _Index.of(edge_src, m_, n), _Index.of(edge_dst, m_, n)
        lsrc, ldst = _Index.of(lg_src, m_, e), _Index.of(lg_dst, m_, e)
        for node_update, edge_update in self.alignn_layers:
            x, m = node_update.forward(src, dst, x, y)
            y, a = edge_update.forward(lsrc, ldst, m, a)
        last = len(self.gcn_layers) - 1
        for i, layer in enumerate(self.gcn_layers):
            x, y = layer.forward(src, dst, x, y, i < last)  # the readout reads atoms only
        graph = _Index.of(node_graph, m_, num_graphs)
        count = torch.zeros(num_graphs, dtype=x.dtype, device=x.device)
        count.index_add_(0, node_graph, torch.ones(n, dtype=x.dtype, device=x.device))
        h = graph.scatter_sum(x, num_graphs) / count.clamp_min(1.0).view(1, -1, 1)  # (M, B, H) mean over atoms
        out = self.fc(h).squeeze(2)  # (M, B)
        return out * self.target_std + self.target_mean


def ensemble_predict(model: StackedGapModel, batch: GraphBatch) -> Tensor:
    """Every member's gap of every graph of ``batch``; (M, B) float32, eV."""
    with torch.inference_mode():
        return model(*batch)


def ensemble_fna_masked_gaps(
    model: StackedGapModel,
    base: GraphBatch,
    *,
    num_atoms: int,
    mode: str = "full",
    chunk_size: int = 17,
    progress: Optional[Callable[[int], None]] = None,
) -> Tensor:
    """``kernels.fna.fna_masked_gaps`` for all members at once.

    Each frame is embedded once per member and its rows tiled over the masked copies; a nullified
    row (atom, bond, and in full mode angle) is gathered from one extra row appended to each member's
    table, the embedding of a nullified input, so the copies are built by one gather with no masked
    writes (and no host-device sync).

    Args:
        model: the stacked members.
        base: B frames of N = ``num_atoms`` atoms.
        mode: ``full`` or ``seed`` (``kernels.fna``).
        chunk_size: masked copies per forward, for all members together (M x chunk graphs per forward).
        progress: called with the masked evaluations done (members x copies) after each forward.

    Returns:
        (M, B, N + 1) float32, eV. Column 0 is the unmasked baseline; column i + 1 masks atom i.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    b, n = base.num_graphs, num_atoms
    dev = base.z.device
    copy_graph = torch.arange(b, device=dev).repeat_interleave(n + 1)  # (B*(N+1),) graph-major
    masked_atom = torch.arange(-1, n, device=dev).repeat(b)  # -1 is the unmasked copy
    out = []
    with torch.inference_mode():
        x0, y0, a0 = model.embed(base.z, base.bond_len, base.angle_cos, None, None, None)
        one = torch.ones(1, dtype=base.bond_len.dtype, device=dev)
        zero = torch.zeros_like(one)
        # Nullified rows, as kernels.fna's: an atom with zeroed features; a bond of 0 Å (seed) or with a
        # zeroed basis (full); an angle with a zeroed basis (full).
        if mode == "seed":
            x_null, y_null, a_null = model.embed(base.z[:1], zero, one, zero, None, zero)
        else:
            x_null, y_null, a_null = model.embed(base.z[:1], one, one, zero, zero, zero)
        x_ext = torch.cat([x0, x_null], 1)  # (M, n + 1, H); row n is the nullified atom
        y_ext = torch.cat([y0, y_null], 1)  # (M, e + 1, H)
        a_ext = torch.cat([a0, a_null], 1)  # (M, t + 1, H)
        rows_x, rows_y, rows_a = x0.shape[1], y0.shape[1], a0.shape[1]
        m_ = model.num_members

        def forward(tiled: MaskedBatch) -> Tensor:
            g = tiled.batch
            node_from = torch.where(tiled.node_mask == 0, rows_x, tiled.node_from)
            edge_from = torch.where(tiled.bond_keep == 0, rows_y, tiled.edge_from)
            angle_from = (
                tiled.angle_from if mode == "seed" else torch.where(tiled.angle_mask == 0, rows_a, tiled.angle_from)
            )
            x = _Index.of(node_from, m_, rows_x + 1).gather(x_ext)
            y = _Index.of(edge_from, m_, rows_y + 1).gather(y_ext)
            a = _Index.of(angle_from, m_, rows_a + 1).gather(a_ext)
            return model.propagate(x, y, a, g.edge_src, g.edge_dst, g.lg_src, g.lg_dst, g.node_graph, g.num_graphs)

        for start in range(0, b * (n + 1), chunk_size):
            sl = slice(start, start + chunk_size)
            out.append(forward(tile_masked(base, copy_graph[sl], masked_atom[sl], n, mode)).float())
            if progress is not None:
                progress(m_ * int(copy_graph[sl].numel()))
    return torch.cat(out, 1).view(m_, b, n + 1)
