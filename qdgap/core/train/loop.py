"""Train one ensemble member, top to bottom.

    qdgap train --seed 7                        # demo data, demo preset, runs/run_7/
    qdgap train --seed 7 --data traj.h5 --preset paper --device cuda

The order is fixed: config and seed, data and graphs, model (fresh, from
pretrained weights, or resumed from ``checkpoint.pt``), optimiser and
schedule, the loop, the final write. No callback framework hides a step.
The same function fine-tunes (``init`` with frozen blocks).
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qdgap.core.common.errors import Interrupted, QdgapError
from qdgap.core.common.files import check_writable_dir, exclusive_lock, provenance
from qdgap.core.common.metrics import MEV_PER_EV, mae_mev, rmse_mev
from qdgap.core.common.numerics import fast_cpu_math
from qdgap.core.common.runtime import resolve_device
from qdgap.core.config import RunConfig, TrainConfig
from qdgap.core.data.splits import Split, split_frames
from qdgap.core.data.trajectory import Trajectory
from qdgap.core.deploy.checkpoint import load_checkpoint, model_meta, save_checkpoint, save_weights
from qdgap.core.graphs.build import load_or_build_graphs
from qdgap.core.model.network import GapModel, gap_only_state
from qdgap.core.store import runs as rf
from qdgap.kernels.batch import PackedGraphs, gather_frames, graphs_per_forward
from qdgap.testing.faults import fault_point

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InitFrom:
    """Start from trained weights, optionally frozen in part (fine-tuning)."""

    state_dict: dict[str, torch.Tensor]
    freeze_blocks: int = 0
    freeze_embeddings: bool = False
    source: str = ""


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    epochs_run: int
    best_epoch: int
    best_val_mae_mev: float
    test_rmse_mev: float
    test_mae_mev: float
    n_test: int
    seconds: float
    resumed_from_epoch: int
    trainable_params: int
    frozen_params: int


def train_member(
    traj: Trajectory,
    config: RunConfig,
    *,
    seed: int,
    run_dir: Path,
    device: str = "auto",
    cache_dir: Path | None = None,
    init: InitFrom | None = None,
    data_path: str = "",
    progress: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train (or resume, or fine-tune) one member and write its run folder.

    Args:
        traj: the trajectory; its labelled pool is split with ``seed``.
        config: the resolved run configuration.
        seed: the member seed (split and initial weights).
        run_dir: ``runs/run_<seed>/``; created, or resumed if it holds a checkpoint.
        device: ``auto``, ``cpu`` or ``cuda``.
        cache_dir: where the trajectory's graphs are cached (shared by members).
        init: start from these weights instead of random ones (fine-tuning).
        data_path: the trajectory's path, recorded in ``config.json``.
        progress: called with 1 after every epoch.
        should_stop: polled after every batch; True stops without losing the last epoch.

    Returns:
        What was trained and its test metrics (meV).

    Raises:
        Interrupted: ``should_stop`` returned True; rerunning resumes.
        QdgapError: the run folder belongs to other data or another config.
    """
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    check_splittable(traj, config.train, seed=seed, data_path=data_path)  # before any folder is made
    check_writable_dir(run_dir)
    with exclusive_lock(run_dir / rf.LOCK, what=f"member {run_dir}"):
        if (run_dir / rf.DONE).exists():
            raise QdgapError(f"{run_dir}: already finished (DONE); remove the folder to train it again")
        for stale in run_dir.glob(".*.tmp"):  # left by a process killed mid-write; the lock says none is ours now
            stale.unlink(missing_ok=True)
        # Every backend (local pool, `qdgap train` in a Slurm task) trains through here, so the FAILED marker
        # that `ensemble status` reads is written by one piece of code. Interruptions are not failures.
        try:
            result = _train(
                traj, config, seed, run_dir, resolve_device(device), cache_dir, init, data_path, progress, should_stop
            )
        except Interrupted:
            raise
        except QdgapError as exc:
            rf.mark_failed(run_dir, str(exc))
            raise
        except Exception as exc:  # a bug: keep the traceback beside the member
            rf.mark_failed(run_dir, "".join(traceback.format_exception(exc)))
            raise
        (run_dir / rf.FAILED).unlink(missing_ok=True)
    log.info("%s: done in %.1f s, test RMSE %.1f meV", run_dir, time.perf_counter() - t_start, result.test_rmse_mev)
    return result


def member_split(traj: Trajectory, train: TrainConfig, *, seed: int) -> Split:
    """Member ``seed``'s train/val/test split of ``traj`` as ``train`` (stride, pool, scheme, blocks) asks."""
    return split_frames(
        traj.gap_ev, seed=seed, stride=train.stride, pool=train.pool_frames, scheme=train.split,
        time_fs=traj.time_fs, block_fs=train.block_fs,
    )  # fmt: skip


def check_splittable(traj: Trajectory, train: TrainConfig, *, seed: int, data_path: str = "") -> None:
    """Refuse data whose labelled pool is too small for member ``seed``'s split, naming the file.

    Raises:
        QdgapError: too few (or no) labelled frames, a chosen ``pool`` frame out of range or unlabelled,
        or blocks too long to give three.
    """
    try:
        split = member_split(traj, train, seed=seed)
        if len(train.targets) > 1:
            labels = target_matrix(traj, train.targets)[split.train]
            for name, column in zip(train.targets, labels.T, strict=True):
                if np.isfinite(column).sum() < 2:
                    raise QdgapError(
                        f"member {seed}'s training frames have {np.isfinite(column).sum()} {name.upper()} label(s); "
                        "--targets needs at least 2"
                    )
    except QdgapError as exc:
        raise QdgapError(f"{data_path}: {exc}" if data_path else str(exc)) from None


def target_matrix(traj: Trajectory, targets: tuple[str, ...]) -> np.ndarray:
    """(F, K) float32 eV: the columns ``targets`` names (``gap``, ``homo``, ``lumo``), NaN where unknown.

    Raises:
        QdgapError: the trajectory holds no values for a named band edge.
    """
    columns = []
    for name in targets:
        values = {"gap": traj.gap_ev, "homo": traj.homo_ev, "lumo": traj.lumo_ev}[name]
        if values is None or not np.isfinite(values).any():
            raise QdgapError(
                f"the trajectory has no {name.upper()} energies for --targets {','.join(targets)}; import it with a "
                "labels CSV that has HOMO and LUMO columns"
            )
        columns.append(values.astype(np.float32))
    return np.stack(columns, axis=1)


def _train(
    traj: Trajectory,
    config: RunConfig,
    seed: int,
    run_dir: Path,
    device: torch.device,
    cache_dir: Path | None,
    init: InitFrom | None,
    data_path: str,
    progress: Callable[[int], None] | None,
    should_stop: Callable[[], bool] | None,
) -> TrainResult:
    t0 = time.perf_counter()
    tc = config.train
    # ---------------------------------------------------------------- config and seed
    torch.manual_seed(seed)
    fast_cpu_math()
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)
    ckpt_path = run_dir / rf.CHECKPOINT_PT
    ckpt = load_checkpoint(ckpt_path, device) if ckpt_path.exists() else None  # a bad one is refused before any write
    record = _run_record(traj, config, seed, data_path, init)
    _check_or_write_record(run_dir, record)

    # ---------------------------------------------------------------- data and graphs
    split = member_split(traj, tc, seed=seed)
    _check_or_write_split(run_dir, split.to_json())
    graphs = _to_device(load_or_build_graphs(traj, config.graph, cache_dir=cache_dir), device)
    gaps = torch.from_numpy(traj.gap_ev.astype(np.float32)).to(device)
    multi = len(tc.targets) > 1
    # What the loss sees: the gaps, or (F, K) with the band edges beside them (NaN where unknown: no loss).
    labels = torch.from_numpy(target_matrix(traj, tc.targets)).to(device) if multi else gaps
    train_frames = torch.from_numpy(split.train).to(device)
    val_frames = torch.from_numpy(split.val).to(device)
    test_frames = torch.from_numpy(split.test).to(device)
    edges_per_frame = float(graphs.edge_ptr[-1]) / max(1, graphs.num_frames)
    # A batch's gradient is summed over cache-sized micro-batches: identical maths (no layer couples
    # the frames of a batch), and on a CPU several times faster than one large forward (kernels/batch.py).
    micro = graphs_per_forward(device.type, edges_per_frame, config.model.hidden_features, training=True)
    eval_batch = graphs_per_forward(device.type, edges_per_frame, config.model.hidden_features)

    # ---------------------------------------------------------------- model
    # K targets train a K-wide readout; the final write keeps the gap's column only (gap_only_state).
    model = GapModel(replace(config.model, output_features=len(tc.targets)) if multi else config.model)
    if init is not None:
        if multi:
            raise QdgapError("fine-tuning trains the gap alone; leave out --targets")
        model.load_state_dict(init.state_dict)
        frozen_names = set(model.freeze(blocks=init.freeze_blocks, embeddings=init.freeze_embeddings))
    elif multi:
        y = labels[train_frames].double().cpu().numpy()
        model.set_target_stats(np.nanmean(y, axis=0), np.nanstd(y, axis=0))
        frozen_names = set()
    else:
        y = traj.gap_ev[split.train].astype(np.float64)
        model.set_target_stats(float(y.mean()), float(y.std()))
        frozen_names = set()
    model.to(device)
    n_frozen = sum(p.numel() for n, p in model.named_parameters() if n in frozen_names)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    target_std = model.target_std.clone() if multi else float(model.target_std)  # (K,) or scalar, eV
    gap_std = float(model.target_std.reshape(-1)[0])

    # ---------------------------------------------------------------- optimiser and schedule
    optimizer = torch.optim.AdamW(_param_groups(model), lr=tc.learning_rate, weight_decay=tc.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(split.train) / tc.batch_size))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=tc.learning_rate,
        epochs=max(1, tc.epochs),
        steps_per_epoch=steps_per_epoch,
        pct_start=tc.pct_start,
    )
    start_epoch, best_val, best_epoch, best_state, metrics = 0, math.inf, -1, None, []
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            start_epoch, best_val, best_epoch = (
                int(ckpt["epoch"]),
                float(ckpt["best_val_mae_mev"]),
                int(ckpt["best_epoch"]),
            )
            best_state, metrics = ckpt["best_state"], _with_seconds(ckpt["metrics"], run_dir / rf.METRICS_CSV)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:  # tensors only, but not our layout
            raise QdgapError(
                f"{ckpt_path}: not a checkpoint of this member ({type(exc).__name__}: {str(exc).splitlines()[0][:80]}); "
                "remove it to start the member afresh"
            ) from exc
        log.info("%s: resuming after epoch %d", run_dir, start_epoch)
    resumed_from = start_epoch

    # ---------------------------------------------------------------- the loop
    epoch = start_epoch
    while epoch < tc.epochs and epoch - best_epoch <= tc.patience:
        t_epoch = time.perf_counter()
        model.train()
        # The shuffle depends only on (seed, epoch), so a resumed run replays the same batches.
        order = torch.randperm(len(train_frames), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        batch_frames = train_frames[order.to(device)]
        train_loss, seen = 0.0, 0
        for start in range(0, len(batch_frames), tc.batch_size):
            frames = batch_frames[start : start + tc.batch_size]
            loss = accumulate_gradient(model, graphs, frames, labels, target_std=target_std, micro_batch=micro)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            fault_point("step")  # tests only: see qdgap/testing/faults.py
            train_loss += float(loss) * len(frames)  # CPU-GPU sync point, once per batch
            seen += len(frames)
            if should_stop is not None and should_stop():
                raise Interrupted(f"{run_dir}: stopped during epoch {epoch + 1}; rerun the same command to resume")
        val_pred = predict_frames(model, graphs, val_frames, batch=eval_batch)
        val_err = (val_pred[:, 0] if multi else val_pred) - gaps[val_frames]  # the best epoch is the gap's
        val_mae_mev = float(val_err.abs().mean()) * MEV_PER_EV
        epoch += 1
        if val_mae_mev < best_val:
            best_val, best_epoch = val_mae_mev, epoch
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        metrics.append(
            {
                "epoch": epoch,
                "train_loss": train_loss / max(1, seen),
                "val_loss": float(val_err.abs().mean()) / gap_std,
                "val_mae_mev": val_mae_mev,
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - t_epoch,
            }
        )
        save_checkpoint(
            ckpt_path,
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            epoch=epoch,
            best_val_mae_mev=best_val,
            best_epoch=best_epoch,
            best_state=best_state,
            # Without the wall times, which metrics.csv keeps: equal weights give an equal checkpoint.pt.
            metrics=[{k: v for k, v in row.items() if k != "seconds"} for row in metrics],
        )
        rf.write_metrics_csv(run_dir / rf.METRICS_CSV, metrics)
        if progress is not None:
            progress(1)
        if should_stop is not None and should_stop():
            raise Interrupted(f"{run_dir}: stopped after epoch {epoch}; rerun the same command to resume")

    # ---------------------------------------------------------------- final write
    if best_state is None:  # zero epochs asked for: keep the initial weights
        best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        best_epoch = 0
    if multi:
        best_state = gap_only_state(best_state)
        model = GapModel(config.model).to(device)
    model.load_state_dict(best_state)
    save_weights(run_dir / rf.BEST_PT, best_state)
    test_err = (predict_frames(model, graphs, test_frames, batch=eval_batch) - gaps[test_frames]).double().cpu().numpy()
    test = {
        "rmse_mev": rmse_mev(test_err),
        "mae_mev": mae_mev(test_err),
        "n": int(len(test_err)),
    }
    from qdgap.core.deploy.torchscript import export_torchscript

    model_sha = export_torchscript(model, run_dir / rf.MODEL_TS, meta=model_meta(record))
    rf.write_json(run_dir / rf.TEST_METRICS_JSON, test)
    seconds = time.perf_counter() - t0
    done = {
        "model_sha256": model_sha,
        "best_epoch": best_epoch,
        "epochs_run": epoch,
        "trainable_params": n_trainable,
        "frozen_params": n_frozen,
        **provenance(),
    }
    rf.write_json(run_dir / rf.DONE, done)  # last: the member is complete
    return TrainResult(
        run_dir=run_dir,
        epochs_run=epoch,
        best_epoch=best_epoch,
        best_val_mae_mev=best_val,
        test_rmse_mev=test["rmse_mev"],
        test_mae_mev=test["mae_mev"],
        n_test=test["n"],
        seconds=seconds,
        resumed_from_epoch=resumed_from,
        trainable_params=n_trainable,
        frozen_params=n_frozen,
    )


def accumulate_gradient(
    model: torch.nn.Module,
    graphs: PackedGraphs,
    frames: torch.Tensor,
    gaps: torch.Tensor,
    *,
    target_std: float | torch.Tensor,
    micro_batch: int,
) -> torch.Tensor:
    """Add the gradient of one batch's loss to the parameters' ``.grad``; return the loss (detached).

    The loss is L1 on standardised targets (the gap's natural scale is tenths of an eV): mean over the
    batch of |prediction - gap| / ``target_std``. With K targets (gap and band edges) it is the mean
    over targets of each one's, a target a frame has no value for (NaN) adding nothing. It is computed
    in pieces of ``micro_batch`` frames, each weighted as its share of the batch mean, so the summed
    gradient is the whole batch's (no layer couples the frames of a batch) while each piece's tensors
    stay in cache.

    Args:
        frames: (B,) int64 frame indices of the batch.
        gaps: (F,) eV, the true gap of every frame; or (F, K) eV, K targets, NaN where unknown.
        target_std: eV, the std the gap was standardised by; (K,) for K targets.
        micro_batch: frames per forward and backward.
    """
    loss = torch.zeros((), dtype=gaps.dtype, device=gaps.device)
    for part in frames.split(micro_batch):
        pred = model.predict_batch(gather_frames(graphs, part))  # (b,) eV; (b, K) for K targets
        if gaps.ndim == 1:
            part_loss = torch.nn.functional.l1_loss(pred, gaps[part], reduction="sum") / (target_std * len(frames))
        else:
            y = gaps[part]
            err = torch.where(torch.isnan(y), torch.zeros_like(pred), pred - y)
            part_loss = (err.abs() / target_std).sum() / (y.shape[1] * len(frames))
        part_loss.backward()
        loss += part_loss.detach()
    return loss


@torch.no_grad()
def predict_frames(model: torch.nn.Module, graphs: PackedGraphs, frames: torch.Tensor, *, batch: int) -> torch.Tensor:
    """Gaps (eV) of ``frames`` (F,) with ``model`` in eval mode, ``batch`` frames per forward; (F,) on the graphs' device."""
    was_training = model.training
    model.eval()
    out = [model(*gather_frames(graphs, frames[i : i + batch])) for i in range(0, len(frames), batch)]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, device=frames.device)


def _with_seconds(rows: list[dict[str, float]], metrics_csv: Path) -> list[dict[str, float]]:
    """A checkpoint's per-epoch metrics with each epoch's wall time (s) put back from ``metrics.csv``.

    The checkpoint leaves the times out so that its bytes depend on the weights alone; an epoch
    the table has no row for (the table lost) gets NaN. Checkpoints that still hold times keep them.
    """
    seconds = {int(row["epoch"]): row.get("seconds", math.nan) for row in rf.read_metrics_csv(metrics_csv)}
    return [{**row, "seconds": row.get("seconds", seconds.get(int(row["epoch"]), math.nan))} for row in rows]


def _param_groups(model: torch.nn.Module) -> list[dict[str, Any]]:
    """Upstream's ``group_decay`` over the trainable parameters: no decay on biases and norms."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if ("bias" in name or "bn" in name or "norm" in name) else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def _to_device(graphs: PackedGraphs, device: torch.device) -> PackedGraphs:
    # Moved once: every batch is then gathered on the device, with no host-device copies.
    return PackedGraphs(*(t.to(device) for t in graphs))


# ==========================================================================
# Run-folder records and checkpoints
# ==========================================================================


def _run_record(
    traj: Trajectory, config: RunConfig, seed: int, data_path: str, init: InitFrom | None
) -> dict[str, Any]:
    record = {
        "seed": seed,
        **config.to_json(),
        "data": {
            "path": data_path,
            "sha256": traj.sha256,
            "formula": traj.formula,
            "numbers": traj.numbers.tolist(),
            "num_frames": traj.num_frames,
        },
    }
    if init is not None:
        record["finetune"] = {
            "from": init.source,
            "freeze_blocks": init.freeze_blocks,
            "freeze_embeddings": init.freeze_embeddings,
        }
    return record


def _check_or_write_record(run_dir: Path, record: dict[str, Any]) -> None:
    """A fresh folder gets ``config.json``; an existing one must be for the same data and config."""
    path = run_dir / rf.CONFIG_JSON
    if not path.exists():
        rf.write_json(path, {**record, **provenance()})
        return
    old = rf.read_json(path)
    for key in ("seed", "model", "graph", "train", "finetune"):
        if old.get(key) != record.get(key):
            raise QdgapError(
                f"{run_dir}: holds a member trained with another {key} setting; "
                "use another output folder or remove this one"
            )
    if old.get("data", {}).get("sha256") != record["data"]["sha256"]:
        raise QdgapError(f"{run_dir}: holds a member trained on other data (sha256 differs); use another output folder")


def _check_or_write_split(run_dir: Path, split: dict[str, list[int]]) -> None:
    path = run_dir / rf.SPLIT_JSON
    if path.exists():
        if rf.read_json(path) != split:
            raise QdgapError(f"{path}: differs from the split this seed gives; the folder belongs to another run")
        return
    rf.write_json(path, split)
