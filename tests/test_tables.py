"""ccdlib.tables folds run results into tables: hand-made results in, hand-computed rows out."""
import math

import numpy as np
import pandas as pd
import pytest

from ccdlib.config import CCDConfig, CDULConfig
from ccdlib.pseudolabels import ccd_initial_pseudo_labels, cdul_initial_pseudo_labels
from ccdlib.tables import (PSEUDO_LABELS_FILE, Ablation, ablation_grid, ablation_table, config_params,
                           dataset_columns, epoch_curves, flat_config_keys, initial_stage_labels, load_stage_labels,
                           main_table, per_class_stage_ap, published_numbers, selected_epochs,
                           seeded_main_table, selection_rules_table, stage_quality_table)


def _metrics(m, cf1=10.0, of1=20.0):
    return {"mAP": m, "CF1": cf1, "OF1": of1, "CF1_top3": cf1 + 1, "OF1_top3": of1 + 1}


def _sel(epoch, m, **kw):
    return {"epoch": epoch, "uses_ground_truth": False, "metrics": _metrics(m, **kw)}


def _result(method, last, gt_free, gt_best, *, zero_shot=None, quality=None, history=None):
    sel = {"last": _sel(*last), "gt_free": _sel(*gt_free), "gt_best": _sel(*gt_best)}
    if zero_shot is not None:
        sel["zero_shot"] = {"epoch": None, "uses_ground_truth": False, "metrics": _metrics(zero_shot)}
    return {"method": method, "selected": sel, "pseudo_label_quality": quality or {}, "history": history or []}


@pytest.fixture
def results():
    # listed out of display order on purpose
    return [
        _result("supervised", (3, 60.0), (3, 60.0), (2, 61.0)),
        _result("ccd", (3, 40.0), (2, 41.0), (1, 45.0)),
        _result("teacher_global", (3, 30.0), (2, 31.0), (3, 30.0), zero_shot=35.0),
        _result("cdul", (3, 38.0), (3, 38.0), (3, 38.0)),
    ]


def test_main_table_rows_rules_and_order(results):
    df = main_table(results, rule="gt_free")
    assert list(df["method"]) == ["teacher zero-shot (global)", "student on teacher-global labels", "CDUL", "CCD",
                                  "supervised (upper bound)"]
    assert list(df["selection"]) == ["zero_shot", "gt_free", "gt_free", "gt_free", "gt_free"]
    assert list(df["epoch"]) == ["", 2, 3, 2, 3]
    assert list(df["mAP"]) == [35.0, 31.0, 38.0, 41.0, 60.0]
    assert list(df["CF1_top3"]) == [11.0] * 5
    assert list(df["ground_truth_used"]) == ["none"] * 4 + ["train labels (training)"]
    assert list(df.columns) == ["method", "selection", "epoch", "ground_truth_used", "mAP", "CF1", "OF1",
                                "CF1_top3", "OF1_top3"]


def test_cdul_without_gradient_alignment_gets_its_own_row(results):
    no_ga = _result("cdul", (3, 36.0), (2, 37.0), (3, 37.5))
    no_ga["config"] = {"cdul": {"gradient_alignment": False}}
    with_ga = results[3]
    with_ga["config"] = {"cdul": {"gradient_alignment": True}}
    df = main_table([no_ga, *results], rule="gt_free")
    assert list(df["method"]) == ["teacher zero-shot (global)", "student on teacher-global labels", "CDUL",
                                  "CDUL without gradient alignment", "CCD", "supervised (upper bound)"]
    assert list(df["mAP"]) == [35.0, 31.0, 38.0, 37.0, 41.0, 60.0]
    assert "CDUL without gradient alignment" in set(selection_rules_table([no_ga, *results])["method"])


def test_gt_best_rows_say_they_use_test_labels(results):
    df = main_table(results, rule="gt_best")
    ccd = df[df["method"] == "CCD"].iloc[0]
    assert (ccd["epoch"], ccd["mAP"], ccd["ground_truth_used"]) == (1, 45.0, "test labels (selection)")
    sup = df[df["method"] == "supervised (upper bound)"].iloc[0]
    assert sup["ground_truth_used"] == "train labels (training); test labels (selection)"
    with pytest.raises(ValueError, match="rule"):
        main_table(results, rule="zero_shot")


def test_selection_rules_table_stacks_rules_with_zero_shot_once(results):
    df = selection_rules_table(results)
    assert len(df) == 1 + 4 * 3
    assert (df["selection"] == "zero_shot").sum() == 1
    ccd = df[df["method"] == "CCD"]
    assert list(ccd["selection"]) == ["last", "gt_free", "gt_best"]
    assert list(ccd["mAP"]) == [40.0, 41.0, 45.0]
    assert df["method"].iloc[0] == "teacher zero-shot (global)"


def test_dataset_columns_fill_only_the_current_data_set(results):
    main = main_table(results)
    df = dataset_columns(main, "voc2012")
    assert list(df.columns) == ["method", "selection", "mosaic (embedded)", "VOC07", "VOC12", "COCO14", "NUS-WIDE"]
    assert list(df["VOC12"]) == list(main["mAP"])
    assert df[["mosaic (embedded)", "VOC07", "COCO14", "NUS-WIDE"]].isna().all().all()
    assert "mine" in dataset_columns(main, "mine").columns      # an unknown kind gets its own column


def test_published_numbers_from_the_packaged_file():
    df = published_numbers().set_index("method")
    assert df.loc["CCD (paper)", "VOC07"] == 91.0 and df.loc["CCD (paper)", "NUS-WIDE"] == 44.5
    assert df.loc["CDUL (paper)", "COCO14"] == 69.2
    assert df.loc["CCD released code, third-party rerun", "VOC07"] == "90.6-91.0"
    assert math.isnan(df.loc["TagCLIP (training-free, ViT-B/16)", "VOC12"])
    assert list(df.columns) == ["VOC07", "VOC12", "COCO14", "NUS-WIDE", "note"]


def test_published_numbers_from_a_file(tmp_path):
    p = tmp_path / "pub.yaml"
    p.write_text("datasets: [A, B]\nmethods:\n  - method: m\n    map: {A: 1.5, B: [2, 3]}\n    note: n\n")
    df = published_numbers(p)
    assert df.to_dict("records") == [{"method": "m", "A": 1.5, "B": "2.0-3.0", "note": "n"}]


def test_epoch_curves_and_selected_epochs():
    hist = [{"epoch": e, "test_mAP": 10.0 + e, "train_mAP_vs_pseudo": 50.0 + e} for e in range(3)]
    res = [_result("ccd", (2, 12.0), (1, 11.0), (2, 12.0), history=hist),
           _result("teacher_global", (0, 1.0), (0, 1.0), (0, 1.0), zero_shot=5.0)]
    curves = epoch_curves(res)
    assert len(curves) == 3 and list(curves["test_mAP"]) == [10.0, 11.0, 12.0]
    assert set(curves["method"]) == {"CCD"}
    picked = selected_epochs(res, rules=("gt_free", "last"))
    ccd = picked[picked["method"] == "CCD"]
    assert list(zip(ccd["rule"], ccd["epoch"], ccd["test_mAP"])) == [("gt_free", 1, 11.0), ("last", 2, 12.0)]
    assert "zero_shot" not in set(picked["rule"])


def test_ablation_grid_marks_defaults_and_skips_default_only_factors():
    grid = ablation_grid(switches=("debiasing", "consistency"), ratios=[0.2, 1.0], offsets=[80],
                         bounds=[2, 4], box_rules=["raster"])
    assert grid[0] == Ablation("default", "default run", {}, True)
    assert [(a.factor, a.value, a.is_default) for a in grid[1:]] == [
        ("debiasing", "off", False), ("consistency", "off", False), ("r", "0.2", True), ("r", "1", False),
        ("bound", "2", False), ("bound", "4", True), ("box rule", "raster", False)]
    assert grid[1].overrides == {"ccd_debiasing": False}
    assert grid[4].overrides == {"ccd_r": 1.0}
    assert grid[-1].overrides == {"ccd_box_rule": "raster"}
    # against another default: r = 1.0 becomes the default value
    other = ablation_grid(switches=(), ratios=[0.2, 1.0], default=CCDConfig(r=1.0))
    assert [(a.value, a.is_default) for a in other[1:]] == [("0.2", False), ("1", True)]
    with pytest.raises(ValueError, match="unknown CCD switch"):
        ablation_grid(switches=("dropout",))


def test_ablation_table_deltas_against_the_default_run():
    grid = ablation_grid(switches=("local_views",), ratios=[1.0])
    q_full = {"global": {"mAP": 30.0, "CF1": 5.0}, "ccd_debiased": {"mAP": 31.0, "CF1": 9.0},
              "ccd_updated": {"mAP": 40.0, "CF1": 20.0}}
    q_global = {"global": {"mAP": 30.0, "CF1": 5.0}, "ccd_debiased": {"mAP": 31.0, "CF1": 9.0}}
    res = [_result("ccd", (3, 40.0), (2, 42.0), (2, 42.0), quality=q_full),
           _result("ccd", (3, 35.0), (3, 35.0), (3, 35.0), quality=q_global),
           _result("ccd", (3, 41.5), (1, 39.0), (3, 41.5), quality=q_full)]
    df = ablation_table(grid, res, rules=("gt_free", "last"), metrics=("mAP",))
    assert len(df) == 6
    lv = df[(df["factor"] == "local views") & (df["rule"] == "gt_free")].iloc[0]
    assert (lv["mAP"], lv["delta_mAP"], lv["labels_stage"], lv["labels_mAP"]) == (35.0, -7.0, "ccd_debiased", 31.0)
    r_last = df[(df["factor"] == "r") & (df["rule"] == "last")].iloc[0]
    assert (r_last["epoch"], r_last["delta_mAP"], r_last["labels_CF1"]) == (3, 1.5, 20.0)
    assert (df[df["factor"] == "default"]["delta_mAP"] == 0).all()
    with pytest.raises(ValueError, match="results"):
        ablation_table(grid, res[:2])
    with pytest.raises(ValueError, match="default"):
        ablation_table(grid[1:], res[1:])


def test_stage_quality_table_orders_stages_and_lists_global_once():
    m = {"mAP": 1.0, "CF1": 2.0, "OF1": 3.0, "CF1_top3": 4.0, "OF1_top3": 5.0}
    res = [_result("cdul", (0, 0), (0, 0), (0, 0), quality={"global": m, "cdul_final": m, "cdul_initial": m}),
           _result("ccd", (0, 0), (0, 0), (0, 0), quality={"global": {**m, "mAP": 9.0}, "ccd_updated": m,
                                                           "ccd_debiased": m})]
    df = stage_quality_table(res)
    assert list(df["stage"]) == ["global", "ccd_debiased", "ccd_updated", "cdul_initial", "cdul_final"]
    assert df.loc[0, "mAP"] == 1.0 and df.loc[0, "run"] == "CDUL"     # first run that recorded it
    assert df.loc[1, "label"] == "CCD: debiased"


def test_per_class_stage_ap_by_hand():
    labels = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    a = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.1, 0.4]])
    # class 0: ranked 0.9 (+), 0.8 (-), 0.7 (+): AP = (1/1 + 2/3) / 2; class 1 has no positive: NaN
    b = a[::-1].copy()          # class 0: 0.9 (-), 0.8 (+)... -> ranked 0.9 (-), 0.8 (+), 0.7 (-), 0.1 (+)
    df = per_class_stage_ap({"ccd_updated": b, "global": a}, labels, ["x", "y"])
    assert list(df.columns) == ["global", "ccd_updated"]          # pipeline order
    assert df.loc["x", "global"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert df.loc["x", "ccd_updated"] == pytest.approx(100 * (1 / 2 + 2 / 4) / 2)
    assert df["global"].isna().tolist() == [False, True]
    assert df.index.name == "class"


def test_initial_stage_labels_match_the_pipeline_functions():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4) * 0.3, size=12)
    tiles = rng.dirichlet(np.ones(4) * 0.3, size=(12, 9))
    ccd, cdul = CCDConfig(ls=10.0), CDULConfig(theta=0.1)
    out = initial_stage_labels(p, tiles, ccd=ccd, cdul=cdul)
    ref = ccd_initial_pseudo_labels(p, h_max=2.0, ls=10.0, debiasing=True, fallback="mean")
    assert set(out) == {"global", "ccd_floored", "ccd_debiased", "cdul_initial"}
    np.testing.assert_array_equal(out["ccd_debiased"], ref.labels)
    np.testing.assert_array_equal(out["ccd_floored"], np.maximum(p, 0.1))
    np.testing.assert_array_equal(out["cdul_initial"], cdul_initial_pseudo_labels(p, tiles, theta=0.1, lam=0.0))
    assert "cdul_initial" not in initial_stage_labels(p)


def test_load_stage_labels(tmp_path):
    assert load_stage_labels(tmp_path) == {}
    y = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.savez(tmp_path / PSEUDO_LABELS_FILE, global_=y, ccd_updated=y + 1)
    out = load_stage_labels(tmp_path)
    assert set(out) == {"global_", "ccd_updated"}
    np.testing.assert_array_equal(out["ccd_updated"], y + 1)


def test_flat_config_keys_and_config_params():
    keys = flat_config_keys()
    assert {"epochs", "seed", "out_dir", "ccd_r", "teacher_arch", "data_n_train", "student_image_size",
            "teacher_batch_size", "cdul_theta"} <= keys
    assert not {"ccd", "teacher", "data", "n_examples"} & keys
    ns = {"epochs": 4, "ccd_r": 0.5, "out_dir": "x", "n_examples": 3, "pd": pd, "ablation_r": [0.2]}
    assert config_params(ns) == {"epochs": 4, "ccd_r": 0.5}
    assert config_params(ns, exclude=()) == {"epochs": 4, "ccd_r": 0.5, "out_dir": "x"}


# --------------------------------------------------------------------------------------------- seeds and intervals
def _seed_case(n=120, c=5, seeds=(0, 1, 2)):
    """Hand-made multi-seed runs on one test split: CCD = truth + small noise, CDUL = noisier, the teacher's
    zero-shot noisier still; every seed its own noise."""
    from ccdlib.tables import SeedRun
    rng = np.random.default_rng(0)
    y = (rng.random((n, c)) < 0.3).astype(int)
    zero = y + rng.normal(0, 1.5, y.shape)
    runs = []
    for s in seeds:
        r = np.random.default_rng(100 + s)
        ccd, cdul, glob = (y + r.normal(0, sd, y.shape) for sd in (0.4, 0.9, 1.2))
        for method, sc, m in (("ccd", ccd, 50.0 + s), ("cdul", cdul, 40.0 + 2 * s), ("teacher_global", glob, 30.0)):
            res = _result(method, (3, m), (2, m), (1, m), zero_shot=25.0 if method == "teacher_global" else None)
            res["name"] = f"{method}_s{s}"
            scores = {"gt_free": sc, "last": sc, "gt_best": sc}
            if method == "teacher_global":
                scores["zero_shot"] = zero
            runs.append(SeedRun("disjoint", s, res, scores))
    return runs, y


def test_seeded_main_table_means_sds_intervals_and_differences():
    from ccdlib.stats import bootstrap_map, paired_bootstrap_difference, seed_averaged_scores
    runs, y = _seed_case()
    df = seeded_main_table(runs, {"disjoint": y}, n_resamples=300, seed=4)
    assert list(df["method"]) == ["teacher zero-shot (global)", "student on teacher-global labels", "CDUL", "CCD"]
    assert list(df["n_seeds"]) == [1, 3, 3, 3] and list(df["selection"]) == ["zero_shot"] + ["gt_free"] * 3
    ccd = df[df["key"] == "ccd"].iloc[0]
    assert (ccd["mAP"], ccd["mAP_sd"]) == (51.0, 1.0)                    # mean and sd of 50, 51, 52
    cdul = df[df["key"] == "cdul"].iloc[0]
    assert (cdul["mAP"], cdul["mAP_sd"]) == (42.0, 2.0) and cdul["seeds"] == "0,1,2"
    assert math.isnan(df.iloc[0]["mAP_sd"]) and df.iloc[0]["mAP"] == 25.0   # zero-shot: no seed spread
    # the interval columns are the stats functions on the seed-averaged scores, same resamples
    avg = {k: seed_averaged_scores([r.scores["gt_free"] for r in runs if r.result["method"] == k])
           for k in ("ccd", "cdul")}
    iv = bootstrap_map(avg["cdul"], y, n_resamples=300, seed=4)
    d = paired_bootstrap_difference(avg["ccd"], avg["cdul"], y, n_resamples=300, seed=4)
    assert (cdul["mAP_seedavg"], cdul["mAP_lo"], cdul["mAP_hi"]) == pytest.approx((iv.estimate, iv.lo, iv.hi))
    assert (cdul["CCD_minus_row"], cdul["CCD_minus_row_lo"], cdul["CCD_minus_row_hi"]) == pytest.approx(
        (d.estimate, d.lo, d.hi))
    assert cdul["CCD_minus_row_lo"] > 0                                   # CCD's scores are much better here
    assert math.isnan(ccd["CCD_minus_row"])                               # no difference to itself
    zs = df.iloc[0]
    assert zs["mAP_seedavg"] == pytest.approx(mean_average_precision_of(runs[2].scores["zero_shot"], y))


def mean_average_precision_of(s, y):
    from ccdlib.metrics import mean_average_precision
    return mean_average_precision(s, y).map


def test_seeded_main_table_protocol_groups_and_errors():
    from ccdlib.tables import SeedRun, protocol_columns
    runs, y = _seed_case(seeds=(0,))
    shared = [SeedRun("shared", r.seed, r.result, r.scores) for r in runs]
    df = seeded_main_table(runs + shared, {"disjoint": y, "shared": y}, n_resamples=100)
    assert list(dict.fromkeys(df["protocol"])) == ["disjoint", "shared"]
    assert math.isnan(df[df["key"] == "ccd"].iloc[0]["mAP_sd"])          # one seed: sd NaN, not 0
    wide = protocol_columns(df)
    assert len(wide) == 4 and "disjoint: mAP" in wide and "shared: CCD - row [95% CI]" in wide
    cdul = wide[wide["method"] == "CDUL"].iloc[0]
    assert cdul["disjoint: mAP"] == "40.0" and cdul["disjoint: seeds"] == "1"
    assert cdul["shared: CCD - row [95% CI]"].startswith("+")
    with pytest.raises(ValueError, match="protocol"):
        seeded_main_table(runs, {"shared": y}, n_resamples=10)
    with pytest.raises(ValueError, match="test split|match"):
        seeded_main_table(runs, {"disjoint": y[:-1]}, n_resamples=10)
    dup = runs + [runs[0]]
    with pytest.raises(ValueError, match="seed 0"):
        seeded_main_table(dup, {"disjoint": y}, n_resamples=10)


def test_claims_table_and_paragraph():
    from ccdlib.tables import claims_paragraph, claims_table
    runs, y = _seed_case()
    c = claims_table(runs, {"disjoint": y}, n_resamples=300)
    assert list(c["a"]) == ["CCD", "CDUL", "CCD", "CCD"]                  # claims of methods not run are skipped
    first = c.iloc[0]
    assert first["verdict"] == "holds" and first["diff_lo"] > 0 and first["n_seeds_a"] == 3
    assert first["diff"] == pytest.approx(first["mAP_a"] - first["mAP_b"])
    # a claim the data reverse: the global student "beats" CCD
    rev = claims_table(runs, {"disjoint": y}, claims=[("global beats CCD", "teacher_global", "ccd")], n_resamples=300)
    assert rev.iloc[0]["verdict"] == "reversed"
    text = claims_paragraph(c, n_test={"disjoint": len(y)})
    assert "*disjoint stamps* (3 seeds, 120 test images)" in text
    assert f"{first['diff']:+.1f} mAP [{first['diff_lo']:+.1f}, {first['diff_hi']:+.1f}]" in text
    assert "CCD beats CDUL holds" in text
    assert claims_paragraph(c.iloc[:0]) == ""


def test_claims_paragraph_opens_the_reports_readme(tmp_path):
    from ccdlib.report import CLAIMS_FILE, Reporter
    from ccdlib.report_index import build_index
    rep = Reporter(tmp_path, notebook="04_main_table", made_by=dict(protocol="shared", seeds="0", schedule="24 steps", rule="last", teacher="conse", test_images="8"))
    rep.save_table(pd.DataFrame({"method": ["CCD"], "mAP": [50.0]}), "main_table")
    rep.save_claims("**What holds here**: CCD beats CDUL holds, +3.0 mAP [+1.0, +5.0].\n")
    assert (tmp_path / CLAIMS_FILE).read_text().startswith("**What holds here**")
    build_index(tmp_path, render_html=False)
    readme = (tmp_path / "README.md").read_text()
    assert readme.index("CCD beats CDUL holds") < readme.index("## 04_main_table")
    assert readme.startswith("# Reports\n\n**What holds here**")
    assert "CCD beats CDUL holds, +3.0 mAP" in (tmp_path / "index.html").read_text()


def test_seeded_score_table_against_the_stats_functions():
    from ccdlib.metrics import mean_average_precision
    from ccdlib.stats import bootstrap_map, paired_bootstrap_difference
    from ccdlib.tables import seeded_score_table
    rng = np.random.default_rng(3)
    y = (rng.random((90, 4)) < 0.3).astype(int)
    a = [y + rng.normal(0, 0.5, y.shape) for _ in range(3)]
    b = [y + rng.normal(0, 1.0, y.shape)]
    df = seeded_score_table({"default": a, "other": b}, y, reference="default", n_resamples=200, seed=1)
    maps = [mean_average_precision(s, y).map for s in a]
    d0 = df.iloc[0]
    assert (d0["n_seeds"], d0["mAP"]) == (3, pytest.approx(np.mean(maps)))
    assert d0["mAP_sd"] == pytest.approx(np.std(maps, ddof=1))
    assert (d0["delta"], d0["delta_lo"], d0["delta_hi"]) == (0.0, 0.0, 0.0)   # the reference against itself
    iv = bootstrap_map(np.mean(a, axis=0), y, n_resamples=200, seed=1)
    assert (d0["mAP_seedavg"], d0["mAP_lo"], d0["mAP_hi"]) == pytest.approx((iv.estimate, iv.lo, iv.hi))
    d = paired_bootstrap_difference(b[0], np.mean(a, axis=0), y, n_resamples=200, seed=1)
    d1 = df.iloc[1]
    assert math.isnan(d1["mAP_sd"]) and (d1["delta"], d1["delta_lo"], d1["delta_hi"]) == pytest.approx(
        (d.estimate, d.lo, d.hi))
    with pytest.raises(ValueError, match="reference"):
        seeded_score_table({"a": a}, y, reference="missing")


def test_view_and_bias_claims_read_notebook_01_02_tables(tmp_path):
    pd.DataFrame({"grid": [1, 2, 3], "view": ["whole image", "1/4 patches (2x2)", "1/9 patches (3x3)"],
                  "mAP": [30.0, 45.0, 40.0]}).to_csv(tmp_path / "fig1_view_dependency_summary.csv", index=False)
    pd.DataFrame({"objects": [10], "whole_image": [20.0], "own_crop": [60.0],
                  "whole_image_bound": [33.3]}).to_csv(tmp_path / "fig1_top1_whole_vs_crop.csv", index=False)
    pd.DataFrame({"class": ["a", "b", "c"], "never_top1": [False, False, True], "top1_over_gt": [2.5, 0.4, 0.0],
                  "mean_top1_prob": [90.0, 50.0, float("nan")]}).to_csv(tmp_path / "fig2_class_bias.csv", index=False)
    from ccdlib import tables
    view, bias = tables.view_and_bias_claims(tmp_path)
    assert "holds" in view and "own crop 60.0 %" in view and "1/4 patches (2x2) scores mAP 45.0 against 30.0" in view
    assert "holds" in bias and "from 0.0 (c) to 2.5 (a)" in bias and "1 class(es) never top-1 (c)" in bias
    assert "50.0-90.0 %" in bias
    # the whole image best and the crop no better: view dependency does not hold
    pd.DataFrame({"objects": [10], "whole_image": [60.0], "own_crop": [50.0],
                  "whole_image_bound": [33.3]}).to_csv(tmp_path / "fig1_top1_whole_vs_crop.csv", index=False)
    assert "does not hold" in tables.view_and_bias_claims(tmp_path)[0]
    (tmp_path / "fig2_class_bias.csv").unlink()
    assert len(tables.view_and_bias_claims(tmp_path)) == 1
