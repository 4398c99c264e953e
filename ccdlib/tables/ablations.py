"""The one-override CCD ablations (method.md §9): the grid of runs and their table against the default run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd


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
    from ..config import CCDConfig
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
