"""Issue 22 §1: the controls of CCD's label update (ccdlib.view_controls), on hand-made CAMs, boxes and scores."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ccdlib.errors import ConfigError
from ccdlib.label_update import cam_boxes, classifier_guided_label_update
from ccdlib.view_controls import (control_classes, control_views, mean_objects_per_image, object_views,
                                  random_placement, tile_views)
from ccdlib.views import View


def test_selection_rules_by_hand():
    p = np.array([[0.9, 0.2, 0.6, 0.1], [0.05, 0.3, 0.02, 0.01], [0.4, 0.4, 0.5, 0.7]])
    labels = np.array([[1, 0, 0, 1], [0, 0, 1, 0], [0, 1, 0, 0]], np.float32)
    tau = control_classes("tau", p, 0.35)
    assert tau.tolist() == [[True, False, True, False], [False] * 4, [True, True, True, True]]
    assert control_classes("true_classes", p, 0.35, labels=labels).tolist() == (labels > 0).tolist()
    top2 = control_classes("top_k", p, 0.35, k=2)
    assert top2.tolist() == [[True, False, True, False], [True, True, False, False], [False, False, True, True]]
    assert control_classes("all", p, 0.35).all()
    for seed in range(5):        # as many classes per image as tau selects, drawn at random
        r = control_classes("random_classes", p, 0.35, seed=seed)
        assert r.sum(1).tolist() == tau.sum(1).tolist()
    draws = {control_classes("random_classes", p, 0.35, seed=s)[0].tobytes() for s in range(20)}
    assert len(draws) > 1                                         # the seed moves the draw
    np.testing.assert_array_equal(control_classes("random_classes", p, 0.35, seed=3),
                                  control_classes("random_classes", p, 0.35, seed=3))
    with pytest.raises(ConfigError, match="true_classes"):
        control_classes("true_classes", p, 0.35)
    with pytest.raises(ConfigError, match="selection"):
        control_classes("best", p, 0.35)


def test_mean_objects_per_image_counts_boxes_or_classes():
    boxes = [np.array([[0, 0, 0, 1, 1], [0, 2, 2, 3, 3], [1, 0, 0, 1, 1]]), np.zeros((0, 5))]
    assert mean_objects_per_image(boxes, np.zeros((2, 2))) == 1.5
    assert mean_objects_per_image(None, np.array([[1, 1], [0, 1]])) == 1.5


def test_random_placement_keeps_image_and_size_and_stays_inside():
    sizes = [(200, 100), (50, 80)]
    views = [View(0, (10, 10, 60, 40)), View(1, (0, 0, 50, 80)), View(0, (150, 50, 200, 100))]
    moved = random_placement(views, sizes, seed=1)
    for v, m in zip(views, moved):
        (x0, y0, x1, y1), (a0, b0, a1, b1) = v.box, m.box
        assert m.image == v.image
        assert a1 - a0 == pytest.approx(x1 - x0) and b1 - b0 == pytest.approx(y1 - y0)
        w, h = sizes[v.image]
        assert 0 <= a0 and a1 <= w + 1e-9 and 0 <= b0 and b1 <= h + 1e-9
    assert moved[1].box == pytest.approx((0, 0, 50, 80))          # a whole-image box has nowhere else to go
    assert moved[0].box != views[0].box
    assert [v.box for v in random_placement(views, sizes, seed=1)] == [v.box for v in moved]


def test_object_views_grow_each_object_by_the_offset_rule():
    sizes = [(320, 640)]                        # half the grid's width: the offset scales per axis
    boxes = [np.array([[2, 100, 100, 200, 300], [2, 0, 0, 10, 10], [0, 300, 600, 320, 640]])]
    views, owners = object_views(boxes, sizes, offset=80, resolution=640)
    assert owners.tolist() == [[0, 2], [0, 2], [0, 0]]            # one view per object, two for class 2
    assert views[0].box == pytest.approx((60, 20, 240, 380))       # 80 grid px = 40 px across, 80 px down
    assert views[1].box == pytest.approx((0, 0, 50, 90))           # clipped at the image's edges
    assert views[2].box == pytest.approx((260, 520, 320, 640))


def test_tiles_are_class_free():
    views, owners = tile_views([(90, 90)], 3)
    assert len(views) == 9 and (owners[:, 1] == -1).all()
    assert views[4].box == pytest.approx((30, 30, 60, 60))


def _scene(seed=0, n=5, c=4):
    rng = np.random.default_rng(seed)
    cams = rng.random((n, c, 6, 6)).astype(np.float32) ** 4
    probs = rng.random((n, c))
    labels = (rng.random((n, c)) < 0.4).astype(np.float32)
    boxes = [np.array([[k, 5 * k, 4, 5 * k + 30, 34] for k in np.flatnonzero(labels[i])]).reshape(-1, 5)
             for i in range(n)]
    return cams, probs, labels, boxes, [(64, 48)] * n


@pytest.mark.parametrize("selection", ["true_classes", "random_classes", "top_k", "all"])
def test_cam_selection_controls_keep_exactly_the_cam_crops_of_their_classes(selection):
    """Scoring every class's CAM crop and keeping the selected rows gives the same crops as boxing only the
    selected classes (what cam_boxes does for CCD's tau)."""
    cams, probs, labels, boxes, sizes = _scene()
    kw = dict(resolution=32, threshold=0.9, box_rule="minmax")
    views, owners, keep, info = control_views(views="cam", selection=selection, probs=probs, tau=0.5, cams=cams,
                                              image_sizes=sizes, offset=3, seed=2, labels=labels, boxes=boxes,
                                              top_k=2, **kw)
    assert len(views) == len(owners) == len(keep)
    n_boxed = sum(1 for i in range(5) for k in range(4) if cams[i, k].max() > cams[i, k].min())
    assert len(views) == n_boxed                                  # the superset: every class with a box
    selected = control_classes(selection, probs, 0.5, labels=labels, k=2, seed=2)
    want, want_owners = cam_boxes(cams, selected, sizes, offset=3, **kw)
    assert [v for v, k in zip(views, keep) if k] == want
    np.testing.assert_array_equal(owners[keep], want_owners)
    assert info["classes_per_image"] == pytest.approx(selected.sum(1).mean())


def test_random_boxes_are_the_tau_crops_moved():
    cams, probs, labels, boxes, sizes = _scene(1)
    kw = dict(resolution=32, threshold=0.9, box_rule="minmax", offset=3)
    views, owners, keep, _ = control_views(views="random_boxes", selection="tau", probs=probs, tau=0.5, cams=cams,
                                           image_sizes=sizes, seed=4, **kw)
    want, want_owners = cam_boxes(cams, probs >= 0.5, sizes, **kw)
    assert keep.all()
    np.testing.assert_array_equal(owners, want_owners)
    assert views == random_placement(want, sizes, seed=4)


def test_gt_boxes_need_boxes():
    cams, probs, labels, _, sizes = _scene()
    with pytest.raises(ConfigError, match="gt_boxes"):
        control_views(views="gt_boxes", selection="tau", probs=probs, tau=0.5, cams=cams, image_sizes=sizes,
                      offset=3, resolution=32, threshold=0.9, box_rule="minmax", seed=0, labels=labels, boxes=None)


class _Teacher:
    """A fake teacher whose embedding of a view is a function of its box (so any view list can be scored)."""

    def fingerprint(self):
        return {"fake": 1}

    def preprocess(self, im):
        raise AssertionError("no pixels are read")


def test_the_update_pools_only_the_kept_rows(monkeypatch):
    """classifier_guided_label_update with a control: the teacher scores the control's list, the pooling reads the
    kept rows; with the CCD rule as the control (tau, cam) the labels equal CCD's own path."""
    import ccdlib.scoring as scoring
    cams, probs, labels, boxes, sizes = _scene(3)
    c = probs.shape[1]

    def fake_embed(teacher, image_paths, views, **kw):      # a crop's "probabilities" from its box and image
        return np.array([[(v.image + 1) * (k + 1) * (v.box[0] + 1) % 7 / 7 for k in range(c)] for v in views])
    monkeypatch.setattr(scoring, "embed_views", fake_embed)
    teacher = type("T", (), {"predict": staticmethod(lambda e, cl: torch.as_tensor(e))})()
    common = dict(y_prev=np.full((5, c), 0.3), student_probs=probs, cams=cams, teacher=teacher, classifier=None,
                  image_paths=["x"] * 5, image_sizes=sizes, bias=np.full(c, 0.5), ls=20, r=0.2, offset=3,
                  resolution=32, threshold=0.9, tau0=0.5, bound=100, progress=False)
    ccd = classifier_guided_label_update(**common)
    same = classifier_guided_label_update(**common, local_views=lambda tau: control_views(
        views="cam", selection="tau", probs=probs, tau=tau, cams=cams, image_sizes=sizes, offset=3, resolution=32,
        threshold=0.9, box_rule="minmax", seed=0))
    np.testing.assert_array_equal(same.labels, ccd.labels)
    assert same.crops == ccd.crops
    # top-1 through the all-class superset: the same labels as CCD's path run on the top-1 selection
    top1 = classifier_guided_label_update(**common, local_views=lambda tau: control_views(
        views="cam", selection="top_k", probs=probs, tau=tau, cams=cams, image_sizes=sizes, offset=3, resolution=32,
        threshold=0.9, box_rule="minmax", seed=0, top_k=1))
    arg = np.zeros_like(probs, bool)
    arg[np.arange(5), probs.argmax(1)] = True
    direct = classifier_guided_label_update(**{**common, "student_probs": np.where(arg, 1.0, 0.0)})
    np.testing.assert_array_equal(top1.labels, direct.labels)
    assert top1.crops_per_image == direct.crops_per_image <= 1
