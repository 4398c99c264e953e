"""Fig. 1, view dependency: how the teacher's prediction of a class depends on the view (whole image, tiles,
object crops). Shapes: ``N`` images, ``C`` classes, ``K`` tiles per image, ``M`` views (crops) over all images."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..metrics import mean_average_precision
from ..views import View, expand_box


def _view_name(n: int) -> str:
    return "whole image" if n == 1 else f"1/{n * n} patches ({n}x{n})"


#: Display name of an ``n x n`` grid (``n = 1``: the whole image).
VIEW_NAMES = {n: _view_name(n) for n in range(1, 9)}


# ============================================================================================ Fig. 1
def max_over_tiles(tile_probs: np.ndarray) -> np.ndarray:
    """Class-wise max over an image's tiles: ``(N, K, C) -> (N, C)`` (CDUL's aggregator with ``theta = 0``)."""
    t = np.asarray(tile_probs, dtype=np.float64)
    if t.ndim != 3:
        raise ValueError(f"tile_probs must be (N, K, C), got shape {t.shape}")
    return t.max(axis=1)


def gt_mean_probability(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean of ``probs[i, c]`` over the ground-truth positives ``labels[i, c] = 1``: ``(N, C), (N, C) -> float``
    (NaN without positives)."""
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels).astype(bool)
    if p.shape != y.shape:
        raise ValueError(f"probs {p.shape} and labels {y.shape} must have the same shape")
    return float(p[y].mean()) if y.any() else float("nan")


def view_dependency_summary(global_probs: np.ndarray, tile_probs: dict[int, np.ndarray], labels: np.ndarray,
                            *, class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Fig. 1 summary over a split: one row per view size.

    Args:
        global_probs: ``(N, C)`` whole-image probabilities (the ``n = 1`` row).
        tile_probs: ``{n: (N, n*n, C)}`` tile probabilities of ``n x n`` grids (``n >= 2``).
        labels: ``(N, C)`` ground truth.

    Returns:
        DataFrame with columns ``grid`` (n), ``view`` (display name), ``tiles`` (n*n), ``gt_prob`` (mean over GT
        positives of the max-over-tiles probability, x100), ``absent_prob`` (the same over the negatives, x100),
        ``gt_top1`` (% of images whose max-over-tiles top-1 class is a GT class) and ``mAP`` of the
        max-over-tiles scores (x100; classes without positives excluded).
    """
    y = np.asarray(labels).astype(bool)
    per_grid = {1: np.asarray(global_probs, dtype=np.float64)}
    per_grid.update({n: max_over_tiles(t) for n, t in sorted(tile_probs.items()) if n != 1})
    rows = []
    for n, s in per_grid.items():
        top1 = s.argmax(1)
        rows.append({"grid": n, "view": VIEW_NAMES.get(n, _view_name(n)), "tiles": n * n,
                     "gt_prob": 100 * gt_mean_probability(s, y), "absent_prob": 100 * gt_mean_probability(s, ~y),
                     "gt_top1": 100 * float(y[np.arange(len(y)), top1].mean()),
                     "mAP": mean_average_precision(s, y.astype(np.uint8), class_names=class_names).map})
    return pd.DataFrame(rows)


def example_view_probabilities(global_probs: np.ndarray, tile_probs: dict[int, np.ndarray], labels: np.ndarray,
                               index: int, class_names: Sequence[str]) -> pd.DataFrame:
    """Long table of one image's GT classes' probabilities per view: columns ``class``, ``view``, ``grid``,
    ``probability`` (x100; for ``n >= 2`` the max over the ``n x n`` tiles), ``best_tile`` (the arg-max tile,
    row-major; 0 for the whole image). ``global_probs (N, C)``, ``tile_probs {n: (N, n*n, C)}``."""
    classes = np.flatnonzero(np.asarray(labels)[index])
    rows = []
    for c in classes:
        rows.append({"class": class_names[c], "view": VIEW_NAMES[1], "grid": 1,
                     "probability": 100 * float(global_probs[index, c]), "best_tile": 0})
        for n, t in sorted(tile_probs.items()):
            k = int(np.argmax(t[index, :, c]))
            rows.append({"class": class_names[c], "view": VIEW_NAMES.get(n, _view_name(n)), "grid": n,
                         "probability": 100 * float(t[index, k, c]), "best_tile": k})
    return pd.DataFrame(rows)


def object_views(boxes: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]], *, fraction: float = 0.0
                 ) -> tuple[list[View], np.ndarray]:
    """One view per ground-truth object: its box grown by ``fraction`` of its width/height on every side, clipped.

    Args:
        boxes: per image a ``(K_i, 5)`` array ``[class, x0, y0, x1, y1]`` (``MultiLabelDataset.boxes``).
        sizes: per image ``(width, height)``.
        fraction: 0 = the GT box; 0.2 = "around the GT box" (+20 % each side, method.md §11).

    Returns:
        ``M`` views (image-major, in box order) and ``(M, 2)`` int ``(image, class)`` of each.
    """
    views: list[View] = []
    owners: list[tuple[int, int]] = []
    for i, (b, (w, h)) in enumerate(zip(boxes, sizes)):
        for row in np.asarray(b, dtype=np.float64).reshape(-1, 5):
            box = expand_box(tuple(row[1:]), fraction=fraction, width=w, height=h)
            views.append(View(i, box))
            owners.append((i, int(row[0])))
    return views, np.asarray(owners, dtype=np.int64).reshape(-1, 2)


def top1_rates(global_probs: np.ndarray, crop_probs: np.ndarray, owners: np.ndarray) -> dict[str, float]:
    """How often an object's class is the teacher's top-1 class on the whole image vs on its own crop.

    ``global_probs (N, C)``, ``crop_probs (M, C)`` (one crop per object), ``owners (M, 2)`` ``(image, class)``
    -> ``{"objects": M, "whole_image": %, "own_crop": %}``. On an image with ``k`` objects at most one of them
    can be top-1 on the whole image, so ``whole_image`` is bounded by the mean of ``1/k``; that bound is
    returned as ``whole_image_bound``.
    """
    owners = np.asarray(owners, dtype=np.int64).reshape(-1, 2)
    if len(owners) == 0:
        return {"objects": 0, "whole_image": float("nan"), "own_crop": float("nan"), "whole_image_bound": float("nan")}
    img, cls = owners[:, 0], owners[:, 1]
    whole = np.asarray(global_probs).argmax(1)[img] == cls
    crop = np.asarray(crop_probs).argmax(1) == cls
    per_image = np.bincount(img)
    return {"objects": int(len(owners)), "whole_image": 100 * float(whole.mean()),
            "own_crop": 100 * float(crop.mean()), "whole_image_bound": 100 * float((1.0 / per_image[img]).mean())}
