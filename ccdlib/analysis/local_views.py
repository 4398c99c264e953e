"""Fig. 3, local views: pseudo-labels from object, random-box and grid views, and students trained on each label
set at the common budget (cached on disk)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import pandas as pd

from ..context import Context, global_probabilities, grid_probabilities, pseudo_label_quality, view_probabilities
from ..metrics import evaluate
from ..student import alpha_for
from ..trainer import StudentTrainer
from ..views import View, clip_box, grid_views
from .view_dependency import max_over_tiles, object_views


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
    from ..cache import ArrayCache, image_fingerprints
    from ..config import config_to_dict
    from ..features import trunk_fingerprint
    from ..schedule import training_schedule
    if epochs is None:
        epochs = training_schedule(replace(ctx.cfg, method="supervised"), len(ctx.train)).passes
    epochs = int(epochs)
    student_cfg = replace(ctx.cfg.student, seed=ctx.cfg.seed)
    trainer = StudentTrainer(student_cfg, ctx.train.image_paths, ctx.train.num_classes, cache_dir=ctx.cache_dir,
                             progress=False)
    y = np.clip(np.asarray(labels, dtype=np.float64), 0.0, 1.0)
    fp_train, fp_test = image_fingerprints(ctx.train.image_paths), image_fingerprints(ctx.test.image_paths)
    key = {"format": 1, "student": config_to_dict(student_cfg), "trunk": trunk_fingerprint(trainer.student),
           "labels": y, "epochs": epochs, "consistency": bool(consistency),
           "train": [fp_train(i) for i in range(len(ctx.train))], "test": [fp_test(i) for i in range(len(ctx.test))]}
    cache = ArrayCache(ctx.cache_dir, "label_students")
    c = ctx.test.num_classes   # the padding is NaN by design: only the test scores must be finite
    cached = cache.get(key, shape=(len(ctx.test) + 1, max(c, epochs)), dtype=np.float64,
                       check=lambda a: None if np.isfinite(a[:-1, :c]).all() else "non-finite test scores")
    if cached is not None:
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
