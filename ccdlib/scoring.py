"""Batched, cached teacher scoring of lists of views of mixed sizes.

:func:`embed_views` turns ``V`` views into ``(V, D)`` teacher embeddings. Work is split into *chunks* of
``chunk_size`` views; each chunk's embeddings are one cache file keyed by the teacher's fingerprint and the
chunk's views (image file identity + box). A killed run therefore resumes at the first unfinished chunk, and a
cache entry made with other settings is never reused. Inside a batch every image is decoded once and all of its
views in that batch are cut from it; views from many images share a batch (never one crop at a time).

Under ``torchrun`` (``WORLD_SIZE > 1`` with an initialised process group) chunks are sharded round-robin over
ranks and the embeddings are gathered, so every rank returns the full ``(V, D)`` array.
"""
from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from .cache import ArrayCache, image_fingerprints
from .distributed import rank_and_world
from .teachers import Teacher
from .views import View, crop_view, open_image, to_rgb

__all__ = ["embed_views", "score_views", "auto_forward_batch", "ScoringStats", "load_rgb"]


class ScoringStats:
    """What the last :func:`embed_views` call did: chunks computed / reused, views and seconds."""

    def __init__(self) -> None:
        self.chunks_computed = 0
        self.chunks_cached = 0
        self.views_computed = 0
        self.seconds = 0.0

    def __repr__(self) -> str:
        rate = self.views_computed / self.seconds if self.seconds else float("nan")
        return (f"ScoringStats(computed={self.chunks_computed} chunks/{self.views_computed} views, "
                f"cached={self.chunks_cached} chunks, {self.seconds:.1f}s, {rate:.1f} views/s)")


last_stats = ScoringStats()


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image as the 8-bit RGB a person would see (:func:`~ccdlib.views.to_rgb`: EXIF orientation,
    transparency on white, 16-bit and float scaled); a missing, corrupt, truncated or unconvertible file is a
    :class:`DatasetError` naming it."""
    with open_image(path, problem="corrupt or truncated image") as im:
        im.load()
        return to_rgb(im, path)


def _cut_views(image_paths: Sequence[str | Path], views: Sequence[View], teacher: Teacher) -> torch.Tensor:
    """Decode each image once, cut and preprocess its views: ``(len(views), 3, S, S)``."""
    out: list[torch.Tensor | None] = [None] * len(views)
    by_img: dict[int, list[int]] = {}
    for pos, v in enumerate(views):
        by_img.setdefault(v.image, []).append(pos)
    for img_idx, positions in by_img.items():
        im = load_rgb(image_paths[img_idx])
        for pos in positions:
            out[pos] = teacher.preprocess(crop_view(im, views[pos].box))
    return torch.stack(out)  # type: ignore[arg-type]


def _cut_groups(image_paths: Sequence[str | Path], groups: Sequence[Sequence[View]], teacher: Teacher,
                pool=None):
    """Yield :func:`_cut_views` of each group in order; with a thread ``pool``, group ``g + 1`` is cut while the
    caller works on group ``g`` (errors surface when the group is reached)."""
    if pool is None:
        for g in groups:
            yield _cut_views(image_paths, g, teacher)
        return
    nxt = pool.submit(_cut_views, image_paths, groups[0], teacher) if groups else None
    for k in range(len(groups)):
        x = nxt.result()
        nxt = pool.submit(_cut_views, image_paths, groups[k + 1], teacher) if k + 1 < len(groups) else None
        yield x


#: Views cut (decoded, cropped, resized) per group: decoding once per group lets the views of one image share a decode.
CUT_GROUP = 64


def auto_forward_batch(device: torch.device | str, image_size: int) -> int:
    """The default number of views per teacher forward pass: 64 on an accelerator; on a CPU the largest batch
    whose activations stay in cache, ``max(1, 4 * 224^2 // image_size^2)`` (4 at 224 px, 2 at 260 px, 1 at
    448 px and above). Measured on a 2-core CPU (benchmarks/README.md): EfficientNet-Lite0 at 224 px runs
    ~105-140 views/s at batch 1-4 but ~30 at batch 64, where each layer's activations fall out of the caches.
    """
    if torch.device(device).type != "cpu":
        return 64
    return max(1, (4 * 224 * 224) // (int(image_size) ** 2))


def embed_views(teacher: Teacher, image_paths: Sequence[str | Path], views: Sequence[View], *,
                batch_size: int | None = None, chunk_size: int = 512, cache_dir: str | Path | None = None,
                progress: bool = True, desc: str = "teacher", on_chunk: Callable[[int], None] | None = None,
                prefetch: bool | None = None) -> np.ndarray:
    """Teacher embeddings of ``V`` views: ``(V, D)`` float32, L2-normalised.

    Args:
        teacher: any :class:`~ccdlib.teachers.Teacher`.
        image_paths: the ``N`` image files that ``View.image`` indexes.
        views: ``V`` views (whole images, tiles, crops; mixed sizes).
        batch_size: views per forward pass; ``None`` = :func:`auto_forward_batch` for the teacher's device and
            input size. Views are cut in groups of the smallest multiple of ``batch_size`` >= ``CUT_GROUP`` (one decode
            per image per group).
        chunk_size: views per cache file (the unit of resumption and of torchrun sharding).
        cache_dir: root of the disk cache; ``None`` disables caching.
        on_chunk: called with the chunk index after each chunk is finished (tests use it to interrupt).
        prefetch: cut the next group of views in a background thread while the teacher runs on this one (PIL
            decodes and resizes outside the GIL). ``None`` = on for an accelerator, where the forward pass would
            otherwise wait for the cutting; off on a CPU, where both would share the same cores.

    Memory: pixels are held for one cut group at a time (e.g. 64 preprocessed views x 3 x 260 x 260 float32 =
    52 MB, plus the decoded images of that group); what accumulates is the result, ``V x D`` float32
    (ConSE: D = 384, 1.5 KB per view; CLIP RN50x64: D = 1024, 4 KB per view). Under torchrun every rank also
    receives every other rank's chunks (``all_gather_object``), so each holds the full ``(V, D)`` array.
    """
    global last_stats
    stats = ScoringStats()
    last_stats = stats
    device = torch.device(getattr(teacher, "device", "cpu"))
    if batch_size is None:
        batch_size = auto_forward_batch(device, getattr(teacher, "image_size", 224))
    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"batch_size and chunk_size must be >= 1, got {batch_size}, {chunk_size}")
    if prefetch is None:
        prefetch = device.type != "cpu"
    cache = ArrayCache(cache_dir, "embeddings")
    tfp = teacher.fingerprint()
    fp = image_fingerprints(image_paths)

    n_chunks = (len(views) + chunk_size - 1) // chunk_size
    rank, world = rank_and_world()
    results: list[np.ndarray | None] = [None] * n_chunks
    my_chunks = [c for c in range(n_chunks) if c % world == rank]
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm
        bar = tqdm(total=sum(min(chunk_size, len(views) - c * chunk_size) for c in my_chunks), desc=desc, unit="view")
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:  # the prefetch thread is joined on any exit
        pool = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="ccdlib-cut")) if prefetch else None
        for c in my_chunks:
            chunk = views[c * chunk_size:(c + 1) * chunk_size]
            key = {"teacher": tfp, "views": [(fp(v.image), v.key()[1]) for v in chunk]}
            arr = cache.get(key, shape=(len(chunk), None), dtype=np.float32, finite=True)   # damaged: recomputed
            if arr is None:
                parts = []
                group = batch_size * -(-CUT_GROUP // batch_size)  # a multiple of batch_size, >= CUT_GROUP
                groups = [chunk[g:g + group] for g in range(0, len(chunk), group)]
                for x in _cut_groups(image_paths, groups, teacher, pool):
                    for b in range(0, len(x), batch_size):
                        sub = x[b:b + batch_size]
                        parts.append(teacher.encode_images(sub).float().cpu().numpy())
                        if bar is not None:
                            bar.update(len(sub))
                arr = np.concatenate(parts).astype(np.float32)
                cache.put(key, arr)
                stats.chunks_computed += 1
                stats.views_computed += len(chunk)
            else:
                stats.chunks_cached += 1
                if bar is not None:
                    bar.update(len(chunk))
            results[c] = arr
            if on_chunk is not None:
                on_chunk(c)
    if bar is not None:
        bar.close()
    stats.seconds = time.perf_counter() - t0
    if world > 1:
        gathered: list[list] = [None] * world  # type: ignore[list-item]
        torch.distributed.all_gather_object(gathered, {c: results[c] for c in my_chunks})
        for part in gathered:
            for c, arr in part.items():
                results[c] = arr
    if not views:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(results)  # type: ignore[arg-type]


def score_views(teacher: Teacher, image_paths: Sequence[str | Path], views: Sequence[View],
                classifier: torch.Tensor, **kw) -> np.ndarray:
    """Teacher probabilities of ``V`` views over ``C`` classes: ``(V, C)`` (method.md §2)."""
    emb = embed_views(teacher, image_paths, views, **kw)
    return teacher.predict(emb, classifier).numpy()
