"""Worker of tests/test_distributed.py: ``torchrun --standalone --nproc_per_node=2 _distributed_worker.py DIR``.

Each rank (gloo backend, CPU, one thread) runs, under the process group:

1. sharded teacher scoring: :func:`ccdlib.scoring.embed_views` of whole images, tiles and boxes with a cheap
   deterministic fake teacher, the CCD initial pseudo-labels of its probabilities, and a classifier-guided label
   update from fixed random CAMs;
2. one DDP fine-tune epoch of a tiny random ResNet-50 student (one or two steps);

and writes what it got under ``DIR/out/rank<r>.*``. The test computes the same things in one process and compares.
The fixtures (images, views, classifier, targets, CAMs) are built by the functions below, which the test imports,
so both sides use exactly the same inputs.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ccdlib.teachers import Teacher
from ccdlib.views import View, global_views, grid_views

SIZES = [(37, 23), (50, 41), (64, 64), (29, 53), (44, 44), (60, 33), (31, 31), (52, 47)]
C = 3                  # classes
CHUNK = 7              # views per chunk: several chunks, so both ranks get some
STUDENT_IMAGES = 5     # 2 ranks x batch 2: one full step of 4 and a last step of 1 (rank 1 gets an empty batch)


class FakeTeacher(Teacher):
    """Deterministic and fast: quadrant mean colours of the preprocessed view -> 12-d unit vector."""

    def __init__(self, size: int = 8):
        self.image_size = size
        self.logit_scale = 10.0
        self.device = torch.device("cpu")
        self._mean, self._std, self._pixel_range = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 1.0
        self.calls: list[int] = []

    def fingerprint(self) -> dict:
        return {"backend": "fake-distributed", "image_size": self.image_size}

    @torch.no_grad()
    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls.append(int(batch.shape[0]))
        h = self.image_size // 2
        quads = [batch[:, :, :h, :h], batch[:, :, :h, h:], batch[:, :, h:, :h], batch[:, :, h:, h:]]
        return F.normalize(torch.cat([q.mean((2, 3)) for q in quads], dim=1) + 1e-3, dim=-1)


def write_images(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate(SIZES):
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        arr[: h // 2, :, i % 3] = 255  # some structure, so classes differ
        p = folder / f"img{i}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def image_paths(folder: Path) -> list[Path]:
    return [folder / f"img{i}.png" for i in range(len(SIZES))]


def views() -> list[View]:
    """Whole images, 2x2 tiles and a few boxes, in a shuffled order (mixed images in every chunk)."""
    vs = global_views(len(SIZES)) + grid_views(SIZES, 2)
    vs += [View(0, (3.4, 2.2, 20.7, 15.1)), View(1, (10, 5, 40, 30)), View(5, (0, 0, 30, 33))]
    order = np.random.default_rng(1).permutation(len(vs))
    return [vs[i] for i in order]


def classifier() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)  # every class is some image's top-1: no bias fallback
    return F.normalize(torch.randn(C, 12, generator=g), dim=-1)


def cams() -> np.ndarray:
    return np.random.default_rng(4).normal(size=(len(SIZES), C, 4, 4)).astype(np.float32)


def student_probs() -> np.ndarray:
    return np.random.default_rng(5).random((len(SIZES), C))


def targets() -> np.ndarray:
    return np.random.default_rng(6).random((STUDENT_IMAGES, C)).astype(np.float32)


def student_trainer(batch_size: int, paths: list[Path]):
    """A fine-tune trainer of a random ResNet-50 on 64 px images, computing in float64.

    Float64 because a random ResNet-50's float32 gradients carry roundoff of up to a few % of their size in some
    layers (measured against float64), which would hide a real mismatch; in float64, two equivalent computations
    agree to ~1e-12. The parameters are created in float64 and a pre-forward hook casts the (float32) images.
    """
    from ccdlib.student import StudentConfig
    from ccdlib.trainer import StudentTrainer
    cfg = StudentConfig(trunk="resnet50", trunk_weights="random", mode="finetune", image_size=64,
                        batch_size=batch_size, device="cpu", seed=0, num_workers=0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        trainer = StudentTrainer(cfg, paths, C, progress=False)
    finally:
        torch.set_default_dtype(default)
    trainer.student.register_forward_pre_hook(lambda module, args: (args[0].double(),) + tuple(args[1:]))
    return trainer


def scoring_and_labels(paths: list[Path], *, on_chunk=None) -> dict:
    """Embeddings of :func:`views`, CCD initial pseudo-labels, and a label update from :func:`cams`."""
    import ccdlib.scoring
    from ccdlib.label_update import classifier_guided_label_update
    from ccdlib.pseudolabels import ccd_initial_pseudo_labels
    from ccdlib.scoring import embed_views

    teacher = FakeTeacher()
    emb = embed_views(teacher, paths, views(), batch_size=3, chunk_size=CHUNK, progress=False, on_chunk=on_chunk)
    forward_views = sum(teacher.calls)
    computed = ccdlib.scoring.last_stats.views_computed
    probs = teacher.predict(emb, classifier()).numpy()
    init = ccd_initial_pseudo_labels(_global_rows(probs))
    upd = classifier_guided_label_update(
        y_prev=init.labels, student_probs=student_probs(), cams=cams(), teacher=teacher, classifier=classifier(),
        image_paths=paths, image_sizes=SIZES, bias=init.bias, offset=4, resolution=64, tau0=0.2, bound=1,
        batch_size=3, progress=False)
    return {"emb": emb, "probs": probs, "initial": init.labels, "updated": upd.labels,
            "forward_views": forward_views, "views_computed": computed}


def _global_rows(probs: np.ndarray) -> np.ndarray:
    """The rows of :func:`views` that are whole images, in image order: ``(N, C)``."""
    vs = views()
    rows = {v.image: k for k, v in enumerate(vs) if v.box is None}
    return probs[[rows[i] for i in range(len(SIZES))]]


def main(root: Path) -> int:
    torch.set_num_threads(1)
    from ccdlib.distributed import init_distributed, rank_and_world
    rank = init_distributed(backend="gloo")
    _, world = rank_and_world()
    out = root / "out"
    out.mkdir(exist_ok=True)
    paths = image_paths(root / "images")

    # 1. sharded scoring (the label update's crops go through the same sharded path)
    done: list[int] = []
    got = scoring_and_labels(paths, on_chunk=done.append)
    np.savez(out / f"rank{rank}_scoring.npz", **{k: got[k] for k in ("emb", "probs", "initial", "updated")})

    # 2. one DDP fine-tune epoch; the ranks must end with the same model
    trainer = student_trainer(2, paths[:STUDENT_IMAGES])
    before = {k: v.clone() for k, v in trainer.state_dict().items()}
    res = trainer.fit_epoch(targets(), alpha=1.0, consistency=True)
    ddp = {"state": trainer.state_dict(), "loss": res["loss"], "bce": res["bce"], "consistency": res["consistency"],
           "train_scores": res["train_scores"],
           "grads": {n: p.grad.detach().clone() for n, p in trainer.student.named_parameters() if p.grad is not None}}
    digests: list = [None] * world
    torch.distributed.all_gather_object(digests, _digest(ddp["state"], ddp["grads"]))
    meta = {"rank": rank, "world": world, "chunks": done, "forward_views_first_call": got["forward_views"],
            "views_computed_first_call": got["views_computed"], "same_model_on_all_ranks": len(set(digests)) == 1,
            "ddp": type(trainer._ddp).__name__ if trainer._ddp is not None else None,
            "bn": sorted({type(m).__name__ for m in trainer.student.modules() if "BatchNorm" in type(m).__name__})}
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    if rank == 0:  # one process on the combined batch (no process group any more), compared here: no 400 MB files
        meta["compare"] = compare_with_single_process(ddp, before, paths[:STUDENT_IMAGES])
    (out / f"rank{rank}.json").write_text(json.dumps(meta))
    return 0


def _digest(*dicts: dict) -> str:
    import hashlib
    h = hashlib.sha256()
    for d in dicts:
        for k, v in sorted(d.items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def compare_with_single_process(ddp: dict, before: dict, paths: list[Path]) -> dict:
    """Train the same epoch in one process with batch 4 and measure how far the DDP run is from it."""
    single = student_trainer(4, paths)
    assert single._ddp is None
    res = single.fit_epoch(targets(), alpha=1.0, consistency=True)
    state = single.state_dict()
    grads = {n: p.grad for n, p in single.student.named_parameters()}
    out = {"dtype": str(ddp["grads"]["head.weight"].dtype), "same_grad_names": sorted(grads) == sorted(ddp["grads"]),
           "grad_rel": 0.0, "weight_abs": 0.0, "int_buffers_equal": True, "moved": 0,
           "loss": [ddp["loss"], res["loss"]], "bce": [ddp["bce"], res["bce"]],
           "consistency": [ddp["consistency"], res["consistency"]],
           "scores_abs": float(np.abs(ddp["train_scores"] - res["train_scores"]).max()),
           "all_scored": bool((res["train_scores"] > 0).all() and (ddp["train_scores"] > 0).all())}
    for n, g in grads.items():  # gradients of the last step, relative to each tensor's largest entry
        out["grad_rel"] = max(out["grad_rel"], float((ddp["grads"][n] - g).abs().max() / (g.abs().max() + 1e-300)))
    for k, v in state.items():
        if v.is_floating_point():
            out["weight_abs"] = max(out["weight_abs"], float((ddp["state"][k] - v).abs().max()))
            out["moved"] += int(not torch.equal(v, before[k]))
        else:
            out["int_buffers_equal"] &= bool(torch.equal(ddp["state"][k], v))
    return out


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main(Path(sys.argv[1])))
