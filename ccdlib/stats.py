"""Uncertainty of test metrics: bootstrap over test images, paired differences, spread over seeds.

Agarwal et al. (NeurIPS 2021, ``rliable``) is the precedent: every number comes with its interval and says how
many runs it averages. Two sources of variation are kept apart:

- **test images** -- :func:`bootstrap_map` resamples the test images with replacement and recomputes mAP
  exactly as :func:`ccdlib.metrics.mean_average_precision` does (per-class average precision as sklearn computes
  it, a class without a positive *in the resample* excluded from the mean); :func:`paired_bootstrap_difference`
  recomputes two methods' mAP on the *same* resample and takes the difference, so what the two share (the hard
  images) cancels. Both are :func:`scipy.stats.bootstrap` (BCa interval by default: the resampled mAP is
  biased upward, see :func:`bootstrap_map`; percentile on request), seeded;
- **training seeds** -- :func:`seed_mean_sd` (mean and sample standard deviation of a metric over seeds) and
  :func:`seed_averaged_scores` (mean of the seeds' ``(N_test, C)`` probabilities: the ensemble whose mAP and
  bootstrap interval a table reports).

A resample is represented by how often each test image was drawn, ``counts (B, N)``: a bootstrap resample with
repeated images is the test set with integer sample weights, and a repeated image's copies tie in score, so
:func:`resampled_average_precision` evaluates sklearn's tie-aware average precision for all ``B`` resamples of
a class at once (one sort per class; 2,000 resamples of 800 images x 16 classes take well under a second of
arithmetic).

With ``cache_dir``, :func:`bootstrap_map` and :func:`paired_bootstrap_difference` keep each interval on disk
(namespace ``bootstrap``), keyed by the SHA-256 of the scores and labels, every argument and the numpy and scipy
versions: a warm ``make reproduce`` reads its ~140 distinct intervals back (~100 s of its ~4.5 min), and a table
that asks twice for the same pair (a claim under two rules that pick the same checkpoints) computes it once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["Interval", "resample_counts", "resampled_average_precision", "resampled_map", "bootstrap_map",
           "paired_bootstrap_difference", "bootstrap_metric", "seed_mean_sd", "seed_averaged_scores",
           "difference_half_width_by_n"]


@dataclass(frozen=True, eq=False)
class Interval:
    """A point estimate with its bootstrap confidence interval.

    Attributes:
        estimate: the statistic on the full test set (x100 for mAP).
        lo, hi: the interval's bounds (``confidence``, two-sided).
        confidence: e.g. 0.95.
        n_resamples: bootstrap resamples drawn.
        n: test images resampled.
        method: ``"percentile"`` or ``"BCa"``.
        distribution: ``(n_resamples,)`` the statistic on every resample (read-only).
    """

    estimate: float
    lo: float
    hi: float
    confidence: float
    n_resamples: int
    n: int
    method: str
    distribution: np.ndarray

    @property
    def half_width(self) -> float:
        """``(hi - lo) / 2``: the "+-" of the interval."""
        return (self.hi - self.lo) / 2.0

    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0 (a resolved difference)."""
        return self.lo > 0 or self.hi < 0

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """``{prefix, prefix_lo, prefix_hi}`` (``prefix`` empty: ``estimate, lo, hi``)."""
        if not prefix:
            return {"estimate": self.estimate, "lo": self.lo, "hi": self.hi}
        return {prefix: self.estimate, f"{prefix}_lo": self.lo, f"{prefix}_hi": self.hi}


def _check_scores_labels(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim != 2 or s.shape != y.shape:
        raise ValueError(f"scores and labels must have the same (N, C) shape; got scores {s.shape}, labels {y.shape}")
    if s.shape[0] < 2:
        raise ValueError(f"need at least 2 test images to bootstrap, got {s.shape[0]}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must hold only 0 and 1")
    return s, y.astype(np.float64)


def resample_counts(indices: np.ndarray, n: int) -> np.ndarray:
    """How often each of ``n`` images occurs in each resample: ``indices (B, N') int`` -> ``counts (B, n)``."""
    idx = np.atleast_2d(np.asarray(indices, dtype=np.int64))
    b = idx.shape[0]
    flat = (idx + n * np.arange(b, dtype=np.int64)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def resampled_average_precision(scores: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-class average precision of ``B`` weighted copies of the test set: ``(B, C)``, a fraction (not x100).

    Args:
        scores: ``(N, C)`` any monotone scores.
        labels: ``(N, C)`` {0, 1}.
        counts: ``(B, N)`` non-negative weights; a bootstrap resample's draw counts (:func:`resample_counts`).

    Returns:
        ``(B, C)``: sklearn's ``average_precision_score(y, s, sample_weight=w)`` -- the sum over distinct score
        thresholds of the recall increase times the precision there (tied scores form one threshold) -- and NaN
        where a class has no (weighted) positive.
    """
    s, y = _check_scores_labels(scores, labels)
    w = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    if w.shape[1] != s.shape[0]:
        raise ValueError(f"counts must be (B, N={s.shape[0]}); got {w.shape}")
    out = np.empty((w.shape[0], s.shape[1]))
    for c in range(s.shape[1]):
        order = np.argsort(-s[:, c], kind="stable")
        sc, yc, wc = s[order, c], y[order, c], w[:, order]          # (N,), (N,), (B, N)
        ends = np.r_[sc[1:] != sc[:-1], True]                       # last image of each tied group
        tp = np.cumsum(wc * yc, axis=1)[:, ends]                    # (B, G) weighted true positives
        pp = np.cumsum(wc, axis=1)[:, ends]                         # (B, G) weighted predicted positives
        d_tp = np.diff(tp, axis=1, prepend=0.0)
        precision = np.divide(tp, pp, out=np.zeros_like(tp), where=pp > 0)
        n_pos = tp[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, c] = np.where(n_pos > 0, (d_tp * precision).sum(axis=1) / n_pos, np.nan)
    return out


def resampled_map(scores: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """mAP x100 of every resample, ``(B,)``: the mean AP over the classes with a positive in that resample
    (NaN when none has), as :func:`ccdlib.metrics.mean_average_precision` on the resampled images."""
    ap = resampled_average_precision(scores, labels, counts)
    valid = ~np.isnan(ap)
    n_valid = valid.sum(axis=1)
    total = np.where(valid, ap, 0.0).sum(axis=1)
    return np.where(n_valid > 0, 100.0 * total / np.maximum(n_valid, 1), np.nan)


def _bootstrap(statistic: Callable[[np.ndarray], np.ndarray], n: int, *, n_resamples: int, confidence: float,
               seed: int, method: str, batch: int | None) -> tuple[np.ndarray, float, float, str]:
    """scipy's bootstrap over the image indices ``0..n-1``; ``statistic(indices (B, n)) -> (B,)``."""
    from scipy.stats import bootstrap

    if n_resamples < 2:
        raise ValueError(f"n_resamples must be >= 2, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    methods = {"percentile": "percentile", "bca": "BCa"}
    if method.lower() not in methods:
        raise ValueError(f"method must be 'percentile' or 'BCa', got {method!r}")
    method = methods[method.lower()]

    def stat(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        idx = np.moveaxis(np.asarray(idx), axis, -1)
        flat = idx.reshape(-1, idx.shape[-1])
        return statistic(flat).reshape(idx.shape[:-1])

    import warnings
    with warnings.catch_warnings():          # a zero-width distribution (identical methods) is a valid answer
        warnings.simplefilter("ignore")
        res = bootstrap((np.arange(n),), stat, n_resamples=int(n_resamples), vectorized=True,
                        confidence_level=confidence, method=method, rng=np.random.default_rng(seed),
                        batch=batch)
    dist = np.asarray(res.bootstrap_distribution, dtype=np.float64)
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if method == "percentile" or not (math.isfinite(lo) and math.isfinite(hi)):
        alpha = (1.0 - confidence) / 2.0          # percentile interval, NaN resamples (no positive at all) dropped
        lo, hi = (float(v) for v in np.nanpercentile(dist, [100 * alpha, 100 * (1 - alpha)]))
        method = "percentile" if method == "percentile" else "percentile (BCa undefined)"
    dist.setflags(write=False)
    return dist, lo, hi, method


#: ``Interval.method`` values, by their code in a cached interval.
_METHOD_CODES = ("percentile", "BCa", "percentile (BCa undefined)")


def _cached_interval(cache_dir: str | Path | None, kind: str, arrays: Sequence[np.ndarray], params: dict[str, Any],
                     compute: Callable[[], Interval]) -> Interval:
    """``compute()``, or the same :class:`Interval` read back from ``<cache_dir>/bootstrap/<hash>.npy``.

    The key holds ``kind``, ``arrays`` (:func:`ccdlib.cache.stable_hash` digests each: SHA-256, shape, dtype),
    ``params`` and the numpy and scipy versions; the entry is ``[estimate, lo, hi, method code, *distribution]`` float64, so what is read back
    is bit-identical to what was computed. ``cache_dir=None``: always ``compute()``.
    """
    if cache_dir is None:
        return compute()
    import scipy

    from .cache import ArrayCache
    key = {"format": 1, "kind": kind, "numpy": np.__version__, "scipy": scipy.__version__, **params,
           "arrays": [np.asarray(a, dtype=np.float64) for a in arrays]}
    cache = ArrayCache(cache_dir, "bootstrap")
    n_resamples, n = int(params["n_resamples"]), int(np.shape(arrays[0])[0])
    packed = cache.get(key, shape=(4 + n_resamples,), dtype=np.float64,   # NaN resamples are legitimate
                       check=lambda a: None if 0 <= a[3] < len(_METHOD_CODES) else f"method code {a[3]}")
    if packed is not None:
        dist = np.array(packed[4:])
        dist.setflags(write=False)
        return Interval(float(packed[0]), float(packed[1]), float(packed[2]), float(params["confidence"]),
                        n_resamples, n, _METHOD_CODES[int(packed[3])], dist)
    iv = compute()
    if iv.distribution.shape == (n_resamples,) and iv.method in _METHOD_CODES:
        cache.put(key, np.concatenate([[iv.estimate, iv.lo, iv.hi, float(_METHOD_CODES.index(iv.method))],
                                       iv.distribution]))
    return iv


def bootstrap_map(scores: np.ndarray, labels: np.ndarray, *, n_resamples: int = 2000, confidence: float = 0.95,
                  seed: int = 0, method: str = "BCa", batch: int | None = 500,
                  cache_dir: str | Path | None = None) -> Interval:
    """mAP x100 with its bootstrap interval over test images.

    Args:
        scores: ``(N, C)`` test probabilities (or any monotone scores).
        labels: ``(N, C)`` {0, 1} ground truth.
        n_resamples: bootstrap resamples of the ``N`` images (with replacement).
        confidence: two-sided level of the interval.
        seed: seeds the resampling (same seed, same resamples: two calls with equal ``N`` resample alike).
        method: ``"BCa"`` (default: scipy's bias-corrected and accelerated interval) or ``"percentile"``. The
            bootstrap distribution of mAP sits *above* the full-set mAP (resampling duplicates images and drops
            rare classes; synthetic 16-class case: median +1.5 at 160 images, +1 at 400, +6 at 24), so a
            percentile interval is shifted up and may even exclude the estimate; BCa corrects the shift. A
            degenerate distribution (identical methods) falls back to the percentile interval.
        batch: resamples evaluated at once (memory ``batch x N`` floats per class).
        cache_dir: root of the disk cache (namespace ``bootstrap``: the interval is read back when the scores,
            labels and every argument match); ``None`` (default): computed every call.

    Returns:
        :class:`Interval`; ``estimate`` equals ``ccdlib.metrics.mean_average_precision(scores, labels).map``.
    """
    s, y = _check_scores_labels(scores, labels)
    n = s.shape[0]

    def compute() -> Interval:
        dist, lo, hi, meth = _bootstrap(lambda idx: resampled_map(s, y, resample_counts(idx, n)), n,
                                        n_resamples=n_resamples, confidence=confidence, seed=seed, method=method,
                                        batch=batch)
        est = float(resampled_map(s, y, np.ones((1, n)))[0])
        return Interval(est, lo, hi, confidence, int(n_resamples), n, meth, dist)

    return _cached_interval(cache_dir, "map", (s, y), {"n_resamples": int(n_resamples), "confidence": confidence,
                                                      "seed": seed, "method": str(method).lower(), "batch": batch},
                            compute)


def paired_bootstrap_difference(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray, *,
                                n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0,
                                method: str = "BCa", batch: int | None = 500,
                                cache_dir: str | Path | None = None) -> Interval:
    """``mAP(a) - mAP(b)`` (x100) on the same test images, with its paired-bootstrap interval.

    Each resample draws the test images once and recomputes both methods' mAP on it (a class without a positive
    in the resample is excluded from both), so an interval excluding 0 says ``a`` beats (or trails) ``b`` on
    test sets like this one. Arguments as :func:`bootstrap_map`; ``scores_a`` and ``scores_b`` are ``(N, C)``
    scores of the same images in the same order.
    """
    sa, y = _check_scores_labels(scores_a, labels)
    sb, _ = _check_scores_labels(scores_b, labels)
    n = sa.shape[0]

    def diff(idx: np.ndarray) -> np.ndarray:
        w = resample_counts(idx, n)
        return resampled_map(sa, y, w) - resampled_map(sb, y, w)

    def compute() -> Interval:
        dist, lo, hi, meth = _bootstrap(diff, n, n_resamples=n_resamples, confidence=confidence, seed=seed,
                                        method=method, batch=batch)
        one = np.ones((1, n))
        est = float(resampled_map(sa, y, one)[0] - resampled_map(sb, y, one)[0])
        return Interval(est, lo, hi, confidence, int(n_resamples), n, meth, dist)

    return _cached_interval(cache_dir, "paired_difference", (sa, sb, y),
                            {"n_resamples": int(n_resamples), "confidence": confidence, "seed": seed,
                             "method": str(method).lower(), "batch": batch}, compute)


def bootstrap_metric(metric: Callable[[np.ndarray, np.ndarray], float], scores: np.ndarray, labels: np.ndarray, *,
                     n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                     method: str = "percentile") -> Interval:
    """Any metric ``metric(scores (n, C), labels (n, C)) -> float`` (e.g. CF1 from
    :func:`ccdlib.metrics.threshold_metrics`) with its bootstrap interval; one call per resample (slower than
    :func:`bootstrap_map`, which is vectorised)."""
    s, y = _check_scores_labels(scores, labels)
    n = s.shape[0]

    def stat(idx: np.ndarray) -> np.ndarray:
        return np.array([metric(s[i], y[i]) for i in idx], dtype=np.float64)

    dist, lo, hi, meth = _bootstrap(stat, n, n_resamples=n_resamples, confidence=confidence, seed=seed,
                                    method=method, batch=None)
    return Interval(float(metric(s, y)), lo, hi, confidence, int(n_resamples), n, meth, dist)


def seed_mean_sd(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean and sample standard deviation (``ddof=1``) of a metric over training seeds, and their number.

    One seed has no spread: its sd is NaN (not 0). NaN values (a metric a run did not record) are dropped.
    """
    v = np.asarray([float(x) for x in values], dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return math.nan, math.nan, 0
    sd = float(v.std(ddof=1)) if v.size > 1 else math.nan
    return float(v.mean()), sd, int(v.size)


def seed_averaged_scores(scores: Sequence[np.ndarray]) -> np.ndarray:
    """The mean of several seeds' test probabilities, ``K x (N, C) -> (N, C)`` float64 (the seed ensemble)."""
    arrs = [np.asarray(s, dtype=np.float64) for s in scores]
    if not arrs:
        raise ValueError("seed_averaged_scores needs at least one (N, C) array")
    shapes = {a.shape for a in arrs}
    if len(shapes) != 1 or arrs[0].ndim != 2:
        raise ValueError(f"every seed's scores must be the same (N, C) array shape; got {sorted(shapes)}")
    return np.mean(arrs, axis=0)


def difference_half_width_by_n(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray, *,
                               sizes: Sequence[int] = (160, 400, 800), n_subsets: int = 5, n_resamples: int = 1000,
                               confidence: float = 0.95, seed: int = 0) -> "pd.DataFrame":
    """How precise a paired mAP difference is on a test split of ``n`` images: for each ``n`` in ``sizes``
    (at most ``N``), ``n_subsets`` seeded random subsets of ``n`` of the ``N`` test images, the paired-bootstrap
    interval of ``mAP(a) - mAP(b)`` on each; returns one row per ``n``: ``n, half_width`` (mean over subsets),
    ``half_width_sd``, ``diff`` (mean estimate), and ``half_width_sqrt_scaled``: the full-set half-width times
    ``sqrt(N / n)`` (what ``1/sqrt(n)`` scaling predicts), to read off the ``n`` that gives a target precision."""
    import pandas as pd

    sa, y = _check_scores_labels(scores_a, labels)
    sb, _ = _check_scores_labels(scores_b, labels)
    n_all = sa.shape[0]
    full = paired_bootstrap_difference(sa, sb, y, n_resamples=n_resamples, confidence=confidence, seed=seed)
    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        if not 2 <= n <= n_all:
            raise ValueError(f"sizes must lie in [2, N={n_all}], got {n}")
        hw, est = [], []
        for k in range(n_subsets if n < n_all else 1):
            sub = np.sort(rng.choice(n_all, n, replace=False)) if n < n_all else np.arange(n_all)
            d = paired_bootstrap_difference(sa[sub], sb[sub], y[sub], n_resamples=n_resamples,
                                            confidence=confidence, seed=seed + k)
            hw.append(d.half_width)
            est.append(d.estimate)
        rows.append({"n": int(n), "half_width": float(np.mean(hw)),
                     "half_width_sd": float(np.std(hw, ddof=1)) if len(hw) > 1 else math.nan,
                     "diff": float(np.mean(est)), "half_width_sqrt_scaled": full.half_width * math.sqrt(n_all / n)})
    return pd.DataFrame(rows)
