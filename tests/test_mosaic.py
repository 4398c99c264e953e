"""The embedded stamp-mosaic data set: reproducible builds, exact labels/boxes/masks, VOC layout.

Uses the real tuxpaint photos (found in /usr/share/tuxpaint or the ccdlib cache, or fetched by
``find_tuxpaint``); skipped with the reason when they cannot be had. Builds are tiny (128 px).
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ccdlib import mosaic
from ccdlib.errors import DatasetError, DataSetupError

TINY = dict(n_train=6, n_test=4, image_size=128, progress=False)

# A set of 6 or 10 images cannot show all 16 classes: read_voc warns about that, as it should.
pytestmark = pytest.mark.filterwarnings("ignore:.*have no positive image:UserWarning")



@pytest.fixture(scope="module")
def built(source, tmp_path_factory) -> Path:
    return mosaic.build_mosaics(tmp_path_factory.mktemp("m") / "s0", seed=0, source=source, **TINY)


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _info(root: Path) -> dict:
    return json.loads((root / "mosaic.json").read_text())


# ------------------------------------------------------------------------------------ building
def test_same_seed_gives_identical_bytes(source, built, tmp_path):
    again = mosaic.build_mosaics(tmp_path / "again", seed=0, source=source, **TINY)
    a, b = _hashes(built), _hashes(again)
    assert len(a) == 4 + 3 * (6 + 4)   # classes.yaml, mosaic.json, 2 split files + 3 files per image
    assert a == b


def test_other_seed_differs(source, built, tmp_path):
    other = mosaic.build_mosaics(tmp_path / "s1", seed=1, source=source, **TINY)
    a, b = _hashes(built), _hashes(other)
    jpgs = [k for k in a if k.startswith("JPEGImages/")]
    assert all(a[k] != b[k] for k in jpgs)


def test_existing_build_is_reused_and_other_params_rebuild(source, built, tmp_path, capsys):
    root = mosaic.build_mosaics(tmp_path / "r", seed=0, source=source, **TINY)
    stamp = (root / "mosaic.json").stat().st_mtime_ns
    mosaic.build_mosaics(root, seed=0, source=source, **{**TINY, "progress": True})
    assert "reusing" in capsys.readouterr().err
    assert (root / "mosaic.json").stat().st_mtime_ns == stamp
    with pytest.raises(DatasetError, match="n_test 4 -> 2"):   # other parameters: refused unless rebuild
        mosaic.build_mosaics(root, seed=0, source=source, **{**TINY, "n_test": 2})
    mosaic.build_mosaics(root, seed=0, source=source, rebuild=True, **{**TINY, "n_test": 2})
    assert (root / "ImageSets/Main/test.txt").read_text().split() == ["test_000000", "test_000001"]
    assert not list(tmp_path.glob(".*"))   # no temporary folder left behind


def test_refuses_to_overwrite_a_foreign_folder(source, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not a mosaic data set"):
        mosaic.build_mosaics(tmp_path / "mine", source=source, **TINY)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


# ------------------------------------------------------------------------------------ contents
def test_labels_boxes_and_masks_agree(built):
    classes = mosaic.mosaic_class_list()
    info = _info(built)
    for split in ("train", "test"):
        ds = mosaic.read_mosaic(built, split)
        assert ds.name == f"mosaic/{split}"
        assert ds.classes == classes
        assert len(ds) == TINY[f"n_{split}"]
        assert Path(ds.meta["masks_dir"]).is_dir()
        for i, image_id in enumerate(ds.image_ids):
            objects = info["images"][image_id]["objects"]
            boxes = ds.boxes[i]
            assert 2 <= ds.labels[i].sum() <= 4
            assert len(objects) == len(boxes) == ds.labels[i].sum()   # one object per class
            assert sorted(boxes[:, 0].astype(int)) == sorted(np.flatnonzero(ds.labels[i]))
            with Image.open(ds.image_paths[i]) as im:
                assert im.size == (128, 128) and im.mode == "RGB"
            seg = np.asarray(Image.open(Path(ds.meta["masks_dir"]) / f"{image_id}.png"))
            assert seg.shape == (128, 128) and seg.max() == len(objects)
            for k, (row, obj) in enumerate(zip(boxes, objects), start=1):
                x0, y0, x1, y1 = row[1:].astype(int)
                assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
                assert [x0, y0, x1, y1] == obj["box"]
                assert classes.ids[int(row[0])] == obj["class"]
                ys, xs = np.nonzero(seg == k)
                assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == obj["box"]


def test_train_and_test_stamps_are_disjoint(built):
    info = _info(built)
    used = {s: set() for s in ("train", "test")}
    for rec in info["images"].values():
        used[rec["split"]].update(o["stamp"] for o in rec["objects"])
    assert used["train"] and used["test"] and not used["train"] & used["test"]
    for cid in info["classes"]:
        train, test = set(info["pools"]["train"][cid]), set(info["pools"]["test"][cid])
        assert train and test and not train & test
    for rec in info["images"].values():
        for o in rec["objects"]:
            assert o["stamp"] in info["pools"][rec["split"]][o["class"]]


def test_annotations_have_the_voc_structure(built):
    ids = (built / "ImageSets/Main/train.txt").read_text().split()
    assert ids == [f"train_{i:06d}" for i in range(6)]
    known = set(mosaic.mosaic_class_list().ids)
    for image_id in ids:
        root = ET.parse(built / "Annotations" / f"{image_id}.xml").getroot()
        assert root.tag == "annotation"
        assert root.findtext("filename") == f"{image_id}.jpg"
        assert (built / "JPEGImages" / root.findtext("filename")).is_file()
        size = root.find("size")
        assert [int(size.findtext(t)) for t in ("width", "height", "depth")] == [128, 128, 3]
        objs = root.findall("object")
        assert 2 <= len(objs) <= 4
        for o in objs:
            assert o.findtext("name") in known
            assert o.findtext("difficult") == "0" and o.findtext("truncated") == "0"
            bb = [int(o.find("bndbox").findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")]
            assert 1 <= bb[0] <= bb[2] <= 128 and 1 <= bb[1] <= bb[3] <= 128
    # the dict torchvision.datasets.VOCDetection returns as its target
    try:
        from torchvision.datasets import VOCDetection
    except ImportError:
        return
    parser = object.__new__(VOCDetection)
    target = parser.parse_voc_xml(ET.parse(built / "Annotations" / f"{ids[0]}.xml").getroot())
    assert target["annotation"]["size"]["width"] == "128"
    assert {"name", "bndbox", "difficult"} <= set(target["annotation"]["object"][0])


def test_class_set_has_enough_classes_and_stamps(source):
    spec = mosaic.load_mosaic_spec()
    assert len(spec.classes) >= 12
    stamps = mosaic.list_stamps(source, spec)
    for cid in spec.classes.ids:
        assert len(stamps[cid]) >= 2, cid
        assert all((source / "stamps" / s).is_file() for s in stamps[cid])
        assert not any("_mirror" in s or "/cartoon/" in s or "/toys/" in s for s in stamps[cid])
    for name, _ in spec.backgrounds:
        assert (source / "templates" / name).is_file()
    pools = mosaic.split_pools(stamps, spec.test)
    for cid in spec.classes.ids:
        assert not set(pools["train"][cid]) & set(pools["test"][cid])
        assert sorted(pools["train"][cid] + pools["test"][cid]) == stamps[cid]


def test_shared_protocol_draws_test_stamps_from_the_train_pool(source, built, tmp_path):
    shared = mosaic.build_mosaics(tmp_path / "sh", seed=0, stamps="shared", source=source,
                                  **{**TINY, "n_train": 40, "n_test": 12})
    info, base = _info(shared), _info(built)
    assert info["params"]["stamps"] == "shared" and base["params"]["stamps"] == "disjoint"
    for cid in info["classes"]:   # the pools: both splits draw from every stamp of the class
        union = sorted(set(base["pools"]["train"][cid]) | set(base["pools"]["test"][cid]))
        assert info["pools"]["train"][cid] == info["pools"]["test"][cid] == union
    used = {s: set() for s in ("train", "test")}
    for rec in info["images"].values():
        used[rec["split"]].update(o["stamp"] for o in rec["objects"])
    test_only = [s for s in used["test"] if s in set(sum(base["pools"]["test"].values(), []))]
    train_pool = set(sum(info["pools"]["train"].values(), []))
    assert used["test"] <= train_pool          # every test stamp occurs in the train pool
    assert test_only                           # and the test split does use the former test-only photos
    assert used["train"] & used["test"]        # the same photos appear in both splits ...
    jpg = lambda root, i: (root / "JPEGImages" / f"{i}.jpg").read_bytes()
    assert all(jpg(shared, f"test_{k:06d}") != jpg(shared, f"train_{k:06d}") for k in range(12))   # ... in new scenes


def test_protocols_never_share_a_folder_or_a_build(source, built, tmp_path):
    assert mosaic.default_mosaic_root(stamps="shared", cache_dir=tmp_path) != \
        mosaic.default_mosaic_root(cache_dir=tmp_path)
    assert mosaic.default_mosaic_root(cache_dir=tmp_path).name == "s0-n400-200-448px"   # default name unchanged
    copy = tmp_path / "m"
    mosaic.build_mosaics(copy, seed=0, source=source, **TINY)
    assert _hashes(copy) == _hashes(built)      # the default protocol is "disjoint": same bytes as before
    with pytest.raises(DatasetError, match="stamps disjoint -> shared"):       # other protocol: refused by name
        mosaic.build_mosaics(copy, seed=0, stamps="shared", source=source, **TINY)
    mosaic.build_mosaics(copy, seed=0, stamps="shared", source=source, rebuild=True, **TINY)   # asked: rebuilt
    assert _info(copy)["params"]["stamps"] == "shared"
    with pytest.raises(DatasetError, match="stamp protocol"):
        mosaic.protocol_pools({"train": {}, "test": {}}, "mixed")
    pools = mosaic.split_pools({"a": ["a1", "a2", "a3"]})
    assert mosaic.protocol_pools(pools, "disjoint") == pools
    assert mosaic.protocol_pools(pools, "shared") == {"train": {"a": ["a1", "a2", "a3"]},
                                                      "test": {"a": ["a1", "a2", "a3"]}}


def test_load_data_passes_the_protocol(source, tmp_path, monkeypatch):
    from ccdlib.config import DataConfig
    from ccdlib.inputs import load_data
    seen = {}
    real = mosaic.build_mosaics
    monkeypatch.setattr(mosaic.embedded, "build_mosaics", lambda root, **kw: seen.update(kw) or real(
        root, **{**kw, "image_size": 64, "source": source, "progress": False}))
    train, test = load_data(DataConfig(n_train=3, n_test=2, stamps="shared", root=str(tmp_path / "d"), few_label_k=0))
    assert seen["stamps"] == "shared" and len(train) == 3 and len(test) == 2
    assert _info(tmp_path / "d")["params"]["stamps"] == "shared"


def test_split_pools_rule():
    pools = mosaic.split_pools({"a": ["a1", "a2"], "b": ["b1", "b2", "b3", "b4", "b5", "b6", "b7"]})
    assert pools["train"]["a"] == ["a1"] and pools["test"]["a"] == ["a2"]
    assert pools["test"]["b"] == ["b3", "b6"]
    with pytest.raises(DatasetError, match="at least 2"):
        mosaic.split_pools({"c": ["c1"]})


def test_embedded_dataset_and_cli(source, tmp_path):
    ds = mosaic.embedded_dataset("test", root=tmp_path / "e", n_train=2, n_test=3, seed=5,
                                 image_size=64, source=source, progress=False)
    assert len(ds) == 3 and ds.labels.shape[1] == len(mosaic.mosaic_class_list())
    from ccdlib.readers import load_dataset
    assert load_dataset("mosaic", tmp_path / "e", "test").image_ids == ds.image_ids
    with pytest.raises(DatasetError, match="splits"):
        mosaic.embedded_dataset("val", root=tmp_path / "e")
    out = tmp_path / "cli"
    rc = mosaic.cli_main(["--out", str(out), "--train", "2", "--test", "3", "--seed", "5",
                          "--image-size", "64", "--source", str(source), "--no-progress"])
    assert rc == 0
    assert _hashes(out) == _hashes(tmp_path / "e")


# ------------------------------------------------------------------------------ fetching sources
@pytest.fixture
def no_system_copy(monkeypatch, tmp_path):
    monkeypatch.setattr(mosaic.assets, "SYSTEM_TUXPAINT", tmp_path / "absent")
    return tmp_path / "cache"


def test_missing_source_without_apt_names_what_to_install(no_system_copy, monkeypatch):
    monkeypatch.setattr("ccdlib.debian.shutil.which", lambda name: None)
    with pytest.raises(DataSetupError) as e:
        mosaic.find_tuxpaint(no_system_copy)
    msg = str(e.value)
    assert "apt-get" in msg and "dpkg-deb" in msg
    assert "tuxpaint-stamps-default" in msg and "tuxpaint-data" in msg


def test_missing_package_lists_say_apt_get_update(no_system_copy, monkeypatch):
    monkeypatch.setattr("ccdlib.debian.shutil.which", lambda name: f"/usr/bin/{name}")
    calls = []

    def fake_run(cmd, **kw):
        calls.append((cmd, kw.get("cwd")))
        return subprocess.CompletedProcess(
            cmd, 100, "", "E: Unable to locate package tuxpaint-stamps-default\n")

    monkeypatch.setattr("ccdlib.debian.subprocess.run", fake_run)
    with pytest.raises(DataSetupError, match="apt-get update"):
        mosaic.find_tuxpaint(no_system_copy)
    assert calls == [(["apt-get", "download", *mosaic.TUXPAINT_PACKAGES], no_system_copy / "debs")]
    assert not (no_system_copy / "tuxpaint").exists()


def test_cached_copy_is_found_without_fetching(no_system_copy, monkeypatch):
    found = no_system_copy / "tuxpaint" / "usr" / "share" / "tuxpaint"
    (found / "stamps").mkdir(parents=True)
    (found / "templates").mkdir()
    monkeypatch.setattr("ccdlib.debian.subprocess.run", lambda *a, **k: pytest.fail("must not fetch"))
    assert mosaic.find_tuxpaint(no_system_copy) == found
