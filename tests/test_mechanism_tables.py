"""Issue 22's tables on hand-made runs: the CDUL -> CCD path telescopes to the whole gap, the view controls are
paired against CCD, the sentences are the rows', CDUL's pre-alignment pick is found, and the generalisation table
reads the picked checkpoint."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ccdlib import fairness
from ccdlib.metrics import mean_average_precision
from ccdlib.stats import seed_averaged_scores
from ccdlib.tables import SeedRun, mechanism_paragraph, path_table, view_controls_table

RNG = np.random.default_rng(0)
Y = (RNG.random((80, 5)) < 0.3).astype(np.uint8)
Y[0] = 1


def _run(method, seed, quality, *, noise, info=None, history=None, rule="few_label"):
    scores = Y + noise * np.random.default_rng([seed, int(noise * 100)]).standard_normal(Y.shape)
    m = mean_average_precision(scores, Y).map
    res = {"method": method, "name": f"{method}{seed}", "config": {"cdul": {"ga_step": 1.0}},
           "selected": {rule: {"epoch": 0, "step": 10, "metrics": {"mAP": m}}},
           "pseudo_label_quality": quality, "info": info or {}, "history": history or []}
    return SeedRun("shared", seed, res, {rule: scores})


def test_path_steps_sum_to_the_whole_gap():
    path = [("cdul", "CDUL", "cdul", {}, {}), ("a", "switch a", "cdul", {}, {}), ("b", "switch b", "ccd", {}, {})]
    noise = {"cdul": 2.0, "a": 1.2, "b": 0.6}
    runs = {k: [_run("ccd", s, {}, noise=n) for s in (0, 1, 2)] for k, n in noise.items()}
    t = path_table(runs, {"shared": Y}, path=path, n_resamples=200)
    assert list(t["step"]) == [0, 1, 2] and list(t["n_seeds"]) == [3, 3, 3]
    assert np.isnan(t["step_diff"].iloc[0]) and t["from_start"].iloc[0] == 0
    assert t["step_diff"].iloc[1:].sum() == pytest.approx(t["from_start"].iloc[-1])
    avg = {k: mean_average_precision(seed_averaged_scores([r.scores["few_label"] for r in rs]), Y).map
           for k, rs in runs.items()}
    assert t["mAP"].tolist() == pytest.approx([avg["cdul"], avg["a"], avg["b"]])
    assert t["step_diff"].iloc[2] == pytest.approx(avg["b"] - avg["a"])
    assert (t["diff_lo"].iloc[1:] <= t["step_diff"].iloc[1:]).all() and (t["step_diff"].iloc[1:] <= t["diff_hi"].iloc[1:]).all()


def test_view_controls_are_paired_against_ccd_and_the_sentences_are_the_rows():
    controls = {"ccd": ("CCD", "-", {}), "tiles": ("tiles", "placement", {}), "gt_boxes": ("oracle", "oracle", {})}
    runs = {"ccd": [_run("ccd", s, {"ccd_local": {"mAP": 60.0}, "ccd_updated": {"mAP": 61.0}}, noise=0.8,
                         info={"crops_per_image": 10.0, "classes_per_image": 9.0}) for s in (0, 1)],
            "tiles": [_run("ccd", s, {"ccd_local": {"mAP": 64.0}, "ccd_updated": {"mAP": 65.0}}, noise=1.6,
                           info={"crops_per_image": 9.0}) for s in (0, 1)],
            "gt_boxes": [_run("ccd", s, {"ccd_local": {"mAP": 80.0}}, noise=0.2,
                              info={"crops_per_image": 2.0}) for s in (1,)]}
    vc = view_controls_table(runs, {"shared": Y}, controls=controls, n_resamples=200)
    assert list(vc["key"]) == ["ccd", "tiles", "gt_boxes"]
    assert vc["diff_vs_ccd"].iloc[0] == 0 and np.isnan(vc["diff_lo"].iloc[0])
    assert vc["local_label_mAP"].tolist() == [60.0, 64.0, 80.0] and vc["views_per_image"].tolist() == [10, 9, 2]
    assert vc["diff_vs_ccd"].iloc[1] < 0 < vc["diff_vs_ccd"].iloc[2]          # more noise: lower mAP
    # the oracle ran seed 1 only: its difference is paired on seed 1
    one = mean_average_precision(runs["gt_boxes"][0].scores["few_label"], Y).map - \
        mean_average_precision(runs["ccd"][1].scores["few_label"], Y).map
    assert vc["diff_vs_ccd"].iloc[2] == pytest.approx(one)
    path = pd.DataFrame([{"step": 0, "switch": "CDUL", "protocol": "shared", "n_seeds": 2, "mAP": 50.0,
                          "step_diff": np.nan, "diff_lo": np.nan, "diff_hi": np.nan, "from_start": 0.0,
                          "from_start_lo": np.nan, "from_start_hi": np.nan},
                         {"step": 1, "switch": "loss", "protocol": "shared", "n_seeds": 2, "mAP": 58.0,
                          "step_diff": 8.0, "diff_lo": 6.0, "diff_hi": 10.0, "from_start": 8.0,
                          "from_start_lo": 6.0, "from_start_hi": 10.0}])
    text = mechanism_paragraph(vc, path)
    r = vc.iloc[1]
    assert f"- tiles (placement; 9.0 views per image, local labels 64.0): {r['diff_vs_ccd']:+.1f} [{r['diff_lo']:+.1f}" in text
    assert "- loss: +8.0 [+6.0, +10.0] (100 % of the gap); it raises the mAP." in text
    assert "(2 seeds; CCD" in text and "gap of +8.0 [+6.0, +10.0]" in text
    lines = text.splitlines()             # each bold header a paragraph of its own, its bullets a list of their own
    for i, line in enumerate(lines):
        if line.startswith("**"):
            assert (i == 0 or lines[i - 1] == "") and lines[i + 1] == "", line
    from ccdlib.report_index import markdown_to_html
    html = markdown_to_html(text)
    assert html.count("<ul>") == 2 and html.count("<p><strong>") == 2


def test_cdul_pick_before_its_first_alignment():
    hist = [{"step": s, "test_mAP": m, "val_mAP": v} for s, m, v in
            ((312, 60.0, 50.0), (624, 61.0, 49.0), (936, 62.0, 48.5), (1248, 59.0, 48.9))]
    res = {"method": "cdul", "history": hist, "info": {"aligned_steps": [624, 936, 1248]},
           "selected": {"few_label": {"epoch": 0, "step": 312, "metrics": {"mAP": 60.0}}}}
    p = fairness.cdul_alignment_pick(res)
    assert p["pre_alignment"] and p["first_alignment_step"] == 624
    assert (p["post_rule_step"], p["post_rule_mAP"], p["post_best_mAP"]) == (624, 61.0, 62.0)   # best val after 624
    runs = [SeedRun("shared", 0, {**res, "name": "c", "config": {}}, {})]
    picks = fairness.cdul_alignment_picks(runs)
    assert len(picks) == 1 and picks["row"].iloc[0] == "CDUL"
    note = fairness.cdul_alignment_note(picks)
    assert "shared: 1 of 1 seeds before its first alignment (step 624), mean 60.0 mAP" in note
    assert "gives 61.0" in note
    no_ga = {**res, "info": {"aligned_steps": []}}
    assert not fairness.cdul_alignment_pick(no_ga)["pre_alignment"]


def test_generalisation_reads_the_picked_checkpoint():
    hist = [{"step": 10, "test_mAP": 40.0, "train_mAP_eval": 90.0, "train_mAP_truth": 55.0},
            {"step": 20, "test_mAP": 45.0, "train_mAP_eval": 99.0, "train_mAP_truth": 60.0}]
    res = {"method": "ccd", "name": "x", "history": hist, "info": {},
           "selected": {"few_label": {"epoch": 1, "step": 20, "metrics": {"mAP": 45.0}}},
           "pseudo_label_quality": {"global": {"mAP": 30.0}, "ccd_debiased": {"mAP": 32.0}, "ccd_updated": {"mAP": 58.0}}}
    g = fairness.generalisation_table([SeedRun("shared", 0, res, {})])
    row = g.iloc[0]
    assert (row["labels_vs_truth"], row["train_vs_own_labels"], row["train_vs_truth"], row["test_mAP"]) == \
        (58.0, 99.0, 60.0, 45.0)
    assert row["row"] == "CCD" and row["n_seeds"] == 1
