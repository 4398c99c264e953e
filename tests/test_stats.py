"""ccdlib.stats: the bootstrap of mAP and of paired differences, against sklearn and exact enumeration."""
import itertools
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from ccdlib import stats
from ccdlib.metrics import mean_average_precision


def _random_case(n=60, c=6, seed=0, ties=True):
    rng = np.random.default_rng(seed)
    s = rng.random((n, c))
    if ties:
        s = np.round(s, 1)                   # many tied scores: sklearn groups them into one threshold
    y = (rng.random((n, c)) < 0.3).astype(np.int8)
    return s, y


def _sklearn_map(s, y):
    aps = [average_precision_score(y[:, c], s[:, c]) for c in range(y.shape[1]) if y[:, c].sum() > 0]
    return 100 * float(np.mean(aps)) if aps else math.nan


def test_resampled_average_precision_is_sklearn_on_the_resampled_images():
    s, y = _random_case()
    idx = np.random.default_rng(1).integers(0, len(s), (25, len(s)))
    ap = stats.resampled_average_precision(s, y, stats.resample_counts(idx, len(s)))
    for b, i in enumerate(idx):
        for c in range(y.shape[1]):
            if y[i, c].sum() == 0:
                assert np.isnan(ap[b, c])
            else:
                assert ap[b, c] == pytest.approx(average_precision_score(y[i, c], s[i, c]), abs=1e-12)
    m = stats.resampled_map(s, y, stats.resample_counts(idx, len(s)))
    assert m == pytest.approx([_sklearn_map(s[i], y[i]) for i in idx], abs=1e-10)


def test_resample_counts_counts_draws():
    counts = stats.resample_counts(np.array([[0, 0, 2], [1, 2, 1]]), 3)
    assert counts.tolist() == [[2, 0, 1], [0, 2, 1]]


def test_point_estimate_is_the_metrics_map_with_an_empty_class_excluded():
    s, y = _random_case(n=50, c=5, seed=3, ties=False)
    y[:, 2] = 0                                               # a class without positives: excluded
    r = stats.bootstrap_map(s, y, n_resamples=200, seed=0, method="percentile")
    assert r.estimate == pytest.approx(mean_average_precision(s, y).map, abs=1e-10)
    assert r.estimate == pytest.approx(_sklearn_map(s, y), abs=1e-10)
    assert r.lo <= r.estimate <= r.hi and r.n == 50 and r.distribution.shape == (200,)
    lo, hi = np.percentile(r.distribution, [2.5, 97.5])
    assert (r.lo, r.hi) == pytest.approx((lo, hi))


def test_bootstrap_distribution_matches_exact_enumeration_of_a_three_image_case():
    # one class, images with scores 0.9 / 0.5 / 0.1 and labels 1 / 0 / 1: all 27 ordered resamples are equally
    # likely; a resample drawing no positive has no AP (excluded -> NaN)
    s = np.array([[0.9], [0.5], [0.1]])
    y = np.array([[1], [0], [1]])
    exact = []
    for idx in itertools.product(range(3), repeat=3):
        i = list(idx)
        exact.append(100 * average_precision_score(y[i, 0], s[i, 0]) if y[i, 0].sum() else np.nan)
    exact = np.array(exact)
    r = stats.bootstrap_map(s, y, n_resamples=20000, seed=0, method="percentile")
    d = r.distribution
    assert np.isnan(d).mean() == pytest.approx(1 / 27, abs=0.006)
    atoms = np.unique(np.round(exact[~np.isnan(exact)], 9))
    for a in atoms:                                         # each AP value occurs with its exact probability
        p = np.mean(np.isclose(exact, a))
        assert np.mean(np.isclose(d, a)) == pytest.approx(p, abs=0.012), a
    assert set(np.round(d[~np.isnan(d)], 9)) <= set(atoms)
    # the 95 % interval: the exact 2.5 % / 97.5 % quantiles of the distribution without the NaN resamples
    finite = np.sort(exact[~np.isnan(exact)])
    assert r.hi == pytest.approx(100.0)
    assert r.lo == pytest.approx(np.quantile(finite, 0.025), abs=1e-9)


def test_identical_methods_differ_by_exactly_zero():
    s, y = _random_case(seed=4)
    d = stats.paired_bootstrap_difference(s, s.copy(), y, n_resamples=300, seed=2)
    assert d.estimate == 0.0 and d.lo == 0.0 and d.hi == 0.0 and d.half_width == 0.0
    assert not d.excludes_zero() and np.all(d.distribution == 0.0)


def test_a_per_class_monotone_transform_changes_no_average_precision():
    s, y = _random_case(seed=5)
    t = np.exp(3 * s) * np.arange(1, s.shape[1] + 1) - 7.0    # strictly increasing per class, a different one each
    d = stats.paired_bootstrap_difference(s, t, y, n_resamples=300, seed=0)
    assert (d.estimate, d.lo, d.hi) == (0.0, 0.0, 0.0)


def test_paired_difference_uses_the_same_resamples_for_both_methods():
    s, y = _random_case(n=80, seed=6, ties=False)
    noisy = s + np.random.default_rng(0).normal(0, 0.3, s.shape)
    ab = stats.paired_bootstrap_difference(s, noisy, y, n_resamples=400, seed=9)
    ba = stats.paired_bootstrap_difference(noisy, s, y, n_resamples=400, seed=9)
    assert np.array_equal(ab.distribution, -ba.distribution)
    a = stats.bootstrap_map(s, y, n_resamples=400, seed=9)
    b = stats.bootstrap_map(noisy, y, n_resamples=400, seed=9)
    assert np.allclose(ab.distribution, a.distribution - b.distribution)   # same seed, same resamples
    assert ab.estimate == pytest.approx(_sklearn_map(s, y) - _sklearn_map(noisy, y))


def test_a_clearly_better_method_is_resolved_and_seeds_reproduce():
    rng = np.random.default_rng(7)
    y = (rng.random((200, 8)) < 0.25).astype(int)
    good = y + rng.normal(0, 0.4, y.shape)
    bad = rng.random(y.shape)
    d = stats.paired_bootstrap_difference(good, bad, y, n_resamples=500, seed=1)
    assert d.excludes_zero() and d.lo > 0 and d.lo <= d.estimate <= d.hi
    again = stats.paired_bootstrap_difference(good, bad, y, n_resamples=500, seed=1)
    other = stats.paired_bootstrap_difference(good, bad, y, n_resamples=500, seed=2)
    assert np.array_equal(d.distribution, again.distribution)
    assert not np.array_equal(d.distribution, other.distribution)


def test_interval_narrows_with_more_test_images():
    rng = np.random.default_rng(8)
    y = (rng.random((1600, 6)) < 0.3).astype(int)
    s = y + rng.normal(0, 0.8, y.shape)
    small = stats.bootstrap_map(s[:100], y[:100], n_resamples=500).half_width
    large = stats.bootstrap_map(s, y, n_resamples=500).half_width
    assert large < 0.5 * small                                  # ~ 1/sqrt(N): 4x narrower at 16x the images


def test_bca_is_the_default_and_corrects_the_upward_shift_of_resampled_map():
    rng = np.random.default_rng(0)
    y = (rng.random((160, 16)) < 0.15).astype(int)
    s = 0.8 * y + rng.normal(0, 0.8, y.shape)
    pct = stats.bootstrap_map(s, y, n_resamples=1000, method="percentile")
    bca = stats.bootstrap_map(s, y, n_resamples=1000)
    assert bca.method == "BCa" and np.array_equal(bca.distribution, pct.distribution)
    assert np.median(pct.distribution) > pct.estimate + 0.5           # resampled mAP sits above the estimate
    assert bca.lo < pct.lo and bca.hi < pct.hi                         # BCa shifts the interval back down
    assert abs((bca.lo + bca.hi) / 2 - bca.estimate) < abs((pct.lo + pct.hi) / 2 - pct.estimate)


def test_bca_method_and_bad_arguments():
    s, y = _random_case(n=40, seed=10, ties=False)
    r = stats.bootstrap_map(s, y, n_resamples=300, method="BCa")
    assert r.method == "BCa" and r.lo < r.estimate < r.hi
    with pytest.raises(ValueError, match="method"):
        stats.bootstrap_map(s, y, method="basic")
    with pytest.raises(ValueError, match="confidence"):
        stats.bootstrap_map(s, y, confidence=95)
    with pytest.raises(ValueError, match="same|shape"):
        stats.paired_bootstrap_difference(s, s[:-1], y)


def test_bootstrap_metric_with_a_threshold_metric():
    from ccdlib.metrics import threshold_metrics
    s, y = _random_case(n=60, seed=11, ties=False)
    cf1 = lambda a, b: threshold_metrics(a, b)["CF1"]
    r = stats.bootstrap_metric(cf1, s, y, n_resamples=100, seed=0)
    assert r.estimate == pytest.approx(cf1(s, y)) and r.lo <= r.hi and r.distribution.shape == (100,)


def test_seed_mean_sd_and_seed_averaged_scores():
    assert stats.seed_mean_sd([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)
    mean, sd, n = stats.seed_mean_sd([40.0])
    assert mean == 40.0 and math.isnan(sd) and n == 1           # one seed: no spread, not zero spread
    assert stats.seed_mean_sd([1.0, float("nan"), 3.0])[:2] == (2.0, pytest.approx(math.sqrt(2)))
    a, b = np.array([[0.2, 0.4]]), np.array([[0.6, 0.0]])
    assert np.allclose(stats.seed_averaged_scores([a, b]), [[0.4, 0.2]])
    with pytest.raises(ValueError, match="shape"):
        stats.seed_averaged_scores([a, np.zeros((2, 2))])


def test_test_scores_round_trip(tmp_path):
    from ccdlib.methods import RunResult
    from ccdlib.run_store import TEST_SCORES_FILE, load_test_scores, save_test_scores
    scores = {"gt_free": np.random.default_rng(0).random((5, 3)), "zero_shot": np.eye(5, 3)}
    res = RunResult(name="r", method="ccd", config={}, history=[], selected={}, pseudo_label_quality={}, info={},
                    seconds={}, test_scores=scores)
    p = save_test_scores(res, tmp_path)
    assert p.name == TEST_SCORES_FILE
    back = load_test_scores(tmp_path)
    assert set(back) == set(scores) and np.allclose(back["gt_free"], scores["gt_free"], atol=1e-7)
    assert load_test_scores(tmp_path / "result.json")["zero_shot"].shape == (5, 3)
    assert load_test_scores(tmp_path / "missing") == {}


def test_difference_half_width_shrinks_with_n_like_one_over_sqrt_n():
    rng = np.random.default_rng(12)
    y = (rng.random((800, 6)) < 0.3).astype(int)
    a, b = y + rng.normal(0, 0.7, y.shape), y + rng.normal(0, 0.9, y.shape)
    df = stats.difference_half_width_by_n(a, b, y, sizes=(100, 400, 800), n_subsets=3, n_resamples=300)
    assert list(df["n"]) == [100, 400, 800]
    hw = df["half_width"].to_numpy()
    assert hw[0] > hw[1] > hw[2] > 0
    assert hw[0] / hw[2] == pytest.approx(np.sqrt(8), rel=0.35)            # ~ 1/sqrt(n)
    full = stats.paired_bootstrap_difference(a, b, y, n_resamples=300)
    assert hw[2] == pytest.approx(full.half_width) and df["half_width_sqrt_scaled"].iloc[2] == pytest.approx(hw[2])
    with pytest.raises(ValueError, match="sizes"):
        stats.difference_half_width_by_n(a, b, y, sizes=(900,))


def _same_interval(a, b):
    assert (a.estimate, a.lo, a.hi, a.method, a.n, a.n_resamples, a.confidence) == \
        (b.estimate, b.lo, b.hi, b.method, b.n, b.n_resamples, b.confidence)
    assert np.array_equal(a.distribution, b.distribution) and not b.distribution.flags.writeable


def test_cached_intervals_are_bit_identical_read_back_and_keyed_by_inputs(tmp_path, monkeypatch):
    s, y = _random_case(n=70, seed=11, ties=False)
    noisy = s + np.random.default_rng(1).normal(0, 0.3, s.shape)
    plain_map = stats.bootstrap_map(s, y, n_resamples=300, seed=4)
    plain_diff = stats.paired_bootstrap_difference(s, noisy, y, n_resamples=300, seed=4)
    first_map = stats.bootstrap_map(s, y, n_resamples=300, seed=4, cache_dir=tmp_path)        # computed, stored
    first_diff = stats.paired_bootstrap_difference(s, noisy, y, n_resamples=300, seed=4, cache_dir=tmp_path)
    _same_interval(plain_map, first_map)
    _same_interval(plain_diff, first_diff)
    assert len(list((tmp_path / "bootstrap").glob("*.npy"))) == 2

    def no_resampling(*a, **k):
        raise AssertionError("resampled although the interval is cached")
    monkeypatch.setattr(stats, "_bootstrap", no_resampling)
    _same_interval(plain_map, stats.bootstrap_map(s, y, n_resamples=300, seed=4, cache_dir=tmp_path))
    _same_interval(plain_diff, stats.paired_bootstrap_difference(s, noisy, y, n_resamples=300, seed=4,
                                                                 cache_dir=tmp_path))
    changed = s.copy()
    changed[0, 0] += 1e-9
    for call in (lambda: stats.bootstrap_map(s, y, n_resamples=300, seed=5, cache_dir=tmp_path),
                 lambda: stats.bootstrap_map(changed, y, n_resamples=300, seed=4, cache_dir=tmp_path),
                 lambda: stats.bootstrap_map(s, y, n_resamples=300, seed=4, method="percentile", cache_dir=tmp_path),
                 lambda: stats.paired_bootstrap_difference(noisy, s, y, n_resamples=300, seed=4, cache_dir=tmp_path),
                 lambda: stats.bootstrap_map(s, y, n_resamples=300, seed=4)):          # no cache_dir: no cache
        with pytest.raises(AssertionError, match="resampled"):
            call()


def test_a_corrupt_cached_interval_is_recomputed(tmp_path):
    s, y = _random_case(n=50, seed=12, ties=False)
    ref = stats.bootstrap_map(s, y, n_resamples=200, seed=0, cache_dir=tmp_path)
    (entry,) = (tmp_path / "bootstrap").glob("*.npy")
    entry.write_bytes(b"not an array")
    _same_interval(ref, stats.bootstrap_map(s, y, n_resamples=200, seed=0, cache_dir=tmp_path))


def test_seeded_score_table_is_the_same_with_the_interval_cache(tmp_path, monkeypatch):
    from ccdlib import tables
    s, y = _random_case(n=60, seed=13, ties=False)
    rng = np.random.default_rng(2)
    scores = {"a": [s + rng.normal(0, 0.2, s.shape) for _ in range(2)], "b": [rng.random(s.shape)]}
    plain = tables.seeded_score_table(scores, y, reference="a", n_resamples=200)
    cold = tables.seeded_score_table(scores, y, reference="a", n_resamples=200, cache_dir=tmp_path)
    monkeypatch.setattr(stats, "_bootstrap", lambda *a, **k: (_ for _ in ()).throw(AssertionError("resampled")))
    warm = tables.seeded_score_table(scores, y, reference="a", n_resamples=200, cache_dir=tmp_path)
    import pandas as pd
    pd.testing.assert_frame_equal(plain, cold, check_exact=True)
    pd.testing.assert_frame_equal(plain, warm, check_exact=True)
