"""Bring a model trained by upstream ALIGNN into qdgap as a finished ensemble member.

    qdgap import-alignn out/best_model.pt out/config.json -o runs/run_0

Upstream's ``train_alignn.py`` leaves, in its output folder, ``config.json``
(its whole ``TrainingConfig``: a ``model`` section with the layer sizes, and at
the top level ``atom_features``, ``neighbor_strategy``, ``cutoff``,
``max_neighbors``, ``three_body_cutoff``, ...) and weights as plain state dicts
(``best_model.pt``, ``current_model.pt``, ``last_model.pt``); older releases
wrote ``checkpoint_<N>.pt``, a dict holding the state dict under ``"model"``.
qdgap's model has upstream's parameter names, so the weights load as they are.

What is imported, and what is refused (with the reason):

* Model types ``alignn_atomwise_pure`` and the DGL-era ``alignn_atomwise`` (same
  parameter names); others are refused by ``ModelConfig.from_upstream``.
* The graph-level output only. Upstream's ``out`` is ``link(fc(mean over atoms))``;
  ``energy_mult_natoms`` and the short-bond penalty enter only the energy that
  forces are differentiated from, so they do not change ``out`` and are accepted.
  Force fields (``calculate_gradient`` with a non-zero ``gradwise_weight``) predict
  energies, and only they add ZBL to ``out``: refused. So are classifiers, a
  ``log``/``logit`` link, the smooth cutoff function, extra features, atom-wise or
  additional output heads, and targets scaled by ``target_multiplication_factor``
  or ``standard_scalar_and_pca`` (qdgap could not tell the output's unit).
* CGCNN atom features (92 per atom) only: they are the table qdgap's model holds.
* Graphs: qdgap builds upstream's ``pure_torch`` graphs and the DGL-era
  ``k-nearest`` ones, canonised (``use_canonize``, upstream's training default)
  or not (``GraphConfig``). A model trained on another ``neighbor_strategy`` saw
  other bonds and angles; it is refused unless the caller accepts the difference
  (``allow_other_graphs``), e.g. to fine-tune it on qdgap's graphs.
* Targets: upstream trains on raw targets, so the output is already in eV
  (``target_mean`` 0, ``target_std`` 1) unless the checkpoint carries qdgap's
  target statistics.

The member's training data are unknown: ``config.json`` records ``data`` with
null path, sha256 and composition, and ``split.json`` holds empty lists, so
``predict`` treats every frame as unseen and checks only that each element of
the data has input features. No ``test_metrics.json`` is written: upstream's
test split is of other data, and its ``prediction_results_test_set.csv`` comes
from the last epoch's weights, not necessarily the imported ones.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from qdgap.core.common.errors import QdgapError
from qdgap.core.config import CGCNN_FEATURES, K_NEAREST, PURE_TORCH, GraphConfig, ModelConfig, RunConfig, TrainConfig
from qdgap.core.store import runs as rf

log = logging.getLogger(__name__)

IMPORTED_PRESET = "imported"  # the ``preset`` an imported member records
_DERIVED_KEYS = ("_species_table", "target_mean", "target_std")  # buffers not learned from data; qdgap fills them
# Upstream TrainingConfig's defaults, for configs that leave these out.
_TRAIN_DEFAULTS = {"epochs": 300, "batch_size": 64, "learning_rate": 1e-2, "weight_decay": 0.0}


@dataclass(frozen=True)
class ImportedMember:
    """What ``import_alignn`` wrote.

    Attributes:
        run_dir: the finished run folder.
        seed: the member seed recorded in ``config.json``.
        upstream_name: upstream's model type (``alignn_atomwise_pure`` or ``alignn_atomwise``).
        config: the resolved qdgap configuration.
        num_params: learned parameters loaded.
        model_sha256: sha256 of ``model.ts``.
        graph_note: set when upstream built its graphs another way than qdgap does.
    """

    run_dir: Path
    seed: int
    upstream_name: str
    config: RunConfig
    num_params: int
    model_sha256: str
    graph_note: str | None


def import_alignn(
    checkpoint: Path,
    config_json: Path,
    *,
    run_dir: Path,
    seed: int | None = None,
    force: bool = False,
    allow_other_graphs: bool = False,
) -> ImportedMember:
    """Turn upstream ALIGNN weights and their ``config.json`` into a finished qdgap run folder.

    The folder is filled under a temporary name beside ``run_dir`` and renamed
    into place when complete (``DONE`` written last), so a failure leaves nothing.

    Args:
        checkpoint: ``best_model.pt`` (or ``current_model.pt``, ``last_model.pt``, ``checkpoint_<N>.pt``).
        config_json: the ``config.json`` upstream wrote beside it.
        run_dir: the run folder to create, e.g. ``runs/run_0``.
        seed: member seed; default the number in ``run_<seed>``, else 0.
        force: replace an existing ``run_dir``.
        allow_other_graphs: import a model trained on graphs qdgap does not build.

    Returns:
        What was written.

    Raises:
        QdgapError: unreadable or unsafe input, a configuration qdgap cannot run,
            weights that do not fit the configuration, or an existing output.
    """
    from qdgap.core.common.files import provenance, sha256_file
    from qdgap.core.model.network import GapModel

    checkpoint, config_json, run_dir = Path(checkpoint), Path(config_json), Path(run_dir)
    seed = _resolve_seed(run_dir, seed)
    _check_output(run_dir, force=force)
    # ---------------------------------------------------------------- config
    upstream = read_upstream_config(config_json)
    config, graph_note = map_upstream_config(upstream, source=config_json, allow_other_graphs=allow_other_graphs)
    # ---------------------------------------------------------------- weights
    state = read_upstream_weights(checkpoint)
    model = GapModel(config.model)
    load_upstream_weights(model, state, checkpoint=checkpoint, config_json=config_json)
    model.eval()
    num_params = sum(p.numel() for p in model.parameters())
    stats = "from the checkpoint" if "target_mean" in state else "none: upstream trains on raw targets (eV)"
    # ---------------------------------------------------------------- the run folder
    record = {
        "seed": seed,
        **config.to_json(),
        # Unknown training data: predict treats every frame as unseen and skips the composition check.
        "data": {"path": None, "sha256": None, "formula": None, "numbers": None, "num_frames": None},
        "import": {
            "from": "alignn",
            "checkpoint": str(checkpoint.resolve()),
            "checkpoint_sha256": sha256_file(checkpoint),
            "config": str(config_json.resolve()),
            "config_sha256": sha256_file(config_json),
            "upstream_model": upstream["model"].get("name"),
            "upstream_version": upstream.get("version"),
            "neighbor_strategy": upstream.get("neighbor_strategy"),
            "target": upstream.get("target"),
            "target_stats": stats,
            "graph_note": graph_note,
            "upstream_config": upstream,
        },
        **provenance(),
    }

    def write(folder: Path) -> str:
        from qdgap.core.deploy.checkpoint import model_meta, save_weights
        from qdgap.core.deploy.torchscript import export_torchscript

        rf.write_json(folder / rf.CONFIG_JSON, record)
        rf.write_json(folder / rf.SPLIT_JSON, {"train": [], "val": [], "test": []})  # no split known
        save_weights(
            folder / rf.BEST_PT, {k: v.detach().cpu() for k, v in model.state_dict().items()}
        )  # as train writes it
        digest = export_torchscript(model, folder / rf.MODEL_TS, meta=model_meta(record))
        done = {
            "model_sha256": digest,
            "imported_from": str(checkpoint.resolve()),
            "trainable_params": num_params,
            "frozen_params": 0,
            **provenance(),
        }
        rf.write_json(folder / rf.DONE, done)  # last: the member is complete
        return digest

    digest = _fill_folder(run_dir, write)
    if graph_note:
        log.warning("%s: %s", run_dir, graph_note)
    return ImportedMember(
        run_dir=run_dir,
        seed=seed,
        upstream_name=str(upstream["model"].get("name")),
        config=config,
        num_params=num_params,
        model_sha256=digest,
        graph_note=graph_note,
    )


# ==========================================================================
# Configuration
# ==========================================================================


def read_upstream_config(path: Path) -> dict[str, Any]:
    """An upstream ``config.json`` as a dict, with a ``model`` section.

    Raises:
        QdgapError: missing, not JSON, or not an ALIGNN training config.
    """
    path = Path(path)
    if not path.is_file():
        raise QdgapError(f"{path}: no such config file")
    record = rf.read_json(path)
    if not isinstance(record, dict) or not isinstance(record.get("model"), dict):
        raise QdgapError(
            f"{path}: not an ALIGNN training config (no 'model' section); pass the config.json train_alignn.py wrote"
        )
    return record


def map_upstream_config(
    upstream: dict[str, Any], *, source: Path, allow_other_graphs: bool = False
) -> tuple[RunConfig, str | None]:
    """Map an upstream training config onto qdgap's, refusing what qdgap's forward would compute differently.

    Args:
        upstream: the whole upstream ``config.json``.
        source: its path, for messages.
        allow_other_graphs: accept a ``neighbor_strategy`` other than ``pure_torch``.

    Returns:
        The run configuration (preset ``imported``) and, when the graphs differ
        from upstream's, a note saying how.

    Raises:
        QdgapError: naming the setting qdgap cannot honour.
    """
    model = _with_upstream_defaults(upstream["model"])
    try:
        model_config = ModelConfig.from_upstream(model)
    except QdgapError as exc:
        raise QdgapError(f"{source}: {exc}") from None
    _refuse_unsupported(model, upstream, source)
    features = upstream.get("atom_features", "cgcnn")
    if features != "cgcnn":
        raise QdgapError(
            f"{source}: atom_features={features!r} is not supported; qdgap's model reads CGCNN features (92 per atom)"
        )
    if model_config.atom_input_features != CGCNN_FEATURES:
        raise QdgapError(
            f"{source}: atom_input_features={model_config.atom_input_features}, "
            f"but CGCNN features have {CGCNN_FEATURES} per atom"
        )
    graph, note = _graph_config(upstream, source, allow_other_graphs)
    epochs = int(upstream.get("epochs") or _TRAIN_DEFAULTS["epochs"])
    train = TrainConfig(
        epochs=epochs,
        batch_size=int(upstream.get("batch_size") or _TRAIN_DEFAULTS["batch_size"]),
        learning_rate=float(upstream.get("learning_rate") or _TRAIN_DEFAULTS["learning_rate"]),
        weight_decay=float(upstream.get("weight_decay") or _TRAIN_DEFAULTS["weight_decay"]),
        patience=int(upstream.get("n_early_stopping") or epochs),  # upstream: no early stopping unless set
    )
    return RunConfig(preset=IMPORTED_PRESET, model=model_config, graph=graph, train=train), note


def _with_upstream_defaults(model: dict[str, Any]) -> dict[str, Any]:
    """The model section with upstream's defaults for the fields it leaves out (older or hand-written configs)."""
    name = model.get("name", "alignn_atomwise_pure")
    if name == "alignn_atomwise_pure":
        from alignn.models.alignn_atomwise_pure import ALIGNNAtomWisePureConfig as schema
    elif name == "alignn_atomwise":
        from alignn.models.alignn_atomwise import ALIGNNAtomWiseConfig as schema
    else:
        return dict(model)  # from_upstream refuses it with a message
    defaults = {k: f.default for k, f in schema.model_fields.items() if not f.is_required()}
    return {**defaults, **model}


def _refuse_unsupported(model: dict[str, Any], upstream: dict[str, Any], source: Path) -> None:
    """Refuse settings under which upstream's graph output is not ``fc(mean over atoms)`` of a band gap in eV."""
    get = model.get
    gradwise = get("gradwise_weight")
    factor = upstream.get("target_multiplication_factor")
    checks = [
        (bool(get("calculate_gradient")) and float(gradwise or 0.0) != 0.0,
         f"a force field (calculate_gradient with gradwise_weight={gradwise}): it predicts energies, not a band gap"),
        (bool(get("classification")) or upstream.get("classification_threshold") is not None,
         "a classifier, not a band-gap regression"),
        (get("link", "identity") != "identity", f"link={get('link')!r}: qdgap's output has no link function"),
        (bool(get("use_cutoff_function")), "use_cutoff_function: qdgap's bond embedding has no smooth cutoff"),
        (int(get("extra_features") or 0) != 0, f"extra_features={get('extra_features')}: qdgap's readout takes none"),
        (int(get("atomwise_output_features") or 0) != 0,
         "an atom-wise output head: qdgap predicts one number per structure"),
        (int(get("additional_output_features") or 0) != 0,
         "an additional output head: qdgap predicts one number per structure"),
        (factor not in (None, 1, 1.0),
         f"targets scaled by target_multiplication_factor={factor}: the output's unit is unknown"),
        (bool(upstream.get("standard_scalar_and_pca")),
         "standard_scalar_and_pca: its target scaling lives in a pickle (sc.pkl) qdgap does not load"),
    ]  # fmt: skip
    for bad, why in checks:
        if bad:
            raise QdgapError(f"{source}: {why}; only graph-level band-gap models import")


def _graph_config(upstream: dict[str, Any], source: Path, allow_other_graphs: bool) -> tuple[GraphConfig, str | None]:
    for key in ("cutoff", "max_neighbors"):
        if upstream.get(key) is None:
            raise QdgapError(
                f"{source}: no {key!r} setting; qdgap needs it to rebuild the graphs the model was trained on"
            )
    cutoff = float(upstream["cutoff"])
    max_neighbors = int(upstream["max_neighbors"])
    strategy = upstream.get("neighbor_strategy", K_NEAREST)
    # TrainingConfig's default, so a config that leaves it out was trained canonised.
    canonize = bool(upstream.get("use_canonize", True))
    note = None
    if strategy == PURE_TORCH:
        # Upstream's pure_torch builder: triplets only between bonds up to three_body_cutoff (cutoff when unset).
        three_body = upstream.get("three_body_cutoff")
        three_body = cutoff if three_body is None else float(three_body)
        if three_body > cutoff:
            raise QdgapError(
                f"{source}: three_body_cutoff={three_body:g} exceeds cutoff={cutoff:g}; upstream refuses that too"
            )
        return GraphConfig(cutoff_ang=cutoff, max_neighbors=max_neighbors, three_body_cutoff_ang=three_body), None
    # The DGL-era builders form angles between all bonds; three_body_cutoff is recorded as the cutoff, unused.
    knn = GraphConfig(
        cutoff_ang=cutoff,
        max_neighbors=max_neighbors,
        three_body_cutoff_ang=cutoff,
        neighbor_strategy=K_NEAREST,
        use_canonize=canonize,
    )
    if strategy == K_NEAREST:
        return knn, None  # upstream's nearest_neighbor_edges + build_undirected_edgedata, as qdgap builds them
    what = f"neighbor_strategy={strategy!r}"
    if not allow_other_graphs:
        raise QdgapError(
            f"{source}: trained on {what} graphs, which qdgap does not build, so its predictions would "
            "differ; pass --allow-other-graphs to import it anyway (e.g. to fine-tune it)"
        )
    graph = replace(knn, neighbor_strategy=PURE_TORCH, use_canonize=False)
    how = f"upstream's pure_torch builder (cutoff {cutoff:g} Å, {max_neighbors} neighbours)"
    note = f"trained on {what} graphs; qdgap rebuilds them with {how}, angles between all bonds, so predictions differ from upstream's"
    return graph, note


# ==========================================================================
# Weights
# ==========================================================================


def read_upstream_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in an upstream checkpoint, unpickling nothing but tensors and plain containers.

    Accepts a plain state dict (``best_model.pt``) or a dict holding one under
    ``"model"`` (``checkpoint_<N>.pt``); strips a ``module.`` prefix left by a
    DataParallel/DDP wrapper.

    Raises:
        QdgapError: missing, unreadable, holding pickled Python objects, or no state dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise QdgapError(f"{path}: no such checkpoint file")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found is None:  # damaged, or not written by torch.save
            detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(exc))
            reason = detail.group(1)[:100] if detail else str(exc).splitlines()[0][:100]
            raise QdgapError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None
        raise QdgapError(
            f"{path}: holds pickled Python objects ({found.group(1)}), not plain weights; qdgap loads tensors only. "
            "Save the weights upstream with torch.save(model.state_dict(), ...)"
        ) from None
    except Exception as exc:  # torch raises runtime, zip and EOF errors alike for damaged files
        raise QdgapError(f"{path}: not a readable PyTorch checkpoint ({str(exc).splitlines()[0][:100]})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]  # checkpoint_<N>.pt: {"model": ..., "optimizer": ..., ...}
    if (
        not isinstance(obj, dict)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise QdgapError(f"{path}: not a state dict of tensors (nor a checkpoint holding one under 'model')")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def load_upstream_weights(
    model: torch.nn.Module, state: dict[str, torch.Tensor], *, checkpoint: Path, config_json: Path
) -> None:
    """Load upstream weights into ``model`` after checking every key and shape against it.

    ``_species_table`` (a derived buffer that upstream leaves empty until export)
    is ignored and qdgap's own table kept; ``target_mean``/``target_std`` are
    taken from the checkpoint when it has them, else 0 and 1. A qdgap ``best.pt``
    (target statistics folded into the output layer) is unfolded first.

    Raises:
        QdgapError: naming the first missing, unexpected or mis-shaped key, or a non-finite weight.
    """
    from qdgap.core.model.network import FOLDED_STATS, unfold_target_stats

    if all(k in state for k in (*FOLDED_STATS, "fc.weight", "fc.bias")):
        state = unfold_target_stats(state)
    mine = model.state_dict()
    expected = [k for k in mine if k not in _DERIVED_KEYS]
    given = {k: v for k, v in state.items() if k not in _DERIVED_KEYS}
    mismatch = f"{checkpoint}: does not fit {config_json}"
    missing = [k for k in expected if k not in given]
    if missing:
        raise QdgapError(
            f"{mismatch}: no weights for {missing[0]}{_more(missing)}; the config asks for more or other layers"
        )
    unexpected = [k for k in given if k not in mine]
    if unexpected:
        raise QdgapError(
            f"{mismatch}: unexpected {unexpected[0]}{_more(unexpected)}; the checkpoint has layers the config lacks"
        )
    for k in expected:
        if tuple(given[k].shape) != tuple(mine[k].shape):
            raise QdgapError(
                f"{mismatch}: {k} is {tuple(given[k].shape)} in the checkpoint but {tuple(mine[k].shape)} by the config"
            )
        if given[k].is_floating_point() and not bool(torch.isfinite(given[k]).all()):
            raise QdgapError(
                f"{checkpoint}: {k} holds NaN or infinite values; the model diverged or the file is damaged"
            )
    full = dict(mine)
    full.update(given)
    for k in ("target_mean", "target_std"):
        if k in state:
            if state[k].numel() != 1 or not bool(torch.isfinite(state[k]).all()):
                raise QdgapError(f"{checkpoint}: {k} must be one finite number, got shape {tuple(state[k].shape)}")
            full[k] = state[k].reshape(()).to(mine[k].dtype)
    model.load_state_dict(full, strict=True)


def _more(keys: list[str]) -> str:
    return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""


# ==========================================================================
# The run folder
# ==========================================================================


def _resolve_seed(run_dir: Path, seed: int | None) -> int:
    named = rf.seed_of(run_dir)
    if seed is not None and seed < 0:
        raise QdgapError(f"--seed must be a non-negative integer, got {seed}")
    if seed is not None and named is not None and seed != named:
        raise QdgapError(
            f"{run_dir}: the folder is named for seed {named} but --seed is {seed}; name it run_{seed} or drop --seed"
        )
    if seed is None and named is None:
        log.info("%s: not named run_<seed>; recording seed 0", run_dir)
    return seed if seed is not None else (named if named is not None else 0)


def _check_output(run_dir: Path, *, force: bool) -> None:
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise QdgapError(f"{run_dir}: exists and is not a folder; choose another output")
    if not force:
        raise QdgapError(f"{run_dir}: exists; choose another folder or pass --force to replace it")
    if rf.member_state(run_dir) == "running":
        raise QdgapError(f"{run_dir}: a member is training there now; stop it before replacing the folder")


def _fill_folder(run_dir: Path, write: Callable[[Path], str]) -> str:
    """Run ``write`` on a temporary folder beside ``run_dir``, then rename it into place; return what it returned."""
    from qdgap.core.common.files import check_writable_dir

    check_writable_dir(run_dir.parent)
    # A hidden name: member_dirs() never lists it, so a half-written member is never seen.
    tmp = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.", suffix=".importing", dir=run_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; give it the mode mkdir would
    old = None
    try:
        result = write(tmp)
        if run_dir.exists():  # --force: swap, then remove the old folder
            old = tmp.with_name(tmp.name.replace(".importing", ".old"))
            os.replace(run_dir, old)
        os.replace(tmp, run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not run_dir.exists():
            os.replace(old, run_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return result
