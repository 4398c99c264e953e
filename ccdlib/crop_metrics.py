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


# ============================================================================================ localisation (issue 22 §4)
def cam_peaks(cams: np.ndarray, owners: np.ndarray, image_sizes: Sequence[tuple[int, int]], *,
              resolution: int = 640) -> np.ndarray:
    """The peak of each owner's CAM in image pixels: ``cams (N, C, h, w)`` (the maps the run crops from),
    ``owners (M, 2)`` ``(image, class)`` -> ``(M, 2)`` float ``(x, y)``, the centre of the highest pixel of the map
    upsampled bilinearly to ``resolution x resolution`` (as :func:`ccdlib.label_update.cam_to_box` upsamples it),
    scaled to the image's ``(w, h)``. A flat map gives its first pixel, as ``argmax`` does."""
    import torch
    import torch.nn.functional as F
    owners = np.asarray(owners, dtype=np.int64).reshape(-1, 2)
    out = np.zeros((len(owners), 2))
    for k, (i, c) in enumerate(owners):
        m = torch.as_tensor(np.asarray(cams[i, c]), dtype=torch.float32)[None, None]
        up = F.interpolate(m, size=(resolution, resolution), mode="bilinear", align_corners=False)[0, 0]
        row, col = divmod(int(torch.argmax(up)), resolution)
        w, h = image_sizes[i]
        out[k] = ((col + 0.5) * w / resolution, (row + 0.5) * h / resolution)
    return out


def _class_mask(b: np.ndarray, c: int, size: tuple[int, int]) -> np.ndarray:
    """``(h, w)`` bool: the pixels inside any box of class ``c`` (``b (K, 5)`` ``[class, x0, y0, x1, y1]``)."""
    w, h = size
    mask = np.zeros((int(h), int(w)), dtype=bool)
    for cls, x0, y0, x1, y1 in b:
        if int(cls) == c:
            mask[max(0, int(np.floor(y0))):int(np.ceil(y1)), max(0, int(np.floor(x0))):int(np.ceil(x1))] = True
    return mask


def pointing_game(peaks: np.ndarray, owners: np.ndarray, boxes: Sequence[np.ndarray],
                  image_sizes: Sequence[tuple[int, int]]) -> dict[str, float]:
    """Pointing game on the (image, class) pairs whose class is in the image (x100): ``hit`` = the CAM's peak
    (``peaks (M, 2)`` in image pixels, :func:`cam_peaks`) lies inside a ground-truth box of its class; ``chance`` =
    the mean share of the image those boxes cover (a peak placed uniformly at random hits that often). ``n``: the
    pairs scored (pairs whose class is absent have no object to point at and are left out)."""
    owners = np.asarray(owners, dtype=np.int64).reshape(-1, 2)
    hits, chance = [], []
    for (x, y), (i, c) in zip(np.asarray(peaks).reshape(-1, 2), owners):
        b = np.asarray(boxes[int(i)], dtype=np.float64).reshape(-1, 5)
        own = b[b[:, 0] == c]
        if not len(own):
            continue
        hits.append(bool(((own[:, 1] <= x) & (x < own[:, 3]) & (own[:, 2] <= y) & (y < own[:, 4])).any()))
        chance.append(float(_class_mask(own, int(c), image_sizes[int(i)]).mean()))
    n = len(hits)
    return {"hit": 100 * float(np.mean(hits)) if n else float("nan"),
            "chance": 100 * float(np.mean(chance)) if n else float("nan"), "n": float(n)}


def object_area_in_crop(views: Sequence[View], owners: np.ndarray, boxes: Sequence[np.ndarray],
                        image_sizes: Sequence[tuple[int, int]]) -> dict[str, float]:
    """How much of each true object its class's crop holds (x100): over every object whose (image, class) has a
    crop, ``share`` = the mean of ``area(object ∩ crop) / area(object)`` (the largest over the class's crops);
    ``chance`` = the mean of ``area(crop) / area(image)`` over the same objects (what a crop of that size placed
    uniformly at random holds of an object on average, up to edge effects); ``objects`` = the objects scored,
    ``missed`` = the objects of present classes that have no crop of their class."""
    owners = np.asarray(owners, dtype=np.int64).reshape(-1, 2)
    by_pair: dict[tuple[int, int], list[tuple[float, float, float, float]]] = {}
    for v, (i, c) in zip(views, owners):
        by_pair.setdefault((int(i), int(c)), []).append(tuple(map(float, v.box)))
    share, chance, missed = [], [], 0
    for i, b in enumerate(boxes):
        w, h = image_sizes[i]
        for cls, x0, y0, x1, y1 in np.asarray(b, dtype=np.float64).reshape(-1, 5):
            crops = by_pair.get((i, int(cls)))
            if not crops:
                missed += 1
                continue
            area = max((x1 - x0) * (y1 - y0), 1e-9)
            best, best_area = -1.0, 0.0
            for cx0, cy0, cx1, cy1 in crops:
                inter = max(0.0, min(x1, cx1) - max(x0, cx0)) * max(0.0, min(y1, cy1) - max(y0, cy0))
                if inter / area > best:
                    best, best_area = inter / area, (cx1 - cx0) * (cy1 - cy0)
            share.append(best)
            chance.append(best_area / max(w * h, 1e-9))
    n = len(share)
    return {"share": 100 * float(np.mean(share)) if n else float("nan"),
            "chance": 100 * float(np.mean(chance)) if n else float("nan"), "objects": float(n),
            "missed": float(missed)}
