"""Multi-label evaluation metrics (method.md §8): mAP, and CP/CR/CF1/OP/OR/OF1 at a threshold and at top-k.

Conventions used throughout this module
---------------------------------------
* ``scores`` is a float array of shape ``(N, C)`` (N images, C classes). For the threshold metrics the
  scores are *probabilities*: the caller applies the sigmoid. Average precision only uses the ranking,
  so logits and probabilities give the same AP.
* ``labels`` has the same shape ``(N, C)`` and holds only 0 and 1 (bool, int or float dtype). Encodings
  with -1 (VOC "difficult" in some code bases) are rejected: turn them into an ``ignore`` mask or into
  0/1 first, so that the difficult-object policy is a decision made (and documented) by the caller.
* Every returned percentage is multiplied by 100.

mAP
---
Per-class average precision is scikit-learn's :func:`sklearn.metrics.average_precision_score` (the
step-wise area under the precision-recall curve, no interpolation). A class with no positive in the
split has undefined AP: :func:`mean_average_precision` leaves it out of the mean and counts it
(``MAPResult.excluded`` / ``n_excluded``). The released CCD/CDUL code instead scores such a class 0
and divides by all C classes; :func:`released_code_map` reproduces that so both numbers can be
reported side by side.

The optional ``ignore`` mask (shape ``(N, C)``, bool or 0/1) removes single entries from the AP of
their class only: ``ignore[i, c]`` true means image ``i`` is neither a positive nor a negative for class
``c`` (the VOC "difficult" convention). It is exactly the same as dropping row ``i`` when computing the
AP of class ``c``. The mask affects AP only; the threshold and top-k metrics use ``labels`` as given.

Threshold and top-k metrics
---------------------------
With ``pred`` the binary prediction matrix, and per class ``c``
``TP_c = sum_i pred[i,c] * labels[i,c]``, ``NP_c = sum_i pred[i,c]`` (predicted positives),
``NG_c = sum_i labels[i,c]`` (ground-truth positives)::

    P_c = TP_c / NP_c            R_c = TP_c / NG_c            (0/0 := 0)
    CP  = mean_c P_c             CR  = mean_c R_c             CF1 = 2 CP CR / (CP + CR)
    OP  = sum TP_c / sum NP_c    OR  = sum TP_c / sum NG_c    OF1 = 2 OP OR / (OP + OR)

as in ML-GCN (Chen et al., CVPR 2019) and ASL (Ridnik et al., ICCV 2021). Every 0/0 (a class never
predicted, a class without positives, nothing predicted at all, P = R = 0) is defined as 0; the class
means run over *all* C classes (a class without positives therefore contributes R_c = 0, like
scikit-learn's ``recall_score(average="macro", zero_division=0)``). Note CF1 is the F1 of the mean
precision and mean recall, *not* the mean of the per-class F1s (``f1_score(average="macro")``).

* Threshold: ``pred[i, c] = scores[i, c] >= threshold`` (a score equal to the threshold is positive).
* Top-k: ``pred[i, c] = 1`` for the k highest-scoring classes of image ``i``. Ranking uses
  ``np.argsort(-scores, axis=1, kind="stable")``, so among equal scores the class with the lower index
  wins. Exactly k classes are predicted per image, whatever their scores.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from sklearn.metrics import average_precision_score

__all__ = [
    "MAPResult",
    "average_precision_per_class",
    "mean_average_precision",
    "released_code_map",
    "threshold_metrics",
    "topk_predictions",
    "topk_metrics",
    "evaluate",
]

_METRIC_KEYS = ("CP", "CR", "CF1", "OP", "OR", "OF1")


# --------------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------------
def _check_inputs(
    scores: np.ndarray, labels: np.ndarray, ignore: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate and convert ``scores`` (N,C) float64, ``labels`` (N,C) int8 and ``ignore`` (N,C) bool.

    Raises:
        ValueError: shapes differ (both shapes are named), arrays are not 2-D or empty, ``labels`` or
            ``ignore`` holds values other than 0/1, ``scores`` holds NaN or +-inf.
    """
    try:
        s = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"scores must be a numeric array: {e}") from None
    try:
        y = np.asarray(labels)
    except (TypeError, ValueError) as e:  # pragma: no cover - ragged input
        raise ValueError(f"labels must be a numeric array: {e}") from None
    if s.shape != y.shape:
        raise ValueError(f"scores and labels must have the same shape: scores {s.shape}, labels {y.shape}")
    if s.ndim != 2:
        raise ValueError(f"scores and labels must be 2-D (N images, C classes); got shape {s.shape}")
    if s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"scores and labels must be non-empty; got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        n_nan = int(np.isnan(s).sum())
        n_inf = int(np.isinf(s).sum())
        raise ValueError(f"scores must be finite: {n_nan} NaN and {n_inf} infinite value(s)")
    if y.dtype == np.bool_:
        y = y.astype(np.int8)
    elif not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise ValueError(f"labels must be a numeric or bool array of 0/1; got dtype {y.dtype}")
    else:
        bad = (y != 0) & (y != 1)  # also catches NaN
        if bad.any():
            vals = np.unique(y[bad])[:5].tolist()
            raise ValueError(f"labels must contain only 0 and 1; found other values, e.g. {vals}")
        y = y.astype(np.int8)
    ig: np.ndarray | None = None
    if ignore is not None:
        m = np.asarray(ignore)
        if m.shape != s.shape:
            raise ValueError(f"ignore must have the shape of scores: ignore {m.shape}, scores {s.shape}")
        if m.dtype != np.bool_:
            if not (np.issubdtype(m.dtype, np.integer) or np.issubdtype(m.dtype, np.floating)):
                raise ValueError(f"ignore must be a bool or 0/1 array; got dtype {m.dtype}")
            if ((m != 0) & (m != 1)).any():
                raise ValueError("ignore must contain only 0/1 (or bool) values")
        ig = m.astype(bool)
    return s, y, ig


def _class_names(class_names: Sequence[str] | None, n_classes: int) -> list[str]:
    if class_names is None:
        return [str(c) for c in range(n_classes)]
    names = [str(n) for n in class_names]
    if len(names) != n_classes:
        raise ValueError(f"class_names has {len(names)} entries but scores has {n_classes} classes")
    return names


def _div(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    """Element-wise ``num / den`` with ``0/0 := 0`` (and any x/0 := 0)."""
    num_a = np.asarray(num, dtype=np.float64)
    den_a = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num_a, den_a).shape, dtype=np.float64)
    np.divide(num_a, den_a, out=out, where=den_a != 0)
    return out


# --------------------------------------------------------------------------------------------------
# mAP
# --------------------------------------------------------------------------------------------------
def average_precision_per_class(
    scores: np.ndarray, labels: np.ndarray, *, ignore: np.ndarray | None = None
) -> np.ndarray:
    """Average precision of every class (fraction in [0, 1], not x100).

    Args:
        scores: (N, C) float, any monotone score (logits or probabilities).
        labels: (N, C) {0, 1}.
        ignore: optional (N, C) bool / {0, 1}; ``ignore[i, c]`` removes image ``i`` from class ``c``'s
            AP (equivalent to dropping that row for that class only).

    Returns:
        (C,) float64: ``sklearn.metrics.average_precision_score`` per class; NaN for a class with no
        positive among its non-ignored entries.
    """
    s, y, ig = _check_inputs(scores, labels, ignore)
    n_classes = s.shape[1]
    ap = np.full(n_classes, np.nan, dtype=np.float64)
    for c in range(n_classes):
        sc, yc = s[:, c], y[:, c]
        if ig is not None:
            keep = ~ig[:, c]
            sc, yc = sc[keep], yc[keep]
        if yc.sum() == 0:
            continue
        ap[c] = float(average_precision_score(yc, sc, pos_label=1))
    return ap


@dataclass(frozen=True, eq=False)
class MAPResult:
    """Mean average precision and its parts.

    Attributes:
        map: mean AP x100 (NaN if no class has a positive). For :func:`mean_average_precision` the mean
            runs over the classes with at least one positive; for :func:`released_code_map` over all C.
        per_class: (C,) float64 AP x100 (read-only). NaN for excluded classes in
            :func:`mean_average_precision`; 0 for them in :func:`released_code_map`.
        excluded: names (or str indices when no names were given) of the classes with no positive.
        n_excluded: ``len(excluded)``.

    ``eq=False``: instances compare by identity (the array field makes field-wise ``==`` ambiguous).
    """

    map: float
    per_class: np.ndarray
    excluded: tuple[str, ...]
    n_excluded: int

    def as_dict(self, class_names: Sequence[str] | None = None) -> dict[str, float]:
        """Per-class AP x100 keyed by class name (str index when ``class_names`` is None)."""
        names = _class_names(class_names, len(self.per_class))
        return {n: float(v) for n, v in zip(names, self.per_class)}


def _map_result(ap: np.ndarray, names: list[str], *, released: bool) -> MAPResult:
    missing = np.isnan(ap)
    excluded = tuple(n for n, m in zip(names, missing) if m)
    per_class = ap * 100.0
    if released:
        per_class = np.where(missing, 0.0, per_class)
        value = float(per_class.mean())
    else:
        value = float(np.nanmean(per_class)) if not missing.all() else math.nan
    per_class = np.ascontiguousarray(per_class, dtype=np.float64)
    per_class.setflags(write=False)
    return MAPResult(map=value, per_class=per_class, excluded=excluded, n_excluded=len(excluded))


def mean_average_precision(
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    class_names: Sequence[str] | None = None,
    ignore: np.ndarray | None = None,
) -> MAPResult:
    """mAP x100 over the classes that have at least one positive (method.md §8).

    Args:
        scores: (N, C) float.
        labels: (N, C) {0, 1}.
        class_names: optional C names used in ``MAPResult.excluded``.
        ignore: optional (N, C) mask, see :func:`average_precision_per_class`.

    Returns:
        :class:`MAPResult`; classes without positives are NaN in ``per_class``, listed in ``excluded``
        and left out of ``map``. If every class is excluded ``map`` is NaN.
    """
    ap = average_precision_per_class(scores, labels, ignore=ignore)
    return _map_result(ap, _class_names(class_names, ap.shape[0]), released=False)


def released_code_map(
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    class_names: Sequence[str] | None = None,
    ignore: np.ndarray | None = None,
) -> MAPResult:
    """mAP x100 as the released CCD/CDUL code computes it: a class with no positive scores AP 0.

    Same arguments as :func:`mean_average_precision`. ``map`` is the mean over *all* C classes,
    ``per_class`` holds 0 for the classes without positives, and ``excluded`` / ``n_excluded`` name
    those classes (here: the ones scored 0 rather than left out). When no class lacks positives this
    equals :func:`mean_average_precision`.
    """
    ap = average_precision_per_class(scores, labels, ignore=ignore)
    return _map_result(ap, _class_names(class_names, ap.shape[0]), released=True)


# --------------------------------------------------------------------------------------------------
# threshold / top-k metrics
# --------------------------------------------------------------------------------------------------
def _prf_from_predictions(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """CP, CR, CF1, OP, OR, OF1 (x100) from binary ``pred`` (N, C) and ``labels`` (N, C)."""
    pred = pred.astype(np.int64)
    y = labels.astype(np.int64)
    tp = (pred * y).sum(axis=0)  # (C,)
    n_pred = pred.sum(axis=0)  # (C,)
    n_gt = y.sum(axis=0)  # (C,)
    cp = float(_div(tp, n_pred).mean())
    cr = float(_div(tp, n_gt).mean())
    cf1 = float(_div(2.0 * cp * cr, cp + cr))
    op = float(_div(tp.sum(), n_pred.sum()))
    or_ = float(_div(tp.sum(), n_gt.sum()))
    of1 = float(_div(2.0 * op * or_, op + or_))
    return {"CP": 100 * cp, "CR": 100 * cr, "CF1": 100 * cf1, "OP": 100 * op, "OR": 100 * or_, "OF1": 100 * of1}


def threshold_metrics(scores: np.ndarray, labels: np.ndarray, *, threshold: float = 0.5) -> dict[str, float]:
    """CP, CR, CF1, OP, OR, OF1 (x100) with ``pred = scores >= threshold``.

    Args:
        scores: (N, C) probabilities (apply the sigmoid first; the values are not range-checked, so
            logits with ``threshold=0`` also work).
        labels: (N, C) {0, 1}.
        threshold: decision threshold; a score equal to it counts as positive.

    Returns:
        dict with keys ``CP, CR, CF1, OP, OR, OF1``; 0/0 is 0 (see the module docstring).
    """
    s, y, _ = _check_inputs(scores, labels)
    if not math.isfinite(float(threshold)):
        raise ValueError(f"threshold must be finite; got {threshold!r}")
    return _prf_from_predictions(s >= float(threshold), y)


def topk_predictions(scores: np.ndarray, k: int) -> np.ndarray:
    """(N, C) bool: the k highest-scoring classes of every row (ties: lower class index first).

    Uses ``np.argsort(-scores, axis=1, kind="stable")``. ``scores`` must already be validated.
    """
    n, c = scores.shape
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (N, k)
    pred = np.zeros((n, c), dtype=bool)
    np.put_along_axis(pred, order, True, axis=1)
    return pred


def topk_metrics(scores: np.ndarray, labels: np.ndarray, *, k: int = 3) -> dict[str, float]:
    """CP, CR, CF1, OP, OR, OF1 (x100) where each image predicts exactly its top-k classes.

    Args:
        scores: (N, C) float (any monotone score).
        labels: (N, C) {0, 1}.
        k: number of predicted classes per image, ``1 <= k <= C``. Ties are broken by a stable argsort
            of ``-scores``: among equal scores the lower class index is predicted first.

    Returns:
        dict with keys ``CP, CR, CF1, OP, OR, OF1``; 0/0 is 0.
    """
    s, y, _ = _check_inputs(scores, labels)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer; got {k!r}")
    if not 1 <= int(k) <= s.shape[1]:
        raise ValueError(f"k must be in [1, C={s.shape[1]}]; got {k}")
    return _prf_from_predictions(topk_predictions(s, int(k)), y)


def evaluate(
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    class_names: Sequence[str] | None = None,
    ignore: np.ndarray | None = None,
    threshold: float = 0.5,
    k: int = 3,
) -> dict[str, float]:
    """All method.md §8 metrics in one flat dict.

    Args:
        scores: (N, C) probabilities (sigmoid applied).
        labels: (N, C) {0, 1}.
        class_names: optional C names (only checked for length here).
        ignore: optional (N, C) mask; affects the two mAP values only.
        threshold: threshold for CP ... OF1.
        k: top-k for the ``*_top{k}`` keys; with fewer than ``k`` classes these keys are NaN (with a warning).

    Returns:
        ``{"mAP", "n_excluded", "mAP_released", "CP", "CR", "CF1", "OP", "OR", "OF1",
        "CP_top{k}", "CR_top{k}", "CF1_top{k}", "OP_top{k}", "OR_top{k}", "OF1_top{k}"}``: ``mAP`` from
        :func:`mean_average_precision` (classes without positives excluded, their number in
        ``n_excluded``, an int), ``mAP_released`` from :func:`released_code_map`; the rest x100.
    """
    s, y, ig = _check_inputs(scores, labels, ignore)
    ap = average_precision_per_class(s, y, ignore=ig)
    names = _class_names(class_names, s.shape[1])
    res = _map_result(ap, names, released=False)
    rel = _map_result(ap, names, released=True)
    out: dict[str, float] = {"mAP": res.map, "n_excluded": res.n_excluded, "mAP_released": rel.map}
    out.update(threshold_metrics(s, y, threshold=threshold))
    if isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k > s.shape[1] >= 1:
        # fewer classes than k: every image would "predict" all C classes; the top-k keys are NaN, not an error
        warnings.warn(f"top-{k} metrics skipped (NaN): only {s.shape[1]} class(es)", stacklevel=2)
        out.update({f"{key}_top{k}": math.nan for key in ("CP", "CR", "CF1", "OP", "OR", "OF1")})
        return out
    for key, val in topk_metrics(s, y, k=k).items():
        out[f"{key}_top{k}"] = val
    return out

