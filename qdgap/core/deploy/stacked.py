"""The ensemble's members as one stacked model (``kernels.ensemble``), for predict and FNA.

Members can share one forward only when their model sizes and graph
parameters are equal (``stack_reason`` says why not). Each member's eager
``GapModel`` is rebuilt from its ``best.pt`` (``checkpoint.load_weights``) and
the weights stacked.

Whether members-at-once is faster depends on the device and the model size
(bench/bench_ensemble_forward.py): ``use_stacked`` holds the choice that
``predict`` and ``fna`` make when they are not told.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from qdgap.core.common.errors import QdgapError
from qdgap.core.deploy.checkpoint import load_weights
from qdgap.core.store.runs import BEST_PT, Member
from qdgap.kernels.ensemble import StackedGapModel

if TYPE_CHECKING:  # the eager model needs upstream alignn's layers; prediction from model.ts must not
    from qdgap.core.model.network import GapModel


def stack_models(models: Sequence[GapModel], *, device: torch.device | str = "cpu") -> StackedGapModel:
    """Eager members of one configuration as one ``StackedGapModel`` on ``device``.

    Raises:
        ValueError: the models differ in size (``StackedGapModel.from_states``).
    """
    if not models:
        raise ValueError("no members to stack")
    first = models[0]
    return StackedGapModel.from_states(
        [m.state_dict() for m in models],
        alignn_layers=len(first.alignn_layers),
        gcn_layers=len(first.gcn_layers),
        bond_gamma=float(first.edge_embedding[0].gamma),
        angle_gamma=float(first.angle_embedding[0].gamma),
        device=device,
    )


def stack_reason(members: Sequence[Member]) -> str | None:
    """Why ``members`` cannot run as one stacked model, or None when they can."""
    if not members:
        return "no members"
    first = members[0]
    for m in members[1:]:
        if m.config.model != first.config.model:
            return f"{m.path.name} has other model sizes than {first.path.name}"
        if m.config.graph != first.config.graph:
            return f"{m.path.name} has other graph parameters than {first.path.name}"
    return None


def load_stacked(members: Sequence[Member], *, device: torch.device | str = "cpu") -> StackedGapModel:
    """The members' ``best.pt`` weights as one stacked model.

    Raises:
        QdgapError: members of different configurations, or a ``best.pt`` that is missing, unreadable or
            does not fit its ``config.json``.
    """
    reason = stack_reason(members)
    if reason is not None:
        raise QdgapError(f"cannot evaluate the members together: {reason}")
    from qdgap.core.model.network import GapModel

    models = []
    for member in members:
        path = member.path / BEST_PT
        if not path.is_file():
            raise QdgapError(f"{path}: missing; members-at-once needs every member's best.pt")
        model = GapModel(member.config.model)
        try:
            model.load_state_dict(load_weights(path), strict=True)
        except RuntimeError as exc:
            raise QdgapError(f"{path}: weights do not fit the model in config.json ({str(exc)[:120]})") from exc
        models.append(model.eval())
    return stack_models(models, device=device)


def use_stacked(device: torch.device | str, members: Sequence[Member]) -> bool:
    """The default: members-at-once on CUDA (one member's forward leaves a GPU idle) where they stack.

    On a CPU the stacked forward measured no faster than member by member for either preset
    (bench/bench_ensemble_forward.py), so the CPU keeps the member-by-member path.
    """
    return torch.device(device).type == "cuda" and len(members) > 1 and stack_reason(members) is None
