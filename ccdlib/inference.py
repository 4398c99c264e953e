"""Inference of the student under training (method.md §5, §6.5): :class:`StudentInference`, the base of
:class:`ccdlib.trainer.StudentTrainer`, holds the frozen-mode features kept in memory (the channels-last training
stacks, other image lists / sizes as float16) and computes logits, training-view logits and CAMs from them, or
from decoded images in finetune mode. Training itself is :mod:`ccdlib.trainer`.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import features as _features
from .errors import ConfigError
from .finetune_data import _ImageViews
from .scoring import load_rgb
from .student import HEAD_DTYPES, StudentConfig, cam_to_logits, preprocess_image

__all__ = ["StudentInference"]


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


def _channels_last_into(dst: torch.Tensor, arr: np.ndarray, chunk: int = 32) -> None:
    """Copy ``(N, F, h, w)`` features (any float dtype) into ``dst`` ``(N, h*w, F)``, ``chunk`` images at a time."""
    for s in range(0, arr.shape[0], chunk):
        src = torch.from_numpy(np.ascontiguousarray(arr[s:s + chunk]))
        dst[s:s + chunk].copy_(src.flatten(2).transpose(1, 2))


_EVAL_CHUNK = 64    # images per GEMM in evaluation (bounds the float32 copy of float16 / gathered features)


class StudentInference:
    """The inference half of :class:`~ccdlib.trainer.StudentTrainer` (see there; it sets every attribute below):
    :meth:`predict_logits`, :meth:`eval_logits`, :meth:`view_logits`, :meth:`cams`, and frozen mode's in-memory
    features, which training reads too."""

    config: StudentConfig
    image_paths: list[Path]
    num_classes: int
    cache_dir: str | Path | None
    progress: bool
    device: torch.device
    student: nn.Module
    alpha: float | np.ndarray
    _features: dict[str, np.ndarray]
    _view_t: dict[str, torch.Tensor]
    _stacks: dict[tuple[str, ...], torch.Tensor]
    _hw: dict[int, tuple[int, int]]
    _mem: dict[tuple, torch.Tensor]

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
