"""Hand-computed cases for SPEC §3 (CDUL) and §4 (CCD initial labels)."""
import math
import warnings

import numpy as np
import pytest

from ccdlib.pseudolabels import (ccd_initial_pseudo_labels, cdul_aggregate, cdul_gradient_alignment_update,
                                 cdul_initial_pseudo_labels, class_bias, confident_images, debias, entropy,
                                 label_smoothing_floor)


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


def test_gradient_alignment_rule():
    y = np.array([[0.5, 0.99, 0.5]])
    z = np.array([[2.0, -3.0, -2.0]])
    out = cdul_gradient_alignment_update(y, z, step=1.0, sigma=0.2)
    # y = 0.5: w = 1, logit 0 -> sigmoid(+-2)
    assert out[0, 0] == pytest.approx(1 / (1 + math.exp(-2)))
    assert out[0, 2] == pytest.approx(1 / (1 + math.exp(2)))
    # a confident label barely moves (Gaussian weight ~ exp(-0.49^2/0.08) = 0.05)
    w = math.exp(-(0.49 ** 2) / (2 * 0.04))
    u = math.log(0.99 / 0.01)
    assert out[0, 1] == pytest.approx(1 / (1 + math.exp(-(u - 3 * w))))
    assert abs(out[0, 1] - 0.99) < 0.01
