"""Tests of ccdlib.metrics: hand-computed cases, scikit-learn cross-checks, edge and error cases."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

from ccdlib.metrics import (
    MAPResult,
    average_precision_per_class,
    evaluate,
    mean_average_precision,
    released_code_map,
    threshold_metrics,
    topk_metrics,
    topk_predictions,
)

# --------------------------------------------------------------------------------------------------
# hand cases
# --------------------------------------------------------------------------------------------------
# 4 images x 2 classes.
# class 0: ranking 0.9(+) 0.8(-) 0.3(+) 0.1(-): P@hit = 1/1, 2/3 -> AP = (1 + 2/3)/2 = 5/6
# class 1: ranking 0.7(-) 0.6(+) 0.4(+) 0.2(-): P@hit = 1/2, 2/3 -> AP = (1/2 + 2/3)/2 = 7/12
# mAP = (5/6 + 7/12)/2 = 17/24 = 0.708333...
S_AP = np.array([[0.9, 0.2], [0.8, 0.6], [0.3, 0.7], [0.1, 0.4]])
Y_AP = np.array([[1, 0], [0, 1], [1, 0], [0, 1]])

# 4 images x 3 classes, threshold 0.5 -> pred = [[1,1,0],[0,1,1],[1,0,0],[0,1,0]]
# class 0: pred rows {0,2}, gt {0,3}:   TP 1, P = 1/2, R = 1/2
# class 1: pred rows {0,1,3}, gt {1,3}: TP 2, P = 2/3, R = 1
# class 2: pred rows {1}, gt {1,2,3}:   TP 1, P = 1,   R = 1/3
# CP = 13/18, CR = 11/18, CF1 = 2*CP*CR/(CP+CR) = 143/216
# OP = 4/6, OR = 4/7, OF1 = 2*OP*OR/(OP+OR) = 8/13
S_TH = np.array([[0.9, 0.6, 0.1], [0.2, 0.7, 0.8], [0.6, 0.1, 0.3], [0.4, 0.55, 0.2]])
Y_TH = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 1], [1, 1, 1]])

# 3 images x 5 classes, top-3:
# row 0 [.9 .1 .5 .3 .7]  -> {0, 4, 2}
# row 1 [.2 .8 .2 .6 .2]  -> {1, 3} + tie among 0/2/4 at 0.2 -> stable -> class 0
# row 2 [.05 .3 .9 .1 .4] -> {2, 4, 1}
# pred = [[1,0,1,0,1],[1,1,0,1,0],[0,1,1,0,1]], gt = Y_TOP below
# c0: TP 1 / pred 2 / gt 1; c1: 1/2/1; c2: 1/2/2; c3: 0/1/1; c4: 1/2/1
# CP = (4 * 1/2 + 0)/5 = 2/5; CR = (1 + 1 + 1/2 + 0 + 1)/5 = 7/10; CF1 = 2*.4*.7/1.1 = 28/55
# OP = 4/9, OR = 4/6, OF1 = 8/15
S_TOP = np.array([[0.9, 0.1, 0.5, 0.3, 0.7], [0.2, 0.8, 0.2, 0.6, 0.2], [0.05, 0.3, 0.9, 0.1, 0.4]])
Y_TOP = np.array([[1, 0, 0, 0, 1], [0, 1, 1, 0, 0], [0, 0, 1, 1, 0]])


def _random_case(seed: int, n: int = 200, c: int = 7, p: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < p).astype(np.int64)
    # informative but noisy probabilities, a few exact ties from rounding
    s = 1.0 / (1.0 + np.exp(-(1.5 * (2 * y - 1) + rng.normal(0, 1.5, (n, c)))))
    s = np.round(s, 2)
    return s, y


def _sk_ap(y: np.ndarray, s: np.ndarray) -> float:
    return float(average_precision_score(y, s))


# --------------------------------------------------------------------------------------------------
# AP / mAP
# --------------------------------------------------------------------------------------------------
def test_ap_hand_case() -> None:
    ap = average_precision_per_class(S_AP, Y_AP)
    assert ap.shape == (2,)
    np.testing.assert_allclose(ap, [5 / 6, 7 / 12], rtol=0, atol=1e-12)
    res = mean_average_precision(S_AP, Y_AP)
    assert isinstance(res, MAPResult)
    assert res.map == pytest.approx(100 * 17 / 24, abs=1e-10)
    np.testing.assert_allclose(res.per_class, [500 / 6, 700 / 12], atol=1e-10)
    assert res.excluded == () and res.n_excluded == 0


def test_ap_perfect_and_all_positive() -> None:
    s = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.3]])
    y = np.array([[1, 1], [1, 1], [0, 1]])
    ap = average_precision_per_class(s, y)
    np.testing.assert_allclose(ap, [1.0, 1.0])  # perfect ranking; a class that is all positive


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ap_matches_sklearn_random(seed: int) -> None:
    s, y = _random_case(seed)
    ap = average_precision_per_class(s, y)
    expected = [_sk_ap(y[:, c], s[:, c]) for c in range(y.shape[1])]
    np.testing.assert_allclose(ap, expected, atol=1e-12)
    assert mean_average_precision(s, y).map == pytest.approx(100 * np.mean(expected), abs=1e-10)
    # sklearn's macro average over the (N, C) indicator matrix is the same number
    assert mean_average_precision(s, y).map == pytest.approx(
        100 * average_precision_score(y, s, average="macro"), abs=1e-10
    )


def test_ap_invariant_to_monotone_transform() -> None:
    s, y = _random_case(3)
    logits = np.log(np.clip(s, 1e-6, 1 - 1e-6) / np.clip(1 - s, 1e-6, 1))
    np.testing.assert_allclose(average_precision_per_class(logits, y), average_precision_per_class(s, y))


def test_excluded_classes_counted_and_named() -> None:
    s, y = _random_case(4, c=6)
    y[:, 1] = 0
    y[:, 4] = 0
    ap = average_precision_per_class(s, y)
    assert np.isnan(ap[[1, 4]]).all() and not np.isnan(ap[[0, 2, 3, 5]]).any()

    res = mean_average_precision(s, y)
    assert res.n_excluded == 2 and res.excluded == ("1", "4")
    assert np.isnan(res.per_class[[1, 4]]).all()
    kept = [0, 2, 3, 5]
    assert res.map == pytest.approx(100 * np.mean([_sk_ap(y[:, c], s[:, c]) for c in kept]), abs=1e-10)

    names = ["cat", "dog", "car", "bus", "sofa", "tv"]
    res_named = mean_average_precision(s, y, class_names=names)
    assert res_named.excluded == ("dog", "sofa") and res_named.n_excluded == 2
    assert res_named.as_dict(names)["cat"] == pytest.approx(res.per_class[0])
    assert math.isnan(res_named.as_dict(names)["dog"])


def test_released_code_map_scores_missing_classes_zero() -> None:
    s, y = _random_case(5, c=5)
    y[:, 2] = 0
    ours = mean_average_precision(s, y)
    rel = released_code_map(s, y)
    assert rel.n_excluded == 1 and rel.excluded == ("2",)
    assert rel.per_class[2] == 0.0
    np.testing.assert_allclose(np.delete(rel.per_class, 2), np.delete(ours.per_class, 2))
    assert rel.map == pytest.approx(ours.map * 4 / 5, abs=1e-10)
    # what the released code gets by calling sklearn on every class and averaging over all C
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk_all = [_sk_ap(y[:, c], s[:, c]) for c in range(5)]
    assert rel.map == pytest.approx(100 * np.mean(sk_all), abs=1e-10)


def test_released_equals_ours_without_missing_classes() -> None:
    s, y = _random_case(6)
    assert released_code_map(s, y).map == pytest.approx(mean_average_precision(s, y).map)


def test_all_classes_excluded_gives_nan() -> None:
    s = np.array([[0.1, 0.2], [0.3, 0.4]])
    y = np.zeros((2, 2), dtype=int)
    res = mean_average_precision(s, y)
    assert math.isnan(res.map) and res.n_excluded == 2
    assert released_code_map(s, y).map == 0.0


def test_map_result_is_frozen_and_read_only() -> None:
    res = mean_average_precision(S_AP, Y_AP)
    with pytest.raises(AttributeError):
        res.map = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError):
        res.per_class[0] = 0.0


# --------------------------------------------------------------------------------------------------
# ignore mask
# --------------------------------------------------------------------------------------------------
def test_ignore_hand_case() -> None:
    # ignoring the 0.8 negative of class 0 leaves 0.9(+) 0.3(+) 0.1(-): AP = 1
    ignore = np.zeros((4, 2), dtype=bool)
    ignore[1, 0] = True
    ap = average_precision_per_class(S_AP, Y_AP, ignore=ignore)
    np.testing.assert_allclose(ap, [1.0, 7 / 12], atol=1e-12)
    # ignoring both positives of class 1 excludes it
    ignore2 = np.zeros((4, 2), dtype=np.uint8)
    ignore2[[1, 3], 1] = 1
    res = mean_average_precision(S_AP, Y_AP, ignore=ignore2)
    assert res.excluded == ("1",) and res.map == pytest.approx(100 * 5 / 6)


@pytest.mark.parametrize("seed", [7, 8])
def test_ignore_equals_dropping_rows_per_class(seed: int) -> None:
    s, y = _random_case(seed)
    rng = np.random.default_rng(seed + 100)
    ignore = rng.random(s.shape) < 0.15
    ap = average_precision_per_class(s, y, ignore=ignore)
    for c in range(s.shape[1]):
        keep = ~ignore[:, c]
        assert ap[c] == pytest.approx(_sk_ap(y[keep, c], s[keep, c]), abs=1e-12)
    # an all-False mask changes nothing; a uint8 mask is the same as a bool mask
    np.testing.assert_allclose(
        average_precision_per_class(s, y, ignore=np.zeros_like(ignore)), average_precision_per_class(s, y)
    )
    np.testing.assert_allclose(average_precision_per_class(s, y, ignore=ignore.astype(np.uint8)), ap)


# --------------------------------------------------------------------------------------------------
# threshold metrics
# --------------------------------------------------------------------------------------------------
def test_threshold_hand_case() -> None:
    m = threshold_metrics(S_TH, Y_TH)
    assert set(m) == {"CP", "CR", "CF1", "OP", "OR", "OF1"}
    expected = {
        "CP": 100 * 13 / 18,
        "CR": 100 * 11 / 18,
        "CF1": 100 * 143 / 216,
        "OP": 100 * 4 / 6,
        "OR": 100 * 4 / 7,
        "OF1": 100 * 8 / 13,
    }
    for key, val in expected.items():
        assert m[key] == pytest.approx(val, abs=1e-10), key
    assert all(isinstance(v, float) for v in m.values())


def test_threshold_equal_score_counts_as_positive() -> None:
    s = np.array([[0.5, 0.4999]])
    y = np.array([[1, 1]])
    m = threshold_metrics(s, y)
    assert m["OR"] == pytest.approx(50.0) and m["OP"] == pytest.approx(100.0)


def test_threshold_zero_division_is_zero() -> None:
    # class 1 never predicted (P = 0/0 -> 0), class 2 has no positive (R = 0/0 -> 0)
    s = np.array([[0.9, 0.1, 0.2], [0.8, 0.2, 0.1]])
    y = np.array([[1, 1, 0], [0, 0, 0]])
    m = threshold_metrics(s, y)
    # c0: P = 1/2, R = 1; c1: P = 0, R = 0; c2: P = 0, R = 0
    assert m["CP"] == pytest.approx(100 / 6)
    assert m["CR"] == pytest.approx(100 / 3)
    assert m["CF1"] == pytest.approx(100 * 2 * (1 / 6) * (1 / 3) / (1 / 6 + 1 / 3))
    assert m["OP"] == pytest.approx(50.0) and m["OR"] == pytest.approx(50.0) and m["OF1"] == pytest.approx(50.0)
    # nothing predicted at all: everything 0, no warnings, no NaN
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m0 = threshold_metrics(np.zeros((2, 3)), y)
    assert m0 == {k: 0.0 for k in ("CP", "CR", "CF1", "OP", "OR", "OF1")}


@pytest.mark.parametrize("seed,thr", [(10, 0.5), (11, 0.3), (12, 0.8)])
def test_threshold_matches_sklearn(seed: int, thr: float) -> None:
    s, y = _random_case(seed)
    y[:, 0] = 0  # a class with no positive
    s[:, 1] = 0.0  # a class never predicted
    m = threshold_metrics(s, y, threshold=thr)
    pred = (s >= thr).astype(int)
    cp = precision_score(y, pred, average="macro", zero_division=0)
    cr = recall_score(y, pred, average="macro", zero_division=0)
    assert m["CP"] == pytest.approx(100 * cp, abs=1e-10)
    assert m["CR"] == pytest.approx(100 * cr, abs=1e-10)
    assert m["CF1"] == pytest.approx(100 * 2 * cp * cr / (cp + cr), abs=1e-10)  # F1 of means, by hand
    assert m["OP"] == pytest.approx(100 * precision_score(y, pred, average="micro", zero_division=0), abs=1e-10)
    assert m["OR"] == pytest.approx(100 * recall_score(y, pred, average="micro", zero_division=0), abs=1e-10)
    assert m["OF1"] == pytest.approx(100 * f1_score(y, pred, average="micro", zero_division=0), abs=1e-10)


def test_cf1_is_not_macro_f1() -> None:
    m = threshold_metrics(S_TH, Y_TH)
    macro_f1 = f1_score(Y_TH, (S_TH >= 0.5).astype(int), average="macro", zero_division=0)
    # per-class F1: 1/2, 4/5, 1/2 -> mean 3/5 = 60, whereas CF1 = 143/216 = 66.2
    assert macro_f1 == pytest.approx(0.6)
    assert abs(m["CF1"] - 100 * macro_f1) > 5


# --------------------------------------------------------------------------------------------------
# top-k metrics
# --------------------------------------------------------------------------------------------------
def test_top3_hand_case_with_tie() -> None:
    pred = topk_predictions(S_TOP, 3)
    np.testing.assert_array_equal(pred.astype(int), [[1, 0, 1, 0, 1], [1, 1, 0, 1, 0], [0, 1, 1, 0, 1]])
    m = topk_metrics(S_TOP, Y_TOP, k=3)
    expected = {
        "CP": 40.0,
        "CR": 70.0,
        "CF1": 100 * 28 / 55,
        "OP": 100 * 4 / 9,
        "OR": 100 * 4 / 6,
        "OF1": 100 * 8 / 15,
    }
    for key, val in expected.items():
        assert m[key] == pytest.approx(val, abs=1e-10), key


def test_topk_all_ties_pick_lowest_indices() -> None:
    pred = topk_predictions(np.full((2, 5), 0.3), 2)
    np.testing.assert_array_equal(pred, [[True, True, False, False, False]] * 2)


@pytest.mark.parametrize("seed,k", [(20, 1), (21, 3), (22, 7)])
def test_topk_matches_sklearn(seed: int, k: int) -> None:
    s, y = _random_case(seed, c=7)
    s = s + np.random.default_rng(seed).random(s.shape) * 1e-6  # no ties: the top-k set is unique
    m = topk_metrics(s, y, k=k)
    thr = np.sort(s, axis=1)[:, -k][:, None]
    pred = (s >= thr).astype(int)
    assert (pred.sum(axis=1) == k).all()
    cp = precision_score(y, pred, average="macro", zero_division=0)
    cr = recall_score(y, pred, average="macro", zero_division=0)
    assert m["CP"] == pytest.approx(100 * cp, abs=1e-10)
    assert m["CR"] == pytest.approx(100 * cr, abs=1e-10)
    assert m["CF1"] == pytest.approx(100 * 2 * cp * cr / (cp + cr), abs=1e-10)
    assert m["OP"] == pytest.approx(100 * precision_score(y, pred, average="micro"), abs=1e-10)
    assert m["OR"] == pytest.approx(100 * recall_score(y, pred, average="micro"), abs=1e-10)
    assert m["OF1"] == pytest.approx(100 * f1_score(y, pred, average="micro"), abs=1e-10)


# --------------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------------
def test_evaluate_flat_dict() -> None:
    s, y = _random_case(30, c=6)
    y[:, 3] = 0
    out = evaluate(s, y, class_names=list("abcdef"))
    assert list(out) == [
        "mAP", "n_excluded", "mAP_released",
        "CP", "CR", "CF1", "OP", "OR", "OF1",
        "CP_top3", "CR_top3", "CF1_top3", "OP_top3", "OR_top3", "OF1_top3",
    ]  # fmt: skip
    assert out["n_excluded"] == 1
    assert out["mAP"] == pytest.approx(mean_average_precision(s, y).map)
    assert out["mAP_released"] == pytest.approx(released_code_map(s, y).map)
    th = threshold_metrics(s, y)
    tk = topk_metrics(s, y, k=3)
    for key in ("CP", "CR", "CF1", "OP", "OR", "OF1"):
        assert out[key] == pytest.approx(th[key])
        assert out[f"{key}_top3"] == pytest.approx(tk[key])


def test_evaluate_passes_options() -> None:
    s, y = _random_case(31, c=6)
    ignore = np.random.default_rng(0).random(s.shape) < 0.2
    out = evaluate(s, y, ignore=ignore, threshold=0.3, k=2)
    assert out["mAP"] == pytest.approx(mean_average_precision(s, y, ignore=ignore).map)
    assert out["CP"] == pytest.approx(threshold_metrics(s, y, threshold=0.3)["CP"])
    assert out["OF1_top2"] == pytest.approx(topk_metrics(s, y, k=2)["OF1"])
    assert "OF1_top3" not in out


# --------------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------------
ALL_FUNCS = [average_precision_per_class, mean_average_precision, released_code_map, threshold_metrics,
             topk_metrics, evaluate]  # fmt: skip


@pytest.mark.parametrize("fn", ALL_FUNCS)
def test_shape_mismatch_names_both_shapes(fn) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=r"\(4, 2\).*\(4, 3\)"):
        fn(np.zeros((4, 2)), np.zeros((4, 3), dtype=int))


@pytest.mark.parametrize("fn", ALL_FUNCS)
def test_labels_must_be_binary(fn) -> None:  # type: ignore[no-untyped-def]
    y = Y_AP.copy()
    y[0, 0] = -1
    with pytest.raises(ValueError, match="0 and 1"):
        fn(S_AP, y)
    with pytest.raises(ValueError, match="0 and 1"):
        fn(S_AP, Y_AP * 0.5)


@pytest.mark.parametrize("fn", ALL_FUNCS)
def test_nan_scores_raise(fn) -> None:  # type: ignore[no-untyped-def]
    s = S_AP.copy()
    s[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fn(s, Y_AP)


def test_other_input_errors() -> None:
    with pytest.raises(ValueError, match="finite"):
        mean_average_precision(np.array([[np.inf, 0.1]]), np.array([[1, 0]]))
    with pytest.raises(ValueError, match="2-D"):
        mean_average_precision(np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match="non-empty"):
        threshold_metrics(np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"ignore \(4, 3\).*scores \(4, 2\)"):
        mean_average_precision(S_AP, Y_AP, ignore=np.zeros((4, 3), dtype=bool))
    with pytest.raises(ValueError, match="ignore"):
        mean_average_precision(S_AP, Y_AP, ignore=np.full((4, 2), 2))
    with pytest.raises(ValueError, match="class_names"):
        mean_average_precision(S_AP, Y_AP, class_names=["a"])
    with pytest.raises(ValueError, match="k must be"):
        topk_metrics(S_AP, Y_AP, k=3)
    with pytest.raises(ValueError, match="k must be"):
        topk_metrics(S_AP, Y_AP, k=0)


def test_bool_and_float_labels_accepted() -> None:
    ref = mean_average_precision(S_AP, Y_AP).map
    assert mean_average_precision(S_AP, Y_AP.astype(bool)).map == pytest.approx(ref)
    assert mean_average_precision(S_AP, Y_AP.astype(np.float32)).map == pytest.approx(ref)
