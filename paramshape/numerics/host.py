"""Whether a forward may read a value back to the host.

``bool(t)``, ``t.item()`` and ``float(t)`` wait for the device to finish everything queued before
them: on a GPU, a forward that does one per call stalls the pipeline at every read of a constrained
tensor. A forward asks :func:`host_reads_free` before such a check, and on a device where the read
is not free it checks on the device instead (``torch._assert_async``) or runs a fixed amount of
work (Sinkhorn's iteration count).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["host_reads_free"]


def host_reads_free(tensor: Tensor) -> bool:
    """Whether reading a value of ``tensor`` back costs no device synchronisation: a CPU tensor
    outside a compiled region (where a read would break the graph)."""
    return tensor.device.type == "cpu" and not torch.compiler.is_compiling()
