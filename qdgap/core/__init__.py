"""Science and orchestration: data, graphs, model, training, prediction, FNA, reports.

``core`` never imports ``cli``; it may import ``kernels``.
"""

from qdgap.core.common.errors import QdgapError

__all__ = ["QdgapError"]
