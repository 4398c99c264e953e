"""Issue 15: budgets in optimiser steps, the tau walk's input and check count, the selection rules (the few-label
split) and the scoring rules -- against hand-computed cases and the released code's numbers."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, softmax
from sklearn.metrics import average_precision_score

from ccdlib import run_config_from_params
from ccdlib.errors import ConfigError
from ccdlib.fairness import claim_verdicts, convergence_table
from ccdlib.label_update import calibrate_class_threshold, tau_walk
from ccdlib.metrics import mean_average_precision
from ccdlib.schedule import released_steps_per_epoch, released_tau_checks, training_schedule
from ccdlib.selection import (few_label_split, reference_scoring, resolve_scoring, scores_from_logits,
                              select_checkpoints)
from ccdlib.tables import SeedRun


def _cfg(**kw):
    return run_config_from_params(kw)


# ------------------------------------------------------------------------------------------------ schedules
def test_the_defaults_are_the_released_step_counts():
    assert released_steps_per_epoch() == 314 and released_steps_per_epoch(5717, 8) == 715
    assert released_tau_checks() == 50 and released_tau_checks(320) == 3
    cfg = _cfg(method="ccd")
    assert (cfg.steps, cfg.eval_every_steps, cfg.ccd.warmup_steps) == (10 * 314, 314, 2 * 314)
    s = training_schedule(cfg, 5011)           # on VOC07 trainval: the released run exactly
    assert (s.steps_per_pass, s.passes, s.warmup_passes, s.steps_before_update) == (314, 10, 2, 628)
    assert s.eval_passes == tuple(range(10))   # one checkpoint per released epoch


def test_a_small_split_gets_the_same_steps_not_the_same_epochs():
    s = training_schedule(_cfg(method="ccd"), 320)       # 20 steps per pass
    assert (s.steps_per_pass, s.passes, s.steps) == (20, 157, 3140)
    assert s.eval_passes == tuple(range(15, 157, 16)) + (156,)                    # every round(314/20)=16 passes
    # issue 22: the warm-up is whole checkpoint intervals (round(628 / 320) = 2 of 16 passes), so the update lands on
    # checkpoint 2 and checkpoint 3 is a whole interval on updated labels, as the released run's epoch index 2
    assert s.warmup_passes == 32 and s.steps_before_update == 640
    assert s.warmup_passes - 1 == s.eval_passes[1] and s.eval_passes[2] - s.eval_passes[1] == 16
    by_pass = training_schedule(_cfg(method="ccd", ccd_warmup_rounding="pass"), 320)
    assert by_pass.warmup_passes == 31 and by_pass.steps_before_update == 620     # round(628 / 20) passes
    assert by_pass.eval_passes[1] == 31 and by_pass.warmup_passes - 1 == 30       # 20 steps before checkpoint 2
    # a warm-up shorter than half an interval still gets one whole interval
    assert training_schedule(_cfg(method="ccd", ccd_warmup_steps=40), 320).warmup_passes == 16
    sup = training_schedule(_cfg(method="supervised"), 320)
    assert sup.steps == s.steps and sup.warmup_passes == 0                         # the same budget for every row


def test_epochs_still_say_it_in_passes():
    s = training_schedule(_cfg(method="ccd", epochs=10, ccd_warmup_epochs=2), 320)
    assert (s.passes, s.warmup_passes, s.eval_passes) == (10, 2, tuple(range(10)))
    with pytest.raises(ConfigError, match="warm-up"):
        training_schedule(_cfg(method="ccd", steps=100, ccd_warmup_steps=100), 320)


def test_cdul_alignment_in_steps_matches_the_reproductions_epochs():
    # the reproduction: VOC12 train at batch 8, 100 epochs, align when (e+1) > 10 and (e+1) % 10 == 0
    by_epochs = training_schedule(_cfg(method="cdul", epochs=100, cdul_ga_warmup=10, cdul_ga_every=10), 5717)
    assert by_epochs.align_passes == tuple(range(19, 100, 10))                     # 9 alignments
    by_steps = training_schedule(_cfg(method="cdul", steps=71500, cdul_ga_warmup_steps=7150,
                                      cdul_ga_every_steps=7150), 5717)
    assert by_steps.steps_per_pass == 715 and by_steps.align_passes == by_epochs.align_passes
    # the common budget on 320 images at batch 8 (40 steps per pass): alignments at steps 628, 942, ..., 3140
    d = training_schedule(_cfg(method="cdul"), 320)
    assert d.steps_per_pass == 40 and d.steps == 3160
    crossings = range(628, 3141, 314)
    assert d.align_passes == tuple(sorted({(m - 1) // 40 for m in crossings}))
    assert len(d.align_passes) == 9 and d.as_dict()["alignments"] == 9
    off = training_schedule(_cfg(method="cdul", cdul_gradient_alignment=False), 320)
    assert off.align_passes == ()


# ------------------------------------------------------------------------------------------------ the tau walk
def _released_loop(probs, *, tau=0.05, bound=4, seed=0):
    """k0u-id/CCD train.py 216-247, transcribed: one pass, running mean checked every 100 images."""
    rng = np.random.default_rng(seed)
    mean, checks = 0.0, 0
    for pos, i in enumerate(rng.permutation(len(probs))):
        mean += float((probs[i] >= tau).sum()) / 100
        if pos % 100 == 0 and pos != 0:
            checks += 1
            if bound < mean < bound + 2:
                return tau, checks
            tau += 0.001
            mean = 0.0
    return tau, checks


def test_released_checks_equals_the_released_loop_on_voc07_and_keeps_checking_on_a_small_split():
    rng = np.random.default_rng(3)
    voc = rng.uniform(0, 0.2, size=(5011, 20))          # ~every class above 0.05: the count stays too high
    assert tau_walk(voc, walk="released_checks", checks=50) == tau_walk(voc, walk="single_pass") \
        == _released_loop(voc)
    tau, checks = _released_loop(voc)
    assert checks == 50 and tau == pytest.approx(0.05 + 50 * 0.001)
    small = voc[:320]
    assert tau_walk(small, walk="single_pass")[1] == 3                              # the released loop: 3 checks
    t, made = tau_walk(small, walk="released_checks", checks=50)
    assert made == 50 and t == pytest.approx(0.10)                                  # VOC07's 50 checks
    assert calibrate_class_threshold(small, walk="released_checks") == t


def test_the_walk_counts_on_the_training_views_it_is_given():
    n, c = 400, 10
    base = np.zeros((n, c))
    base[:, :3] = 0.9                                    # 3 classes per image unflipped: too few
    flip = np.zeros((n, c))
    flip[:, :7] = 0.9                                    # 7 flipped: too many
    for one in (base, flip):                             # either view alone never lands in (4, 6): 20 checks
        t, made = tau_walk(one, walk="released_checks", checks=20)
        assert made == 20 and t == pytest.approx(0.05 + 20 * 0.001)
    # the training loader's random flips: each visit draws its view, the mean count is ~5 -> stops at the first check
    assert tau_walk(np.stack([base, flip]), walk="released_checks", checks=20) == (0.05, 1)


# ------------------------------------------------------------------------------------------------ selection rules
def test_few_label_split_has_k_per_class_is_seeded_and_disjoint_from_training_and_test():
    rng = np.random.default_rng(0)
    y = (rng.random((320, 16)) < 0.18).astype(np.uint8)
    held = few_label_split(y, k=2, seed=0)
    assert held.dtype == np.int64 and np.all(np.diff(held) > 0) and len(held) <= 48      # capped at 15 %
    assert (y[held].sum(0) >= 2).all()                                                     # k positives per class
    assert np.array_equal(held, few_label_split(y, k=2, seed=0))                           # seeded
    assert not np.array_equal(held, few_label_split(y, k=2, seed=1))
    assert len(few_label_split(y, k=0)) == 0
    # through the data loader: held out of training, never in the test split
    from ccdlib.datasets import ClassList, MultiLabelDataset
    from ccdlib.inputs import split_few_label
    from ccdlib.config import DataConfig
    classes = ClassList(tuple(f"c{i}" for i in range(16)), tuple(f"c{i}" for i in range(16)))
    ds = MultiLabelDataset(name="t", image_ids=[f"i{k}" for k in range(320)],
                           image_paths=[f"/x/i{k}.jpg" for k in range(320)], labels=y, classes=classes)
    train, val = split_few_label(ds, DataConfig(few_label_k=2))
    assert len(train) + len(val) == 320 and not set(train.image_ids) & set(val.image_ids)
    assert set(val.image_ids) == {f"i{k}" for k in held}


def test_select_checkpoints_every_rule():
    train = [10, 20, 25, 35, 36]          # second differences from e=2: -5, +5 -> gt_free picks 3
    test = [1, 5, 4, 3, 2]
    val = [0, 1, 3, 2, 2]
    r = select_checkpoints(train, test, val)
    assert r == {"last": 4, "gt_free": 3, "gt_best": 1, "few_label": 2}
    assert "few_label" not in select_checkpoints(train, test, None)
    assert "few_label" not in select_checkpoints(train, test, [np.nan] * 5)


# ------------------------------------------------------------------------------------------------ scoring rules
def test_scoring_rules_against_scipy_and_the_free_offset_of_a_softmax_head():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(60, 5))
    np.testing.assert_allclose(scores_from_logits(z, "sigmoid"), expit(z))
    np.testing.assert_allclose(scores_from_logits(z, "softmax"), softmax(z, axis=1))
    y = (rng.random((60, 5)) < 0.3).astype(int)
    y[0] = 1
    shifted = z + rng.normal(scale=5, size=(60, 1))          # a free logit offset per image (softmax + KL training)
    ap = lambda s: 100 * np.mean([average_precision_score(y[:, c], s[:, c]) for c in range(5)])
    assert mean_average_precision(scores_from_logits(shifted, "softmax"), y).map == pytest.approx(
        ap(softmax(z, axis=1)))                               # softmax scoring ignores the offset ...
    assert abs(ap(expit(shifted)) - ap(expit(z))) > 1         # ... sigmoid scoring does not
    assert reference_scoring("cdul", "softmax_kl") == "softmax"
    assert reference_scoring("cdul", "bce") == reference_scoring("ccd") == "sigmoid"
    assert resolve_scoring("sigmoid", "cdul", "softmax_kl") == "sigmoid"
    with pytest.raises(ConfigError, match="scoring"):
        _cfg(scoring="logit")


# ------------------------------------------------------------------------------------------------ verdicts, convergence
def test_a_claim_holds_only_under_every_label_free_rule():
    rows = []
    for claim, verdicts in (("A", dict(oracle="holds", last="holds", gt_free="holds", few_label="holds")),
                            ("B", dict(oracle="holds", last="holds", gt_free="reversed", few_label="holds")),
                            ("C", dict(oracle="holds", last="unresolved", gt_free="unresolved", few_label="unresolved"))):
        rows += [dict(protocol="shared", claim=claim, rule=r, verdict=v, diff=0.0, diff_lo=0.0, diff_hi=0.0)
                 for r, v in verdicts.items()]
    v = claim_verdicts(pd.DataFrame(rows)).set_index("claim")
    assert v.loc["A", "verdict"] == "holds" and v.loc["A", "oracle_agrees"]
    assert v.loc["B", "verdict"] == "depends on the rule"
    assert v.loc["C", "verdict"] == "unresolved" and not v.loc["C", "oracle_agrees"]


def test_convergence_notes_a_fall_and_measures_the_other_scoring():
    hist = [dict(epoch=e, step=100 * (e + 1), test_mAP=m, test_mAP_softmax=s)
            for e, (m, s) in enumerate([(50, 50), (58, 57), (55, 58), (42, 58)])]
    res = dict(name="r", method="cdul", config=dict(cdul=dict(gradient_alignment=True, alignment="kl")),
               history=hist, selected={}, info=dict(scoring="sigmoid", schedule=dict(steps=400)))
    flat = dict(res, history=[dict(h, test_mAP=50 + e) for e, h in enumerate(hist)])
    t = convergence_table([SeedRun("shared", 0, res, {}), SeedRun("shared", 1, flat, {})], tol=1.0)
    fall, ok = t.iloc[0], t.iloc[1]
    assert (fall.best_mAP, fall.best_step, fall.last_mAP, fall.converged) == (58, 200, 42, False)
    assert "falls 16.0 mAP after step 200" in fall.note and "softmax scoring best 58.0" in fall.note
    assert ok.converged and ok.note == ""
