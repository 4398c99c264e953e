"""One multi-label data set abstraction shared by every reader.

A :class:`MultiLabelDataset` holds image ids and paths, an ``(N, C)`` multi-hot label matrix, optional
per-image boxes, and the class list as two explicit mappings: class *ids* (as the annotation files
spell them, e.g. ``diningtable``) and *prompt names* (what the teacher reads, e.g. ``dining table``).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import DatasetError

__all__ = ["ClassList", "MultiLabelDataset", "load_class_list", "read_text_file"]


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
        shared: dict[str, list[str]] = {}
        for cid, pn in zip(self.ids, self.prompt_names):
            shared.setdefault(" ".join(str(pn).lower().split()), []).append(cid)
        shared = {pn: cids for pn, cids in shared.items() if len(cids) > 1}
        if shared:   # the teacher cannot tell them apart: their text embeddings are identical
            warnings.warn("classes share a prompt name, so the teacher scores them identically: "
                          + "; ".join(f"{cids} -> {pn!r}" for pn, cids in shared.items()), UserWarning, stacklevel=3)

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


def read_text_file(path: str | Path, what: str = "file") -> str:
    """The text of a user's list or annotation file, decoded as a person would expect: UTF-8 (a UTF-8 or UTF-16
    byte-order mark is honoured and dropped). Any other bytes are a :class:`DatasetError` naming the file, the
    line and the byte, rather than ids with replacement characters that match nothing."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{what} not found: {path}") from None
    except OSError as e:
        raise DatasetError(f"cannot read {what} {path}: {e}") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as e:
            raise DatasetError(f"{what} {path} starts with a UTF-16 byte-order mark but is not UTF-16: {e}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        start = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
        line = raw[:start + e.start].count(b"\n") + 1
        raise DatasetError(f"{what} {path} line {line}: byte 0x{raw[start + e.start]:02x} is not UTF-8 text; "
                           f"save the file as UTF-8") from None


def _yaml_without_duplicate_keys(text: str, path: Path) -> tuple[Any, dict]:
    """``(yaml.safe_load(text), {key: line})`` where a mapping key given twice is a :class:`DatasetError` naming
    the file and line (PyYAML keeps the last one silently). Keys keep their YAML types (a caller checks they are
    strings)."""
    key_lines: dict = {}
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def construct_mapping(loader, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise DatasetError(f"class list file {path} line {key_node.start_mark.line + 1}: a key that is a "
                                   f"list or mapping") from None
            if key in seen:
                raise DatasetError(f"class list file {path} line {key_node.start_mark.line + 1}: {key!r} is given "
                                   f"twice (first on line {seen[key]})")
            seen[key] = key_node.start_mark.line + 1
            key_lines.setdefault(key, seen[key])
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    try:
        return yaml.load(text, Loader=Loader), key_lines  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        raise DatasetError(f"class list file {path} is not valid YAML/JSON: {e}") from None


def _class_entries_from_yaml(data: Any, lines: dict, path: Path) -> list[tuple[Any, Any, int | None]]:
    """``[(id, prompt name, line or None), ...]`` from a parsed YAML/JSON class list (``lines``: key -> line)."""
    if isinstance(data, dict) and "classes" in data:
        data = data["classes"]
    if isinstance(data, dict):
        return [(k, v, lines.get(k)) for k, v in data.items()]
    if isinstance(data, list):
        out = []
        for k, d in enumerate(data):
            if isinstance(d, dict):
                if "id" not in d:
                    raise DatasetError(f"class list file {path}: entry #{k + 1} has no 'id' key")
                cid = d["id"]
                out.append((cid, d.get("prompt_name", cid.replace("_", " ") if isinstance(cid, str) else cid), None))
            else:
                out.append((d, d.replace("_", " ") if isinstance(d, str) else d, None))
        return out
    raise DatasetError(f"class list file {path} must hold a mapping id -> prompt name (or a list of ids); "
                       f"it holds {type(data).__name__}")


def load_class_list(path: str | Path) -> ClassList:
    """Read a class list file: YAML/JSON ``{id: prompt name}`` mapping, or text lines ``id[<TAB or ,>prompt name]``.

    Text is decoded by :func:`read_text_file` (UTF-8, a byte-order mark dropped). Refused with a
    :class:`DatasetError` naming the file (and the line where it can): an empty list, a class id given twice, an
    id or prompt name that is not a string (YAML reads ``yes``, ``no``, ``1`` or ``null`` as other types: quote
    them), a malformed YAML/JSON file. Two classes sharing a prompt name are warned (:class:`ClassList`).
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"class list file not found: {path}")
    text = read_text_file(path, "class list file")
    entries: list[tuple[Any, Any, int | None]] = []
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        data, lines = _yaml_without_duplicate_keys(text, path)
        if data is None:
            raise DatasetError(f"class list file {path} is empty")
        entries = _class_entries_from_yaml(data, lines, path)
    else:
        for lineno, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            for sep in ("\t", ","):
                if sep in line:
                    cid, pn = (s.strip() for s in line.split(sep, 1))
                    break
            else:
                cid, pn = line, line.replace("_", " ")
            entries.append((cid, pn, lineno))
    if not entries:
        raise DatasetError(f"class list file {path} lists no class")
    seen: dict[str, str] = {}
    for cid, pn, lineno in entries:
        where = f"class list file {path}" + (f" line {lineno}" if lineno else "")
        if not isinstance(cid, str) or not cid.strip():
            raise DatasetError(f"{where}: class id {cid!r} is {type(cid).__name__}, not a non-empty string "
                               f"(quote it)")
        if pn is not None and not isinstance(pn, str):
            raise DatasetError(f"{where}: prompt name {pn!r} of class {cid!r} is {type(pn).__name__}, not a string "
                               f"(quote it)")
        if cid in seen:
            raise DatasetError(f"{where}: class id {cid!r} is given twice (first at {seen[cid]})")
        seen[cid] = f"line {lineno}" if lineno else "an earlier entry"
    try:
        return ClassList(tuple(c for c, _, _ in entries), tuple("" if p is None else p for _, p, _ in entries))
    except DatasetError as e:
        raise DatasetError(f"class list file {path}: {e}") from None


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
