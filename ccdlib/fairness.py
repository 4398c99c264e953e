"""A fair comparison (docs/method.md §6a, §7): every verdict under every selection rule, convergence of every trained
row, and the verdicts' robustness to the step budget.

- :func:`claims_by_rule` -- each claim's paired difference and verdict under ``oracle``, ``last``, ``gt_free`` and
  ``few_label`` (:mod:`ccdlib.selection`); :func:`claim_verdicts` folds them: a claim *holds* only if it holds under
  every label-free rule; :func:`claims_by_rule_paragraph` says so in words.
- :func:`convergence_table` -- per trained row x protocol x seed: best and last test mAP, the step of the best,
  and a note, measured, where the last checkpoint is more than ``tol`` below the best.
- :func:`scoring_table` -- each row's seed-averaged mAP under sigmoid, softmax and its reference scoring.
- :func:`budget_claims` -- :func:`claims_by_rule` at several step budgets.
- :func:`cdul_alignment_pick` -- whether a rule picked CDUL's checkpoint before its first alignment, and the
  same rule among the post-alignment checkpoints.
- :func:`generalisation_table` -- per row: train mAP against its own labels, against the truth, and test mAP.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .selection import RULE_KEYS, RULES
from .tables import CLAIMS, SeedRun, _method_key, claims_table, method_label

__all__ = ["LABEL_FREE_RULES", "claims_by_rule", "claim_verdicts", "claims_by_rule_paragraph", "convergence_table",
           "warmup_mechanism_row", "alignment_mechanism_row",
           "scoring_table", "budget_claims", "generalisation_table", "cdul_alignment_pick",
           "cdul_alignment_picks", "cdul_alignment_note"]

#: The rules that read no label at selection time; a claim holds only if it holds under each of them.
LABEL_FREE_RULES = ("last", "gt_free", "few_label")
#: What each rule reads to pick the checkpoint.
RULE_READS = {"oracle": "test labels (the papers' practice)", "last": "nothing",
              "gt_free": "nothing (train mAP vs pseudo-labels)", "few_label": "k labelled training images per class"}


def claims_by_rule(runs: Iterable[SeedRun], labels: Mapping[str, np.ndarray], *, rules: Sequence[str] = RULES,
                   claims: Sequence[tuple[str, str, str]] = CLAIMS, n_resamples: int = 2000,
                   confidence: float = 0.95, seed: int = 0, cache_dir: str | Path | None = None) -> pd.DataFrame:
    """:func:`ccdlib.tables.claims.claims_table` under each selection rule (report names, :data:`ccdlib.selection.RULES`),
    stacked: ``rule, uses_test_labels, reads`` then its columns. Rules a run did not record (``few_label`` without
    a few-label split) are skipped."""
    runs = list(runs)
    parts = []
    for rule in rules:
        key = RULE_KEYS[rule]
        if not any(key in r.result["selected"] for r in runs):
            continue
        t = claims_table(runs, labels, rule=key, claims=claims, n_resamples=n_resamples, confidence=confidence,
                         seed=seed, cache_dir=cache_dir)
        t.insert(0, "reads", RULE_READS[rule])
        t.insert(0, "uses_test_labels", rule == "oracle")
        t.insert(0, "rule", rule)
        parts.append(t)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def claim_verdicts(by_rule: pd.DataFrame) -> pd.DataFrame:
    """One row per (protocol, claim): the verdict under each rule (columns named by rule) and ``verdict``:
    ``holds`` / ``reversed`` when every label-free rule present says so, ``unresolved`` when none resolves it,
    else ``depends on the rule``; ``oracle_agrees`` whether the test-label rule gives the same."""
    if by_rule.empty:
        return pd.DataFrame()
    wide = by_rule.pivot_table(index=["protocol", "claim"], columns="rule", values="verdict", aggfunc="first",
                               sort=False).reset_index()
    free = [r for r in LABEL_FREE_RULES if r in wide.columns]

    def fold(row: pd.Series) -> str:
        vs = {row[r] for r in free}
        if len(vs) == 1:
            return vs.pop()
        return "unresolved" if vs <= {"unresolved"} else "depends on the rule"
    wide["verdict"] = wide.apply(fold, axis=1)
    if "oracle" in wide.columns:
        wide["oracle_agrees"] = wide["oracle"] == wide["verdict"]
    return wide


def claims_by_rule_paragraph(by_rule: pd.DataFrame, *, context: str = "") -> str:
    """Markdown, written from :func:`claims_by_rule`: per protocol and claim, the rules under which it holds, is
    reversed or unresolved, and the label-free verdict; ``context`` (teacher, data, budget, seeds) is quoted."""
    if by_rule.empty:
        return ""
    v = claim_verdicts(by_rule)
    lines = [f"**What holds here, under every model-selection rule** ({context}; a claim holds only if it holds "
             f"under every label-free rule: {', '.join(r for r in LABEL_FREE_RULES if r in by_rule['rule'].unique())}"
             f"; `oracle` reads the test labels):"]
    for protocol, part in v.groupby("protocol", sort=False):
        said = []
        for _, r in part.iterrows():
            rows = by_rule[(by_rule["protocol"] == protocol) & (by_rule["claim"] == r["claim"])]
            per = ", ".join(f"{x['rule']} {x['diff']:+.1f} [{x['diff_lo']:+.1f}, {x['diff_hi']:+.1f}] {x['verdict']}"
                            for _, x in rows.iterrows())
            said.append(f"{r['claim']}: **{r['verdict']}** ({per})")
        lines.append(f"- *{protocol} stamps*: " + "; ".join(said) + ".")
    return "\n".join(lines) + "\n"


def _row_label(result: Mapping[str, Any]) -> str:
    return method_label(_method_key(result))


def convergence_table(runs: Iterable[SeedRun], *, tol: float = 1.0) -> pd.DataFrame:
    """Per trained run (row x protocol x seed): ``steps`` (the budget), ``checkpoints``, ``best_mAP`` and
    ``best_step`` (the best test mAP over the checkpoints, under the run's scoring), ``last_mAP``,
    ``last_minus_best``, ``converged`` (``last >= best - tol``) and a ``note``, measured: for a row that falls, by how
    much after which step, and the same under the other scoring (sigmoid vs softmax) -- whether the fall is the
    scoring's or the training's."""
    rows = []
    for r in runs:
        res = r.result
        hist = res.get("history") or []
        if not hist:
            continue
        maps = np.array([h["test_mAP"] for h in hist], dtype=float)
        steps = [h.get("step", h["epoch"]) for h in hist]
        b = int(np.nanargmax(maps))
        best, last = float(maps[b]), float(maps[-1])
        scoring = (res.get("info") or {}).get("scoring", "sigmoid")
        other = "softmax" if scoring == "sigmoid" else "sigmoid"
        note = ""
        if last < best - tol:
            om = np.array([h.get(f"test_mAP_{other}", np.nan) for h in hist], dtype=float)
            note = (f"falls {best - last:.1f} mAP after step {steps[b]} ({scoring} scoring)")
            if np.isfinite(om).all():
                ob = int(np.nanargmax(om))
                note += (f"; under {other} scoring best {om[ob]:.1f} at step {steps[ob]}, last {om[-1]:.1f} "
                         f"(last - best {om[-1] - om[ob]:+.1f})")
            tm = [h.get("train_mAP_eval") for h in hist]
            if tm[b] is not None and tm[-1] is not None:
                note += (f"; train mAP against its own pseudo-labels {tm[b]:.1f} at the best, {tm[-1]:.1f} at the "
                         f"last (fitting the labels, not the test objects)" if tm[-1] >= tm[b] else "")
        rows.append({"protocol": r.protocol, "row": _row_label(res), "seed": r.seed,
                     "steps": (res.get("info") or {}).get("schedule", {}).get("steps", steps[-1]),
                     "checkpoints": len(hist), "scoring": scoring, "best_mAP": best, "best_step": steps[b],
                     "last_mAP": last, "last_minus_best": last - best, "converged": bool(last >= best - tol),
                     "note": note})
    return pd.DataFrame(rows, columns=["protocol", "row", "seed", "steps", "checkpoints", "scoring", "best_mAP",
                                       "best_step", "last_mAP", "last_minus_best", "converged", "note"])


def scoring_table(runs: Iterable[SeedRun], labels: Mapping[str, np.ndarray], *, rule: str = "few_label"
                  ) -> pd.DataFrame:
    """Per protocol and trained row, the mAP of the seed-averaged test probabilities of the checkpoint ``rule``
    picked (report name), under ``sigmoid``, ``softmax`` and the row's ``reference`` scoring (what the main table
    uses)."""
    from .metrics import mean_average_precision
    from .stats import seed_averaged_scores
    key = RULE_KEYS.get(rule, rule)
    groups: dict[tuple[str, str], list[SeedRun]] = {}
    for r in runs:
        if key in r.result["selected"] and f"{key}__sigmoid" in r.scores:
            groups.setdefault((r.protocol, _row_label(r.result)), []).append(r)
    rows = []
    for (protocol, row), rs in groups.items():
        y = np.asarray(labels[protocol])
        out = {"protocol": protocol, "row": row, "rule": rule, "n_seeds": len(rs),
               "reference": (rs[0].result.get("info") or {}).get("scoring", "sigmoid")}
        for s in ("sigmoid", "softmax"):
            out[f"mAP_{s}"] = mean_average_precision(seed_averaged_scores([x.scores[f"{key}__{s}"] for x in rs]), y).map
        out["mAP_reference"] = out[f"mAP_{out['reference']}"]
        rows.append(out)
    return pd.DataFrame(rows, columns=["protocol", "row", "rule", "n_seeds", "reference", "mAP_sigmoid",
                                       "mAP_softmax", "mAP_reference"])


def budget_claims(runs_by_budget: Mapping[str, Iterable[SeedRun]], labels: Mapping[str, np.ndarray], *,
                  steps: Mapping[str, int] | None = None, **kw: Any) -> pd.DataFrame:
    """:func:`claims_by_rule` for each budget (``{"0.5x": runs, "1x": runs, ...}``), stacked with ``budget`` and
    ``steps`` columns."""
    parts = []
    for name, rs in runs_by_budget.items():
        t = claims_by_rule(rs, labels, **kw)
        if t.empty:
            continue
        t.insert(0, "steps", (steps or {}).get(name, np.nan))
        t.insert(0, "budget", name)
        parts.append(t)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _final(result: Mapping[str, Any], rule: str) -> float:
    sel = result["selected"].get(rule)
    return float("nan") if sel is None or sel["metrics"].get("mAP") is None else float(sel["metrics"]["mAP"])


def warmup_mechanism_row(result: Mapping[str, Any], *, warmup_steps: int, seed: int) -> dict[str, Any]:
    """One row of the warm-up mechanism table from a finished CCD run: ``warmup_steps`` asked,
    ``steps_before_update`` run, the warm-up student's test mAP, the CAM-crop (local) pseudo-labels' mAP on the
    training split, the crop diagnostics (``crops_on_own_object``, ``class_precision``), tau, its checks, classes
    and crops per image, and the final test mAP at the ``last`` and ``few_label`` checkpoints."""
    info = result.get("info") or {}
    crops = info.get("crop_summary") or {}
    return {"seed": seed, "warmup_steps": warmup_steps, "steps_before_update": info.get("steps_before_update"),
            "warmup_test_mAP": info.get("warmup_test_mAP"),
            "local_pseudo_mAP": (result.get("pseudo_label_quality") or {}).get("ccd_local", {}).get("mAP"),
            "updated_pseudo_mAP": (result.get("pseudo_label_quality") or {}).get("ccd_updated", {}).get("mAP"),
            "crops_on_own_object": crops.get("on_own_object"), "class_precision": crops.get("class_precision"),
            "tau": info.get("tau"), "tau_checks": info.get("tau_checks"),
            "classes_per_image": info.get("classes_per_image"), "crops_per_image": info.get("crops_per_image"),
            "final_mAP_last": _final(result, "last"), "final_mAP_few_label": _final(result, "few_label")}


def alignment_mechanism_row(result: Mapping[str, Any], *, ga_every_steps: int | None, seed: int) -> dict[str, Any]:
    """One row of the CDUL alignment table from a finished CDUL run: the cadence (``None``: alignment off), the
    alignments made, the final pseudo-labels' mAP on the training split, the final test mAP (last, few-label)."""
    info = result.get("info") or {}
    q = result.get("pseudo_label_quality") or {}
    labels = q.get("cdul_final", q.get("cdul_initial", {}))
    return {"seed": seed, "ga_every_steps": ga_every_steps if ga_every_steps is not None else "off",
            "ga_step": (result.get("config") or {}).get("cdul", {}).get("ga_step"),
            "alignments": int(info.get("alignments") or 0),
            "labels_mAP_initial": q.get("cdul_initial", {}).get("mAP"), "labels_mAP": labels.get("mAP"),
            "label_change_mean": info.get("label_change_mean", 0.0), "label_change_max": info.get("label_change_max", 0.0),
            "final_mAP_last": _final(result, "last"), "final_mAP_few_label": _final(result, "few_label"),
            **{k: v for k, v in cdul_alignment_pick(result).items() if k.startswith(("first_", "post_", "pre_"))}}


def cdul_alignment_pick(result: Mapping[str, Any], *, rule: str = "few_label") -> dict[str, Any]:
    """Did ``rule`` pick a CDUL checkpoint before its first gradient alignment (issue 22 §3)? From a finished CDUL
    run: ``picked_step`` and ``picked_mAP``; ``first_alignment_step`` (the end of the first aligned pass: later
    checkpoints have trained on aligned labels); ``pre_alignment`` (the pick precedes it, so the row is CDUL without
    alignment in all but name); ``post_rule_step`` / ``post_rule_mAP``: the same rule among the post-alignment
    checkpoints only (``few_label``: best few-label validation mAP; ``last``: the last; label-free either way); and
    ``post_best_mAP``: the best post-alignment test mAP (reads the test labels: an upper bound, not a result)."""
    info, hist = result.get("info") or {}, result.get("history") or []
    aligned = info.get("aligned_steps") or []
    sel = result["selected"].get(rule)
    nan = float("nan")
    out = {"rule": rule, "picked_step": sel["step"] if sel else None, "picked_mAP": _final(result, rule) if sel else nan,
           "first_alignment_step": min(aligned) if aligned else None, "pre_alignment": False,
           "post_rule_step": None, "post_rule_mAP": nan, "post_best_mAP": nan}
    if not aligned or not hist or sel is None:
        return out
    post = [h for h in hist if h["step"] >= min(aligned)]
    out["pre_alignment"] = bool(sel["step"] < min(aligned))
    if post:
        key = (lambda h: h.get("val_mAP", nan)) if rule == "few_label" else (lambda h: h["step"])
        vals = [key(h) for h in post]
        pick = post[int(np.nanargmax(vals))] if np.isfinite(vals).any() else post[-1]
        out.update(post_rule_step=pick["step"], post_rule_mAP=pick["test_mAP"],
                   post_best_mAP=max(h["test_mAP"] for h in post))
    return out


def generalisation_table(runs: Iterable[SeedRun], *, rule: str = "few_label") -> pd.DataFrame:
    """Where labels stop turning into test mAP (issue 22 §5): per protocol and trained row, at the checkpoint
    ``rule`` picks, the means over seeds of ``train_vs_own_labels`` (the student's eval-mode mAP on its training
    images against its own pseudo-labels thresholded at 0.5: how well it fits them), ``train_vs_truth`` (the same
    images against their ground truth, which no rule reads), ``test_mAP`` and ``labels_vs_truth`` (the pseudo-labels
    it trained on last, against the truth), with ``n_seeds``. ``train_vs_truth - test_mAP`` is the student's own
    generalisation gap; ``labels_vs_truth - train_vs_truth`` what fitting the labels left of them."""
    from .tables.stages import STAGES
    acc: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        res = r.result
        hist = res.get("history") or []
        if not hist or rule not in res["selected"]:
            continue
        h = hist[res["selected"][rule]["epoch"]]
        quality = res.get("pseudo_label_quality") or {}
        final = [s for s in STAGES if s in quality]
        labels_map = quality[final[-1]]["mAP"] if final else (100.0 if res["method"] == "supervised" else np.nan)
        acc.setdefault((r.protocol, _row_label(res)), []).append(
            {"train_vs_own_labels": h.get("train_mAP_eval", np.nan), "train_vs_truth": h.get("train_mAP_truth", np.nan),
             "test_mAP": h["test_mAP"], "labels_vs_truth": labels_map})
    rows = []
    for (protocol, row), vals in acc.items():
        df = pd.DataFrame(vals)
        rows.append({"protocol": protocol, "row": row, "n_seeds": len(vals), "rule": rule,
                     **{k: float(df[k].mean()) for k in df.columns}})
    return pd.DataFrame(rows, columns=["protocol", "row", "n_seeds", "rule", "labels_vs_truth", "train_vs_own_labels",
                                       "train_vs_truth", "test_mAP"])


def cdul_alignment_picks(runs: Iterable[SeedRun], *, rule: str = "few_label") -> pd.DataFrame:
    """:func:`cdul_alignment_pick` of every CDUL run that aligns (the main table's "CDUL" and its BCE analogue), one
    row per protocol, row and seed."""
    rows = []
    for r in runs:
        res = r.result
        if res["method"] != "cdul" or not (res.get("info") or {}).get("aligned_steps"):
            continue
        rows.append({"protocol": r.protocol, "row": _row_label(res), "seed": r.seed, **cdul_alignment_pick(res, rule=rule)})
    return pd.DataFrame(rows)


def cdul_alignment_note(picks: pd.DataFrame, *, row: str = "CDUL") -> str:
    """A caption sentence from :func:`cdul_alignment_picks`: in how many seeds per protocol the rule picked ``row``'s
    checkpoint before its first alignment, and what the same rule gives among the post-alignment checkpoints."""
    if picks.empty or not (picks["row"] == row).any():
        return ""
    parts = []
    for protocol, g in picks[picks["row"] == row].groupby("protocol", sort=False):
        parts.append(f"{protocol}: {int(g['pre_alignment'].sum())} of {len(g)} seeds before its first alignment "
                     f"(step {int(g['first_alignment_step'].iloc[0])}), mean {g['picked_mAP'].mean():.1f} mAP; the "
                     f"same rule among its post-alignment checkpoints gives {g['post_rule_mAP'].mean():.1f}")
    rule = picks["rule"].iloc[0]
    return (f"The {row} row is the method as published (with gradient alignment); its {rule} checkpoint lies "
            + "; ".join(parts) + " (table cdul_alignment_picks).")
