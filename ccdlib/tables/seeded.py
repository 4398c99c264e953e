"""The main table over training seeds, with bootstrap intervals (issue 12): :class:`SeedRun` records in, means,
standard deviations and intervals out, and their readable text layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .labels import METHOD_LABELS, RULE_LABELS, _ground_truth_used, _method_key, method_label


@dataclass(frozen=True, eq=False)
class SeedRun:
    """One finished run of the multi-seed study: its stamp ``protocol`` (``DataConfig.stamps``; any label of the
    test split it was scored on), training ``seed``, the run's JSON ``result`` (:func:`ccdlib.runs.run`) and its
    per-rule test probabilities ``scores`` (:func:`ccdlib.run_store.load_test_scores`: ``{rule: (N_test, C)}``)."""

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
    from ..stats import bootstrap_map, paired_bootstrap_difference, seed_averaged_scores, seed_mean_sd
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
    from ..metrics import mean_average_precision
    from ..stats import bootstrap_map, paired_bootstrap_difference, seed_averaged_scores, seed_mean_sd
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
