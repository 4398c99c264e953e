"""Tests of ccdlib.scoring (batched, cached, resumable teacher scoring) and ccdlib.views geometry.

A cheap fake teacher stands in for a network: its embedding of a view is the mean colour of each quadrant
of the preprocessed view (12 numbers, L2-normalised), and it records every forward call.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import ccdlib.cache
import ccdlib.scoring
from ccdlib.cache import ArrayCache, atomic_write_bytes, save_array
from ccdlib.errors import DatasetError
from ccdlib.scoring import embed_views, load_rgb, score_views
from ccdlib.teachers import Teacher
from ccdlib.views import (
    View,
    clip_box,
    crop_view,
    expand_box,
    global_views,
    grid_boxes,
    grid_views,
    image_size,
)

torch.set_num_threads(2)

SIZES = [(37, 23), (50, 41), (64, 64), (29, 53)]


class FakeTeacher(Teacher):
    """Deterministic, fast: quadrant mean colours of the preprocessed view -> 12-d unit vector."""

    def __init__(self, size: int = 8, tag: str = "a"):
        self.image_size = size
        self.logit_scale = 10.0
        self.device = torch.device("cpu")
        self._mean, self._std, self._pixel_range = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 1.0
        self.tag = tag
        self.calls: list[int] = []  # batch size of every forward pass

    def fingerprint(self) -> dict:
        return {"backend": "fake", "tag": self.tag, "image_size": self.image_size}

    @torch.no_grad()
    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls.append(int(batch.shape[0]))
        h = self.image_size // 2
        quads = [batch[:, :, :h, :h], batch[:, :, :h, h:], batch[:, :, h:, :h], batch[:, :, h:, h:]]
        e = torch.cat([q.mean((2, 3)) for q in quads], dim=1) + 1e-3
        return F.normalize(e, dim=-1)


def _write_images(folder: Path, sizes=SIZES, seed: int = 0, fmt: str = "png") -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i, (w, h) in enumerate(sizes):
        p = folder / f"img{i}.{fmt}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def _reference(teacher: Teacher, paths, views) -> np.ndarray:
    """Each view alone: decode, crop, preprocess, one forward pass."""
    rows = []
    for v in views:
        x = teacher.preprocess(crop_view(load_rgb(paths[v.image]), v.box))[None]
        rows.append(teacher.encode_images(x)[0].numpy())
    return np.stack(rows)


def _mixed_views() -> list[View]:
    """Whole images, 2x2 and 3x3 tiles, and free boxes (fractional, clipped, tiny), shuffled across images."""
    views = global_views(len(SIZES)) + grid_views(SIZES, 2) + grid_views(SIZES, 3)
    views += [View(0, (3.4, 2.2, 20.7, 15.1)), View(1, (40, 30, 60, 55)), View(2, (0, 0, 64, 64)),
              View(3, (5, 5, 5.2, 5.3)), View(1, (-10, -4, 8, 9))]
    order = np.random.default_rng(1).permutation(len(views))
    return [views[i] for i in order]


@pytest.fixture()
def images(tmp_path) -> list[Path]:
    d = tmp_path / "images"
    d.mkdir()
    return _write_images(d)


def _image_major(n_images: int = 4) -> list[View]:
    """Per image: the whole image then its 4 tiles (5 views), image after image."""
    out = []
    for i in range(n_images):
        out.append(View(i))
        out += [View(i, b) for b in grid_boxes(*SIZES[i], 2)]
    return out


# --------------------------------------------------------------------------------------------------
# correctness and batching
# --------------------------------------------------------------------------------------------------
def test_embed_views_matches_one_view_at_a_time(images):
    t = FakeTeacher()
    views = _mixed_views()
    got = embed_views(t, images, views, batch_size=7, chunk_size=11, cache_dir=None, progress=False)
    assert got.shape == (len(views), 12) and got.dtype == np.float32
    ref = _reference(FakeTeacher(), images, views)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # order really matters: views of different content differ; the only identical pair is image 2 whole
    # and its full-image box
    dist = np.abs(got[:, None] - got[None]).sum(-1)
    same = [(views[i], views[j]) for i, j in zip(*np.triu_indices(len(views), 1)) if dist[i, j] < 1e-4]
    assert len(same) == 1 and set(same[0]) == {View(2), View(2, (0, 0, 64, 64))}


@pytest.mark.parametrize("batch_size,chunk_size", [(8, 1000), (4, 10), (64, 512), (1, 5)])
def test_batching_across_images(images, batch_size, chunk_size):
    t = FakeTeacher()
    views = _mixed_views()
    V = len(views)
    embed_views(t, images, views, batch_size=batch_size, chunk_size=chunk_size, cache_dir=None, progress=False)
    expected = []
    for c in range(0, V, chunk_size):
        n = min(chunk_size, V - c)
        expected += [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    assert t.calls == expected
    if chunk_size >= V:
        assert len(t.calls) == math.ceil(V / batch_size)
    assert ccdlib.scoring.last_stats.views_computed == V


def test_each_image_decoded_once_per_batch(images, monkeypatch):
    decoded: list[str] = []
    real = ccdlib.scoring.load_rgb

    def counting(path):
        decoded.append(str(path))
        return real(path)

    monkeypatch.setattr(ccdlib.scoring, "load_rgb", counting)
    views = _image_major()  # 20 views, 5 per image
    embed_views(FakeTeacher(), images, views, batch_size=10, chunk_size=20, cache_dir=None, progress=False)
    assert len(decoded) == 4  # two images per batch, each decoded once
    assert sorted(decoded) == sorted(map(str, images))


def test_small_forward_batches_share_one_decode_per_group(images, monkeypatch):
    """Forward batches of 2 views still decode each image once per cut group (CUT_GROUP views), not per batch."""
    decoded: list[str] = []
    real = ccdlib.scoring.load_rgb
    monkeypatch.setattr(ccdlib.scoring, "load_rgb", lambda p: decoded.append(str(p)) or real(p))
    t = FakeTeacher()
    views = _image_major()  # 20 views, 5 per image
    got = embed_views(t, images, views, batch_size=2, chunk_size=20, cache_dir=None, progress=False)
    assert t.calls == [2] * 10
    assert len(decoded) == 4
    np.testing.assert_allclose(got, _reference(FakeTeacher(), images, views), atol=1e-6)


def test_prefetch_gives_the_same_embeddings_and_batches(images):
    """The background cutting thread changes when views are cut, not what is scored or in which batches."""
    views = _image_major() + _mixed_views()
    t0, t1 = FakeTeacher(), FakeTeacher()
    plain = embed_views(t0, images, views, batch_size=3, chunk_size=13, cache_dir=None, progress=False,
                        prefetch=False)
    pre = embed_views(t1, images, views, batch_size=3, chunk_size=13, cache_dir=None, progress=False,
                      prefetch=True)
    np.testing.assert_array_equal(plain, pre)
    assert t0.calls == t1.calls


def test_prefetch_surfaces_a_corrupt_image(images, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg" * 10)
    paths = list(images) + [bad]
    views = [View(i) for i in range(len(images))] * 20 + [View(len(images))]  # the bad image in a later group
    with pytest.raises(DatasetError, match="bad.jpg"):
        embed_views(FakeTeacher(), paths, views, batch_size=4, chunk_size=1000, cache_dir=None, progress=False,
                    prefetch=True)


@pytest.mark.parametrize("device,size,expected", [("cpu", 224, 4), ("cpu", 260, 2), ("cpu", 448, 1),
                                                  ("cpu", 640, 1), ("cpu", 112, 16), ("cuda", 224, 64),
                                                  ("cuda", 640, 64)])
def test_auto_forward_batch(device, size, expected):
    assert ccdlib.scoring.auto_forward_batch(device, size) == expected


def test_default_batch_is_auto(images):
    """batch_size=None: FakeTeacher (CPU, 8 px) gets 4 * 224^2 // 8^2 = 3136 views per pass -> one pass per chunk."""
    t = FakeTeacher()
    views = _mixed_views()
    embed_views(t, images, views, chunk_size=11, cache_dir=None, progress=False)
    assert t.calls == [min(11, len(views) - c) for c in range(0, len(views), 11)]


def test_score_views_is_softmax_of_embeddings(images):
    t = FakeTeacher()
    views = _mixed_views()
    w = F.normalize(torch.randn(5, 12, generator=torch.Generator().manual_seed(0)), dim=-1)
    p = score_views(t, images, views, w, batch_size=16, cache_dir=None, progress=False)
    emb = embed_views(t, images, views, batch_size=16, cache_dir=None, progress=False)
    assert p.shape == (len(views), 5)
    np.testing.assert_allclose(p, torch.softmax(10.0 * torch.from_numpy(emb) @ w.T, -1).numpy(), atol=1e-6)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)


def test_bad_arguments_and_empty(images):
    t = FakeTeacher()
    with pytest.raises(ValueError):
        embed_views(t, images, [View(0)], batch_size=0, cache_dir=None, progress=False)
    with pytest.raises(ValueError):
        embed_views(t, images, [View(0)], chunk_size=0, cache_dir=None, progress=False)
    out = embed_views(t, images, [], cache_dir=None, progress=False)
    assert out.shape[0] == 0 and t.calls == []


# --------------------------------------------------------------------------------------------------
# cache, invalidation, resumption
# --------------------------------------------------------------------------------------------------
def test_cache_hit_computes_nothing(images, tmp_path):
    cache = tmp_path / "cache"
    views = _mixed_views()
    t = FakeTeacher()
    first = embed_views(t, images, views, batch_size=8, chunk_size=10, cache_dir=cache, progress=False)
    n_chunks = math.ceil(len(views) / 10)
    s = ccdlib.scoring.last_stats
    assert (s.chunks_computed, s.chunks_cached, s.views_computed) == (n_chunks, 0, len(views))
    assert len(list((cache / "embeddings").glob("*.npy"))) == n_chunks
    t.calls.clear()
    second = embed_views(t, images, views, batch_size=8, chunk_size=10, cache_dir=cache, progress=False)
    s = ccdlib.scoring.last_stats
    assert (s.chunks_computed, s.chunks_cached, s.views_computed) == (0, n_chunks, 0)
    assert t.calls == []
    np.testing.assert_array_equal(first, second)


def test_other_teacher_fingerprint_recomputes(images, tmp_path):
    cache = tmp_path / "cache"
    views = _image_major()
    embed_views(FakeTeacher(tag="a"), images, views, chunk_size=5, cache_dir=cache, progress=False)
    other = FakeTeacher(tag="b")
    embed_views(other, images, views, chunk_size=5, cache_dir=cache, progress=False)
    assert ccdlib.scoring.last_stats.chunks_computed == 4 and ccdlib.scoring.last_stats.chunks_cached == 0
    # and a different input size (part of the fingerprint) gives different embeddings, not stale ones
    big = embed_views(FakeTeacher(size=16), images, views, chunk_size=5, cache_dir=cache, progress=False)
    assert ccdlib.scoring.last_stats.chunks_computed == 4
    np.testing.assert_allclose(big, _reference(FakeTeacher(size=16), images, views), atol=1e-6)


def test_changed_image_file_recomputes_its_chunks(images, tmp_path):
    cache = tmp_path / "cache"
    views = _image_major()  # chunk k (5 views) = image k
    t = FakeTeacher()
    before = embed_views(t, images, views, chunk_size=5, cache_dir=cache, progress=False)
    # touched (same bytes, new mtime): only image 2's chunk is recomputed
    st = images[2].stat()
    os.utime(images[2], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    again = embed_views(t, images, views, chunk_size=5, cache_dir=cache, progress=False)
    s = ccdlib.scoring.last_stats
    assert (s.chunks_computed, s.chunks_cached) == (1, 3)
    np.testing.assert_array_equal(again, before)
    # new content (other size too): recomputed, and the result is the new content's
    Image.fromarray(np.full((30, 30, 3), 200, np.uint8)).save(images[2])
    views2 = [v if v.image != 2 else View(2, None if v.box is None else (0, 0, 15, 15)) for v in views]
    after = embed_views(t, images, views2, chunk_size=5, cache_dir=cache, progress=False)
    assert ccdlib.scoring.last_stats.chunks_computed == 1
    np.testing.assert_allclose(after, _reference(FakeTeacher(), images, views2), atol=1e-6)
    assert not np.allclose(after[10:15], before[10:15])


def test_resume_after_interruption(images, tmp_path):
    cache = tmp_path / "cache"
    views = _image_major()  # 20 views, chunk_size 5 -> 4 chunks
    clean = embed_views(FakeTeacher(), images, views, chunk_size=5, cache_dir=None, progress=False)

    class Killed(Exception):
        pass

    def kill_after_1(c: int) -> None:
        if c == 1:
            raise Killed

    t = FakeTeacher()
    with pytest.raises(Killed):
        embed_views(t, images, views, batch_size=5, chunk_size=5, cache_dir=cache, progress=False,
                    on_chunk=kill_after_1)
    assert t.calls == [5, 5]
    assert len(list((cache / "embeddings").glob("*.npy"))) == 2
    t.calls.clear()
    seen: list[int] = []
    resumed = embed_views(t, images, views, batch_size=5, chunk_size=5, cache_dir=cache, progress=False,
                          on_chunk=seen.append)
    s = ccdlib.scoring.last_stats
    assert (s.chunks_computed, s.chunks_cached, s.views_computed) == (2, 2, 10)
    assert t.calls == [5, 5] and seen == [0, 1, 2, 3]
    np.testing.assert_array_equal(resumed, clean)


def test_garbage_cache_file_is_a_miss(images, tmp_path):
    cache = tmp_path / "cache"
    views = _image_major()
    t = FakeTeacher()
    good = embed_views(t, images, views, chunk_size=5, cache_dir=cache, progress=False)
    files = sorted((cache / "embeddings").glob("*.npy"))
    assert len(files) == 4
    files[0].write_bytes(b"\x00garbage" * 10)  # not an .npy at all
    files[1].write_bytes(b"")  # empty
    buf = io.BytesIO()
    np.save(buf, good[:5])
    files[2].write_bytes(buf.getvalue()[:-7])  # truncated .npy
    again = embed_views(t, images, views, chunk_size=5, cache_dir=cache, progress=False)
    s = ccdlib.scoring.last_stats
    assert (s.chunks_computed, s.chunks_cached) == (3, 1)
    np.testing.assert_array_equal(again, good)
    # the rewritten entries are valid again
    embed_views(t, images, views, chunk_size=5, cache_dir=cache, progress=False)
    assert ccdlib.scoring.last_stats.chunks_cached == 4


def test_array_cache_roundtrip_and_disabled(tmp_path):
    c = ArrayCache(tmp_path, "ns")
    key = {"a": [1, 2], "b": Path("/x")}
    assert c.get(key) is None and c.misses == 1
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    c.put(key, arr)
    np.testing.assert_array_equal(c.get({"b": Path("/x"), "a": [1, 2]}), arr)  # key order does not matter
    assert c.hits == 1
    off = ArrayCache(None, "ns")
    off.put(key, arr)
    assert off.get(key) is None and off.path(key) is None


# --------------------------------------------------------------------------------------------------
# bad images
# --------------------------------------------------------------------------------------------------
def test_missing_image_is_dataset_error(images, tmp_path):
    missing = tmp_path / "images" / "gone.png"
    paths = list(images) + [missing]
    for cache_dir in (None, tmp_path / "cache"):
        with pytest.raises(DatasetError) as ei:
            embed_views(FakeTeacher(), paths, [View(0), View(4)], cache_dir=cache_dir, progress=False)
        assert str(missing) in str(ei.value)
    with pytest.raises(DatasetError, match="gone.png"):
        load_rgb(missing)


def test_corrupt_images_are_dataset_errors(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    paths = _write_images(d, fmt="jpg")
    blob = paths[1].read_bytes()
    truncated = d / "truncated.jpg"
    truncated.write_bytes(blob[: len(blob) // 2])
    garbage = d / "garbage.jpg"
    garbage.write_bytes(b"this is not a JPEG" * 20)
    header_only = d / "header_only.jpg"
    header_only.write_bytes(blob[:20])
    for bad in (truncated, garbage, header_only):
        with pytest.raises(DatasetError) as ei:
            embed_views(FakeTeacher(), [paths[0], bad], [View(0), View(1), View(1, (0, 0, 5, 5))],
                        cache_dir=tmp_path / "cache", progress=False)
        assert str(bad) in str(ei.value)
    # the intact JPEGs score fine
    out = embed_views(FakeTeacher(), paths, global_views(len(paths)), cache_dir=None, progress=False)
    assert out.shape == (len(paths), 12)


# --------------------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------------------
def test_failed_replace_leaves_nothing(images, tmp_path, monkeypatch):
    cache = tmp_path / "cache"

    def broken_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(ccdlib.cache.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        embed_views(FakeTeacher(), images, _image_major(), chunk_size=5, cache_dir=cache, progress=False)
    folder = cache / "embeddings"
    assert list(folder.iterdir()) == []  # no final file, no temp file
    monkeypatch.undo()
    embed_views(FakeTeacher(), images, _image_major(), chunk_size=5, cache_dir=cache, progress=False)
    assert ccdlib.scoring.last_stats.chunks_computed == 4
    assert len(list(folder.iterdir())) == 4


def test_atomic_write_keeps_old_content_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "x.bin"
    atomic_write_bytes(target, b"old")
    assert target.read_bytes() == b"old"

    def interrupted(fd):
        raise KeyboardInterrupt  # killed mid-write: BaseException, not Exception

    monkeypatch.setattr(ccdlib.cache.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"new content")
    with pytest.raises(KeyboardInterrupt):
        save_array(tmp_path / "sub" / "a.npy", np.ones(3))
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.bin"]


# --------------------------------------------------------------------------------------------------
# views geometry
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("w,h", [(37, 23), (1, 1), (5, 7), (448, 448), (641, 479), (2, 101)])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_grid_boxes_partition_exactly(w, h, n):
    boxes = grid_boxes(w, h, n)
    assert len(boxes) == n * n
    cover = np.zeros((h, w), dtype=int)
    for x0, y0, x1, y1 in boxes:
        assert all(float(v).is_integer() for v in (x0, y0, x1, y1))
        assert 0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h
        cover[y0:y1, x0:x1] += 1
    assert (cover == 1).all()  # covers every pixel, no overlap
    assert sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes) == w * h
    # row-major: first row of tiles first, left to right
    assert boxes[0][:2] == (0, 0) and boxes[-1][2:] == (w, h)
    if n > 1 and w >= n:
        assert boxes[1][0] == boxes[0][2] and boxes[1][1] == 0
    # tile sides differ by at most one pixel
    widths = {x1 - x0 for x0, _, x1, _ in boxes}
    assert max(widths) - min(widths) <= 1


def test_grid_boxes_bad_n():
    with pytest.raises(ValueError):
        grid_boxes(10, 10, 0)


def test_grid_and_global_views():
    v = grid_views([(10, 20), (30, 30)], 3)
    assert len(v) == 18 and [x.image for x in v] == [0] * 9 + [1] * 9
    assert v[9].box == grid_boxes(30, 30, 3)[0]
    assert global_views(3) == [View(0), View(1), View(2)]
    assert View(1, (1.00001, 2, 3, 4)).key() == (1, (1.0, 2.0, 3.0, 4.0))
    assert View(1).key() == (1, None)


def test_expand_and_clip_box():
    assert expand_box((10, 10, 20, 30), offset=5, width=100, height=100) == (5, 5, 25, 35)
    assert expand_box((10, 10, 20, 30), fraction=0.2, width=100, height=100) == (8, 6, 22, 34)
    assert expand_box((10, 10, 20, 30), offset=1, fraction=0.5, width=100, height=100) == (4, 0, 26, 41)
    # clipped at every border
    assert expand_box((2, 3, 95, 97), offset=10, width=100, height=100) == (0, 0, 100, 100)
    assert expand_box((0, 0, 640, 480), offset=80, width=640, height=480) == (0, 0, 640, 480)
    assert clip_box((-3, -1, 50, 70), 40, 60) == (0, 0, 40, 60)


def test_crop_view_sizes(tmp_path):
    im = Image.new("RGB", (40, 30))
    assert crop_view(im, None) is im
    assert crop_view(im, (3.4, 2.6, 10.2, 9.9)).size == (8, 8)  # floor / ceil outward
    assert crop_view(im, (5, 5, 5.2, 5.3)).size == (1, 1)
    assert crop_view(im, (7, 7, 7, 7)).size == (1, 1)  # empty box: still one pixel
    assert crop_view(im, (-5, -5, 100, 100)).size == (40, 30)
    # degenerate boxes on or beyond the right/bottom edge still give at least one pixel
    for box in [(40, 0, 40, 30), (0, 30, 40, 30), (39.8, 29.9, 40, 30), (45, 35, 50, 40)]:
        w, h = crop_view(im, box).size
        assert w >= 1 and h >= 1, box
    p = tmp_path / "x.png"
    im.save(p)
    assert image_size(p) == (40, 30)


def test_tiny_grid_tiles_can_be_scored(tmp_path):
    """Images smaller than the grid have empty tiles (some on the right/bottom edge); each is still cut as a
    view of at least 1x1 pixels and scored."""
    sizes = [(1, 1), (2, 2), (3, 1)]
    paths = []
    for i, (w, h) in enumerate(sizes):
        p = tmp_path / f"tiny{i}.png"
        Image.new("RGB", (w, h), (40 * (i + 1), 10, 200)).save(p)
        paths.append(p)
    for n in (3, 4):
        views = grid_views(sizes, n)
        out = embed_views(FakeTeacher(), paths, views, cache_dir=None, progress=False)
        assert out.shape == (len(views), 12) and np.isfinite(out).all()
        # uniform images: every tile, empty or not, shows the image's colour (not black padding)
        whole = embed_views(FakeTeacher(), paths, global_views(len(sizes)), cache_dir=None, progress=False)
        np.testing.assert_allclose(out, np.repeat(whole, n * n, axis=0), atol=1e-6)
