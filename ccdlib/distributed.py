"""torchrun support: one process without torchrun stays the default.

Under ``torchrun --nproc_per_node=N -m ccdlib ...`` the environment carries ``RANK``/``WORLD_SIZE``;
:func:`init_distributed` then starts the process group (NCCL on CUDA, gloo on CPU). Teacher scoring
(:func:`ccdlib.scoring.embed_views`) shards its chunks over ranks and gathers the embeddings.
"""
from __future__ import annotations

import os

import torch

__all__ = ["init_distributed", "rank_and_world"]


def init_distributed(backend: str | None = None) -> int:
    """Initialise the default process group when launched by torchrun; returns this process's rank (0 alone)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not torch.distributed.is_available():
        return 0
    if not torch.distributed.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        torch.distributed.init_process_group(backend=backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return torch.distributed.get_rank()


def rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
