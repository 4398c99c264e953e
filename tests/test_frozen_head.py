"""Frozen-mode head training on the in-memory feature stacks vs the original per-image loop (kept here as the
reference): same random draws, so the same losses, scores, hook calls and weights up to float rounding.

Random float16 features are put straight into the trainer's extracted-feature dict (no image is read), N = 10 with
batch 4 (a short last batch), 3x3 maps, C = 4.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ccdlib.student import (StudentConfig, _TAG_SHUFFLE, _TAG_TORCH_GLOBAL, _derive_seed, _generator,
                            cam_to_logits)
from ccdlib.trainer import StudentTrainer, _soft_bce, _softmax_kl

N, C, FEAT, HW = 10, 4, 1280, 3


def _features(n_aug: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    views = ["base", "flip"] + [f"aug{k}" for k in range(n_aug)]
    return {v: rng.normal(0, 1, (N, FEAT, HW, HW)).astype(np.float16) for v in views}


def _trainer(feats: dict[str, np.ndarray], **kw) -> StudentTrainer:
    kw.setdefault("head_dtype", "float32")        # explicit: the library default is "auto" (issue 23)
    cfg = StudentConfig(trunk_weights="random", image_size=64, batch_size=4, device="cpu", seed=kw.pop("seed", 0),
                        frozen_head_lr=1e-2, **kw)
    tr = StudentTrainer(cfg, [f"img{i}.jpg" for i in range(N)], C, progress=False)
    tr._features = {k: v.copy() for k, v in feats.items()}
    return tr


def _reference_fit_epoch(tr: StudentTrainer, feats: dict[str, np.ndarray], targets, *, alpha, consistency,
                         sample_weights=None, loss="bce", on_batch=None) -> dict:
    """The frozen branch of ``fit_epoch`` / ``_train_batches`` before the in-memory stacks (main at 9314115):
    per-image ``np.stack`` of float16 features, the head as a conv2d, ``.item()`` per step."""
    cfg = tr.config
    n, c = targets.shape
    y = np.asarray(targets, dtype=np.float32)
    w = None if sample_weights is None else np.asarray(sample_weights, dtype=np.float32)
    a = tr._alpha_tensor(alpha)
    g = _generator(cfg.seed, _TAG_SHUFFLE, tr.epoch)
    order = torch.randperm(n, generator=g)
    scores = np.zeros((n, c), dtype=np.float32)
    sums = {"loss": 0.0, "bce": 0.0, "consistency": 0.0}
    n_batches = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_derive_seed(cfg.seed, _TAG_TORCH_GLOBAL, tr.epoch))
        tr.student.head.train()
        for b in range(0, len(order), cfg.batch_size):
            idx = order[b:b + cfg.batch_size].numpy()
            flips = (torch.rand(len(idx), generator=g) < 0.5).numpy()
            x = torch.from_numpy(np.stack([feats["flip" if f else "base"][i] for i, f in zip(idx, flips)])).float()
            x_aug = None
            if consistency:
                ks = torch.randint(cfg.n_aug_views, (len(idx),), generator=g).numpy()
                x_aug = torch.from_numpy(np.stack([feats[f"aug{k}"][i] for i, k in zip(idx, ks)])).float()
            yt = torch.from_numpy(y[idx])
            wt = None if w is None else torch.from_numpy(w[idx])
            logits = cam_to_logits(tr.student.head(x), a)
            bce = _softmax_kl(logits, yt, wt) if loss == "softmax_kl" else _soft_bce(logits, yt, wt)
            total = bce
            if consistency:
                cons = F.binary_cross_entropy_with_logits(cam_to_logits(tr.student.head(x_aug), a),
                                                          torch.sigmoid(logits).detach())
                total = bce + cfg.consistency_weight * cons
                sums["consistency"] += cons.item()
            tr.optimizer.zero_grad(set_to_none=True)
            total.backward()
            tr.optimizer.step()
            if on_batch is not None:
                on_batch(idx, logits.detach().double().cpu().numpy())
            sums["loss"] += total.item()
            sums["bce"] += bce.item()
            out = torch.softmax(logits.detach(), 1) if loss == "softmax_kl" else torch.sigmoid(logits.detach())
            scores[idx] = out.float().cpu().numpy()
            n_batches += 1
    tr.epoch += 1
    return {"loss": sums["loss"] / n_batches, "bce": sums["bce"] / n_batches,
            "consistency": sums["consistency"] / n_batches if consistency else float("nan"), "train_scores": scores}


CASES = {
    "bce": dict(cons=[False, False, False]),
    "bce+consistency, per-class alpha, weights": dict(cons=[False, True, True], per_class_alpha=True, weights=True),
    "softmax_kl + on_batch (CDUL)": dict(cons=[False, False, False], loss="softmax_kl", hook=True),
    "bce + on_batch + consistency, 3 pool views, seed 2": dict(cons=[True, True, True], hook=True, n_aug=3, seed=2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_in_memory_training_matches_the_per_image_loop(case):
    spec = CASES[case]
    n_aug = spec.get("n_aug", 2)
    feats = _features(n_aug)
    kw = dict(n_aug_views=n_aug, seed=spec.get("seed", 0))
    new, ref = _trainer(feats, **kw), _trainer(feats, **kw)
    for k, v in new.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k])
    rng = np.random.default_rng(5)
    targets = rng.random((N, C)).astype(np.float32)
    weights = rng.random(N).astype(np.float32) * 2 if spec.get("weights") else None
    alphas = [1.0, np.array([3.0, 2.0, 1.0, 4.0], dtype=np.float32), 3.0] if spec.get("per_class_alpha") else [1.0, 3.0, 3.0]
    for epoch, cons in enumerate(spec["cons"]):
        calls_new, calls_ref = [], []
        kwargs = dict(alpha=alphas[epoch], consistency=cons, sample_weights=weights, loss=spec.get("loss", "bce"))
        r_new = new.fit_epoch(targets, **kwargs,
                              on_batch=(lambda i, z: calls_new.append((i.copy(), z.copy()))) if spec.get("hook") else None)
        r_ref = _reference_fit_epoch(ref, feats, targets, **kwargs,
                                     on_batch=(lambda i, z: calls_ref.append((i.copy(), z.copy()))) if spec.get("hook") else None)
        for k in ("loss", "bce", "consistency"):
            if cons or k != "consistency":
                assert r_new[k] == pytest.approx(r_ref[k], rel=1e-5, abs=1e-6), (epoch, k)
            else:
                assert np.isnan(r_new[k])
        np.testing.assert_allclose(r_new["train_scores"], r_ref["train_scores"], rtol=1e-5, atol=1e-6)
        assert len(calls_new) == len(calls_ref) == (3 if spec.get("hook") else 0)
        for (i1, z1), (i2, z2) in zip(calls_new, calls_ref):
            np.testing.assert_array_equal(i1, i2)
            assert i1.dtype == i2.dtype and z1.dtype == z2.dtype == np.float64
            np.testing.assert_allclose(z1, z2, rtol=1e-5, atol=1e-5)
        for k, v in ref.state_dict().items():
            np.testing.assert_allclose(new.state_dict()[k].numpy(), v.numpy(), rtol=1e-5, atol=1e-5, err_msg=k)
    assert new.epoch == ref.epoch == len(spec["cons"])
    # and training moved the weights (the comparison is not vacuous)
    assert not torch.equal(new.state_dict()["weight"], _trainer(feats, **kw).state_dict()["weight"])


def test_evaluation_and_view_logits_on_the_stacks():
    feats = _features(2)
    tr = _trainer(feats)
    tr.fit_epoch(np.full((N, C), 0.5, dtype=np.float32), alpha=3.0, consistency=True)
    head = tr.student.head
    with torch.no_grad():
        def ref(view, idx, alpha):
            return cam_to_logits(head(torch.from_numpy(feats[view][idx]).float()), alpha).numpy()
        np.testing.assert_allclose(tr.predict_logits(), ref("base", np.arange(N), 3.0), rtol=1e-5, atol=1e-6)
        idx = np.array([7, 2, 2, 9])
        flips = np.array([True, False, True, False])
        got = tr.view_logits(idx, flips)
        assert got.shape == (4, C) and got.dtype == np.float32
        want = np.stack([ref("flip" if f else "base", [i], 3.0)[0] for i, f in zip(idx, flips)])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(tr.view_logits(idx, True, alpha=1.0), ref("flip", idx, 1.0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(tr.cams(indices=[4, 1]), head(torch.from_numpy(feats["base"][[4, 1]]).float()).numpy(),
                                   rtol=1e-5, atol=1e-6)
    train, test = tr.eval_logits(None)
    assert test is None
    np.testing.assert_array_equal(train, tr.predict_logits())
    assert tr.view_logits([], []).shape == (0, C)
    with pytest.raises(IndexError):
        tr.view_logits([N], [False])


def test_bfloat16_head_cam_and_its_weight_gradient_against_float64():
    """``head_dtype="bfloat16"``: the GEMMs take bfloat16 operands and return float32 CAMs; the float32 weight gets a
    float32 gradient. Reference: float64 arithmetic on the bfloat16-rounded operands (bfloat16 outputs: ~3 digits)."""
    from ccdlib.trainer import _head_cam
    torch.manual_seed(0)
    head = torch.nn.Conv2d(FEAT, C, 1)
    x = torch.randn(2, HW * HW, FEAT).bfloat16()
    cam = _head_cam(head, x)
    assert cam.dtype == torch.float32 and cam.shape == (2, HW * HW, C)
    w64 = head.weight.detach().bfloat16().double().view(C, FEAT)
    want = x.double() @ w64.T + head.bias.detach().bfloat16().double()
    np.testing.assert_allclose(cam.detach().numpy(), want.numpy(), rtol=2e-2, atol=2e-2 * want.abs().max().item())
    g = torch.randn_like(cam)
    (cam * g).sum().backward()
    assert head.weight.grad.dtype == torch.float32
    want_grad = (g.bfloat16().double().reshape(-1, C).T @ x.double().reshape(-1, FEAT)).view(C, FEAT, 1, 1)
    np.testing.assert_allclose(head.weight.grad.numpy(), want_grad.numpy(), rtol=2e-2,
                               atol=2e-2 * want_grad.abs().max().item())


def test_bfloat16_training_follows_float32_training():
    """Mixed precision changes the rounding, not the method: 3 epochs (consistency on in the last two) from the same
    initialisation end at float32's weights up to bfloat16 rounding, and the stacks are held in bfloat16."""
    feats = _features(2)
    rng = np.random.default_rng(5)
    targets = rng.random((N, C)).astype(np.float32)
    runs = {}
    for dtype in ("float32", "bfloat16"):
        tr = _trainer(feats, head_dtype=dtype)
        w0 = tr.state_dict()["weight"].clone()
        losses = [tr.fit_epoch(targets, alpha=3.0, consistency=cons)["loss"] for cons in (False, True, True)]
        runs[dtype] = (tr, w0, losses)
    (t32, w0, l32), (t16, w0b, l16) = runs["float32"], runs["bfloat16"]
    assert torch.equal(w0, w0b)
    assert t16._stacked(("base", "flip")).dtype == torch.bfloat16
    assert t32._stacked(("base", "flip")).dtype == torch.float32
    np.testing.assert_allclose(l16, l32, rtol=2e-2)
    # Adam moves every weight by ~lr per step whatever its gradient's size, so a weight whose gradient is near 0 may
    # step the other way under another rounding: compare the whole update (Frobenius norm) and the outputs
    moved = (t32.state_dict()["weight"] - w0).norm().item()
    diff = (t16.state_dict()["weight"] - t32.state_dict()["weight"]).norm().item()
    # (measured: 0.13 of the update's norm, and 0.10 of the logits' largest change; unrelated weights give ~1.4)
    assert moved > 1e-2 and 0 < diff < 0.25 * moved, (moved, diff)
    z16, z32 = t16.predict_logits(), t32.predict_logits()
    assert np.abs(z16 - z32).max() < 0.25 * np.abs(z32 - _trainer(feats).predict_logits()).max()


@pytest.mark.parametrize("kw, match", [(dict(head_dtype="float16"), "head_dtype must be one of"),
                                       (dict(head_dtype="bfloat16", mode="finetune"), "frozen mode only")])
def test_head_dtype_is_checked(kw, match):
    from ccdlib.errors import ConfigError
    with pytest.raises(ConfigError, match=match):
        StudentConfig(**kw)
