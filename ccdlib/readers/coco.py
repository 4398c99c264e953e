"""MS-COCO reader (:func:`read_coco`, instances annotations, through ``pycocotools``)."""
from __future__ import annotations

import contextlib
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np

from ..datasets import ClassList, MultiLabelDataset
from ..errors import DatasetError
from .common import PathLike, _as_class_list, _check_box, _require_dir, _warn_empty_classes


def read_coco(
    root: PathLike,
    split: str = "train2014",
    *,
    annotation_file: PathLike | None = None,
    classes: ClassList | PathLike | None = None,
    check_files: bool = True,
    drop_empty: bool = False,
    with_boxes: bool = True,
) -> MultiLabelDataset:
    """Read one split of MS-COCO (instances annotations) with ``pycocotools``.

    Args:
        root: folder holding ``<split>/`` (the images) and ``annotations/instances_<split>.json``.
        split: e.g. ``train2014``, ``val2014``.
        annotation_file: use this instances JSON instead of ``root/annotations/instances_<split>.json``.
        classes: a subset of the categories (a :class:`ClassList` or a class-list file, ``data.classes``): class
            ids are COCO category names, their order the label columns, the prompt names the list's; annotations
            of other categories are dropped (labels and boxes). A class id that names no category of the JSON is
            a :class:`DatasetError` naming it. Default: every category.
        check_files: raise if an image listed in the JSON is absent from ``root/<split>/``.
        drop_empty: drop images with no annotation (of the listed ``classes``). By default they are **kept**, with
            an all-zero row.
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
    all_cats = set(cat_ids)
    if classes is not None:   # a subset of the categories, in the list's order (issue 23)
        cl, cat_ids = _category_subset(classes, cats, ann_path)
    col = {cid: c for c, cid in enumerate(cat_ids)}

    img_ids = sorted(coco.getImgIds())
    known = set(img_ids)
    for ann in data.get("annotations") or []:
        if ann.get("category_id") not in all_cats:
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
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[img_id], iscrowd=None)) if a["category_id"] in col]
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



def _category_subset(classes: ClassList | PathLike, cats: list[dict], ann_path: Path) -> tuple[ClassList, list[int]]:
    """``(the class list, the category id of each of its classes)``: ``classes`` (a list or a class-list file)
    matched by name with the JSON's categories; a class that is none of them is a :class:`DatasetError` naming it,
    the list and the JSON."""
    wanted = _as_class_list(classes, None)   # type: ignore[arg-type]  (classes is given)
    by_name: dict[str, int] = {}
    for c in cats:
        by_name.setdefault(c["name"], c["id"])
    unknown = [cid for cid in wanted.ids if cid not in by_name]
    if unknown:
        source = f"class list file {classes}" if isinstance(classes, (str, Path)) else "the class list"
        names = sorted(by_name)
        raise DatasetError(f"{source} names {len(unknown)} class(es) that are not categories of the COCO annotation "
                           f"file {ann_path}: {unknown[:10]}{' ...' if len(unknown) > 10 else ''} (class ids are "
                           f"category names; its {len(names)} categories: {', '.join(names[:12])}"
                           f"{' ...' if len(names) > 12 else ''})")
    return wanted, [by_name[cid] for cid in wanted.ids]
