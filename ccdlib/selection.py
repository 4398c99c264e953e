"""Model selection as part of the method (docs/method.md §7): the checkpoint-selection rules, the few-label
validation split, and the test scoring rules.

Selection rules (each picks one checkpoint of a run; a verdict is reported under every one):

- ``oracle``: the checkpoint of best *test* mAP -- the papers' practice (k0u-id/CCD ``train.py`` 451-458; the CDUL
  reproduction reports its maximum validation mAP on the test split). It reads the test labels; never unsupervised.
  Stored in results as ``gt_best``.
- ``last``: the last checkpoint.
- ``gt_free``: the released ground-truth-free rule: the first checkpoint ``e >= 2`` whose second difference of the
  train mAP against the current pseudo-labels is positive (else the last).
- ``few_label``: the checkpoint of best mAP on ``k`` labelled training images per class held out of training
  (:func:`few_label_split`; ``data.few_label_k``), the realistic-evaluation protocol (Oliver et al., 2018).

Scoring rules (how test probabilities are read from the logits): ``sigmoid`` (multi-label, CCD's and method.md §5's),
``softmax`` (the CDUL reproduction's evaluation of its softmax + KL head) and ``reference`` (each method as its
reference scores it: :func:`reference_scoring`).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["RULES", "RULE_KEYS", "few_label_split", "select_checkpoints", "reference_scoring", "scores_from_logits",
           "SCORINGS"]

#: The selection rules in report order, and the key each is stored under in a run's ``selected``.
RULES = ("oracle", "last", "gt_free", "few_label")
RULE_KEYS = {"oracle": "gt_best", "last": "last", "gt_free": "gt_free", "few_label": "few_label"}
SCORINGS = ("reference", "sigmoid", "softmax")


def few_label_split(labels: np.ndarray, *, k: int = 2, seed: int = 0, max_fraction: float = 0.15,
                    class_names: Sequence[str] | None = None) -> np.ndarray:
    """Indices of a few-label validation split: for each class, rarest first, add randomly chosen images holding it
    until the split holds ``k`` positives of it (or all its images are taken), capped at
    ``ceil(max_fraction * N)`` images. ``labels (N, C)`` binary -> sorted ``(M,)`` int64 indices (seeded).

    The caller removes them from training; every method sees the same split (it depends on the data and
    ``seed`` only, not on the training seed).

    Small sets (issue 23): an image whose removal would leave some class without any training image is never
    taken (the next candidate is tried), and a class that ends with fewer than ``k`` held-out positives is
    warned (``UserWarning`` naming it, with ``class_names`` when given: ``name (held/k of its n images)``). A class
    without any positive is not named here (the readers warn of it). The draws are those of the split without
    the check (one seeded permutation per class in need): the indices differ from it only where it would have
    taken a class's last training image (never on the embedded default study, tests/test_inputs_issue23_data.py)."""
    y = np.asarray(labels) > 0
    n, c = y.shape
    if k <= 0 or n == 0:
        return np.zeros(0, dtype=np.int64)
    cap = max(1, math.ceil(max_fraction * n))
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    taken = np.zeros(n, dtype=bool)
    left = y.sum(0)                       # training images per class (after removing the chosen ones)
    kept_last: set[int] = set()           # classes whose last training image was not taken
    for cls in np.argsort(y.sum(0), kind="stable"):
        need = k - int(y[taken, cls].sum())
        if need <= 0:
            continue
        cand = np.flatnonzero(y[:, cls] & ~taken)
        for i in rng.permutation(cand):   # one permutation per class in need, as before: the same draws
            if need <= 0 or len(chosen) >= cap:
                break
            last = np.flatnonzero(y[i] & (left <= 1))
            if len(last):                 # the last training image of these classes: keep it for training
                kept_last.update(int(j) for j in last)
                continue
            chosen.append(int(i))
            taken[i] = True
            left -= y[i]
            need -= 1
    _warn_short_classes(y, taken, k=k, cap=cap, capped=len(chosen) >= cap, kept_last=kept_last,
                        class_names=class_names)
    return np.asarray(sorted(chosen), dtype=np.int64)


def _warn_short_classes(y: np.ndarray, taken: np.ndarray, *, k: int, cap: int, capped: bool, kept_last: set[int],
                        class_names: Sequence[str] | None) -> None:
    """The ``UserWarning`` of :func:`few_label_split` for classes with fewer than ``k`` held-out positives."""
    import warnings
    total, held = y.sum(0), y[taken].sum(0)
    short = [j for j in range(y.shape[1]) if 0 < total[j] and held[j] < k]
    if not short:
        return

    def name(j: int) -> str:
        return str(class_names[j]) if class_names is not None else f"class {j}"
    why = []
    if kept_last:
        why.append(f"a class's last training image is never taken (kept for training: "
                   f"{', '.join(name(j) for j in sorted(kept_last))})")
    if capped:
        why.append(f"the split is capped at {cap} images (ceil(max_fraction * N))")
    warnings.warn(f"few-label split: {len(short)} class(es) hold fewer than k={k} labelled images: "
                  f"{', '.join(f'{name(j)} ({held[j]}/{k} of its {total[j]} images)' for j in short)}"
                  f"{': ' + '; '.join(why) if why else ''}. Their few-label validation mAP rests on fewer images "
                  f"(the few_label checkpoint rule is noisier); use a larger training split or a smaller "
                  f"data.few_label_k", UserWarning, stacklevel=3)


def select_checkpoints(train_map: Sequence[float], test_map: Sequence[float],
                       val_map: Sequence[float] | None = None) -> dict[str, int]:
    """The checkpoint (index into the run's checkpoints) each rule picks. Keys: ``last``, ``gt_free``, ``gt_best``
    (the ``oracle`` rule; absent when every test mAP is NaN, a test split without labels) and ``few_label``
    (present when ``val_map`` is given and not all NaN). Ties go to the earlier checkpoint."""
    last = len(train_map) - 1
    gt_free = last
    for e in range(2, len(train_map)):
        if train_map[e] - 2 * train_map[e - 1] + train_map[e - 2] > 0:
            gt_free = e
            break
    rules = {"last": last, "gt_free": gt_free}
    if not np.all(np.isnan(np.asarray(test_map, dtype=np.float64))):
        rules["gt_best"] = int(np.nanargmax(test_map))
    if val_map is not None and len(val_map) and not np.all(np.isnan(np.asarray(val_map, dtype=np.float64))):
        rules["few_label"] = int(np.nanargmax(val_map))
    return rules


def reference_scoring(method: str, student_loss: str | None = None) -> str:
    """How a method's reference scores its test images: a CDUL head trained with softmax + KL (the
    reproduction, ``cdul.student_loss="softmax_kl"``) by softmax; everything else (CCD, the BCE rows) by sigmoid."""
    return "softmax" if method == "cdul" and student_loss == "softmax_kl" else "sigmoid"


def scores_from_logits(logits: np.ndarray, scoring: str) -> np.ndarray:
    """``(N, C)`` logits -> probabilities under ``scoring`` (``sigmoid`` or ``softmax``), float64."""
    z = np.asarray(logits, dtype=np.float64)
    if scoring == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if scoring == "softmax":
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)
    raise ValueError(f"scoring must be 'sigmoid' or 'softmax', got {scoring!r}")


def resolve_scoring(scoring: str, method: str, student_loss: str | None) -> str:
    """``reference`` -> the method's own (:func:`reference_scoring`); ``sigmoid``/``softmax`` as given."""
    return reference_scoring(method, student_loss) if scoring == "reference" else scoring

