"""``predict``, ``fna`` and ``select`` as one call each: check, compute (here, as one array part, or as a
Slurm job array), calibrate or test, and write the result file and its CSV under a lock.

The CLI commands parse options and render the outcome; ``qdgap pipeline`` calls the same functions.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qdgap.core.common.errors import QdgapError
from qdgap.core.common.hooks import Hooks
from qdgap.core.workflow import part_array as pa
from qdgap.core.workflow import slurm


@dataclass(frozen=True)
class PartOutcome:
    """One part written by an array task."""

    output: Path
    name: str
    path: Path
    n_frames: int


@dataclass(frozen=True)
class PredictOutcome:
    """``predictions.h5`` (and its CSV) written.

    Attributes:
        output: the file.
        n_members, n_frames: what was predicted.
        summary: errors on the labelled frames (``analysis.predict.summarise``), meV.
        calibration: coverage, extrapolation flags and threshold (``analysis.calibration``).
        baselines: the ensemble beside interpolation in time etc. of its training labels on the same
            frames (``analysis.baselines.BaselineReport``); None without labelled frames to score.
    """

    output: Path
    n_members: int
    n_frames: int
    summary: dict
    calibration: dict
    baselines: object = None


@dataclass(frozen=True)
class FnaOutcome:
    """``fna.h5``, the importance CSV (and the XYZ) written; ``table`` and ``stats`` are what they hold."""

    output: Path
    csv: Path
    xyz: Path | None
    n_members: int
    n_frames: int
    n_atoms: int
    mask: str
    table: dict
    stats: object


def _members_and_frames(runs: Path, data: Path, frames: str, allow_data_change: bool):
    from qdgap.core.analysis import predict as pr
    from qdgap.core.data.trajectory import read_trajectory
    from qdgap.core.store.runs import load_members

    if frames not in pr.FRAME_SETS:
        raise QdgapError(f"--frames must be one of {', '.join(pr.FRAME_SETS)}, got {frames!r}")
    members = load_members(runs)
    traj = read_trajectory(data)
    pr.check_members_fit(members, traj, data_path=data, allow_data_change=allow_data_change)
    return members, traj, pr.select_frames(members, traj, frames)


def predict_to_file(
    runs: Path,
    data: Path,
    output: Path,
    *,
    frames: str = "unseen",
    device: str = "auto",
    backend: str | None = None,
    level: float = 0.95,
    interval: str | None = None,
    allow_data_change: bool = False,
    array: slurm.ArrayOptions | None = None,
    frames_per_task: int | None = None,
    part: str | None = None,
    hooks: Hooks = Hooks(),
) -> PredictOutcome | PartOutcome | None:
    """Predict every chosen frame with every member of ``runs`` and write ``output`` (+ ``.csv``).

    Args:
        runs: the ensemble folder; data: the trajectory file; output: ``predictions.h5``.
        frames: ``analysis.predict.FRAME_SETS``; device: ``auto``, ``cpu``, ``cuda``.
        backend: model runtime (``torchscript``, ``onnxruntime``; None for the default).
        level: nominal coverage of ``gap_lo_ev``..``gap_hi_ev``; interval: ``scale`` or ``conformal``.
        array: compute as a Slurm job array instead of here.
        frames_per_task: frames per array part; None for one part per member.
        part: compute only this part ``SEED:BLOCK`` (what an array task runs).

    Returns:
        The outcome; a ``PartOutcome`` for ``part``; None when an array is not complete yet (said why). Every
        outcome is also given to ``hooks.show``.
    """
    from qdgap.core.analysis import calibration as cb
    from qdgap.core.analysis import predict as pr
    from qdgap.core.common import schema
    from qdgap.core.common.files import check_output_file, exclusive_lock
    from qdgap.core.common.runtime import resolve_device
    from qdgap.core.deploy.export import check_backend

    cb.check_level(level)
    if interval is not None and interval not in cb.METHODS:
        raise QdgapError(f"--interval must be one of {', '.join(cb.METHODS)}, got {interval!r}")
    runtime, backend = backend, check_backend(backend)
    dev = str(resolve_device(device))
    members, traj, chosen = _members_and_frames(runs, data, frames, allow_data_change)
    cache_dir = pr.runs_cache_dir(runs)
    if part is not None:
        name, path, n = pa.compute_one(
            "predict", part, members, traj, chosen, output, frames_per_task, hooks=hooks, device=dev,
            backend=runtime, cache_dir=cache_dir,
        )  # fmt: skip
        outcome = PartOutcome(output, name, path, n)
        hooks.show(outcome)
        return outcome
    check_output_file(output)  # a folder, or an unwritable place: refused before the work, not after
    with exclusive_lock(output.parent / f".{output.name}.lock", what=f"output {output}"):
        array_attrs = {}
        if array is not None:
            options = {"runs": runs, "data": data, "frames": frames, "output": output, "device": device,
                       "allow_data_change": allow_data_change}  # fmt: skip
            merged = pa.follow("predict", members, traj, chosen, output, options, frames_per_task, array.resources,
                               wait=array.wait, dry_run=array.dry_run, hooks=hooks)  # fmt: skip
            if merged is None:
                return None
            pred, array_attrs = merged.result, pa.merged_attrs(merged, frames_per_task)
        else:
            with hooks.progress(
                f"predict ({len(members)} members)", len(members) * len(chosen), unit="frame"
            ) as advance:
                pred = pr.predict_ensemble(
                    members, traj, chosen, cache_dir=cache_dir, device=dev, backend=backend, progress=advance
                )
        summary = pr.summarise(pred)
        baselines = pr.baseline_report(pred, pr.train_union(members), traj, members=len(members))
        calibrated, cal_summary = cb.calibrate_prediction(
            runs, members, pred, traj_sha256=traj.sha256, level=level, method=interval,
            cache_dir=cache_dir, device=dev, backend=backend,
        )  # fmt: skip
        attrs = {
            schema.ATTR_INPUT_SHA256: traj.sha256,
            schema.ATTR_INPUT_PATH: str(data.resolve()),
            "frames": frames,
            "backend": backend,
            **array_attrs,
            **{k: v for k, v in summary.items() if not isinstance(v, list)},
            **cal_summary,
            **(baselines.attrs() if baselines is not None else {}),
        }
        pr.write_predictions(pred, output, attrs=attrs, calibrated=calibrated)
    outcome = PredictOutcome(output, len(members), len(chosen), summary, cal_summary, baselines)
    hooks.show(outcome)
    return outcome


@dataclass(frozen=True)
class FnaStatistics:
    """How ``fna_to_file`` ranks and tests the atoms (``analysis.fna.fna_statistics``)."""

    score: str = "auto"
    bootstrap: int = 2000
    top_k: int = 10
    correction: str = "holm"
    seed: int = 0

    def check(self) -> None:
        from qdgap.core.analysis import fna as fn
        from qdgap.core.analysis import importance as imp

        if self.score not in fn.SCORE_CHOICES:
            raise QdgapError(f"--score must be one of {', '.join(fn.SCORE_CHOICES)}, got {self.score!r}")
        if self.correction not in imp.CORRECTIONS:
            raise QdgapError(f"--correction must be one of {', '.join(imp.CORRECTIONS)}, got {self.correction!r}")
        if self.bootstrap < imp.MIN_BOOTSTRAP:
            raise QdgapError(f"--bootstrap must be at least {imp.MIN_BOOTSTRAP}, got {self.bootstrap}")
        if self.top_k < 1:
            raise QdgapError(f"--top-k must be at least 1, got {self.top_k}")


def check_fna_options(*, mask: str, every: int, chunk: int | None, statistics: FnaStatistics) -> None:
    """Refuse a bad ``--mask``, ``--every``, ``--chunk`` or statistics option, before any heavy work."""
    from qdgap.kernels.fna import MODES

    if mask not in MODES:
        raise QdgapError(f"--mask must be one of {', '.join(MODES)}, got {mask!r}")
    if every < 1:
        raise QdgapError(f"--every must be at least 1, got {every}")
    if chunk is not None and chunk < 1:
        raise QdgapError(f"--chunk must be at least 1, got {chunk}")
    statistics.check()


def fna_frames(traj, chosen: np.ndarray, *, every: int, score: str, name: str) -> np.ndarray:
    """FNA's frames: every ``every``-th of ``chosen`` (F,) int64, only the labelled ones unless ``score`` is
    shift and some are labelled; ``name`` is the data's, for messages.

    Raises:
        QdgapError: ``score`` rmse without a labelled frame, or no frame left.
    """
    chosen = chosen[::every]
    labelled = np.isfinite(traj.gap_ev[chosen])
    if score == "rmse" and not labelled.any():
        raise QdgapError(f"{name}: none of the chosen frames has a true gap; --score rmse needs labels, try shift")
    if score != "shift" and labelled.any():
        chosen = chosen[labelled]  # the rmse score ranks: its RMSEs and the shifts are then on the same frames
    if chosen.size == 0:
        raise QdgapError(f"{name}: no frames chosen for FNA; try --frames all or a smaller --every")
    return chosen


def fna_to_file(
    runs: Path,
    data: Path,
    output: Path,
    *,
    frames: str = "unseen",
    every: int = 1,
    mask: str = "full",
    chunk: int | None = None,
    csv: Path | None = None,
    xyz: Path | None = None,
    device: str = "auto",
    backend: str | None = None,
    allow_data_change: bool = False,
    statistics: FnaStatistics = FnaStatistics(),
    array: slurm.ArrayOptions | None = None,
    frames_per_task: int | None = None,
    part: str | None = None,
    hooks: Hooks = Hooks(),
) -> FnaOutcome | PartOutcome | None:
    """Mask every atom of every chosen frame for every member of ``runs``; write ``output``, the CSV and the XYZ.

    Args:
        every: use every k-th chosen frame; mask: ``kernels.fna.MODES``; chunk: masked copies per forward.
        csv: the importance table (default ``average_rmse_results.csv`` beside ``output``).
        statistics: how the atoms are ranked and tested; the rest as ``predict_to_file``.

    Returns:
        The outcome; a ``PartOutcome`` for ``part``; None when an array is not complete yet (said why). Every
        outcome is also given to ``hooks.show``.
    """
    from qdgap.core.analysis import fna as fn
    from qdgap.core.analysis import predict as pr
    from qdgap.core.common import schema
    from qdgap.core.common.files import check_output_file, exclusive_lock
    from qdgap.core.common.runtime import resolve_device
    from qdgap.core.deploy.export import check_backend

    check_fna_options(mask=mask, every=every, chunk=chunk, statistics=statistics)
    runtime, backend = backend, check_backend(backend)
    dev = str(resolve_device(device))
    csv_path = csv or output.parent / "average_rmse_results.csv"
    members, traj, chosen = _members_and_frames(runs, data, frames, allow_data_change)
    score = statistics.score
    chosen = fna_frames(traj, chosen, every=every, score=score, name=str(data))
    cache_dir = pr.runs_cache_dir(runs)
    if part is not None:
        name, path, n = pa.compute_one(
            "fna", part, members, traj, chosen, output, frames_per_task, hooks=hooks, mode=mask, chunk=chunk,
            device=dev, backend=runtime, cache_dir=cache_dir,
        )  # fmt: skip
        outcome = PartOutcome(output, name, path, n)
        hooks.show(outcome)
        return outcome
    for path in (output, csv_path, csv_path.with_name(fn.GROUPS_CSV), xyz):
        if path is not None:
            check_output_file(path)  # a folder, or an unwritable place: refused before the work, not after
    partial = output.parent / f".{output.name}.partial"
    with exclusive_lock(output.parent / f".{output.name}.lock", what=f"output {output}"):
        array_attrs = {}
        if array is not None:
            # What decides a part's frames and values; the statistics' options matter only to the merge.
            options = {"runs": runs, "data": data, "frames": frames, "every": every, "mask": mask, "score": score,
                       "chunk": chunk, "output": output, "device": device,
                       "allow_data_change": allow_data_change}  # fmt: skip
            merged = pa.follow("fna", members, traj, chosen, output, options, frames_per_task, array.resources,
                               wait=array.wait, dry_run=array.dry_run, hooks=hooks, mode=mask)  # fmt: skip
            if merged is None:
                return None
            result, array_attrs = merged.result, pa.merged_attrs(merged, frames_per_task)
        else:
            evaluations = len(members) * len(chosen) * (traj.num_atoms + 1)
            label = f"FNA ({len(members)} members, {len(chosen)} frames)"
            with hooks.progress(label, evaluations, unit="masked") as advance:
                result = fn.run_fna(
                    members, traj, chosen, mode=mask, chunk=chunk, device=dev, backend=backend,
                    cache_dir=cache_dir, partial_dir=partial, progress=advance,
                )  # fmt: skip
        attrs = {
            schema.ATTR_INPUT_SHA256: traj.sha256,
            schema.ATTR_INPUT_PATH: str(data.resolve()),
            "mask": mask,
            "frames": frames,
            "every": every,
            "backend": backend,
            **array_attrs,
        }
        s = statistics
        stats = fn.fna_statistics(
            result, score=score, n_boot=s.bootstrap, top_k=s.top_k, correction=s.correction, seed=s.seed
        )
        table = fn.write_fna(result, output, csv_path, attrs=attrs, stats=stats)
        if xyz is not None:
            fn.write_importance_xyz(result, traj, xyz)
        shutil.rmtree(partial, ignore_errors=True)
    outcome = FnaOutcome(output, csv_path, xyz, len(members), len(chosen), traj.num_atoms, mask, table, stats)
    hooks.show(outcome)
    return outcome


@dataclass(frozen=True)
class SelectOutcome:
    """``selection.csv`` (and the POSCARs) written.

    Attributes:
        selection: the frames chosen (``analysis.select.Selection``).
        calibrated: whether ``gap_std_calibrated_ev`` is the calibrated spread; else ``why_not``.
        structures: the POSCARs written, in the order picked.
    """

    output: Path
    selection: object
    candidates: str
    calibrated: bool
    why_not: str
    structures: tuple[Path, ...]
    structures_dir: Path | None


def select_to_file(
    runs: Path,
    data: Path,
    output: Path,
    *,
    budget: int,
    strategy: str,
    candidates: str,
    min_separation_fs: float | None = None,
    seed: int = 0,
    structures: Path | None = None,
    force: bool = False,
    device: str = "auto",
    hooks: Hooks = Hooks(),
) -> SelectOutcome:
    """Choose ``budget`` frames of ``data`` to label next with the ensemble of ``runs``; write ``output``
    (``selection.csv``) and, with ``structures``, their POSCARs (``st<frame>.vasp``).

    Args:
        strategy, candidates, min_separation_fs (fs; None for auto), seed: as ``analysis.select``.
        force: replace an existing ``output``.
    """
    import dataclasses

    from qdgap.core.analysis import calibration as cb
    from qdgap.core.analysis import predict as pr
    from qdgap.core.analysis import select as sl
    from qdgap.core.common.files import check_output_file, exclusive_lock
    from qdgap.core.common.runtime import resolve_device
    from qdgap.core.data.trajectory import read_trajectory
    from qdgap.core.store.runs import load_members

    if strategy not in sl.STRATEGIES:
        raise QdgapError(f"--strategy must be one of {', '.join(sl.STRATEGIES)}, got {strategy!r}")
    if candidates not in sl.CANDIDATE_SETS:
        raise QdgapError(f"--candidates must be one of {', '.join(sl.CANDIDATE_SETS)}, got {candidates!r}")
    if budget < 1:
        raise QdgapError(f"--budget must be at least 1, got {budget}")
    if min_separation_fs is not None and not min_separation_fs >= 0:
        raise QdgapError(f"--min-separation-fs must be >= 0, got {min_separation_fs}")
    if output.exists() and not force:
        raise QdgapError(f"{output}: output exists; choose another name or pass --force")
    dev = str(resolve_device(device))
    members = load_members(runs)
    traj = read_trajectory(data)
    pr.check_members_fit(members, traj, data_path=data, allow_data_change=True)
    check_output_file(output)
    cache = pr.runs_cache_dir(runs)
    with exclusive_lock(output.parent / f".{output.name}.lock", what=f"output {output}"):
        with hooks.progress(f"select ({len(members)} members)", None, unit="frame") as advance:
            sel = sl.select_for_labelling(
                members, traj, budget=budget, strategy=strategy, candidates=candidates,
                min_separation_fs=min_separation_fs, seed=seed, cache_dir=cache, device=dev, progress=advance,
            )  # fmt: skip
        # After the choice, which a single scale cannot change: a bad budget is refused before any fit.
        cal, why = cb.calibration_for(runs, members, cache_dir=cache, device=dev)
        if cal is not None:
            sel = dataclasses.replace(sel, gap_std_calibrated_ev=sel.gap_std_ev * cal.scale)
        written = sl.write_structures(traj, sel.frame_index, structures) if structures is not None else []
        sl.write_selection(sel, output, force=force)  # last: a selection.csv means its POSCARs are there too
    outcome = SelectOutcome(output, sel, candidates, cal is not None, why or "", tuple(written), structures)
    hooks.show(outcome)
    return outcome
