"""Hand-computed cases for method.md §6 (classifier-guided label update)."""
import numpy as np
import pytest

from ccdlib.label_update import (calibrate_class_threshold, cam_boxes, cam_grid_boxes, cam_to_box, grow_boxes,
                                 local_pseudo_labels, mix_labels, select_classes)


def _blob(h=8, w=8, y0=2, y1=5, x0=3, x1=7):
    cam = np.zeros((h, w), np.float32)
    cam[y0:y1, x0:x1] = 1.0
    return cam


def test_box_from_known_cam_identity_resolution():
    cam = _blob()
    # at the CAM's own resolution bilinear upsampling is the identity
    assert cam_to_box(cam, resolution=8, threshold=0.95) == (3, 2, 7, 5)


def test_box_scales_with_resolution():
    cam = np.zeros((4, 4), np.float32)
    cam[1, 2] = 1.0          # a single peak; at 64 px the kept region is centred on the cell (2,1)
    x0, y0, x1, y1 = cam_to_box(cam, resolution=64, threshold=0.95)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    assert cx == pytest.approx(2.5 * 16, abs=1.0) and cy == pytest.approx(1.5 * 16, abs=1.0)
    assert x1 - x0 < 16 and y1 - y0 < 16


def test_flat_cam_gives_no_box():
    assert cam_to_box(np.ones((4, 4)), resolution=16) is None


def test_raster_rule_differs_from_minmax():
    # An L shape: first kept pixel in raster order is (x=5, y=1), last is (x=1, y=6).
    cam = np.zeros((8, 8), np.float32)
    cam[1, 5] = 1.0
    cam[4, 7] = 1.0
    cam[6, 1] = 1.0
    assert cam_to_box(cam, resolution=8, box_rule="minmax") == (1, 1, 8, 7)
    # released cropping_box: the corner pixels' coordinates as they are, so the far edge excludes them
    assert cam_to_box(cam, resolution=8, box_rule="raster") == (1, 1, 5, 6)


def test_crop_geometry_offset_clip_and_scale():
    cams = np.zeros((1, 2, 8, 8), np.float32)
    cams[0, 0] = _blob()                 # box (3,2,7,5) on an 8 grid
    cams[0, 1, 0, 0] = 1.0               # box (0,0,1,1)
    selected = np.array([[True, True]])
    views, owner = cam_boxes(cams, selected, [(80, 40)], offset=1, resolution=8)
    assert owner.tolist() == [[0, 0], [0, 1]]
    # class 0: (3-1, 2-1, 7+1, 5+1) = (2,1,8,6) on the grid, x scale 10, y scale 5
    assert views[0].box == pytest.approx((20, 5, 80, 30))
    # class 1: (-1,-1,2,2) clipped to (0,0,2,2)
    assert views[1].box == pytest.approx((0, 0, 20, 10))


def test_threshold_calibration_walks_up_until_in_bound():
    rng = np.random.default_rng(0)
    probs = rng.uniform(0, 0.2, size=(1000, 20))
    tau = calibrate_class_threshold(probs, tau0=0.05, step=0.001, bound=4, block=100, seed=0, walk="multi_pass")
    # expected count at tau is 20 * (0.2 - tau) / 0.2; it must lie in (4, 6) => tau in (0.14, 0.16)
    assert 0.135 < tau < 0.165
    count = (probs >= tau).sum(1).mean()
    assert 3.5 < count < 6.5


def test_threshold_calibration_stops_when_count_already_low():
    probs = np.full((200, 10), 0.01)
    assert calibrate_class_threshold(probs, tau0=0.05, walk="multi_pass") == 0.05
    assert select_classes(probs, 0.05).sum() == 0
    # the released single pass keeps walking (it never stops early): one step per checked block, 200 images -> 1
    assert calibrate_class_threshold(probs, tau0=0.05) == pytest.approx(0.051)


def test_threshold_calibration_single_pass_moves_once_per_block_and_ends_with_the_data():
    """The released loop (train.py 216-247): one shuffled pass, the running mean checked at positions 100, 200, ...
    (the first block holds 101 images, divided by 100), tau += step after each failed check."""
    probs = np.full((320, 20), 0.5)            # 20 classes above any tau < 0.5: never in (4, 6)
    assert calibrate_class_threshold(probs, tau0=0.05, step=0.001) == pytest.approx(0.053)   # checks at 100, 200, 300
    assert calibrate_class_threshold(probs[:100], tau0=0.05) == 0.05                          # no check reached
    # 5 classes per image: the first check sees 101 * 5 / 100 = 5.05 in (4, 6) and stops at tau0
    five = np.zeros((320, 20))
    five[:, :5] = 0.5
    assert calibrate_class_threshold(five, tau0=0.05) == 0.05
    # 7 classes: 7.07 at the first check, then 7.0, 7.0: never in (4, 6), walks to the end of the data
    seven = np.zeros((320, 20))
    seven[:, :7] = 0.5
    assert calibrate_class_threshold(seven, tau0=0.05) == pytest.approx(0.053)
    # 4 classes: 4.04 at the first check, in (4, 6): stops; 100 * 4 / 100 alone would not be (> 4 is strict)
    four = np.zeros((320, 20))
    four[:, :4] = 0.5
    assert calibrate_class_threshold(four, tau0=0.05) == 0.05


def test_local_labels_max_floor_bias():
    crop_probs = np.array([[0.6, 0.2], [0.3, 0.5], [0.9, 0.01]])
    crop_images = np.array([0, 0, 2])
    bias = np.array([0.5, 0.8])
    y, has = local_pseudo_labels(crop_probs, crop_images, 3, bias, ls=20)
    # NOT clamped (the released code clamps once, after the mix)
    np.testing.assert_allclose(y[0], [0.6 / 0.5, 0.5 / 0.8])
    np.testing.assert_allclose(y[2], [0.9 / 0.5, 0.05 / 0.8])
    assert has.tolist() == [True, False, True]
    np.testing.assert_allclose(y[1], [0.05 / 0.5, 0.05 / 0.8])      # no crop: the floor row (1/ls) / bias
    y0, _ = local_pseudo_labels(crop_probs, crop_images, 3, bias, ls=None)
    np.testing.assert_allclose(y0[1], [0.0, 0.0])                    # without the floor: 0


def test_ratio_mixing_and_images_without_crops_keep_labels():
    y_prev = np.array([[0.2, 1.0], [0.4, 0.4]])
    y_loc = np.array([[1.0, 0.0], [0.9, 0.9]])
    out = mix_labels(y_prev, y_loc, np.array([True, False]), r=0.2, no_crop="keep")
    np.testing.assert_allclose(out[0], [0.2 * 0.2 + 0.8 * 1.0, 0.2 * 1.0])
    np.testing.assert_allclose(out[1], y_prev[1])
    np.testing.assert_allclose(mix_labels(y_prev, y_loc, np.array([True, True]), r=1.0), y_prev)
    # released default: the crop-less row is mixed like the others
    out = mix_labels(y_prev, y_loc, np.array([True, False]), r=0.2)
    np.testing.assert_allclose(out[1], [0.2 * 0.4 + 0.8 * 0.9] * 2)


def test_mix_clamps_once_after_the_mix():
    """A local label above 1 still pulls a low previous label up: clamp(r y_prev + (1-r) y_loc), not of y_loc."""
    y_prev = np.array([[0.1, 0.1]])
    y_loc = np.array([[1.5, 0.9]])
    out = mix_labels(y_prev, y_loc, np.array([True]), r=0.2)
    np.testing.assert_allclose(out, [[1.0, 0.2 * 0.1 + 0.8 * 0.9]])          # 0.02 + 1.2 -> 1
    np.testing.assert_allclose(mix_labels(np.array([[0.1]]), np.array([[1.1]]), np.array([True]), r=0.2),
                               [[0.02 + 0.88]])                              # clamping y_loc first would give 0.82


@pytest.mark.parametrize("box_rule", ["minmax", "raster"])
def test_grid_boxes_then_growth_is_cam_to_box_grown_by_hand(box_rule):
    """cam_boxes = cam_grid_boxes + grow_boxes; one grid pass serves several offsets (crop_diagnostics)."""
    rng = np.random.default_rng(3)
    cams = rng.random((5, 3, 6, 6)).astype(np.float32) ** 3
    cams[1, 2] = 0.5                                      # flat: no box
    selected = rng.random((5, 3)) < 0.6
    selected[1, 2] = True
    sizes = [(64 + 8 * i, 48 + 4 * i) for i in range(5)]
    grid, owners = cam_grid_boxes(cams, selected, resolution=16, box_rule=box_rule)
    expect = [(i, c) for i in range(5) for c in range(3) if selected[i, c] and not (i == 1 and c == 2)]
    assert owners.tolist() == [list(p) for p in expect]
    for offset in (0, 2.5, 9):
        views, own = cam_boxes(cams, selected, sizes, offset=offset, resolution=16, box_rule=box_rule)
        assert own.tolist() == owners.tolist()
        assert [v.box for v in views] == [v.box for v in grow_boxes(grid, owners, sizes, offset=offset, resolution=16)]
        for v, (i, c) in zip(views, expect):
            x0, y0, x1, y1 = cam_to_box(cams[i, c], resolution=16, box_rule=box_rule)
            w, h = sizes[i]
            hand = (max(0, x0 - offset) * w / 16, max(0, y0 - offset) * h / 16, min(16, x1 + offset) * w / 16,
                    min(16, y1 + offset) * h / 16)
            assert v.image == i and v.box == pytest.approx(hand)
