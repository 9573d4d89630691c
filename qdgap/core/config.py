"""Presets and the resolved run configuration, as frozen dataclasses.

A run's ``config.json`` is ``RunConfig.to_json()``; its ``model`` section is a
valid upstream ``alignn_atomwise_pure`` model config, so weights and settings
move between qdgap and upstream ALIGNN.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from typing import Any

from qdgap.core.errors import QdgapError

CGCNN_FEATURES = 92  # length of the CGCNN atom feature vector (jarvis-tools)


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
            raise QdgapError(f"output_features={model.get('output_features')} is not supported (a band gap is one number)")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in model.items() if k in names})


@dataclass(frozen=True)
class GraphConfig:
    """How bonds and angles are chosen (upstream ALIGNN's builder parameters)."""

    cutoff_ang: float = 5.0  # bonds: the max_neighbors nearest atoms within this distance
    max_neighbors: int = 12
    three_body_cutoff_ang: float = 3.5  # only bonds this short form angle triplets


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
            "graph": dataclasses.asdict(self.graph),
            "train": dataclasses.asdict(self.train),
        }

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> RunConfig:
        try:
            return cls(
                preset=str(record.get("preset", "custom")),
                model=replace(ModelConfig.from_upstream(record["model"]), atom_features=record.get("atom_features", "cgcnn")),
                graph=GraphConfig(**record["graph"]),
                train=TrainConfig(**record["train"]),
            )
        except (KeyError, TypeError) as exc:
            raise QdgapError(f"config.json is incomplete or from another tool ({exc})") from exc


PRESETS: dict[str, RunConfig] = {
    # The original study's model (4 ALIGNN + 4 graph-conv layers, hidden 256) and upstream's training defaults.
    "paper": RunConfig(
        preset="paper",
        model=ModelConfig(triplet_input_features=50),
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
        model=ModelConfig(
            alignn_layers=1,
            gcn_layers=1,
            edge_input_features=80,
            triplet_input_features=20,
            embedding_features=16,
            hidden_features=32,
        ),
        train=TrainConfig(epochs=100, batch_size=4, learning_rate=1e-2, patience=60),
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


def resolve_config(preset: str, **train_overrides: Any) -> RunConfig:
    """The preset with the given ``TrainConfig`` fields replaced (``None`` values are ignored)."""
    if preset not in PRESETS:
        raise QdgapError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    config = PRESETS[preset]
    overrides = {k: v for k, v in train_overrides.items() if v is not None}
    for key in ("epochs", "batch_size", "patience", "stride"):
        if key in overrides and int(overrides[key]) < (0 if key == "epochs" else 1):
            raise QdgapError(f"--{key.replace('_', '-')} must be {'>= 0' if key == 'epochs' else 'positive'}, got {overrides[key]}")
    if "learning_rate" in overrides and not overrides["learning_rate"] > 0:
        raise QdgapError(f"--lr must be positive, got {overrides['learning_rate']}")
    return replace(config, train=replace(config.train, **overrides)) if overrides else config
