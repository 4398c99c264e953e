"""Cost of CCD's relabelling stage (the classifier-guided label update, method.md §6): time and memory, cold and warm,
at 1x, 2x, 4x the number of training images.

The stage is :func:`ccdlib.label_update.classifier_guided_label_update` with the configuration ``make reproduce``
runs (teacher ConSE EfficientNet-Lite0, ``ccd.*`` defaults, teacher batch auto; ``--teacher-arch``): the class-selection threshold, one CAM box per
selected (image, class), batched teacher scoring of every crop (:func:`ccdlib.scoring.embed_views`), local labels
and the mix. ``run_ccd`` also times the student's sigmoid outputs and CAMs under ``label_update``; here they are
inputs, prepared once per size and kept (not timed): the real mosaic split (seed 0, ``--base`` x scale training
images; 1x is the default embedded split) and seeded synthetic student outputs built from its ground-truth boxes
(:func:`synthetic_student`; training the real student at 4x took too long on the shared 2-core machine, and the
stage's cost depends only on how many crops of how many images the teacher scores).

Every measurement runs in a fresh Python process, so its peak RSS is its own:

- ``cold``: the stage with an empty teacher-embedding cache (a new temporary folder);
- ``warm``: the stage again on the cache the cold run filled (every crop chunk is a cache hit).

Per measurement: wall seconds of the stage, crops, crops/s and images/s; RSS before the stage (Python, torch, the
teacher and the inputs loaded), the peak RSS during the stage (psutil, sampled every 5 ms), and the stage's
working memory = peak - before. ``--repeat`` runs of each and the best time is kept (the memory of that run).

    python benchmarks/relabel_scaling.py                  # 1x, 2x, 4x of 320 images, cold + warm, best of 2
    python benchmarks/relabel_scaling.py --scales 1 --repeat 1
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _bench_dir(args) -> Path:
    from ccdlib.cache import default_cache_dir
    return Path(args.bench_dir) if args.bench_dir else default_cache_dir() / "bench"


def _run_config(n_train: int, bench: Path, arch: str = "efficientnet-lite0"):
    from ccdlib.config import DataConfig, RunConfig, TeacherConfig
    root = bench / "mosaics" / f"s0-n{n_train}-200-448px"
    return RunConfig(method="ccd", data=DataConfig(kind="mosaic", root=str(root), n_train=n_train, n_test=200),
                     teacher=TeacherConfig(backend="conse", arch=arch, conse_hierarchy=False, dtype="float32"))


# --------------------------------------------------------------------------------------------- prepare
def synthetic_student(ds, *, seed: int = 0, grid: int = 14) -> tuple:
    """Seeded stand-ins for a warmed-up student's outputs on ``ds``: ``(probs (N, C), cams (N, C, grid, grid))``.

    Present classes get probabilities ~U(0.4, 0.95) and CAMs with a Gaussian bump on each of their ground-truth
    boxes; absent classes get Beta(0.5, 8) probabilities (mean 0.06, a long tail) and noise-only CAMs. The
    threshold calibration then selects 4-6 classes per image, as it does for a trained student, and the CAM boxes
    sit on objects. The stage's cost does not depend on how good these are: every crop is resized to the
    teacher's input, so only the number of crops and images matters.
    """
    import numpy as np
    from ccdlib.views import image_size
    rng = np.random.default_rng(seed)
    n, c = ds.labels.shape
    gt = ds.labels.astype(bool)
    probs = np.where(gt, rng.uniform(0.4, 0.95, (n, c)), rng.beta(0.5, 8.0, (n, c)))
    cams = rng.normal(0.0, 0.3, (n, c, grid, grid)).astype(np.float32)
    yy, xx = np.mgrid[0:grid, 0:grid] + 0.5
    for i, path in enumerate(ds.image_paths):
        w, h = image_size(path)
        for k, x0, y0, x1, y1 in ds.boxes[i]:
            cx, cy = (x0 + x1) / 2 / w * grid, (y0 + y1) / 2 / h * grid
            sx, sy = max((x1 - x0) / w * grid / 4, 0.5), max((y1 - y0) / h * grid / 4, 0.5)
            cams[i, int(k)] += rng.uniform(1.0, 3.0) * np.exp(-((xx - cx) / sx) ** 2 / 2 - ((yy - cy) / sy) ** 2 / 2)
    return probs, cams


def prepare(n_train: int, bench: Path) -> Path:
    """Inputs of the stage for ``n_train`` images (cached in ``bench``): returns the ``.npz`` path.

    The mosaic split is real (built under ``bench``; 1x = as many images as the default split); the student's
    outputs are :func:`synthetic_student`; ``y_prev`` (the debiased global labels the local labels are mixed into)
    is a seeded stand-in too, and the bias 1 (neither changes the cost: ``O(N C)`` arithmetic).
    """
    import numpy as np

    from ccdlib.mosaic import embedded_dataset
    from ccdlib.views import image_size

    out = bench / f"relabel-inputs-n{n_train}.npz"
    if out.exists():
        return out
    cfg = _run_config(n_train, bench)
    ds = embedded_dataset("train", root=cfg.data.root, n_train=n_train, n_test=cfg.data.n_test, seed=0,
                          progress=False)
    probs, cams = synthetic_student(ds, seed=0)
    y_prev = np.clip(probs + np.random.default_rng(1).normal(0, 0.05, probs.shape), 0, 1)
    tmp = out.with_name(out.stem + ".tmp.npz")
    np.savez(tmp, y_prev=y_prev, bias=np.ones(ds.num_classes), student_probs=probs, cams=cams,
             sizes=np.asarray([image_size(p) for p in ds.image_paths]),
             paths=np.asarray([str(p) for p in ds.image_paths]), prompt_names=np.asarray(ds.prompt_names))
    os.replace(tmp, out)
    return out


# --------------------------------------------------------------------------------------------- measure
class PeakRSS:
    """Samples this process's RSS every ``interval`` seconds in a thread; ``peak`` in bytes."""

    def __init__(self, interval: float = 0.005):
        import psutil
        self.proc, self.interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak = self.proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def measure(n_train: int, bench: Path, cache: Path, threads: int = 0, teacher_batch: int = 0,
            arch: str = "efficientnet-lite0") -> dict:
    """One timed run of the stage in this (fresh) process."""
    import numpy as np
    import psutil
    import torch

    if threads:
        torch.set_num_threads(threads)

    from ccdlib.label_update import classifier_guided_label_update
    from ccdlib.context import get_teacher

    cfg = _run_config(n_train, bench, arch)
    c = cfg.ccd
    z = np.load(bench / f"relabel-inputs-n{n_train}.npz")
    inputs = {k: z[k] for k in z.files}
    teacher = get_teacher(cfg.teacher)
    classifier = teacher.text_classifier([str(p) for p in inputs["prompt_names"]], cfg.teacher.templates)
    from ccdlib.scoring import auto_forward_batch
    batch = teacher_batch or cfg.teacher_batch_size or auto_forward_batch(teacher.device, teacher.image_size)
    before = psutil.Process().memory_info().rss
    with PeakRSS() as rss:
        t = time.perf_counter()
        upd = classifier_guided_label_update(
            y_prev=inputs["y_prev"], student_probs=inputs["student_probs"], cams=inputs["cams"], teacher=teacher,
            classifier=classifier, image_paths=[Path(p) for p in inputs["paths"]],
            image_sizes=[tuple(s) for s in inputs["sizes"]], bias=inputs["bias"], ls=c.ls or None, r=c.r,
            offset=c.offset, resolution=c.resolution, threshold=c.cam_threshold, box_rule=c.box_rule,
            bound=c.bound, seed=cfg.seed, batch_size=batch, cache_dir=cache,
            progress=False)
        seconds = time.perf_counter() - t
    from ccdlib import scoring
    return {"n_train": n_train, "seconds": seconds, "crops": len(upd.crops), "tau": upd.tau,
            "chunks_computed": scoring.last_stats.chunks_computed, "chunks_cached": scoring.last_stats.chunks_cached,
            "rss_before_mb": before / 2**20, "rss_peak_mb": rss.peak / 2**20,
            "stage_mb": (rss.peak - before) / 2**20,
            "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "cams_mb": inputs["cams"].nbytes / 2**20, "threads": torch.get_num_threads(),
            "teacher_batch": batch}


# --------------------------------------------------------------------------------------------- driver
def _child(args_list: list[str]) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, __file__, *args_list], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{args_list} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scales", default="1,2,4", help="multiples of --base training images (default 1,2,4)")
    ap.add_argument("--base", type=int, default=320,
                    help="training images at 1x (default 320: the split `make reproduce` trains on)")
    ap.add_argument("--teacher-arch", default="efficientnet-lite0",
                    help="ConSE image model (default efficientnet-lite0, as notebooks/params/default.yaml)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per measurement, the best is kept (default 2)")
    ap.add_argument("--teacher-batch", type=int, default=0,
                    help="teacher batch size (0: auto, ccdlib.scoring.auto_forward_batch: on a CPU 4 for Lite0, 2 for Lite2; "
                         "64 on a GPU)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads in the measurements (0: torch's default)")
    ap.add_argument("--bench-dir", default=None, help="where inputs and mosaics are kept (default $CCDLIB_CACHE/bench)")
    ap.add_argument("--mode", choices=["drive", "prepare", "measure"], default="drive", help=argparse.SUPPRESS)
    ap.add_argument("--n-train", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    bench = _bench_dir(args)
    bench.mkdir(parents=True, exist_ok=True)
    if args.mode == "prepare":
        print(json.dumps({"inputs": str(prepare(args.n_train, bench))}))
        return 0
    if args.mode == "measure":
        print(json.dumps(measure(args.n_train, bench, Path(args.cache), args.threads, args.teacher_batch,
                                 args.teacher_arch)))
        return 0

    scales = [int(s) for s in args.scales.split(",")]
    common = ["--bench-dir", str(bench), "--threads", str(args.threads), "--teacher-batch", str(args.teacher_batch),
              "--teacher-arch", args.teacher_arch]
    rows = []
    for k in scales:
        n = args.base * k
        t = time.perf_counter()
        _child(["--mode", "prepare", "--n-train", str(n), *common])
        print(f"# prepared {n} images ({time.perf_counter() - t:.0f}s)", file=sys.stderr, flush=True)
        best: dict[str, dict] = {}
        for rep in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix="ccd-relabel-cache-") as cache:
                for phase in ("cold", "warm"):
                    r = _child(["--mode", "measure", "--n-train", str(n), "--cache", cache, *common])
                    r["phase"] = phase
                    print(f"#   {k}x {phase} run {rep + 1}: {r['seconds']:.1f}s, {r['crops']} crops, "
                          f"peak {r['rss_peak_mb']:.0f} MB", file=sys.stderr, flush=True)
                    if phase not in best or r["seconds"] < best[phase]["seconds"]:
                        best[phase] = r
        rows += [dict(best[p], scale=k) for p in ("cold", "warm")]
    base = {r["phase"]: r for r in rows if r["scale"] == scales[0]}
    print(f"# relabelling stage (method.md §6), ConSE {args.teacher_arch}, best of {args.repeat}; "
          f"{rows[0]['threads']} torch threads, teacher batch {rows[0]['teacher_batch']}")
    print("| scale | train images | phase | crops | seconds | crops/s | images/s | time / 1x | "
          "RSS before (MB) | peak RSS (MB) | stage working set (MB) | CAM input (MB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rel = r["seconds"] / base[r["phase"]]["seconds"] * scales[0]
        print(f"| {r['scale']}x | {r['n_train']} | {r['phase']} | {r['crops']} | {r['seconds']:.1f} | "
              f"{r['crops'] / r['seconds']:.1f} | {r['n_train'] / r['seconds']:.1f} | {rel:.2f} | "
              f"{r['rss_before_mb']:.0f} | {r['rss_peak_mb']:.0f} | {r['stage_mb']:.0f} | {r['cams_mb']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
