"""Crop scoring: the released code's one-crop-at-a-time loop vs ccdlib's batched scoring vs the bare forward.

For each teacher, the same crops (real mosaic images of the embedded training split; CAM-like boxes: each object's
ground-truth box grown by 80 px at the 640 px teacher grid, i.e. 56 px on a 448 px mosaic; one crop per image and
class, as the label update cuts one per selected class) are embedded three ways:

  (a) released  per image, per class: decode the image once, cut the crop, resize, one forward pass of 1 crop
                (the released CCD code's structure: 59 of its ~135 min on VOC07 went here);
  (b) ccdlib    :func:`ccdlib.scoring.embed_views` (batches of ``--batch`` crops from many images, no cache);
  (c) bound     the teacher's bare batched forward on the same crops already cut, resized and stacked
                (``teacher.encode_images`` on ``--batch``-sized slices, results copied to the CPU as (b) does).

Each is timed ``--repeat`` times after a warm-up (a, b, c interleaved) and the best time is kept. Printed: images/s (distinct images
whose crops were scored per second), crops/s, and the ratios b/a (speed-up over the released loop; goal >= 10)
and b/c (fraction of the bare forward's speed that the full pipeline keeps; goal >= 0.85).

Teachers: ConSE EfficientNet-Lite0 and -Lite2 (the offline default) and an open_clip RN50 with random weights
(``pretrained=None``: the same compute as the pretrained model), each at its native input size.

    python benchmarks/crop_scoring.py                       # ~240 crops, auto batch, all three teachers
    python benchmarks/crop_scoring.py --crops 200 --teachers conse:efficientnet-lite0 --device cuda
    python benchmarks/crop_scoring.py --sweep 1,4,16,64     # and (b) at several batch sizes
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ccdlib.scoring import auto_forward_batch, embed_views, load_rgb  # noqa: E402
from ccdlib.teachers import build_teacher, TeacherConfig  # noqa: E402
from ccdlib.views import View, crop_view, expand_box  # noqa: E402

DEFAULT_TEACHERS = ("conse:efficientnet-lite0", "conse:efficientnet-lite2", "open_clip:RN50")


def crops_from_gt(ds, n_crops: int, *, offset640: float = 80.0) -> tuple[list[View], int]:
    """One view per (image, class) around the class's ground-truth box, grown by ``offset640`` pixels of the 640 px
    grid; images in order until ``n_crops`` views. Returns the views and the number of distinct images."""
    from ccdlib.views import image_size
    views: list[View] = []
    for i, path in enumerate(ds.image_paths):
        w, h = image_size(path)
        off = offset640 * max(w, h) / 640.0
        boxes = ds.boxes[i]
        for c in sorted({int(b[0]) for b in boxes}):
            rows = boxes[boxes[:, 0] == c]
            box = (rows[:, 1].min(), rows[:, 2].min(), rows[:, 3].max(), rows[:, 4].max())
            views.append(View(i, expand_box(box, offset=off, width=w, height=h)))
        if len(views) >= n_crops:
            break
    return views, len({v.image for v in views})


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def released_loop(teacher, paths, views) -> np.ndarray:
    """(a) per image: decode once; per class: cut, resize, forward one crop."""
    by_image: dict[int, list[int]] = {}
    for k, v in enumerate(views):
        by_image.setdefault(v.image, []).append(k)
    out = [None] * len(views)
    for i, ks in by_image.items():
        im = load_rgb(paths[i])
        for k in ks:
            x = teacher.preprocess(crop_view(im, views[k].box))[None]
            out[k] = teacher.encode_images(x).float().cpu().numpy()[0]
    return np.stack(out)


def ccdlib_batched(teacher, paths, views, batch: int) -> np.ndarray:
    """(b) ccdlib's batched, chunked scoring (no disk cache)."""
    return embed_views(teacher, paths, views, batch_size=batch, chunk_size=max(512, batch), cache_dir=None,
                       progress=False)


def bare_forward(teacher, x: torch.Tensor, batch: int) -> np.ndarray:
    """(c) the teacher's forward on pre-cut, pre-resized, stacked crops."""
    return np.concatenate([teacher.encode_images(x[b:b + batch]).float().cpu().numpy()
                           for b in range(0, len(x), batch)])


def timed(fn, device: torch.device) -> tuple[float, np.ndarray]:
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def bench_teacher(spec: str, paths, views, n_images: int, *, batch: int, repeat: int, device: str,
                  dtype: str = "float32") -> dict:
    backend, arch = spec.split(":", 1)
    teacher = build_teacher(TeacherConfig(backend=backend, arch=arch, pretrained=None, device=device, dtype=dtype,
                                          conse_hierarchy=False))   # the plain teacher the README's rows timed
    dev = teacher.device
    batch = batch or auto_forward_batch(dev, teacher.image_size)
    # pre-cut and pre-resized crops for the bound (not timed)
    images = {i: load_rgb(paths[i]) for i in sorted({v.image for v in views})}
    x = torch.stack([teacher.preprocess(crop_view(images[v.image], v.box)) for v in views])
    if dev.type == "cuda":
        x = x.to(dev)
    # warm-up: kernels / oneDNN primitives for batch 1 and the batch size, before any timing
    with torch.no_grad():
        teacher.encode_images(x[:1])
        teacher.encode_images(x[:batch])
        if len(x) % batch:
            teacher.encode_images(x[:len(x) % batch])
    sync(dev)
    ta = tb = tc = float("inf")
    for _ in range(repeat):  # interleaved, so that a shared machine's load falls on all three alike
        t, ea = timed(lambda: released_loop(teacher, paths, views), dev)
        ta = min(ta, t)
        t, eb = timed(lambda: ccdlib_batched(teacher, paths, views, batch), dev)
        tb = min(tb, t)
        t, ec = timed(lambda: bare_forward(teacher, x, batch), dev)
        tc = min(tc, t)
    n = len(views)
    return {"teacher": f"{backend} {arch}" + ("" if dtype == "float32" else f" ({dtype})"), "size": teacher.image_size, "device": str(dev), "crops": n, "batch": batch,
            "images": n_images, "a_s": ta, "b_s": tb, "c_s": tc,
            "a_crops": n / ta, "b_crops": n / tb, "c_crops": n / tc,
            "a_img": n_images / ta, "b_img": n_images / tb, "c_img": n_images / tc,
            "b_over_a": ta / tb, "b_over_c": tc / tb,
            "max_diff_ab": float(np.abs(ea - eb).max()), "max_diff_bc": float(np.abs(eb - ec).max())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teachers", default=",".join(DEFAULT_TEACHERS),
                    help="comma-separated backend:arch (default: %(default)s)")
    ap.add_argument("--crops", type=int, default=240, help="about this many crops (default 240)")
    ap.add_argument("--batch", type=int, default=0,
                    help="crops per forward pass in (b) and (c) (default 0: ccdlib's auto_forward_batch for the "
                         "teacher's device and input size, e.g. 4 at 224 px on a CPU, 64 on a GPU)")
    ap.add_argument("--repeat", type=int, default=2, help="timings per method; the best is kept (default 2)")
    ap.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda:0 ...")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--data-root", default=None, help="a built mosaic set (default: the embedded default split)")
    ap.add_argument("--dtypes", default="float32",
                    help="comma-separated teacher.dtype values, each timed as its own row, e.g. float32,bfloat16")
    ap.add_argument("--sweep", default="", help="also time (b) at these comma-separated batch sizes, e.g. 1,4,16,64")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads:
        torch.set_num_threads(args.threads)
    from ccdlib.mosaic import embedded_dataset
    ds = embedded_dataset("train", root=args.data_root, progress=False)
    views, n_images = crops_from_gt(ds, args.crops)
    paths = ds.image_paths
    print(f"# crop scoring: {len(views)} crops of {n_images} mosaic images ({ds.name}), batch {args.batch or 'auto'}, "
          f"best of {args.repeat}; torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"{platform.processor() or platform.machine()}, cuda={torch.cuda.is_available()}", flush=True)
    rows = []
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for spec, dtype in [(s.strip(), d) for s in args.teachers.split(",") if s.strip() for d in dtypes]:
        r = bench_teacher(spec, paths, views, n_images, batch=args.batch, repeat=args.repeat, device=args.device,
                          dtype=dtype)
        rows.append(r)
        print(f"#   {r['teacher']}: a {r['a_s']:.1f}s  b {r['b_s']:.1f}s  c {r['c_s']:.1f}s  "
              f"(max |a-b| {r['max_diff_ab']:.1e}, |b-c| {r['max_diff_bc']:.1e})", flush=True)
    print()
    print("| teacher | input px | device | crops | batch (b, c) | (a) released: img/s, crops/s | (b) ccdlib: img/s, "
          "crops/s | (c) bound: img/s, crops/s | b/a (goal >= 10) | b/c (goal >= 0.85) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['teacher']} | {r['size']} | {r['device']} | {r['crops']} | {r['batch']} "
              f"| {r['a_img']:.1f}, {r['a_crops']:.1f} "
              f"| {r['b_img']:.1f}, {r['b_crops']:.1f} | {r['c_img']:.1f}, {r['c_crops']:.1f} "
              f"| {r['b_over_a']:.2f} | {r['b_over_c']:.2f} |")
    if args.sweep:
        sizes = [int(b) for b in args.sweep.split(",")]
        print()
        print("| teacher | device | " + " | ".join(f"(b) crops/s at batch {b}" for b in sizes) + " |")
        print("|---|---|" + "---|" * len(sizes))
        for spec in [s.strip() for s in args.teachers.split(",") if s.strip()]:
            backend, arch = spec.split(":", 1)
            teacher = build_teacher(TeacherConfig(backend=backend, arch=arch, pretrained=None, device=args.device,
                                                  dtype="float32", conse_hierarchy=False))
            ccdlib_batched(teacher, paths, views[:max(sizes)], max(sizes))  # warm-up
            rates = []
            for b in sizes:
                t = min(timed(lambda: ccdlib_batched(teacher, paths, views, b), teacher.device)[0]
                        for _ in range(args.repeat))
                rates.append(len(views) / t)
            print(f"| {backend} {arch} | {teacher.device} | " + " | ".join(f"{r:.1f}" for r in rates) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
