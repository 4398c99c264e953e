"""Frozen-mode head training: the per-image loop (main) vs the in-memory stacks (ccdlib) vs the GEMM bound.

Random features of the real shape (default N = 320 training images, F = 1280 channels, 14x14 maps: EfficientNet-Lite0
at 448 px; C = 16 classes; batch 16) are put straight into each trainer's extracted-feature dict (no image is
read, no trunk runs), then one training pass over the N images is timed (``fit_epoch``: forward + backward + Adam,
the scores and losses it returns), without and with the consistency loss (2 pool views):

  (a) main     the trainer before issue 16: ``git show <ref>:ccdlib/trainer.py`` loaded as a module (per-image
               ``np.stack`` of float16 features, the head as a conv2d, ``.item()`` per step);
  (b) ccdlib   :class:`ccdlib.trainer.StudentTrainer` (channels-last stacks, one gather + two GEMMs per view and
               step), with ``head_dtype`` float32 and bfloat16 (``make reproduce``; the library default ``auto``
               picks it on a CPU with AVX512-BF16 or AMX);
  (c) bound    the same multiply-adds as whole-split GEMMs on the in-memory float32 ``(N*h*w, F)`` tensor: the
               forward ``X W^T`` and the weight gradient ``G^T X``, 2 GEMMs per pass, 4 with consistency; and the
               same GEMMs in bfloat16 (not the issue's bound: shown to say how far bfloat16 can go).

Printed per setting: image-passes/s (training images per second of one pass; for (c) N / the GEMMs' time) and
the ratio to the float32 (c) (goal for (b): >= 0.5). Each is timed ``--repeat`` times after a warm-up pass, a/b/c interleaved;
the median is kept. ``--levers`` also times one training step's head computation alone in several layouts.

    python benchmarks/head_training.py                     # ~2 min on 2 cores
    python benchmarks/head_training.py --threads 1 --levers
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ccdlib.student import StudentConfig  # noqa: E402
from ccdlib.trainer import StudentTrainer  # noqa: E402


def load_baseline(ref: str):
    """``ccdlib/trainer.py`` at git ``ref`` as module ``ccdlib._trainer_baseline`` (its relative imports resolve
    against today's package; the frozen path only needs ``_generator`` and friends, which are unchanged)."""
    src = subprocess.run(["git", "show", f"{ref}:ccdlib/trainer.py"], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="head-bench-")) / "trainer_baseline.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("ccdlib._trainer_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def make_trainer(cls, feats: dict[str, np.ndarray], args, **extra) -> StudentTrainer:
    extra.setdefault("head_dtype", "float32")     # explicit: the library default is "auto" (issue 23)
    cfg = StudentConfig(trunk_weights="random", image_size=args.image_size, batch_size=args.batch, device="cpu",
                        n_aug_views=2, seed=0, **extra)
    tr = cls(cfg, [f"img{i}.jpg" for i in range(args.n)], args.classes, progress=False)
    tr._features = dict(feats)      # both read (a) / stack (b) these instead of extracting
    return tr


def time_pass(tr, targets: np.ndarray, consistency: bool) -> float:
    t = time.perf_counter()
    tr.fit_epoch(targets, alpha=3.0, consistency=consistency)
    return time.perf_counter() - t


def bound_pass(x: torch.Tensor, x_aug: torch.Tensor, w: torch.Tensor, g: torch.Tensor, consistency: bool) -> float:
    """2 GEMMs per view: forward ``(N*P, F) x (F, C)`` and weight gradient ``(C, N*P) x (N*P, F)``."""
    t = time.perf_counter()
    for v in ((x, x_aug) if consistency else (x,)):
        cam = v @ w.t()
        grad_w = g.t() @ v
    del cam, grad_w
    return time.perf_counter() - t


def levers(feats: dict[str, np.ndarray], args, repeat: int) -> None:
    """One step's head computation (gather of B rows + forward + weight gradient), several layouts."""
    n, f, h, w_ = feats["base"].shape
    p, c, b = h * w_, args.classes, args.batch
    nchw = torch.from_numpy(np.concatenate([feats["base"], feats["flip"]])).float().contiguous()     # (2N, F, h, w)
    nlc = nchw.flatten(2).transpose(1, 2).contiguous()                                               # (2N, P, F)
    weight = torch.randn(c, f, 1, 1, requires_grad=True)
    bias = torch.zeros(c, requires_grad=True)
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randint(2 * n, (b,), generator=gen) for _ in range(20)]

    def run(fn):
        t = time.perf_counter()
        for r in rows:
            weight.grad = None
            fn(r).sum().backward()
        return (time.perf_counter() - t) / len(rows)

    variants = {
        "NCHW fp16->fp32 per step + conv2d (main's compute, no np.stack)":
            lambda r: F.conv2d(torch.from_numpy(np.concatenate([feats["base"], feats["flip"]])[r.numpy()]).float(),
                               weight, bias),
        "NCHW fp32 gather + conv2d": lambda r: F.conv2d(nchw.index_select(0, r), weight, bias),
        "NCHW fp32 gather + einsum bfp,cf->bcp": lambda r: torch.einsum(
            "bfp,cf->bcp", nchw.index_select(0, r).flatten(2), weight.view(c, f)) + bias.view(1, c, 1),
        "NCHW fp32 channels_last gather + conv2d": lambda r: F.conv2d(
            nchw.index_select(0, r).contiguous(memory_format=torch.channels_last), weight, bias),
        "(N, P, F) fp32 gather + linear (ccdlib)": lambda r: F.linear(nlc.index_select(0, r), weight.view(c, f), bias),
    }
    print(f"\n# one step's head (gather {b} rows + forward + weight gradient), median of {repeat} x 20 steps, "
          f"{torch.get_num_threads()} threads")
    print("| variant | ms / step | img-passes/s |")
    print("|---|---|---|")
    results = {k: [] for k in variants}
    for k, fn in variants.items():
        run(fn)                       # warm-up
    for _ in range(repeat):
        for k, fn in variants.items():
            results[k].append(run(fn))
    for k, ts in results.items():
        s = statistics.median(ts)
        print(f"| {k} | {1e3 * s:.2f} | {b / s:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=320, help="training images")
    ap.add_argument("--feature-dim", type=int, default=1280)
    ap.add_argument("--side", type=int, default=14, help="feature map side (448 px / 32)")
    ap.add_argument("--image-size", type=int, default=448)
    ap.add_argument("--classes", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--baseline-ref", default="main", help="git ref of the (a) trainer")
    ap.add_argument("--levers", action="store_true", help="also time one step's head in several layouts")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    baseline = load_baseline(args.baseline_ref)
    rng = np.random.default_rng(0)
    shape = (args.n, args.feature_dim, args.side, args.side)
    feats = {v: rng.standard_normal(shape, dtype=np.float32).astype(np.float16) for v in ("base", "flip", "aug0", "aug1")}
    targets = rng.random((args.n, args.classes)).astype(np.float32)
    impls = {f"(a) {args.baseline_ref}": make_trainer(baseline.StudentTrainer, feats, args),
             "(b) ccdlib float32": make_trainer(StudentTrainer, feats, args),
             "(b) ccdlib bfloat16": make_trainer(StudentTrainer, feats, args, head_dtype="bfloat16")}
    p = args.side * args.side
    x = torch.from_numpy(feats["base"]).float().flatten(2).transpose(1, 2).reshape(args.n * p, -1).contiguous()
    x_aug = torch.from_numpy(feats["aug0"]).float().flatten(2).transpose(1, 2).reshape(args.n * p, -1).contiguous()
    w = torch.randn(args.classes, args.feature_dim)
    g = torch.randn(args.n * p, args.classes)
    bf = [t.bfloat16() for t in (x, x_aug, w, g)]

    print(f"# frozen head training, one pass = {args.n} images, F={args.feature_dim}, {args.side}x{args.side}, "
          f"C={args.classes}, batch {args.batch}; median of {args.repeat}, a/b/c interleaved")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}; baseline {args.baseline_ref}")
    print("| consistency | impl | img-passes/s | s / pass | ratio to bound |")
    print("|---|---|---|---|---|")
    for consistency in (False, True):
        times = {k: [] for k in (*impls, "(c) bound", "(c) bound in bfloat16")}
        for tr in impls.values():               # warm-up (builds ccdlib's stacks)
            time_pass(tr, targets, consistency)
        bound_pass(x, x_aug, w, g, consistency)
        bound_pass(*bf, consistency)
        for _ in range(args.repeat):
            for k, tr in impls.items():
                times[k].append(time_pass(tr, targets, consistency))
            times["(c) bound"].append(bound_pass(x, x_aug, w, g, consistency))
            times["(c) bound in bfloat16"].append(bound_pass(*bf, consistency))
        med = {k: statistics.median(v) for k, v in times.items()}
        for k, s in med.items():
            print(f"| {'on' if consistency else 'off'} | {k} | {args.n / s:.0f} | {s:.3f} | "
                  f"{med['(c) bound'] / s:.2f} |")
    if args.levers:
        levers(feats, args, args.repeat)


if __name__ == "__main__":
    main()
