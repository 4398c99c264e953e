"""Readers that turn a data set on disk into a :class:`~ccdlib.datasets.MultiLabelDataset`.

Nothing here downloads anything: every reader reads files the user already has and raises
:class:`~ccdlib.errors.DatasetError` (naming the path, class or id at fault) when they are missing or
inconsistent. A class with no positive image in the split read is allowed, but a ``UserWarning``
naming those classes is emitted.

Supported layouts
-----------------
* **Pascal VOC** (:func:`read_voc`), also any user data set laid out the VOC way with its own class list::

      VOC2007/                      # a "year folder"; a VOCdevkit/ holding exactly one VOC20xx/ also works
        JPEGImages/<id>.jpg
        Annotations/<id>.xml
        ImageSets/Main/<split>.txt  # one image id per line

* **MS-COCO** (:func:`read_coco`)::

      <root>/<split>/<file_name>                    # e.g. train2014/COCO_train2014_000000000009.jpg
      <root>/annotations/instances_<split>.json

* **NUS-WIDE** (:func:`read_nuswide`)::

      <root>/Concepts81.txt                                    # 81 concept names, one per line (optional)
      <root>/ImageList/TrainImagelist.txt, TestImagelist.txt   # relative image paths, '\\' or '/'
      <root>/Groundtruth/TrainTestLabels/Labels_<concept>_Train.txt, ..._Test.txt  # one 0/1 per line
      <root>/Flickr/<relative path>   (or <root>/images/<relative path or file name>)

VOC "difficult" policy (fixed; see method.md §8)
-------------------------------------------
A VOC object may be flagged ``<difficult>1</difficult>``. :func:`read_voc` takes ``difficult=``:

* ``"negative"`` (default, like the released CCD code's preprocessing): class *c* is a positive of an
  image only if the image has at least one **non-difficult** object of class *c*. A class present
  only through difficult objects gets label 0.
* ``"positive"``: difficult objects count as positives like any other object.
* ``"ignore"``: the same labels as ``"negative"``; the caller is expected to use the
  ``difficult`` matrix to leave those (image, class) entries out of evaluation.

Whatever the policy, the returned data set's ``difficult`` matrix ``(N, C) uint8`` is 1 exactly where
the class is present in the image *only* as difficult objects, and ``meta["difficult_policy"]``
records the policy used. (This matches the 1 / 0 / -1 coding of VOC's own
``ImageSets/Main/<class>_<split>.txt`` files: 1 = a non-difficult object, 0 = difficult objects only.)

Boxes
-----
``boxes[i]`` is a float32 ``(K, 5)`` array ``[class_index, x0, y0, x1, y1]`` in pixels, 0-based,
continuous coordinates (a box covering a whole ``W x H`` image is ``[0, 0, W, H]``):

* VOC xml is 1-based and inclusive, so ``x0 = xmin - 1, y0 = ymin - 1, x1 = xmax, y1 = ymax``. Every
  object is listed, difficult ones included; an object without ``<bndbox>`` counts for the labels but
  has no box row.
* COCO ``bbox = [x, y, w, h]`` is already 0-based: ``[c, x, y, x + w, y + h]``; crowd regions included.

Dispatch
--------
:func:`load_dataset` picks a reader by kind from the registry :data:`READERS` (``"voc"``, ``"voc2007"``,
``"voc2012"``, ``"coco"``, ``"coco2014"``, ``"nuswide"``); other modules add kinds with
:func:`register_reader` (or by setting ``READERS[kind]`` directly).
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import re
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Sequence

import numpy as np

from .datasets import ClassList, MultiLabelDataset, load_class_list, read_text_file
from .errors import DatasetError

__all__ = [
    "VOC_CLASSES",
    "NUSWIDE_CLASSES",
    "DIFFICULT_POLICIES",
    "read_voc",
    "read_coco",
    "read_nuswide",
    "load_dataset",
    "register_reader",
    "READERS",
]

PathLike = str | Path

VOC_CLASSES: ClassList = ClassList.from_mapping({
    "aeroplane": "aeroplane",
    "bicycle": "bicycle",
    "bird": "bird",
    "boat": "boat",
    "bottle": "bottle",
    "bus": "bus",
    "car": "car",
    "cat": "cat",
    "chair": "chair",
    "cow": "cow",
    "diningtable": "dining table",
    "dog": "dog",
    "horse": "horse",
    "motorbike": "motorbike",
    "person": "person",
    "pottedplant": "potted plant",
    "sheep": "sheep",
    "sofa": "sofa",
    "train": "train",
    "tvmonitor": "tv monitor",
})
"""The 20 Pascal VOC classes in the standard (alphabetical) order, with natural prompt names."""

NUSWIDE_CLASSES: ClassList = ClassList.from_mapping([
    "airport", "animal", "beach", "bear", "birds", "boats", "book", "bridge", "buildings", "cars",
    "castle", "cat", "cityscape", "clouds", "computer", "coral", "cow", "dancing", "dog", "earthquake",
    "elk", "fire", "fish", "flags", "flowers", "food", "fox", "frost", "garden", "glacier", "grass",
    "harbor", "horses", "house", "lake", "leaf", "map", "military", "moon", "mountain", "nighttime",
    "ocean", "person", "plane", "plants", "police", "protest", "railroad", "rainbow", "reflection",
    "road", "rocks", "running", "sand", "sign", "sky", "snow", "soccer", "sports", "statue", "street",
    "sun", "sunset", "surf", "swimmers", "tattoo", "temple", "tiger", "tower", "town", "toy", "train",
    "tree", "valley", "vehicle", "water", "waterfall", "wedding", "whales", "window", "zebra",
])
"""The 81 NUS-WIDE concepts (alphabetical; prompt name = concept name). Used by :func:`read_nuswide`
only when ``Concepts81.txt`` is absent; when present, that file's order defines the label columns."""

DIFFICULT_POLICIES: tuple[str, ...] = ("negative", "positive", "ignore")
"""Accepted values of ``read_voc(difficult=...)``; see the module docstring."""

_VOC_YEAR_DIR = re.compile(r"VOC(\d{4})")
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp", ".BMP", ".webp", ".tif", ".tiff",
               ".TIF", ".TIFF")


# ----------------------------------------------------------------------------------------- helpers
def _as_class_list(classes: ClassList | PathLike | None, default: ClassList) -> ClassList:
    if classes is None:
        return default
    if isinstance(classes, ClassList):
        return classes
    if isinstance(classes, (str, Path)):
        return load_class_list(classes)
    raise DatasetError(
        f"classes must be a ClassList or a path to a class-list file, got {type(classes).__name__}")


def _require_dir(path: Path, what: str) -> None:
    if not path.exists():
        raise DatasetError(f"{what} not found: {path}")
    if not path.is_dir():
        raise DatasetError(f"{what} is not a folder: {path}")


def _check_ids(ids: Sequence[str], source: Path, lines: Sequence[int] | None = None) -> None:
    """Raise if a split lists no image or lists an id twice (naming the file, the ids and, given the ids' line
    numbers, the lines)."""
    if not ids:
        raise DatasetError(f"split file {source} lists no images")
    dups = sorted(i for i, n in Counter(ids).items() if n > 1)
    if dups:
        def at(i: str) -> str:
            return i if lines is None else f"{i} (lines {', '.join(str(ln) for ln, j in zip(lines, ids) if j == i)})"
        shown = ", ".join(at(i) for i in dups[:10]) + (" ..." if len(dups) > 10 else "")
        raise DatasetError(f"split file {source} lists {len(dups)} duplicate image id(s): {shown}")


def _warn_empty_classes(ds: MultiLabelDataset) -> None:
    empty = ds.classes_without_positives()
    if empty:
        warnings.warn(
            f"data set {ds.name!r}: {len(empty)} of {ds.num_classes} class(es) have no positive image: "
            f"{empty}", UserWarning, stacklevel=3)


def _read_numbered_lines(path: Path) -> list[tuple[int, str]]:
    """``[(line number, stripped text), ...]`` of the non-blank lines (UTF-8, see :func:`read_text_file`)."""
    text = read_text_file(path, "file")
    return [(k, ln.strip()) for k, ln in enumerate(text.splitlines(), start=1) if ln.strip()]


def _read_lines(path: Path) -> list[str]:
    return [ln for _, ln in _read_numbered_lines(path)]


def _check_box(box: tuple[float, float, float, float], size: tuple[float, float] | None, where: str,
               *, one_based: bool) -> tuple[float, float, float, float]:
    """A box ``(x0, y0, x1, y1)`` 0-based continuous (VOC: from 1-based inclusive) checked and clipped.

    Not finite, or empty / reversed (``x0 >= x1`` or ``y0 >= y1``, e.g. VOC ``xmin > xmax``), or wholly outside
    the image: a :class:`DatasetError` naming ``where``. Partly outside the image (``size = (W, H)`` known):
    clipped to it, with a ``UserWarning`` naming ``where`` (annotation tools often write ``xmax = W + 1``)."""
    x0, y0, x1, y1 = box
    if one_based:
        x0, y0 = x0 - 1.0, y0 - 1.0
    if not all(np.isfinite(v) for v in (x0, y0, x1, y1)):
        raise DatasetError(f"{where}: box {list(box)} has a coordinate that is not a finite number")
    if x0 >= x1 or y0 >= y1:
        raise DatasetError(f"{where}: box {list(box)} is empty or reversed (needs xmin {'<=' if one_based else '<'} "
                           f"xmax and ymin {'<=' if one_based else '<'} ymax)")
    if size is not None and size[0] > 0 and size[1] > 0:
        w, h = size
        if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
            raise DatasetError(f"{where}: box {list(box)} lies outside the {w:g}x{h:g} image")
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            warnings.warn(f"{where}: box {list(box)} extends outside the {w:g}x{h:g} image; clipped to it",
                          UserWarning, stacklevel=4)
            x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h))
    return x0, y0, x1, y1


# --------------------------------------------------------------------------------------------- VOC
def _resolve_voc_dir(root: Path, year: str | None) -> Path:
    """The VOC year folder for ``root`` (a year folder, a VOCdevkit folder, or a folder holding VOCdevkit)."""
    _require_dir(root, "VOC root")
    if (root / "Annotations").is_dir() or (root / "ImageSets").is_dir():
        m = _VOC_YEAR_DIR.fullmatch(root.name)
        if year is not None and m and m.group(1) != year:
            raise DatasetError(f"year={year} was asked for, but {root} is a {root.name} folder")
        return root
    base = root / "VOCdevkit" if (root / "VOCdevkit").is_dir() else root
    if year is not None:
        cand = base / f"VOC{year}"
        _require_dir(cand, f"VOC{year} folder")
        return cand
    subs = sorted(p for p in base.iterdir() if p.is_dir() and _VOC_YEAR_DIR.fullmatch(p.name))
    if len(subs) == 1:
        return subs[0]
    if not subs:
        raise DatasetError(
            f"{root} is not a VOC year folder (no Annotations/ or ImageSets/ inside) and holds no "
            f"VOC20xx folder")
    raise DatasetError(
        f"{base} holds several VOC year folders ({', '.join(p.name for p in subs)}); pass year=")


def _voc_image_path(img_dir: Path, image_id: str, xml_filename: str | None) -> Path | None:
    """``JPEGImages/<id>.jpg`` if present, else the xml's ``<filename>``, else ``<id>`` + a known suffix."""
    primary = img_dir / f"{image_id}.jpg"
    if primary.is_file():
        return primary
    if xml_filename:
        cand = img_dir / xml_filename
        if cand.is_file():
            return cand
    for ext in _IMAGE_EXTS:
        cand = img_dir / f"{image_id}{ext}"
        if cand.is_file():
            return cand
    return None


def _parse_voc_xml(path: Path) -> tuple[str | None, list[tuple[str, bool, tuple[float, float, float, float] | None]]]:
    """``(filename, [(class name, difficult, (xmin, ymin, xmax, ymax) or None), ...])`` of one xml."""
    try:
        tree = ET.parse(path)
    except ET.ParseError as e:
        raise DatasetError(f"annotation file {path} is not valid XML: {e}") from e
    except OSError as e:
        raise DatasetError(f"cannot read annotation file {path}: {e}") from e
    node = tree.getroot()
    filename = (node.findtext("filename") or "").strip() or None
    size = None
    try:
        size = (float(node.findtext("size/width") or 0), float(node.findtext("size/height") or 0))
    except ValueError:
        raise DatasetError(f"annotation file {path}: <size> holds a non-numeric width or height") from None
    objects = []
    for k, obj in enumerate(node.findall("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DatasetError(f"annotation file {path}: object #{k} has no <name>")
        dtext = (obj.findtext("difficult") or "").strip()
        try:
            difficult = bool(int(float(dtext))) if dtext else False
        except ValueError:
            raise DatasetError(
                f"annotation file {path}: object #{k} ({name}) has <difficult>{dtext}</difficult>, "
                f"expected 0 or 1") from None
        box = None
        bb = obj.find("bndbox")
        if bb is not None:
            try:
                box = tuple(float((bb.findtext(t) or "").strip()) for t in ("xmin", "ymin", "xmax", "ymax"))
            except ValueError:
                raise DatasetError(
                    f"annotation file {path}: object #{k} ({name}) has a <bndbox> with a missing or "
                    f"non-numeric xmin/ymin/xmax/ymax") from None
        if box is not None:
            box = _check_box(box, size, f"annotation file {path}, object #{k} ({name})", one_based=True)
            box = (box[0] + 1.0, box[1] + 1.0, box[2], box[3])   # back to VOC's 1-based xmin/ymin
        objects.append((name, difficult, box))  # type: ignore[arg-type]
    return filename, objects


def read_voc(
    root: PathLike,
    split: str = "trainval",
    *,
    classes: ClassList | PathLike | None = None,
    difficult: str = "negative",
    with_boxes: bool = True,
    check_files: bool = True,
    year: str | int | None = None,
) -> MultiLabelDataset:
    """Read one split of a Pascal VOC data set (or of any data set laid out the VOC way).

    Args:
        root: a VOC year folder holding ``JPEGImages/``, ``Annotations/<id>.xml`` and
            ``ImageSets/Main/<split>.txt`` (e.g. ``VOCdevkit/VOC2007``); or a ``VOCdevkit`` folder (or
            its parent) holding exactly one ``VOC20xx`` folder, or several plus ``year=``.
        split: name of the split file in ``ImageSets/Main`` (``train``, ``val``, ``trainval``, ``test``).
        classes: the class list (label-column order). Default :data:`VOC_CLASSES`; for a user data set
            pass its own :class:`ClassList` or a class-list file path (read by :func:`load_class_list`).
        difficult: ``"negative"`` (default), ``"positive"`` or ``"ignore"``; see the module docstring.
        with_boxes: also return the per-image boxes (all objects, difficult ones included).
        check_files: raise if a listed image is absent from ``JPEGImages/``.
        year: pick ``VOC<year>`` inside a VOCdevkit folder (checked against a year folder's name).

    Returns:
        A :class:`MultiLabelDataset` named ``voc<year>/<split>`` (or ``<folder>/<split>``) with
        ``difficult`` set and ``meta`` holding ``difficult_policy`` and ``root``. Image ids are the
        split file's ids; image paths are ``JPEGImages/<id>.jpg`` (or the xml's ``<filename>``, or
        ``<id>`` with another image suffix, when that is what exists).

    Raises:
        DatasetError: root, split file or an annotation xml missing; an annotation naming a class
            outside ``classes``; duplicate ids or no ids in the split file; with ``check_files``, a
            listed image absent.
    """
    if difficult not in DIFFICULT_POLICIES:
        raise DatasetError(f"difficult={difficult!r}: expected one of {list(DIFFICULT_POLICIES)}")
    cl = _as_class_list(classes, VOC_CLASSES)
    year_s = None if year is None else str(year)
    voc_dir = _resolve_voc_dir(Path(root), year_s)

    split_file = voc_dir / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        main = split_file.parent
        avail = sorted(p.stem for p in main.glob("*.txt") if "_" not in p.stem) if main.is_dir() else []
        raise DatasetError(f"split file not found: {split_file} (available splits: {avail or 'none'})")
    numbered = _read_numbered_lines(split_file)
    ids = [ln.split()[0] for _, ln in numbered]
    _check_ids(ids, split_file, [k for k, _ in numbered])

    ann_dir, img_dir = voc_dir / "Annotations", voc_dir / "JPEGImages"
    col = {cid: c for c, cid in enumerate(cl.ids)}
    n, num_c = len(ids), len(cl)
    labels = np.zeros((n, num_c), dtype=np.uint8)
    any_obj = np.zeros((n, num_c), dtype=bool)
    easy_obj = np.zeros((n, num_c), dtype=bool)
    boxes: list[np.ndarray] = []
    paths: list[Path] = []
    for i, image_id in enumerate(ids):
        xml_path = ann_dir / f"{image_id}.xml"
        if not xml_path.is_file():
            raise DatasetError(
                f"image {image_id!r} listed in {split_file} has no annotation file: {xml_path}")
        filename, objects = _parse_voc_xml(xml_path)
        rows = []
        for name, is_difficult, box in objects:
            c = col.get(name)
            if c is None:
                raise DatasetError(
                    f"annotation file {xml_path} names class {name!r}, which is not in the class list "
                    f"({num_c} classes: {', '.join(cl.ids)}); pass classes=... for a data set with its "
                    f"own classes")
            any_obj[i, c] = True
            if not is_difficult:
                easy_obj[i, c] = True
            if box is not None:
                xmin, ymin, xmax, ymax = box
                rows.append((c, xmin - 1.0, ymin - 1.0, xmax, ymax))
        boxes.append(np.asarray(rows, dtype=np.float32).reshape(-1, 5))
        img_path = _voc_image_path(img_dir, image_id, filename)
        if img_path is None:
            img_path = img_dir / f"{image_id}.jpg"
            if check_files:
                raise DatasetError(f"image {image_id!r} listed in {split_file} is absent: {img_path}")
        paths.append(img_path)

    labels[:] = any_obj if difficult == "positive" else easy_obj
    difficult_only = (any_obj & ~easy_obj).astype(np.uint8)
    m = _VOC_YEAR_DIR.fullmatch(voc_dir.name)
    name = f"voc{m.group(1)}/{split}" if m else f"{voc_dir.name}/{split}"
    ds = MultiLabelDataset(
        name=name, image_ids=ids, image_paths=paths, labels=labels, classes=cl,
        boxes=boxes if with_boxes else None, difficult=difficult_only,
        meta={"kind": "voc", "root": str(voc_dir), "split": split, "difficult_policy": difficult},
    )
    _warn_empty_classes(ds)
    return ds


# -------------------------------------------------------------------------------------------- COCO
def read_coco(
    root: PathLike,
    split: str = "train2014",
    *,
    annotation_file: PathLike | None = None,
    check_files: bool = True,
    drop_empty: bool = False,
    with_boxes: bool = True,
) -> MultiLabelDataset:
    """Read one split of MS-COCO (instances annotations) with ``pycocotools``.

    Args:
        root: folder holding ``<split>/`` (the images) and ``annotations/instances_<split>.json``.
        split: e.g. ``train2014``, ``val2014``.
        annotation_file: use this instances JSON instead of ``root/annotations/instances_<split>.json``.
        check_files: raise if an image listed in the JSON is absent from ``root/<split>/``.
        drop_empty: drop images with no annotation. By default they are **kept**, with an all-zero row.
        with_boxes: also return per-image boxes ``[c, x, y, x + w, y + h]`` (all annotations).

    Returns:
        A :class:`MultiLabelDataset` named ``coco/<split>``. Classes are the JSON's categories ordered
        by category id; class id and prompt name are both the COCO name (e.g. ``traffic light``), and
        ``meta["category_ids"]`` holds the COCO category id of each column. Image ids are the COCO
        image ids as strings, sorted numerically. Crowd annotations (``iscrowd=1``) count as positives
        and have boxes like the others.

    Raises:
        DatasetError: root or JSON missing or unreadable; JSON with no images or no categories;
            duplicate image ids; an annotation naming an unknown category or image; with
            ``check_files``, a listed image absent.
    """
    from pycocotools.coco import COCO

    root = Path(root)
    _require_dir(root, "COCO root")
    ann_path = Path(annotation_file) if annotation_file is not None else (
        root / "annotations" / f"instances_{split}.json")
    if not ann_path.is_file():
        raise DatasetError(f"COCO annotation file not found: {ann_path}")
    try:
        with open(ann_path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"cannot read COCO annotation file {ann_path}: {e}") from e
    if not isinstance(data, dict):
        raise DatasetError(f"COCO annotation file {ann_path} does not hold a JSON object")
    images = data.get("images") or []
    if not images:
        raise DatasetError(f"COCO annotation file {ann_path} lists no images")
    if not data.get("categories"):
        raise DatasetError(f"COCO annotation file {ann_path} lists no categories")
    dups = sorted(i for i, k in Counter(img["id"] for img in images).items() if k > 1)
    if dups:
        raise DatasetError(
            f"COCO annotation file {ann_path} lists duplicate image ids: {dups[:10]}")

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()

    cat_ids = sorted(coco.getCatIds())
    cats = coco.loadCats(cat_ids)
    cl = ClassList(tuple(c["name"] for c in cats), tuple(c["name"] for c in cats))
    col = {cid: c for c, cid in enumerate(cat_ids)}

    img_ids = sorted(coco.getImgIds())
    known = set(img_ids)
    for ann in data.get("annotations") or []:
        if ann.get("category_id") not in col:
            raise DatasetError(
                f"COCO annotation file {ann_path}: annotation {ann.get('id')} names category id "
                f"{ann.get('category_id')}, which is not among its categories")
        if ann.get("image_id") not in known:
            raise DatasetError(
                f"COCO annotation file {ann_path}: annotation {ann.get('id')} names image id "
                f"{ann.get('image_id')}, which is not among its images")

    img_dir = root / split
    ids: list[str] = []
    paths: list[Path] = []
    label_rows: list[np.ndarray] = []
    boxes: list[np.ndarray] = []
    for img_id in img_ids:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id], iscrowd=None))
        if drop_empty and not anns:
            continue
        info = coco.imgs[img_id]
        path = img_dir / info["file_name"]
        if check_files and not path.is_file():
            raise DatasetError(f"COCO image {img_id} listed in {ann_path} is absent: {path}")
        row = np.zeros(len(cl), dtype=np.uint8)
        rows = []
        for ann in anns:
            c = col[ann["category_id"]]
            row[c] = 1
            bbox = ann.get("bbox")
            if bbox is not None and len(bbox) == 4:
                where = f"COCO annotation file {ann_path}, annotation {ann.get('id')} (image {img_id})"
                try:
                    x, y, w, h = (float(v) for v in bbox)
                except (TypeError, ValueError):
                    raise DatasetError(f"{where}: bbox {bbox} is not four numbers") from None
                size = (float(info.get("width") or 0), float(info.get("height") or 0))
                rows.append((c, *_check_box((x, y, x + w, y + h), size, where, one_based=False)))
        ids.append(str(img_id))
        paths.append(path)
        label_rows.append(row)
        boxes.append(np.asarray(rows, dtype=np.float32).reshape(-1, 5))
    if not ids:
        raise DatasetError(f"COCO annotation file {ann_path}: no image left (drop_empty={drop_empty})")

    ds = MultiLabelDataset(
        name=f"coco/{split}", image_ids=ids, image_paths=paths, labels=np.stack(label_rows),
        classes=cl, boxes=boxes if with_boxes else None,
        meta={"kind": "coco", "root": str(root), "split": split, "annotation_file": str(ann_path),
              "category_ids": cat_ids, "drop_empty": drop_empty},
    )
    _warn_empty_classes(ds)
    return ds


# ---------------------------------------------------------------------------------------- NUS-WIDE
_NUS_SPLITS = {"train": "Train", "test": "Test"}


def _concepts_class_list(path: Path) -> ClassList:
    """``Concepts81.txt``: one concept per line; a concept listed twice is an error naming both lines."""
    first: dict[str, int] = {}
    for k, name in _read_numbered_lines(path):
        if name in first:
            raise DatasetError(f"NUS-WIDE concept file {path} line {k}: {name!r} is listed twice (first on line "
                               f"{first[name]})")
        first[name] = k
    if not first:
        raise DatasetError(f"NUS-WIDE concept file {path} lists no concept")
    return ClassList.from_mapping(list(first))


def read_nuswide(
    root: PathLike,
    split: str = "train",
    *,
    classes: ClassList | PathLike | None = None,
    check_files: bool = True,
    drop_empty: bool = False,
) -> MultiLabelDataset:
    """Read the train or test split of NUS-WIDE (81 concepts) from its released text files.

    Expected files (the common layout of the NUS-WIDE release)::

        root/Concepts81.txt                                # 81 concept names, one per line
        root/ImageList/TrainImagelist.txt                  # one relative image path per line
        root/ImageList/TestImagelist.txt                   #   (backslashes or slashes)
        root/Groundtruth/TrainTestLabels/Labels_<concept>_Train.txt   # one 0/1 per line,
        root/Groundtruth/TrainTestLabels/Labels_<concept>_Test.txt    #   aligned with the image list
        root/Flickr/<relative path>                        # the images; or root/images/<relative path>,
                                                           #   or root/images/<file name> (flat folder)

    Args:
        root: the NUS-WIDE folder.
        split: ``"train"`` or ``"test"``.
        classes: override the concept list. Default: ``Concepts81.txt`` when present (its order defines
            the label columns), else :data:`NUSWIDE_CLASSES`.
        check_files: raise if a listed image is absent.
        drop_empty: drop images with no positive concept. By default they are kept (all-zero row).

    Returns:
        A :class:`MultiLabelDataset` named ``nuswide/<split>``; image ids are the list's relative
        paths with ``/`` separators and no suffix (e.g. ``actor/0001_2124494179``).

    Raises:
        DatasetError: root, image list or a label file missing; a label file whose length differs
            from the image list or holding values other than 0/1; duplicate or no images in the list;
            with ``check_files``, a listed image absent.
    """
    root = Path(root)
    _require_dir(root, "NUS-WIDE root")
    key = split.lower()
    if key not in _NUS_SPLITS:
        raise DatasetError(f"NUS-WIDE split {split!r}: expected 'train' or 'test'")
    tag = _NUS_SPLITS[key]
    if classes is None:
        concepts_file = root / "Concepts81.txt"
        cl = _concepts_class_list(concepts_file) if concepts_file.is_file() else NUSWIDE_CLASSES
    else:
        cl = _as_class_list(classes, NUSWIDE_CLASSES)

    list_file = root / "ImageList" / f"{tag}Imagelist.txt"
    if not list_file.is_file():
        raise DatasetError(f"NUS-WIDE image list not found: {list_file}")
    numbered = _read_numbered_lines(list_file)
    rels = [ln.replace("\\", "/").strip("/") for _, ln in numbered]
    ids = [str(PurePosixPath(r).with_suffix("")) if PurePosixPath(r).suffix else r for r in rels]
    _check_ids(ids, list_file, [k for k, _ in numbered])
    n = len(rels)

    label_dir = root / "Groundtruth" / "TrainTestLabels"
    labels = np.zeros((n, len(cl)), dtype=np.uint8)
    for c, concept in enumerate(cl.ids):
        lf = label_dir / f"Labels_{concept}_{tag}.txt"
        if not lf.is_file():
            raise DatasetError(f"NUS-WIDE label file for concept {concept!r} not found: {lf}")
        vals = _read_lines(lf)
        if len(vals) != n:
            raise DatasetError(
                f"NUS-WIDE label file {lf} has {len(vals)} lines but {list_file} lists {n} images")
        try:
            col = np.asarray([int(float(v)) for v in vals], dtype=np.int64)
        except ValueError:
            raise DatasetError(f"NUS-WIDE label file {lf} holds a non-numeric line") from None
        bad = np.flatnonzero((col != 0) & (col != 1))
        if bad.size:
            raise DatasetError(
                f"NUS-WIDE label file {lf} line {bad[0] + 1} holds {col[bad[0]]}, expected 0 or 1")
        labels[:, c] = col

    img_dir = next((d for d in (root / "Flickr", root / "images") if d.is_dir()), None)
    if img_dir is None:
        if check_files:
            raise DatasetError(f"NUS-WIDE image folder not found: {root / 'Flickr'} (or {root / 'images'})")
        img_dir = root / "Flickr"
    paths: list[Path] = []
    for rel in rels:
        p = img_dir / rel
        if check_files and not p.is_file():
            flat = img_dir / PurePosixPath(rel).name
            if not flat.is_file():
                raise DatasetError(f"NUS-WIDE image listed in {list_file} is absent: {p}")
            p = flat
        paths.append(p)

    keep = np.flatnonzero(labels.any(1)) if drop_empty else np.arange(n)
    if keep.size == 0:
        raise DatasetError(f"NUS-WIDE {split}: no image has a positive concept (drop_empty=True)")
    ds = MultiLabelDataset(
        name=f"nuswide/{key}", image_ids=[ids[i] for i in keep], image_paths=[paths[i] for i in keep],
        labels=labels[keep], classes=cl,
        meta={"kind": "nuswide", "root": str(root), "split": key, "drop_empty": drop_empty},
    )
    _warn_empty_classes(ds)
    return ds


# ---------------------------------------------------------------------------------------- dispatch
Reader = Callable[..., MultiLabelDataset]

READERS: dict[str, Reader] = {
    "voc": read_voc,
    "voc2007": functools.partial(read_voc, year="2007"),
    "voc2012": functools.partial(read_voc, year="2012"),
    "coco": read_coco,
    "coco2014": read_coco,
    "nuswide": read_nuswide,
}
"""Data set kind -> reader ``reader(root, split, **kwargs) -> MultiLabelDataset``. Other modules add
kinds here (e.g. ``READERS["mosaic"] = read_mosaic``) or through :func:`register_reader`."""

_KIND_ALIASES: dict[str, str] = {"nus-wide": "nuswide", "nus_wide": "nuswide"}


def register_reader(kind: str, reader: Reader, *, overwrite: bool = False) -> None:
    """Add ``reader`` to :data:`READERS` under ``kind`` (lower-cased); refuses to replace unless ``overwrite``."""
    key = kind.strip().lower()
    if key in READERS and not overwrite and READERS[key] is not reader:
        raise DatasetError(f"a reader for kind {key!r} is already registered")
    READERS[key] = reader


def load_dataset(kind: str, root: PathLike, split: str | None = None, **kwargs: Any) -> MultiLabelDataset:
    """Read ``split`` of a data set of the given ``kind`` (a key of :data:`READERS`) under ``root``.

    ``split=None`` uses the reader's default split. Extra keyword arguments go to the reader
    (e.g. ``difficult="positive"`` or ``classes=...`` for VOC). ``"nus-wide"``/``"nus_wide"`` are
    accepted for ``"nuswide"``.
    """
    key = kind.strip().lower()
    key = _KIND_ALIASES.get(key, key)
    reader = READERS.get(key)
    if reader is None:
        raise DatasetError(f"unknown data set kind {kind!r}; known kinds: {sorted(READERS)}")
    if split is None:
        return reader(root, **kwargs)
    return reader(root, split, **kwargs)
