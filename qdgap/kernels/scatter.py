"""Scatter primitives that TorchScript and ONNX accept.

The output size always comes from the graph (``dim_size``), never from
``index.max()``, which would force a device sync and undercount trailing
atoms that have no bonds.
"""

from __future__ import annotations

from typing import List

import torch
from torch import Tensor


def scatter_sum(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """Sum the rows of ``src`` into ``dim_size`` buckets.

    Args:
        src: (E, ...) values.
        index: (E,) int64 bucket of each row.
        dim_size: number of buckets.

    Returns:
        (dim_size, ...) sums; empty buckets are 0.
    """
    shape: List[int] = [dim_size]
    for i in range(1, src.dim()):
        shape.append(src.size(i))
    # index_add_ is the fast CPU path (no expanded index tensor) and is deterministic on the CPU.
    return torch.zeros(shape, dtype=src.dtype, device=src.device).index_add_(0, index, src)


def scatter_mean(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """Mean of the rows of ``src`` per bucket; empty buckets give 0 instead of NaN.

    Args:
        src: (E, H) values.
        index: (E,) int64 bucket of each row.
        dim_size: number of buckets.

    Returns:
        (dim_size, H).
    """
    total = scatter_sum(src, index, dim_size)
    ones = torch.ones(index.shape[0], dtype=src.dtype, device=src.device)
    count = torch.zeros(dim_size, dtype=src.dtype, device=src.device).index_add_(0, index, ones)
    return total / count.clamp_min(1.0).unsqueeze(1)
