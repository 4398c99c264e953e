"""The mosaic class set: the class-set YAML parsed into a :class:`MosaicSpec`, and the set's splits and
stamp protocols."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..datasets import ClassList
from ..errors import DatasetError

DEFAULT_CLASSES_FILE = Path(__file__).resolve().parent.parent / "data" / "mosaic_classes.yaml"
SPLITS: tuple[str, ...] = ("train", "test")
STAMP_PROTOCOLS: tuple[str, ...] = ("disjoint", "shared")

_BOX = tuple[int, int, int, int]


# ------------------------------------------------------------------------------------ class set
@dataclass(frozen=True)
class MosaicSpec:
    """The parsed class-set file: classes, where their stamps are, and the backgrounds kept."""

    classes: ClassList
    folders: dict[str, tuple[str, ...]]
    include: dict[str, tuple[str, ...] | None]
    exclude: dict[str, tuple[str, ...]]
    test: dict[str, tuple[str, ...] | None]
    min_stamp_size: int
    backgrounds: tuple[tuple[str, _BOX | None], ...]
    path: Path
    sha256: str


def load_mosaic_spec(classes_file: str | Path | None = None) -> MosaicSpec:
    """Read the class-set YAML (default :data:`DEFAULT_CLASSES_FILE`).

    Raises:
        DatasetError: the file is absent or malformed (the message names the key at fault).
    """
    import yaml

    path = Path(classes_file) if classes_file is not None else DEFAULT_CLASSES_FILE
    if not path.is_file():
        raise DatasetError(f"mosaic class-set file not found: {path}")
    raw = path.read_bytes()
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise DatasetError(f"mosaic class-set file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("classes"), dict) or not data["classes"]:
        raise DatasetError(f"mosaic class-set file {path} needs a non-empty 'classes' mapping")

    def names(value, where: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DatasetError(f"{path}: {where} must be a list of strings")
        return tuple(value)

    ids, prompts = [], []
    folders, include, exclude, test = {}, {}, {}, {}
    for cid, entry in data["classes"].items():
        cid = str(cid)
        if not isinstance(entry, dict):
            raise DatasetError(f"{path}: class {cid!r} must be a mapping with prompt_name and folders")
        ids.append(cid)
        prompts.append(str(entry.get("prompt_name") or cid.replace("_", " ")))
        folders[cid] = names(entry.get("folders"), f"classes.{cid}.folders")
        if not folders[cid]:
            raise DatasetError(f"{path}: class {cid!r} lists no stamp folders")
        include[cid] = names(entry["include"], f"classes.{cid}.include") if "include" in entry else None
        exclude[cid] = names(entry.get("exclude"), f"classes.{cid}.exclude")
        test[cid] = names(entry["test"], f"classes.{cid}.test") if "test" in entry else None

    backgrounds = []
    for k, bg in enumerate(data.get("backgrounds") or []):
        if isinstance(bg, str):
            bg = {"file": bg}
        if not isinstance(bg, dict) or not isinstance(bg.get("file"), str):
            raise DatasetError(f"{path}: backgrounds[{k}] must be a file name or {{file: ..., box: ...}}")
        box = bg.get("box")
        if box is not None:
            if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int) for v in box)
                    and box[0] < box[2] and box[1] < box[3]):
                raise DatasetError(f"{path}: backgrounds[{k}].box must be [x0, y0, x1, y1] integers")
            box = tuple(box)
        backgrounds.append((bg["file"], box))
    if not backgrounds:
        raise DatasetError(f"mosaic class-set file {path} lists no backgrounds")

    return MosaicSpec(
        classes=ClassList(tuple(ids), tuple(prompts)),
        folders=folders, include=include, exclude=exclude, test=test,
        min_stamp_size=int(data.get("min_stamp_size", 0)),
        backgrounds=tuple(backgrounds),
        path=path,
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def mosaic_class_list(classes_file: str | Path | None = None) -> ClassList:
    """The mosaic classes (ids and prompt names) in label-column order."""
    return load_mosaic_spec(classes_file).classes
