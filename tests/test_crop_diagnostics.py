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
    ctx = SimpleNamespace(cfg=SimpleNamespace(ccd=ccd, student=SimpleNamespace(image_size=448)), train=train,
                          image_sizes=lambda split: sizes)
    selected = rng.random((n, c)) < 0.4
    asked = []                       # the CAMs the run crops from: ccd.cam_image_size input, alpha-scaled

    def fake_cams(indices, alpha=None, image_size=None):
        asked.append((alpha, image_size))
        return cams[indices]
    state = SimpleNamespace(ctx=ctx, trainer=SimpleNamespace(cams=fake_cams, alpha=2.5), selected=selected, tau=0.3)
    calls = []
    real = label_update.cam_to_box
    monkeypatch.setattr(label_update, "cam_to_box", lambda *a, **k: calls.append(1) or real(*a, **k))
    got = analysis.crop_diagnostics(state, offsets=(0.0, 2.0, 4.0), grid=2)
    assert asked == [(2.5, ccd.cam_image_size)]                                # issue 22 §4: as run_ccd crops
    analysis.localisation(state)
    assert len(asked) == 1 and len(calls) == int((selected | labels.astype(bool)).sum())   # the same boxes, once
    assert len(calls) == int((selected | labels.astype(bool)).sum())          # one per (image, class) of the union
    monkeypatch.setattr(label_update, "cam_to_box", real)
    for name, sel in (("tau", selected), ("ground truth", labels.astype(bool))):
        for off in (0.0, 2.0, 4.0):
            views, owners = label_update.cam_boxes(cams, sel, sizes, offset=off, resolution=16,
                                                   threshold=ccd.cam_threshold, box_rule=ccd.box_rule)
            row = got[(got["selection"] == name) & (got["offset"] == off)].iloc[0]
            for k, v in crop_summary(views, owners, boxes, iou=0.5).items():
                assert row[k] == pytest.approx(v, nan_ok=True), (name, off, k)


def test_pointing_game_and_object_area_hand_cases():
    """issue 22 §4: the pointing game against the area share of the class's boxes, and the share of each object's
    area inside its class's crop against the crop's share of the image, on hand-made boxes."""
    from ccdlib.crop_metrics import cam_peaks, object_area_in_crop, pointing_game
    from ccdlib.views import View
    sizes = [(100, 100), (100, 100)]
    boxes = [np.array([[0, 0, 0, 50, 50], [1, 50, 50, 100, 100]]), np.array([[0, 0, 0, 100, 20]])]
    owners = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])        # (1, 1): class absent, left out
    peaks = np.array([[10, 10], [20, 20], [50, 50], [5, 5]])
    p = pointing_game(peaks, owners, boxes, sizes)
    assert p["n"] == 3 and p["hit"] == pytest.approx(100 / 3)   # only (0, 0) hits; (1, 0)'s peak is at y = 50 >= 20
    assert p["chance"] == pytest.approx(100 * (0.25 + 0.25 + 0.2) / 3)
    views = [View(0, (0, 0, 25, 50)), View(0, (0, 0, 100, 100)), View(1, (0, 0, 50, 10))]
    a = object_area_in_crop(views, np.array([[0, 0], [0, 0], [1, 0]]), boxes, sizes)
    # image 0 class 0: the larger crop holds all of it (best of two; chance = that crop's share, 1.0); class 1: no
    # crop (missed); image 1 class 0: 50 x 10 of 100 x 20 = 25 %, the crop covers 5 % of the image
    assert (a["objects"], a["missed"]) == (2, 1)
    assert a["share"] == pytest.approx(100 * (1.0 + 0.25) / 2) and a["chance"] == pytest.approx(100 * (1.0 + 0.05) / 2)
    cams = np.zeros((1, 1, 4, 4), np.float32)
    cams[0, 0, 3, 1] = 1.0                                       # the peak's cell, on a 4x4 map of a 200x100 image
    (x, y), = cam_peaks(cams, np.array([[0, 0]]), [(200, 100)], resolution=4)
    assert (x, y) == (1.5 * 50, 3.5 * 25)


def test_localisation_rows_on_the_run_cams():
    """analysis.localisation: for each selection, the pointing game, the object area inside its class's crop and the
    IoU column, computed from the CAMs the run crops from; a CAM peaking on its object wins the pointing game."""
    from types import SimpleNamespace

    from ccdlib import analysis
    from ccdlib.config import CCDConfig
    n, c = 2, 2
    cams = np.zeros((n, c, 4, 4), np.float32)
    cams[0, 0, 0, 0] = cams[1, 1, 3, 3] = 1.0                  # peaks in the top-left / bottom-right cell
    cams[0, 1, 0, 3] = cams[1, 0, 3, 0] = 1.0                  # (upsampled to 16 x 16: still there)
    labels = np.array([[1, 0], [0, 1]], np.float32)
    boxes = [np.array([[0, 0, 0, 40, 40]]), np.array([[1, 60, 60, 100, 100]])]
    ccd = CCDConfig(resolution=16, offset=0, cam_image_size=640)
    train = type("Train", (), {"labels": labels, "boxes": boxes, "__len__": lambda self: n})()
    ctx = SimpleNamespace(cfg=SimpleNamespace(ccd=ccd, student=SimpleNamespace(image_size=448)), train=train,
                          image_sizes=lambda split: [(100, 100)] * n)
    state = SimpleNamespace(ctx=ctx, trainer=SimpleNamespace(cams=lambda indices, alpha=None, image_size=None:
                                                             cams[indices], alpha=1.0),
                            selected=np.ones((n, c), bool), tau=0.1)
    got = analysis.localisation(state)
    assert list(got.columns) == ["metric", "selection", "value", "chance", "n"] and len(got) == 6
    gt = got[got["selection"] == "ground truth"].set_index(got[got["selection"] == "ground truth"]["metric"].str[:5])
    assert gt.loc["point", "value"] == 100 and gt.loc["point", "chance"] == pytest.approx(16.0)
    assert gt.loc["point", "n"] == 2                                # absent classes are not scored
    assert gt.loc["objec", "n"] == 2 and 0 < gt.loc["objec", "value"] <= 100
    tau = got[got["selection"] == "tau"]
    assert tau.iloc[0]["n"] == 2                                    # tau selects all 4 pairs; 2 classes present
