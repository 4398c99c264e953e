"""CCD's classifier-guided label update (method.md §6): the student's CAMs choose local views, the teacher scores
them, and the local labels are mixed into the global ones.

Steps, one function each:
1. :func:`calibrate_class_threshold` -- the class-selection threshold ``tau``.
2. :func:`cam_to_box` / :func:`cam_boxes` -- CAM -> box (true min/max box by default; the released code's
   raster-order corners as ``box_rule="raster"``), grown by ``offset``, clipped, mapped to image pixels
   (:func:`cam_grid_boxes` then :func:`grow_boxes`: several offsets share one pass over the CAMs).
3. :func:`local_pseudo_labels` -- class-wise max over an image's crops, LS floor, division by the global bias
   (not clamped).
4. :func:`mix_labels` -- ``y <- clamp(r * y_prev + (1 - r) * y_loc, 0, 1)``.
:func:`classifier_guided_label_update` chains them with batched, cached teacher scoring of every crop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from .pseudolabels import label_smoothing_floor
from .views import View

#: CAMs of all ``N`` images, ``(N, C, h, w)``, or a function of image indices returning theirs, ``(len(idx), C, h, w)``
#: (e.g. :meth:`ccdlib.student.StudentTrainer.cams`): then they are computed block by block, never all at once.
CAMSource = Union[np.ndarray, Callable[[np.ndarray], np.ndarray]]

__all__ = [
    "calibrate_class_threshold",
    "tau_walk",
    "select_classes",
    "cam_to_box",
    "cam_boxes",
    "cam_grid_boxes",
    "grow_boxes",
    "CAMSource",
    "local_pseudo_labels",
    "mix_labels",
    "LabelUpdateResult",
    "classifier_guided_label_update",
]


def calibrate_class_threshold(probs: np.ndarray, *, tau0: float = 0.05, step: float = 0.001, bound: float = 4,
                              block: int = 100, seed: int = 0, max_passes: int = 50, walk: str = "single_pass",
                              checks: int = 50) -> float:
    """method.md §6.1, the class-selection threshold: :func:`tau_walk`'s ``tau`` (see there)."""
    return tau_walk(probs, tau0=tau0, step=step, bound=bound, block=block, seed=seed, max_passes=max_passes,
                    walk=walk, checks=checks)[0]


def tau_walk(probs: np.ndarray, *, tau0: float = 0.05, step: float = 0.001, bound: float = 4, block: int = 100,
             seed: int = 0, max_passes: int = 50, walk: str = "single_pass", checks: int = 50) -> tuple[float, int]:
    """method.md §6.1: walk through shuffled images in blocks of ``block``; after each block, stop if the block's mean
    number of classes with ``prob >= tau`` lies in ``(bound, bound + 2)``, else ``tau += step``.

    ``probs``: ``(N, C)`` student sigmoid outputs, or ``(V, N, C)`` for ``V`` views of every image (the released
    code counts on the training loader's views, 448 px with a random flip: pass ``[base, flipped]``; each visit of
    an image then draws its view). Returns ``(tau, checks made)``.

    ``walk="single_pass"`` (the released loop, ``train.py`` 216-247): one pass over one shuffled order; each image
    adds ``count / block`` to a running mean, which is checked (and reset) at positions ``block, 2 block, ...``
    (0-based, so the first block holds ``block + 1`` images), and the walk ends with the data: on 320 images
    ``tau`` moves at most 3 steps. ``walk="released_checks"``: the same loop continued over fresh shuffles (the
    position counting on) until it has made ``checks`` checks or stopped: the released walk's dynamics on VOC07
    trainval (5,011 images, 50 checks, where both rules are the same) at any ``N``. ``walk="multi_pass"``: blocks
    of exactly ``block`` images, cycling over fresh shuffles (at most ``max_passes``), also stopping when the mean
    count is ``<= bound`` (raising ``tau`` can only lower it, so the interval can no longer be reached).
    """
    p = np.asarray(probs)
    views = p if p.ndim == 3 else p[None]
    nv, n = views.shape[0], views.shape[1]
    rng = np.random.default_rng(seed)
    tau = float(tau0)

    def count(i: int) -> float:
        v = int(rng.integers(nv)) if nv > 1 else 0
        return float((views[v, i] >= tau).sum())

    if walk in ("single_pass", "released_checks"):
        limit = 1 if walk == "single_pass" else max(1, -(-checks * block // max(n, 1)) + 1)
        made, pos, mean_count = 0, 0, 0.0
        for _ in range(limit):
            for i in rng.permutation(n):
                mean_count += count(int(i)) / block
                if pos % block == 0 and pos != 0:
                    made += 1
                    if bound < mean_count < bound + 2:
                        return tau, made
                    tau += step
                    mean_count = 0.0
                    if walk == "released_checks" and made >= checks:
                        return tau, made
                pos += 1
        return tau, made
    if walk != "multi_pass":
        raise ValueError(f"walk must be 'released_checks', 'single_pass' or 'multi_pass', got {walk!r}")
    made = 0
    for _ in range(max_passes):
        order = rng.permutation(n)
        for s in range(0, n, block):
            idx = order[s:s + block]
            vs = rng.integers(nv, size=len(idx)) if nv > 1 else np.zeros(len(idx), dtype=np.int64)
            cnt = (views[vs, idx] >= tau).sum(1).mean()
            made += 1
            if bound < cnt < bound + 2 or cnt <= bound:
                return tau, made
            tau += step
    return tau, made


_tau_walk = tau_walk   # classifier_guided_label_update's argument ``tau_walk`` names the rule


def select_classes(probs: np.ndarray, tau: float) -> np.ndarray:
    """Classes whose student probability is ``>= tau``: ``(N, C) -> (N, C)`` bool."""
    return np.asarray(probs) >= tau


def cam_to_box(cam: np.ndarray | torch.Tensor, *, resolution: int = 640, threshold: float = 0.95,
               box_rule: str = "minmax") -> tuple[int, int, int, int] | None:
    """method.md §6.2 for one class map: upsample bilinearly to ``resolution x resolution``, min-max normalise, keep
    pixels ``> threshold`` and box them.

    ``cam (h, w)`` -> ``(x0, y0, x1, y1)`` in the ``resolution`` grid (``x1, y1`` exclusive), or ``None`` for a
    flat map (or one whose normalised peak stays ``<= threshold``: the released code crashes there).
    Normalisation: ``(m - min) / (max - min + 1e-5)`` as released. ``box_rule="minmax"``: the tight box of the kept
    pixels. ``"raster"``: the released code's quirk, whose corners are the first and the last kept pixel in raster
    (row-major) order, used as given (so the far edge excludes the last pixel's row and column, as released).
    """
    m = torch.as_tensor(np.asarray(cam), dtype=torch.float32)[None, None]
    up = F.interpolate(m, size=(resolution, resolution), mode="bilinear", align_corners=False)[0, 0]
    lo, hi = up.min(), up.max()
    if not torch.isfinite(hi - lo) or hi - lo <= 0:
        return None
    norm = (up - lo) / (hi - lo + 1e-5)     # the released guard (train.py 299-332)
    ys, xs = torch.nonzero(norm > threshold, as_tuple=True)
    if len(xs) == 0:
        return None
    if box_rule == "minmax":
        return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    if box_rule == "raster":  # nonzero() is row-major: first and last kept pixel in raster order
        xf, yf, xl, yl = int(xs[0]), int(ys[0]), int(xs[-1]), int(ys[-1])
        # released cropping_box (train.py 55-92): the corner pixels' coordinates, the far ones exclusive as they are
        return min(xf, xl), yf, max(xf, xl), yl
    raise ValueError(f"box_rule must be 'minmax' or 'raster', got {box_rule!r}")


def cam_boxes(cams: CAMSource, selected: np.ndarray, image_sizes: Sequence[tuple[int, int]], *,
              offset: float = 80, resolution: int = 640, threshold: float = 0.95, box_rule: str = "minmax",
              block: int = 256) -> tuple[list[View], np.ndarray]:
    """Boxes of every selected (image, class): ``cams (N, C, h, w)``, ``selected (N, C)`` -> crop views in image
    pixels and ``(M, 2)`` int array of their ``(image, class)``, image-major.

    The box is found on the ``resolution`` grid (the released code's 640x640 teacher input), grown by ``offset``
    grid pixels on every side, clipped to the grid, then scaled to the image's own pixel size. ``cams`` may be a
    function of image indices (:data:`CAMSource`): it is then called for ``block`` images with a selected class at a
    time, so memory does not grow with ``N``. The two steps are :func:`cam_grid_boxes` and :func:`grow_boxes`.
    """
    grid, owners = cam_grid_boxes(cams, selected, resolution=resolution, threshold=threshold, box_rule=box_rule,
                                  block=block)
    return grow_boxes(grid, owners, image_sizes, offset=offset, resolution=resolution), owners


def cam_grid_boxes(cams: CAMSource, selected: np.ndarray, *, resolution: int = 640, threshold: float = 0.95,
                   box_rule: str = "minmax", block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """:func:`cam_to_box` of every selected (image, class): ``cams (N, C, h, w)`` (or a :data:`CAMSource`
    function), ``selected (N, C)`` -> ``boxes (M, 4)`` int64 ``(x0, y0, x1, y1)`` on the ``resolution`` grid and
    ``owners (M, 2)`` int64 ``(image, class)``, image-major; flat maps give no box."""
    boxes: list[tuple[int, int, int, int]] = []
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
                box = cam_to_box(part[j, c] if part is not None else cams[i, c], resolution=resolution,
                                 threshold=threshold, box_rule=box_rule)
                if box is not None:
                    boxes.append(box)
                    owners.append((int(i), int(c)))
    return (np.asarray(boxes, dtype=np.int64).reshape(-1, 4), np.asarray(owners, dtype=np.int64).reshape(-1, 2))


def grow_boxes(boxes: np.ndarray, owners: np.ndarray, image_sizes: Sequence[tuple[int, int]], *, offset: float = 80,
               resolution: int = 640) -> list[View]:
    """Grid boxes ``(M, 4)`` of :func:`cam_grid_boxes` -> ``M`` crop views in image pixels: each side moved out by
    ``offset`` grid pixels, clipped to the ``resolution`` grid, scaled to image ``owners[m, 0]``'s ``(w, h)``."""
    views: list[View] = []
    for (x0, y0, x1, y1), (i, _) in zip(np.asarray(boxes).tolist(), np.asarray(owners).tolist()):
        x0, y0 = max(0.0, x0 - offset), max(0.0, y0 - offset)
        x1, y1 = min(float(resolution), x1 + offset), min(float(resolution), y1 + offset)
        w, h = image_sizes[i]
        sx, sy = w / resolution, h / resolution
        views.append(View(i, (x0 * sx, y0 * sy, x1 * sx, y1 * sy)))
    return views


def local_pseudo_labels(crop_probs: np.ndarray, crop_images: np.ndarray, n_images: int, bias: np.ndarray, *,
                        ls: float | None = 20) -> tuple[np.ndarray, np.ndarray]:
    """method.md §6.3: ``y_loc = max over the image's crops of p(crop)``, then the LS floor, then ``/ bias`` -- NOT
    clamped (the released code clamps once, after the mix: :func:`mix_labels`).

    ``crop_probs (M, C)``, ``crop_images (M,)`` -> ``y_loc (N, C)`` and ``has_crops (N,)`` bool. The row of an image
    without crops is what the released code computes for it: the max over no crops is 0, so ``floor / bias``
    (``(1/ls) / bias``; 0 without the floor). :func:`mix_labels` decides what to do with such rows.
    """
    c = crop_probs.shape[1] if crop_probs.ndim == 2 else len(bias)
    y = np.zeros((n_images, c))
    has = np.zeros(n_images, bool)
    if len(crop_images):
        np.maximum.at(y, np.asarray(crop_images), np.asarray(crop_probs, dtype=np.float64))
        has[np.asarray(crop_images)] = True
    y = label_smoothing_floor(y, ls=ls) / np.asarray(bias, dtype=np.float64)[None, :]
    return y, has


def mix_labels(y_prev: np.ndarray, y_loc: np.ndarray, has_crops: np.ndarray, *, r: float = 0.2,
               no_crop: str = "floor") -> np.ndarray:
    """method.md §6.4: ``y <- clamp(r * y_prev + (1 - r) * y_loc, 0, 1)``, the only clamp of the update.

    An image with no crop (no selected class, or only flat CAMs): ``no_crop="floor"`` (default, the released code)
    mixes it like the others with its ``y_loc`` row, the floor row ``(1/ls) / bias`` of
    :func:`local_pseudo_labels`; ``no_crop="keep"`` keeps its previous label ``y_prev``.
    ``(N, C), (N, C), (N,) -> (N, C)``.
    """
    if no_crop not in ("floor", "keep"):
        raise ValueError(f"no_crop must be 'floor' or 'keep', got {no_crop!r}")
    mixed = np.clip(r * np.asarray(y_prev, dtype=np.float64) + (1.0 - r) * np.asarray(y_loc, dtype=np.float64), 0.0, 1.0)
    if no_crop == "floor":
        return mixed
    return np.where(np.asarray(has_crops)[:, None], mixed, y_prev)


@dataclass
class LabelUpdateResult:
    labels: np.ndarray        # (N, C) updated pseudo-labels
    local: np.ndarray         # (N, C) local labels, unclamped (the floor row (1/ls)/bias where no crop)
    has_crops: np.ndarray     # (N,) bool
    tau: float
    crops: list[View]         # the crop views scored by the teacher
    crop_owner: np.ndarray    # (M, 2) (image, class) of each crop
    crops_per_image: float
    tau_checks: int = 0       # threshold checks the walk made
    classes_per_image: float = 0.0   # mean number of selected classes (sigmoid >= tau on the CAM pass)
    control: dict = field(default_factory=dict)   # a control's info (``local_views``'s fourth item; e.g. ``k``)


def classifier_guided_label_update(*, y_prev: np.ndarray, student_probs: np.ndarray, cams: CAMSource,
                                   teacher, classifier: torch.Tensor, image_paths: Sequence[str | Path],
                                   image_sizes: Sequence[tuple[int, int]], bias: np.ndarray,
                                   ls: float | None = 20, r: float = 0.2, offset: float = 80,
                                   resolution: int = 640, threshold: float = 0.95, box_rule: str = "minmax",
                                   tau0: float | None = None, bound: float = 4, seed: int = 0,
                                   tau_walk: str = "single_pass", no_crop: str = "floor",
                                   tau_probs: np.ndarray | None = None, tau_checks: int = 50,
                                   batch_size: int | None = None, cache_dir: str | Path | None = None,
                                   progress: bool = True, local_views: Callable[[float], tuple] | None = None
                                   ) -> LabelUpdateResult:
    """method.md §6, end to end. ``y_prev (N, C)`` debiased global labels, ``student_probs (N, C)`` sigmoid outputs,
    ``cams (N, C, h, w)`` or a function of image indices (:data:`CAMSource`, e.g. ``trainer.cams``) ->
    :class:`LabelUpdateResult`. Crops of all images are scored in shared batches. ``tau_probs``: what the threshold
    walk counts on (``(N, C)`` or ``(V, N, C)`` views, :func:`tau_walk`; default ``student_probs``), with
    ``tau_walk`` and ``tau_checks`` its rule; the class selection always reads ``student_probs``.

    Memory: no crop pixels are held beyond one teacher batch (:func:`~ccdlib.scoring.embed_views` streams); what
    grows with ``N`` is the crop list (``M`` views, ~5 per image), the crop embeddings ``(M, D)`` float32 and, when
    ``cams`` is an array, the CAMs ``(N, C, h, w)`` float32 (pass a function to compute them block by block).

    ``local_views``: a control's views instead of the CAM crops of the ``tau``-selected classes (issue 22 §1,
    :func:`ccdlib.view_controls.control_views`): called with ``tau``, it returns ``(views, owners (M, 2), keep (M,),
    info)``; the teacher scores ``views`` and the pooling reads the ``keep`` rows. Everything else is unchanged.
    """
    from .scoring import embed_views

    if tau0 is None:
        tau0 = 0.05 if ls else 0.001
    tau, made = _tau_walk(student_probs if tau_probs is None else tau_probs, tau0=tau0, bound=bound, seed=seed,
                          walk=tau_walk, checks=tau_checks)
    n, c = y_prev.shape
    if local_views is None:
        selected = select_classes(student_probs, tau)
        crops, owner = cam_boxes(cams, selected, image_sizes, offset=offset, resolution=resolution,
                                 threshold=threshold, box_rule=box_rule)
        keep = np.ones(len(crops), bool)
        per_image = float(selected.sum(1).mean()) if n else 0.0
        info: dict = {}
    else:
        crops, owner, keep, info = local_views(tau)
        per_image = float(info.get("classes_per_image", float("nan")))
    if crops:
        emb = embed_views(teacher, image_paths, crops, batch_size=batch_size, cache_dir=cache_dir,
                          progress=progress, desc="CAM crops" if local_views is None else "control views")
        crop_probs = teacher.predict(emb, classifier).numpy()
    else:
        crop_probs = np.zeros((0, c))
    if not keep.all():       # a control that scored a superset (every class's CAM crop): its selected rows
        crops, owner, crop_probs = [v for v, k in zip(crops, keep) if k], owner[keep], crop_probs[keep]
    y_loc, has = local_pseudo_labels(crop_probs, owner[:, 0], n, bias, ls=ls)
    labels = mix_labels(y_prev, y_loc, has, r=r, no_crop=no_crop)
    return LabelUpdateResult(labels=labels, local=y_loc, has_crops=has, tau=tau, crops=crops, crop_owner=owner,
                             crops_per_image=len(crops) / max(n, 1), tau_checks=made, classes_per_image=per_image,
                             control=dict(info))
