"""NUS-WIDE reader (:func:`read_nuswide`, 81 concepts, from the released text files)."""
from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from ..datasets import ClassList, MultiLabelDataset
from ..errors import DatasetError
from .common import (PathLike, _as_class_list, _check_ids, _read_lines, _read_numbered_lines, _require_dir,
                     _warn_empty_classes)

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
        classes: the concepts to read, in label-column order (a :class:`ClassList` or a class-list file,
            ``data.classes``; a subset or a renaming of the prompts): ids are concept names (each read from its
            ``Labels_<concept>_*.txt``; one without that file is a :class:`DatasetError` naming it). Default:
            ``Concepts81.txt`` when present (its order defines the label columns), else :data:`NUSWIDE_CLASSES`.
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
            source = f"class list file {classes}" if isinstance(classes, (str, Path)) else "the class list"
            listed = "" if classes is None else f" ({source} names it; class ids must be NUS-WIDE concept names)"
            raise DatasetError(f"NUS-WIDE label file for concept {concept!r} not found: {lf}{listed}")
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

