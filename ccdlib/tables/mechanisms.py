"""Issue 22's tables: CCD's view controls against CCD, and the path from CDUL to CCD one switch at a time, each row
over training seeds with a paired-bootstrap interval of seed-averaged test scores (:mod:`ccdlib.stats`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .seeded import SeedRun


def _stat(runs: Sequence[SeedRun], rule: str, fn) -> float:
    vals = [fn(r.result, rule) for r in runs]
    vals = [v for v in vals if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def _quality(stage: str):
    return lambda res, rule: (res.get("pseudo_label_quality") or {}).get(stage, {}).get("mAP")


def _info(key: str):
    return lambda res, rule: (res.get("info") or {}).get(key)


def _seeded(groups: Sequence[tuple[str, Sequence[SeedRun]]], labels: np.ndarray, rule: str, *,
            pairs: Sequence[tuple[int, int]], n_resamples: int, confidence: float, seed: int,
            cache_dir: str | Path | None) -> tuple[list[dict], list[Any]]:
    """Per group: seeds, mean ± sd and seed-averaged mAP; per ``(a, b)`` index pair the paired difference
    ``mAP(a) - mAP(b)`` of the seed-averaged scores (seeds both groups ran)."""
    from ..metrics import mean_average_precision
    from ..stats import paired_bootstrap_difference, seed_averaged_scores, seed_mean_sd
    y = np.asarray(labels)
    rows = []
    for key, runs in groups:
        m, sd, n = seed_mean_sd([r.result["selected"][rule]["metrics"]["mAP"] for r in runs])
        avg = seed_averaged_scores([r.scores[rule] for r in runs]) if runs else None
        rows.append({"key": key, "n_seeds": n, "mAP_mean": m, "mAP_sd": sd,
                     "mAP": mean_average_precision(avg, y).map if avg is not None else float("nan")})
    diffs = []
    for a, b in pairs:
        ra, rb = {r.seed: r for r in groups[a][1]}, {r.seed: r for r in groups[b][1]}
        common = sorted(set(ra) & set(rb))
        if not common:
            diffs.append(None)
            continue
        sa = seed_averaged_scores([ra[s].scores[rule] for s in common])
        sb = seed_averaged_scores([rb[s].scores[rule] for s in common])
        diffs.append(paired_bootstrap_difference(sa, sb, y, n_resamples=n_resamples, confidence=confidence,
                                                 seed=seed, cache_dir=cache_dir))
    return rows, diffs


def view_controls_table(runs: Mapping[str, Sequence[SeedRun]], labels: Mapping[str, np.ndarray], *,
                        controls: Mapping[str, tuple[str, str, Any]], rule: str = "few_label", reference: str = "ccd",
                        n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0,
                        cache_dir: str | Path | None = None) -> pd.DataFrame:
    """One row per (protocol, control): ``control`` (its label), ``controls`` (placement / selection / oracle),
    ``protocol``, ``n_seeds``, ``local_label_mAP`` (the pooled local labels against the training truth, mean over
    seeds), ``updated_label_mAP`` (after the mix), ``views_per_image``, ``classes_per_image``, ``mAP`` (seed-averaged
    test scores, checkpoint ``rule``), ``mAP_mean``, ``mAP_sd`` and ``diff_vs_ccd`` = ``mAP(control) - mAP(CCD)``
    with its paired-bootstrap interval ``diff_lo``, ``diff_hi`` (same seeds). ``runs``: ``{control key: runs}``."""
    out = []
    protocols = list(dict.fromkeys(r.protocol for rs in runs.values() for r in rs))
    keys = [k for k in controls if k in runs]
    for protocol in protocols:
        groups = [(k, [r for r in runs[k] if r.protocol == protocol]) for k in keys]
        ref = keys.index(reference)
        rows, diffs = _seeded(groups, labels[protocol], rule, pairs=[(i, ref) for i in range(len(groups))],
                              n_resamples=n_resamples, confidence=confidence, seed=seed, cache_dir=cache_dir)
        for (k, rs), row, d in zip(groups, rows, diffs):
            if not rs:
                continue
            same = k == reference
            out.append({"control": controls[k][0], "controls": controls[k][1], "key": k, "protocol": protocol,
                        "n_seeds": row["n_seeds"], "local_label_mAP": _stat(rs, rule, _quality("ccd_local")),
                        "updated_label_mAP": _stat(rs, rule, _quality("ccd_updated")),
                        "views_per_image": _stat(rs, rule, _info("crops_per_image")),
                        "classes_per_image": _stat(rs, rule, _info("classes_per_image")),
                        "mAP": row["mAP"], "mAP_mean": row["mAP_mean"], "mAP_sd": row["mAP_sd"],
                        "diff_vs_ccd": 0.0 if same else d.estimate, "diff_lo": float("nan") if same else d.lo,
                        "diff_hi": float("nan") if same else d.hi})
    return pd.DataFrame(out)


def path_table(runs: Mapping[str, Sequence[SeedRun]], labels: Mapping[str, np.ndarray], *,
               path: Sequence[tuple[str, str, Any, Any, Any]], rule: str = "few_label", n_resamples: int = 2000,
               confidence: float = 0.95, seed: int = 0, cache_dir: str | Path | None = None) -> pd.DataFrame:
    """The path from the first step (CDUL) to the last (CCD), one switch per step: ``step`` (0, 1, ...), ``key``,
    ``switch``, ``protocol``, ``n_seeds``, ``mAP`` (seed-averaged, checkpoint ``rule``), ``mAP_mean``, ``mAP_sd``,
    ``step_diff`` = ``mAP(step) - mAP(step - 1)`` with its paired interval ``diff_lo``, ``diff_hi`` (NaN at step 0),
    and ``from_start`` = ``mAP(step) - mAP(step 0)`` with ``from_start_lo``, ``from_start_hi``. The point estimates
    are plain differences of seed-averaged mAPs, so with the same seeds at every step the step differences sum
    exactly to the last row's ``from_start``: the whole gap."""
    out = []
    protocols = list(dict.fromkeys(r.protocol for rs in runs.values() for r in rs))
    keys = [p[0] for p in path if p[0] in runs]
    switch = {p[0]: p[1] for p in path}
    for protocol in protocols:
        groups = [(k, [r for r in runs[k] if r.protocol == protocol]) for k in keys]
        n = len(groups)
        pairs = [(i, i - 1) for i in range(1, n)] + [(i, 0) for i in range(1, n)]
        rows, diffs = _seeded(groups, labels[protocol], rule, pairs=pairs, n_resamples=n_resamples,
                              confidence=confidence, seed=seed, cache_dir=cache_dir)
        step_d, start_d = [None] + diffs[:n - 1], [None] + diffs[n - 1:]
        for i, ((k, rs), row) in enumerate(zip(groups, rows)):
            nan = float("nan")
            sd, fd = step_d[i], start_d[i]
            out.append({"step": i, "key": k, "switch": switch[k], "protocol": protocol, "n_seeds": row["n_seeds"],
                        "mAP": row["mAP"], "mAP_mean": row["mAP_mean"], "mAP_sd": row["mAP_sd"],
                        "step_diff": nan if sd is None else sd.estimate, "diff_lo": nan if sd is None else sd.lo,
                        "diff_hi": nan if sd is None else sd.hi,
                        "from_start": 0.0 if i == 0 else (nan if fd is None else fd.estimate),
                        "from_start_lo": nan if fd is None else fd.lo, "from_start_hi": nan if fd is None else fd.hi})
    return pd.DataFrame(out)


def _signed(d: float, lo: float, hi: float) -> str:
    return f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]"


def _seeds(n: float) -> str:
    return f"{int(n)} seed" + ("" if int(n) == 1 else "s")


def _verdict(lo: float, hi: float, up: str = "raises", down: str = "lowers") -> str:
    return up if lo > 0 else down if hi < 0 else "does not resolvably change"


def mechanism_paragraph(controls: pd.DataFrame, path: pd.DataFrame) -> str:
    """The mechanism sentences, written from the two tables' rows (Markdown; one bullet per row, nothing else):
    what each view control does to CCD's test mAP (paired interval, seeds) with its local labels' mAP, and what
    each switch of the CDUL -> CCD path carries of the whole gap."""
    out = []
    for protocol in dict.fromkeys([*controls.get("protocol", []), *path.get("protocol", [])]):
        vc = controls[controls["protocol"] == protocol] if len(controls) else controls
        if len(vc):
            ref = vc[vc["key"] == "ccd"].iloc[0]
            out.append("")   # a blank line before and after a header: its own paragraph in Markdown
            out.append(f"**View controls, {protocol} stamps** ({_seeds(ref['n_seeds'])}; CCD {ref['mAP']:.1f} mAP, "
                       f"its local labels {ref['local_label_mAP']:.1f} mAP on the training images, "
                       f"{ref['views_per_image']:.1f} views per image). Control - CCD, test mAP [95 % paired CI]:")
            out.append("")
            for _, r in vc[vc["key"] != "ccd"].iterrows():
                out.append(f"- {r['control']} ({r['controls']}; {r['views_per_image']:.1f} views per image, local "
                           f"labels {r['local_label_mAP']:.1f}): {_signed(r['diff_vs_ccd'], r['diff_lo'], r['diff_hi'])}"
                           f", it {_verdict(r['diff_lo'], r['diff_hi'])} the student's mAP.")
        pa = path[path["protocol"] == protocol] if len(path) else path
        if len(pa) > 1:
            first, last = pa.iloc[0], pa.iloc[-1]
            gap = last["from_start"]
            resolved = last["from_start_lo"] > 0 or last["from_start_hi"] < 0
            out.append("")   # a blank line before and after a header: its own paragraph in Markdown
            out.append(f"**From CDUL to CCD, {protocol} stamps** ({_seeds(last['n_seeds'])}): {first['mAP']:.1f} -> "
                       f"{last['mAP']:.1f} mAP, a gap of {_signed(gap, last['from_start_lo'], last['from_start_hi'])}. "
                       "Each switch, step - previous step [95 % paired CI]" +
                       (" and its share of the gap:" if resolved else " (the gap itself is not resolved, so no "
                        "shares):"))
            out.append("")
            for _, r in pa.iloc[1:].iterrows():
                share = f" ({100 * r['step_diff'] / gap:.0f} % of the gap)" if resolved else ""
                out.append(f"- {r['switch']}: {_signed(r['step_diff'], r['diff_lo'], r['diff_hi'])}{share}; it "
                           f"{_verdict(r['diff_lo'], r['diff_hi'])} the mAP.")
    return "\n".join(out).strip("\n") + "\n"


#: Short names of the controls and the path's switches for :func:`mechanism_summary`.
SHORT = {"random_boxes": "the same boxes at random positions", "tiles": "3x3 tiles", "true_classes": "the true classes",
         "random_classes": "as many random classes", "top_k": "the top-k classes", "all_classes": "every class",
         "gt_boxes": "ground-truth boxes", "loss": "loss", "batch": "mini-batch", "initial_labels": "initial labels",
         "label_update": "label update", "consistency": "consistency"}


def mechanism_summary(controls: pd.DataFrame, path: pd.DataFrame) -> str:
    """One compact paragraph of both tables for the project README (``tests/test_readme_numbers.py`` regenerates it
    from the committed CSVs and finds it there): per protocol, control - CCD and each path step, ``+d [lo, hi]``."""
    out = []
    for protocol in dict.fromkeys([*controls.get("protocol", []), *path.get("protocol", [])]):
        vc = controls[(controls["protocol"] == protocol) & (controls["key"] != "ccd")] if len(controls) else controls
        if len(vc):
            n = int(vc["n_seeds"].min())
            out.append(f"{protocol} stamps ({_seeds(n)}), control - CCD: " + "; ".join(
                f"{SHORT.get(r['key'], r['key'])} {_signed(r['diff_vs_ccd'], r['diff_lo'], r['diff_hi'])}"
                for _, r in vc.iterrows()) + ".")
        pa = path[path["protocol"] == protocol] if len(path) else path
        if len(pa) > 1:
            last = pa.iloc[-1]
            out.append(f"{protocol} stamps ({_seeds(last['n_seeds'])}), CDUL {pa.iloc[0]['mAP']:.1f} -> CCD "
                       f"{last['mAP']:.1f}, step by step: " + "; ".join(
                           f"{SHORT.get(r['key'], r['key'])} {_signed(r['step_diff'], r['diff_lo'], r['diff_hi'])}"
                           for _, r in pa.iloc[1:].iterrows()) +
                       f" (whole gap {_signed(last['from_start'], last['from_start_lo'], last['from_start_hi'])}).")
    return " ".join(out)
