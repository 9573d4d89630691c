"""Atom labels and chemical formulae from atomic numbers."""

from __future__ import annotations

from collections import Counter

import numpy as np
from ase.data import chemical_symbols


def atom_labels(numbers: np.ndarray) -> list[str]:
    """Label every atom ``<Species><k>``, k counting from 1 within its species in file order.

    This is the convention of the original workflow's POSCAR files and FNA
    results (``Cd1``..``Cd28``, ``Se1``..``Se17``, ``Cl1``..``Cl22``), and the
    only place qdgap makes labels.

    Args:
        numbers: (N,) atomic numbers.

    Returns:
        N labels, in the order of ``numbers``.
    """
    seen: Counter[int] = Counter()
    labels = []
    for z in np.asarray(numbers).tolist():
        seen[z] += 1
        labels.append(f"{chemical_symbols[z]}{seen[z]}")
    return labels


def formula(numbers: np.ndarray) -> str:
    """Chemical formula with species in order of first appearance, e.g. ``Cd28Se17Cl22``."""
    counts = Counter(np.asarray(numbers).tolist())
    return "".join(f"{chemical_symbols[z]}{n if n > 1 else ''}" for z, n in counts.items())
