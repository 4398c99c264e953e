"""The reader registry: data set kind -> reader (:data:`READERS`), :func:`register_reader` and
:func:`load_dataset`."""
from __future__ import annotations

import functools
from typing import Any, Callable

from ..datasets import MultiLabelDataset
from ..errors import DatasetError
from .coco import read_coco
from .common import PathLike
from .nuswide import read_nuswide
from .voc import read_voc

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
