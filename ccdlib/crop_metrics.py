"""Where local views sit on a split's true objects: box IoU, per-crop hits and the summary of a set of crops
(notebook 06; ``run_ccd`` records it in ``info["crop_summary"]``)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .views import View

__all__ = ["box_iou", "crop_hits", "crop_summary"]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of boxes ``[x0, y0, x1, y1]`` (x1, y1 exclusive): ``(M, 4), (K, 4) -> (M, K)``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def crop_hits(views: Sequence[View], owners: np.ndarray, boxes: Sequence[np.ndarray]) -> pd.DataFrame:
    """Per crop, how it sits on the image's true objects: one row per view with ``image``, ``class``,
    ``class_present`` (the crop's class is in the image), ``iou_own`` (best IoU with an object *of its class*, 0 when
    none) and ``iou_any`` (best IoU with any object).

    ``views`` ``M`` crops in image pixels, ``owners (M, 2)`` their ``(image, class)``, ``boxes`` per image a
    ``(K_i, 5)`` array ``[class, x0, y0, x1, y1]`` (``MultiLabelDataset.boxes``)."""
    rows = []
    owners = np.asarray(owners, dtype=np.int64).reshape(-1, 2)
    for v, (i, c) in zip(views, owners):
        b = np.asarray(boxes[int(i)], dtype=np.float64).reshape(-1, 5)
        iou = box_iou(np.asarray(v.box)[None], b[:, 1:])[0] if len(b) else np.zeros(0)
        own = b[:, 0] == c
        rows.append({"image": int(i), "class": int(c), "class_present": bool(own.any()),
                     "iou_own": float(iou[own].max()) if own.any() else 0.0,
                     "iou_any": float(iou.max()) if len(iou) else 0.0})
    return pd.DataFrame(rows, columns=["image", "class", "class_present", "iou_own", "iou_any"])


def crop_summary(views: Sequence[View], owners: np.ndarray, boxes: Sequence[np.ndarray], *,
                 iou: float = 0.5) -> dict[str, float]:
    """What a set of local views is worth as object views (percentages x100):

    - ``views_per_image``, ``objects_per_image`` (over all ``N = len(boxes)`` images);
    - ``class_precision``: crops whose class is in the image (what the class selection, tau, got right);
    - ``on_own_object``: crops with IoU >= ``iou`` with a true object of their class;
    - ``on_any_object``: crops with IoU >= ``iou`` with any true object (for class-free views such as tiles);
    - ``mean_iou_own``: mean best IoU with an object of the crop's class;
    - ``object_recall``: true objects covered (IoU >= ``iou``) by a crop of their class; for class-free views
      (``owners[:, 1] < 0``) by any view.
    """
    hits = crop_hits(views, owners, boxes)
    n = len(boxes)
    objects = sum(len(np.asarray(b).reshape(-1, 5)) for b in boxes)
    covered = 0
    owners = np.asarray(owners, dtype=np.int64).reshape(-1, 2)
    for i, b in enumerate(boxes):
        b = np.asarray(b, dtype=np.float64).reshape(-1, 5)
        m = np.flatnonzero(owners[:, 0] == i)
        if not len(b) or not len(m):
            continue
        ious = box_iou(np.asarray([views[k].box for k in m]), b[:, 1:])       # (m, K)
        same = (owners[m, 1][:, None] == b[None, :, 0]) | (owners[m, 1][:, None] < 0)
        covered += int(((ious >= iou) & same).any(axis=0).sum())
    has = len(hits) > 0
    return {"views_per_image": len(hits) / max(n, 1), "objects_per_image": objects / max(n, 1),
            "class_precision": 100 * float(hits.class_present.mean()) if has else float("nan"),
            "on_own_object": 100 * float((hits.iou_own >= iou).mean()) if has else float("nan"),
            "on_any_object": 100 * float((hits.iou_any >= iou).mean()) if has else float("nan"),
            "mean_iou_own": float(hits.iou_own.mean()) if has else float("nan"),
            "object_recall": 100 * covered / max(objects, 1)}
