"""Tests of ccdlib.readers on tiny on-disk fixtures (VOC, COCO, NUS-WIDE, a user VOC-layout set).

Labels and boxes are cross-checked against independent parsers of the same files:
torchvision's ``VOCDetection`` for VOC and ``pycocotools.coco.COCO`` for COCO.
"""
from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ccdlib.datasets import ClassList
from ccdlib.errors import DatasetError
from ccdlib.readers import (
    NUSWIDE_CLASSES,
    READERS,
    VOC_CLASSES,
    load_dataset,
    read_coco,
    read_nuswide,
    read_voc,
    register_reader,
)

# Tiny fixtures leave most of the 20 VOC / 81 NUS-WIDE classes without positives; that warning has
# its own tests below.
pytestmark = pytest.mark.filterwarnings("ignore:data set .* class\\(es\\) have no positive image")


def _image(path: Path, size: tuple[int, int] = (40, 30), color: tuple[int, int, int] = (200, 10, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


# ----------------------------------------------------------------------------------------------- VOC
# (name, difficult, (xmin, ymin, xmax, ymax)) per object, VOC 1-based pixel coordinates.
VOC_OBJECTS: dict[str, list[tuple[str, int, tuple[int, int, int, int]]]] = {
    "000001": [("dog", 0, (1, 1, 20, 15)), ("person", 0, (5, 3, 40, 30)), ("person", 0, (10, 10, 12, 14))],
    "000002": [("cat", 1, (2, 2, 10, 10)), ("car", 0, (3, 4, 30, 20))],            # cat: difficult only
    "000003": [("bird", 1, (1, 1, 5, 5)), ("bird", 0, (6, 6, 20, 20))],            # bird: both kinds
    "000004": [("diningtable", 0, (1, 2, 39, 29)), ("chair", 1, (4, 4, 8, 8)),
               ("tvmonitor", 0, (20, 1, 30, 9))],
    "000005": [("pottedplant", 1, (3, 3, 9, 9))],                                  # only a difficult object
}
VOC_SPLITS = {"train": ["000001", "000002", "000003"], "val": ["000004", "000005"],
              "trainval": ["000001", "000002", "000003", "000004", "000005"]}


def _voc_xml(image_id: str, objects, size=(40, 30), filename: str | None = None, folder="VOC2007") -> str:
    objs = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, d, b in objects)
    return (f"<annotation><folder>{folder}</folder><filename>{filename or image_id + '.jpg'}</filename>"
            f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
            f"<segmented>0</segmented>{objs}</annotation>")


def make_voc(base: Path, year: str = "2007", objects=None, splits=None) -> Path:
    """Write ``base/VOCdevkit/VOC<year>`` and return that year folder."""
    objects = VOC_OBJECTS if objects is None else objects
    splits = VOC_SPLITS if splits is None else splits
    voc = base / "VOCdevkit" / f"VOC{year}"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    for k, (image_id, objs) in enumerate(objects.items()):
        _image(voc / "JPEGImages" / f"{image_id}.jpg", color=(40 * k, 100, 200 - 30 * k))
        (voc / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(image_id, objs, folder=f"VOC{year}"))
    for split, ids in splits.items():
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(i + "\n" for i in ids))
    return voc


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    return make_voc(tmp_path)


def _expected_from_torchvision(base: Path, split: str, policy: str):
    """Multi-hot, difficult-only matrix and boxes computed from torchvision's own parse of the files."""
    from torchvision.datasets import VOCDetection

    tv = VOCDetection(str(base), year="2007", image_set=split, download=False)
    col = {c: i for i, c in enumerate(VOC_CLASSES.ids)}
    n = len(tv)
    labels = np.zeros((n, 20), np.uint8)
    any_obj = np.zeros((n, 20), bool)
    easy = np.zeros((n, 20), bool)
    boxes, ids = [], []
    for i in range(n):
        _, target = tv[i]
        ann = target["annotation"]
        ids.append(Path(ann["filename"]).stem)
        rows = []
        for obj in ann["object"]:
            c = col[obj["name"]]
            any_obj[i, c] = True
            if int(obj["difficult"]) == 0:
                easy[i, c] = True
            bb = obj["bndbox"]
            rows.append([c, float(bb["xmin"]) - 1, float(bb["ymin"]) - 1, float(bb["xmax"]), float(bb["ymax"])])
        boxes.append(np.asarray(rows, np.float32).reshape(-1, 5))
    labels[:] = any_obj if policy == "positive" else easy
    return ids, labels, (any_obj & ~easy).astype(np.uint8), boxes, tv.images


@pytest.mark.parametrize("policy", ["negative", "positive", "ignore"])
@pytest.mark.parametrize("split", ["train", "val", "trainval"])
def test_voc_matches_torchvision(voc: Path, tmp_path: Path, split: str, policy: str) -> None:
    ds = read_voc(voc, split, difficult=policy)
    ids, labels, difficult, boxes, images = _expected_from_torchvision(tmp_path, split, policy)
    assert ds.image_ids == ids == VOC_SPLITS[split]
    assert [str(p) for p in ds.image_paths] == [str(Path(p)) for p in images]
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.labels.dtype == np.uint8 and ds.difficult.dtype == np.uint8
    np.testing.assert_array_equal(ds.difficult, difficult)
    assert len(ds.boxes) == len(boxes)
    for got, exp in zip(ds.boxes, boxes):
        assert got.shape == exp.shape and got.shape[1] == 5
        np.testing.assert_allclose(got, exp)
    assert ds.name == f"voc2007/{split}"
    assert ds.classes == VOC_CLASSES
    assert ds.meta["difficult_policy"] == policy


def test_voc_difficult_policy_details(voc: Path) -> None:
    neg = read_voc(voc, "trainval")
    pos = read_voc(voc, "trainval", difficult="positive")
    ign = read_voc(voc, "trainval", difficult="ignore")
    c = VOC_CLASSES.index
    # 000002: cat only difficult -> negative by default, positive under "positive", flagged difficult.
    assert neg.labels[1, c("cat")] == 0 and pos.labels[1, c("cat")] == 1 and neg.difficult[1, c("cat")] == 1
    # 000003: bird has a difficult and a non-difficult object -> positive, not flagged.
    assert neg.labels[2, c("bird")] == 1 and neg.difficult[2, c("bird")] == 0
    # 000005: only a difficult pottedplant -> an all-zero row under the default policy.
    assert neg.labels[4].sum() == 0 and pos.labels[4, c("pottedplant")] == 1
    np.testing.assert_array_equal(neg.labels, ign.labels)
    np.testing.assert_array_equal(neg.difficult, pos.difficult)
    # Multi-object image 000001: dog + two persons -> 2 positive classes, 3 box rows.
    assert set(np.flatnonzero(neg.labels[0])) == {c("dog"), c("person")}
    assert neg.boxes[0].shape == (3, 5)
    # 1-based inclusive -> 0-based continuous: a box over the whole 40x30 image is [0, 0, 40, 30].
    np.testing.assert_allclose(neg.boxes[0][1], [c("person"), 4, 2, 40, 30])
    # Boxes list every object, difficult ones included.
    assert neg.boxes[4].shape == (1, 5) and neg.boxes[4][0, 0] == c("pottedplant")


def test_voc_prompt_names() -> None:
    assert len(VOC_CLASSES) == 20
    names = dict(zip(VOC_CLASSES.ids, VOC_CLASSES.prompt_names))
    assert names["diningtable"] == "dining table"
    assert names["pottedplant"] == "potted plant"
    assert names["tvmonitor"] == "tv monitor"
    assert names["motorbike"] == "motorbike" and names["aeroplane"] == "aeroplane"


def test_voc_root_forms(voc: Path, tmp_path: Path) -> None:
    ref = read_voc(voc, "train")
    for root in (voc, voc.parent, tmp_path, str(voc.parent)):
        ds = read_voc(root, "train")
        assert ds.image_ids == ref.image_ids
        np.testing.assert_array_equal(ds.labels, ref.labels)
    assert read_voc(voc.parent, "train", year=2007).image_ids == ref.image_ids
    assert read_voc(voc, "train", with_boxes=False).boxes is None


def test_voc_several_years_needs_year(tmp_path: Path) -> None:
    make_voc(tmp_path, "2007")
    (tmp_path / "VOCdevkit" / "VOC2012").mkdir()
    with pytest.raises(DatasetError, match="VOC2007.*VOC2012.*year="):
        read_voc(tmp_path / "VOCdevkit", "train")
    assert read_voc(tmp_path / "VOCdevkit", "train", year="2007").name == "voc2007/train"
    with pytest.raises(DatasetError, match="year=2012"):
        read_voc(tmp_path / "VOCdevkit" / "VOC2007", "train", year="2012")


def test_load_dataset_dispatch(voc: Path) -> None:
    a = load_dataset("voc2007", voc.parent, "val")
    b = load_dataset("VOC", voc, "val", difficult="positive")
    assert a.image_ids == b.image_ids == VOC_SPLITS["val"]
    assert b.meta["difficult_policy"] == "positive"
    assert load_dataset("voc2007", voc.parent).name == "voc2007/trainval"   # default split
    with pytest.raises(DatasetError, match="voc2012|VOC2012"):
        load_dataset("voc2012", voc.parent, "val")
    with pytest.raises(DatasetError, match="imagenet"):
        load_dataset("imagenet", voc, "val")
    assert {"voc", "voc2007", "voc2012", "coco", "coco2014", "nuswide"} <= set(READERS)


def test_register_reader(voc: Path) -> None:
    def fake(root, split="all", **kw):
        return read_voc(root, "train", **kw)

    register_reader("fake-kind", fake)
    try:
        assert load_dataset("fake-kind", voc).image_ids == VOC_SPLITS["train"]
        with pytest.raises(DatasetError, match="fake-kind"):
            register_reader("fake-kind", lambda root, split: None)
    finally:
        READERS.pop("fake-kind", None)


def test_voc_warns_on_classes_without_positives(voc: Path) -> None:
    with pytest.warns(UserWarning, match="no positive image") as rec:
        read_voc(voc, "val")
    msg = str(rec[0].message)
    assert "aeroplane" in msg and "pottedplant" in msg and "diningtable" not in msg.split("[", 1)[1]


# ---------------------------------------------------------------------------------- VOC bad inputs
def test_voc_root_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "VOC2007"
    with pytest.raises(DatasetError, match="not found") as e:
        read_voc(missing)
    assert str(missing) in str(e.value)


def test_voc_root_without_voc_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as e:
        read_voc(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(e.value)


def test_voc_split_file_missing(voc: Path) -> None:
    with pytest.raises(DatasetError) as e:
        read_voc(voc, "test")
    assert str(voc / "ImageSets" / "Main" / "test.txt") in str(e.value)
    assert "trainval" in str(e.value)  # lists the available splits


def test_voc_annotation_missing(voc: Path) -> None:
    (voc / "Annotations" / "000002.xml").unlink()
    with pytest.raises(DatasetError) as e:
        read_voc(voc, "train")
    assert str(voc / "Annotations" / "000002.xml") in str(e.value) and "'000002'" in str(e.value)


def test_voc_unknown_class(voc: Path) -> None:
    xml = voc / "Annotations" / "000003.xml"
    xml.write_text(_voc_xml("000003", [("bird", 0, (1, 1, 5, 5)), ("unicorn", 0, (2, 2, 6, 6))]))
    with pytest.raises(DatasetError) as e:
        read_voc(voc, "train")
    assert "'unicorn'" in str(e.value) and str(xml) in str(e.value)


def test_voc_duplicate_ids(voc: Path) -> None:
    split = voc / "ImageSets" / "Main" / "train.txt"
    split.write_text("000001\n000002\n000001\n")
    with pytest.raises(DatasetError, match="duplicate") as e:
        read_voc(voc, "train")
    assert "000001" in str(e.value) and str(split) in str(e.value)


def test_voc_empty_split(voc: Path) -> None:
    split = voc / "ImageSets" / "Main" / "train.txt"
    split.write_text("\n\n")
    with pytest.raises(DatasetError, match="no images") as e:
        read_voc(voc, "train")
    assert str(split) in str(e.value)


def test_voc_image_missing(voc: Path) -> None:
    img = voc / "JPEGImages" / "000003.jpg"
    img.unlink()
    with pytest.raises(DatasetError, match="absent") as e:
        read_voc(voc, "train")
    assert str(img) in str(e.value)
    ds = read_voc(voc, "train", check_files=False)   # no check: listed anyway, at the expected path
    assert ds.image_paths[2] == img


def test_voc_bad_difficult_policy(voc: Path) -> None:
    with pytest.raises(DatasetError, match="'sometimes'"):
        read_voc(voc, "train", difficult="sometimes")


def test_voc_malformed_xml(voc: Path) -> None:
    xml = voc / "Annotations" / "000001.xml"
    xml.write_text("<annotation><object><name>dog</name>")
    with pytest.raises(DatasetError) as e:
        read_voc(voc, "train")
    assert str(xml) in str(e.value)


# ---------------------------------------------------------------------------- user VOC-layout set
def _make_widgets(tmp_path: Path) -> Path:
    root = tmp_path / "widgets"
    objects = {
        "w1": [("widget", 0, (1, 1, 10, 10))],
        "w2": [("gizmo", 0, (2, 2, 8, 8)), ("widget", 1, (3, 3, 9, 9))],
        "w3": [("gizmo", 0, (1, 1, 4, 4)), ("widget", 0, (5, 5, 9, 9))],
    }
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for image_id, objs in objects.items():
        suffix = ".png" if image_id == "w3" else ".jpg"     # a non-JPEG image, named in <filename>
        _image(root / "JPEGImages" / f"{image_id}{suffix}")
        (root / "Annotations" / f"{image_id}.xml").write_text(
            _voc_xml(image_id, objs, filename=image_id + suffix, folder="widgets"))
    (root / "ImageSets" / "Main" / "train.txt").write_text("w1\nw2\nw3\n")
    (tmp_path / "classes.txt").write_text("# id, prompt name\nwidget\tshiny widget\ngizmo, small gizmo\n")
    return root


def test_user_voc_layout_with_class_file(tmp_path: Path) -> None:
    root = _make_widgets(tmp_path)
    ds = read_voc(root, "train", classes=tmp_path / "classes.txt")
    assert ds.name == "widgets/train"
    assert ds.class_ids == ("widget", "gizmo")
    assert ds.prompt_names == ("shiny widget", "small gizmo")
    np.testing.assert_array_equal(ds.labels, [[1, 0], [0, 1], [1, 1]])
    np.testing.assert_array_equal(ds.difficult, [[0, 0], [1, 0], [0, 0]])
    assert ds.image_paths[2] == root / "JPEGImages" / "w3.png"
    np.testing.assert_allclose(ds.boxes[2], [[1, 0, 0, 4, 4], [0, 4, 4, 9, 9]])
    # Same through a ClassList and through the dispatcher.
    same = load_dataset("voc", root, "train", classes=ClassList.from_mapping(
        {"widget": "shiny widget", "gizmo": "small gizmo"}))
    np.testing.assert_array_equal(same.labels, ds.labels)


def test_user_voc_layout_needs_its_class_list(tmp_path: Path) -> None:
    root = _make_widgets(tmp_path)
    with pytest.raises(DatasetError, match="'widget'") as e:
        read_voc(root, "train")            # default VOC classes
    assert str(root / "Annotations" / "w1.xml") in str(e.value)


# ---------------------------------------------------------------------------------------------- COCO
COCO_JSON = {
    "info": {}, "licenses": [],
    # Deliberately not in id order: the reader orders columns by category id.
    "categories": [{"id": 18, "name": "dog", "supercategory": "animal"},
                   {"id": 1, "name": "person", "supercategory": "person"},
                   {"id": 10, "name": "traffic light", "supercategory": "outdoor"},
                   {"id": 5, "name": "airplane", "supercategory": "vehicle"}],
    "images": [{"id": 42, "file_name": "COCO_train2014_000000000042.jpg", "width": 40, "height": 30},
               {"id": 7, "file_name": "COCO_train2014_000000000007.jpg", "width": 40, "height": 30},
               {"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "width": 40, "height": 30},
               {"id": 11, "file_name": "COCO_train2014_000000000011.jpg", "width": 40, "height": 30}],
    "annotations": [
        {"id": 1, "image_id": 7, "category_id": 1, "bbox": [1.5, 2.0, 10.0, 5.25], "area": 52.5, "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": 18, "bbox": [0, 0, 20, 20], "area": 400, "iscrowd": 0},
        {"id": 3, "image_id": 7, "category_id": 1, "bbox": [5, 5, 3, 3], "area": 9, "iscrowd": 0},
        {"id": 4, "image_id": 9, "category_id": 10, "bbox": [3, 4, 5, 6], "area": 30, "iscrowd": 1},
        {"id": 5, "image_id": 42, "category_id": 18, "bbox": [2, 2, 2, 2], "area": 4, "iscrowd": 0},
    ],
}


def make_coco(root: Path, data: dict | None = None, split: str = "train2014") -> Path:
    data = COCO_JSON if data is None else data
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    ann = root / "annotations" / f"instances_{split}.json"
    ann.write_text(json.dumps(data))
    for img in data["images"]:
        _image(root / split / img["file_name"], (8, 8))
    return ann


def test_coco_matches_pycocotools(tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    ann = make_coco(tmp_path)
    ds = read_coco(tmp_path, "train2014")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(ann))
    cat_ids = sorted(coco.getCatIds())
    assert ds.class_ids == tuple(c["name"] for c in coco.loadCats(cat_ids))
    assert ds.class_ids == ("person", "airplane", "traffic light", "dog")
    assert ds.prompt_names == ds.class_ids
    assert ds.meta["category_ids"] == cat_ids
    img_ids = sorted(coco.getImgIds())
    assert ds.image_ids == [str(i) for i in img_ids]
    for i, img_id in enumerate(img_ids):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))
        exp = np.zeros(len(cat_ids), np.uint8)
        for a in anns:
            exp[cat_ids.index(a["category_id"])] = 1
        np.testing.assert_array_equal(ds.labels[i], exp)
        exp_boxes = np.asarray([[cat_ids.index(a["category_id"]), a["bbox"][0], a["bbox"][1],
                                 a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns],
                               np.float32).reshape(-1, 5)
        np.testing.assert_allclose(ds.boxes[i], exp_boxes)
        assert ds.image_paths[i] == tmp_path / "train2014" / coco.imgs[img_id]["file_name"]
    # image 9 holds only a crowd region: counted as positive.
    assert ds.labels[ds.image_ids.index("9"), ds.class_ids.index("traffic light")] == 1
    # image 11 has no annotation: kept with an all-zero row, unless drop_empty.
    assert ds.labels[ds.image_ids.index("11")].sum() == 0 and ds.boxes[ds.image_ids.index("11")].shape == (0, 5)
    dropped = read_coco(tmp_path, "train2014", drop_empty=True)
    assert dropped.image_ids == ["7", "9", "42"]
    assert ds.name == "coco/train2014"
    assert load_dataset("coco2014", tmp_path, "train2014").image_ids == ds.image_ids


def test_coco_explicit_annotation_file_and_warning(tmp_path: Path) -> None:
    ann = make_coco(tmp_path)
    other = tmp_path / "elsewhere.json"
    other.write_text(ann.read_text())
    ann.unlink()
    with pytest.warns(UserWarning, match="airplane"):
        ds = read_coco(tmp_path, "train2014", annotation_file=other)
    assert len(ds) == 4


def test_coco_annotation_file_missing(tmp_path: Path) -> None:
    (tmp_path / "train2014").mkdir()
    with pytest.raises(DatasetError) as e:
        read_coco(tmp_path, "train2014")
    assert str(tmp_path / "annotations" / "instances_train2014.json") in str(e.value)


def test_coco_root_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as e:
        read_coco(tmp_path / "coco", "val2014")
    assert str(tmp_path / "coco") in str(e.value)


def test_coco_unknown_category(tmp_path: Path) -> None:
    data = json.loads(json.dumps(COCO_JSON))
    data["annotations"][0]["category_id"] = 99
    ann = make_coco(tmp_path, data)
    with pytest.raises(DatasetError, match="99") as e:
        read_coco(tmp_path)
    assert str(ann) in str(e.value)


def test_coco_duplicate_image_ids(tmp_path: Path) -> None:
    data = json.loads(json.dumps(COCO_JSON))
    data["images"][1]["id"] = 42
    make_coco(tmp_path, data)
    with pytest.raises(DatasetError, match="duplicate image ids: \\[42\\]"):
        read_coco(tmp_path)


def test_coco_no_images(tmp_path: Path) -> None:
    data = dict(COCO_JSON, images=[], annotations=[])
    ann = make_coco(tmp_path, data)
    with pytest.raises(DatasetError, match="no images") as e:
        read_coco(tmp_path)
    assert str(ann) in str(e.value)


def test_coco_image_missing(tmp_path: Path) -> None:
    make_coco(tmp_path)
    img = tmp_path / "train2014" / "COCO_train2014_000000000009.jpg"
    img.unlink()
    with pytest.raises(DatasetError, match="absent") as e:
        read_coco(tmp_path)
    assert str(img) in str(e.value)
    assert len(read_coco(tmp_path, check_files=False)) == 4


# ------------------------------------------------------------------------------------------ NUS-WIDE
NUS_CONCEPTS = ["beach", "dog", "sky"]
NUS_LISTS = {"Train": ["beach\\0001_111.jpg", "dog\\0002_222.jpg", "beach/0003_333.jpg"],
             "Test": ["sky\\0004_444.jpg", "dog\\0005_555.jpg"]}
NUS_LABELS = {"Train": {"beach": [1, 0, 1], "dog": [0, 1, 0], "sky": [1, 0, 0]},
              "Test": {"beach": [0, 0], "dog": [0, 1], "sky": [1, 0]}}


def make_nuswide(root: Path, concepts=NUS_CONCEPTS, lists=NUS_LISTS, labels=NUS_LABELS,
                 image_dir: str = "Flickr", flat: bool = False, concepts_file: bool = True) -> Path:
    (root / "ImageList").mkdir(parents=True)
    (root / "Groundtruth" / "TrainTestLabels").mkdir(parents=True)
    if concepts_file:
        (root / "Concepts81.txt").write_text("".join(c + "\n" for c in concepts))
    for tag, rels in lists.items():
        (root / "ImageList" / f"{tag}Imagelist.txt").write_text("".join(r + "\r\n" for r in rels))
        for r in rels:
            rel = r.replace("\\", "/")
            _image(root / image_dir / (Path(rel).name if flat else rel), (8, 8))
        for c in concepts:
            vals = labels[tag].get(c, [0] * len(rels))
            (root / "Groundtruth" / "TrainTestLabels" / f"Labels_{c}_{tag}.txt").write_text(
                "".join(f"{v}\n" for v in vals))
    return root


def test_nuswide_labels(tmp_path: Path) -> None:
    root = make_nuswide(tmp_path / "nus")
    tr = read_nuswide(root, "train")
    te = load_dataset("nuswide", root, "test")
    assert tr.class_ids == tuple(NUS_CONCEPTS) and tr.prompt_names == tuple(NUS_CONCEPTS)
    assert tr.image_ids == ["beach/0001_111", "dog/0002_222", "beach/0003_333"]
    np.testing.assert_array_equal(tr.labels, [[1, 0, 1], [0, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(te.labels, [[0, 0, 1], [0, 1, 0]])
    assert tr.image_paths[0] == root / "Flickr" / "beach" / "0001_111.jpg"
    assert tr.name == "nuswide/train" and te.name == "nuswide/test"
    assert load_dataset("nus-wide", root, "TEST").image_ids == te.image_ids


def test_nuswide_flat_images_folder_and_drop_empty(tmp_path: Path) -> None:
    labels = {"Train": {"beach": [1, 0, 1], "dog": [0, 0, 0], "sky": [1, 0, 0]}, "Test": NUS_LABELS["Test"]}
    root = make_nuswide(tmp_path / "nus", labels=labels, image_dir="images", flat=True)
    with pytest.warns(UserWarning, match="'dog'"):
        ds = read_nuswide(root, "train")
    assert ds.image_paths[1] == root / "images" / "0002_222.jpg"
    assert read_nuswide(root, "train", drop_empty=True).image_ids == ["beach/0001_111", "beach/0003_333"]


def test_nuswide_default_81_concepts(tmp_path: Path) -> None:
    assert len(NUSWIDE_CLASSES) == 81 and len(set(NUSWIDE_CLASSES.ids)) == 81
    root = make_nuswide(tmp_path / "nus", concepts=list(NUSWIDE_CLASSES.ids), concepts_file=False)
    ds = read_nuswide(root, "train")
    assert ds.classes == NUSWIDE_CLASSES
    assert ds.labels[:, NUSWIDE_CLASSES.index("dog")].tolist() == [0, 1, 0]


def test_nuswide_label_length_mismatch(tmp_path: Path) -> None:
    root = make_nuswide(tmp_path / "nus")
    lf = root / "Groundtruth" / "TrainTestLabels" / "Labels_dog_Train.txt"
    lf.write_text("0\n1\n")
    with pytest.raises(DatasetError, match="2 lines") as e:
        read_nuswide(root, "train")
    assert str(lf) in str(e.value)


def test_nuswide_label_file_missing(tmp_path: Path) -> None:
    root = make_nuswide(tmp_path / "nus")
    lf = root / "Groundtruth" / "TrainTestLabels" / "Labels_sky_Test.txt"
    lf.unlink()
    with pytest.raises(DatasetError, match="'sky'") as e:
        read_nuswide(root, "test")
    assert str(lf) in str(e.value)


def test_nuswide_bad_label_value(tmp_path: Path) -> None:
    root = make_nuswide(tmp_path / "nus")
    lf = root / "Groundtruth" / "TrainTestLabels" / "Labels_beach_Train.txt"
    lf.write_text("1\n2\n0\n")
    with pytest.raises(DatasetError, match="line 2") as e:
        read_nuswide(root, "train")
    assert str(lf) in str(e.value)


def test_nuswide_image_list_missing_and_bad_split(tmp_path: Path) -> None:
    root = make_nuswide(tmp_path / "nus")
    lst = root / "ImageList" / "TestImagelist.txt"
    lst.unlink()
    with pytest.raises(DatasetError) as e:
        read_nuswide(root, "test")
    assert str(lst) in str(e.value)
    with pytest.raises(DatasetError, match="'val'"):
        read_nuswide(root, "val")


def test_nuswide_duplicate_and_empty_list(tmp_path: Path) -> None:
    root = make_nuswide(tmp_path / "nus")
    lst = root / "ImageList" / "TrainImagelist.txt"
    lst.write_text("beach\\0001_111.jpg\nbeach/0001_111.jpg\ndog\\0002_222.jpg\n")
    with pytest.raises(DatasetError, match="duplicate") as e:
        read_nuswide(root, "train")
    assert "beach/0001_111" in str(e.value)
    lst.write_text("")
    with pytest.raises(DatasetError, match="no images") as e:
        read_nuswide(root, "train")
    assert str(lst) in str(e.value)


def test_nuswide_image_missing(tmp_path: Path) -> None:
    root = make_nuswide(tmp_path / "nus")
    img = root / "Flickr" / "dog" / "0002_222.jpg"
    img.unlink()
    with pytest.raises(DatasetError, match="absent") as e:
        read_nuswide(root, "train")
    assert str(img) in str(e.value)
    assert read_nuswide(root, "train", check_files=False).image_paths[1] == img


def test_nuswide_root_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as e:
        read_nuswide(tmp_path / "NUS-WIDE")
    assert str(tmp_path / "NUS-WIDE") in str(e.value)


def test_no_warning_when_every_class_has_a_positive(tmp_path: Path) -> None:
    root = make_nuswide(tmp_path / "nus")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_nuswide(root, "train")
