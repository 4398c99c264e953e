"""Tests of ccdlib.analysis (the figure notebooks' computations): hand-computed cases, plus one tiny end-to-end
pass of the context-based helpers with a fake teacher and a randomly initialised student (no weights, fast)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ccdlib import analysis as A
from ccdlib.config import RunConfig
from ccdlib.datasets import ClassList, MultiLabelDataset
from ccdlib.context import Context
from ccdlib.student import StudentConfig
from ccdlib.teachers import Teacher
from ccdlib.trainer import StudentTrainer


# ------------------------------------------------------------------------------------------ Fig. 1
def test_max_over_tiles_and_gt_mean():
    t = np.array([[[0.1, 0.9], [0.5, 0.2]]])            # 1 image, 2 tiles, 2 classes
    np.testing.assert_allclose(A.max_over_tiles(t), [[0.5, 0.9]])
    with pytest.raises(ValueError):
        A.max_over_tiles(t[0])
    p = np.array([[0.2, 0.8], [0.6, 0.4]])
    y = np.array([[0, 1], [1, 1]])
    assert A.gt_mean_probability(p, y) == pytest.approx((0.8 + 0.6 + 0.4) / 3)
    assert np.isnan(A.gt_mean_probability(p, np.zeros_like(y)))


def test_view_dependency_summary_by_hand():
    y = np.array([[1, 0], [0, 1]])
    g = np.array([[0.4, 0.6], [0.7, 0.3]])             # whole image: both images rank the wrong class first
    tiles = {2: np.array([[[0.9, 0.1], [0.1, 0.2], [0.0, 0.0], [0.0, 0.0]],
                          [[0.2, 0.8], [0.1, 0.1], [0.0, 0.0], [0.0, 0.0]]])}
    df = A.view_dependency_summary(g, tiles, y, class_names=["a", "b"])
    assert df["grid"].tolist() == [1, 2] and df["tiles"].tolist() == [1, 4]
    whole, quarter = df.iloc[0], df.iloc[1]
    assert whole["gt_prob"] == pytest.approx(100 * (0.4 + 0.3) / 2)
    assert whole["absent_prob"] == pytest.approx(100 * (0.6 + 0.7) / 2)
    assert whole["gt_top1"] == 0.0 and whole["mAP"] == pytest.approx(50.0)   # each class: its positive ranked 2nd
    # max over tiles: image 0 -> (0.9, 0.2), image 1 -> (0.2, 0.8): perfect ranking, GT top-1 everywhere
    assert quarter["gt_prob"] == pytest.approx(100 * (0.9 + 0.8) / 2)
    assert quarter["absent_prob"] == pytest.approx(100 * (0.2 + 0.2) / 2)
    assert quarter["gt_top1"] == 100.0 and quarter["mAP"] == pytest.approx(100.0)


def test_example_view_probabilities_picks_best_tile():
    y = np.array([[0, 1]])
    g = np.array([[0.5, 0.5]])
    tiles = {2: np.array([[[0.1, 0.2], [0.1, 0.3], [0.1, 0.7], [0.1, 0.1]]])}
    df = A.example_view_probabilities(g, tiles, y, 0, ["a", "b"])
    assert df["class"].tolist() == ["b", "b"]
    assert df["probability"].tolist() == pytest.approx([50.0, 70.0])
    assert df["best_tile"].tolist() == [0, 2]


def test_object_views_grow_and_clip():
    boxes = [np.array([[1, 10, 20, 30, 60]]), np.array([[0, 0, 0, 50, 10], [2, 5, 5, 15, 15]])]
    sizes = [(100, 100), (60, 40)]
    views, owners = A.object_views(boxes, sizes)
    assert [v.box for v in views] == [(10, 20, 30, 60), (0, 0, 50, 10), (5, 5, 15, 15)]
    assert owners.tolist() == [[0, 1], [1, 0], [1, 2]]
    grown, _ = A.object_views(boxes, sizes, fraction=0.2)
    # +20 % of (20 x 40) each side -> (6, 12, 34, 68); (50 x 10) -> (-10, -2, 60, 12) clipped to (0, 0, 60, 12)
    assert grown[0].box == pytest.approx((6, 12, 34, 68))
    assert grown[1].box == pytest.approx((0, 0, 60, 12))
    assert grown[2].box == pytest.approx((3, 3, 17, 17))


def test_top1_rates_by_hand():
    g = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    owners = np.array([[0, 0], [0, 1], [1, 2]])       # image 0 holds classes 0 and 1, image 1 class 2
    crops = np.array([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.0, 0.1, 0.9]])
    r = A.top1_rates(g, crops, owners)
    assert r["objects"] == 3
    assert r["whole_image"] == pytest.approx(100 * 2 / 3)   # class 0 on image 0, class 2 on image 1
    assert r["own_crop"] == pytest.approx(100 * 2 / 3)      # the class-1 crop still says class 0
    assert r["whole_image_bound"] == pytest.approx(100 * (0.5 + 0.5 + 1) / 3)


# ------------------------------------------------------------------------------------------ Fig. 2
def test_top1_statistics_by_hand():
    p = np.array([[0.6, 0.3, 0.1], [0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1]])
    y = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 1], [1, 0, 1]])
    conf = np.array([True, True, True, False])
    df = A.top1_statistics(p, y, ["a", "b", "c"], confident=conf)
    assert df["n_images"].tolist() == [2, 2, 2]
    assert df["n_top1"].tolist() == [2, 1, 0]              # image 3 is not confident
    assert df["n_top1_correct"].tolist() == [1, 1, 0]
    assert df["mean_top1_prob"].iloc[0] == pytest.approx(70.0)
    assert df["mean_top1_prob"].iloc[1] == pytest.approx(70.0)
    assert np.isnan(df["mean_top1_prob"].iloc[2]) and df["never_top1"].tolist() == [False, False, True]
    assert df["mean_prob"].tolist() == pytest.approx([52.5, 37.5, 10.0])
    assert df["gt_share"].tolist() == pytest.approx([50.0, 50.0, 50.0])
    assert df["top1_share"].tolist() == pytest.approx([200 / 3, 100 / 3, 0.0])
    assert df["top1_over_gt"].tolist() == pytest.approx([4 / 3, 2 / 3, 0.0])


def test_biased_examples_most_confident_wrong_first():
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.7, 0.3]])
    y = np.array([[1, 0], [0, 1], [1, 0], [0, 1]])         # images 1, 2, 3 have a wrong top-1
    assert A.biased_examples(p, y, 2).tolist() == [2, 3]
    assert A.biased_examples(p, y, 10).tolist() == [2, 3, 1]


def test_debiasing_effect_keeps_map_moves_thresholds():
    # a third class "c" is never top-1 and never present (its bias falls back to the mean; it has no AP)
    p = np.array([[0.9, 0.1, 0.01], [0.6, 0.4, 0.01], [0.3, 0.7, 0.01], [0.64, 0.36, 0.01]])
    y = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0]])
    with pytest.warns(UserWarning, match="never top-1"):
        df, init = A.debiasing_effect(p, y, ["a", "b", "c"], ls=None)   # every image is confident (H < 2)
    # bias = mean top-1 probability: class a (0.9 + 0.6 + 0.64) / 3, class b 0.7, class c their mean
    np.testing.assert_allclose(init.bias, [2.14 / 3, 0.7, (2.14 / 3 + 0.7) / 2])
    by = df.set_index("stage")
    raw, scaled, ccd = by.iloc[0], by.iloc[1], by.iloc[3]
    # each class's AP: its two positives ranked 1st and 3rd -> (1 + 2/3) / 2; p / bias keeps the order (the only
    # clamped entries, one per class, are at the top already)
    assert raw["mAP"] == pytest.approx(100 * 5 / 6) and scaled["mAP"] == pytest.approx(100 * 5 / 6)
    # labels >= 0.5 per image: raw 1, 1, 1, 1; debiased 1, 2 (0.6/0.713, 0.4/0.7), 1, 2 (0.36/0.7 = 0.514)
    assert raw["positives_per_image"] == pytest.approx(1.0)
    assert scaled["positives_per_image"] == pytest.approx(1.5)
    assert ccd["mAP"] == pytest.approx(scaled["mAP"])                 # ls=None: CCD's y0 is p / bias clamped
    assert list(df.columns[:4]) == ["stage", "mAP", "CF1", "OF1"] and len(df) == 4


# ------------------------------------------------------------------------------------------ Fig. 3
def test_random_box_views_same_count_sizes_inside_seeded():
    boxes = [np.array([[0, 10, 10, 30, 50], [1, 0, 0, 100, 20]]), np.array([[2, 5, 5, 25, 15]])]
    sizes = [(100, 80), (40, 40)]
    v0 = A.random_box_views(boxes, sizes, seed=0)
    assert [v.image for v in v0] == [0, 0, 1]
    for v, (w, h) in zip(v0, [(20, 40), (100, 20), (20, 10)]):
        x0, y0, x1, y1 = v.box
        assert (x1 - x0, y1 - y0) == pytest.approx((w, h))
        W, H = sizes[v.image]
        assert 0 <= x0 and 0 <= y0 and x1 <= W and y1 <= H
    assert [v.box for v in A.random_box_views(boxes, sizes, seed=0)] == [v.box for v in v0]
    assert [v.box for v in A.random_box_views(boxes, sizes, seed=1)] != [v.box for v in v0]


def test_max_over_views_with_fill():
    probs = np.array([[0.1, 0.5], [0.3, 0.2], [0.9, 0.0]])
    imgs = np.array([0, 0, 2])
    fill = np.full((3, 2), 0.25)
    np.testing.assert_allclose(A.max_over_views(probs, imgs, 3, fill=fill), [[0.3, 0.5], [0.25, 0.25], [0.9, 0.0]])
    np.testing.assert_allclose(A.max_over_views(probs, imgs, 3)[1], [0.0, 0.0])


# ------------------------------------------------------------------------------------------ qualitative
def test_box_to_image_and_cam_heatmap():
    assert A.box_to_image((0, 10, 64, 32), 64, (128, 32)) == pytest.approx((0, 5, 128, 16))
    cam = np.array([[0.0, 1.0], [2.0, 3.0]])
    h = A.cam_heatmap(cam, (8, 4))
    assert h.shape == (4, 8) and h.min() == pytest.approx(0.0) and h.max() == pytest.approx(1.0)
    assert h[-1, -1] > h[0, 0]
    assert not A.cam_heatmap(np.ones((3, 3)), (5, 5)).any()


# ------------------------------------------------------------------------------------------ end to end (tiny)
class _ColourTeacher(Teacher):
    """Fast fake teacher: the embedding is the view's mean colour (3-d, unit norm); class k's text embedding is
    the k-th colour axis, so a red view is "class 0", green "class 1", blue "class 2"."""

    def __init__(self):
        self.image_size, self.logit_scale, self.device = 8, 10.0, torch.device("cpu")
        self._mean, self._std, self._pixel_range = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 1.0

    def fingerprint(self) -> dict:
        return {"backend": "colour-test"}

    @torch.no_grad()
    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        return F.normalize(batch.mean((2, 3)) + 1e-3, dim=-1)


@pytest.fixture(scope="module")
def tiny_context(tmp_path_factory) -> Context:
    root = tmp_path_factory.mktemp("analysis_images")
    rng = np.random.default_rng(0)
    paths, labels, boxes = [], [], []
    for i in range(6):
        arr = np.full((64, 64, 3), 20, np.uint8)
        c0, c1 = i % 3, (i + 1) % 3
        arr[4:28, 4:28, c0] = 250                        # one square of colour c0, one of colour c1
        arr[36:60, 30:54, c1] = 250
        arr += rng.integers(0, 5, arr.shape, dtype=np.uint8)
        p = root / f"img{i}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
        y = np.zeros(3, np.uint8)
        y[[c0, c1]] = 1
        labels.append(y)
        boxes.append(np.array([[c0, 4, 4, 28, 28], [c1, 30, 36, 54, 60]], dtype=np.float64))
    classes = ClassList(("red", "green", "blue"), ("red", "green", "blue"))
    ds = MultiLabelDataset("tiny", [f"i{i}" for i in range(6)], paths, np.stack(labels), classes, boxes=boxes)
    student = StudentConfig(trunk="efficientnet-lite0", trunk_weights="random", image_size=64, batch_size=3,
                            device="cpu", head_dtype="float32")
    cfg = RunConfig(epochs=3, student=student, teacher_batch_size=8)
    teacher = _ColourTeacher()
    classifier = torch.eye(3)
    # a disk cache: the students' trunk features are extracted once for the whole module
    return Context(cfg=cfg, train=ds, test=ds, teacher=teacher, classifier=classifier,
                   cache_dir=tmp_path_factory.mktemp("analysis_cache"))


def test_local_view_label_sets_and_students(tiny_context):
    ctx = tiny_context
    sets = A.local_view_label_sets(ctx, "train", seed=0)
    assert list(sets) == ["global", "around_gt", "gt", "random", "grid", "ground_truth"]
    for s in sets.values():
        assert s.labels.shape == (6, 3) and np.all((0 <= s.labels) & (s.labels <= 1))
    assert sets["gt"].views_per_image == 2 and sets["grid"].views_per_image == 4
    # a GT box is a pure colour square: its class wins it, so the max over GT boxes ranks perfectly
    q = A.compare_label_sets(ctx, {k: sets[k] for k in ("gt", "ground_truth")}, epochs=1)
    assert q["pseudo_mAP"].tolist() == pytest.approx([100.0, 100.0])
    assert np.all(np.isfinite(q["student_mAP"]))
    out = A.train_student_on_labels(ctx, sets["gt"].labels, 2)
    assert len(out["losses"]) == 2 and 0 <= out["test"]["mAP"] <= 100 and "OF1" in out["test"]


def test_label_students_are_cached_on_disk(tiny_context, monkeypatch):
    """A rerun reads the test scores and losses back (no training); other labels or another seed train anew."""
    from dataclasses import replace
    ctx = tiny_context
    labels = np.eye(3)[[0, 1, 2, 0, 1, 2]] * 0.9
    first = A.train_student_on_labels(ctx, labels, 2)
    calls = []
    real = StudentTrainer.fit_epoch
    monkeypatch.setattr(StudentTrainer, "fit_epoch", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    again = A.train_student_on_labels(ctx, labels, 2)
    assert calls == []
    np.testing.assert_array_equal(again["test_scores"], first["test_scores"])
    assert again["test_scores"].dtype == first["test_scores"].dtype and again["losses"] == first["losses"]
    assert again["test"] == first["test"]
    other = A.train_student_on_labels(ctx, labels[::-1].copy(), 2)
    assert len(calls) == 2 and not np.array_equal(other["test_scores"], first["test_scores"])
    A.train_student_on_labels(replace(ctx, cfg=replace(ctx.cfg, seed=1)), labels, 2)
    assert len(calls) == 4


def test_warmup_and_explained_update(tiny_context):
    state = A.ccd_warmup(tiny_context, epochs=1)
    assert state.student_probs.shape == (6, 3) and state.selected.shape == (6, 3)
    assert state.trainer.epoch == 1
    ex = A.explain_label_update(state, [0, 2])
    assert [e.index for e in ex] == [0, 2]
    for e in ex:
        s = len(e.classes)
        assert e.cams.shape[0] == s and len(e.boxes_minmax) == len(e.boxes_raster) == len(e.crops) == s
        assert e.crop_probs.shape == (s, 3)
        for b in e.boxes_minmax + e.crops:
            assert b is None or (0 <= b[0] < b[2] <= 64 and 0 <= b[1] < b[3] <= 64)
        assert e.y_updated.shape == (3,) and np.all((0 <= e.y_updated) & (e.y_updated <= 1))
        # method.md §6.4 with r = 0.2; an image without crops is mixed with its floor row (ccd.no_crop: floor, released)
        np.testing.assert_allclose(e.y_updated, np.clip(0.2 * e.y_prev + 0.8 * e.y_local, 0, 1))
