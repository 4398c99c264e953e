"""Fold finished runs into the study's tables (notebooks 04, 05, 06): data in, ``pandas.DataFrame`` out.

Every function here reads what :func:`ccdlib.runs.run` returns (the JSON of a run: ``method``, ``selected``,
``history``, ``pseudo_label_quality``...) or plain arrays; none trains or scores anything, so each is fast and
unit-tested on hand-made inputs (``tests/test_tables.py``).

- :func:`main_table`, :func:`selection_rules_table`, :func:`dataset_columns` -- the main results table
  (method.md §9) with the checkpoint-selection rule of every row (method.md §7).
- :func:`published_numbers` -- the papers' published mAP (method.md §10), from ``ccdlib/data/published.yaml``.
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
    "PSEUDO_LABELS_FILE", "SeedRun", "seeded_main_table", "protocol_columns", "CLAIMS", "claims_table",
    "claims_paragraph", "seeded_score_table", "seed_values", "view_and_bias_claims",
]

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
    return {"gt_best": "test labels (selection)", "few_label": "few-label validation labels (selection)"}.get(rule, "none")


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
    """The one-override CCD ablations (method.md §9), the default run first.

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
    """Pseudo-label quality against the *training* ground truth after each stage (method.md §9), in :data:`STAGES`
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
    ``global``, ``ccd_floored``, ``ccd_debiased`` (method.md §4) and, given ``p_tiles (N, T, C)``, ``cdul_initial``
    (method.md §3). ``ccd``/``cdul``: the run's :class:`CCDConfig` / :class:`CDULConfig` (``None``: defaults)."""
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


# --------------------------------------------------------------------------------------------- seeds and intervals
@dataclass(frozen=True, eq=False)
class SeedRun:
    """One finished run of the multi-seed study: its stamp ``protocol`` (``DataConfig.stamps``; any label of the
    test split it was scored on), training ``seed``, the run's JSON ``result`` (:func:`ccdlib.runs.run`) and its
    per-rule test probabilities ``scores`` (:func:`ccdlib.runs.load_test_scores`: ``{rule: (N_test, C)}``)."""

    protocol: str
    seed: int
    result: Mapping[str, Any]
    scores: Mapping[str, np.ndarray]


def _seed_groups(runs: Iterable[SeedRun], rule: str) -> dict[tuple[str, str], list[tuple[int, dict, np.ndarray, str]]]:
    """``{(protocol, key): [(seed, metrics, scores, rule), ...]}``; the teacher's zero-shot row once per protocol
    (it involves no training: every seed's is the same prediction)."""
    groups: dict[tuple[str, str], list] = {}
    for r in runs:
        res = r.result
        if res["method"] == "teacher_global" and "zero_shot" in res["selected"] and "zero_shot" in r.scores:
            g = groups.setdefault((r.protocol, "zero_shot"), [])
            if not g:
                g.append((r.seed, res["selected"]["zero_shot"]["metrics"], r.scores["zero_shot"], "zero_shot"))
        if rule in res["selected"]:
            if rule not in r.scores:
                raise ValueError(f"run {res.get('name', '?')} (seed {r.seed}) has no test scores for rule {rule!r}: "
                                 "rerun it so that test_scores.npz is saved (force=True)")
            g = groups.setdefault((r.protocol, _method_key(res)), [])
            if any(s == r.seed for s, *_ in g):
                raise ValueError(f"two runs of {method_label(_method_key(res))} with seed {r.seed} under protocol "
                                 f"{r.protocol!r}")
            g.append((r.seed, res["selected"][rule]["metrics"], r.scores[rule], rule))
    return groups


def seeded_main_table(runs: Iterable[SeedRun], labels: Mapping[str, np.ndarray], *, rule: str = "gt_free",
                      reference: str = "ccd", metrics: Sequence[str] = ("mAP", "CF1", "OF1"),
                      n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0,
                      cache_dir: str | Path | None = None) -> pd.DataFrame:
    """The main table over training seeds, with bootstrap intervals (issue 12; method.md §7, §9).

    Per stamp protocol and method (rows in :data:`METHOD_LABELS` order), from the checkpoint ``rule`` picked:

    - ``n_seeds`` and, per metric, the mean over seeds and the sample standard deviation (``<metric>_sd``; NaN
      for one seed and for the teacher's zero-shot row, which trains nothing);
    - ``mAP_seedavg`` with ``mAP_lo`` / ``mAP_hi``: the mAP of the seed-averaged test probabilities
      (:func:`ccdlib.stats.seed_averaged_scores`) and its ``confidence`` bootstrap interval over test images;
    - ``<REF>_minus_row`` with ``_lo`` / ``_hi`` (``CCD_minus_row`` by default): the paired-bootstrap difference
      ``mAP(reference) - mAP(row)`` of the seed-averaged probabilities on the same resampled test images --
      positive with ``_lo > 0``: the reference beats the row; NaN on the reference's own row.

    Args:
        runs: :class:`SeedRun` records (every method x seed x protocol).
        labels: ``{protocol: (N_test, C)}`` the test ground truth each protocol's runs were scored on.
        rule: ``"gt_free"`` (default), ``"last"`` or ``"gt_best"`` (uses test labels; the row says so).
        reference: the method key the difference column compares with.
        n_resamples, confidence, seed: of the bootstrap (:mod:`ccdlib.stats`); every row of a protocol uses the
            same resamples.
        cache_dir: the bootstrap intervals' disk cache (:func:`ccdlib.stats.bootstrap_map`); ``None``: none.

    Returns:
        Long table: ``protocol, key, method, selection, ground_truth_used, n_seeds, seeds, *metrics (+_sd),
        mAP_seedavg, mAP_lo, mAP_hi, <REF>_minus_row, <REF>_minus_row_lo, <REF>_minus_row_hi``.
    """
    from .stats import bootstrap_map, paired_bootstrap_difference, seed_averaged_scores, seed_mean_sd
    if rule not in ("last", "gt_free", "gt_best", "few_label"):
        raise ValueError(f"rule must be 'last', 'gt_free', 'gt_best' or 'few_label', got {rule!r}")
    ref_col = f"{method_label(reference)}_minus_row".replace(" ", "_")
    groups = _seed_groups(runs, rule)
    order = {k: i for i, k in enumerate(METHOD_LABELS)}
    protocols = list(dict.fromkeys(p for p, _ in groups))
    rows = []
    for protocol in protocols:
        if protocol not in labels:
            raise ValueError(f"no test labels given for protocol {protocol!r}")
        y = np.asarray(labels[protocol])
        keys = sorted((k for p, k in groups if p == protocol), key=lambda k: order.get(k, len(order)))
        avg = {}
        for k in keys:
            g = sorted(groups[(protocol, k)], key=lambda t: t[0])
            arrs = [np.asarray(s) for _, _, s, _ in g]
            if any(a.shape != y.shape for a in arrs):
                raise ValueError(f"{method_label(k)} ({protocol}): test scores {[a.shape for a in arrs]} do not match "
                                 f"the test labels {y.shape}; seeds must share one test split")
            avg[k] = seed_averaged_scores(arrs)
        ref = avg.get(reference)
        for k in keys:
            g = sorted(groups[(protocol, k)], key=lambda t: t[0])
            sel = g[0][3]
            row: dict[str, Any] = {"protocol": protocol, "key": k, "method": method_label(k), "selection": sel,
                                   "ground_truth_used": _ground_truth_used(k, sel),
                                   "n_seeds": len(g), "seeds": ",".join(str(s) for s, *_ in g) if k != "zero_shot" else ""}
            for m in metrics:
                mean, sd, _ = seed_mean_sd([t[1].get(m, np.nan) if t[1].get(m) is not None else np.nan for t in g])
                row[m], row[f"{m}_sd"] = mean, sd
            iv = bootstrap_map(avg[k], y, n_resamples=n_resamples, confidence=confidence, seed=seed,
                               cache_dir=cache_dir)
            row.update(mAP_seedavg=iv.estimate, mAP_lo=iv.lo, mAP_hi=iv.hi)
            if ref is not None and k != reference:
                d = paired_bootstrap_difference(ref, avg[k], y, n_resamples=n_resamples, confidence=confidence,
                                                seed=seed, cache_dir=cache_dir)
                row.update({ref_col: d.estimate, f"{ref_col}_lo": d.lo, f"{ref_col}_hi": d.hi})
            else:
                row.update({ref_col: np.nan, f"{ref_col}_lo": np.nan, f"{ref_col}_hi": np.nan})
            rows.append(row)
    cols = ["protocol", "key", "method", "selection", "ground_truth_used", "n_seeds", "seeds",
            *[c for m in metrics for c in (m, f"{m}_sd")], "mAP_seedavg", "mAP_lo", "mAP_hi",
            ref_col, f"{ref_col}_lo", f"{ref_col}_hi"]
    return pd.DataFrame(rows, columns=cols)


def _pm(mean: float, sd: float) -> str:
    if not np.isfinite(mean):
        return ""
    return f"{mean:.1f}" if not np.isfinite(sd) else f"{mean:.1f} ± {sd:.1f}"


def _ci(est: float, lo: float, hi: float, *, signed: bool = False) -> str:
    if not np.isfinite(est):
        return ""
    e = f"{est:+.1f}" if signed else f"{est:.1f}"
    return f"{e} [{lo:+.1f}, {hi:+.1f}]" if signed else f"{e} [{lo:.1f}, {hi:.1f}]"


def protocol_columns(table: pd.DataFrame, *, metrics: Sequence[str] = ("mAP", "CF1", "OF1")) -> pd.DataFrame:
    """The readable layout of :func:`seeded_main_table`: one row per method (and selection rule), one column group
    per stamp protocol (``"<protocol>: mAP"`` ...), cells as text: ``mean ± sd`` over seeds, the seed-averaged
    mAP ``est [lo, hi]``, and the signed difference to the reference ``+d [lo, hi]``."""
    ref_col = next(c for c in table.columns if c.endswith("_minus_row"))
    ref_name = ref_col[: -len("_minus_row")].replace("_", " ")
    out: dict[tuple[str, str], dict[str, str]] = {}
    for _, r in table.iterrows():
        key = (r["method"], RULE_LABELS.get(r["selection"], r["selection"]))
        cell = out.setdefault(key, {"method": key[0], "selection": key[1]})
        p = r["protocol"]
        cell[f"{p}: seeds"] = str(int(r["n_seeds"])) if r["key"] != "zero_shot" else "-"
        for m in metrics:
            cell[f"{p}: {m}"] = _pm(r[m], r[f"{m}_sd"])
        cell[f"{p}: mAP seed-avg [95% CI]"] = _ci(r["mAP_seedavg"], r["mAP_lo"], r["mAP_hi"])
        cell[f"{p}: {ref_name} - row [95% CI]"] = _ci(r[ref_col], r[f"{ref_col}_lo"], r[f"{ref_col}_hi"], signed=True)
    return pd.DataFrame(list(out.values())).fillna("")


# --------------------------------------------------------------------------------------------- claims
#: The papers' claims the main table can test: (claim, better method key, worse method key).
CLAIMS: tuple[tuple[str, str, str], ...] = (
    ("local views beat the global view (CCD's student vs the student on the teacher's global labels)", "ccd",
     "teacher_global"),
    ("CDUL's local tiles beat the global view (CDUL's student vs the student on global labels)", "cdul", "teacher_global"),
    ("CCD beats CDUL", "ccd", "cdul"),
    ("CCD beats CDUL without gradient alignment", "ccd", "cdul_no_ga"),
    ("the student beats its teacher (CCD vs the teacher's zero-shot prediction)", "ccd", "zero_shot"),
    ("the supervised bound beats CCD (the room left)", "supervised", "ccd"),
)


def claims_table(runs: Iterable[SeedRun], labels: Mapping[str, np.ndarray], *, rule: str = "gt_free",
                 claims: Sequence[tuple[str, str, str]] = CLAIMS, n_resamples: int = 2000, confidence: float = 0.95,
                 seed: int = 0, cache_dir: str | Path | None = None) -> pd.DataFrame:
    """Each claim ``(text, a, b)`` = "a beats b", per protocol: the paired-bootstrap difference ``mAP(a) - mAP(b)``
    of the seed-averaged test probabilities, its interval, and a ``verdict``: ``"holds"`` (interval above 0),
    ``"reversed"`` (below 0) or ``"unresolved"`` (contains 0). Claims whose methods were not run are skipped.
    ``cache_dir``: the bootstrap intervals' disk cache (:func:`ccdlib.stats.paired_bootstrap_difference`).

    Returns:
        ``protocol, claim, a, b, n_seeds_a, n_seeds_b, mAP_a, mAP_b, diff, diff_lo, diff_hi, verdict``.
    """
    from .metrics import mean_average_precision
    from .stats import paired_bootstrap_difference, seed_averaged_scores
    groups = _seed_groups(list(runs), rule)
    rows = []
    for protocol in dict.fromkeys(p for p, _ in groups):
        y = np.asarray(labels[protocol])
        for text, a, b in claims:
            if (protocol, a) not in groups or (protocol, b) not in groups:
                continue
            sa = seed_averaged_scores([t[2] for t in groups[(protocol, a)]])
            sb = seed_averaged_scores([t[2] for t in groups[(protocol, b)]])
            d = paired_bootstrap_difference(sa, sb, y, n_resamples=n_resamples, confidence=confidence, seed=seed,
                                            cache_dir=cache_dir)
            verdict = "holds" if d.lo > 0 else "reversed" if d.hi < 0 else "unresolved"
            rows.append({"protocol": protocol, "claim": text, "a": method_label(a), "b": method_label(b),
                         "n_seeds_a": len(groups[(protocol, a)]), "n_seeds_b": len(groups[(protocol, b)]),
                         "mAP_a": mean_average_precision(sa, y).map, "mAP_b": mean_average_precision(sb, y).map,
                         "diff": d.estimate, "diff_lo": d.lo, "diff_hi": d.hi, "verdict": verdict})
    return pd.DataFrame(rows, columns=["protocol", "claim", "a", "b", "n_seeds_a", "n_seeds_b", "mAP_a", "mAP_b",
                                       "diff", "diff_lo", "diff_hi", "verdict"])


def claims_paragraph(claims: pd.DataFrame, *, n_test: Mapping[str, int] | None = None, confidence: float = 0.95,
                     rule: str = "gt_free") -> str:
    """A short Markdown paragraph, written from :func:`claims_table`: for each stamp protocol, which of the papers'
    claims hold on the embedded data and by how much (the seed-averaged mAP difference with its interval).
    ``n_test``: test images per protocol, quoted. Returns ``""`` for an empty table."""
    if claims.empty:
        return ""
    pct = f"{100 * confidence:g} %"
    lines = [f"**What holds here** (test mAP of seed-averaged students, checkpoint rule `{rule}`; "
             f"differences are paired over the same test images, [{pct} BCa bootstrap interval]):"]
    for protocol, part in claims.groupby("protocol", sort=False):
        k = int(max(part["n_seeds_a"].max(), part["n_seeds_b"].max()))
        n = f", {n_test[protocol]} test images" if n_test and protocol in n_test else ""
        said = []
        for _, r in part.iterrows():
            amount = f"{r['diff']:+.1f} mAP [{r['diff_lo']:+.1f}, {r['diff_hi']:+.1f}]"
            word = {"holds": "holds", "reversed": "is reversed", "unresolved": "is not resolved"}[r["verdict"]]
            said.append(f"{r['claim']} {word}: {r['a']} {r['mAP_a']:.1f} vs {r['b']} {r['mAP_b']:.1f}, {amount}")
        lines.append(f"- *{protocol} stamps* ({k} seed{'s' if k > 1 else ''}{n}): " + "; ".join(said) + ".")
    lines.append("View dependency and class bias are measured by notebooks 01 and 02.")
    return "\n".join(lines) + "\n"


def seeded_score_table(scores: Mapping[str, Sequence[np.ndarray]], labels: np.ndarray, *,
                       reference: str | None = None, n_resamples: int = 2000, confidence: float = 0.95,
                       seed: int = 0, cache_dir: str | Path | None = None) -> pd.DataFrame:
    """Seeds and intervals for any set of rows (Fig. 3's label sets, the ablations' runs): one row per key of
    ``scores`` (``{key: [(N_test, C) test probabilities of each seed]}``, in that order).

    Columns: ``key, n_seeds, mAP, mAP_sd`` (mean and sample sd over seeds of each seed's mAP; sd NaN for one
    seed), ``mAP_seedavg, mAP_lo, mAP_hi`` (mAP of the seed-averaged probabilities with its bootstrap interval)
    and, with a ``reference`` key, ``delta, delta_lo, delta_hi``: the paired-bootstrap difference
    ``mAP(row) - mAP(reference)`` of the seed-averaged probabilities (0 with a zero-width interval on the
    reference's own row). Every row uses the same resamples of the test images. ``cache_dir``: the bootstrap
    intervals' disk cache (:func:`ccdlib.stats.bootstrap_map`).
    """
    from .metrics import mean_average_precision
    from .stats import bootstrap_map, paired_bootstrap_difference, seed_averaged_scores, seed_mean_sd
    y = np.asarray(labels)
    if reference is not None and reference not in scores:
        raise ValueError(f"reference {reference!r} is not one of the rows {list(scores)}")
    avg = {}
    for k, arrs in scores.items():
        arrs = [np.asarray(a) for a in arrs]
        if not arrs or any(a.shape != y.shape for a in arrs):
            raise ValueError(f"{k}: test scores {[a.shape for a in arrs]} must each match the test labels {y.shape}")
        avg[k] = seed_averaged_scores(arrs)
    rows = []
    for k, arrs in scores.items():
        mean, sd, n = seed_mean_sd([mean_average_precision(np.asarray(a, np.float64), y).map for a in arrs])
        iv = bootstrap_map(avg[k], y, n_resamples=n_resamples, confidence=confidence, seed=seed,
                           cache_dir=cache_dir)
        row = {"key": k, "n_seeds": n, "mAP": mean, "mAP_sd": sd, "mAP_seedavg": iv.estimate, "mAP_lo": iv.lo,
               "mAP_hi": iv.hi}
        if reference is not None:
            d = paired_bootstrap_difference(avg[k], avg[reference], y, n_resamples=n_resamples,
                                            confidence=confidence, seed=seed, cache_dir=cache_dir)
            row.update(delta=d.estimate, delta_lo=d.lo, delta_hi=d.hi)
        rows.append(row)
    return pd.DataFrame(rows)


def seed_values(runs: Iterable[SeedRun], *, rule: str = "gt_free", metric: str = "mAP") -> pd.DataFrame:
    """Every trained run's test ``metric`` under ``rule``, one row per run: ``protocol, method, seed, <metric>``
    (the single seeds behind :func:`seeded_main_table`'s means, for plotting)."""
    rows = [{"protocol": r.protocol, "method": method_label(_method_key(r.result)), "seed": r.seed,
             metric: float(r.result["selected"][rule]["metrics"][metric])}
            for r in runs if rule in r.result["selected"]]
    return pd.DataFrame(rows, columns=["protocol", "method", "seed", metric])


def view_and_bias_claims(tables_dir: str | Path) -> list[str]:
    """Markdown bullets for the papers' first two claims, read from the tables notebooks 01 and 02 write
    (``fig1_view_dependency_summary``, ``fig1_top1_whole_vs_crop``, ``fig2_class_bias`` CSVs); a claim whose
    tables are absent is left out.

    - *view dependency* holds when an object's class is the teacher's top-1 more often on its own crop than on
      the whole image, and the max over some patch grid has a higher mAP than the whole image;
    - *class bias* holds when the teacher's top-1 share over the ground-truth share of some class is >= 2 and of
      another <= 0.5 (over-predicted and under-predicted classes), or some class is never top-1.
    """
    d = Path(tables_dir)
    out: list[str] = []
    summary, top1, bias = (d / f"{n}.csv" for n in ("fig1_view_dependency_summary", "fig1_top1_whole_vs_crop",
                                                     "fig2_class_bias"))
    if summary.exists() and top1.exists():
        s, t = pd.read_csv(summary), pd.read_csv(top1).iloc[0]
        whole, best = s.loc[s["grid"] == 1].iloc[0], s.loc[s["mAP"].idxmax()]
        holds = t["own_crop"] > t["whole_image"] and best["mAP"] > whole["mAP"]
        out.append(f"- *view dependency* (notebook 01, {int(t['objects'])} objects) "
                   f"{'holds' if holds else 'does not hold'}: an object's class is the teacher's top-1 on its own "
                   f"crop {t['own_crop']:.1f} % of the time and on the whole image {t['whole_image']:.1f} % (at most "
                   f"{t['whole_image_bound']:.1f} % possible there); the max over {best['view']} scores mAP "
                   f"{best['mAP']:.1f} against {whole['mAP']:.1f} for the whole image.")
    if bias.exists():
        b = pd.read_csv(bias)
        never = b.loc[b["never_top1"].astype(bool), "class"].tolist()
        ratio = b.set_index("class")["top1_over_gt"]
        hi, lo = ratio.idxmax(), ratio.idxmin()
        holds = bool(never) or (ratio.max() >= 2 and ratio.min() <= 0.5)
        est = b.loc[~b["never_top1"].astype(bool), "mean_top1_prob"]
        out.append(f"- *class bias* (notebook 02) {'holds' if holds else 'does not hold'}: the teacher's share of "
                   f"top-1 predictions over the ground-truth share ranges from {ratio[lo]:.1f} ({lo}) to "
                   f"{ratio[hi]:.1f} ({hi}); {len(never)} class(es) never top-1"
                   + (f" ({', '.join(never)})" if never else "")
                   + f"; CCD's statistic, the mean top-1 probability per class, ranges {est.min():.1f}-{est.max():.1f} %.")
    return out
