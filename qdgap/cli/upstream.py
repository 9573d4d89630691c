"""``qdgap import-alignn``: a model trained by upstream ALIGNN as a finished ensemble member."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qdgap.cli import ui
from qdgap.cli.options import Force

CheckpointArg = Annotated[
    Path,
    typer.Argument(
        help="Upstream ALIGNN weights: best_model.pt (or current_model.pt, last_model.pt, checkpoint_<N>.pt); "
        "a state dict, or a dict holding one under 'model'. Only tensors are unpickled.",
        show_default=False,
    ),
]
ConfigArg = Annotated[
    Path,
    typer.Argument(
        help="The config.json upstream ALIGNN (train_alignn.py) wrote beside the weights.", show_default=False
    ),
]
RunOut = Annotated[
    Path,
    typer.Option("--output", "-o", help="Run folder to create, e.g. runs/run_0 (run_<seed> joins an ensemble folder)."),
]
ImportSeed = Annotated[
    int | None, typer.Option("--seed", "-s", help="Member seed to record (default: the number in run_<seed>, else 0).")
]
AllowOtherGraphs = Annotated[
    bool,
    typer.Option(
        "--allow-other-graphs",
        help="Import a model trained on another neighbor_strategy than pure_torch (e.g. k-nearest); "
        "qdgap's graphs then differ from upstream's, so predictions do too (fine-tune it).",
    ),
]


def import_alignn(
    checkpoint: CheckpointArg,
    config_json: ConfigArg,
    output: RunOut,
    seed: ImportSeed = None,
    force: Force = False,
    allow_other_graphs: AllowOtherGraphs = False,
) -> None:
    """Import upstream ALIGNN weights as a finished member (model.ts exported, DONE) for predict, fna and finetune."""
    if seed is not None and seed < 0:
        raise ui.usage_error(f"--seed must be a non-negative integer, got {seed}")
    for path, what in ((checkpoint, "checkpoint"), (config_json, "config")):
        if not path.is_file():
            raise ui.usage_error(f"{path}: no such {what} file")
    from qdgap.core.interop.upstream import import_alignn as run_import

    result = run_import(
        checkpoint, config_json, run_dir=output, seed=seed, force=force, allow_other_graphs=allow_other_graphs
    )
    mc, gc = result.config.model, result.config.graph
    out = ui.stdout_console()
    out.print(
        f"{result.run_dir}: imported {result.upstream_name} from {checkpoint.name} as seed {result.seed}: "
        f"{mc.alignn_layers} ALIGNN + {mc.gcn_layers} GCN layers, hidden {mc.hidden_features}, "
        f"{result.num_params:,} parameters; graphs: {gc.describe()}"
    )
    out.print("  training data unknown: predict treats every frame as unseen; no test metrics")
