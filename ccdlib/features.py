"""The frozen-trunk feature cache (method.md §5, ``mode="frozen"``): trunk feature maps of a few views of every
image, computed once and stored on disk by :class:`~ccdlib.cache.ArrayCache`, keyed by the trunk's weights, the
input size, the view and the image files' fingerprints.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .cache import ArrayCache, image_fingerprints
from .errors import ConfigError, DatasetError
from .scoring import load_rgb
from .student import CAMStudent, _FEATURE_FORMAT, _parse_view, _view_tensor

__all__ = ["trunk_fingerprint", "extract_features", "ExtractStats"]

def trunk_fingerprint(student: CAMStudent) -> dict:
    """Identity of the trunk's computation for cache keys: its name and a SHA-256 of its state (weights and
    BatchNorm statistics), so features are never reused across weights, however the weights were obtained."""
    h = hashlib.sha256()
    for name, t in student.trunk.state_dict().items():
        a = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(a.shape)).encode())
        h.update(str(a.dtype).encode())
        h.update(a.view(-1).view(torch.uint8).numpy().tobytes() if a.numel() else b"")
    return {"trunk": student.trunk_name, "state_sha256": h.hexdigest()[:32]}


class ExtractStats:
    """What the last :func:`extract_features` call did: chunks computed / reused, images run, seconds."""

    def __init__(self) -> None:
        self.chunks_computed = 0
        self.chunks_cached = 0
        self.images_computed = 0   # forward passes (one per image and computed view)
        self.seconds = 0.0

    def __repr__(self) -> str:
        rate = self.images_computed / self.seconds if self.seconds else float("nan")
        return (f"ExtractStats(computed={self.chunks_computed} chunks/{self.images_computed} view-images, "
                f"cached={self.chunks_cached} chunks, {self.seconds:.1f}s, {rate:.1f} view-images/s)")


last_extract_stats = ExtractStats()


@torch.inference_mode()
def extract_features(student: CAMStudent, image_paths: Sequence[str | Path], *, image_size: int = 448,
                     views: Sequence[str] = ("base",), cache_dir: str | Path | None = None,
                     batch_size: int | None = None, seed: int = 0, chunk_size: int = 256,
                     progress: bool = True) -> dict[str, np.ndarray]:
    """Trunk feature maps of views of ``N`` images, cached on disk: ``{view: (N, F, h, w) float16}``.

    Views: ``"base"`` = the image squash-resized to ``image_size`` and normalised for the trunk; ``"flip"`` =
    the base view mirrored; ``"augK"`` = ColorJitter(0.5, 0.5, 0.5, 0.5) then a random flip, drawn from a
    generator seeded with ``(seed, K, image index)`` (deterministic, independent of batching). ``seed`` is the
    augmented-view *pool* seed (:class:`~ccdlib.student.StudentConfig` ``aug_pool_seed``, not the training seed:
    the trainer passes ``aug_pool_seed``, so training seeds share the pool); it is part of the aug views' cache key.

    Work is split into chunks of ``chunk_size`` images; each (view, chunk) is one
    :class:`~ccdlib.cache.ArrayCache` entry (namespace ``student_features``) keyed by the view (and ``seed``
    and the image indices for aug views), :func:`trunk_fingerprint`, ``image_size`` and the chunk's image file
    fingerprints. A rerun reuses them; a killed run resumes at the first missing chunk. ``cache_dir=None``
    disables the disk cache. The trunk runs in eval mode on the student's device, ``batch_size`` images per
    forward pass: ``None`` = 1 on a CPU (measured fastest: EfficientNet-Lite0 at 448 px on 2 cores runs ~20-30
    images/s one at a time, ~15 at 4 and ~6-10 at 16 per pass, the larger batches falling out of cache) and 16
    on a GPU.

    Memory: the result is held in RAM, ``N x F x (image_size/32)^2 x 2`` bytes per view (EfficientNet-Lite0 at
    448 px: 0.5 MB per image and view; 400 images ~ 200 MB).
    """
    global last_extract_stats
    stats = ExtractStats()
    last_extract_stats = stats
    views = list(views)
    if not views or len(set(views)) != len(views):
        raise ConfigError(f"views must be a non-empty list of distinct view names, got {views}")
    for v in views:
        _parse_view(v)
    device = next(student.parameters()).device
    if batch_size is None:
        batch_size = 1 if device.type == "cpu" else 16
    if batch_size < 1 or chunk_size < 1:
        raise ConfigError(f"batch_size and chunk_size must be >= 1, got {batch_size}, {chunk_size}")
    n = len(image_paths)
    if n == 0:
        raise DatasetError("extract_features: no images given")
    cache = ArrayCache(cache_dir, "student_features")
    was_training = student.trunk.training
    student.trunk.eval()
    tfp = trunk_fingerprint(student)
    # channels-last weights and inputs: oneDNN's fast convolution layout on a CPU (EfficientNet-Lite0 at 448 px on 2
    # cores: 13.7 -> 19.5 images/s), the same numbers up to float rounding (the fingerprint hashes values, not layout)
    student.trunk.to(memory_format=torch.channels_last)
    fp = image_fingerprints(image_paths)

    side = -(-image_size // 32)  # both trunks have output stride 32 with ceil rounding
    out = {v: np.empty((n, student.feature_dim, side, side), dtype=np.float16) for v in views}
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=n * len(views), desc="student features", unit="view")
    t0 = time.perf_counter()
    try:
        for start in range(0, n, chunk_size):
            idx = list(range(start, min(n, start + chunk_size)))
            files = [fp(i) for i in idx]
            keys, todo = {}, []
            for v in views:
                key = {"format": _FEATURE_FORMAT, "view": v, "trunk": tfp, "image_size": image_size, "files": files}
                if _parse_view(v) is not None:
                    key.update(seed=seed, indices=[idx[0], idx[-1]])
                keys[v] = key
                arr = cache.get(key, shape=(len(idx), student.feature_dim, side, side), dtype=np.float16, finite=True)
                if arr is not None:
                    out[v][idx[0]:idx[-1] + 1] = arr
                    stats.chunks_cached += 1
                    if bar is not None:
                        bar.update(len(idx))
                else:
                    todo.append(v)
            if not todo:
                continue
            chunk_out = {v: np.empty((len(idx), student.feature_dim, side, side), dtype=np.float16) for v in todo}
            for b in range(0, len(idx), batch_size):
                sub = idx[b:b + batch_size]
                images = [load_rgb(image_paths[i]) for i in sub]
                for v in todo:
                    x = torch.stack([_view_tensor(im, v, i, trunk=student.trunk_name, image_size=image_size, seed=seed)
                                     for im, i in zip(images, sub)])
                    f = student.features(x.to(device).contiguous(memory_format=torch.channels_last))
                    if f.shape[2:] != (side, side):
                        raise RuntimeError(f"trunk output {tuple(f.shape)} does not have the expected {side}x{side} map")
                    chunk_out[v][b:b + len(sub)] = f.float().cpu().numpy().astype(np.float16)
                    stats.images_computed += len(sub)
                    if bar is not None:
                        bar.update(len(sub))
            for v in todo:
                cache.put(keys[v], chunk_out[v])
                out[v][idx[0]:idx[-1] + 1] = chunk_out[v]
                stats.chunks_computed += 1
    finally:
        if bar is not None:
            bar.close()
        student.trunk.train(was_training)
        stats.seconds = time.perf_counter() - t0
    return out
