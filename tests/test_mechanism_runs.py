"""Issue 22 at run level, on the real pipeline scaled down (conftest's 16/8-image mosaic set): CCD's view controls
change only the label update's views (the warm-up is the same run), the CDUL -> CCD path's steps are the configs
they say, and every checkpoint records the training images' mAP against their ground truth."""
from __future__ import annotations


import numpy as np
import pytest

from ccdlib import run_config_from_params
from ccdlib.context import make_context
from ccdlib.mechanisms import CDUL_TO_CCD_PATH, VIEW_CONTROLS, path_configs, view_control_configs
from ccdlib.methods import RUNNERS
from ccdlib.view_controls import mean_objects_per_image


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: one torch thread for the module


@pytest.fixture(scope="module")
def base(small_mosaic_root, tmp_path_factory):
    root, tmp = small_mosaic_root, tmp_path_factory.mktemp("mech")
    return run_config_from_params(dict(
        method="ccd", epochs=3, ccd_warmup_epochs=2, seed=0, data_kind="voc", data_root=str(root),
        data_classes=str(root / "classes.yaml"), teacher_arch="efficientnet-lite0", teacher_image_size=96,
        teacher_device="cpu", student_image_size=96, student_batch_size=8, student_device="cpu",
        student_n_aug_views=1, teacher_batch_size=32, out_dir=str(tmp / "results"), cache_dir=str(tmp / "cache"),
        teacher_conse_hierarchy=False, teacher_dtype="float32", student_head_dtype="float32", ccd_cam_image_size=96))


@pytest.fixture(scope="module")
def controls(base):
    ctx = make_context(base)
    cfgs = view_control_configs(base, 0)
    return ctx, {k: RUNNERS["ccd"](c, ctx) for k, c in cfgs.items()}


def test_controls_share_the_warm_up_and_change_only_the_views(controls):
    ctx, res = controls
    ccd = res["ccd"]
    n = len(ctx.train)
    for key, r in res.items():
        # checkpoints 1-2 are the warm-up (before the update): the same training, bit for bit
        assert [h["test_mAP"] for h in r.history[:2]] == [h["test_mAP"] for h in ccd.history[:2]], key
        assert r.info["tau"] == ccd.info["tau"], key
        np.testing.assert_array_equal(r.stage_labels["ccd_debiased"], ccd.stage_labels["ccd_debiased"])
        assert (r.info["views"], r.info["selection"]) == ({"random_boxes": "random_boxes", "tiles": "tiles",
                                                          "gt_boxes": "gt_boxes"}.get(key, "cam"),
                                                         VIEW_CONTROLS[key][2].get("selection", "tau"))
    assert res["random_boxes"].info["crops_per_image"] == ccd.info["crops_per_image"]   # the same boxes, moved
    assert res["tiles"].info["crops_per_image"] == 9.0
    objects = mean_objects_per_image(ctx.train.boxes, ctx.train.labels)
    assert res["gt_boxes"].info["crops_per_image"] == pytest.approx(objects)            # one view per object
    assert res["top_k"].info["top_k"] == max(1, round(objects))
    assert res["all_classes"].info["classes_per_image"] == ctx.train.num_classes
    assert res["all_classes"].info["crops_per_image"] >= ccd.info["crops_per_image"]
    assert res["true_classes"].info["classes_per_image"] == pytest.approx(ctx.train.labels.sum(1).mean())
    assert res["random_classes"].info["classes_per_image"] == pytest.approx(ccd.info["classes_per_image"])
    # what the update changed differs by control: the local labels are the views' own
    local = {k: r.stage_labels["ccd_local"] for k, r in res.items()}
    assert not np.array_equal(local["tiles"], local["ccd"]) and not np.array_equal(local["gt_boxes"], local["ccd"])
    # every checkpoint records the training images against their ground truth (no rule reads it)
    assert all(np.isfinite(h["train_mAP_truth"]) for h in ccd.history)
    assert len(ccd.stage_labels["ccd_local"]) == n


def test_path_steps_are_one_switch_apart(base):
    cfgs = path_configs(base, 1)
    keys = [p[0] for p in CDUL_TO_CCD_PATH]
    assert list(cfgs) == keys and cfgs["cdul"].method == "cdul" and cfgs["consistency"].method == "ccd"
    assert cfgs["consistency"].ccd == base.ccd and cfgs["cdul"].cdul == base.cdul      # the ends are the methods
    assert all(c.seed == 1 for c in cfgs.values())
    assert cfgs["loss"].cdul.student_loss == "bce" and cfgs["loss"].cdul.alignment == "bernoulli"
    assert cfgs["batch"].cdul.batch_size == 0 and cfgs["initial_labels"].cdul.initial_labels == "ccd"
    assert cfgs["label_update"].ccd.consistency is False


def test_cdul_on_ccd_initial_labels_trains_on_ccds_debiased_labels(base, controls):
    ctx, res = controls
    cfg = path_configs(base, 0)["initial_labels"]
    r = RUNNERS["cdul"](cfg, ctx)
    np.testing.assert_allclose(r.stage_labels["cdul_initial"], res["ccd"].stage_labels["ccd_debiased"], rtol=1e-6)
    assert r.info["initial_labels"] == "ccd"
