"""Watch the band gap during your own ASE molecular dynamics: ``GapLogger``.

Attach it to any ASE dynamics like ASE's own ``MDLogger``; at every call it predicts the gap of the
current structure with a trained ``Ensemble`` and appends one row to a CSV: the step, the time, the
ensemble mean, raw and calibrated spread, the interval and the extrapolation flag (the structure has
left what the ensemble knows)::

    from ase.md.langevin import Langevin
    from qdgap import Ensemble
    from qdgap.ase import GapLogger

    dyn = Langevin(atoms, timestep=1 * units.fs, temperature_K=300, friction=0.01)
    logger = GapLogger(Ensemble.load("work/demo/runs"), atoms, "gap.csv", interval=10, dyn=dyn)
    dyn.attach(logger, interval=logger.interval)
    dyn.run(1000)

This module is named after the package it serves; inside it ``import ase`` is ASE itself (absolute
imports), never this module.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import IO, Any

from qdgap.api import Ensemble
from qdgap.core.common import schema
from qdgap.core.common.errors import QdgapError

__all__ = ["GapLogger"]

COLUMNS = (
    "step",
    schema.TIME_FS,
    schema.GAP_MEAN_EV,
    schema.GAP_STD_EV,
    schema.GAP_STD_CALIBRATED_EV,
    schema.GAP_LO_EV,
    schema.GAP_HI_EV,
    schema.EXTRAPOLATING,
)


class GapLogger:
    """Predict and log the gap of ``atoms`` each time the dynamics calls it.

    Args:
        ensemble: the trained ensemble (``Ensemble.load``); ``atoms`` must have its composition and atom order.
        atoms: the ``ase.Atoms`` the dynamics moves (read at each call, not copied).
        logfile: CSV path (overwritten) or an open text file; one header row, then one row per call
            with ``COLUMNS`` (eV, fs; ``extrapolating`` 0 or 1; calibrated columns empty when the
            ensemble has no calibration).
        interval: MD steps between calls, the ``interval`` to attach with; numbers the steps when
            ``dyn`` is not given.
        dyn: the dynamics, for its step count and time (``dyn.nsteps``, ``dyn.get_time()``).
        xyz: also append each logged structure to this extended XYZ file, with the row's values in its info.
        level: nominal coverage of the interval.

    Attributes:
        rows: the number of rows written.
        last: the last ``Prediction`` (one frame).

    Raises:
        QdgapError: a bad interval, or (at the first call) a composition the ensemble was not trained on.
    """

    def __init__(
        self,
        ensemble: Ensemble,
        atoms: Any,
        logfile: str | Path | IO[str],
        interval: int = 10,
        *,
        dyn: Any = None,
        xyz: str | Path | None = None,
        level: float = 0.95,
    ):
        if int(interval) < 1:
            raise QdgapError(f"interval must be at least 1 step, got {interval}")
        self.ensemble = ensemble
        self.atoms = atoms
        self.interval = int(interval)
        self.dyn = dyn
        self.level = level
        self.xyz = None if xyz is None else Path(xyz)
        self.rows = 0
        self.last = None
        if hasattr(logfile, "write"):
            self._file, self._owned = logfile, False
        else:
            self._file, self._owned = open(logfile, "w", newline=""), True  # noqa: SIM115 (closed by close())
        if self.xyz is not None and self.xyz.exists():
            self.xyz.unlink()  # a fresh log, like the CSV
        self._writer = csv.writer(self._file)
        self._writer.writerow(COLUMNS)
        self._file.flush()

    def __call__(self) -> None:
        from ase import units

        pred = self.ensemble.predict(self.atoms, level=self.level)
        self.last = pred
        if self.dyn is not None:
            step = int(self.dyn.nsteps)
            time_fs = float(self.dyn.get_time()) / units.fs
        else:
            step = self.rows * self.interval
            time_fs = float("nan")
        values = (
            pred.mean_ev[0],
            pred.std_ev[0],
            pred.std_calibrated_ev[0],
            pred.lo_ev[0],
            pred.hi_ev[0],
        )
        extrapolating = int(bool(pred.extrapolating[0]))
        self._writer.writerow([step, _cell(time_fs), *(_cell(v) for v in values), extrapolating])
        self._file.flush()  # a row per call, readable while the run goes on
        if self.xyz is not None:
            self._append_xyz(step, time_fs, values, extrapolating)
        self.rows += 1

    def _append_xyz(self, step: int, time_fs: float, values: tuple, extrapolating: int) -> None:
        from ase.io import write

        frame = self.atoms.copy()
        frame.calc = None  # the info carries the gap; a calculator's energy and forces are not ours to store
        frame.info.pop("comment", None)  # the input file's comment describes the first structure, not this one
        frame.info.update({"step": step, COLUMNS[1]: time_fs, schema.EXTRAPOLATING: extrapolating})
        frame.info.update({name: float(v) for name, v in zip(COLUMNS[2:7], values, strict=True)})
        write(self.xyz, frame, format="extxyz", append=True)

    def close(self) -> None:
        """Close the CSV (if the logger opened it)."""
        if self._owned and not self._file.closed:
            self._file.close()

    def __enter__(self) -> GapLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the file may already be gone
            pass


def _cell(value: float) -> str:
    value = float(value)
    return "" if math.isnan(value) else f"{value:.6f}"
