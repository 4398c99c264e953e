"""torchrun support: one process without torchrun stays the default.

Under ``torchrun --nproc_per_node=N -m ccdlib ...`` the environment carries ``RANK``/``WORLD_SIZE``;
:func:`init_distributed` then starts the process group (NCCL on CUDA, gloo on CPU). Teacher scoring
(:func:`ccdlib.scoring.embed_views`) shards its chunks over ranks and gathers the embeddings. Finetune-mode
training (:class:`ccdlib.trainer.StudentTrainer`) takes its pieces from here: global-batch BatchNorm
(:func:`_sync_batchnorm`; :class:`_AllReduceBatchNorm2d` on CPU/gloo) and each rank's slice of a step
(:func:`_rank_batches`).
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn as nn

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


# ------------------------------------------------------------------------------------------ finetune training
class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over ranks: every rank gets ``sum_r x_r``; the gradient is summed over ranks too."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = x.clone()
        torch.distributed.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad


class _AllReduceBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch over all ranks.

    ``nn.SyncBatchNorm`` does this on CUDA only; this is the CPU/gloo stand-in (two all-reduces per layer: the
    per-channel sums and counts, then the centred sums of squares). Empty local batches are allowed. Eval mode,
    and a single process, are plain BatchNorm2d. Same parameters, buffers and state-dict keys as BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.distributed.is_available() and torch.distributed.is_initialized()
                and torch.distributed.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        local_count = x.new_full((1,), float(x.numel() // c) if c else 0.0)
        tot = _AllReduceSum.apply(torch.cat([x.sum(dim=(0, 2, 3)), local_count]))
        count = tot[c].detach()
        if count.item() <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got {int(count.item())} over all ranks")
        mean = tot[:c] / count
        centred = x - mean.view(1, c, 1, 1)
        var = _AllReduceSum.apply((centred * centred).sum(dim=(0, 2, 3))) / count
        y = centred * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked.item())
                self.running_mean.mul_(1 - f).add_(mean.detach(), alpha=f)
                self.running_var.mul_(1 - f).add_(var.detach() * (count / (count - 1)), alpha=f)
        return y


def _to_all_reduce_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` by :class:`_AllReduceBatchNorm2d`, sharing its parameters and buffers."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, _AllReduceBatchNorm2d):
        new = _AllReduceBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                    module.track_running_stats, device=None)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        new.running_mean, new.running_var = module.running_mean, module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.training = module.training
        return new
    for name, child in module.named_children():
        module.add_module(name, _to_all_reduce_batchnorm(child))
    return module


def _sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Global-batch BatchNorm statistics across ranks: ``nn.SyncBatchNorm`` on CUDA, else the all-reduce stand-in."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_all_reduce_batchnorm(module)


def _rank_batches(order: np.ndarray, batch_size: int, rank: int, world: int) -> list[tuple[list[int], int]]:
    """Cut a shuffled order into global steps of ``world * batch_size`` images; rank ``rank`` takes the
    ``rank``-th ``batch_size`` slice of each (short or empty on the last step). Returns, per step, this rank's
    image indices and the number of images in the whole step."""
    g = world * batch_size
    out = []
    for s in range(0, len(order), g):
        step = order[s:s + g]
        out.append(([int(i) for i in step[rank * batch_size:(rank + 1) * batch_size]], len(step)))
    return out
