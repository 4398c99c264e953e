"""The analyses behind the figure notebooks (method.md §9): the computations that Fig. 1-3 and the qualitative
figure need beyond the method itself. Notebooks call these and plot; nothing here draws.

- Fig. 1, view dependency: :func:`max_over_tiles`, :func:`view_dependency_summary`,
  :func:`example_view_probabilities`, :func:`object_views`, :func:`top1_rates`.
- Fig. 2, class bias: :func:`top1_statistics`, :func:`biased_examples`, :func:`debiasing_effect`.
- Fig. 3, local views: :func:`object_views`, :func:`random_box_views`, :func:`max_over_views`,
  :func:`local_view_label_sets`, :func:`train_student_on_labels`, :func:`compare_label_sets`.
- Qualitative (notebook 07): :func:`ccd_warmup`, :func:`explain_label_update`, :func:`example_updates_table`,
  :func:`cam_heatmap`, :func:`box_to_image`.
- CAM crops vs tiles (notebook 06): :func:`box_iou`, :func:`crop_hits`, :func:`crop_summary`,
  :func:`crop_diagnostics`.

Shapes: ``N`` images, ``C`` classes, ``K`` tiles per image, ``M`` views (crops) over all images. Probabilities
are the teacher's (method.md §2) unless said otherwise; percentages are x100.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .label_update import (calibrate_class_threshold, cam_boxes, cam_grid_boxes, cam_to_box, grow_boxes,
                           local_pseudo_labels, mix_labels, select_classes)
from .metrics import evaluate, mean_average_precision
from .pseudolabels import CCDInitialLabels, ccd_initial_pseudo_labels, class_bias, debias, label_smoothing_floor
from .runs import Context, alpha_for, global_probabilities, grid_probabilities, pseudo_label_quality, \
    view_probabilities
from .trainer import StudentTrainer
from .views import Box, View, clip_box, expand_box, grid_views

__all__ = [
    "VIEW_NAMES", "max_over_tiles", "gt_mean_probability", "view_dependency_summary",
    "example_view_probabilities", "object_views", "top1_rates", "top1_statistics", "biased_examples",
    "debiasing_effect", "random_box_views", "max_over_views", "LabelSet", "LOCAL_VIEW_KINDS", "local_view_label_sets",
    "train_student_on_labels", "compare_label_sets", "WarmupState", "ccd_warmup", "ExampleUpdate",
    "explain_label_update", "example_updates_table", "cam_heatmap", "box_to_image",
    "box_iou", "crop_hits", "crop_summary", "crop_diagnostics",
]


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


# ============================================================================================ Fig. 2
def top1_statistics(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str], *,
                    confident: np.ndarray | None = None) -> pd.DataFrame:
    """Per-class top-1 statistics of the teacher's global prediction (method.md §4.3, Fig. 2).

    Args:
        probs: ``(N, C)`` teacher probabilities of the whole images.
        labels: ``(N, C)`` ground truth.
        confident: ``(N,)`` bool, the images the class bias is estimated on (default all).

    Returns:
        One row per class: ``class``; ``n_images`` (images containing it); ``n_top1`` (confident images whose
        top-1 is the class); ``n_top1_correct`` (of those, images that contain it); ``mean_top1_prob`` (CCD's
        bias estimate, x100, NaN when never top-1); ``never_top1`` (bool); ``mean_prob`` (mean probability over
        all images, x100: the teacher's prior); ``gt_share`` and ``top1_share`` (% of images that contain the
        class / of confident images that predict it as top-1; their ratio ``top1_over_gt`` shows the skew).
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    n, c = p.shape
    conf = np.ones(n, bool) if confident is None else np.asarray(confident, bool)
    bias, _ = class_bias(p, conf, fallback="nan")
    top = p.argmax(1)
    n_top1 = np.bincount(top[conf], minlength=c)
    correct = np.bincount(top[conf & y[np.arange(n), top]], minlength=c)
    n_img = y.sum(0)
    gt_share = 100 * n_img / n
    top1_share = 100 * n_top1 / max(int(conf.sum()), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(n_img > 0, top1_share / np.where(gt_share > 0, gt_share, 1), np.nan)
    return pd.DataFrame({"class": list(class_names), "n_images": n_img.astype(int), "n_top1": n_top1.astype(int),
                         "n_top1_correct": correct.astype(int), "mean_top1_prob": 100 * bias,
                         "never_top1": n_top1 == 0, "mean_prob": 100 * p.mean(0), "gt_share": gt_share,
                         "top1_share": top1_share, "top1_over_gt": ratio})


def biased_examples(probs: np.ndarray, labels: np.ndarray, k: int = 4) -> np.ndarray:
    """Up to ``k`` images whose top-1 class is absent from the ground truth, most confident first:
    ``(N, C), (N, C) -> (<=k,)`` int indices (ties: lower index first)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    top = p.argmax(1)
    wrong = np.flatnonzero(~y[np.arange(len(p)), top])
    order = np.argsort(-p[wrong, top[wrong]], kind="stable")
    return wrong[order][:k]


def debiasing_effect(p_global: np.ndarray, labels: np.ndarray, class_names: Sequence[str], *, h_max: float = 2.0,
                     ls: float | None = 20, fallback: str = "mean") -> tuple[pd.DataFrame, CCDInitialLabels]:
    """Pseudo-label quality (train split) of the global labels before and after CCD's debiasing (method.md §4).

    Stages: the raw probabilities ``p``; ``p / bias`` (debiasing alone, no floor); ``max(p, 1/ls)`` (the LS floor
    alone); ``clamp(max(p, 1/ls) / bias, 0, 1)`` (CCD's ``y0``). Dividing a class's scores by a positive constant
    does not reorder them, so the class's AP -- and mAP -- is unchanged except through the floor and the clamp
    (ties); threshold metrics (CF1/OF1 at 0.5) do move. ``p_global (N, C)``, ``labels (N, C)``.

    Returns:
        A DataFrame (``stage``, ``mAP``, ``CF1``, ``OF1``, ``CF1_top3``, ``OF1_top3``, ``positives_per_image``
        = mean number of labels ``>= 0.5``) and the :class:`~ccdlib.pseudolabels.CCDInitialLabels`.
    """
    init = ccd_initial_pseudo_labels(p_global, h_max=h_max, ls=ls, debiasing=True, fallback=fallback,
                                     class_names=list(class_names))
    p = np.asarray(p_global, dtype=np.float64)
    stages = {"teacher p (global)": p,
              "p / bias (no floor)": debias(p, init.bias),
              f"LS floor max(p, 1/{ls:g})" if ls else "LS floor (off)": label_smoothing_floor(p, ls=ls),
              "CCD y0 = clamp(floor / bias)": init.labels}
    rows = []
    for stage, s in stages.items():
        m = evaluate(s, np.asarray(labels), class_names=list(class_names))
        rows.append({"stage": stage, **{k: m[k] for k in ("mAP", "CF1", "OF1", "CF1_top3", "OF1_top3")},
                     "positives_per_image": float((s >= 0.5).sum(1).mean())})
    return pd.DataFrame(rows), init


# ============================================================================================ Fig. 3
def random_box_views(boxes: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]], *, seed: int = 0
                     ) -> list[View]:
    """Random boxes with the ground truth's count and sizes: for every GT box of an image, a box of the same width
    and height at a uniformly random position inside the image (seeded). ``boxes``: per image ``(K_i, 5)``
    ``[class, x0, y0, x1, y1]``; ``sizes``: per image ``(width, height)``. Returns ``sum K_i`` views."""
    rng = np.random.default_rng(seed)
    views: list[View] = []
    for i, (b, (w, h)) in enumerate(zip(boxes, sizes)):
        for row in np.asarray(b, dtype=np.float64).reshape(-1, 5):
            bw, bh = min(row[3] - row[1], w), min(row[4] - row[2], h)
            x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            views.append(View(i, clip_box((x0, y0, x0 + bw, y0 + bh), w, h)))
    return views


def max_over_views(view_probs: np.ndarray, view_images: np.ndarray, n_images: int, *,
                   fill: np.ndarray | None = None) -> np.ndarray:
    """Class-wise max over each image's views: ``(M, C), (M,) -> (N, C)``. Images without a view get their row
    of ``fill`` (``(N, C)``, e.g. the global probabilities) or zeros."""
    vp = np.asarray(view_probs, dtype=np.float64)
    c = vp.shape[1] if vp.ndim == 2 and vp.size else (np.asarray(fill).shape[1] if fill is not None else 0)
    out = np.full((n_images, c), -np.inf)
    imgs = np.asarray(view_images, dtype=np.int64).reshape(-1)
    if len(imgs):
        np.maximum.at(out, imgs, vp)
    empty = np.isinf(out[:, 0]) if c else np.ones(n_images, bool)
    out[empty] = 0.0 if fill is None else np.asarray(fill, dtype=np.float64)[empty]
    return out


@dataclass
class LabelSet:
    """Pseudo-labels built from one kind of view: a display ``name``, ``labels (N, C)``, the teacher views scored
    per image on average (``views_per_image``; 0 for labels that need none) and the local ``views`` themselves."""

    name: str
    labels: np.ndarray
    views_per_image: float = 0.0
    views: list[View] = field(default_factory=list)


#: Fig. 3's local-view kinds, in the paper's order.
LOCAL_VIEW_KINDS = ("around_gt", "gt", "random", "grid")


def local_view_label_sets(ctx: Context, split: str = "train", *, seed: int = 0, around_fraction: float = 0.2,
                          grid: int = 2, with_global: bool = True, with_ground_truth: bool = True
                          ) -> dict[str, LabelSet]:
    """Fig. 3's pseudo-labels: class-wise max over an image's local views of the teacher's probabilities.

    Label sets (keys): ``"global"`` (the whole image, for comparison), ``"around_gt"`` ((a) the GT boxes grown by
    ``around_fraction`` each side), ``"gt"`` ((b) the GT boxes), ``"random"`` ((c) random boxes with the GT boxes'
    count and sizes, :func:`random_box_views` with ``seed``), ``"grid"`` ((d) the ``grid x grid`` tiles) and
    ``"ground_truth"`` (the labels themselves: the student's upper bound). Needs a split with boxes.
    """
    ds = ctx.split(split)
    if ds.boxes is None:
        raise ValueError(f"split {split!r} of {ds.name} has no boxes: Fig. 3 needs ground-truth boxes")
    sizes = ctx.image_sizes(split)
    n = len(ds)
    p_global = global_probabilities(ctx, split)
    out: dict[str, LabelSet] = {}
    if with_global:
        out["global"] = LabelSet("global (whole image)", p_global, 1.0)
    specs = {"around_gt": (f"(a) around GT boxes (+{around_fraction:.0%})",
                           object_views(ds.boxes, sizes, fraction=around_fraction)[0]),
             "gt": ("(b) GT boxes", object_views(ds.boxes, sizes)[0]),
             "random": ("(c) random boxes", random_box_views(ds.boxes, sizes, seed=seed))}
    for key, (name, views) in specs.items():
        probs = view_probabilities(ctx, split, views, desc=f"{key} views ({split})")
        labels = max_over_views(probs, np.array([v.image for v in views]), n, fill=p_global)
        out[key] = LabelSet(name, labels, len(views) / n, views)
    tiles = grid_probabilities(ctx, split, grid)
    out["grid"] = LabelSet(f"(d) {grid}x{grid} grid", max_over_tiles(tiles), float(grid * grid), grid_views(sizes, grid))
    if with_ground_truth:
        out["ground_truth"] = LabelSet("ground truth (upper bound)", ds.labels.astype(np.float64))
    return out


def train_student_on_labels(ctx: Context, labels: np.ndarray, epochs: int | None = None, *,
                            consistency: bool = False) -> dict:
    """Train a fresh student (``ctx.cfg.student``, seed ``ctx.cfg.seed``) on ``labels (N_train, C)`` for ``epochs``
    passes (default: the run's step budget, :func:`ccdlib.schedule.training_schedule`; alpha from
    ``student.alpha_schedule``) and evaluate its last pass on the test split (the ``last`` selection rule: no
    ground truth is read to pick the epoch).

    Cached on disk under ``ctx.cache_dir`` (namespace ``label_students``), keyed by the student config and seed,
    the trunk's weights, the labels, ``epochs``, ``consistency`` and the training and test image files: a rerun
    (a warm ``make reproduce`` of notebook 03) reads the test scores and losses back instead of training.

    Returns ``{"test": evaluate(...) of the test sigmoid outputs, "losses": per-epoch mean training loss,
    "test_scores": the (N_test, C) test sigmoid outputs}``.
    """
    import hashlib

    from .cache import ArrayCache, image_fingerprints
    from .config import config_to_dict
    from .features import trunk_fingerprint
    from .schedule import training_schedule
    if epochs is None:
        epochs = training_schedule(replace(ctx.cfg, method="supervised"), len(ctx.train)).passes
    epochs = int(epochs)
    student_cfg = replace(ctx.cfg.student, seed=ctx.cfg.seed)
    trainer = StudentTrainer(student_cfg, ctx.train.image_paths, ctx.train.num_classes, cache_dir=ctx.cache_dir,
                             progress=False)
    y = np.clip(np.asarray(labels, dtype=np.float64), 0.0, 1.0)
    fp_train, fp_test = image_fingerprints(ctx.train.image_paths), image_fingerprints(ctx.test.image_paths)
    key = {"format": 1, "student": config_to_dict(student_cfg), "trunk": trunk_fingerprint(trainer.student),
           "labels": hashlib.sha256(np.ascontiguousarray(y).tobytes()).hexdigest(), "shape": list(y.shape), "epochs": epochs,
           "consistency": bool(consistency), "train": [fp_train(i) for i in range(len(ctx.train))],
           "test": [fp_test(i) for i in range(len(ctx.test))]}
    cache = ArrayCache(ctx.cache_dir, "label_students")
    cached = cache.get(key)
    if cached is not None and cached.shape == (len(ctx.test) + 1, max(ctx.test.num_classes, epochs)):
        test_prob = cached[:-1, :ctx.test.num_classes].astype(np.float32)      # as computed (float32 logits)
        losses = [float(v) for v in cached[-1, :epochs]]
    else:
        losses = [trainer.fit_epoch(y, alpha=alpha_for(e, ctx.cfg.student.coeff, ctx.cfg.student.alpha_schedule),
                                    consistency=consistency)["loss"]
                  for e in range(epochs)]
        test_prob = 1.0 / (1.0 + np.exp(-trainer.predict_logits(ctx.test.image_paths)))
        packed = np.full((len(ctx.test) + 1, max(ctx.test.num_classes, epochs)), np.nan)
        packed[:-1, :ctx.test.num_classes] = test_prob
        packed[-1, :epochs] = losses
        cache.put(key, packed)
    return {"test": evaluate(test_prob, ctx.test.labels, class_names=list(ctx.test.class_ids)), "losses": losses,
            "test_scores": test_prob}


def compare_label_sets(ctx: Context, label_sets: dict[str, LabelSet], *, epochs: int | None = None,
                       split: str = "train") -> pd.DataFrame:
    """Fig. 3's table: for each label set, the pseudo-labels' quality against the ``split``'s ground truth (mAP,
    CF1, OF1) and the test metrics of a student trained on them (:func:`train_student_on_labels`).

    Columns: ``key``, ``labels`` (display name), ``views_per_image``, ``pseudo_mAP``, ``pseudo_CF1``, ``pseudo_OF1``,
    ``student_mAP``, ``student_CF1``, ``student_OF1``.
    """
    ds = ctx.split(split)
    rows = []
    for key, ls in label_sets.items():
        q = pseudo_label_quality(ls.labels, ds)
        st = train_student_on_labels(ctx, ls.labels, epochs)["test"]
        rows.append({"key": key, "labels": ls.name, "views_per_image": float(ls.views_per_image),
                     "pseudo_mAP": q["mAP"], "pseudo_CF1": q["CF1"], "pseudo_OF1": q["OF1"],
                     "student_mAP": st["mAP"], "student_CF1": st["CF1"], "student_OF1": st["OF1"]})
    return pd.DataFrame(rows)


# ============================================================================================ qualitative
@dataclass
class WarmupState:
    """CCD after its warm-up epochs (method.md §4-§6.1), before the label update: what notebook 07 looks at."""

    ctx: Context
    trainer: StudentTrainer
    p_global: np.ndarray          # (N, C) teacher probabilities of the whole training images
    init: CCDInitialLabels        # debiased initial labels y0 and the class bias
    student_probs: np.ndarray     # (N, C) sigmoid outputs after the warm-up
    tau: float                    # the class-selection threshold (method.md §6.1)
    selected: np.ndarray          # (N, C) bool: classes whose CAM gives a crop


def ccd_warmup(ctx: Context, *, epochs: int | None = None) -> WarmupState:
    """Run CCD's first steps on ``ctx``'s training split as :func:`ccdlib.runs.run_ccd` does: global teacher
    prediction, debiased initial labels, ``epochs`` warm-up passes (default: the schedule's, ``ccd.warmup_steps``)
    of a fresh student, then the class-selection threshold as the run computes it (``ccd.tau_input``,
    ``ccd.tau_walk``, ``ccd.tau_checks``). Returns a :class:`WarmupState`."""
    from .label_update import tau_walk
    from .runs import train_view_probabilities
    from .schedule import training_schedule
    c = ctx.cfg.ccd
    if epochs is None:
        epochs = training_schedule(replace(ctx.cfg, method="ccd"), len(ctx.train)).warmup_passes
    epochs = int(epochs)
    p_global = global_probabilities(ctx, "train")
    init = ccd_initial_pseudo_labels(p_global, h_max=c.h_max, ls=c.ls or None, debiasing=c.debiasing,
                                     fallback=c.bias_fallback, class_names=list(ctx.train.class_ids))
    trainer = StudentTrainer(replace(ctx.cfg.student, seed=ctx.cfg.seed), ctx.train.image_paths,
                             ctx.train.num_classes, cache_dir=ctx.cache_dir, progress=False)
    for epoch in range(epochs):
        trainer.fit_epoch(init.labels, alpha=alpha_for(epoch, ctx.cfg.student.coeff, ctx.cfg.student.alpha_schedule),
                          consistency=False)
    probs = 1.0 / (1.0 + np.exp(-trainer.predict_logits(image_size=c.cam_image_size or None)))
    tau_probs = train_view_probabilities(trainer) if c.tau_input == "train_views" else probs
    tau, _ = tau_walk(tau_probs, tau0=0.05 if c.ls else 0.001, bound=c.bound, seed=ctx.cfg.seed, walk=c.tau_walk,
                      checks=c.tau_checks)
    return WarmupState(ctx=ctx, trainer=trainer, p_global=p_global, init=init, student_probs=probs, tau=tau,
                       selected=select_classes(probs, tau))


def box_to_image(box: tuple[float, float, float, float], resolution: int, size: tuple[int, int]) -> Box:
    """A box on the ``resolution x resolution`` CAM grid -> image pixels of an image of ``size = (w, h)``."""
    w, h = size
    sx, sy = w / resolution, h / resolution
    return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


@dataclass
class ExampleUpdate:
    """The label update of one training image, step by step (method.md §6.2-§6.4).

    ``classes`` are the selected classes (``S`` of them); per selected class its CAM (``cams (S, h, w)``,
    alpha-scaled with ``ccd.cam_alpha``), the
    box of the CAM's top pixels in image pixels under both rules (``boxes_minmax``/``boxes_raster``, ``None`` for a
    flat CAM) and the crop the teacher scores (``crops``: the configured rule's box grown by ``offset``, ``None``
    when there is no box) with its probabilities ``crop_probs (S, C)`` (NaN rows without crop). Labels ``(C,)``:
    ``p_global`` (teacher, whole image), ``y_prev`` (debiased y0), ``y_local`` (max over crops, floored, debiased)
    and ``y_updated`` (the mix; with ``ccd.no_crop: keep``, ``y_prev`` when the image has no crop).
    """

    index: int
    classes: list[int]
    student_probs: np.ndarray
    cams: np.ndarray
    boxes_minmax: list[Box | None]
    boxes_raster: list[Box | None]
    crops: list[Box | None]
    crop_probs: np.ndarray
    p_global: np.ndarray
    y_prev: np.ndarray
    y_local: np.ndarray
    y_updated: np.ndarray


def explain_label_update(state: WarmupState, indices: Sequence[int]) -> list[ExampleUpdate]:
    """CCD's classifier-guided label update (method.md §6.2-§6.4, the config's ``ccd`` options) for a few training
    images, keeping every intermediate (CAMs, both box rules, crops, crop scores, labels) for display. The
    teacher scores only these images' crops (cached), so it is cheap."""
    ctx, c = state.ctx, state.ctx.cfg.ccd
    idx = [int(i) for i in indices]
    sizes = [ctx.image_sizes("train")[i] for i in idx]
    cams = state.trainer.cams(indices=idx, alpha=state.trainer.alpha if c.cam_alpha else None,
                              image_size=c.cam_image_size or None)   # (k, C, h, w), as run_ccd uses
    sel = state.selected[idx]
    crops, owner = cam_boxes(cams, sel, sizes, offset=c.offset, resolution=c.resolution,
                             threshold=c.cam_threshold, box_rule=c.box_rule)
    crops_global = [View(idx[v.image], v.box) for v in crops]
    n_classes = ctx.train.num_classes
    crop_probs = (view_probabilities(ctx, "train", crops_global, desc="CAM crops (examples)") if crops
                  else np.zeros((0, n_classes)))
    y_loc, has = local_pseudo_labels(crop_probs, owner[:, 0], len(idx), state.init.bias, ls=c.ls or None)
    y_prev = state.init.labels[idx]
    y_new = mix_labels(y_prev, y_loc, has, r=c.r, no_crop=c.no_crop)
    out = []
    for k, i in enumerate(idx):
        classes = [int(x) for x in np.flatnonzero(sel[k])]
        boxes = {rule: [cam_to_box(cams[k, cl], resolution=c.resolution, threshold=c.cam_threshold, box_rule=rule)
                        for cl in classes] for rule in ("minmax", "raster")}
        to_img = {rule: [None if b is None else box_to_image(b, c.resolution, sizes[k]) for b in bs]
                  for rule, bs in boxes.items()}
        crop_of: list[Box | None] = []
        probs = np.full((len(classes), n_classes), np.nan)
        for s, cl in enumerate(classes):
            m = np.flatnonzero((owner[:, 0] == k) & (owner[:, 1] == cl)) if len(owner) else []
            crop_of.append(crops[m[0]].box if len(m) else None)
            if len(m):
                probs[s] = crop_probs[m[0]]
        out.append(ExampleUpdate(index=i, classes=classes, student_probs=state.student_probs[i],
                                 cams=cams[k, classes], boxes_minmax=to_img["minmax"], boxes_raster=to_img["raster"],
                                 crops=crop_of, crop_probs=probs, p_global=state.p_global[i], y_prev=y_prev[k],
                                 y_local=y_loc[k], y_updated=y_new[k]))
    return out


def cam_heatmap(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A CAM for display: upsampled bilinearly to the image's ``size = (w, h)`` and min-max normalised to [0, 1]
    (as method.md §6.2 does before thresholding). ``(h', w') -> (h, w)``; a flat map gives zeros."""
    w, h = size
    m = torch.as_tensor(np.asarray(cam), dtype=torch.float32)[None, None]
    up = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
    lo, hi = float(up.min()), float(up.max())
    return np.zeros_like(up) if hi - lo <= 0 else (up - lo) / (hi - lo)


def example_updates_table(examples: Sequence[ExampleUpdate], labels: np.ndarray, class_names: Sequence[str],
                          image_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per (example image, class that is in its ground truth or selected): ``image``, ``class``, ``in_gt``,
    ``selected``, ``student_prob``, ``p_global``, ``y_prev``, ``y_local``, ``y_updated`` (x100). ``labels (N, C)``
    is the training split's ground truth."""
    rows = []
    for e in examples:
        y = np.asarray(labels)[e.index].astype(bool)
        for c in sorted(set(np.flatnonzero(y).tolist()) | set(e.classes)):
            rows.append({"image": image_ids[e.index] if image_ids is not None else e.index, "class": class_names[c],
                         "in_gt": bool(y[c]), "selected": c in e.classes,
                         "student_prob": 100 * float(e.student_probs[c]), "p_global": 100 * float(e.p_global[c]),
                         "y_prev": 100 * float(e.y_prev[c]), "y_local": 100 * float(e.y_local[c]),
                         "y_updated": 100 * float(e.y_updated[c])})
    return pd.DataFrame(rows)


# ============================================================================================ CAM crops vs tiles
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


def crop_diagnostics(state: WarmupState, *, offsets: Sequence[float] = (0.0, 80.0, 160.0), grid: int = 3,
                     iou: float = 0.5) -> pd.DataFrame:
    """Where CCD's CAM crops land, and what limits them, on the training split (no teacher call: boxes only).

    From the student's CAMs at the update epoch (``state``, :func:`ccd_warmup`), one row per (class selection,
    offset): ``selection`` = ``"tau"`` (the calibrated threshold, what CCD does) or ``"ground truth"`` (the image's
    true classes: isolates the CAMs' localisation from the class selection), ``offset`` in pixels of the
    ``resolution`` grid; plus one row for the ``grid x grid`` tiles CDUL scores. Columns: :func:`crop_summary`'s,
    ``selection``, ``offset``, ``tau``. The config's own offset and box rule are used for the rest.
    """
    ctx, c = state.ctx, state.ctx.cfg.ccd
    ds = ctx.train
    sizes = ctx.image_sizes("train")
    cams = state.trainer.cams(indices=np.arange(len(ds)))
    selections = (("tau", np.asarray(state.selected, bool)), ("ground truth", ds.labels.astype(bool)))
    # every (image, class) either selection needs, boxed once on the grid; each offset only grows the boxes
    boxes, found = cam_grid_boxes(cams, selections[0][1] | selections[1][1], resolution=c.resolution,
                                  threshold=c.cam_threshold, box_rule=c.box_rule)
    rows = []
    for name, selected in selections:
        keep = selected[found[:, 0], found[:, 1]]
        owners = found[keep]
        for off in offsets:
            views = grow_boxes(boxes[keep], owners, sizes, offset=off, resolution=c.resolution)
            rows.append({"views": "CAM crops", "selection": name, "offset": float(off),
                         "tau": state.tau if name == "tau" else float("nan"),
                         **crop_summary(views, owners, ds.boxes, iou=iou)})
    tiles = grid_views(sizes, grid)
    owners = np.stack([np.asarray([v.image for v in tiles]), -np.ones(len(tiles), dtype=np.int64)], axis=1)
    summary = crop_summary(tiles, owners, ds.boxes, iou=iou)
    summary.update(class_precision=float("nan"), on_own_object=float("nan"), mean_iou_own=float("nan"))
    rows.append({"views": f"{grid}x{grid} tiles", "selection": "-", "offset": float("nan"), "tau": float("nan"),
                 **summary})
    return pd.DataFrame(rows)
