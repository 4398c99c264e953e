"""Fetching Debian packages into the ccdlib cache: ``apt-get download`` then ``dpkg-deb -x``, with no root needed.

The embedded study uses two sets of packages this way: the tuxpaint photos the mosaics are made from
(:func:`ccdlib.mosaic.find_tuxpaint`) and WordNet 3.0 for the hierarchy-aware ConSE teacher
(:func:`ccdlib.wordnet.find_wordnet`). Both go through :func:`fetch_packages`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from .cache import check_writable_dir, clean_stale_temp_dirs, default_cache_dir, make_temp_dir
from .errors import CCDError, DataSetupError

__all__ = ["find_or_fetch", "fetch_packages", "sudo_prefix"]

#: What apt-get prints when its package lists are missing or out of date.
_NO_LISTS = ("Unable to locate package", "has no installation candidate", "Can't select candidate", "No packages found")


def sudo_prefix() -> str:
    """``"sudo "`` unless this process is root (for the commands an error message suggests)."""
    return "" if hasattr(os, "geteuid") and os.geteuid() == 0 else "sudo "


def _find_debs(debs_dir: Path, packages: Sequence[str]) -> list[Path]:
    """The newest ``<package>_*.deb`` of each package in ``debs_dir`` (fewer if some are absent)."""
    return [c[-1] for c in (sorted(debs_dir.glob(f"{p}_*.deb")) for p in packages) if c]


def fetch_packages(packages: Sequence[str], *, cache: Path, name: str, ok: Callable[[Path], bool],
                   what: str, hint: str, size: str = "") -> Path:
    """Download ``packages`` into ``<cache>/debs`` (reusing .deb files already there), unpack them into a temporary
    folder and, when ``ok(folder)`` holds, rename it to ``<cache>/<name>``; the .deb files are then deleted.

    ``what`` says what needs the packages and ``hint`` how to provide them by hand (both go into every error);
    ``size`` is printed with the fetch notice. Returns ``<cache>/<name>``. Raises :class:`DataSetupError` when
    apt-get or dpkg-deb is absent, the cache is not writable, the package lists are missing (run
    ``apt-get update``), or the download or the unpacking fails.
    """
    target = cache / name
    missing = [tool for tool in ("apt-get", "dpkg-deb") if shutil.which(tool) is None]
    if missing:
        raise DataSetupError(f"{what} needs {' and '.join(packages)}, and {' and '.join(missing)} "
                             f"{'is' if len(missing) == 1 else 'are'} not available to fetch them. {hint}.")
    try:
        check_writable_dir(cache, "cache folder")
    except CCDError as e:   # read-only cache: say what to do instead of a traceback
        raise DataSetupError(f"cannot fetch {' '.join(packages)}: {e}. {hint}.") from None
    clean_stale_temp_dirs(cache, f".{name}.tmp-")
    debs_dir = cache / "debs"
    debs_dir.mkdir(parents=True, exist_ok=True)
    debs = _find_debs(debs_dir, packages)
    if len(debs) < len(packages):
        print(f"ccdlib: fetching {' '.join(packages)}{f' (about {size})' if size else ''} into {debs_dir}",
              file=sys.stderr)
        try:
            proc = subprocess.run(["apt-get", "download", *packages], cwd=debs_dir, capture_output=True, text=True)
        except OSError as e:
            raise DataSetupError(f"cannot run apt-get: {e}. {hint}.") from e
        if proc.returncode != 0:
            err = (proc.stderr or proc.stdout or "").strip()
            if any(s in err for s in _NO_LISTS):
                raise DataSetupError(
                    f"apt-get download {' '.join(packages)} failed: the package lists are missing or out of date. "
                    f"Run `{sudo_prefix()}apt-get update` first, or install the packages with "
                    f"`{sudo_prefix()}apt-get install {' '.join(packages)}`.\napt-get said: {err[-800:]}")
            raise DataSetupError(f"apt-get download {' '.join(packages)} failed (exit {proc.returncode}) in "
                                 f"{debs_dir}: {err[-800:]}\n{hint}.")
        debs = _find_debs(debs_dir, packages)
        if len(debs) < len(packages):
            raise DataSetupError(f"apt-get download succeeded but {debs_dir} lacks a .deb for one of "
                                 f"{', '.join(packages)}. {hint}.")
    tmp = make_temp_dir(cache, f".{name}.tmp-")
    try:
        for deb in debs:
            proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise DataSetupError(f"dpkg-deb -x {deb} failed (exit {proc.returncode}): "
                                     f"{proc.stderr.strip()[-800:]}. Delete {deb} to fetch it again.")
        if not ok(tmp):
            raise DataSetupError(f"the unpacked packages ({', '.join(d.name for d in debs)}) do not hold what "
                                 f"{what} needs. {hint}.")
        if target.exists():  # an incomplete leftover not made by us: set aside, then remove
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=cache))
            os.replace(target, old / name)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for deb in debs:   # unpacked: the archives are no longer needed
        deb.unlink(missing_ok=True)
    return target


def find_or_fetch(packages: Sequence[str], *, system: Path, subdir: str, cache_dir: str | Path | None, name: str,
                  ok: Callable[[Path], bool], what: str, hint: Callable[[Path], str], size: str = "") -> Path:
    """The folder ``system`` (e.g. ``/usr/share/tuxpaint``) where the packages are installed, else their unpacked
    copy ``<cache>/<name>/<subdir>`` (``subdir`` the folder inside the .deb, e.g. ``usr/share/tuxpaint``), fetched
    there by :func:`fetch_packages` when absent.
    ``ok(folder)`` says whether a folder holds what is needed; ``hint(<cache>/<name>)`` how to provide it by hand."""
    if ok(system):
        return system
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    found = cache / name / subdir
    if ok(found):
        return found
    fetch_packages(packages, cache=cache, name=name, ok=lambda d: ok(d / subdir), what=what,
                   hint=hint(cache / name), size=size)
    return found
