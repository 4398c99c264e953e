"""One multi-label data set abstraction shared by every reader.

A :class:`MultiLabelDataset` holds image ids and paths, an ``(N, C)`` multi-hot label matrix, optional
per-image boxes, and the class list as two explicit mappings: class *ids* (as the annotation files
spell them, e.g. ``diningtable``) and *prompt names* (what the teacher reads, e.g. ``dining table``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import DatasetError

__all__ = ["ClassList", "MultiLabelDataset", "load_class_list"]


@dataclass(frozen=True)
class ClassList:
    """Class ids and their prompt names, in label-column order."""

    ids: tuple[str, ...]
    prompt_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.ids) == 0:
            raise DatasetError("class list is empty")
        if len(self.ids) != len(self.prompt_names):
            raise DatasetError(
                f"class list has {len(self.ids)} ids but {len(self.prompt_names)} prompt names")
        dup = sorted({c for c in self.ids if self.ids.count(c) > 1})
        if dup:
            raise DatasetError(f"duplicate class ids in class list: {dup}")
        missing = [cid for cid, pn in zip(self.ids, self.prompt_names) if not str(pn).strip()]
        if missing:
            raise DatasetError(f"prompt name missing for class(es): {missing}")

    @classmethod
    def from_mapping(cls, mapping: dict[str, str] | Sequence[str]) -> "ClassList":
        """From ``{id: prompt name}`` (order kept) or a list of ids (prompt name = id with ``_`` -> space)."""
        if isinstance(mapping, dict):
            return cls(tuple(mapping), tuple(mapping[k] if mapping[k] is not None else "" for k in mapping))
        ids = tuple(mapping)
        return cls(ids, tuple(i.replace("_", " ") for i in ids))

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, class_id: str) -> int:
        try:
            return self.ids.index(class_id)
        except ValueError:
            raise DatasetError(
                f"unknown class {class_id!r}; the class list has {list(self.ids)}") from None


def load_class_list(path: str | Path) -> ClassList:
    """Read a class list file: YAML/JSON ``{id: prompt name}`` mapping, or text lines ``id[<TAB or ,>prompt name]``."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"class list file not found: {path}")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml", ".json"):
        import yaml
        data = yaml.safe_load(text)
        if isinstance(data, dict) and "classes" in data:
            data = data["classes"]
        if isinstance(data, list) and data and isinstance(data[0], dict):
            data = {d["id"]: d.get("prompt_name", d["id"].replace("_", " ")) for d in data}
        if not isinstance(data, (dict, list)):
            raise DatasetError(f"class list file {path} must hold a mapping id -> prompt name")
        return ClassList.from_mapping(data)
    mapping: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        for sep in ("\t", ","):
            if sep in line:
                cid, pn = (s.strip() for s in line.split(sep, 1))
                break
        else:
            cid, pn = line, line.replace("_", " ")
        mapping[cid] = pn
    return ClassList.from_mapping(mapping)


@dataclass
class MultiLabelDataset:
    """A split of a multi-label data set.

    Attributes:
        name: e.g. ``"voc2007/trainval"``.
        image_ids: ``N`` unique ids.
        image_paths: ``N`` image files.
        labels: ``(N, C)`` uint8 multi-hot; 1 = present.
        classes: the class list (ids and prompt names).
        boxes: optional, per image an ``(K, 5)`` float array ``[class_index, x0, y0, x1, y1]`` in pixels.
        difficult: optional, ``(N, C)`` uint8, 1 where the class appears only as "difficult" objects (VOC).
    """

    name: str
    image_ids: list[str]
    image_paths: list[Path]
    labels: np.ndarray
    classes: ClassList
    boxes: list[np.ndarray] | None = None
    difficult: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.uint8)
        n = len(self.image_ids)
        if n == 0:
            raise DatasetError(f"data set {self.name!r} has no images")
        if len(self.image_paths) != n or self.labels.shape != (n, len(self.classes)):
            raise DatasetError(
                f"data set {self.name!r}: {n} ids, {len(self.image_paths)} paths, labels {self.labels.shape}, "
                f"{len(self.classes)} classes: sizes disagree")
        seen: set[str] = set()
        dups = [i for i in self.image_ids if i in seen or seen.add(i)]
        if dups:
            raise DatasetError(f"data set {self.name!r} has duplicate image ids: {sorted(set(dups))[:10]}")
        if self.boxes is not None and len(self.boxes) != n:
            raise DatasetError(f"data set {self.name!r}: {len(self.boxes)} box lists for {n} images")

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_ids(self) -> tuple[str, ...]:
        return self.classes.ids

    @property
    def prompt_names(self) -> tuple[str, ...]:
        return self.classes.prompt_names

    def classes_without_positives(self) -> list[str]:
        return [c for c, n in zip(self.classes.ids, self.labels.sum(0)) if n == 0]

    def subset(self, indices: Sequence[int], name: str | None = None) -> "MultiLabelDataset":
        idx = list(indices)
        return MultiLabelDataset(
            name=name or f"{self.name}[{len(idx)}]",
            image_ids=[self.image_ids[i] for i in idx],
            image_paths=[self.image_paths[i] for i in idx],
            labels=self.labels[idx],
            classes=self.classes,
            boxes=None if self.boxes is None else [self.boxes[i] for i in idx],
            difficult=None if self.difficult is None else self.difficult[idx],
            meta=dict(self.meta),
        )

    def check_files(self) -> None:
        """Raise :class:`DatasetError` naming the first listed image that is absent."""
        missing = [p for p in self.image_paths if not Path(p).is_file()]
        if missing:
            raise DatasetError(
                f"data set {self.name!r}: {len(missing)} listed image(s) are absent, e.g. {missing[0]}")
