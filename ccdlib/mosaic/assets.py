"""The photo sources of the mosaics: the tuxpaint folder (found or fetched), the usable stamps of each
class and their train/test pools."""
from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from ..debian import sudo_prefix
from ..errors import DatasetError
from .params import MASK_ALPHA
from .spec import SPLITS, STAMP_PROTOCOLS, MosaicSpec, load_mosaic_spec

TUXPAINT_PACKAGES: tuple[str, ...] = ("tuxpaint-stamps-default", "tuxpaint-data")
SYSTEM_TUXPAINT = Path("/usr/share/tuxpaint")
TEST_EVERY = 3              # every 3rd stamp of a class (sorted by path) goes to the test pool


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
    from ..debian import find_or_fetch
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
