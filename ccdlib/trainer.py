"""Training the student (method.md §5, §6.5): :class:`StudentTrainer` runs one epoch at a time against the
pseudo-labels its caller supplies, on cached trunk features (frozen mode) or on decoded images (finetune mode,
optionally under ``torchrun``). The model is :mod:`ccdlib.student`; the feature cache :mod:`ccdlib.features`.
Inference (logits, CAMs) and the frozen-mode features held in memory are its base class
:class:`ccdlib.inference.StudentInference`; the finetune data :mod:`ccdlib.finetune_data`; the torchrun pieces
:mod:`ccdlib.distributed`.
"""
from __future__ import annotations

import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .distributed import _rank_batches, _sync_batchnorm, rank_and_world
from .errors import ConfigError, DatasetError
from .finetune_data import _collate_views, _ImageViews
from .inference import StudentInference, _head_cam
from .student import (StudentConfig, _TAG_SHUFFLE, _TAG_TORCH_GLOBAL, _derive_seed, _generator, build_student,
                      write_checkpoint)
from .teachers import resolve_device

__all__ = ["StudentTrainer"]

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


def _cam_logits_cl(cam: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """:func:`~ccdlib.student.cam_to_logits` of a channels-last CAM ``(B, P, C)`` -> ``(B, C)``; ``alpha`` a float or
    a ``(C,)`` tensor on ``cam``'s device."""
    a = alpha.view(1, 1, -1) if torch.is_tensor(alpha) else alpha
    return torch.where(cam > 0, cam * a, cam).mean(1)


class StudentTrainer(StudentInference):
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

    Attributes: ``config`` (the given one with ``head_dtype`` ``"auto"`` resolved on ``device``;
    ``head_dtype_auto`` says whether it was), ``student``, ``epoch`` (epochs trained so far), ``alpha`` (the alpha of
    the last epoch; the default for predictions, as the released code keeps alpha in the model), ``device``,
    ``optimizer``,
    ``rank`` and ``world`` (0 and 1 without torchrun). Under torchrun in finetune mode, ``student`` has global-batch
    BatchNorm layers and trains through a ``DistributedDataParallel`` wrapper; ``batch_size`` is per process (see
    the module docstring).
    """

    def __init__(self, config: StudentConfig, image_paths: Sequence[str | Path], num_classes: int, *,
                 cache_dir: str | Path | None = None, progress: bool = True):
        if not isinstance(config, StudentConfig):
            raise ConfigError(f"config must be a StudentConfig, got {type(config).__name__}")
        self.image_paths = [Path(p) for p in image_paths]
        if not self.image_paths:
            raise DatasetError("StudentTrainer: no training images given")
        self.num_classes = int(num_classes)
        self.cache_dir = cache_dir
        self.progress = progress
        self.device = resolve_device(config.device)
        self.head_dtype_auto = config.head_dtype == "auto"     # the config's "auto", resolved on this device:
        self.config = config = replace(config, head_dtype=config.resolved_head_dtype(self.device))   # issue 23
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
