"""The embedded default data set: "stamp mosaics" built on the fly from real photos.

Every mosaic is a random crop of a background photo with 2-4 object photos ("stamps", cut-outs with an
alpha channel) of distinct classes pasted on it, so its multi-hot labels, boxes and object masks are
exact by construction. The photos come from two Debian packages, fetched on first use:

* ``tuxpaint-stamps-default``: ~350 real-photo cut-outs, PNG with alpha, in labelled folders under
  ``usr/share/tuxpaint/stamps/``;
* ``tuxpaint-data``: background photos ``usr/share/tuxpaint/templates/*.jpg``.

The class set is data: ``ccdlib/data/mosaic_classes.yaml`` maps each class id to its prompt name, its
stamp folders and optional include/exclude lists, and lists the background photos kept. Stamps of each
class are split into disjoint train and test pools (:func:`split_pools`); backgrounds are shared.

Two stamp protocols (``stamps``, :data:`STAMP_PROTOCOLS`):

* ``"disjoint"`` (default): train and test mosaics draw from the disjoint pools, so every test object is a
  photo never seen in training (the student must generalise from ~7 photos per class).
* ``"shared"``: both splits draw from every usable stamp of a class (the union of the two pools), so test
  mosaics show the same object photos as training, in new scenes: other backgrounds, positions, scales,
  flips and partners (each image has its own random stream, so no test image repeats a training one).

The protocol is a build parameter: it is recorded in ``mosaic.json`` (``params.stamps`` and the ``pools``
actually used) and a shared-stamp set gets its own default folder (suffix ``-shared``), so sets built with
different protocols never collide.

Output layout (Pascal VOC, readable by :func:`ccdlib.readers.read_voc` with the set's own class list)::

    <out>/JPEGImages/<id>.jpg            # image_size x image_size RGB, JPEG quality 95
    <out>/Annotations/<id>.xml           # VOC xml; bndbox 1-based inclusive, difficult=0, truncated=0
    <out>/SegmentationObject/<id>.png    # palette PNG: 0 background, k = the k-th <object> of the xml
    <out>/ImageSets/Main/train.txt       # ids train_000000 ...
    <out>/ImageSets/Main/test.txt        # ids test_000000 ...
    <out>/classes.yaml                   # {class id: prompt name}, label-column order
    <out>/mosaic.json                    # build parameters, stamp pools and a per-image manifest

Conventions:

* An object's *mask* is the set of pixels where its resized stamp has alpha >= 128 (:data:`MASK_ALPHA`)
  and no later stamp (alpha >= 128) covers it: the *visible* part. Faint stamp halos (alpha < 128,
  often a few pixels wide) are blended into the picture but belong to no mask, so they do not inflate
  boxes.
* An object's box is the tight box of its visible mask, ``[x0, y0, x1, y1]`` 0-based with x1, y1
  exclusive in ``mosaic.json`` (what :func:`ccdlib.readers.read_voc` returns), and
  ``xmin = x0 + 1, ymin = y0 + 1, xmax = x1, ymax = y1`` in the VOC xml.
* Every image is drawn from its own ``numpy.random.Generator`` seeded with
  ``SeedSequence([seed, split_index, image_index])`` (train 0, test 1), so a build is reproducible
  byte for byte for a seed (given the same Pillow/libjpeg/zlib) and an image does not depend on how
  many others are built.

Building is skipped when ``<out>/mosaic.json`` already records the same parameters; otherwise the
set is written to a temporary sibling folder and renamed into place, so a killed build leaves nothing
that a later run trusts. :func:`embedded_dataset` builds under
``<cache>/mosaics/s<seed>-n<train>-<test>-<size>px`` (cache = :func:`ccdlib.cache.default_cache_dir`)
unless given ``root``.

Command line (wired as ``python -m ccdlib data mosaic``)::

    python -m ccdlib data mosaic --out DIR --train 400 --test 200 --seed 0 [--image-size 448] [--stamps shared]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from .cache import check_writable_dir, clean_stale_temp_dirs, default_cache_dir, make_temp_dir
from .debian import sudo_prefix
from .datasets import ClassList, MultiLabelDataset
from .errors import CCDError, DatasetError, DataSetupError
from .readers import read_voc, register_reader

__all__ = [
    "DEFAULT_CLASSES_FILE",
    "TUXPAINT_PACKAGES",
    "MosaicSpec",
    "load_mosaic_spec",
    "mosaic_class_list",
    "find_tuxpaint",
    "list_stamps",
    "split_pools",
    "protocol_pools",
    "STAMP_PROTOCOLS",
    "build_mosaics",
    "read_mosaic",
    "embedded_dataset",
    "default_mosaic_root",
    "cli_main",
    "main",
]

DEFAULT_CLASSES_FILE = Path(__file__).resolve().parent / "data" / "mosaic_classes.yaml"
TUXPAINT_PACKAGES: tuple[str, ...] = ("tuxpaint-stamps-default", "tuxpaint-data")
SYSTEM_TUXPAINT = Path("/usr/share/tuxpaint")

FORMAT_VERSION = 1          # bump when the drawing procedure changes: old builds are then rebuilt
MASK_ALPHA = 128            # alpha at or above which a stamp pixel belongs to the object's mask
JPEG_QUALITY = 95
MIN_CROP_FRACTION = 0.6     # background crop side, as a fraction of the background's shorter side
MAX_OCCLUSION = 0.3         # a new stamp may hide at most this fraction of an earlier object
PLACEMENT_TRIES = 20        # random positions tried per stamp before taking the least occluding one
TEST_EVERY = 3              # every 3rd stamp of a class (sorted by path) goes to the test pool
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


# ------------------------------------------------------------------------------- finding sources
def _has_assets(root: Path) -> bool:
    return (root / "stamps").is_dir() and (root / "templates").is_dir()


def _manual_hint(target: Path) -> str:
    pk = " ".join(TUXPAINT_PACKAGES)
    return (f"Install the Debian packages ({sudo_prefix()}apt-get install {pk}), which provide "
            f"{SYSTEM_TUXPAINT}; or on another system fetch their two .deb files and unpack them "
            f"(dpkg-deb -x, or ar + tar) into {target}, so that {target}/usr/share/tuxpaint/stamps exists")


def find_tuxpaint(cache_dir: str | Path | None = None) -> Path:
    """The ``usr/share/tuxpaint`` folder holding ``stamps/`` and ``templates/``, fetching it if needed.

    Looks, in order, at ``/usr/share/tuxpaint`` (the packages installed) and at
    ``<cache_dir>/tuxpaint/usr/share/tuxpaint`` (cache_dir default :func:`default_cache_dir`). Failing
    both, runs ``apt-get download tuxpaint-stamps-default tuxpaint-data`` in ``<cache_dir>/debs``
    (about 170 MB; .deb files already there are reused) and unpacks them with ``dpkg-deb -x`` into a
    temporary folder renamed to ``<cache_dir>/tuxpaint`` when complete; the .deb files are then
    deleted.

    Raises:
        DataSetupError: apt-get or dpkg-deb absent, package lists missing (run ``apt-get update``),
            the download or the unpacking failed; the message says what to run or install.
    """
    from .debian import find_or_fetch
    return find_or_fetch(TUXPAINT_PACKAGES, system=SYSTEM_TUXPAINT, subdir="usr/share/tuxpaint", cache_dir=cache_dir,
                         name="tuxpaint", ok=_has_assets, what="the embedded mosaic data set", hint=_manual_hint,
                         size="170 MB")


# ------------------------------------------------------------------------------------- stamps
@lru_cache(maxsize=1024)
def _load_stamp_cached(path: str, mtime_ns: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        rgba = np.asarray(im.convert("RGBA"))
    ys, xs = np.nonzero(rgba[..., 3] >= MASK_ALPHA)
    if len(xs) == 0:
        return rgba[:0, :0].copy()
    arr = rgba[ys.min():ys.max() + 1, xs.min():xs.max() + 1].copy()
    arr.setflags(write=False)
    return arr


def _load_stamp(path: Path) -> np.ndarray:
    """A stamp as an RGBA uint8 array cropped to the box of its pixels with alpha >= :data:`MASK_ALPHA`."""
    return _load_stamp_cached(str(path), path.stat().st_mtime_ns)


def list_stamps(source: str | Path,
                classes_file: str | Path | MosaicSpec | None = None) -> dict[str, list[str]]:
    """Per class id, the usable stamps as paths relative to ``<source>/stamps``, sorted.

    A stamp is usable if it is a ``*.png`` directly inside one of the class's folders, is not a
    mirrored copy (``*_mirror*``), passes the class's include/exclude lists, and its opaque part has a
    longer side of at least ``min_stamp_size`` pixels.
    """
    spec = classes_file if isinstance(classes_file, MosaicSpec) else load_mosaic_spec(classes_file)
    stamps_root = Path(source) / "stamps"
    out: dict[str, list[str]] = {}
    for cid in spec.classes.ids:
        found: set[str] = set()
        for folder in spec.folders[cid]:
            d = stamps_root / folder
            if not d.is_dir():
                warnings.warn(f"mosaic class {cid!r}: stamp folder {d} does not exist", UserWarning)
                continue
            for p in d.glob("*.png"):
                if "_mirror" in p.stem or p.stem in spec.exclude[cid]:
                    continue
                if spec.include[cid] is not None and p.stem not in spec.include[cid]:
                    continue
                stamp = _load_stamp(p)
                if stamp.size == 0 or max(stamp.shape[:2]) < spec.min_stamp_size:
                    continue
                found.add(p.relative_to(stamps_root).as_posix())
        if spec.include[cid] is not None:
            absent = sorted(set(spec.include[cid]) - {Path(s).stem for s in found})
            if absent:
                warnings.warn(f"mosaic class {cid!r}: included stamp(s) {absent} not found or too small",
                              UserWarning)
        out[cid] = sorted(found)
    return out


def split_pools(
    stamps: dict[str, list[str]],
    test_stamps: dict[str, Sequence[str] | None] | None = None,
) -> dict[str, dict[str, list[str]]]:
    """Split each class's stamps into disjoint train and test pools, deterministically.

    Sorted by path, every :data:`TEST_EVERY`-th stamp (positions 2, 5, 8, ...) goes to test, the rest
    to train; a class with 2 stamps puts its last one in test. ``test_stamps[cid]`` (basenames, the
    class-set file's optional ``test:`` list) overrides the rule for a class. Raises
    :class:`DatasetError` for a class with fewer than 2 stamps or an override that leaves a pool empty.
    """
    pools: dict[str, dict[str, list[str]]] = {s: {} for s in SPLITS}
    for cid, names in stamps.items():
        names = sorted(names)
        if len(names) < 2:
            raise DatasetError(
                f"mosaic class {cid!r} has {len(names)} usable stamp(s); it needs at least 2 so that "
                f"train and test stamps can differ (check the class-set file and the tuxpaint packages)")
        chosen = (test_stamps or {}).get(cid)
        if chosen is not None:
            test = [n for n in names if Path(n).stem in set(chosen)]
            if not test or len(test) == len(names):
                raise DatasetError(
                    f"mosaic class {cid!r}: the test stamps {list(chosen)} leave the "
                    f"{'test' if not test else 'train'} pool empty (usable stamps: {names})")
        else:
            test = [n for i, n in enumerate(names) if i % TEST_EVERY == TEST_EVERY - 1] or names[-1:]
        pools["test"][cid] = test
        pools["train"][cid] = [n for n in names if n not in test]
    return pools


def protocol_pools(pools: dict[str, dict[str, list[str]]], stamps: str = "disjoint"
                   ) -> dict[str, dict[str, list[str]]]:
    """The stamp pools each split draws from under a stamp protocol (see the module docstring).

    ``pools``: :func:`split_pools`'s disjoint train/test pools. ``"disjoint"`` returns them unchanged;
    ``"shared"`` gives both splits, per class, the sorted union of the two pools. Raises
    :class:`DatasetError` for an unknown protocol.
    """
    if stamps not in STAMP_PROTOCOLS:
        raise DatasetError(f"stamps={stamps!r}: the stamp protocol must be one of {list(STAMP_PROTOCOLS)}")
    if stamps == "disjoint":
        return pools
    union = {cid: sorted(set(pools["train"][cid]) | set(pools["test"][cid])) for cid in pools["train"]}
    return {split: {cid: list(names) for cid, names in union.items()} for split in SPLITS}


# ------------------------------------------------------------------------------------- drawing
@dataclass(frozen=True)
class _Params:
    n_train: int
    n_test: int
    seed: int
    image_size: int
    min_objects: int
    max_objects: int
    min_scale: float
    max_scale: float
    stamps: str = "disjoint"

    def as_dict(self, spec: MosaicSpec) -> dict:
        d = dict(self.__dict__)
        d.update(format_version=FORMAT_VERSION, classes_sha256=spec.sha256, jpeg_quality=JPEG_QUALITY,
                 mask_alpha=MASK_ALPHA, max_occlusion=MAX_OCCLUSION, min_crop_fraction=MIN_CROP_FRACTION)
        return d


def _check_params(p: _Params, num_classes: int) -> None:
    if p.n_train < 0 or p.n_test < 0 or p.n_train + p.n_test == 0:
        raise DatasetError(f"n_train={p.n_train}, n_test={p.n_test}: need non-negative counts, not both 0")
    if p.image_size < 32:
        raise DatasetError(f"image_size={p.image_size}: must be at least 32")
    if not 1 <= p.min_objects <= p.max_objects <= num_classes:
        raise DatasetError(
            f"min_objects={p.min_objects}, max_objects={p.max_objects}: need 1 <= min <= max <= "
            f"{num_classes} (the number of classes)")
    if not 0.0 < p.min_scale <= p.max_scale <= 1.0:
        raise DatasetError(f"min_scale={p.min_scale}, max_scale={p.max_scale}: need 0 < min <= max <= 1")
    if p.stamps not in STAMP_PROTOCOLS:
        raise DatasetError(f"stamps={p.stamps!r}: the stamp protocol must be one of {list(STAMP_PROTOCOLS)}")


def _resize_rgba(stamp: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an RGBA array to ``(width, height)`` with premultiplied alpha (no dark fringes)."""
    from PIL import Image

    im = Image.fromarray(stamp, "RGBA").convert("RGBa").resize(size, Image.Resampling.LANCZOS)
    return np.asarray(im.convert("RGBA"))


def _crop_background(bg, box: _BOX, size: int, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    from PIL import Image

    x0, y0, x1, y1 = box
    short = min(x1 - x0, y1 - y0)
    side = int(round(short * rng.uniform(MIN_CROP_FRACTION, 1.0)))
    cx = x0 + int(rng.integers(0, x1 - x0 - side + 1))
    cy = y0 + int(rng.integers(0, y1 - y0 - side + 1))
    crop = [cx, cy, cx + side, cy + side]
    im = bg.crop(tuple(crop)).resize((size, size), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop.append(1)
    else:
        crop.append(0)
    return np.asarray(im, dtype=np.uint8).copy(), crop


def _draw_one(rng: np.random.Generator, p: _Params, pools: dict[str, list[str]], class_ids: Sequence[str],
              stamps_root: Path, backgrounds: list[tuple[str, object, _BOX]]):
    """One mosaic: ``(rgb uint8 (S,S,3), object map uint8 (S,S), record dict)``."""
    S = p.image_size
    bg_name, bg_img, bg_box = backgrounds[int(rng.integers(len(backgrounds)))]
    canvas, crop = _crop_background(bg_img, bg_box, S, rng)
    canvas = canvas.astype(np.uint16)
    objmap = np.zeros((S, S), dtype=np.uint8)   # k = object k (1-based), 0 = background
    full_area: list[int] = []

    k = int(rng.integers(p.min_objects, p.max_objects + 1))
    chosen = rng.choice(len(class_ids), size=k, replace=False)
    objects = []
    for j, c in enumerate(chosen, start=1):
        cid = class_ids[int(c)]
        pool = pools[cid]
        rel = pool[int(rng.integers(len(pool)))]
        stamp = _load_stamp(stamps_root / rel)
        h0, w0 = stamp.shape[:2]
        scale = float(rng.uniform(p.min_scale, p.max_scale))
        long_side = max(2, int(round(scale * S)))
        f = long_side / max(h0, w0)
        w, h = max(1, min(S, int(round(w0 * f)))), max(1, min(S, int(round(h0 * f))))
        flip = bool(rng.random() < 0.5)
        rgba = _resize_rgba(stamp, (w, h))
        if flip:
            rgba = rgba[:, ::-1]
        alpha = rgba[..., 3].astype(np.uint16)
        mask = rgba[..., 3] >= MASK_ALPHA
        if not mask.any():   # vanishingly thin after resizing: take the most opaque pixel
            mask = rgba[..., 3] == rgba[..., 3].max()

        # Placement: the first random position that leaves every earlier object at most MAX_OCCLUSION
        # hidden (in total), else the least occluding of PLACEMENT_TRIES positions.
        best, best_cost = None, None
        if j > 1:
            visible = np.bincount(objmap.ravel(), minlength=j)[1:j].astype(np.float64)
            full = np.asarray(full_area, dtype=np.float64)
        for _ in range(PLACEMENT_TRIES):
            x = int(rng.integers(0, S - w + 1))
            y = int(rng.integers(0, S - h + 1))
            if j == 1:
                best = (x, y)
                break
            hidden = np.bincount(objmap[y:y + h, x:x + w][mask], minlength=j)[1:j]
            cost = float(np.max(1.0 - (visible - hidden) / full))   # worst total hidden fraction
            if best_cost is None or cost < best_cost:
                best, best_cost = (x, y), cost
            if cost <= MAX_OCCLUSION:
                break
        x, y = best

        region = canvas[y:y + h, x:x + w]
        rgb = rgba[..., :3].astype(np.uint16)
        a = alpha[..., None]
        region[:] = (rgb * a + region * (255 - a) + 127) // 255
        objmap[y:y + h, x:x + w][mask] = j
        full_area.append(int(mask.sum()))
        objects.append({"class": cid, "stamp": rel, "flip": flip, "scale": round(scale, 6),
                        "position": [x, y], "size": [w, h]})

    # Boxes and visibility from the final object map; objects hidden entirely are dropped.
    kept, newmap = [], np.zeros_like(objmap)
    for j, obj in enumerate(objects, start=1):
        vis = objmap == j
        n = int(vis.sum())
        if n == 0:
            continue
        ys, xs = np.nonzero(vis)
        obj["box"] = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
        obj["visible_fraction"] = round(n / full_area[j - 1], 4)
        kept.append(obj)
        newmap[vis] = len(kept)
    record = {"background": bg_name, "crop": crop, "objects": kept}
    return canvas.astype(np.uint8), newmap, record


_VOC_PALETTE = None


def _voc_palette() -> list[int]:
    """The Pascal VOC colour map (256 entries), so object PNGs look like VOC's."""
    global _VOC_PALETTE
    if _VOC_PALETTE is None:
        pal = []
        for i in range(256):
            r = g = b = 0
            c = i
            for k in range(8):
                r |= ((c >> 0) & 1) << (7 - k)
                g |= ((c >> 1) & 1) << (7 - k)
                b |= ((c >> 2) & 1) << (7 - k)
                c >>= 3
            pal += [r, g, b]
        _VOC_PALETTE = pal
    return _VOC_PALETTE


def _voc_xml(image_id: str, size: int, objects: list[dict]) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "mosaic"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    src = ET.SubElement(root, "source")
    ET.SubElement(src, "database").text = "ccdlib stamp mosaics"
    ET.SubElement(src, "annotation").text = "generated"
    ET.SubElement(src, "image").text = "tuxpaint"
    sz = ET.SubElement(root, "size")
    ET.SubElement(sz, "width").text = str(size)
    ET.SubElement(sz, "height").text = str(size)
    ET.SubElement(sz, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "1"
    for obj in objects:
        o = ET.SubElement(root, "object")
        ET.SubElement(o, "name").text = obj["class"]
        ET.SubElement(o, "pose").text = "Unspecified"
        ET.SubElement(o, "truncated").text = "0"
        ET.SubElement(o, "difficult").text = "0"
        bb = ET.SubElement(o, "bndbox")
        x0, y0, x1, y1 = obj["box"]
        for tag, v in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bb, tag).text = str(v)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8") + b"\n"


def _assets_sha256(stamps_root: Path, pools: dict, backgrounds: list[tuple[str, object, _BOX]],
                   templates: Path) -> str:
    h = hashlib.sha256()
    files = sorted({s for split in pools.values() for names in split.values() for s in names})
    for rel in files:
        h.update(rel.encode() + b"\0" + hashlib.sha256((stamps_root / rel).read_bytes()).digest())
    for name, _, _ in backgrounds:
        h.update(name.encode() + b"\0" + hashlib.sha256((templates / name).read_bytes()).digest())
    return h.hexdigest()


def _existing_params(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / "mosaic.json").read_text())["params"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _param_differences(old: dict, new: dict) -> str:
    """``"seed 0 -> 1, n_train 16 -> 8"``: the build parameters that differ, old value first."""
    out = []
    for k in list(new) + sorted(set(old) - set(new)):
        if old.get(k, "<absent>") != new.get(k, "<absent>"):
            out.append(f"{k} {old.get(k, '<absent>')} -> {new.get(k, '<absent>')}")
    return ", ".join(out)


def _builder_files(out_dir: Path) -> set[str]:
    """The paths (relative, posix) of every file and folder a build wrote in ``out_dir``, from its
    ``mosaic.json`` (empty if that cannot be read)."""
    try:
        ids = list(json.loads((out_dir / "mosaic.json").read_text())["images"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    made = {"mosaic.json", "classes.yaml", "JPEGImages", "Annotations", "SegmentationObject", "ImageSets",
            "ImageSets/Main"} | {f"ImageSets/Main/{split}.txt" for split in SPLITS}
    for i in ids:
        made |= {f"JPEGImages/{i}.jpg", f"Annotations/{i}.xml", f"SegmentationObject/{i}.png"}
    return made


def _refuse_foreign(out_dir: Path) -> None:
    """Raise if ``out_dir`` holds a file or folder that the build recorded in its ``mosaic.json`` did not write."""
    made = _builder_files(out_dir)
    foreign = []
    for dirpath, dirnames, filenames in os.walk(out_dir):
        rel_dir = Path(dirpath).relative_to(out_dir)
        foreign += [(rel_dir / n).as_posix() for n in dirnames + filenames if (rel_dir / n).as_posix() not in made]
    if foreign:
        foreign.sort()
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise DatasetError(
            f"{out_dir} holds {len(foreign)} file(s) the mosaic builder did not write ({shown}); refusing to "
            f"replace it, as that would delete them: move them elsewhere or pick another folder")


def build_mosaics(
    out_dir: str | Path,
    *,
    n_train: int = 400,
    n_test: int = 200,
    seed: int = 0,
    image_size: int = 448,
    min_objects: int = 2,
    max_objects: int = 4,
    min_scale: float = 0.25,
    max_scale: float = 0.5,
    stamps: str = "disjoint",
    source: str | Path | None = None,
    classes_file: str | Path | None = None,
    progress: bool = True,
    rebuild: bool = False,
) -> Path:
    """Build the mosaic data set in VOC layout under ``out_dir`` (see the module docstring); return it.

    Args:
        out_dir: the data set folder. A build with the same parameters there is reused; one with other
            parameters is refused (the message names the differing parameters) unless ``rebuild``; an
            existing non-empty folder without ``mosaic.json`` is refused. Nothing the builder did not
            write is ever deleted: a set holding other files is refused even with ``rebuild``.
        n_train, n_test: number of mosaics per split (``stamps="disjoint"``: train and test stamps never overlap).
        seed: the seed of every random choice.
        image_size: side of the square images, in pixels.
        min_objects, max_objects: number of objects per image, drawn uniformly; their classes are
            distinct and drawn uniformly.
        min_scale, max_scale: the longer side of each object, as a fraction of ``image_size``, drawn
            uniformly.
        stamps: the stamp protocol: ``"disjoint"`` (train and test stamps never overlap) or ``"shared"``
            (both splits draw from every stamp: the same object photos in new scenes); see the module docstring.
        source: a ``usr/share/tuxpaint`` folder; default :func:`find_tuxpaint` (may download).
        classes_file: the class-set YAML; default :data:`DEFAULT_CLASSES_FILE`.
        progress: show a tqdm bar and print when a build is reused.
        rebuild: replace a set built with other parameters (``--rebuild``, ``data.rebuild``).

    Stale temporary folders (``.<name>.tmp-*``) that a killed build left beside ``out_dir`` are removed first.
    Folders and files are created with the process's umask (a shared data set stays readable).
    """
    spec = load_mosaic_spec(classes_file)
    p = _Params(int(n_train), int(n_test), int(seed), int(image_size), int(min_objects),
                int(max_objects), float(min_scale), float(max_scale), str(stamps))
    _check_params(p, len(spec.classes))
    params = p.as_dict(spec)
    out_dir = Path(out_dir)

    if out_dir.exists():
        old = _existing_params(out_dir)
        if old == params:
            if progress:
                print(f"ccdlib: reusing the mosaic data set in {out_dir} (same parameters)", file=sys.stderr)
            return out_dir
        if old is None and (not out_dir.is_dir() or any(out_dir.iterdir())):
            raise DatasetError(
                f"{out_dir} exists and is not a mosaic data set (no readable mosaic.json); refusing to "
                f"overwrite it: pick another folder or delete it")
        if old is not None and not rebuild:
            raise DatasetError(
                f"{out_dir} holds a mosaic data set built with other parameters "
                f"({_param_differences(old, params)}); refusing to replace it: rebuild it with --rebuild "
                f"(data.rebuild: true, build_mosaics(rebuild=True)) or pick another folder")
        if old is not None:
            _refuse_foreign(out_dir)
    check_writable_dir(out_dir.parent, "mosaic output folder")
    for stale in (f".{out_dir.name}.tmp-", f".{out_dir.name}.old-"):
        for d in clean_stale_temp_dirs(out_dir.parent, stale):
            if progress:
                print(f"ccdlib: removed {d}, left by a killed build", file=sys.stderr)

    src = Path(source) if source is not None else find_tuxpaint()
    if not _has_assets(src):
        raise DataSetupError(f"{src} holds no stamps/ and templates/ folders (a usr/share/tuxpaint folder)")
    stamps_root, templates = src / "stamps", src / "templates"
    pools = protocol_pools(split_pools(list_stamps(src, spec), spec.test), p.stamps)

    from PIL import Image

    backgrounds = []
    for name, box in spec.backgrounds:
        path = templates / name
        if not path.is_file():
            raise DataSetupError(f"background photo {path} (listed in {spec.path}) is absent")
        with Image.open(path) as im:
            im = im.convert("RGB")
        box = box or (0, 0, im.width, im.height)
        if box[2] > im.width or box[3] > im.height:
            raise DatasetError(f"{spec.path}: box {list(box)} of {name} exceeds its size {im.size}")
        backgrounds.append((name, im, box))

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out_dir.parent, f".{out_dir.name}.tmp-")
    try:
        for sub in ("JPEGImages", "Annotations", "SegmentationObject", "ImageSets/Main"):
            (tmp / sub).mkdir(parents=True)
        palette = _voc_palette()
        class_ids = spec.classes.ids
        manifest: dict[str, dict] = {}
        jobs = [(si, split, i) for si, (split, n) in enumerate(zip(SPLITS, (p.n_train, p.n_test)))
                for i in range(n)]
        from tqdm.auto import tqdm

        for si, split, i in tqdm(jobs, desc="mosaics", unit="img", disable=not progress):
            rng = np.random.default_rng(np.random.SeedSequence([p.seed, si, i]))
            rgb, objmap, record = _draw_one(rng, p, pools[split], class_ids, stamps_root, backgrounds)
            image_id = f"{split}_{i:06d}"
            Image.fromarray(rgb, "RGB").save(tmp / "JPEGImages" / f"{image_id}.jpg", quality=JPEG_QUALITY)
            seg = Image.fromarray(objmap, "P")
            seg.putpalette(palette)
            seg.save(tmp / "SegmentationObject" / f"{image_id}.png", optimize=False)
            (tmp / "Annotations" / f"{image_id}.xml").write_bytes(
                _voc_xml(image_id, p.image_size, record["objects"]))
            manifest[image_id] = {"split": split, **record}
        for split, n in zip(SPLITS, (p.n_train, p.n_test)):
            (tmp / "ImageSets" / "Main" / f"{split}.txt").write_text(
                "".join(f"{split}_{i:06d}\n" for i in range(n)))
        (tmp / "classes.yaml").write_text(
            "# class id: prompt name (label-column order); written by ccdlib.mosaic\n"
            + "".join(f"{cid}: {json.dumps(pn)}\n" for cid, pn in zip(class_ids, spec.classes.prompt_names)))
        info = {
            "params": params,
            "sources": {"packages": list(TUXPAINT_PACKAGES),
                        "assets_sha256": _assets_sha256(stamps_root, pools, backgrounds, templates)},
            "classes": dict(zip(class_ids, spec.classes.prompt_names)),
            "pools": pools,
            "backgrounds": [{"file": n, "box": list(b)} for n, _, b in backgrounds],
            "conventions": {"box": "[x0, y0, x1, y1] 0-based pixels, x1/y1 exclusive, of the visible mask",
                            "masks": "SegmentationObject/<id>.png: k = k-th object (1-based), 0 = none",
                            "crop": "[x0, y0, x1, y1, flipped] of the background photo"},
            "images": manifest,
        }
        (tmp / "mosaic.json").write_text(json.dumps(info, indent=1) + "\n")   # written last
        if out_dir.exists():
            if _existing_params(out_dir) is not None:
                _refuse_foreign(out_dir)   # again: a file may have been added while we built
            elif any(out_dir.iterdir()):
                raise DatasetError(f"{out_dir} was filled while the mosaics were built; refusing to replace it")
            trash = make_temp_dir(out_dir.parent, f".{out_dir.name}.old-")
            os.replace(out_dir, trash / "old")
            os.replace(tmp, out_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


# ------------------------------------------------------------------------------------- reading
def read_mosaic(root: str | Path, split: str = "train") -> MultiLabelDataset:
    """Read one split (``"train"`` or ``"test"``) of a built mosaic set with its own class list.

    ``meta`` adds ``masks_dir`` (``SegmentationObject/``: ``<id>.png``, value k = the k-th object of
    the image's xml, in ``boxes`` order), ``manifest`` (``mosaic.json``) and ``kind = "mosaic"``.
    """
    root = Path(root)
    if not (root / "mosaic.json").is_file():
        raise DatasetError(f"{root} is not a built mosaic data set (no mosaic.json); build it with "
                           f"ccdlib.mosaic.build_mosaics or `python -m ccdlib data mosaic --out {root}`")
    ds = read_voc(root, split, classes=root / "classes.yaml", difficult="negative")
    ds.name = f"mosaic/{split}"
    ds.meta.update(kind="mosaic", masks_dir=str(root / "SegmentationObject"),
                   manifest=str(root / "mosaic.json"))
    return ds


def default_mosaic_root(*, n_train: int = 400, n_test: int = 200, seed: int = 0, image_size: int = 448,
                        stamps: str = "disjoint", cache_dir: str | Path | None = None) -> Path:
    """``<cache>/mosaics/s<seed>-n<n_train>-<n_test>-<image_size>px``, plus ``-shared`` for shared stamps."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    suffix = "" if stamps == "disjoint" else f"-{stamps}"
    return cache / "mosaics" / f"s{seed}-n{n_train}-{n_test}-{image_size}px{suffix}"


def embedded_dataset(split: str, *, root: str | Path | None = None, n_train: int = 400, n_test: int = 200,
                     seed: int = 0, cache_dir: str | Path | None = None, rebuild: bool = False,
                     **kw) -> MultiLabelDataset:
    """The embedded default data set: build the mosaics if needed, then read ``split``.

    ``root`` defaults to :func:`default_mosaic_root` (under the ccdlib cache, ``$CCDLIB_CACHE`` or
    ``~/.cache/ccdlib``); other keyword arguments go to :func:`build_mosaics`. A build with other
    parameters found in ``root`` is refused unless ``rebuild``; under the default root (the library's own
    cache folder) it is rebuilt. ``cache_dir`` (a run's ``cache_dir``) replaces :func:`default_cache_dir` for
    the default root and the fetched packages.
    """
    if split not in SPLITS:
        raise DatasetError(f"split={split!r}: the mosaic data set has splits {list(SPLITS)}")
    if root is None:
        root = default_mosaic_root(n_train=n_train, n_test=n_test, seed=seed,
                                   image_size=kw.get("image_size", 448), stamps=kw.get("stamps", "disjoint"),
                                   cache_dir=cache_dir)
        rebuild = True   # the library's own folder: a stale build there is replaced (user files never are)
    from .cache import cache_location
    with cache_location(cache_dir):   # the photo packages are fetched into the same cache
        build_mosaics(root, n_train=n_train, n_test=n_test, seed=seed, rebuild=rebuild, **kw)
    return read_mosaic(root, split)


# ----------------------------------------------------------------------------------------- CLI
def cli_main(argv: list[str] | None = None) -> int:
    """``python -m ccdlib data mosaic --out DIR [--train N] [--test M] [--seed S] [--image-size PX] [--stamps P]``."""
    ap = argparse.ArgumentParser(
        prog="python -m ccdlib data mosaic",
        description="Build the embedded 'stamp mosaic' data set (VOC layout) from the tuxpaint photo "
                    "packages, fetching them if needed.")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default: under the ccdlib cache, see ccdlib.mosaic)")
    ap.add_argument("--train", type=int, default=400, help="number of training mosaics (default 400)")
    ap.add_argument("--test", type=int, default=200, help="number of test mosaics (default 200)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--image-size", type=int, default=448, help="image side in pixels (default 448)")
    ap.add_argument("--min-objects", type=int, default=2, help="fewest objects per image (default 2)")
    ap.add_argument("--max-objects", type=int, default=4, help="most objects per image (default 4)")
    ap.add_argument("--min-scale", type=float, default=0.25,
                    help="smallest object size, longer side / image side (default 0.25)")
    ap.add_argument("--max-scale", type=float, default=0.5,
                    help="largest object size, longer side / image side (default 0.5)")
    ap.add_argument("--stamps", choices=STAMP_PROTOCOLS, default="disjoint",
                    help="stamp protocol: disjoint train/test stamps (default) or shared (new scenes)")
    ap.add_argument("--source", type=Path, default=None,
                    help="a usr/share/tuxpaint folder (default: found or fetched by find_tuxpaint)")
    ap.add_argument("--classes", type=Path, default=None, help="class-set YAML (default: the shipped one)")
    ap.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    ap.add_argument("--rebuild", action="store_true",
                    help="replace a set in --out built with other parameters (a folder holding files the "
                         "builder did not write is still refused: they are never deleted)")
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="the ccdlib cache (default $CCDLIB_CACHE or ~/.cache/ccdlib): default --out, fetched packages")
    args = ap.parse_args(argv)
    from .cache import cache_location
    try:
        with cache_location(args.cache_dir):
            out = args.out or default_mosaic_root(n_train=args.train, n_test=args.test, seed=args.seed,
                                                  image_size=args.image_size, stamps=args.stamps)
            root = build_mosaics(
                out, n_train=args.train, n_test=args.test, seed=args.seed, image_size=args.image_size,
                min_objects=args.min_objects, max_objects=args.max_objects, min_scale=args.min_scale,
                max_scale=args.max_scale, stamps=args.stamps, source=args.source, classes_file=args.classes,
                progress=args.progress, rebuild=args.rebuild or args.out is None)
    except CCDError as e:   # exit 2, as every ccdlib command documents
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(root)
    return 0


main = cli_main

# load_dataset("mosaic", root, split) works once this module is imported.
register_reader("mosaic", read_mosaic, overwrite=True)

if __name__ == "__main__":
    raise SystemExit(cli_main())
