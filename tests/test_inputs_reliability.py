"""Issue 11, items 7-12, 14, 15: user files never deleted, one cache, every input read right or refused by name,
the CLI validates before work, and the environment is locked. See tests/RELIABILITY.md, "Inputs (issue 11)"."""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ccdlib
from ccdlib import cache, mosaic
from ccdlib.__main__ import main
from ccdlib.cache import (ArrayCache, atomic_write_text, cache_location, check_writable_dir,
                          clean_stale_temp_dirs, default_cache_dir, make_temp_dir, save_array)
from ccdlib.datasets import ClassList, load_class_list
from ccdlib.errors import ConfigError, DatasetError
from ccdlib.readers import read_coco, read_nuswide, read_voc
from ccdlib.scoring import load_rgb
from ccdlib.views import image_size, to_rgb

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(n_train=4, n_test=2, image_size=96, progress=False)



@pytest.fixture
def umask():
    """Set the process umask for one test, restore it after."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda m: os.umask(m)
    os.umask(old)


def _unwritable(tmp_path: Path) -> Path:
    """A folder path that cannot be created, even by root: it lies under a plain file."""
    f = tmp_path / "a-file"
    f.write_text("x")
    return f / "cache"


# ------------------------------------------------------------------------- 7. mosaic builder and user files
def test_mosaic_set_with_other_parameters_is_refused_naming_them(source, tmp_path, capsys):
    root = mosaic.build_mosaics(tmp_path / "set", seed=0, source=source, **TINY)
    before = (root / "mosaic.json").read_bytes()
    with pytest.raises(DatasetError, match=r"seed 0 -> 1.*--rebuild"):
        mosaic.build_mosaics(root, seed=1, source=source, **TINY)
    with pytest.raises(DatasetError, match=r"n_train 4 -> 3"):   # through the data-set entry point too
        mosaic.embedded_dataset("train", root=root, seed=0, source=source, **{**TINY, "n_train": 3})
    assert (root / "mosaic.json").read_bytes() == before       # untouched
    args = ["data", "mosaic", "--out", str(root), "--train", "4", "--test", "2", "--image-size", "96",
            "--seed", "1", "--source", str(source), "--no-progress"]
    assert main(args) == 2
    assert "seed 0 -> 1" in capsys.readouterr().err
    assert main(args + ["--rebuild"]) == 0
    assert json.loads((root / "mosaic.json").read_text())["params"]["seed"] == 1


def test_run_config_data_rebuild_reaches_the_builder(source, tmp_path):
    from ccdlib.config import DataConfig, RunConfig
    from ccdlib.inputs import load_data
    root = str(tmp_path / "set")
    train, _ = load_data(DataConfig(root=root, n_train=2, n_test=1, few_label_k=0), cache_dir=default_cache_dir())
    assert len(train) == 2
    with pytest.raises(DatasetError, match=r"mosaic_seed|seed 0 -> 1"):
        load_data(DataConfig(root=root, n_train=2, n_test=1, mosaic_seed=1, few_label_k=0), cache_dir=default_cache_dir())
    load_data(DataConfig(root=root, n_train=2, n_test=1, mosaic_seed=1, rebuild=True), cache_dir=default_cache_dir())
    assert json.loads((tmp_path / "set" / "mosaic.json").read_text())["params"]["seed"] == 1
    assert RunConfig().name == RunConfig(data=DataConfig(rebuild=True)).name   # not part of what the run is


def test_rebuild_never_deletes_files_the_builder_did_not_write(source, tmp_path):
    root = mosaic.build_mosaics(tmp_path / "set", seed=0, source=source, **TINY)
    (root / "my_notes.txt").write_text("keep me")
    (root / "JPEGImages" / "holiday.jpg").write_bytes(b"mine")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    with pytest.raises(DatasetError, match=r"2 file\(s\) the mosaic builder did not write \(JPEGImages/holiday.jpg, "
                                           r"my_notes.txt\)"):
        mosaic.build_mosaics(root, seed=1, source=source, rebuild=True, **TINY)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["set"]   # no temporary folder left


# ---------------------------------------------------------------------------------- 8. umask, not 0600/0700
@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_files_and_folders_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    atomic_write_text(tmp_path / "result.json", "{}")
    save_array(tmp_path / "a.npy", np.zeros(3))
    assert (tmp_path / "result.json").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "a.npy").stat().st_mode & 0o777 == file_mode
    d = make_temp_dir(tmp_path, ".x.tmp-")
    assert d.stat().st_mode & 0o777 == dir_mode


def test_mosaic_set_is_readable_by_others_under_umask_022(source, tmp_path, umask):
    umask(0o022)
    root = mosaic.build_mosaics(tmp_path / "set", seed=0, source=source, **TINY)
    modes = {p.relative_to(root).as_posix(): p.stat().st_mode & 0o777 for p in [root, *root.rglob("*")]}
    assert {m for k, m in modes.items() if (root / k).is_dir()} == {0o755}
    assert {m for k, m in modes.items() if (root / k).is_file()} == {0o644}


# ------------------------------------------------------------------------------------ 9. one cache location
def test_cache_location_overrides_the_default_everywhere(tmp_path, monkeypatch):
    monkeypatch.setenv("CCDLIB_CACHE", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    with cache_location(tmp_path / "run"):
        assert default_cache_dir() == tmp_path / "run"
        assert mosaic.default_mosaic_root(n_train=4, n_test=2, seed=0, image_size=96) == \
            tmp_path / "run" / "mosaics" / "s0-n4-2-96px"
        with cache_location(None):
            assert default_cache_dir() == tmp_path / "run"
    assert default_cache_dir() == tmp_path / "env"


def test_mosaic_default_root_follows_cache_dir(source, tmp_path, monkeypatch):
    monkeypatch.setenv("CCDLIB_CACHE", str(tmp_path / "env"))
    ds = mosaic.embedded_dataset("test", cache_dir=tmp_path / "run", seed=0, source=source, **TINY)
    assert Path(ds.image_paths[0]).is_relative_to(tmp_path / "run" / "mosaics" / "s0-n4-2-96px")
    assert not (tmp_path / "env").exists()


def test_conse_text_cache_is_read_from_the_run_cache(tmp_path):
    """The ImageNet-name embedding cache of the ConSE teacher lives in the cache the run names: plant a
    recognisable array there and the teacher must load exactly it."""
    from ccdlib.cache import ArrayCache
    from ccdlib.teachers import ConSETeacher, imagenet_names_key
    ArrayCache(tmp_path, "text").put(imagenet_names_key(), np.full((1000, 384), 0.125, np.float32))
    with cache_location(tmp_path):
        teacher = ConSETeacher("efficientnet-lite0", device="cpu")
    assert float(teacher._imagenet_emb.min()) == float(teacher._imagenet_emb.max()) == 0.125
    assert teacher._encoder is None                      # nothing to embed: MiniLM was not loaded


def test_unwritable_cache_is_a_clear_error(tmp_path, monkeypatch, capsys):
    bad = _unwritable(tmp_path)
    with pytest.raises(ConfigError, match=re.escape(str(bad))):
        check_writable_dir(bad)
    with pytest.raises(ConfigError, match="cache folder .* is not writable"):
        ArrayCache(bad, "embeddings").put({"k": 1}, np.zeros(2))
    # a run: refused before data or teacher are touched
    import ccdlib.context
    import ccdlib.inputs
    monkeypatch.setattr(ccdlib.inputs, "load_data", lambda *a, **k: pytest.fail("data loaded with an unwritable cache"))
    monkeypatch.setattr(ccdlib.context, "get_teacher", lambda *a, **k: pytest.fail("teacher built with an unwritable cache"))
    assert main(["run", "--set", f"cache_dir={bad}", "--set", f"out_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(bad) in err and "Traceback" not in err
    # data fetch: the packages are neither installed nor cached, and the cache cannot be written
    monkeypatch.setattr(mosaic.assets, "SYSTEM_TUXPAINT", tmp_path / "no-such-system-folder")
    monkeypatch.setattr("ccdlib.debian.shutil.which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr("ccdlib.debian.subprocess.run", lambda *a, **k: pytest.fail("apt-get run on an unwritable cache"))
    assert main(["data", "fetch", "--cache-dir", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "not writable" in err


# ---------------------------------------------------------------------------- 10. stale temp folders cleaned
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_folders_are_cleaned_live_ones_kept(tmp_path):
    dead = tmp_path / f".set.tmp-{_dead_pid()}-abc"
    live = tmp_path / f".set.tmp-{os.getpid()}-def"
    legacy_old, legacy_new = tmp_path / ".set.tmp-oldstyle", tmp_path / ".set.tmp-newstyle"
    for d in (dead, live, legacy_old, legacy_new):
        d.mkdir()
        (d / "x.jpg").write_bytes(b"x")
    os.utime(legacy_old, (time.time() - 3 * 24 * 3600,) * 2)
    other = tmp_path / "keep.tmp-1-x"
    other.mkdir()
    removed = clean_stale_temp_dirs(tmp_path, ".set.tmp-")
    assert sorted(removed) == sorted([dead, legacy_old])
    assert live.is_dir() and legacy_new.is_dir() and other.is_dir() and not dead.exists()


def test_killed_mosaic_build_leaves_a_temp_folder_the_next_build_removes(source, tmp_path):
    out = tmp_path / "set"
    code = (f"from ccdlib import mosaic; mosaic.build_mosaics({str(out)!r}, n_train=400, n_test=0, image_size=96, "
            f"source={str(source)!r}, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list(tmp_path.glob(".set.tmp-*/JPEGImages/*.jpg")):
            time.sleep(0.1)
        assert list(tmp_path.glob(".set.tmp-*")), "the build never started"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert list(tmp_path.glob(".set.tmp-*")) and not out.exists()   # what a killed build leaves
    mosaic.build_mosaics(out, seed=0, source=source, **TINY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


# ---------------------------------------------------------------------------------------------- 11. images
def _save(im: Image.Image, path: Path, **kw) -> Path:
    im.save(path, **kw)
    return path


def _grey(v):
    return np.full((3, 5, 3), v, dtype=np.uint8)


def _pixels(path: Path) -> np.ndarray:
    im = load_rgb(path)
    assert im.mode == "RGB" and image_size(path) == im.size
    return np.asarray(im).astype(int)


def test_every_pil_mode_is_read_as_the_rgb_a_person_sees(tmp_path):
    w, h = 5, 3
    cases = {}
    cases["1"] = (_save(Image.new("1", (w, h), 1), tmp_path / "one.png"), _grey(255))
    cases["L"] = (_save(Image.new("L", (w, h), 77), tmp_path / "l.png"), _grey(77))
    # transparency is composited on white: 200 at alpha 128 -> 200*128/255 + 255*127/255
    la = round(200 * 128 / 255 + 255 * 127 / 255)
    cases["LA"] = (_save(Image.new("LA", (w, h), (200, 128)), tmp_path / "la.png"), _grey(la))
    pal = Image.new("P", (w, h), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    cases["P"] = (_save(pal, tmp_path / "p.png"), np.broadcast_to([10, 20, 30], (h, w, 3)))
    cases["P+transparency"] = (_save(pal, tmp_path / "pt.png", transparency=1), _grey(255))
    pa = Image.new("PA", (w, h), (1, 0))
    pa.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    cases["PA"] = (_save(pa, tmp_path / "pa.tif"), _grey(255))
    cases["RGB"] = (_save(Image.new("RGB", (w, h), (1, 2, 3)), tmp_path / "rgb.png"),
                    np.broadcast_to([1, 2, 3], (h, w, 3)))
    cases["RGBA"] = (_save(Image.new("RGBA", (w, h), (10, 20, 30, 0)), tmp_path / "rgba.png"), _grey(255))
    cases["RGBA opaque"] = (_save(Image.new("RGBA", (w, h), (10, 20, 30, 255)), tmp_path / "rgba1.png"),
                            np.broadcast_to([10, 20, 30], (h, w, 3)))
    cases["CMYK"] = (_save(Image.new("CMYK", (w, h), (255, 0, 0, 0)), tmp_path / "cmyk.tif"),
                     np.broadcast_to([0, 255, 255], (h, w, 3)))          # pure cyan ink
    cases["YCbCr"] = (_save(Image.new("YCbCr", (w, h), (100, 128, 128)), tmp_path / "ycc.tif"), _grey(100))
    # 16-bit and 32-bit integer images are 0-65535: PIL's own convert("RGB") would make all of these white
    a16 = np.array([[0, 257, 32896, 65535, 1000]] * h, dtype=np.uint16)
    want16 = np.repeat(((a16.astype(int) * 255 + 32767) // 65535)[..., None], 3, axis=2)
    cases["I;16 PNG"] = (_save(Image.fromarray(a16), tmp_path / "sixteen.png"), want16)
    cases["I;16 TIFF"] = (_save(Image.fromarray(a16), tmp_path / "sixteen.tif"), want16)
    cases["I"] = (_save(Image.fromarray(a16.astype(np.int32)), tmp_path / "i32.tif"), want16)
    f = np.array([[0.0, 0.25, 0.5, 1.0, 0.1]] * h, dtype=np.float32)
    cases["F"] = (_save(Image.fromarray(f), tmp_path / "f.tif"), np.repeat(np.rint(f * 255)[..., None], 3, axis=2))
    for mode, (path, want) in cases.items():
        got = _pixels(path)
        assert got.shape == (h, w, 3), mode
        assert np.abs(got - np.asarray(want)).max() <= 1, (mode, got[0, :, 0], np.asarray(want)[0, :, 0])
    assert set(Image.open(cases["I;16 PNG"][0]).mode for _ in [0]) <= {"I;16", "I"}   # really a 16-bit file


def test_exif_orientation_is_applied_to_pixels_and_sizes(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)      # left half red, right half blue, as stored
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6                  # "rotate 90 degrees clockwise to view"
    path = _save(Image.fromarray(stored), tmp_path / "camera.jpg", exif=exif, quality=95)
    im = load_rgb(path)
    assert im.size == image_size(path) == (20, 40)     # portrait, as a viewer shows it
    px = np.asarray(im).astype(int)
    assert np.abs(px[2, 10] - [255, 0, 0]).max() < 40  # the stored left half is now on top
    assert np.abs(px[37, 10] - [0, 0, 255]).max() < 40


def test_extension_does_not_matter_content_does(tmp_path):
    png_named_jpg = _save(Image.new("RGB", (4, 4), (9, 8, 7)), tmp_path / "really_png.jpg", format="PNG")
    assert np.asarray(load_rgb(png_named_jpg))[0, 0].tolist() == [9, 8, 7]
    up = _save(Image.new("L", (4, 4), 50), tmp_path / "UPPER.PNG")
    assert np.asarray(load_rgb(up))[0, 0].tolist() == [50, 50, 50]


@pytest.mark.parametrize("kind", ["truncated", "garbage", "zero-size", "text-as-jpg", "folder", "missing",
                                  "float-out-of-range", "int-negative"])
def test_unreadable_images_are_refused_naming_the_file(tmp_path, kind):
    p = tmp_path / f"bad_{kind}.jpg"
    if kind == "truncated":
        full = tmp_path / "full.jpg"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full)
        p.write_bytes(full.read_bytes()[:600])
    elif kind == "garbage":
        p.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    elif kind == "zero-size":
        p.write_bytes(b"")
    elif kind == "text-as-jpg":
        p.write_text("not an image\n")
    elif kind == "folder":
        p.mkdir()
    elif kind == "float-out-of-range":
        p = _save(Image.fromarray(np.full((4, 4), 3.5, np.float32)), tmp_path / "bad_float.tif")
    elif kind == "int-negative":
        p = _save(Image.fromarray(np.full((4, 4), -5, np.int32)), tmp_path / "bad_int.tif")
    with pytest.raises(DatasetError, match=re.escape(str(p))):
        load_rgb(p)


def test_huge_image_is_refused_naming_the_file(tmp_path, monkeypatch):
    p = _save(Image.new("RGB", (100, 100)), tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)   # 10,000 pixels > 2 x the limit: a decompression bomb
    with pytest.raises(DatasetError, match=r"too large .*huge\.png"):
        load_rgb(p)
    with pytest.raises(DatasetError, match=r"huge\.png"):
        image_size(p)


def test_to_rgb_refuses_an_image_without_pixels():
    with pytest.raises(DatasetError, match=r"empty\.png has no pixels"):
        to_rgb(Image.new("RGB", (0, 3)), "empty.png")


# ---------------------------------------------------------------------- 12. class-list, split, annotation files
@pytest.mark.parametrize("name, content, match", [
    ("dup.txt", "cat\ndog\ncat\n", r"dup\.txt line 3: class id 'cat' is given twice \(first at line 1\)"),
    ("dup.yaml", "cat: a cat\ndog: a dog\ncat: kitty\n", r"dup\.yaml line 3: 'cat' is given twice \(first on line 1\)"),
    ("bool.yaml", "yes: a yes\nno: a no\n", r"bool\.yaml line 1: class id True is bool"),
    ("int.yaml", "cat: a cat\n1: one\n", r"int\.yaml line 2: class id 1 is int"),
    ("empty.txt", "", r"empty\.txt lists no class"),
    ("comments.txt", "# only a comment\n\n", r"comments\.txt lists no class"),
    ("empty.yaml", "", r"empty\.yaml is empty"),
    ("noid.yaml", "- {prompt_name: cat}\n", r"noid\.yaml: entry #1 has no 'id' key"),
    ("badpn.yaml", "cat: 3\n", r"badpn\.yaml line 1: prompt name 3 of class 'cat' is int"),
    ("scalar.yaml", "just a string\n", r"scalar\.yaml must hold a mapping"),
])
def test_malformed_class_lists_are_refused_naming_file_and_line(tmp_path, name, content, match):
    p = tmp_path / name
    p.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError, match=match):
        load_class_list(p)


def test_class_list_encodings(tmp_path):
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffcat\tchat\ndog\n".encode("utf-8"))
    assert load_class_list(bom).ids == ("cat", "dog")               # no '\ufeff' glued to the first id
    u16 = tmp_path / "u16.txt"
    u16.write_bytes("café,a café\ndog\n".encode("utf-16"))
    assert load_class_list(u16) == ClassList(("café", "dog"), ("a café", "dog"))
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("cat\ncafé\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"latin1\.txt line 2: byte 0xe9 is not UTF-8"):
        load_class_list(latin)


def test_two_classes_sharing_a_prompt_name_are_warned(tmp_path):
    p = tmp_path / "classes.txt"
    p.write_text("tv,TV monitor\ntvmonitor,tv  monitor\ncat\n")
    with pytest.warns(UserWarning, match=r"\['tv', 'tvmonitor'\] -> 'tv monitor'"):
        cl = load_class_list(p)
    assert cl.ids == ("tv", "tvmonitor", "cat")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ClassList(("a", "b"), ("an a", "a b"))                       # distinct: no warning


def _voc(tmp_path: Path, objects: list[tuple], *, split_lines: str = "img1\n", size=(100, 80)) -> Path:
    root = tmp_path / "VOC"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size).save(root / "JPEGImages" / "img1.jpg")
    objs = "".join(f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                   f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects)
    (root / "Annotations" / "img1.xml").write_text(
        f"<annotation><filename>img1.jpg</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
        f"<depth>3</depth></size>{objs}</annotation>")
    (root / "ImageSets" / "Main" / "train.txt").write_bytes(split_lines.encode("utf-8")
                                                            if isinstance(split_lines, str) else split_lines)
    (root / "classes.txt").write_text("cat\ndog\n")
    return root


def test_voc_boxes_checked_clipped_or_refused(tmp_path):
    ok = read_voc(_voc(tmp_path / "a", [("cat", (1, 1, 100, 80)), ("dog", (10, 20, 10, 20))]), "train",
                  classes=tmp_path / "a" / "VOC" / "classes.txt")
    np.testing.assert_array_equal(ok.boxes[0], [[0, 0, 0, 100, 80], [1, 9, 19, 10, 20]])   # a 1-pixel box is fine
    root = _voc(tmp_path / "b", [("cat", (5, 5, 120, 90))])
    with pytest.warns(UserWarning, match=r"img1\.xml, object #0 \(cat\): box .* extends outside the 100x80 image"):
        ds = read_voc(root, "train", classes=root / "classes.txt")
    np.testing.assert_array_equal(ds.boxes[0], [[0, 4, 4, 100, 80]])
    for k, (box, match) in enumerate([((50, 5, 40, 30), "empty or reversed"), ((5, 30, 40, 10), "empty or reversed"),
                                      ((150, 5, 160, 30), "outside the 100x80 image"),
                                      (("nan", 5, 40, 30), "not a finite number")]):
        root = _voc(tmp_path / f"c{k}", [("dog", (1, 1, 9, 9)), ("cat", box)])
        with pytest.raises(DatasetError, match=rf"img1\.xml, object #1 \(cat\): box .*{match}"):
            read_voc(root, "train", classes=root / "classes.txt")


def test_split_files_duplicates_and_encodings(tmp_path):
    root = _voc(tmp_path / "a", [("cat", (1, 1, 9, 9))], split_lines="img1\n\nimg1\n")
    with pytest.raises(DatasetError, match=r"train\.txt lists 1 duplicate image id\(s\): img1 \(lines 1, 3\)"):
        read_voc(root, "train", classes=root / "classes.txt")
    root = _voc(tmp_path / "b", [("cat", (1, 1, 9, 9))], split_lines="\ufeffimg1\n")   # BOM: still img1
    assert read_voc(root, "train", classes=root / "classes.txt").image_ids == ["img1"]
    root = _voc(tmp_path / "c", [("cat", (1, 1, 9, 9))], split_lines="img1\nimg\xe9\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"train\.txt line 2: byte 0xe9 is not UTF-8"):
        read_voc(root, "train", classes=root / "classes.txt")


def _coco(tmp_path: Path, bbox) -> Path:
    (tmp_path / "annotations").mkdir(parents=True)
    (tmp_path / "val").mkdir()
    Image.new("RGB", (50, 40)).save(tmp_path / "val" / "a.jpg")
    (tmp_path / "annotations" / "instances_val.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "width": 50, "height": 40}],
        "categories": [{"id": 3, "name": "cat"}],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 3, "bbox": bbox, "iscrowd": 0, "area": 1}]}))
    return tmp_path


def test_coco_boxes_checked_clipped_or_refused(tmp_path):
    with pytest.raises(DatasetError, match=r"instances_val\.json, annotation 7 \(image 1\): box .* empty or reversed"):
        read_coco(_coco(tmp_path / "neg", [10, 10, -5, 5]), "val")
    with pytest.warns(UserWarning, match=r"annotation 7 .* extends outside the 50x40 image"):
        ds = read_coco(_coco(tmp_path / "out", [40, 30, 20, 20]), "val")
    np.testing.assert_array_equal(ds.boxes[0], [[0, 40, 30, 50, 40]])


def test_nuswide_concept_listed_twice(tmp_path):
    (tmp_path / "Concepts81.txt").write_text("sky\nsun\nsky\n")
    (tmp_path / "ImageList").mkdir()
    (tmp_path / "ImageList" / "TrainImagelist.txt").write_text("a\\1.jpg\n")
    with pytest.raises(DatasetError, match=r"Concepts81\.txt line 3: 'sky' is listed twice \(first on line 1\)"):
        read_nuswide(tmp_path, "train", check_files=False)


# ----------------------------------------------------------------------------- 14. predict and data mosaic CLI
@pytest.fixture
def no_scoring(monkeypatch):
    import ccdlib.predict as predict
    monkeypatch.setattr(predict, "predict_images", lambda *a, **k: pytest.fail("scored before validating"))


@pytest.mark.parametrize("extra, match", [
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--batch-size", "-3"], "--batch-size must be >= 1"),
    (["--threshold", "1.5"], r"--threshold must be in \[0, 1\]"),
    (["--out", "{tmp}"], "is a folder"),
    (["--out", "{tmp}/a-file/preds.csv"], "not writable"),
])
def test_predict_cli_validates_before_scoring(tmp_path, capsys, no_scoring, extra, match):
    (tmp_path / "a-file").write_text("x")
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    assert main(["predict", "--checkpoint", str(tmp_path / "s.pt"), str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and re.search(match, err), err


def test_predict_images_refuses_batch_size_0(tmp_path):
    from ccdlib.predict import predict_images
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        predict_images(tmp_path / "missing.pt", [tmp_path], batch_size=0)


def test_data_mosaic_errors_exit_2(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    argv = ["--out", str(tmp_path / "mine"), "--source", str(tmp_path), "--no-progress"]
    assert mosaic.cli_main(argv) == 2
    assert main(["data", "mosaic", *argv]) == 2
    assert "not a mosaic data set" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    proc = subprocess.run([sys.executable, "-m", "ccdlib", "data", "mosaic", *argv], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 2 and "error: " in proc.stderr and "Traceback" not in proc.stderr


# -------------------------------------------------------------------------------------------- 15. the lock file
def _lock() -> dict[str, tuple[str, str]]:
    out = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+) --hash=sha256:([0-9a-f]{64})", line.strip())
        assert m, f"requirements.lock: not 'name==version --hash=sha256:<64 hex>': {line!r}"
        name = re.sub(r"[-_.]+", "-", m.group(1)).lower()
        assert name not in out, f"requirements.lock pins {name} twice"
        out[name] = (m.group(2), m.group(3))
    return out


def test_lock_agrees_with_pyproject():
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version
    lock = _lock()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    assert len(reqs) > 20
    for r in reqs:
        name = re.sub(r"[-_.]+", "-", r.name).lower()
        assert name in lock, f"pyproject.toml requires {r} but requirements.lock does not pin it"
        assert r.specifier.contains(Version(lock[name][0]), prereleases=True), \
            f"requirements.lock pins {name}=={lock[name][0]}, outside pyproject.toml's {r}"
    assert lock["torch"][0] == "2.14.1" and lock["torchvision"][0] == "0.29.1"
    assert "pip" in lock   # `make setup` installs pip itself from the lock too


def test_lock_is_closed_and_is_what_is_installed():
    """Every locked package's own requirements are locked at a version that satisfies them (what `pip check`
    checks after `make setup`), and the direct dependencies installed here are the locked versions."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.version import Version
    lock = _lock()
    checked = 0
    for name, (version, _) in lock.items():
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        if dist.version != version:
            continue      # another version installed here by hand: its metadata says nothing about the lock
        for spec in dist.requires or []:
            r = Requirement(spec)
            if r.marker is not None and not r.marker.evaluate({"extra": ""}):
                continue
            dep = re.sub(r"[-_.]+", "-", r.name).lower()
            assert dep in lock, f"{name}=={version} requires {r}, which requirements.lock lacks"
            assert r.specifier.contains(Version(lock[dep][0]), prereleases=True), \
                f"{name}=={version} requires {r}; the lock has {dep}=={lock[dep][0]}"
            checked += 1
    assert checked > 50
    for name in ("torch", "torchvision", "numpy", "open-clip-torch", "pillow", "scikit-learn"):
        assert distribution(name).version == lock[name][0], f"installed {name} differs from requirements.lock"


def test_setup_installs_from_the_lock_and_reports_record_its_hash(tmp_path):
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes --no-deps -r requirements.lock" in makefile
    assert "pip install --no-deps --no-build-isolation -e ." in makefile
    from ccdlib.report import Reporter, lock_sha256, provenance
    from ccdlib.report_index import build_index
    want = hashlib.sha256((ROOT / "requirements.lock").read_bytes()).hexdigest()
    assert lock_sha256() == want and provenance()["lock_sha256"] == want
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = plt.figure()
    Reporter(tmp_path, notebook="00_test", made_by=dict(protocol="shared", seeds="0", schedule="24 steps", rule="last", teacher="conse", test_images="8")).save_figure(fig, "f")
    plt.close(fig)
    assert json.loads((tmp_path / "provenance.json").read_text())["figure/f"]["lock_sha256"] == want
    build_index(tmp_path, render_html=False)
    assert want in (tmp_path / "README.md").read_text()


def test_public_names():
    assert ccdlib.to_rgb is to_rgb and cache.cache_location is cache_location
