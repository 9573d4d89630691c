"""ALIGNN band-gap model built from upstream ``alignn``'s pure-PyTorch layers.

Layout follows ``alignn.models.alignn_atomwise_pure``: embeddings (atom MLP,
bond and angle radial-basis expansions with MLPs), ALIGNN blocks (an
edge-gated convolution on the bond graph, then one on the line graph),
edge-gated graph convolutions, mean readout over atoms, one linear output
(``output_features`` wide: 1, the gap, for every qdgap run; more for multi-task
experiments such as ``bench/bench_multitask.py``).
Parameter and buffer names are upstream's, so a state dict moves between the
two; qdgap adds only the target statistics (``target_mean``, ``target_std``)
that put the output in eV. A ``best.pt`` holds them folded into the output
layer (``fold_target_stats``), so upstream's forward on it gives eV too.

The forward takes plain tensors (a batched graph and optional FNA masks) and
scripts with ``torch.jit.script``; training, export and FNA all call it.
"""

import functools
from collections.abc import Sequence

import numpy as np
import torch
from alignn.models.alignn_atomwise_pure import EdgeGatedGraphConvPure
from alignn.models.utils import MLPLayer, RBFExpansion
from torch import Tensor, nn
from torch.nn import functional as F

from qdgap.core.config import ModelConfig
from qdgap.kernels.batch import GraphBatch
from qdgap.kernels.scatter import scatter_mean, scatter_sum

MAX_Z = 119  # species table rows 0..119, as upstream's ``register_species_table``
MAX_FEATURIZED_Z = 100  # jarvis-tools has CGCNN features up to Fm; beyond it substitutes another element
BOND_RBF_RANGE_ANG = (0.0, 8.0)  # upstream's fixed bond-length basis range, Å
ANGLE_RBF_RANGE = (-1.0, 1.0)  # basis range over the bond-angle cosine


# =====================================================================
# Layers
# =====================================================================


class RadialBasis(RBFExpansion):
    """Upstream's radial basis expansion (same centres buffer, same width), with its exponent floored.

    Far-away centres give exponents down to -360; their exp underflows through
    subnormal floats, which is 10-30x slower on x86 and slows every matrix
    multiply those values reach. Flooring at -80 changes a basis value from 0
    to at most 1.8e-35.
    """

    def forward(self, distance: Tensor) -> Tensor:
        # Upstream's exp(-gamma * (d - c)**2), bit for bit (x**2 is x*x), in place on one (E, bins)
        # buffer: these are the widest tensors of a small model, and each new one costs a pass of memory.
        arg = distance.unsqueeze(1) - self.centers
        if distance.requires_grad:  # a gradient with respect to the geometry needs the intermediates
            return torch.exp((arg * arg * -self.gamma).clamp_min(-80.0))
        arg = arg.mul_(arg).mul_(-self.gamma)
        # -80: exp() below about -87 leaves the normal float range and takes a slow path.
        return arg.clamp_min_(-80.0).exp_()


class EdgeGatedConv(EdgeGatedGraphConvPure):
    """Upstream's edge-gated graph convolution, same parameters, fused for speed.

    The four linear maps of the node features (``src_gate``, ``dst_gate``,
    ``dst_update``, ``src_update``) run as one matrix multiply, and the edge
    gate's product is accumulated onto the gathered node gates in one addmm.
    The maths is upstream's ``forward_tensors`` (tested to float tolerance).
    """

    def forward_tensors(
        self, src: Tensor, dst: Tensor, num_nodes: int, x: Tensor, y: Tensor, update_edges: bool = True
    ) -> tuple[Tensor, Tensor]:
        """One convolution.

        Args:
            src, dst: (E,) int64 edge endpoints.
            num_nodes: N.
            x: (N, H) node features.
            y: (E, H) edge features.
            update_edges: False returns ``y`` as it came, for a last layer whose edges nothing reads.

        Returns:
            Updated (x (N, H), y (E, H)).
        """
        weight = torch.cat(
            [self.src_gate.weight, self.dst_gate.weight, self.dst_update.weight, self.src_update.weight], 0
        )
        # The edge gate's bias rides on the source gate's, so m below is one addmm onto the gathered sum.
        bias = torch.cat(
            [self.src_gate.bias + self.edge_gate.bias, self.dst_gate.bias, self.dst_update.bias, self.src_update.bias],
            0,
        )
        proj = torch.addmm(bias, x, weight.t())  # (N, 4H)
        # chunk, not four narrow()s: its backward is one cat of the four gradients, where each
        # narrow's backward zero-fills a whole (N, 4H) buffer and autograd then adds the four
        # (measured: 20 % of a paper-size training step went to those fills and adds).
        e_src, e_dst, bh, x_self = proj.chunk(4, 1)
        m = torch.addmm(e_src.index_select(0, src) + e_dst.index_select(0, dst), y, self.edge_gate.weight.t())  # (E, H)
        sigma = torch.sigmoid(m)
        # Two scatters, not one of the two concatenated: the (E, 2H) concatenation cost more than the
        # second pass (paper model: inference +4 %, training +5 %).
        summed = scatter_sum(bh.index_select(0, src) * sigma, dst, num_nodes)
        norm = scatter_sum(sigma, dst, num_nodes)
        x_new = x_self + summed / (norm + 1e-6)
        x_new = F.silu(self.bn_nodes(x_new))
        if self.residual:
            x_new = x + x_new
        if not update_edges:
            return x_new, y
        y_new = F.silu(self.bn_edges(m))
        if self.residual:
            y_new = y + y_new
        return x_new, y_new


class ALIGNNConv(nn.Module):
    """ALIGNN block: convolve the bond graph, then the line graph (upstream's ``ALIGNNConvPure``)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.node_update = EdgeGatedConv(in_features, out_features)
        self.edge_update = EdgeGatedConv(out_features, out_features)

    def forward_tensors(
        self,
        g_src: Tensor,
        g_dst: Tensor,
        num_nodes: int,
        lg_src: Tensor,
        lg_dst: Tensor,
        num_edges: int,
        x: Tensor,
        y: Tensor,
        z: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Update atoms x (N, H), bonds y (E, H) and angles z (T, H)."""
        x, m = self.node_update.forward_tensors(g_src, g_dst, num_nodes, x, y)
        y, z = self.edge_update.forward_tensors(lg_src, lg_dst, num_edges, m, z)
        return x, y, z


# =====================================================================
# Helpers
# =====================================================================


@functools.lru_cache(maxsize=4)
def species_table(atom_features: str, num_features: int) -> np.ndarray:
    """(MAX_Z + 1, num_features) float32 atom features by atomic number, as upstream builds them.

    Rows of elements jarvis-tools has no features for stay zero.
    """
    import contextlib
    import io

    from ase.data import chemical_symbols
    from jarvis.core.specie import get_node_attributes

    rows = np.zeros((MAX_Z + 1, num_features), dtype=np.float32)
    for z in range(1, MAX_FEATURIZED_Z + 1):
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # jarvis prints its warnings
                feat = np.asarray(
                    get_node_attributes(chemical_symbols[z], atom_features=atom_features), dtype=np.float32
                )
        except Exception:  # jarvis raises assorted errors for elements it lacks
            continue
        if feat.shape == (num_features,):
            rows[z] = feat
    return rows


# =====================================================================
# Model
# =====================================================================


class GapModel(nn.Module):
    """ALIGNN predicting one band gap (eV) per graph.

    With ``output_features`` K > 1 the readout gives K targets per graph, each with its own
    ``target_mean``/``target_std`` (shape (K,)); with K = 1 (every qdgap run) they are scalars and
    the forward is the single-target one, unchanged.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        c = config
        self.atom_embedding = MLPLayer(c.atom_input_features, c.hidden_features)
        self.edge_embedding = nn.Sequential(
            RadialBasis(vmin=BOND_RBF_RANGE_ANG[0], vmax=BOND_RBF_RANGE_ANG[1], bins=c.edge_input_features),
            MLPLayer(c.edge_input_features, c.embedding_features),
            MLPLayer(c.embedding_features, c.hidden_features),
        )
        self.angle_embedding = nn.Sequential(
            RadialBasis(vmin=ANGLE_RBF_RANGE[0], vmax=ANGLE_RBF_RANGE[1], bins=c.triplet_input_features),
            MLPLayer(c.triplet_input_features, c.embedding_features),
            MLPLayer(c.embedding_features, c.hidden_features),
        )
        self.alignn_layers = nn.ModuleList(
            [ALIGNNConv(c.hidden_features, c.hidden_features) for _ in range(c.alignn_layers)]
        )
        self.gcn_layers = nn.ModuleList(
            [EdgeGatedConv(c.hidden_features, c.hidden_features) for _ in range(c.gcn_layers)]
        )
        self.fc = nn.Linear(c.hidden_features, c.output_features)
        # The feature table is a buffer, so an exported model takes atomic numbers alone.
        table = species_table(c.atom_features, c.atom_input_features)
        self.register_buffer("_species_table", torch.from_numpy(table.copy()))
        # Training runs on standardised targets; these map the output back to eV. () for one target
        # (the layout of every checkpoint), (K,) for K targets.
        stats_shape = () if c.output_features == 1 else (c.output_features,)
        self.register_buffer("target_mean", torch.zeros(stats_shape, dtype=torch.float32))
        self.register_buffer("target_std", torch.ones(stats_shape, dtype=torch.float32))

    def set_target_stats(self, mean_ev: float | Sequence[float], std_ev: float | Sequence[float]) -> None:
        """Set the training targets' mean and std (eV) that the output is scaled by: one number per target."""
        shape = self.target_mean.shape
        mean = torch.as_tensor(np.asarray(mean_ev, dtype=np.float64)).reshape(shape)
        std = torch.as_tensor(np.asarray(std_ev, dtype=np.float64)).reshape(shape).clamp_min(1e-6)
        self.target_mean.copy_(mean)  # rounded to float32 as fill_(float) rounds
        self.target_std.copy_(std)

    def forward(
        self,
        z: Tensor,  # (n,) int64 atomic numbers
        edge_src: Tensor,  # (e,) int64
        edge_dst: Tensor,  # (e,) int64
        bond_len: Tensor,  # (e,) float32, Å
        lg_src: Tensor,  # (t,) int64, bond index
        lg_dst: Tensor,  # (t,) int64, bond index
        angle_cos: Tensor,  # (t,) float32
        node_graph: Tensor,  # (n,) int64, graph of each atom
        num_graphs: int,
        node_mask: Tensor | None = None,  # (n,) float, 0 nullifies the atom's input features
        edge_mask: Tensor | None = None,  # (e,) float, 0 nullifies the bond's basis features
        angle_mask: Tensor | None = None,  # (t,) float, 0 nullifies the angle's basis features
    ) -> Tensor:
        """Band gap of each graph, eV, shape (num_graphs,); (num_graphs, K) for K output features."""
        x, y, a = self.embed(z, bond_len, angle_cos, node_mask, edge_mask, angle_mask)
        return self.propagate(x, y, a, edge_src, edge_dst, lg_src, lg_dst, node_graph, num_graphs)

    @torch.jit.export
    def embed(
        self,
        z: Tensor,
        bond_len: Tensor,
        angle_cos: Tensor,
        node_mask: Tensor | None = None,
        edge_mask: Tensor | None = None,
        angle_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Input features: atoms (n, H), bonds (e, H), angles (t, H); each row depends on its own inputs only.

        Args as ``forward``. FNA computes a frame's rows once and tiles them over its masked copies.
        """
        atom_in = self._species_table.index_select(0, z)  # (n, F)
        if node_mask is not None:
            atom_in = atom_in * node_mask.unsqueeze(1)
        x = self.atom_embedding(atom_in)  # (n, H)
        bond_in = self.edge_embedding[0](bond_len)  # (e, bond bins)
        if edge_mask is not None:
            bond_in = bond_in * edge_mask.unsqueeze(1)
        y = self.edge_embedding[2](self.edge_embedding[1](bond_in))  # (e, H)
        angle_in = self.angle_embedding[0](angle_cos)  # (t, angle bins)
        if angle_mask is not None:
            angle_in = angle_in * angle_mask.unsqueeze(1)
        a = self.angle_embedding[2](self.angle_embedding[1](angle_in))  # (t, H)
        return x, y, a

    @torch.jit.export
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
        """Message passing and readout from embedded features (``embed``); (num_graphs,) or (num_graphs, K) eV."""
        num_nodes = x.shape[0]
        num_edges = y.shape[0]
        for layer in self.alignn_layers:
            x, y, a = layer.forward_tensors(edge_src, edge_dst, num_nodes, lg_src, lg_dst, num_edges, x, y, a)
        last = len(self.gcn_layers) - 1
        for i, layer in enumerate(self.gcn_layers):
            # The readout sees atoms only: the last layer's bond update (E x H of norm and SiLU) is skipped.
            x, y = layer.forward_tensors(edge_src, edge_dst, num_nodes, x, y, i < last)
        h = scatter_mean(x, node_graph, num_graphs)  # (B, H)
        out = self.fc(h).squeeze(1)  # (B,); (B, K) for K > 1 outputs, scaled per column by the (K,) stats
        return out * self.target_std + self.target_mean

    @torch.jit.ignore
    def predict_batch(self, batch: GraphBatch) -> Tensor:
        """``forward`` on a ``GraphBatch``; (B,) eV."""
        return self(*batch)

    @torch.jit.ignore
    def freeze(self, *, blocks: int, embeddings: bool = True) -> list[str]:
        """Freeze the embeddings and the first ``blocks`` ALIGNN blocks; return the frozen parameter names."""
        frozen: list[str] = []
        prefixes = [f"alignn_layers.{i}." for i in range(blocks)]
        if embeddings:
            prefixes += ["atom_embedding.", "edge_embedding.", "angle_embedding."]
        for name, p in self.named_parameters():
            if any(name.startswith(pre) for pre in prefixes):
                p.requires_grad_(False)
                frozen.append(name)
        return frozen


def gap_only_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A K-output model's state (gap first) as the one-output gap model's: ``fc`` row 0 and the gap's statistics.

    The other columns (band edges) only shaped the shared layers during training; what every later step
    (predict, FNA, export, fine-tuning) loads is this, an ordinary one-output ``GapModel`` state.
    """
    out = dict(state)
    out["fc.weight"] = state["fc.weight"][:1].clone()
    out["fc.bias"] = state["fc.bias"][:1].clone()
    out["target_mean"] = state["target_mean"].reshape(-1)[0].clone()
    out["target_std"] = state["target_std"].reshape(-1)[0].clone()
    return out


UPSTREAM_EXTRA_BUFFERS = ("target_mean", "target_std")  # qdgap's buffers that upstream ALIGNN lacks
# In a best.pt: the training targets' mean and std (eV), folded into the output layer (see fold_target_stats).
FOLDED_STATS = ("folded_target_mean", "folded_target_std")


def fold_target_stats(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A ``GapModel`` state dict as ``best.pt`` holds it: the output layer predicts eV by itself.

    Upstream ``ALIGNNAtomWisePure`` knows nothing of ``target_mean`` and
    ``target_std``, so the standardisation is folded into ``fc`` (w' = w std,
    b' = b std + mean, in float64, then rounded back; with K outputs, row k by
    target k's statistics): upstream's forward on these weights gives the gap in
    eV, and so does qdgap's, with ``target_mean`` 0 and ``target_std`` 1. The statistics stay under ``FOLDED_STATS``, for
    ``unfold_target_stats`` to restore the standardised parameters that training
    and fine-tuning continue from.

    Args:
        state: the model's own state dict (standardised output layer).

    Returns:
        A new dict; upstream loads it with ``strict=False`` (the four qdgap keys
        unexpected) or, without them, strictly.
    """
    out = {k: v.detach().clone() for k, v in state.items()}
    mean, std = state["target_mean"].double(), state["target_std"].double()
    w, b = state["fc.weight"], state["fc.bias"]
    out["fc.weight"] = (w.double() * std.reshape(-1, 1)).to(w.dtype)  # (K, H) rows by (K,) or () stats
    out["fc.bias"] = (b.double() * std + mean).to(b.dtype)
    out["target_mean"] = torch.zeros_like(state["target_mean"])
    out["target_std"] = torch.ones_like(state["target_std"])
    out[FOLDED_STATS[0]], out[FOLDED_STATS[1]] = state["target_mean"].clone(), state["target_std"].clone()
    return out


def unfold_target_stats(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The ``GapModel`` state dict of a ``best.pt``, standardised output layer restored.

    The inverse of ``fold_target_stats`` (to float32 rounding: predictions agree
    to about 1e-7 eV). A state without ``FOLDED_STATS`` (a ``best.pt`` written
    before the folding, or upstream's own weights) is returned as it is.
    """
    if FOLDED_STATS[0] not in state:
        return dict(state)
    out = {k: v for k, v in state.items() if k not in FOLDED_STATS}
    mean, std = state[FOLDED_STATS[0]], state[FOLDED_STATS[1]]
    w, b = state["fc.weight"], state["fc.bias"]
    out["fc.weight"] = (w.double() / std.double().reshape(-1, 1)).to(w.dtype)
    out["fc.bias"] = ((b.double() - mean.double()) / std.double()).to(b.dtype)
    out["target_mean"], out["target_std"] = mean.clone(), std.clone()
    return out


def upstream_state_dict(model: GapModel) -> dict[str, Tensor]:
    """A state dict that upstream ``ALIGNNAtomWisePure`` loads strictly and whose output is in eV."""
    folded = fold_target_stats(model.state_dict())
    return {k: v for k, v in folded.items() if k not in UPSTREAM_EXTRA_BUFFERS + FOLDED_STATS}
