"""Fold finished runs into the study's tables (notebooks 04, 05, 06): data in, ``pandas.DataFrame`` out.

Every function here reads what :func:`ccdlib.runs.run` returns (the JSON of a run: ``method``, ``selected``,
``history``, ``pseudo_label_quality``...) or plain arrays; none trains or scores anything, so each is fast and
unit-tested on hand-made inputs (``tests/test_tables.py``).

- :func:`main_table`, :func:`selection_rules_table`, :func:`dataset_columns` -- the main results table
  (SPEC §9) with the checkpoint-selection rule of every row (SPEC §7).
- :func:`published_numbers` -- the papers' published mAP (SPEC §10), from ``ccdlib/data/published.yaml``.
- :func:`epoch_curves`, :func:`selected_epochs` -- test mAP per epoch and the epochs each rule picked.
- :func:`ablation_grid`, :func:`ablation_table` -- one-override CCD ablations against the default run.
- :func:`stage_quality_table`, :func:`per_class_stage_ap`, :func:`initial_stage_labels`,
  :func:`load_stage_labels` -- pseudo-label quality after each stage, overall and per class.
- :func:`flat_config_keys`, :func:`config_params` -- which flat notebook parameters are :class:`RunConfig` keys.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .config import flat_config_keys  # re-exported for notebooks

__all__ = [
    "MAIN_METRICS", "RULE_LABELS", "METHOD_LABELS", "DATASET_COLUMNS", "STAGES", "STAGE_LABELS",
    "method_label", "main_table", "selection_rules_table", "dataset_columns", "published_numbers",
    "epoch_curves", "selected_epochs", "Ablation", "ablation_grid", "ablation_table", "stage_quality_table",
    "per_class_stage_ap", "initial_stage_labels", "load_stage_labels", "flat_config_keys", "config_params",
    "PSEUDO_LABELS_FILE",
]

#: The metrics of the main table: mAP, and CF1 / OF1 at threshold 0.5 and at top-3 (SPEC §8).
MAIN_METRICS: tuple[str, ...] = ("mAP", "CF1", "OF1", "CF1_top3", "OF1_top3")

#: Checkpoint-selection rules (SPEC §7) as a table shows them; ``gt_best`` reads the *test* labels.
RULE_LABELS: dict[str, str] = {
    "zero_shot": "none (no training)",
    "last": "last epoch",
    "gt_free": "GT-free (2nd difference of train mAP)",
    "gt_best": "best test mAP (uses test ground truth)",
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

#: ``data.kind`` -> the main table's data-set column (the papers' four, plus the embedded mosaics).
DATASET_COLUMNS: dict[str, str] = {
    "mosaic": "mosaic (embedded)", "voc2007": "VOC07", "voc": "VOC07", "voc2012": "VOC12",
    "coco2014": "COCO14", "coco": "COCO14", "nuswide": "NUS-WIDE",
}
_COLUMN_ORDER = ("mosaic (embedded)", "VOC07", "VOC12", "COCO14", "NUS-WIDE")

#: Pseudo-label stages a run may record (``result["pseudo_label_quality"]``), in pipeline order.
STAGES: tuple[str, ...] = ("global", "ccd_floored", "ccd_debiased", "ccd_local", "ccd_updated",
                           "cdul_initial", "cdul_final")
STAGE_LABELS: dict[str, str] = {
    "global": "teacher global",
    "ccd_floored": "CCD: LS floor",
    "ccd_debiased": "CCD: debiased",
    "ccd_local": "CCD: local (CAM crops)",
    "ccd_updated": "CCD: updated (r-mix)",
    "cdul_initial": "CDUL: initial (global+3x3)",
    "cdul_final": "CDUL: after gradient alignment",
}

#: File beside ``result.json`` holding each stage's pseudo-labels ``(N_train, C)`` (see :func:`load_stage_labels`).
PSEUDO_LABELS_FILE = "pseudo_labels.npz"


# --------------------------------------------------------------------------------------------- main table
def method_label(method: str) -> str:
    """Display name of a run's ``method`` (or of ``"zero_shot"``); unknown methods pass through."""
    return METHOD_LABELS.get(method, method)


def _ground_truth_used(method: str, rule: str) -> str:
    if method == "supervised":
        return "train labels (training)" + ("; test labels (selection)" if rule == "gt_best" else "")
    return "test labels (selection)" if rule == "gt_best" else "none"


def _row(result: Mapping[str, Any], rule: str, metrics: Sequence[str], *, label_key: str) -> dict[str, Any]:
    sel = result["selected"][rule]
    m = sel["metrics"]
    epoch = "" if sel["epoch"] is None else int(sel["epoch"])     # "": nothing was trained or selected
    return {"method": method_label(label_key), "selection": rule, "epoch": epoch,
            "ground_truth_used": _ground_truth_used(result["method"], rule),
            **{k: float(m[k]) if m.get(k) is not None else np.nan for k in metrics}}


def _method_key(result: Mapping[str, Any]) -> str:
    """The :data:`METHOD_LABELS` key of a run: its method, ``cdul_no_ga`` for CDUL with gradient alignment off,
    ``cdul_bce`` for CDUL's BCE analogue (``cdul.alignment: bernoulli``)."""
    cdul = (result.get("config") or {}).get("cdul") or {}
    if result["method"] == "cdul" and cdul.get("gradient_alignment") is False:
        return "cdul_no_ga"
    if result["method"] == "cdul" and cdul.get("alignment") == "bernoulli":
        return "cdul_bce"
    return result["method"]


def main_table(results: Iterable[Mapping[str, Any]], *, rule: str = "gt_free",
               metrics: Sequence[str] = MAIN_METRICS) -> pd.DataFrame:
    """One row per method: test metrics of the checkpoint that ``rule`` picked (SPEC §7, §9).

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
    if rule not in ("last", "gt_free", "gt_best"):
        raise ValueError(f"rule must be 'last', 'gt_free' or 'gt_best' (the zero-shot row is always added), got {rule!r}")
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
    """The papers' published mAP (SPEC §10) from ``ccdlib/data/published.yaml`` (or ``path``).

    Returns:
        Columns ``method, VOC07, VOC12, COCO14, NUS-WIDE, note``. A single number is a float, a range
        (``[lo, hi]`` in the file) the string ``"lo-hi"``, a missing entry NaN.
    """
    import yaml
    p = Path(path) if path is not None else Path(__file__).resolve().parent / "data" / "published.yaml"
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
                         f"test_{metric}": float(h[f"test_{metric}"]),
                         "train_mAP_vs_pseudo": float(h["train_mAP_vs_pseudo"])})
    return pd.DataFrame(rows, columns=["method", "epoch", f"test_{metric}", "train_mAP_vs_pseudo"])


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
                         f"test_{metric}": float(sel["metrics"][metric])})
    return pd.DataFrame(rows, columns=["method", "rule", "epoch", f"test_{metric}"])


# --------------------------------------------------------------------------------------------- ablations
@dataclass(frozen=True)
class Ablation:
    """One CCD run of the ablation grid: ``factor`` changed to ``value`` through flat ``overrides``
    (``{"ccd_r": 0.5}``); ``is_default`` when the overrides leave the default config unchanged (same run)."""

    factor: str
    value: str
    overrides: dict = field(default_factory=dict)
    is_default: bool = False


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def ablation_grid(*, switches: Sequence[str] = ("debiasing", "local_views", "consistency"),
                  ratios: Sequence[float] = (), offsets: Sequence[float] = (), bounds: Sequence[float] = (),
                  box_rules: Sequence[str] = (), default: Any = None) -> list[Ablation]:
    """The one-override CCD ablations (SPEC §9), the default run first.

    Args:
        switches: CCD on/off options turned *off* one at a time: ``debiasing``, ``local_views`` (the CAM label
            update), ``consistency``.
        ratios, offsets, bounds, box_rules: values of ``ccd.r``, ``ccd.offset``, ``ccd.bound``, ``ccd.box_rule``.
        default: the :class:`~ccdlib.config.CCDConfig` the overrides apply to (``None``: its defaults); a
            value equal to the default is marked ``is_default`` (it *is* the default run).

    Returns:
        ``[Ablation("default", "default run"), ...]`` in the order switches, r, offset, bound, box rule. A value
        equal to the default is kept (marked ``is_default``) beside the factor's other values, so each factor
        reads against its default; a factor whose values are all the default adds nothing.
    """
    from .config import CCDConfig
    d = default if default is not None else CCDConfig()
    out = [Ablation("default", "default run", {}, True)]
    known = {"debiasing", "local_views", "consistency"}
    for s in switches:
        if s not in known:
            raise ValueError(f"unknown CCD switch {s!r}; known: {sorted(known)}")
        out.append(Ablation(s.replace("_", " "), "off", {f"ccd_{s}": False}, getattr(d, s) is False))
    for factor, key, values in (("r", "r", ratios), ("offset", "offset", offsets), ("bound", "bound", bounds),
                                ("box rule", "box_rule", box_rules)):
        vals = [v if isinstance(v, str) else float(v) for v in values]
        if all(getattr(d, key) == v for v in vals):
            continue
        out.extend(Ablation(factor, _fmt(v), {f"ccd_{key}": v}, getattr(d, key) == v) for v in vals)
    return out


def _final_stage(quality: Mapping[str, Mapping[str, float]]) -> str | None:
    for stage in ("ccd_updated", "ccd_debiased", "ccd_floored", "global"):
        if stage in quality:
            return stage
    return None


def ablation_table(grid: Sequence[Ablation], results: Sequence[Mapping[str, Any]], *,
                   rules: Sequence[str] = ("gt_free", "last"), metrics: Sequence[str] = ("mAP", "CF1", "OF1")
                   ) -> pd.DataFrame:
    """One row per (ablation, rule): the student's test metrics, their change against the default run under the
    same rule (``delta_<metric>``), and the quality of the run's final pseudo-labels on the training split
    (``labels_mAP``, ``labels_CF1``: the last recorded stage, ``ccd_updated`` when the CAM update ran).

    ``grid[i]`` must have produced ``results[i]``; the first ``factor == "default"`` entry is the reference.
    """
    if len(grid) != len(results):
        raise ValueError(f"grid has {len(grid)} ablations but {len(results)} results were given")
    ref = next((res for a, res in zip(grid, results) if a.factor == "default"), None)
    if ref is None:
        raise ValueError("the grid has no 'default' entry to compare against")
    rows = []
    for a, res in zip(grid, results):
        q = res.get("pseudo_label_quality", {})
        stage = _final_stage(q)
        for rule in rules:
            m = res["selected"][rule]["metrics"]
            base = ref["selected"][rule]["metrics"]
            row: dict[str, Any] = {"factor": a.factor, "value": a.value, "is_default": a.is_default, "rule": rule,
                                   "epoch": res["selected"][rule]["epoch"]}
            row.update({k: float(m[k]) for k in metrics})
            row.update({f"delta_{k}": float(m[k]) - float(base[k]) for k in metrics})
            row["labels_stage"] = stage
            row["labels_mAP"] = float(q[stage]["mAP"]) if stage else np.nan
            row["labels_CF1"] = float(q[stage]["CF1"]) if stage else np.nan
            rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------- pseudo-label stages
def stage_quality_table(results: Iterable[Mapping[str, Any]], *,
                        metrics: Sequence[str] = MAIN_METRICS) -> pd.DataFrame:
    """Pseudo-label quality against the *training* ground truth after each stage (SPEC §9), in :data:`STAGES`
    order: ``stage, label, run, *metrics``. A stage recorded by several runs (``global``) is listed once."""
    seen: dict[str, dict] = {}
    for res in results:
        for stage, q in res.get("pseudo_label_quality", {}).items():
            if stage not in seen:
                seen[stage] = {"stage": stage, "label": STAGE_LABELS.get(stage, stage),
                               "run": method_label(res["method"]), **{k: float(q[k]) for k in metrics}}
    order = [s for s in STAGES if s in seen] + sorted(s for s in seen if s not in STAGES)
    return pd.DataFrame([seen[s] for s in order], columns=["stage", "label", "run", *metrics])


def per_class_stage_ap(stages: Mapping[str, np.ndarray], labels: np.ndarray, class_names: Sequence[str]
                       ) -> pd.DataFrame:
    """Per-class average precision (x100) of each stage's pseudo-labels against ``labels``.

    Returns:
        Index: class names; columns: the stages in :data:`STAGES` order (others after). NaN where a class has no
        positive in ``labels``.
    """
    from .metrics import average_precision_per_class
    y = np.asarray(labels)
    names = [s for s in STAGES if s in stages] + [s for s in stages if s not in STAGES]
    data = {s: 100.0 * average_precision_per_class(np.asarray(stages[s], dtype=np.float64), y) for s in names}
    return pd.DataFrame(data, index=pd.Index(list(class_names), name="class"), columns=names)


def initial_stage_labels(p_global: np.ndarray, p_tiles: np.ndarray | None = None, *, ccd: Any = None,
                         cdul: Any = None, class_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The pseudo-label stages computable from the teacher alone, exactly as the runs compute them:
    ``global``, ``ccd_floored``, ``ccd_debiased`` (SPEC §4) and, given ``p_tiles (N, T, C)``, ``cdul_initial``
    (SPEC §3). ``ccd``/``cdul``: the run's :class:`CCDConfig` / :class:`CDULConfig` (``None``: defaults)."""
    import warnings

    from .config import CCDConfig, CDULConfig
    from .pseudolabels import ccd_initial_pseudo_labels, cdul_initial_pseudo_labels
    c, u = ccd or CCDConfig(), cdul or CDULConfig()
    with warnings.catch_warnings():   # the fallback warning was shown when the run itself ran
        warnings.simplefilter("ignore")
        init = ccd_initial_pseudo_labels(p_global, h_max=c.h_max, ls=c.ls or None, debiasing=c.debiasing,
                                         fallback=c.bias_fallback, class_names=class_names)
    out = {"global": np.asarray(p_global), "ccd_floored": init.floored, "ccd_debiased": init.labels}
    if p_tiles is not None:
        out["cdul_initial"] = cdul_initial_pseudo_labels(p_global, p_tiles, theta=u.theta, lam=u.lam)
    return out


def load_stage_labels(run_dir: str | Path) -> dict[str, np.ndarray]:
    """Each stage's pseudo-labels saved beside a run's ``result.json`` (:data:`PSEUDO_LABELS_FILE`, one
    ``(N_train, C)`` array per stage); ``{}`` when the run did not save them."""
    p = Path(run_dir) / PSEUDO_LABELS_FILE
    if not p.exists():
        return {}
    with np.load(p) as z:
        return {k: z[k] for k in z.files}


# --------------------------------------------------------------------------------------------- parameters
def config_params(namespace: Mapping[str, Any], *, exclude: Iterable[str] = ("out_dir",)) -> dict[str, Any]:
    """The entries of ``namespace`` (a notebook's parameters, or a loaded ``params/*.yaml``) that are flat
    :class:`RunConfig` keys, minus ``exclude`` (notebooks' ``out_dir`` is the reports folder, not a run's)."""
    keys, skip = flat_config_keys(), set(exclude)
    return {k: v for k, v in namespace.items() if k in keys and k not in skip}
