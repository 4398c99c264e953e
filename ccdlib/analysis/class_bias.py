"""Fig. 2, class bias: which classes the teacher's global view favours, and what debiasing does to it."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..metrics import evaluate
from ..pseudolabels import CCDInitialLabels, ccd_initial_pseudo_labels, class_bias, debias, label_smoothing_floor


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
