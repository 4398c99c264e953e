"""Pascal VOC reader (:func:`read_voc`), also for user data sets laid out the VOC way. The layout, the
"difficult" policy and the box convention are described in the :mod:`ccdlib.readers` package docstring."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ..datasets import ClassList, MultiLabelDataset
from ..errors import DatasetError
from .common import (PathLike, _as_class_list, _check_box, _check_ids, _read_numbered_lines, _require_dir,
                     _warn_empty_classes)

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

DIFFICULT_POLICIES: tuple[str, ...] = ("negative", "positive", "ignore")
"""Accepted values of ``read_voc(difficult=...)``; see the module docstring."""

_VOC_YEAR_DIR = re.compile(r"VOC(\d{4})")
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp", ".BMP", ".webp", ".tif", ".tiff",
               ".TIF", ".TIFF")


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

