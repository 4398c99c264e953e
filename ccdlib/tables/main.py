"""The main results table (method.md §9) with each row's checkpoint-selection rule (method.md §7), the
paper-style data-set columns, the papers' published numbers (method.md §10), and the per-epoch curves.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .labels import MAIN_METRICS, METHOD_LABELS, _ground_truth_used, _method_key, method_label

#: ``data.kind`` -> the main table's data-set column (the papers' four, plus the embedded mosaics).
DATASET_COLUMNS: dict[str, str] = {
    "mosaic": "mosaic (embedded)", "voc2007": "VOC07", "voc": "VOC07", "voc2012": "VOC12",
    "coco2014": "COCO14", "coco": "COCO14", "nuswide": "NUS-WIDE",
}
_COLUMN_ORDER = ("mosaic (embedded)", "VOC07", "VOC12", "COCO14", "NUS-WIDE")


def _row(result: Mapping[str, Any], rule: str, metrics: Sequence[str], *, label_key: str) -> dict[str, Any]:
    sel = result["selected"][rule]
    m = sel["metrics"]
    epoch = "" if sel["epoch"] is None else int(sel["epoch"])     # "": nothing was trained or selected
    return {"method": method_label(label_key), "selection": rule, "epoch": epoch,
            "ground_truth_used": _ground_truth_used(result["method"], rule),
            **{k: float(m[k]) if m.get(k) is not None else np.nan for k in metrics}}


def main_table(results: Iterable[Mapping[str, Any]], *, rule: str = "gt_free",
               metrics: Sequence[str] = MAIN_METRICS) -> pd.DataFrame:
    """One row per method: test metrics of the checkpoint that ``rule`` picked (method.md §7, §9).

    Args:
        results: run results as :func:`ccdlib.runs.run` returns them. A ``teacher_global`` run gives two rows:
            the teacher's zero-shot prediction (``selection = "zero_shot"``: nothing to select) and the student
            trained on its global labels.
        rule: ``"gt_free"`` (the default for unsupervised rows), ``"last"`` or ``"gt_best"`` (uses test labels).
        metrics: keys of ``selected[rule]["metrics"]``.

    Returns:
        Columns ``method, selection, epoch, ground_truth_used, *metrics``, rows in :data:`METHOD_LABELS` order;
        ``epoch`` is ``""`` for the zero-shot row (nothing trained).
        ``ground_truth_used`` says where labels entered: ``"none"``, ``"test labels (selection)"`` (rule
        ``gt_best``) or ``"train labels (training)"`` (the supervised bound).
    """
    if rule not in ("last", "gt_free", "gt_best", "few_label"):
        raise ValueError(f"rule must be 'last', 'gt_free', 'gt_best' or 'few_label' (the zero-shot row is always "
                         f"added), got {rule!r}")
    rows = []
    for res in results:
        if res["method"] == "teacher_global" and "zero_shot" in res["selected"]:
            rows.append(_row(res, "zero_shot", metrics, label_key="zero_shot"))
        if rule in res["selected"]:
            rows.append(_row(res, rule, metrics, label_key=_method_key(res)))
    cols = ["method", "selection", "epoch", "ground_truth_used", *metrics]
    df = pd.DataFrame(rows, columns=cols).astype({"epoch": object})
    return _sort_methods(df, [])


def _sort_methods(df: pd.DataFrame, then: list[str]) -> pd.DataFrame:
    """Rows in :data:`METHOD_LABELS` order (unknown methods last), then by ``then``; stable."""
    order = {v: i for i, v in enumerate(METHOD_LABELS.values())}
    key = df["method"].map(lambda m: order.get(m, len(order)))
    out = df.assign(_m=key).sort_values(["_m", *then], kind="stable").drop(columns="_m")
    return out.reset_index(drop=True)


def selection_rules_table(results: Sequence[Mapping[str, Any]], *,
                          rules: Sequence[str] = ("last", "gt_free", "gt_best"),
                          metrics: Sequence[str] = MAIN_METRICS) -> pd.DataFrame:
    """:func:`main_table` under every rule, stacked: method-major, the zero-shot row once.

    The ``ground_truth_used`` column marks the ``gt_best`` rows, which pick the epoch by test mAP.
    """
    parts = [main_table(results, rule=r, metrics=metrics).assign(_rule=i) for i, r in enumerate(rules)]
    df = pd.concat(parts, ignore_index=True).drop_duplicates(subset=["method", "selection"])
    return _sort_methods(df, ["_rule"]).drop(columns="_rule")


def dataset_columns(table: pd.DataFrame, data_kind: str, *, metric: str = "mAP") -> pd.DataFrame:
    """The paper-style layout: rows ``method, selection``, one column per data set (mosaic, VOC07, VOC12,
    COCO14, NUS-WIDE); the column of ``data_kind`` holds ``table[metric]``, the others are empty (NaN)."""
    col = DATASET_COLUMNS.get(data_kind, data_kind)
    cols = list(_COLUMN_ORDER) + ([col] if col not in _COLUMN_ORDER else [])
    out = table[["method", "selection"]].copy()
    for c in cols:
        out[c] = table[metric].to_numpy(dtype=float) if c == col else np.nan
    return out


def published_numbers(path: str | Path | None = None) -> pd.DataFrame:
    """The papers' published mAP (method.md §10) from ``ccdlib/data/published.yaml`` (or ``path``).

    Returns:
        Columns ``method, VOC07, VOC12, COCO14, NUS-WIDE, note``. A single number is a float, a range
        (``[lo, hi]`` in the file) the string ``"lo-hi"``, a missing entry NaN.
    """
    import yaml
    p = Path(path) if path is not None else Path(__file__).resolve().parent.parent / "data" / "published.yaml"
    data = yaml.safe_load(p.read_text())
    datasets = list(data["datasets"])
    rows = []
    for entry in data["methods"]:
        row: dict[str, Any] = {"method": entry["method"]}
        for d in datasets:
            v = entry.get("map", {}).get(d)
            if isinstance(v, (list, tuple)):
                row[d] = f"{float(v[0]):.1f}-{float(v[1]):.1f}"
            else:
                row[d] = np.nan if v is None else float(v)
        row["note"] = entry.get("note", "")
        rows.append(row)
    return pd.DataFrame(rows, columns=["method", *datasets, "note"])


# --------------------------------------------------------------------------------------------- per-epoch curves
def epoch_curves(results: Iterable[Mapping[str, Any]], *, metric: str = "mAP") -> pd.DataFrame:
    """Long table of every trained run's history: ``method, epoch, test_<metric>, train_mAP_vs_pseudo``."""
    rows = []
    for res in results:
        for h in res.get("history", []):
            rows.append({"method": method_label(_method_key(res)), "epoch": int(h["epoch"]),
                         "step": int(h.get("step", h["epoch"])), f"test_{metric}": float(h[f"test_{metric}"]),
                         "train_mAP_vs_pseudo": float(h["train_mAP_vs_pseudo"])})
    return pd.DataFrame(rows, columns=["method", "epoch", "step", f"test_{metric}", "train_mAP_vs_pseudo"])


def selected_epochs(results: Iterable[Mapping[str, Any]], *, rules: Sequence[str] = ("last", "gt_free", "gt_best"),
                    metric: str = "mAP") -> pd.DataFrame:
    """The epoch each rule picked and its test metric: ``method, rule, epoch, test_<metric>``."""
    rows = []
    for res in results:
        for rule in rules:
            sel = res["selected"].get(rule)
            if sel is None or sel["epoch"] is None:
                continue
            rows.append({"method": method_label(_method_key(res)), "rule": rule, "epoch": int(sel["epoch"]),
                         "step": int(sel.get("step") or sel["epoch"]), f"test_{metric}": float(sel["metrics"][metric])})
    return pd.DataFrame(rows, columns=["method", "rule", "epoch", "step", f"test_{metric}"])
