"""Pseudo-label quality after each stage of the pipeline (method.md §9), overall and per class, and the
stages' labels themselves (recomputed from the teacher, or read beside a run's ``result.json``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .labels import MAIN_METRICS, method_label

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
    from ..metrics import average_precision_per_class
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

    from ..config import CCDConfig, CDULConfig
    from ..pseudolabels import ccd_initial_pseudo_labels, cdul_initial_pseudo_labels
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
