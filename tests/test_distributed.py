"""torchrun on the CPU: two gloo processes against one process.

``torchrun --standalone --nproc_per_node=2 tests/_distributed_worker.py DIR`` runs, on each rank, sharded teacher
scoring (whole images, tiles, boxes; the pseudo-labels derived from it; a classifier-guided label update) and one
DDP fine-tune epoch of a random ResNet-50 student (float64, 64 px images, 5 images: a step of 2 + 2 and a last
step where rank 1 has an empty batch). The tests check that

1. every rank returns the full embeddings, equal to this (non-distributed) process's, each rank computed only its
   own chunks (round-robin), and the pseudo-labels (CCD initial, and after the label update) are identical;
2. 2 ranks x batch 2 take the same steps as one process with batch 4: same gradients, weights, BatchNorm
   statistics, losses and training scores (float64 tolerances). The one-process reference is trained by rank 0
   after its process group is destroyed, so that no 400 MB of weights and gradients go through files.

No GPU is needed (CI has none); the file takes about 25-35 s on 2 CPU cores.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("_distributed_worker", HERE / "_distributed_worker.py")
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> dict:
    """Run the worker on 2 ranks once; return each rank's outputs."""
    root = tmp_path_factory.mktemp("distributed")
    worker.write_images(root / "images")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.pop("CCDLIB_CACHE", None)
    env["CCDLIB_CACHE"] = str(root / "cache")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "_distributed_worker.py"), str(root)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    out = {r: {"meta": json.loads((root / "out" / f"rank{r}.json").read_text()),
               "scoring": dict(np.load(root / "out" / f"rank{r}_scoring.npz"))} for r in range(2)}
    out["paths"] = worker.image_paths(root / "images")
    return out


def test_two_ranks_ran_under_ddp_with_synced_batchnorm(ranks):
    for r in range(2):
        meta = ranks[r]["meta"]
        assert meta["rank"] == r and meta["world"] == 2
        assert meta["ddp"] == "DistributedDataParallel"
        assert meta["bn"] == ["_AllReduceBatchNorm2d"]
        assert meta["same_model_on_all_ranks"]   # weights and gradients bit-identical on the two ranks


def test_sharded_scoring_equals_one_process(ranks):
    import ccdlib.distributed

    n_views = len(worker.views())
    n_chunks = -(-n_views // worker.CHUNK)
    assert n_chunks >= 4
    single = worker.scoring_and_labels(ranks["paths"])
    assert single["views_computed"] == n_views
    # each rank computed only its round-robin chunks, and only their views went through the teacher
    m0, m1 = ranks[0]["meta"], ranks[1]["meta"]
    assert m0["chunks"] == list(range(0, n_chunks, 2)) and m1["chunks"] == list(range(1, n_chunks, 2))
    sizes = [min(worker.CHUNK, n_views - c * worker.CHUNK) for c in range(n_chunks)]
    for meta in (m0, m1):
        mine = sum(sizes[c] for c in meta["chunks"])
        assert meta["views_computed_first_call"] == mine == meta["forward_views_first_call"]
    assert m0["forward_views_first_call"] + m1["forward_views_first_call"] == n_views
    # every rank returns the full result, equal to one process's
    for r in range(2):
        got = ranks[r]["scoring"]
        assert got["emb"].shape == single["emb"].shape == (n_views, 12)
        np.testing.assert_allclose(got["emb"], single["emb"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(got["probs"], single["probs"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(got["initial"], single["initial"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(got["updated"], single["updated"], rtol=0, atol=1e-6)
        assert np.array_equal(got["initial"] >= 0.5, single["initial"] >= 0.5)
        assert np.array_equal(got["updated"] >= 0.5, single["updated"] >= 0.5)
    assert ccdlib.distributed.rank_and_world() == (0, 1)  # the test process itself is not distributed


def test_ddp_step_equals_one_process_on_the_combined_batch(ranks):
    """Rank 0 trained the same epoch in one process with batch 4 after the process group was gone, and measured
    the distance (see ``compare_with_single_process``; float64, see ``student_trainer``)."""
    cmp = ranks[0]["meta"]["compare"]
    assert cmp["dtype"] == "torch.float64" and cmp["same_grad_names"]
    # gradients of the last step (one image: rank 0 has it, rank 1 an empty batch), averaged by DDP
    assert cmp["grad_rel"] < 1e-7
    # weights and BatchNorm statistics after both steps; num_batches_tracked equal
    assert cmp["weight_abs"] < 1e-9 and cmp["int_buffers_equal"]
    assert cmp["moved"] > 100
    # the logged losses; the pseudo-label BCE is evaluated against float32 targets (fit_epoch's dtype)
    assert cmp["loss"][0] == pytest.approx(cmp["loss"][1], rel=1e-6)
    assert cmp["bce"][0] == pytest.approx(cmp["bce"][1], rel=1e-6)
    assert cmp["consistency"][0] == pytest.approx(cmp["consistency"][1], rel=1e-9)
    assert cmp["scores_abs"] < 1e-6 and cmp["all_scored"]   # every image scored once, on one rank, and gathered


def test_rank_batches_cover_every_image_once():
    from ccdlib.trainer import _rank_batches

    order = np.random.default_rng(0).permutation(11)
    per_rank = [_rank_batches(order, 2, r, 3) for r in range(3)]
    assert [len(p) for p in per_rank] == [2, 2, 2]                       # same number of steps on every rank
    assert [m for _, m in per_rank[0]] == [6, 5]
    assert per_rank[2][1] == ([int(order[10])], 5) and per_rank[0][0][0] == [int(order[0]), int(order[1])]
    seen = sorted(i for p in per_rank for b, _ in p for i in b)
    assert seen == list(range(11))
    # one process with batch world*B takes the same global steps
    steps = [sorted(sum((per_rank[r][s][0] for r in range(3)), [])) for s in range(2)]
    assert steps == [sorted(order[:6].tolist()), sorted(order[6:].tolist())]


def test_cam_function_gives_the_same_boxes_block_by_block():
    """Streaming the CAMs (a function of image indices, e.g. ``trainer.cams``) gives the array's crops."""
    from ccdlib.label_update import cam_boxes

    rng = np.random.default_rng(0)
    cams = rng.normal(size=(11, 4, 5, 5)).astype(np.float32)
    cams[3, 1] = 0.0                                     # a flat map: no box
    selected = rng.random((11, 4)) < 0.4
    selected[3, 1] = True
    selected[7] = False                                  # an image with no selected class is never asked for
    sizes = [(40 + i, 30 + 2 * i) for i in range(11)]
    asked: list[list[int]] = []

    def cam_fn(idx):
        asked.append([int(i) for i in idx])
        return cams[idx]

    ref_views, ref_owner = cam_boxes(cams, selected, sizes, offset=3, resolution=32)
    views, owner = cam_boxes(cam_fn, selected, sizes, offset=3, resolution=32, block=3)
    assert views == ref_views and np.array_equal(owner, ref_owner) and len(views) == selected.sum() - 1
    assert all(len(a) <= 3 for a in asked) and sum(asked, []) == [i for i in range(11) if selected[i].any()]
