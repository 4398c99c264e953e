"""CAM crops vs tiles diagnostics (ccdlib.analysis): IoU, per-crop hits and the summary, on hand-made boxes."""
from __future__ import annotations

import numpy as np
import pytest

from ccdlib.analysis import box_iou, crop_hits, crop_summary
from ccdlib.views import View, grid_views


def test_box_iou_hand_cases():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [0, 0, 20, 20], [0, 0, 1, 1]])
    m = box_iou(a, b)
    assert m.shape == (4, 4)
    np.testing.assert_allclose(np.diag(m), [1.0, 50 / 150, 100 / 400, 0.0])
    np.testing.assert_allclose(m, box_iou(b, a).T)
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 4)


@pytest.fixture
def scene():
    # image 0: a class-1 object at [0,0,100,100] and a class-2 object at [100,100,200,200]; image 1: class 0 only
    boxes = [np.array([[1, 0, 0, 100, 100], [2, 100, 100, 200, 200]]), np.array([[0, 50, 50, 150, 150]])]
    views = [View(0, (0, 0, 100, 120)),     # class 1 on its object: IoU 100*100 / (100*120) = 0.833
             View(0, (0, 0, 200, 200)),     # class 2, the whole image: IoU 1/4 with its object
             View(0, (100, 100, 200, 200)),  # class 3 (absent) exactly on the class-2 object
             View(1, (50, 50, 150, 150))]   # class 0 on its object
    owners = np.array([[0, 1], [0, 2], [0, 3], [1, 0]])
    return views, owners, boxes


def test_crop_hits(scene):
    views, owners, boxes = scene
    h = crop_hits(views, owners, boxes)
    assert h["class_present"].tolist() == [True, True, False, True]
    np.testing.assert_allclose(h["iou_own"], [100 / 120, 0.25, 0.0, 1.0])
    np.testing.assert_allclose(h["iou_any"], [100 / 120, 0.25, 1.0, 1.0])


def test_crop_summary(scene):
    views, owners, boxes = scene
    s = crop_summary(views, owners, boxes)
    assert s["views_per_image"] == 2.0 and s["objects_per_image"] == 1.5
    assert s["class_precision"] == 75.0            # 3 of 4 crops name a class of their image
    assert s["on_own_object"] == 50.0              # crops 0 and 3
    assert s["on_any_object"] == 75.0              # crop 2 sits on an object, of another class
    assert s["object_recall"] == pytest.approx(100 * 2 / 3)   # the class-2 object has no crop of its class on it
    np.testing.assert_allclose(s["mean_iou_own"], np.mean([100 / 120, 0.25, 0.0, 1.0]))
    assert crop_summary(views, owners, boxes, iou=0.9)["on_own_object"] == 25.0


def test_tiles_as_class_free_views(scene):
    _, _, boxes = scene
    tiles = grid_views([(200, 200), (200, 200)], 2)      # 100x100 quadrants
    owners = np.stack([[v.image for v in tiles], [-1] * len(tiles)], axis=1)
    s = crop_summary(tiles, owners, boxes)
    assert s["views_per_image"] == 4.0
    assert s["on_any_object"] == 25.0              # the two quadrants of image 0 that are its objects
    assert s["object_recall"] == pytest.approx(100 * 2 / 3)   # image 1's centred object straddles 4 quadrants


def test_crop_diagnostics_boxes_each_cam_once_and_matches_per_offset_boxing(monkeypatch):
    """crop_diagnostics finds the grid boxes of the union of both selections once; its rows equal boxing each
    (selection, offset) from scratch with cam_boxes, as it did before."""
    from types import SimpleNamespace

    from ccdlib import analysis, label_update
    from ccdlib.config import CCDConfig
    rng = np.random.default_rng(5)
    n, c = 6, 4
    cams = rng.random((n, c, 5, 5)).astype(np.float32) ** 3
    labels = (rng.random((n, c)) < 0.5).astype(np.float32)
    boxes = [np.array([[k, 10 * k, 5, 10 * k + 40, 45] for k in np.flatnonzero(labels[i])]).reshape(-1, 5)
             for i in range(n)]
    sizes = [(80, 60)] * n
    ccd = CCDConfig(resolution=16, offset=2)
    train = type("Train", (), {"labels": labels, "boxes": boxes, "__len__": lambda self: n})()
    ctx = SimpleNamespace(cfg=SimpleNamespace(ccd=ccd), train=train, image_sizes=lambda split: sizes)
    selected = rng.random((n, c)) < 0.4
    state = SimpleNamespace(ctx=ctx, trainer=SimpleNamespace(cams=lambda indices: cams[indices]), selected=selected,
                            tau=0.3)
    calls = []
    real = label_update.cam_to_box
    monkeypatch.setattr(label_update, "cam_to_box", lambda *a, **k: calls.append(1) or real(*a, **k))
    got = analysis.crop_diagnostics(state, offsets=(0.0, 2.0, 4.0), grid=2)
    assert len(calls) == int((selected | labels.astype(bool)).sum())          # one per (image, class) of the union
    monkeypatch.setattr(label_update, "cam_to_box", real)
    for name, sel in (("tau", selected), ("ground truth", labels.astype(bool))):
        for off in (0.0, 2.0, 4.0):
            views, owners = label_update.cam_boxes(cams, sel, sizes, offset=off, resolution=16,
                                                   threshold=ccd.cam_threshold, box_rule=ccd.box_rule)
            row = got[(got["selection"] == name) & (got["offset"] == off)].iloc[0]
            for k, v in crop_summary(views, owners, boxes, iou=0.5).items():
                assert row[k] == pytest.approx(v, nan_ok=True), (name, off, k)
