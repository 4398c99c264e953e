"""Controls for CCD's label update (issue 22 §1): the same warm-up, tau walk, pooling, mixing and consistency, with
only the local views changed, so that *where* the views are and *which classes* they are cut for can be told apart.

Two config fields choose a control (``ccd.views`` and ``ccd.selection``; the defaults ``cam`` and ``tau`` are CCD):

- ``ccd.selection`` -- which (image, class) pairs get a CAM box: ``tau`` (CCD: student sigmoid >= tau),
  ``true_classes`` (the image's ground-truth classes: oracle selection), ``random_classes`` (as many classes per
  image as tau selects there, drawn uniformly at random, seeded), ``top_k`` (the ``k`` classes of highest student
  probability; ``ccd.top_k = 0``: ``k`` = the mean number of objects per training image, rounded) and ``all``
  (every class: the number of views and the choice of classes told apart);
- ``ccd.views`` -- where the views are: ``cam`` (CCD: the box of the CAM's top pixels grown by ``ccd.offset``),
  ``random_boxes`` (the very boxes ``cam`` gives for the same (image, class) pairs, same sizes, moved to uniformly
  random positions in their image, seeded), ``tiles`` (the class-free ``3 x 3`` tiles CDUL scores, pooled as CCD
  pools its crops; ``selection`` is not used) and ``gt_boxes`` (oracle selection and localisation: one view per
  ground-truth object of the image, its box grown by the same ``ccd.offset`` rule; a class with several objects
  gets one view per object, pooled with the image's other views by the class-wise max of method.md §6.3, as CCD
  pools all of an image's crops; ``selection`` is not used).

Every control pools its views' teacher probabilities as CCD does (class-wise max over all of the image's views, LS
floor, ``/ bias``; :func:`~ccdlib.label_update.local_pseudo_labels`) and mixes them with ``r``
(:func:`~ccdlib.label_update.mix_labels`). The CAM-selection controls score the CAM crops of *every* class once
(cached) and keep the selected rows, so they share one teacher pass per warm-up state.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import ConfigError
from .label_update import cam_grid_boxes, grow_boxes, select_classes
from .views import View, grid_views

__all__ = ["VIEW_RULES", "SELECTION_RULES", "control_classes", "mean_objects_per_image", "random_placement",
           "object_views", "tile_views", "control_views"]

VIEW_RULES = ("cam", "random_boxes", "tiles", "gt_boxes")
SELECTION_RULES = ("tau", "true_classes", "random_classes", "top_k", "all")
_TAG_RANDOM_CLASSES, _TAG_RANDOM_BOXES = 0xC1A55, 0xB0C5


def mean_objects_per_image(boxes: Sequence[np.ndarray] | None, labels: np.ndarray) -> float:
    """Mean number of ground-truth objects per image (``boxes``: per image ``(K, 5)``); without boxes the mean
    number of present classes (``labels (N, C)``)."""
    if boxes is not None:
        return float(np.mean([len(np.asarray(b).reshape(-1, 5)) for b in boxes]))
    return float(np.asarray(labels).sum(1).mean())


def control_classes(rule: str, probs: np.ndarray, tau: float, *, labels: np.ndarray | None = None, k: int = 1,
                    seed: int = 0) -> np.ndarray:
    """The (image, class) pairs a selection rule picks: ``probs (N, C)`` student sigmoid outputs -> ``(N, C)`` bool.

    ``tau``: ``probs >= tau`` (CCD). ``true_classes``: ``labels > 0``. ``random_classes``: per image as many classes
    as ``tau`` selects there, uniformly at random without replacement (``seed``). ``top_k``: the ``k`` highest
    probabilities per image. ``all``: every class."""
    p = np.asarray(probs)
    n, c = p.shape
    if rule == "tau":
        return select_classes(p, tau)
    if rule == "true_classes":
        if labels is None:
            raise ConfigError("ccd.selection: true_classes needs the training split's labels")
        return np.asarray(labels) > 0
    if rule == "random_classes":
        counts = select_classes(p, tau).sum(1)
        rng = np.random.default_rng([seed, _TAG_RANDOM_CLASSES])
        out = np.zeros((n, c), bool)
        for i, m in enumerate(counts):
            out[i, rng.choice(c, size=int(m), replace=False)] = True
        return out
    if rule == "top_k":
        k = int(min(max(k, 1), c))
        out = np.zeros((n, c), bool)
        np.put_along_axis(out, np.argsort(-p, axis=1, kind="stable")[:, :k], True, axis=1)
        return out
    if rule == "all":
        return np.ones((n, c), bool)
    raise ConfigError(f"ccd.selection must be one of {', '.join(SELECTION_RULES)}, got {rule!r}")


def random_placement(views: Sequence[View], image_sizes: Sequence[tuple[int, int]], *, seed: int = 0) -> list[View]:
    """The same boxes at uniformly random positions: each view keeps its image and its box's width and height,
    its top-left corner drawn uniformly so that the box lies inside the image (``seed``)."""
    rng = np.random.default_rng([seed, _TAG_RANDOM_BOXES])
    out = []
    for v in views:
        w, h = image_sizes[v.image]
        x0, y0, x1, y1 = v.box
        bw, bh = min(x1 - x0, w), min(y1 - y0, h)
        nx, ny = rng.uniform(0.0, w - bw), rng.uniform(0.0, h - bh)
        out.append(View(v.image, (nx, ny, nx + bw, ny + bh)))
    return out


def object_views(boxes: Sequence[np.ndarray], image_sizes: Sequence[tuple[int, int]], *, offset: float = 80,
                 resolution: int = 640) -> tuple[list[View], np.ndarray]:
    """One view per ground-truth object: its box grown by ``offset`` pixels of the ``resolution`` grid (scaled to
    the image, as :func:`~ccdlib.label_update.grow_boxes` grows a CAM box) and clipped. ``boxes``: per image
    ``(K, 5)`` ``[class, x0, y0, x1, y1]`` -> views and ``(M, 2)`` ``(image, class)``."""
    views, owners = [], []
    for i, b in enumerate(boxes):
        w, h = image_sizes[i]
        ox, oy = offset * w / resolution, offset * h / resolution
        for cls, x0, y0, x1, y1 in np.asarray(b, dtype=np.float64).reshape(-1, 5):
            views.append(View(i, (max(0.0, x0 - ox), max(0.0, y0 - oy), min(float(w), x1 + ox),
                                  min(float(h), y1 + oy))))
            owners.append((i, int(cls)))
    return views, np.asarray(owners, dtype=np.int64).reshape(-1, 2)


def tile_views(image_sizes: Sequence[tuple[int, int]], n: int = 3) -> tuple[list[View], np.ndarray]:
    """CDUL's class-free ``n x n`` tiles (:func:`~ccdlib.views.grid_views`), owners ``(image, -1)``."""
    views = grid_views(image_sizes, n)
    return views, np.asarray([(v.image, -1) for v in views], dtype=np.int64).reshape(-1, 2)


def control_views(*, views: str, selection: str, probs: np.ndarray, tau: float, cams, image_sizes, offset: float,
                  resolution: int, threshold: float, box_rule: str, seed: int, labels: np.ndarray | None = None,
                  boxes: Sequence[np.ndarray] | None = None, top_k: int = 0, grid: int = 3
                  ) -> tuple[list[View], np.ndarray, np.ndarray, dict]:
    """The local views of a control: ``(views_to_score, owners (M, 2), keep (M,) bool, info)``.

    ``views_to_score`` is what the teacher scores (cached); ``keep`` marks the views the control pools. For the
    CAM-selection controls (``views="cam"`` with a selection other than ``tau``) ``views_to_score`` holds the CAM
    crop of *every* (image, class) with a box, the same list for each of them (scored once), and ``keep`` the
    selected rows; otherwise every view is kept. ``info``: ``classes_per_image`` (selected pairs per image, NaN for
    tiles) and ``k`` (``top_k``)."""
    if views not in VIEW_RULES:
        raise ConfigError(f"ccd.views must be one of {', '.join(VIEW_RULES)}, got {views!r}")
    n = len(image_sizes)
    info: dict = {}
    if views == "tiles":
        v, owners = tile_views(image_sizes, grid)
        info["classes_per_image"] = float("nan")
        return v, owners, np.ones(len(v), bool), info
    if views == "gt_boxes":
        if boxes is None:
            raise ConfigError("ccd.views: gt_boxes needs object boxes in the training annotations (this data set "
                              "has none)")
        v, owners = object_views(boxes, image_sizes, offset=offset, resolution=resolution)
        info["classes_per_image"] = float(len(np.unique(owners, axis=0)) / max(n, 1)) if len(owners) else 0.0
        return v, owners, np.ones(len(v), bool), info
    k = 1
    if selection == "top_k":
        k = int(top_k) if top_k else max(1, int(round(mean_objects_per_image(boxes, labels))))
        info["k"] = k
    selected = control_classes(selection, probs, tau, labels=labels, k=k, seed=seed)
    info["classes_per_image"] = float(selected.sum(1).mean()) if n else 0.0
    superset = selected if (views == "random_boxes" or selection == "tau") else np.ones_like(selected)
    grid_b, owners = cam_grid_boxes(cams, superset, resolution=resolution, threshold=threshold, box_rule=box_rule)
    crops = grow_boxes(grid_b, owners, image_sizes, offset=offset, resolution=resolution)
    keep = selected[owners[:, 0], owners[:, 1]] if len(owners) else np.zeros(0, bool)
    if views == "random_boxes":
        crops = random_placement(crops, image_sizes, seed=seed)
    return crops, owners, keep, info
