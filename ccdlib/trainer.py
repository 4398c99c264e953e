"""Training the student (method.md §5, §6.5): :class:`StudentTrainer` runs one epoch at a time against the
pseudo-labels its caller supplies, on cached trunk features (frozen mode) or on decoded images (finetune mode,
optionally under ``torchrun``). The model is :mod:`ccdlib.student`; the feature cache :mod:`ccdlib.features`.
"""
from __future__ import annotations

import contextlib
import time
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import features as _features
from .distributed import rank_and_world
from .errors import ConfigError, DatasetError
from .scoring import load_rgb
from .student import (HEAD_DTYPES, StudentConfig, _TAG_FINETUNE_SAMPLE, _TAG_SHUFFLE, _TAG_TORCH_GLOBAL,
                      _augmented_view, _derive_seed, _generator, build_student, cam_to_logits, preprocess_image,
                      write_checkpoint)
from .teachers import resolve_device

__all__ = ["StudentTrainer"]

# ------------------------------------------------------------------------------------------ finetune data
class _ImageViews(torch.utils.data.Dataset):
    """Finetune-mode samples: ``(x, x_aug, index)``; ``x`` = resized + random flip, ``x_aug`` = ColorJitter + its
    own random flip (an empty tensor when ``with_aug`` is off). Randomness per (seed, epoch, index)."""

    def __init__(self, paths: Sequence[Path], *, trunk: str, image_size: int, seed: int, epoch: int,
                 train: bool, with_aug: bool):
        self.paths, self.trunk, self.image_size = list(paths), trunk, image_size
        self.seed, self.epoch, self.train, self.with_aug = seed, epoch, train, with_aug

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        im = load_rgb(self.paths[i])
        if not self.train:
            return preprocess_image(im, trunk=self.trunk, image_size=self.image_size), torch.empty(0), i
        g = _generator(self.seed, _TAG_FINETUNE_SAMPLE, self.epoch, i)
        flip = torch.rand(1, generator=g).item() < 0.5
        x = preprocess_image(im, trunk=self.trunk, image_size=self.image_size, flip=flip)
        if not self.with_aug:
            return x, torch.empty(0), i
        return x, _augmented_view(im, g, trunk=self.trunk, image_size=self.image_size), i


# ------------------------------------------------------------------------------------------ several processes
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


def _collate_views(samples: list, *, image_size: int, with_aug: bool):
    """``default_collate``, plus an empty batch of the right shapes for a rank with no image in a step."""
    if samples:
        return torch.utils.data.default_collate(samples)
    x = torch.empty(0, 3, image_size, image_size)
    return x, (torch.empty_like(x) if with_aug else torch.empty(0, 0)), torch.empty(0, dtype=torch.long)


# ------------------------------------------------------------------------------------------ trainer
def _soft_bce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None,
              reduction: str = "mean") -> torch.Tensor:
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # (B, C)
    if weights is not None:
        loss = loss * weights.view(-1, 1)
    return loss.mean() if reduction == "mean" else loss.sum()


def _softmax_kl(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """``(1/B) sum_b w_b KL(p_b || yhat_b)``, ``p = softmax(z)``, ``yhat = y / sum_c y`` (the CDUL reproduction)."""
    logp = F.log_softmax(logits, dim=1)
    yhat = targets / targets.sum(1, keepdim=True).clamp_min(1e-12)
    kl = (logp.exp() * (logp - torch.log(yhat.clamp_min(1e-12)))).sum(1)     # (B,)
    if weights is not None:
        kl = kl * weights
    return kl.mean()


def _head_cam(head: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The 1x1 conv head on channels-last features: ``(B, P, F)`` -> ``(B, P, C)`` CAMs (``P = h * w``).

    One GEMM ``(B*P, F) x (F, C)``; autograd's weight gradient is one GEMM ``(C, B*P) x (B*P, F)`` on the same
    contiguous rows. The same numbers as ``head(x as (B, F, h, w))`` up to float rounding.

    ``x`` in bfloat16 (``StudentConfig.head_dtype``): both GEMMs in bfloat16 (float32 accumulation) on a bfloat16
    copy of the float32 weights, the CAMs returned in float32 (autograd casts the weight gradient back)."""
    w = head.weight.view(head.weight.shape[0], head.weight.shape[1])
    if x.dtype == torch.bfloat16:
        return F.linear(x, w.to(x.dtype), head.bias.to(x.dtype)).float()
    return F.linear(x, w, head.bias)


def _cam_logits_cl(cam: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """:func:`~ccdlib.student.cam_to_logits` of a channels-last CAM ``(B, P, C)`` -> ``(B, C)``; ``alpha`` a float or
    a ``(C,)`` tensor on ``cam``'s device."""
    a = alpha.view(1, 1, -1) if torch.is_tensor(alpha) else alpha
    return torch.where(cam > 0, cam * a, cam).mean(1)


def _channels_last_into(dst: torch.Tensor, arr: np.ndarray, chunk: int = 32) -> None:
    """Copy ``(N, F, h, w)`` features (any float dtype) into ``dst`` ``(N, h*w, F)``, ``chunk`` images at a time."""
    for s in range(0, arr.shape[0], chunk):
        src = torch.from_numpy(np.ascontiguousarray(arr[s:s + chunk]))
        dst[s:s + chunk].copy_(src.flatten(2).transpose(1, 2))


_EVAL_CHUNK = 64    # images per GEMM in evaluation (bounds the float32 copy of float16 / gathered features)


class StudentTrainer:
    """Trains a :class:`CAMStudent` one epoch at a time against pseudo-labels the caller supplies.

    Args:
        config: a :class:`StudentConfig`.
        image_paths: the ``N`` training images (row order of every ``targets`` array).
        num_classes: ``C``.
        cache_dir: root of the frozen-mode feature cache (:func:`extract_features`); ``None`` = no disk cache
            (features are still kept in memory for the trainer's life).
        progress: show tqdm bars.

    Frozen mode keeps every feature it uses in memory for the trainer's life, channels-last (``(N, h*w, F)``):
    the training views as float32 stacks built once (base + flip: ``2N`` rows; the augmented pool: ``V*N`` rows;
    EfficientNet-Lite0 at 448 px: 1 MB per image and view, 1.3 GB for 320 images with two pool views), so a
    training step is one row gather and two GEMMs; other image lists (the test split) and other input sizes as
    float16, read once from the feature cache on first use. Image files changed on disk after that are not seen
    (the runners check their inputs each epoch).

    Attributes: ``student``, ``epoch`` (epochs trained so far), ``alpha`` (the alpha of the last epoch; the
    default for predictions, as the released code keeps alpha in the model), ``device``, ``optimizer``,
    ``rank`` and ``world`` (0 and 1 without torchrun). Under torchrun in finetune mode, ``student`` has global-batch
    BatchNorm layers and trains through a ``DistributedDataParallel`` wrapper; ``batch_size`` is per process (see
    the module docstring).
    """

    def __init__(self, config: StudentConfig, image_paths: Sequence[str | Path], num_classes: int, *,
                 cache_dir: str | Path | None = None, progress: bool = True):
        if not isinstance(config, StudentConfig):
            raise ConfigError(f"config must be a StudentConfig, got {type(config).__name__}")
        self.config = config
        self.image_paths = [Path(p) for p in image_paths]
        if not self.image_paths:
            raise DatasetError("StudentTrainer: no training images given")
        self.num_classes = int(num_classes)
        self.cache_dir = cache_dir
        self.progress = progress
        self.device = resolve_device(config.device)
        self.student = build_student(config, num_classes).to(self.device)
        self.epoch = 0
        self.alpha: float | np.ndarray = 1.0
        self._features: dict[str, np.ndarray] = {}     # extracted float16 (N, F, h, w), until stacked
        self._view_t: dict[str, torch.Tensor] = {}       # training view -> (N, P, F) float32 (rows of a stack)
        self._stacks: dict[tuple[str, ...], torch.Tensor] = {}
        self._hw: dict[int, tuple[int, int]] = {}        # input size -> feature map (h, w)
        self._mem: dict[tuple, torch.Tensor] = {}        # (paths, size) -> (M, P, F) float16 base features
        head_params = list(self.student.head.parameters())
        if config.mode == "frozen":
            for p in self.student.trunk.parameters():
                p.requires_grad_(False)
            self.student.trunk.eval()
            groups = [{"params": head_params, "lr": config.frozen_head_lr}]
        else:
            groups = [{"params": list(self.student.trunk.parameters()), "lr": config.lr},
                      {"params": head_params, "lr": config.head_lr}]
        self.optimizer = torch.optim.Adam(groups, lr=config.lr, weight_decay=0.0)
        # Several processes (torchrun): DDP in finetune mode; frozen mode runs in full on every rank.
        self.rank, self.world = rank_and_world()
        self._ddp: nn.Module | None = None
        if config.mode == "finetune" and self.world > 1:
            self.student = _sync_batchnorm(self.student, self.device)  # same Parameter objects: optimizer unchanged
            ids = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
                if self.device.type == "cuda" else None
            self._ddp = nn.parallel.DistributedDataParallel(self.student, device_ids=ids)

    # -------------------------------------------------------------- frozen-mode features
    def _views(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        missing = [v for v in names if v not in self._features]
        if missing:
            self._features.update(_features.extract_features(
                self.student, self.image_paths, image_size=self.config.image_size, views=missing,
                cache_dir=self.cache_dir, seed=self.config.aug_pool_seed, progress=self.progress))
        return {v: self._features[v] for v in names}

    def _stacked(self, names: Sequence[str]) -> torch.Tensor:
        """Frozen mode: the training images' views ``names`` as one channels-last tensor on the device (float32, or
        bfloat16 when ``config.head_dtype`` says so),
        ``(len(names) * N, h*w, F)``, view ``names[j]`` of image ``i`` at row ``j * N + i``. Built once per trainer
        (views already held in another stack are copied from it, the rest extracted / read from the disk cache)."""
        names = tuple(names)
        if names in self._stacks:
            return self._stacks[names]
        n = len(self.image_paths)
        self._views([v for v in names if v not in self._view_t])
        some = self._view_t[names[0]] if names[0] in self._view_t else None
        if some is None:
            arr = self._features[names[0]]
            self._hw[self.config.image_size] = tuple(arr.shape[2:])
            p, f = arr.shape[2] * arr.shape[3], arr.shape[1]
        else:
            p, f = some.shape[1:]
        with torch.inference_mode(False), torch.no_grad():   # plain tensors, even when first built in evaluation
            out = torch.empty((len(names) * n, p, f), dtype=HEAD_DTYPES[self.config.head_dtype], device=self.device)
            for j, v in enumerate(names):
                dst = out[j * n:(j + 1) * n]
                if v in self._view_t:
                    dst.copy_(self._view_t[v])
                else:
                    _channels_last_into(dst, self._features.pop(v))
                self._view_t[v] = dst
        for k in [k for k in self._stacks if set(k) <= set(names)]:   # superseded: free it
            del self._stacks[k]
        self._stacks[names] = out
        return out

    def _train_view(self, name: str) -> torch.Tensor:
        """One training view ``(N, h*w, F)`` in the stack's dtype (a slice of its stack)."""
        if name not in self._view_t:
            self._stacked([name])
        return self._view_t[name]

    def _alpha_tensor(self, alpha: float | np.ndarray | torch.Tensor) -> float | torch.Tensor:
        if np.ndim(alpha) == 0:
            return float(alpha)
        a = torch.as_tensor(np.asarray(alpha, dtype=np.float32)).to(self.device)
        if a.shape != (self.num_classes,):
            raise ConfigError(f"alpha must be a float or ({self.num_classes},) per-class factors, got shape {tuple(a.shape)}")
        return a

    # -------------------------------------------------------------- training
    def fit_epoch(self, targets: np.ndarray, *, alpha: float | np.ndarray, consistency: bool,
                  sample_weights: np.ndarray | None = None, loss: str = "bce",
                  on_batch: Callable[[np.ndarray, np.ndarray], None] | None = None) -> dict:
        """Train one epoch over the training images in a seeded shuffled order.

        Args:
            targets: ``(N, C)`` soft pseudo-labels in ``[0, 1]``.
            alpha: the positive-CAM factor (method.md §5: 1 in epoch 0, then ``config.coeff``), float or ``(C,)``.
            consistency: add ``consistency_weight * BCE(student(x'), sigmoid(student(x)).detach())`` (CCD, epoch >= 2).
            sample_weights: optional ``(N,)`` per-image weights of the pseudo-label BCE (default all 1).
            loss: the pseudo-label loss. ``"bce"``: soft-target BCE-with-logits (method.md §5). ``"softmax_kl"``: the
                CDUL reproduction's loss, ``(1/B) sum_b KL(softmax(z_b) || y_b / sum_c y_bc)`` (its training loss is
                ``KLDivergence(preds, pseudo_labels)``, the prediction first); one process only. Logged as ``"bce"``.
            on_batch: called as ``on_batch(indices (B,), logits (B, C) float64)`` right after each optimiser step with
                that batch's *pre-step* logits (CDUL's per-mini-batch label alignment, method.md §3).

        Returns:
            ``{"epoch", "loss", "bce", "consistency" (NaN when off), "seconds", "train_scores"}``: mean losses over
            batches, and ``train_scores`` the ``(N, C)`` sigmoid (``softmax_kl``: softmax) outputs seen during the epoch (training views,
            image order), which the released code's GT-free checkpoint rule compares with the pseudo-labels.
        """
        cfg = self.config
        n, c = len(self.image_paths), self.num_classes
        y = np.asarray(targets, dtype=np.float32)
        if y.shape != (n, c):
            raise ConfigError(f"targets must have shape ({n}, {c}) (images x classes), got {y.shape}")
        if not np.all(np.isfinite(y)) or y.min() < 0 or y.max() > 1:
            raise ConfigError(f"targets must be finite soft labels in [0, 1] (got range [{np.nanmin(y)}, {np.nanmax(y)}])")
        w = None
        if sample_weights is not None:
            w = np.asarray(sample_weights, dtype=np.float32)
            if w.shape != (n,) or not np.all(np.isfinite(w)) or w.min() < 0:
                raise ConfigError(f"sample_weights must be ({n},) finite and >= 0, got shape {w.shape}")
        if loss not in ("bce", "softmax_kl"):
            raise ConfigError(f"loss must be 'bce' or 'softmax_kl', got {loss!r}")
        if loss != "bce" and self._ddp is not None:
            raise ConfigError("loss='softmax_kl' runs in one process only (no DDP)")
        a = self._alpha_tensor(alpha)
        g = _generator(cfg.seed, _TAG_SHUFFLE, self.epoch)
        order = torch.randperm(n, generator=g)
        t0 = time.perf_counter()
        if cfg.mode == "frozen":
            return self._finish_epoch(alpha, consistency, t0,
                                      *self._fit_frozen(y, w, a, order, g, consistency=consistency, loss=loss,
                                                        on_batch=on_batch))
        scores = np.zeros((n, c), dtype=np.float32)
        sums = {"loss": 0.0, "bce": 0.0, "consistency": 0.0}
        n_batches = 0
        cuda = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
            if self.device.type == "cuda" else []
        ddp = self._ddp is not None
        share = self.world if ddp else 1   # DDP: each rank logs its share of the step's loss
        with torch.random.fork_rng(devices=cuda):
            # drop-connect etc.; under DDP every rank draws its own stream
            torch.manual_seed(_derive_seed(cfg.seed, _TAG_TORCH_GLOBAL, self.epoch, *((self.rank,) if ddp else ())))
            for idx, x, x_aug, m in self._train_batches(order, g, consistency):
                yt = torch.from_numpy(y[idx]).to(self.device)
                wt = None if w is None else torch.from_numpy(w[idx]).to(self.device)
                logits = self._logits(x, a)
                if ddp:  # this rank's summed loss / (images in the step x C), x world: DDP averages the gradients
                    k = self.world / (m * c)
                    bce = _soft_bce(logits, yt, wt, reduction="sum") * k
                elif loss == "softmax_kl":
                    bce = _softmax_kl(logits, yt, wt)
                else:
                    bce = _soft_bce(logits, yt, wt)
                total = bce
                if consistency:
                    target = torch.sigmoid(logits).detach()
                    if ddp:
                        cons = F.binary_cross_entropy_with_logits(self._logits(x_aug, a), target, reduction="sum") * k
                    else:
                        cons = F.binary_cross_entropy_with_logits(self._logits(x_aug, a), target)
                    total = bce + cfg.consistency_weight * cons
                    sums["consistency"] += cons.item() / share
                self.optimizer.zero_grad(set_to_none=True)
                total.backward()
                self.optimizer.step()
                if on_batch is not None:
                    on_batch(idx, logits.detach().double().cpu().numpy())
                sums["loss"] += total.item() / share
                sums["bce"] += bce.item() / share
                out = torch.softmax(logits.detach(), 1) if loss == "softmax_kl" else torch.sigmoid(logits.detach())
                scores[idx] = out.float().cpu().numpy()
                n_batches += 1
        if ddp:  # every image was scored on exactly one rank; the step losses are sums of the ranks' shares
            t = torch.tensor([sums["loss"], sums["bce"], sums["consistency"]], dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(t)
            sums = dict(zip(("loss", "bce", "consistency"), t.tolist()))
            st = torch.from_numpy(scores).to(self.device)
            torch.distributed.all_reduce(st)
            scores = st.cpu().numpy()
        return self._finish_epoch(alpha, consistency, t0, sums, n_batches, scores)

    def _finish_epoch(self, alpha, consistency: bool, t0: float, sums: dict, n_batches: int,
                      scores: np.ndarray) -> dict:
        self.epoch += 1
        self.alpha = float(alpha) if np.ndim(alpha) == 0 else np.asarray(alpha, dtype=np.float32).copy()
        return {"epoch": self.epoch - 1, "loss": sums["loss"] / n_batches, "bce": sums["bce"] / n_batches,
                "consistency": sums["consistency"] / n_batches if consistency else float("nan"),
                "seconds": time.perf_counter() - t0, "train_scores": scores}

    def _fit_frozen(self, y: np.ndarray, w: np.ndarray | None, a: float | torch.Tensor, order: torch.Tensor,
                    g: torch.Generator, *, consistency: bool, loss: str,
                    on_batch: Callable[[np.ndarray, np.ndarray], None] | None) -> tuple[dict, int, np.ndarray]:
        """Frozen mode's epoch on the in-memory channels-last stacks: per step one row gather per view, the head as
        one GEMM (forward) + one GEMM (weight gradient) per view; losses summed on the device (one sync per epoch,
        plus ``on_batch``'s copy of the logits when given). The random draws are the original per-image loop's, in
        its order: ``randperm`` (the caller), then per batch ``rand`` for the flips and ``randint`` for the pool
        views, all from ``g``. ``targets`` are read once, at the start of the epoch."""
        cfg, dev, head = self.config, self.device, self.student.head
        n, c = y.shape
        bf = self._stacked(("base", "flip"))
        aug = self._stacked(tuple(f"aug{k}" for k in range(cfg.n_aug_views))) if consistency else None
        yt = torch.from_numpy(y).to(dev)
        wt = None if w is None else torch.from_numpy(w).to(dev)
        scores = torch.zeros((n, c), dtype=torch.float32, device=dev)
        sums = torch.zeros(3, dtype=torch.float64, device=dev)        # loss, bce, consistency
        zero = torch.zeros((), dtype=torch.float32, device=dev)
        cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
        n_batches = 0
        p, f = bf.shape[1:]
        # gathers go to preallocated (B, P*F) buffers through a 2-D view of each stack (a row copy per image;
        # index_select on the 3-D stack measured several times slower); a buffer is rewritten only after the
        # previous step's graph, which saved it for the weight gradient, is gone
        bf2 = bf.view(bf.shape[0], p * f)
        buf = torch.empty((cfg.batch_size, p * f), dtype=bf.dtype, device=dev)
        aug2 = None if aug is None else aug.view(aug.shape[0], p * f)
        buf_aug = None if aug is None else torch.empty_like(buf)
        head.train()
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(_derive_seed(cfg.seed, _TAG_TORCH_GLOBAL, self.epoch))   # as finetune mode (unused)
            for b in range(0, n, cfg.batch_size):
                idx = order[b:b + cfg.batch_size]
                m = len(idx)
                flips = torch.rand(m, generator=g) < 0.5
                ks = torch.randint(cfg.n_aug_views, (m,), generator=g) if consistency else None
                idx_d = idx.to(dev, non_blocking=True)
                x = torch.index_select(bf2, 0, (idx + n * flips).to(dev), out=buf[:m]).view(m, p, f)
                logits = _cam_logits_cl(_head_cam(head, x), a)
                yb = yt.index_select(0, idx_d)
                wb = None if wt is None else wt.index_select(0, idx_d)
                bce = _softmax_kl(logits, yb, wb) if loss == "softmax_kl" else _soft_bce(logits, yb, wb)
                total, cons = bce, zero
                if consistency:
                    x_aug = torch.index_select(aug2, 0, (ks * n + idx).to(dev), out=buf_aug[:m]).view(m, p, f)
                    cons = F.binary_cross_entropy_with_logits(_cam_logits_cl(_head_cam(head, x_aug), a),
                                                              torch.sigmoid(logits).detach())
                    total = bce + cfg.consistency_weight * cons
                self.optimizer.zero_grad(set_to_none=True)
                total.backward()
                self.optimizer.step()
                if on_batch is not None:
                    on_batch(idx.numpy(), logits.detach().double().cpu().numpy())
                sums += torch.stack([total.detach(), bce.detach(), cons.detach()]).double()
                out = torch.softmax(logits.detach(), 1) if loss == "softmax_kl" else torch.sigmoid(logits.detach())
                scores.index_copy_(0, idx_d, out)
                n_batches += 1
        tot = sums.tolist()
        return dict(zip(("loss", "bce", "consistency"), tot)), n_batches, scores.cpu().numpy()

    def _logits(self, x: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
        """Finetune mode: ``(B, 3, H, W)`` images -> ``(B, C)`` logits."""
        if self._ddp is not None:
            return self._ddp(x, alpha)
        return self.student(x, alpha)

    def _train_batches(self, order: torch.Tensor, g: torch.Generator, consistency: bool):
        """Finetune mode: yields ``(indices (B,) numpy, x, x_aug or None, m)`` on the device, in ``order``; ``m`` is
        the number of images in the whole step (``B`` in one process; under DDP the images of all ranks' slices).
        (Frozen mode trains in :meth:`_fit_frozen`.)"""
        cfg = self.config
        ds = _ImageViews(self.image_paths, trunk=cfg.trunk, image_size=cfg.image_size, seed=cfg.seed,
                         epoch=self.epoch, train=True, with_aug=consistency)
        if self._ddp is None:
            self.student.train()
            loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, sampler=order.tolist(),
                                                 num_workers=cfg.num_workers, drop_last=False,
                                                 pin_memory=self.device.type == "cuda")
            step_sizes = None
        else:  # this rank's slice of every global step (see _rank_batches)
            self._ddp.train()
            steps = _rank_batches(order.numpy(), cfg.batch_size, self.rank, self.world)
            loader = torch.utils.data.DataLoader(
                ds, batch_sampler=[b for b, _ in steps], num_workers=cfg.num_workers,
                collate_fn=partial(_collate_views, image_size=cfg.image_size, with_aug=consistency),
                pin_memory=self.device.type == "cuda")
            step_sizes = [m for _, m in steps]
        bar = None
        if self.progress and self.rank == 0:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(order), desc=f"student epoch {self.epoch}", unit="img")
        try:
            for s, (x, x_aug, idx) in enumerate(loader):
                m = len(idx) if step_sizes is None else step_sizes[s]
                yield (idx.numpy(), x.to(self.device, non_blocking=True),
                       x_aug.to(self.device, non_blocking=True) if consistency else None, m)
                if bar is not None:
                    bar.update(m)
        finally:
            if bar is not None:
                bar.close()

    # -------------------------------------------------------------- inference
    def _base_outputs(self, image_paths: Sequence[str | Path] | None, indices: Sequence[int] | None,
                      fn, image_size: int | None = None) -> np.ndarray:
        """Apply ``fn(cam (B, C, h, w)) -> array`` to the base views' CAMs, batch by batch, and concatenate.
        ``image_size``: the input side (default the config's); frozen mode extracts (and caches) the trunk features
        of the requested images at another size, one forward pass per image."""
        cfg = self.config
        size = int(image_size or cfg.image_size)
        paths = self.image_paths if image_paths is None else [Path(p) for p in image_paths]
        idx = np.arange(len(paths)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(paths)):
            raise IndexError(f"indices out of range for {len(paths)} images")
        outs = []
        with self._evaluating():
            if cfg.mode == "frozen":
                feats, rows, hw = self._base_features(paths, idx, size, whole=image_paths is not None)
                outs.extend(self._head_outputs(feats, rows, hw, fn))
            else:
                ds = _ImageViews([paths[i] for i in idx], trunk=cfg.trunk, image_size=size,
                                 seed=cfg.seed, epoch=0, train=False, with_aug=False)
                loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, shuffle=False,
                                                     num_workers=cfg.num_workers)
                for x, _, _ in loader:
                    outs.append(fn(self.student.head(self.student.trunk(x.to(self.device)))))
        return self._concatenated(outs)

    @contextlib.contextmanager
    def _evaluating(self):
        """Eval mode and ``inference_mode`` for the body; the previous train/eval mode is restored after it (frozen
        mode's trunk stays in eval mode)."""
        was_training = self.student.training
        self.student.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            self.student.train(was_training)
            if self.config.mode == "frozen":
                self.student.trunk.eval()

    def _concatenated(self, outs: list[np.ndarray]) -> np.ndarray:
        """The batches' outputs in order, or ``(0, C)`` float32 when there were none."""
        return np.concatenate(outs) if outs else np.zeros((0, self.num_classes), dtype=np.float32)

    def _base_features(self, paths: list[Path], idx: np.ndarray, size: int,
                       whole: bool) -> tuple[torch.Tensor, np.ndarray, tuple[int, int]]:
        """Frozen mode: channels-last base features ``(M, P, F)`` holding ``paths[idx]`` at input side ``size``, the
        rows of ``idx`` in it, and ``(h, w)``. The training images at the training size: the float32 training
        stack. Other lists / sizes: float16, read from the feature cache once per trainer and kept (the training
        images at another size too, unless only some of them are asked for before the whole list was)."""
        cfg = self.config
        if not whole and size == cfg.image_size:
            return self._train_view("base"), idx, self._hw[size]
        key = (tuple(str(p) for p in paths), size)
        if key not in self._mem:
            sub = not whole and len(idx) != len(paths)
            arr = _features.extract_features(self.student, [paths[i] for i in idx] if sub else paths,
                                             image_size=size, views=("base",), cache_dir=self.cache_dir,
                                             seed=cfg.aug_pool_seed, progress=self.progress)["base"]
            with torch.inference_mode(False), torch.no_grad():
                t = torch.empty((arr.shape[0], arr.shape[2] * arr.shape[3], arr.shape[1]), dtype=torch.float16,
                                device=self.device)
                _channels_last_into(t, arr)
            self._hw[size] = tuple(arr.shape[2:])
            if sub:              # some training images at another size: not kept
                return t, np.arange(len(idx)), self._hw[size]
            self._mem[key] = t
        return self._mem[key], idx, self._hw[size]

    def _head_outputs(self, feats: torch.Tensor, rows: np.ndarray, hw: tuple[int, int], fn) -> list:
        """``fn(cam (B, C, h, w))`` of the head on rows ``rows`` of channels-last ``feats``, ``_EVAL_CHUNK`` rows per
        GEMM (a slice when the rows are consecutive, else a gather), in float32."""
        outs = []
        c = self.num_classes
        for b in range(0, len(rows), _EVAL_CHUNK):
            r = rows[b:b + _EVAL_CHUNK]
            if len(r) and r[-1] - r[0] == len(r) - 1 and np.all(np.diff(r) == 1):
                x = feats[int(r[0]):int(r[-1]) + 1]
            else:
                x = feats.view(feats.shape[0], -1).index_select(          # 2-D: a row copy per image
                    0, torch.from_numpy(np.ascontiguousarray(r)).to(self.device)).view(len(r), *feats.shape[1:])
            cam = _head_cam(self.student.head, x.float())                     # (B, P, C)
            outs.append(fn(cam.transpose(1, 2).reshape(len(r), c, *hw)))
        return outs

    def eval_logits(self, test_image_paths: Sequence[str | Path] | None = None, *,
                    alpha: float | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """The per-epoch evaluation in one call: ``(train_logits (N, C), test_logits (M, C) or None)``, the same as
        ``predict_logits()`` and ``predict_logits(test_image_paths)``. Frozen mode: each is GEMMs on features held
        in memory (the test split's read from the feature cache on the first call only)."""
        train = self.predict_logits(alpha=alpha)
        test = None if test_image_paths is None else self.predict_logits(test_image_paths, alpha=alpha)
        return train, test

    def view_logits(self, indices: Sequence[int], flips: Sequence[bool] | bool, *,
                    alpha: float | np.ndarray | None = None) -> np.ndarray:
        """``(len(indices), C)`` float32 eval-mode logits of training views at the training size: image
        ``indices[k]``, horizontally flipped where ``flips[k]`` (a bool for all). ``alpha=None``: ``self.alpha``.

        Frozen mode reads the cached base / flip features (the training stack); finetune mode decodes the images
        (:func:`~ccdlib.student.preprocess_image` with ``flip``). For CCD's threshold walk, which the released code
        runs on the training loader's (randomly flipped) 448 px views.
        """
        cfg = self.config
        n = len(self.image_paths)
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        fl = np.broadcast_to(np.asarray(flips, dtype=bool), idx.shape) if np.ndim(flips) == 0 \
            else np.asarray(flips, dtype=bool).reshape(-1)
        if fl.shape != idx.shape:
            raise ConfigError(f"flips must be a bool or one per index ({idx.shape[0]}), got shape {fl.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"indices out of range for {n} images")
        a = self._alpha_tensor(self.alpha if alpha is None else alpha)
        to_np = lambda cam: cam_to_logits(cam, a).float().cpu().numpy()     # noqa: E731
        outs = []
        with self._evaluating():
            if cfg.mode == "frozen":
                bf = self._stacked(("base", "flip"))
                outs = self._head_outputs(bf, idx + n * fl.astype(np.int64), self._hw[cfg.image_size], to_np)
            else:
                for b in range(0, len(idx), cfg.batch_size):
                    x = torch.stack([preprocess_image(load_rgb(self.image_paths[i]), trunk=cfg.trunk,
                                                      image_size=cfg.image_size, flip=bool(f))
                                     for i, f in zip(idx[b:b + cfg.batch_size], fl[b:b + cfg.batch_size])])
                    outs.append(to_np(self.student.head(self.student.trunk(x.to(self.device)))))
        return self._concatenated(outs)

    def predict_logits(self, image_paths: Sequence[str | Path] | None = None, *,
                       alpha: float | np.ndarray | None = None, image_size: int | None = None) -> np.ndarray:
        """``(N, C)`` float32 logits of the base views (no augmentation).

        ``image_paths=None``: the training images. ``alpha=None``: the alpha of the last trained epoch
        (``self.alpha``). Frozen mode extracts (and caches) base features of new paths. ``image_size``: another input
        side (CCD's CAM pass on the 640 px image).
        """
        a = self._alpha_tensor(self.alpha if alpha is None else alpha)
        return self._base_outputs(image_paths, None, lambda cam: cam_to_logits(cam, a).float().cpu().numpy(),
                                  image_size=image_size)

    def cams(self, indices: Sequence[int] | None = None, image_paths: Sequence[str | Path] | None = None, *,
             alpha: float | np.ndarray | None = None, image_size: int | None = None) -> np.ndarray:
        """``(N, C, h, w)`` float32 CAMs of base views: of the training images (``image_paths=None``) or of
        ``image_paths``, restricted to ``indices`` into that list when given.

        Raw head outputs by default; ``alpha`` (a float or ``(C,)``) scales the positive values as the forward
        pass does (the released code crops from this alpha-scaled CAM).
        """
        a = None if alpha is None else self._alpha_tensor(alpha)

        def fn(cam: torch.Tensor) -> np.ndarray:
            if a is not None:
                if torch.is_tensor(a):
                    cam = torch.where(cam > 0, cam * a.view(1, -1, 1, 1), cam)
                else:
                    cam = torch.where(cam > 0, cam * a, cam)
            return cam.float().cpu().numpy()
        return self._base_outputs(image_paths, indices, fn, image_size=image_size)

    # -------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, torch.Tensor]:
        """CPU copies: the head's state in frozen mode (the trunk is its fixed weights), the whole model's in finetune."""
        module = self.student.head if self.config.mode == "frozen" else self.student
        return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load what :meth:`state_dict` returned (the head in frozen mode, the whole model in finetune)."""
        module = self.student.head if self.config.mode == "frozen" else self.student
        module.load_state_dict(state)

    def training_state(self) -> dict:
        """Everything the next :meth:`fit_epoch` depends on, as CPU copies: ``{"model", "optimizer", "epoch",
        "alpha"}``. No RNG state: every random draw of an epoch is derived from ``(config.seed, epoch)``."""
        import copy
        opt = copy.deepcopy(self.optimizer.state_dict())
        for st in opt["state"].values():
            for k, v in st.items():
                if torch.is_tensor(v):
                    st[k] = v.detach().cpu()
        alpha = self.alpha if np.ndim(self.alpha) == 0 else np.asarray(self.alpha).tolist()
        return {"model": self.state_dict(), "optimizer": opt, "epoch": int(self.epoch), "alpha": alpha}

    def load_training_state(self, state: dict) -> None:
        """Restore a :meth:`training_state`: the next :meth:`fit_epoch` continues as if never interrupted."""
        self.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        a = state["alpha"]
        self.alpha = float(a) if np.ndim(a) == 0 else np.asarray(a, dtype=np.float32)

    def save(self, path: str | Path, *, extra: dict | None = None) -> tuple[Path, Path]:
        """Write ``<path>.pt`` (state dict only) and ``<path>.json`` (config, class count, trunk); returns both paths."""
        return write_checkpoint(path, state=self.state_dict(), config=self.config, num_classes=self.num_classes,
                                feature_dim=self.student.feature_dim, epoch=self.epoch, alpha=self.alpha, extra=extra)
