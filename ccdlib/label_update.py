"""CCD's classifier-guided label update (SPEC §6): the student's CAMs choose local views, the teacher scores
them, and the local labels are mixed into the global ones.

Steps, one function each:
1. :func:`calibrate_class_threshold` -- the class-selection threshold ``tau``.
2. :func:`cam_to_box` / :func:`cam_boxes` -- CAM -> box (true min/max box by default; the released code's
   raster-order corners as ``box_rule="raster"``), grown by ``offset``, clipped, mapped to image pixels.
3. :func:`local_pseudo_labels` -- class-wise max over an image's crops, LS floor, division by the global bias.
4. :func:`mix_labels` -- ``y <- clamp(r * y_prev + (1 - r) * y_loc, 0, 1)``.
:func:`classifier_guided_label_update` chains them with batched, cached teacher scoring of every crop.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from .pseudolabels import debias, label_smoothing_floor
from .views import View

#: CAMs of all ``N`` images, ``(N, C, h, w)``, or a function of image indices returning theirs, ``(len(idx), C, h, w)``
#: (e.g. :meth:`ccdlib.student.StudentTrainer.cams`): then they are computed block by block, never all at once.
CAMSource = Union[np.ndarray, Callable[[np.ndarray], np.ndarray]]

__all__ = [
    "calibrate_class_threshold",
    "select_classes",
    "cam_to_box",
    "cam_boxes",
    "CAMSource",
    "local_pseudo_labels",
    "mix_labels",
    "LabelUpdateResult",
    "classifier_guided_label_update",
]


def calibrate_class_threshold(probs: np.ndarray, *, tau0: float = 0.05, step: float = 0.001, bound: float = 4,
                              block: int = 100, seed: int = 0, max_passes: int = 50) -> float:
    """SPEC §6.1: walk through shuffled images in blocks of ``block``; after each block, stop if the block's mean
    number of classes with ``prob >= tau`` lies in ``(bound, bound + 2)``, else ``tau += step``.

    ``probs (N, C)`` student sigmoid outputs -> ``tau``. The walk cycles over the data (at most ``max_passes``
    passes) and also stops when the mean count is ``<= bound``: raising ``tau`` can only lower the count, so
    the interval can no longer be reached (the released code would keep walking to the end of its loader).
    """
    p = np.asarray(probs)
    rng = np.random.default_rng(seed)
    tau = float(tau0)
    n = len(p)
    for _ in range(max_passes):
        order = rng.permutation(n)
        for s in range(0, n, block):
            count = (p[order[s:s + block]] >= tau).sum(1).mean()
            if bound < count < bound + 2 or count <= bound:
                return tau
            tau += step
    return tau


def select_classes(probs: np.ndarray, tau: float) -> np.ndarray:
    """Classes whose student probability is ``>= tau``: ``(N, C) -> (N, C)`` bool."""
    return np.asarray(probs) >= tau


def cam_to_box(cam: np.ndarray | torch.Tensor, *, resolution: int = 640, threshold: float = 0.95,
               box_rule: str = "minmax") -> tuple[int, int, int, int] | None:
    """SPEC §6.2 for one class map: upsample bilinearly to ``resolution x resolution``, min-max normalise, keep
    pixels ``> threshold`` and box them.

    ``cam (h, w)`` -> ``(x0, y0, x1, y1)`` in the ``resolution`` grid (``x1, y1`` exclusive), or ``None`` for a
    flat map. ``box_rule="minmax"``: the tight box of the kept pixels. ``"raster"``: the released code's quirk,
    whose corners are the first and the last kept pixel in raster (row-major) order.
    """
    m = torch.as_tensor(np.asarray(cam), dtype=torch.float32)[None, None]
    up = F.interpolate(m, size=(resolution, resolution), mode="bilinear", align_corners=False)[0, 0]
    lo, hi = up.min(), up.max()
    if not torch.isfinite(hi - lo) or hi - lo <= 0:
        return None
    norm = (up - lo) / (hi - lo)
    ys, xs = torch.nonzero(norm > threshold, as_tuple=True)
    if len(xs) == 0:
        return None
    if box_rule == "minmax":
        return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    if box_rule == "raster":  # nonzero() is row-major: first and last kept pixel in raster order
        xf, yf, xl, yl = int(xs[0]), int(ys[0]), int(xs[-1]), int(ys[-1])
        return min(xf, xl), yf, max(xf, xl) + 1, yl + 1
    raise ValueError(f"box_rule must be 'minmax' or 'raster', got {box_rule!r}")


def cam_boxes(cams: CAMSource, selected: np.ndarray, image_sizes: Sequence[tuple[int, int]], *,
              offset: float = 80, resolution: int = 640, threshold: float = 0.95, box_rule: str = "minmax",
              block: int = 256) -> tuple[list[View], np.ndarray]:
    """Boxes of every selected (image, class): ``cams (N, C, h, w)``, ``selected (N, C)`` -> crop views in image
    pixels and ``(M, 2)`` int array of their ``(image, class)``, image-major.

    The box is found on the ``resolution`` grid (the released code's 640x640 teacher input), grown by ``offset``
    grid pixels on every side, clipped to the grid, then scaled to the image's own pixel size. ``cams`` may be a
    function of image indices (:data:`CAMSource`): it is then called for ``block`` images with a selected class at a
    time, so memory does not grow with ``N``.
    """
    views: list[View] = []
    owners: list[tuple[int, int]] = []
    selected = np.asarray(selected)
    rows = np.flatnonzero(selected.any(axis=1))
    for start in range(0, len(rows), block):
        idx = rows[start:start + block]
        part = np.asarray(cams(idx)) if callable(cams) else None
        if part is not None and part.shape[0] != len(idx):
            raise ValueError(f"the CAM function returned {part.shape[0]} maps for {len(idx)} images")
        for j, i in enumerate(idx):
            for c in np.flatnonzero(selected[i]):
                _add_box(views, owners, part[j, c] if part is not None else cams[i, c], int(i), int(c), image_sizes,
                         offset=offset, resolution=resolution, threshold=threshold, box_rule=box_rule)
    return views, np.asarray(owners, dtype=np.int64).reshape(-1, 2)


def _add_box(views: list[View], owners: list[tuple[int, int]], cam, i: int, c: int,
             image_sizes: Sequence[tuple[int, int]], *, offset: float, resolution: int, threshold: float,
             box_rule: str) -> None:
    """Append image ``i``'s crop view for class ``c`` (nothing for a flat map)."""
    box = cam_to_box(cam, resolution=resolution, threshold=threshold, box_rule=box_rule)
    if box is None:
        return
    x0, y0, x1, y1 = box
    x0, y0 = max(0.0, x0 - offset), max(0.0, y0 - offset)
    x1, y1 = min(float(resolution), x1 + offset), min(float(resolution), y1 + offset)
    w, h = image_sizes[i]
    sx, sy = w / resolution, h / resolution
    views.append(View(i, (x0 * sx, y0 * sy, x1 * sx, y1 * sy)))
    owners.append((i, c))


def local_pseudo_labels(crop_probs: np.ndarray, crop_images: np.ndarray, n_images: int, bias: np.ndarray, *,
                        ls: float | None = 20) -> tuple[np.ndarray, np.ndarray]:
    """SPEC §6.3: ``y_loc = max over the image's crops of p(crop)``, then the LS floor, then ``/ bias`` (clamped).

    ``crop_probs (M, C)``, ``crop_images (M,)`` -> ``y_loc (N, C)`` and ``has_crops (N,)`` bool. Rows of images
    without crops are zero (see :func:`mix_labels`).
    """
    c = crop_probs.shape[1] if crop_probs.ndim == 2 else len(bias)
    y = np.zeros((n_images, c))
    has = np.zeros(n_images, bool)
    if len(crop_images):
        np.maximum.at(y, np.asarray(crop_images), np.asarray(crop_probs, dtype=np.float64))
        has[np.asarray(crop_images)] = True
    y = debias(label_smoothing_floor(y, ls=ls), bias)
    y[~has] = 0.0
    return y, has


def mix_labels(y_prev: np.ndarray, y_loc: np.ndarray, has_crops: np.ndarray, *, r: float = 0.2) -> np.ndarray:
    """SPEC §6.4: ``y <- clamp(r * y_prev + (1 - r) * y_loc, 0, 1)``; an image with no selected class (no crop)
    keeps its previous label ``y_prev``. ``(N, C), (N, C), (N,) -> (N, C)``."""
    mixed = np.clip(r * y_prev + (1.0 - r) * y_loc, 0.0, 1.0)
    return np.where(np.asarray(has_crops)[:, None], mixed, y_prev)


@dataclass
class LabelUpdateResult:
    labels: np.ndarray        # (N, C) updated pseudo-labels
    local: np.ndarray         # (N, C) local labels (0 where no crop)
    has_crops: np.ndarray     # (N,) bool
    tau: float
    crops: list[View]         # the crop views scored by the teacher
    crop_owner: np.ndarray    # (M, 2) (image, class) of each crop
    crops_per_image: float


def classifier_guided_label_update(*, y_prev: np.ndarray, student_probs: np.ndarray, cams: CAMSource,
                                   teacher, classifier: torch.Tensor, image_paths: Sequence[str | Path],
                                   image_sizes: Sequence[tuple[int, int]], bias: np.ndarray,
                                   ls: float | None = 20, r: float = 0.2, offset: float = 80,
                                   resolution: int = 640, threshold: float = 0.95, box_rule: str = "minmax",
                                   tau0: float | None = None, bound: float = 4, seed: int = 0,
                                   batch_size: int | None = None, cache_dir: str | Path | None = None,
                                   progress: bool = True) -> LabelUpdateResult:
    """SPEC §6, end to end. ``y_prev (N, C)`` debiased global labels, ``student_probs (N, C)`` sigmoid outputs,
    ``cams (N, C, h, w)`` or a function of image indices (:data:`CAMSource`, e.g. ``trainer.cams``) ->
    :class:`LabelUpdateResult`. Crops of all images are scored in shared batches.

    Memory: no crop pixels are held beyond one teacher batch (:func:`~ccdlib.scoring.embed_views` streams); what
    grows with ``N`` is the crop list (``M`` views, ~5 per image), the crop embeddings ``(M, D)`` float32 and, when
    ``cams`` is an array, the CAMs ``(N, C, h, w)`` float32 (pass a function to compute them block by block).
    """
    from .scoring import embed_views

    if tau0 is None:
        tau0 = 0.05 if ls else 0.001
    tau = calibrate_class_threshold(student_probs, tau0=tau0, bound=bound, seed=seed)
    selected = select_classes(student_probs, tau)
    crops, owner = cam_boxes(cams, selected, image_sizes, offset=offset, resolution=resolution,
                             threshold=threshold, box_rule=box_rule)
    n, c = y_prev.shape
    if crops:
        emb = embed_views(teacher, image_paths, crops, batch_size=batch_size, cache_dir=cache_dir,
                          progress=progress, desc="CAM crops")
        crop_probs = teacher.predict(emb, classifier).numpy()
    else:
        crop_probs = np.zeros((0, c))
    y_loc, has = local_pseudo_labels(crop_probs, owner[:, 0], n, bias, ls=ls)
    labels = mix_labels(y_prev, y_loc, has, r=r)
    return LabelUpdateResult(labels=labels, local=y_loc, has_crops=has, tau=tau, crops=crops, crop_owner=owner,
                             crops_per_image=len(crops) / max(n, 1))
