"""Hand-computed cases for method.md §3 (CDUL) and §4 (CCD initial labels)."""
import math
import warnings

import numpy as np
import pytest

from ccdlib.pseudolabels import (ccd_initial_pseudo_labels, cdul_aggregate, cdul_alignment_schedule,
                                 cdul_bernoulli_alignment_update, cdul_gradient_alignment_update,
                                 cdul_initial_pseudo_labels, cdul_kl_label_gradient, class_bias, confident_images,
                                 debias, entropy, label_smoothing_floor)


def test_entropy_in_nats():
    p = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(entropy(p), [math.log(2), 0.0, math.log(3)])


def test_confident_filter_threshold_inclusive():
    uniform8 = np.full((1, 8), 1 / 8)            # H = ln 8 = 2.079 > 2
    uniform7 = np.full((1, 7), 1 / 7)            # H = ln 7 = 1.946 <= 2
    assert not confident_images(uniform8, h_max=2.0)[0]
    assert confident_images(uniform7, h_max=2.0)[0]


def test_class_bias_hand_case_with_never_top1_class():
    # 3 classes; class 2 is never top-1.
    p = np.array([[0.7, 0.2, 0.1],
                  [0.5, 0.4, 0.1],
                  [0.1, 0.8, 0.1],
                  [0.3, 0.3, 0.4 - 1e-9]])   # top-1 = class 0 by argmax tie-break (0.3 == 0.3 > 0.39999)
    conf = np.array([True, True, True, False])  # the last image is not confident
    bias, fell = class_bias(p, conf, fallback="mean")
    assert fell == [2]
    np.testing.assert_allclose(bias[:2], [(0.7 + 0.5) / 2, 0.8])
    assert bias[2] == pytest.approx((0.6 + 0.8) / 2)
    bias_nan, _ = class_bias(p, conf, fallback="nan")      # the released code's 0/0
    assert math.isnan(bias_nan[2])
    bias_one, _ = class_bias(p, conf, fallback="one")
    assert bias_one[2] == 1.0


def test_ls_floor_and_debias():
    p = np.array([[0.9, 0.01], [0.3, 0.6]])
    f = label_smoothing_floor(p, ls=20)
    np.testing.assert_allclose(f, [[0.9, 0.05], [0.3, 0.6]])
    np.testing.assert_allclose(label_smoothing_floor(p, ls=None), p)
    np.testing.assert_allclose(debias(f, np.array([0.6, 0.5])), [[1.0, 0.1], [0.5, 1.0]])


def test_ccd_initial_labels_compose_and_report_fallback():
    p = np.array([[0.8, 0.15, 0.05], [0.2, 0.7, 0.1]])
    with pytest.warns(UserWarning, match="never top-1.*'c'"):
        out = ccd_initial_pseudo_labels(p, h_max=2.0, ls=20, class_names=["a", "b", "c"])
    assert out.fell_back == [2]
    bias = np.array([0.8, 0.7, 0.75])
    np.testing.assert_allclose(out.bias, bias)
    expect = np.clip(np.maximum(p, 0.05) / bias, 0, 1)
    np.testing.assert_allclose(out.labels, expect)
    assert np.isfinite(out.labels).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        off = ccd_initial_pseudo_labels(p, debiasing=False)
    np.testing.assert_allclose(off.labels, np.maximum(p, 0.05))


def test_cdul_aggregator_hand_case():
    # one image, 3 tiles, 2 classes
    tiles = np.array([[[0.1, 0.02], [0.6, 0.03], [0.3, 0.01]]])
    np.testing.assert_allclose(cdul_aggregate(tiles, theta=0.0), [[0.6, 0.03]])     # theta 0 -> max
    np.testing.assert_allclose(cdul_aggregate(tiles, theta=0.05), [[0.6, 0.01]])    # class 1 max < theta -> min
    g = np.array([[0.2, 0.5]])
    np.testing.assert_allclose(cdul_initial_pseudo_labels(g, tiles), [[0.5 * (0.2 + 0.6), 0.5 * (0.5 + 0.03)]])
    np.testing.assert_allclose(cdul_initial_pseudo_labels(g, tiles, lam=1.0), [[0.6, 0.5]])  # lam 1 -> max(g, ag)


def test_gradient_alignment_fixed_point_kl():
    """Labels proportional to the student's softmax prediction do not move (method.md §3: the rule's fixed point)."""
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5), size=4)
    for y in (p, 0.7 * p / p.max(1, keepdims=True)):          # equal, and proportional (renormalised equal)
        np.testing.assert_allclose(cdul_kl_label_gradient(y, p), 0.0, atol=1e-12)
        np.testing.assert_allclose(cdul_gradient_alignment_update(y, p), y, atol=1e-6)


def test_gradient_alignment_one_hand_computed_batch():
    """B = 2, C = 2, computed by hand from method.md §3: g = (log(yhat/phat) - KL) / (B S), u <- u - psi(y) g."""
    y = np.array([[0.5, 0.25], [0.2, 0.2]])
    p = np.array([[0.5, 0.5], [0.9, 0.1]])
    out = cdul_gradient_alignment_update(y, p, sigma=1.0)
    # row 0: S = 0.75, yhat = (2/3, 1/3), KL = 2/3 ln(4/3) + 1/3 ln(2/3)
    kl0 = 2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)
    g00 = (math.log(4 / 3) - kl0) / (2 * 0.75)
    g01 = (math.log(2 / 3) - kl0) / (2 * 0.75)
    psi = lambda v: math.exp(-(v - 0.5) ** 2 / 2) / math.sqrt(2 * math.pi)
    sig = lambda u: 1 / (1 + math.exp(-u))
    assert out[0, 0] == pytest.approx(sig(0.0 - psi(0.5) * g00))
    assert out[0, 1] == pytest.approx(sig(math.log(1 / 3) - psi(0.25) * g01))
    # row 1: S = 0.4, yhat = (0.5, 0.5), KL = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1)
    kl1 = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(5.0)
    g10 = (math.log(0.5 / 0.9) - kl1) / (2 * 0.4)
    g11 = (math.log(5.0) - kl1) / (2 * 0.4)
    assert out[1, 0] == pytest.approx(sig(math.log(0.25) - psi(0.2) * g10))
    assert out[1, 1] == pytest.approx(sig(math.log(0.25) - psi(0.2) * g11))
    # direction: the label of the class the student favours rises, the other falls
    assert out[1, 0] > 0.2 > out[1, 1]


def test_gradient_alignment_gradient_matches_autograd():
    """The closed-form label gradient equals autograd of the batch-mean KL (an independent computation)."""
    import torch
    rng = np.random.default_rng(1)
    y = rng.uniform(0.05, 0.95, size=(3, 4))
    p = rng.dirichlet(np.ones(4), size=3)
    yt = torch.tensor(y, requires_grad=True)
    yhat = yt / yt.sum(1, keepdim=True)
    loss = (yhat * (yhat.log() - torch.tensor(p).log())).sum(1).mean()
    loss.backward()
    np.testing.assert_allclose(cdul_kl_label_gradient(y, p), yt.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_bernoulli_alignment_fixed_point_and_step():
    z = np.array([[2.0, -1.0, 0.0]])
    y_fixed = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(cdul_bernoulli_alignment_update(y_fixed, z), y_fixed, atol=1e-9)
    y = np.array([[0.5, 0.9, 0.5]])
    out = cdul_bernoulli_alignment_update(y, z, sigma=1.0)
    psi = lambda v: math.exp(-(v - 0.5) ** 2 / 2) / math.sqrt(2 * math.pi)
    u1 = math.log(9.0)
    assert out[0, 0] == pytest.approx(1 / (1 + math.exp(-(0 - psi(0.5) * (0 - 2.0)))))
    assert out[0, 1] == pytest.approx(1 / (1 + math.exp(-(u1 - psi(0.9) * (u1 + 1.0)))))
    assert out[0, 2] == pytest.approx(0.5)
    # repeated updates converge to sigmoid(z) (a contraction: psi < 1)
    for _ in range(200):
        y = cdul_bernoulli_alignment_update(y, z)
    np.testing.assert_allclose(y, y_fixed, atol=1e-6)


def test_alignment_schedule():
    assert [e for e in range(10) if cdul_alignment_schedule(e)] == [9]
    assert [e for e in range(30) if cdul_alignment_schedule(e, warmup=10, every=10)] == [19, 29]
    assert [e for e in range(3) if cdul_alignment_schedule(e, every=1)] == [0, 1, 2]
