"""Initial pseudo-labels from the teacher: CCD's debiased global labels (method.md §4) and CDUL's global-local
aggregation (method.md §3), plus CDUL's gradient-alignment label update (per mini-batch, as the public reproduction
runs it, and its Bernoulli-KL analogue for a sigmoid/BCE student).

Every function is pure (numpy in, numpy out). Shapes: ``N`` images, ``C`` classes, ``K`` tiles per image.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "entropy",
    "confident_images",
    "class_bias",
    "label_smoothing_floor",
    "debias",
    "CCDInitialLabels",
    "ccd_initial_pseudo_labels",
    "cdul_aggregate",
    "cdul_initial_pseudo_labels",
    "cdul_alignment_schedule",
    "cdul_kl_label_gradient",
    "cdul_gradient_alignment_update",
    "cdul_bernoulli_alignment_update",
]


def entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats of each row: ``(N, C) -> (N,)``; ``0 log 0 = 0``."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(axis=1)


def confident_images(p: np.ndarray, *, h_max: float = 2.0) -> np.ndarray:
    """method.md §4.2: image ``i`` is confident if ``H(p_i) <= h_max``. ``(N, C) -> (N,)`` bool."""
    return entropy(p) <= h_max


def class_bias(p: np.ndarray, confident: np.ndarray | None = None, *, fallback: str = "mean"
               ) -> tuple[np.ndarray, list[int]]:
    """method.md §4.3: per-class mean top-1 probability over confident images.

    ``bias_c = mean{ p_{i,k_i} : confident i with k_i = argmax_c p_ic = c }``.

    Args:
        p: ``(N, C)`` teacher probabilities.
        confident: ``(N,)`` bool; default all images.
        fallback: value for a class that is never top-1 (no estimate): ``"mean"`` (mean of the estimated
            biases, default), ``"one"`` (leave the class unscaled) or ``"nan"`` (the released code's 0/0).
    Returns:
        ``bias (C,)`` and the list of class indices that fell back.
    """
    p = np.asarray(p, dtype=np.float64)
    n, c = p.shape
    conf = np.ones(n, bool) if confident is None else np.asarray(confident, bool)
    top = p.argmax(1)
    top_p = p[np.arange(n), top]
    sums = np.bincount(top[conf], weights=top_p[conf], minlength=c)
    counts = np.bincount(top[conf], minlength=c)
    fell_back = [int(k) for k in np.flatnonzero(counts == 0)]
    bias = np.full(c, np.nan)
    est = counts > 0
    bias[est] = sums[est] / counts[est]
    if fell_back:
        if fallback == "mean":
            bias[~est] = bias[est].mean() if est.any() else 1.0
        elif fallback == "one":
            bias[~est] = 1.0
        elif fallback != "nan":
            raise ValueError(f"fallback must be 'mean', 'one' or 'nan', got {fallback!r}")
    return bias, fell_back


def label_smoothing_floor(p: np.ndarray, *, ls: float | None = 20) -> np.ndarray:
    """method.md §4.4 (option ``LS``): ``p <- max(p, 1/ls)``; ``ls=None`` or ``0`` leaves ``p`` unchanged."""
    p = np.asarray(p, dtype=np.float64)
    return np.maximum(p, 1.0 / ls) if ls else p.copy()


def debias(p: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """method.md §4.5: ``clamp(p / bias, 0, 1)`` per class. ``(N, C), (C,) -> (N, C)``."""
    return np.clip(np.asarray(p, dtype=np.float64) / np.asarray(bias, dtype=np.float64)[None, :], 0.0, 1.0)


@dataclass
class CCDInitialLabels:
    """Result of :func:`ccd_initial_pseudo_labels`."""

    labels: np.ndarray          # (N, C) debiased pseudo-labels y0
    bias: np.ndarray            # (C,) class bias (with fallbacks filled)
    fell_back: list[int]        # classes that were never top-1 among confident images
    confident: np.ndarray       # (N,) bool
    floored: np.ndarray = field(repr=False, default=None)  # (N, C) after the LS floor, before debiasing


def ccd_initial_pseudo_labels(p_global: np.ndarray, *, h_max: float = 2.0, ls: float | None = 20,
                              debiasing: bool = True, fallback: str = "mean",
                              class_names: list[str] | None = None) -> CCDInitialLabels:
    """method.md §4: confident filter -> class bias -> LS floor -> debias.

    ``p_global (N, C)`` -> :class:`CCDInitialLabels` with ``labels (N, C)``. ``debiasing=False`` keeps the
    floored probabilities (the ablation). Classes without a bias estimate are reported in a warning.
    """
    conf = confident_images(p_global, h_max=h_max)
    bias, fell_back = class_bias(p_global, conf, fallback=fallback)
    if fell_back:
        names = [class_names[k] for k in fell_back] if class_names else fell_back
        warnings.warn(f"class bias: {len(fell_back)} class(es) never top-1 among {int(conf.sum())} confident images, "
                      f"bias set by fallback={fallback!r}: {names}", stacklevel=2)
    floored = label_smoothing_floor(p_global, ls=ls)
    labels = debias(floored, bias) if debiasing else floored
    return CCDInitialLabels(labels=labels, bias=bias, fell_back=fell_back, confident=conf, floored=floored)


def cdul_aggregate(tile_probs: np.ndarray, *, theta: float = 0.0) -> np.ndarray:
    """method.md §3 aggregator: ``alpha = max_k S_k``, ``beta = min_k S_k``, ``gamma = 1[alpha >= theta]``,
    ``S_ag = gamma*alpha + (1-gamma)*beta``. ``(N, K, C) -> (N, C)``."""
    s = np.asarray(tile_probs, dtype=np.float64)
    alpha, beta = s.max(1), s.min(1)
    gamma = (alpha >= theta).astype(np.float64)
    return gamma * alpha + (1.0 - gamma) * beta


def cdul_initial_pseudo_labels(p_global: np.ndarray, tile_probs: np.ndarray, *, theta: float = 0.0,
                               lam: float = 0.0) -> np.ndarray:
    """method.md §3: ``y0 = 0.5 * (S_g + S_ag + lam*|S_g - S_ag|)``. ``(N, C), (N, K, C) -> (N, C)``."""
    s_g = np.asarray(p_global, dtype=np.float64)
    s_ag = cdul_aggregate(tile_probs, theta=theta)
    return 0.5 * (s_g + s_ag + lam * np.abs(s_g - s_ag))


def cdul_alignment_schedule(epoch: int, *, warmup: int = 0, every: int = 10) -> bool:
    """method.md §3: whether CDUL aligns its labels during (0-based) ``epoch``: ``(epoch + 1) > warmup`` and
    ``(epoch + 1) % every == 0`` (the reproduction's schedule; one aligned epoch, the last, in a 10-epoch run)."""
    return (epoch + 1) > warmup and (epoch + 1) % every == 0


def _gaussian_psi(y: np.ndarray, sigma: float) -> np.ndarray:
    """``psi(y) = exp(-(y - 0.5)^2 / (2 sigma^2)) / (sigma sqrt(2 pi))`` (CDUL eq. 8, the reproduction's density)."""
    return np.exp(-((y - 0.5) ** 2) / (2.0 * sigma ** 2)) / (sigma * np.sqrt(2.0 * np.pi))


def _logit(y: np.ndarray) -> np.ndarray:
    return np.log(y) - np.log1p(-y)


def cdul_kl_label_gradient(labels: np.ndarray, student_probs: np.ndarray) -> np.ndarray:
    """Gradient w.r.t. the labels of ``L = (1/B) sum_b KL(yhat_b || phat_b)``, ``yhat = y / S``, ``S = sum_c y_c``,
    ``phat = p / sum_c p_c``: ``dL/dy_bc = (log(yhat_bc / phat_bc) - KL_b) / (B * S_b)``. ``(B, C), (B, C) -> (B, C)``.

    Zero where the renormalised label equals the renormalised prediction (the rule's fixed point).
    """
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(student_probs, dtype=np.float64)
    b = y.shape[0]
    s = y.sum(1, keepdims=True)
    yhat, phat = y / s, p / p.sum(1, keepdims=True)
    log_ratio = np.log(yhat) - np.log(phat)
    kl = (yhat * log_ratio).sum(1, keepdims=True)
    return (log_ratio - kl) / (b * s)


def cdul_gradient_alignment_update(labels: np.ndarray, student_probs: np.ndarray, *, sigma: float = 1.0,
                                   step: float = 1.0, eps: float = 1e-6) -> np.ndarray:
    """CDUL's gradient alignment (method.md §3) as the public reproduction runs it, on one mini-batch.

    ``student_probs`` are the batch's *pre-step* softmax outputs ``p = softmax(f(x))`` (the network trains with
    softmax + KL). With ``g = dL/dy`` from :func:`cdul_kl_label_gradient` (``L`` the batch-mean KL of the
    renormalised label to the prediction)::

        u = logit(y);  u <- u - step * psi(y) * g;  y <- sigmoid(u)

    ``psi`` the Gaussian density of :func:`_gaussian_psi` (``sigma = 1`` in the reproduction). The fixed point is a
    label proportional to the prediction. ``(B, C), (B, C) -> (B, C)``; labels are clipped to ``[eps, 1 - eps]``
    before the logit (the reproduction takes the logit of the raw label).
    """
    y = np.clip(np.asarray(labels, dtype=np.float64), eps, 1.0 - eps)
    g = cdul_kl_label_gradient(y, student_probs)
    u = _logit(y) - step * _gaussian_psi(y, sigma) * g
    return 1.0 / (1.0 + np.exp(-u))


def cdul_bernoulli_alignment_update(labels: np.ndarray, student_logits: np.ndarray, *, sigma: float = 1.0,
                                    step: float = 1.0, eps: float = 1e-6) -> np.ndarray:
    """The aligned analogue of :func:`cdul_gradient_alignment_update` for a sigmoid/BCE student (method.md §3).

    The per-class Bernoulli KL between label and prediction has gradient ``logit(y) - z`` in the label's logit
    ``u``, so ``u <- u - step * psi(y) * (u - z)`` with ``z`` the batch's pre-step student logits; fixed point
    ``y = sigmoid(z)``. ``(B, C), (B, C) -> (B, C)``.
    """
    y = np.clip(np.asarray(labels, dtype=np.float64), eps, 1.0 - eps)
    z = np.asarray(student_logits, dtype=np.float64)
    u = _logit(y)
    u = u - step * _gaussian_psi(y, sigma) * (u - z)
    return 1.0 / (1.0 + np.exp(-u))
