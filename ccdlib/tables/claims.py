"""The papers' claims, tested: which method beats which over seeds (a paired-bootstrap verdict per claim), the
paragraph that says so, and the view-dependency and class-bias claims read from notebooks 01 and 02.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .labels import method_label
from .seeded import SeedRun, _seed_groups

#: The papers' claims the main table can test: (claim, better method key, worse method key).
CLAIMS: tuple[tuple[str, str, str], ...] = (
    ("local views beat the global view (CCD's student vs the student on the teacher's global labels)", "ccd",
     "teacher_global"),
    ("CDUL's local tiles beat the global view (CDUL's student vs the student on global labels)", "cdul", "teacher_global"),
    ("CCD beats CDUL", "ccd", "cdul"),
    ("CDUL's gradient alignment improves CDUL (CDUL vs CDUL without it)", "cdul", "cdul_no_ga"),
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
    from ..metrics import mean_average_precision
    from ..stats import paired_bootstrap_difference, seed_averaged_scores
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
