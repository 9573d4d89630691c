"""Groups of atoms for the importance statistics: species, and site classes (core, surface, bridging, terminal).

Pure functions on atomic numbers, positions (Å) and labels; no file I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SITE_CUTOFF_ANG = 3.1  # neighbours within this distance are bonded (Cd-Se 2.6-2.9 Å, Cd-Cl 2.5-2.9 Å; Cd-Cd 4.3 Å)
CORE_COORDINATION = 4  # a core Cd or Se has four bonded neighbours, none of them a ligand
LIGAND_NUMBERS = (9, 17, 35, 53)  # halogens: classified bridging or terminal, not core or surface


def site_classes(numbers: np.ndarray, positions_ang: np.ndarray, *, cutoff_ang: float = SITE_CUTOFF_ANG) -> list[str]:
    """Each atom's species and site: core or surface, or for a ligand (halogen) bridging or terminal.

    Bonded neighbours are atoms within ``cutoff_ang``, counted on every given frame
    and averaged (rounded half up), so an atom whose bond flickers is classed by
    what it is most of the time. A ligand with two or more non-ligand (Cd)
    neighbours is bridging, otherwise terminal. Any other atom is core when it has
    ``CORE_COORDINATION`` (4) or more non-ligand neighbours and no ligand
    neighbour, as a Cd or Se inside a zinc-blende or wurtzite lattice; otherwise
    it is surface.

    Args:
        numbers: (N,) atomic numbers.
        positions_ang: (F, N, 3) or (N, 3), Å.

    Returns:
        N names such as ``Cd core``, ``Se surface``, ``Cl bridging``.
    """
    from ase.data import chemical_symbols

    z = np.asarray(numbers)
    pos = np.asarray(positions_ang, np.float64)
    pos = pos[None] if pos.ndim == 2 else pos
    ligand = np.isin(z, LIGAND_NUMBERS)
    counts = np.zeros((len(z), 2))  # per atom: mean non-ligand and ligand neighbours
    for lo in range(0, len(pos), 64):  # bounds the (frames, N, N) distance array
        chunk = pos[lo : lo + 64]
        d = np.linalg.norm(chunk[:, :, None] - chunk[:, None], axis=-1)
        bonded = (d < cutoff_ang) & ~np.eye(len(z), dtype=bool)
        counts[:, 0] += (bonded & ~ligand[None, None]).sum(axis=(0, 2))
        counts[:, 1] += (bonded & ligand[None, None]).sum(axis=(0, 2))
    coord = np.floor(counts / len(pos) + 0.5).astype(int)
    out = []
    for i, zi in enumerate(z.tolist()):
        if ligand[i]:
            site = "bridging" if coord[i, 0] >= 2 else "terminal"
        else:
            site = "core" if coord[i, 0] >= CORE_COORDINATION and coord[i, 1] == 0 else "surface"
        out.append(f"{chemical_symbols[zi]} {site}")
    return out


def atom_groups(atom_label: Sequence[str], site_class: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Groups for ``group_stats``: each species, then each site class, in order of first appearance.

    Args:
        atom_label: N labels (``Cd1``.., ``Se1``..).
        site_class: N site names (``site_classes``); species groups only when None.
    """
    species = ["".join(ch for ch in str(lab) if ch.isalpha()) for lab in atom_label]
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(species):
        groups.setdefault(s, []).append(i)
    if site_class is not None:
        for i, c in enumerate(site_class):
            groups.setdefault(str(c), []).append(i)
    return {k: np.asarray(v, dtype=np.int64) for k, v in groups.items()}
