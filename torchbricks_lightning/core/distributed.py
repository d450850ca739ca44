"""The process group, as the library asks about it: one place for the world size and this process's rank.

Everything here is torch's public ``torch.distributed`` API; nothing imports Lightning. Before a process group
exists (a single process, or a DDP run before ``fit`` has set it up) the world is one process of rank 0.

Example:
    >>> world_size(), global_rank(), is_distributed()
    (1, 0, False)
"""

from __future__ import annotations

import torch

__all__ = ["global_rank", "is_distributed", "world_size"]


def is_distributed() -> bool:
    """Whether a process group is initialised (it may still hold a single process)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    """The number of processes of the initialised process group, or 1."""
    return int(torch.distributed.get_world_size()) if is_distributed() else 1


def global_rank() -> int:
    """This process's rank in the initialised process group, or 0."""
    return int(torch.distributed.get_rank()) if is_distributed() else 0
