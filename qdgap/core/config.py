"""Presets and the resolved run configuration, as frozen dataclasses.

A run's ``config.json`` is ``RunConfig.to_json()``; its ``model`` section is a
valid upstream ``alignn_atomwise_pure`` model config, so weights and settings
move between qdgap and upstream ALIGNN.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, replace
from typing import Any

from qdgap.core.common.errors import QdgapError

CGCNN_FEATURES = 92  # length of the CGCNN atom feature vector (jarvis-tools)
PURE_TORCH = "pure_torch"  # upstream's neighbor_strategy names; see GraphConfig
K_NEAREST = "k-nearest"
NEIGHBOR_STRATEGIES = (PURE_TORCH, K_NEAREST)


@dataclass(frozen=True)
class ModelConfig:
    """ALIGNN sizes, with upstream ``ALIGNNAtomWisePureConfig`` field names."""

    alignn_layers: int = 4
    gcn_layers: int = 4
    atom_input_features: int = CGCNN_FEATURES
    edge_input_features: int = 80  # radial basis functions over bond length, 0-8 Å
    triplet_input_features: int = 40  # radial basis functions over the bond-angle cosine
    embedding_features: int = 64
    hidden_features: int = 256
    output_features: int = 1
    atom_features: str = "cgcnn"

    def to_upstream(self, *, three_body_cutoff_ang: float) -> dict[str, Any]:
        """A config ``ALIGNNAtomWisePureConfig(**...)`` accepts: graph-level output only."""
        return {
            "name": "alignn_atomwise_pure",
            "alignn_layers": self.alignn_layers,
            "gcn_layers": self.gcn_layers,
            "atom_input_features": self.atom_input_features,
            "edge_input_features": self.edge_input_features,
            "triplet_input_features": self.triplet_input_features,
            "embedding_features": self.embedding_features,
            "hidden_features": self.hidden_features,
            "output_features": self.output_features,
            # A band gap is an intensive graph property: no forces, no natoms scaling,
            # no short-bond penalty, no ZBL.
            "calculate_gradient": False,
            "gradwise_weight": 0.0,
            "energy_mult_natoms": False,
            "use_penalty": False,
            "use_zbl": False,
            "atomwise_output_features": 0,
            "link": "identity",
            "three_body_cutoff": three_body_cutoff_ang,
        }

    @classmethod
    def from_upstream(cls, model: dict[str, Any]) -> ModelConfig:
        """Read the sizes back from an upstream-style model section, refusing what qdgap cannot run."""
        name = model.get("name", "alignn_atomwise_pure")
        if name not in ("alignn_atomwise_pure", "alignn_atomwise"):
            raise QdgapError(f"model type {name!r} is not supported (qdgap runs alignn_atomwise_pure)")
        if model.get("conv_type", "alignn") != "alignn":
            raise QdgapError(f"conv_type {model.get('conv_type')!r} is not supported (only 'alignn')")
        if int(model.get("output_features", 1)) != 1:
            raise QdgapError(
                f"output_features={model.get('output_features')} is not supported (a band gap is one number)"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in model.items() if k in names})


@dataclass(frozen=True)
class GraphConfig:
    """How bonds and angles are chosen: upstream ALIGNN's builder parameters.

    ``neighbor_strategy`` takes the name of upstream's ``neighbor_strategy`` whose
    graphs qdgap reproduces:

    * ``"pure_torch"`` (``alignn.torch_graph_builder``): each atom's
      ``max_neighbors`` nearest atoms within ``cutoff_ang``; angle triplets only
      between bonds up to ``three_body_cutoff_ang``.
    * ``"k-nearest"`` (the DGL-era ``nearest_neighbor_edges`` and
      ``build_undirected_edgedata``, as the original study built its graphs):
      ``cutoff_ang`` is widened until every atom has ``max_neighbors``
      neighbours inside it, so each atom bonds to all atoms as near as its
      ``max_neighbors``-th nearest, whatever the cutoff. With ``use_canonize``
      (upstream ``TrainingConfig``'s default, so what ``train_alignn.py``
      trained on) each such pair is bonded once each way; without it every
      neighbour-list entry is added in both directions, so a pair in both
      atoms' lists is bonded twice each way (a multigraph; what a direct call
      of ``nearest_neighbor_edges`` gives by default). Triplets pair every two
      bonds (u -> v, v -> w), w == u included: ``three_body_cutoff_ang`` is not used.
    """

    cutoff_ang: float = 5.0  # bonds: the max_neighbors nearest atoms within this distance
    max_neighbors: int = 12
    three_body_cutoff_ang: float = 3.5  # only bonds this short form angle triplets (pure_torch only)
    neighbor_strategy: str = PURE_TORCH
    use_canonize: bool = False  # k-nearest only: one bond each way per neighbour pair

    def __post_init__(self) -> None:
        if self.neighbor_strategy not in NEIGHBOR_STRATEGIES:
            raise QdgapError(
                f"neighbor_strategy {self.neighbor_strategy!r} is not supported; "
                f"choose one of {', '.join(NEIGHBOR_STRATEGIES)}"
            )
        if self.use_canonize and self.neighbor_strategy != K_NEAREST:
            raise QdgapError("use_canonize applies to k-nearest graphs only")

    def to_json(self) -> dict[str, Any]:
        """The ``graph`` section of ``config.json``.

        The default strategy is left out, so the records (and graph caches) of runs
        made before the field existed still match.
        """
        out = dataclasses.asdict(self)
        if self.neighbor_strategy == PURE_TORCH:
            del out["neighbor_strategy"]
        if not self.use_canonize:
            del out["use_canonize"]
        return out

    def describe(self) -> str:
        """One line for people: how bonds and angles are chosen."""
        if self.neighbor_strategy == K_NEAREST:
            return (
                f"the {self.max_neighbors} nearest neighbours of each atom (upstream's k-nearest, cutoff "
                f"{self.cutoff_ang:g} Å widened, {'canonised' if self.use_canonize else 'not canonised'}), "
                "angles between all bonds"
            )
        return (
            f"cutoff {self.cutoff_ang:g} Å, {self.max_neighbors} neighbours, "
            f"angles within {self.three_body_cutoff_ang:g} Å"
        )


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule and stopping (upstream ALIGNN defaults unless a preset says otherwise)."""

    epochs: int = 300
    batch_size: int = 64
    learning_rate: float = 1e-2  # peak of the one-cycle schedule
    weight_decay: float = 0.0
    pct_start: float = 0.3  # fraction of the schedule spent warming up
    patience: int = 50  # epochs without a better validation MAE before stopping
    stride: int = 10  # labelled pool spacing in frames
    # Exactly these labelled frames form the pool (`--frames-from selection.csv`), stride then unused;
    # None: every stride-th labelled frame. Left out of config.json when None, so older runs still match.
    pool_frames: tuple[int, ...] | None = None
    # How the pool is cut (data/splits.py): "random" (the study's) or "blocked" (contiguous time blocks of
    # block_fs; None measures five correlation times of the pool's gaps). Left out of config.json at their
    # defaults, so older runs still match.
    split: str = "random"
    block_fs: float | None = None
    # What the member learns: the gap alone, or the gap beside the band edges it is made of (one readout
    # column each, each standardised; the mean of their L1 losses). Only the gap's column is kept in the
    # member's best.pt and model.ts, so every later step sees a one-output model. Left out of config.json
    # at its default, so older runs still match. What it buys: see the sparse preset.
    targets: tuple[str, ...] = ("gap",)

    def __post_init__(self) -> None:
        if self.pool_frames is not None:  # JSON gives a list; a frozen config keeps a hashable tuple
            object.__setattr__(self, "pool_frames", tuple(int(f) for f in self.pool_frames))
        object.__setattr__(self, "targets", tuple(str(t) for t in self.targets))


TARGETS = ("gap", "homo", "lumo")  # what ``--targets`` may name; the gap always first


def parse_targets(text: str) -> tuple[str, ...]:
    """``--targets``: "gap" or "gap,homo,lumo" (comma-separated names of ``TARGETS``, the gap first).

    Raises:
        QdgapError: an unknown or repeated name, or a list that does not start with the gap.
    """
    names = tuple(t.strip().lower() for t in text.split(",") if t.strip())
    unknown = [t for t in names if t not in TARGETS]
    if unknown:
        raise QdgapError(f"--targets: unknown target {unknown[0]!r}; choose from {', '.join(TARGETS)}")
    if not names or names[0] != "gap" or len(set(names)) != len(names):
        raise QdgapError(f"--targets must list the gap first and each target once (e.g. gap,homo,lumo), got {text!r}")
    return names


@dataclass(frozen=True)
class RunConfig:
    """Everything a member's training depends on, saved as its ``config.json``."""

    preset: str
    model: ModelConfig = field(default_factory=ModelConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_json(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            # As in upstream's training config: atom_features beside the model section, not in it.
            "atom_features": self.model.atom_features,
            "model": self.model.to_upstream(three_body_cutoff_ang=self.graph.three_body_cutoff_ang),
            "graph": self.graph.to_json(),
            "train": _train_json(self.train),
        }

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> RunConfig:
        try:
            return cls(
                preset=str(record.get("preset", "custom")),
                model=replace(
                    ModelConfig.from_upstream(record["model"]), atom_features=record.get("atom_features", "cgcnn")
                ),
                graph=GraphConfig(**record["graph"]),
                train=TrainConfig(**record["train"]),
            )
        except (KeyError, TypeError) as exc:
            raise QdgapError(f"config.json is incomplete or from another tool ({exc})") from exc


def _train_json(train: TrainConfig) -> dict[str, Any]:
    out = dataclasses.asdict(train)
    for key, default in (("split", "random"), ("block_fs", None), ("targets", ("gap",))):
        if out[key] == default:
            del out[key]
    if "targets" in out:
        out["targets"] = list(out["targets"])
    if train.pool_frames is None:
        del out["pool_frames"]
    else:
        out["pool_frames"] = list(train.pool_frames)
    return out


_DEMO_MODEL = ModelConfig(
    alignn_layers=1,
    gcn_layers=1,
    edge_input_features=80,
    triplet_input_features=20,
    embedding_features=16,
    hidden_features=32,
)

PRESETS: dict[str, RunConfig] = {
    # The original study's model (4 ALIGNN + 4 graph-conv layers, hidden 256) and graphs (each atom's 12 nearest
    # neighbours, angles between all bonds), with upstream's training defaults. It trained with train_alignn.py,
    # whose TrainingConfig canonises the k-nearest edges (use_canonize=True): one bond each way per pair.
    "paper": RunConfig(
        preset="paper",
        model=ModelConfig(triplet_input_features=50),
        graph=GraphConfig(cutoff_ang=5.0, max_neighbors=12, neighbor_strategy=K_NEAREST, use_canonize=True),
        train=TrainConfig(epochs=300, batch_size=64, learning_rate=1e-2, patience=50),
    ),
    # Small enough that 20 members train on the demo's ~80 training frames within `make demo` on two
    # CPU cores. On this data a member sits near the mean for ~50 epochs before it starts to learn
    # (the frames differ by hundredths of an Å), so patience must outlast that plateau; a fine bond
    # basis (80 functions over 0-8 Å) and small batches shorten it. Batch 4 vs 8, 20 members each, on
    # the 900 unlabelled demo frames: ensemble RMSE 16.4 vs 28.7 meV, worst member 56 vs 91 meV
    # (lr 3e-3 at batch 8: 24.1 and 61 meV).
    "demo": RunConfig(
        preset="demo",
        model=_DEMO_MODEL,
        train=TrainConfig(epochs=100, batch_size=4, learning_rate=1e-2, patience=60),
    ),
    # The real study on two CPU cores: the demo model, trained twice as long. On the real trajectory's 800-frame
    # training set (seed 0, 1 thread): 100 epochs 25.0 meV unseen-frame RMSE, 200 epochs 18.8 meV
    # (bench/cpu_preset.md). 200 epochs at ~2.8 s each is ~9.3 min per member, so 20 members two at a time
    # take ~1.6 h of the 3 h budget.
    "cpu": RunConfig(
        preset="cpu", model=_DEMO_MODEL, train=TrainConfig(epochs=200, batch_size=4, learning_rate=1e-2, patience=100)
    ),
    # Sparse labels (about 100): the cpu preset learning the band edges beside the gap (``targets``), which
    # needs a trajectory with HOMO and LUMO (a labels CSV with those columns). At 100 labels on the real
    # trajectory, 20 members each (bench/results_sparse.md): ensemble RMSE 98.4 against the cpu preset's
    # 102.6 meV, calibrated 95 % coverage 89.5 against 86.6 %; per member -2.9 meV paired by seed (95 %
    # interval -7.2 to +1.3, lower in 13 of 20), so a small gain, not a sure one. Interpolating the same
    # labels in time (73.7 meV) still beats both.
    "sparse": RunConfig(
        preset="sparse",
        model=_DEMO_MODEL,
        train=TrainConfig(epochs=200, batch_size=4, learning_rate=1e-2, patience=100, targets=("gap", "homo", "lumo")),
    ),
    # For smoke tests and CI: trains in about a second; not meant for science.
    "tiny": RunConfig(
        preset="tiny",
        model=ModelConfig(
            alignn_layers=1,
            gcn_layers=1,
            edge_input_features=16,
            triplet_input_features=8,
            embedding_features=8,
            hidden_features=16,
        ),
        train=TrainConfig(epochs=4, batch_size=8, learning_rate=5e-3, patience=10),
    ),
}


# ``--graph``: the bond and angle graphs a member trains on, whatever the preset's model. ``knn12`` is the
# original study's (upstream's k-nearest builder as train_alignn.py ran it, canonised); ``knn12-multigraph``
# the same without canonising, as a direct call of nearest_neighbor_edges gives (GraphConfig explains both).
GRAPHS: dict[str, GraphConfig] = {
    "pure-torch": GraphConfig(),
    "knn12": GraphConfig(cutoff_ang=5.0, max_neighbors=12, neighbor_strategy=K_NEAREST, use_canonize=True),
    "knn12-multigraph": GraphConfig(cutoff_ang=5.0, max_neighbors=12, neighbor_strategy=K_NEAREST),
}


def resolve_config(preset: str, *, graph: str | None = None, **train_overrides: Any) -> RunConfig:
    """The preset with the given ``TrainConfig`` fields replaced (``None`` values are ignored).

    Args:
        preset: a name in ``PRESETS``.
        graph: a name in ``GRAPHS`` to train on instead of the preset's graphs; None keeps the preset's.
    """
    if preset not in PRESETS:
        raise QdgapError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    config = PRESETS[preset]
    if graph is not None:
        if graph not in GRAPHS:
            raise QdgapError(f"--graph must be one of {', '.join(GRAPHS)}, got {graph!r}")
        config = replace(config, graph=GRAPHS[graph])
    overrides = {k: v for k, v in train_overrides.items() if v is not None}
    for key in ("epochs", "batch_size", "patience", "stride"):
        if key in overrides and int(overrides[key]) < (0 if key == "epochs" else 1):
            raise QdgapError(
                f"--{key.replace('_', '-')} must be {'>= 0' if key == 'epochs' else 'positive'}, got {overrides[key]}"
            )
    if "learning_rate" in overrides and not overrides["learning_rate"] > 0:
        raise QdgapError(f"--lr must be positive, got {overrides['learning_rate']}")
    check_split_options(overrides.get("split", "random"), overrides.get("block_fs"))
    if "targets" in overrides:  # a string from the command line, or names already parsed
        targets = overrides["targets"]
        overrides["targets"] = parse_targets(targets if isinstance(targets, str) else ",".join(targets))
    return replace(config, train=replace(config.train, **overrides)) if overrides else config


def check_split_options(split: str, block_fs: float | None) -> None:
    """Refuse an unknown ``--split`` or a ``--block-fs`` that is not a positive number of fs.

    Whether the blocks are short enough to give three is checked against the data (``data.splits``).
    """
    from qdgap.core.common.schema import SPLIT_SCHEMES

    if split not in SPLIT_SCHEMES:
        raise QdgapError(f"--split must be one of {', '.join(SPLIT_SCHEMES)}, got {split!r}")
    if block_fs is not None and not (block_fs > 0 and math.isfinite(block_fs)):
        raise QdgapError(f"--block-fs must be a positive number of fs, got {block_fs:g}")
    if block_fs is not None and split != "blocked":
        raise QdgapError("--block-fs applies to --split blocked only")
