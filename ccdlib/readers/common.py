"""Helpers shared by the data-set readers: class-list argument, folder and split-id checks, the empty-class
warning, text-line readers and the box check/clip. Every name here is private to :mod:`ccdlib.readers`."""
from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from ..datasets import ClassList, MultiLabelDataset, load_class_list, read_text_file
from ..errors import DatasetError

PathLike = str | Path


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
