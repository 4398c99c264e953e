"""The embedded default data set: where a mosaic set lives by default, building it if needed, and reading a
split (also registered as the ``"mosaic"`` reader of :func:`ccdlib.readers.load_dataset`)."""
from __future__ import annotations

from pathlib import Path

from ..cache import default_cache_dir
from ..datasets import MultiLabelDataset
from ..errors import DatasetError
from ..readers import read_voc, register_reader
from .build import build_mosaics
from .spec import SPLITS

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
    from ..cache import cache_location
    with cache_location(cache_dir):   # the photo packages are fetched into the same cache
        build_mosaics(root, n_train=n_train, n_test=n_test, seed=seed, rebuild=rebuild, **kw)
    return read_mosaic(root, split)


# load_dataset("mosaic", root, split) works once this module is imported.
register_reader("mosaic", read_mosaic, overwrite=True)
