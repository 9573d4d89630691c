"""qdgap: machine-learned band gaps along MD trajectories of quantum dots.

ALIGNN ensembles, Feature Nullification Analysis and transfer learning, as a
batch CLI (``qdgap --help``). Imports stay light here so ``--help`` is fast.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
