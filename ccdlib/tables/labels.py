"""Names every table shares: the main metrics, the checkpoint-selection rules and the methods' row labels,
and the method key of a run (:func:`_method_key`) that picks its row.
"""
from __future__ import annotations

from typing import Any, Mapping

#: The metrics of the main table: mAP, and CF1 / OF1 at threshold 0.5 and at top-3 (method.md §8).
MAIN_METRICS: tuple[str, ...] = ("mAP", "CF1", "OF1", "CF1_top3", "OF1_top3")

#: Checkpoint-selection rules (method.md §7) as a table shows them; ``gt_best`` reads the *test* labels.
RULE_LABELS: dict[str, str] = {
    "zero_shot": "none (no training)",
    "last": "last epoch",
    "gt_free": "GT-free (2nd difference of train mAP)",
    "gt_best": "best test mAP (uses test ground truth)",
    "few_label": "few-label validation (k labelled training images per class)",
}

#: Row names of the main table, in display order. A ``teacher_global`` run gives two rows.
METHOD_LABELS: dict[str, str] = {
    "zero_shot": "teacher zero-shot (global)",
    "teacher_global": "student on teacher-global labels",
    "cdul": "CDUL",
    "cdul_no_ga": "CDUL without gradient alignment",
    "cdul_bce": "CDUL (BCE analogue)",   # cdul.alignment=bernoulli, cdul.student_loss=bce
    "ccd": "CCD",
    "supervised": "supervised (upper bound)",
}


def method_label(method: str) -> str:
    """Display name of a run's ``method`` (or of ``"zero_shot"``); unknown methods pass through."""
    return METHOD_LABELS.get(method, method)


def _ground_truth_used(method: str, rule: str) -> str:
    if method == "supervised":
        return "train labels (training)" + ("; test labels (selection)" if rule == "gt_best" else "")
    return {"gt_best": "test labels (selection)", "few_label": "few-label validation labels (selection)"}.get(rule, "none")


def _method_key(result: Mapping[str, Any]) -> str:
    """The :data:`METHOD_LABELS` key of a run: its method, ``cdul_no_ga`` for CDUL with gradient alignment off,
    ``cdul_bce`` for CDUL's BCE analogue (``cdul.alignment: bernoulli``)."""
    cdul = (result.get("config") or {}).get("cdul") or {}
    if result["method"] == "cdul" and cdul.get("gradient_alignment") is False:
        return "cdul_no_ga"
    if result["method"] == "cdul" and cdul.get("alignment") == "bernoulli":
        return "cdul_bce"
    return result["method"]
