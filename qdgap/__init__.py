"""qdgap: machine-learned band gaps along MD trajectories of quantum dots.

ALIGNN ensembles, Feature Nullification Analysis and transfer learning, as a
batch CLI (``qdgap --help``) and a Python API::

    from qdgap import Ensemble
    ens = Ensemble.load("work/demo/runs")
    p = ens.predict(atoms)  # an ase.Atoms, a list of them, or a structure / trajectory file
    print(p.mean_ev, p.std_calibrated_ev)  # (F,) eV

The API's names are imported on first use (``__getattr__``), so ``import qdgap`` and
``qdgap --help`` load neither torch nor the models.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Ensemble", "Prediction", "QdgapError", "__version__", "import_structures", "interpolate", "read_trajectory"]

# name -> the module that defines it; resolved lazily by __getattr__ (PEP 562). Not imported under
# TYPE_CHECKING either: core imports this package for __version__, and the import-order test would see a cycle.
_LAZY = {
    "Ensemble": "qdgap.api",
    "Prediction": "qdgap.api",
    "read_trajectory": "qdgap.api",
    "import_structures": "qdgap.api",
    "interpolate": "qdgap.api",
    "QdgapError": "qdgap.core.common.errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'qdgap' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
