"""Disk cache for expensive, deterministic work: keyed by everything it depends on, written atomically.

A cache entry is one ``.npy`` (or ``.json``) file whose name is the SHA-256 of a JSON-serialisable key.
Writers go through :func:`atomic_write_bytes` (temp file in the same folder + ``os.replace``), so a run
killed part way never leaves a file that a later run trusts.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

__all__ = [
    "default_cache_dir",
    "stable_hash",
    "file_fingerprint",
    "image_fingerprints",
    "file_fingerprints",
    "changed_files",
    "atomic_write_bytes",
    "atomic_write_text",
    "save_array",
    "load_array",
    "ArrayCache",
    "process_umask",
    "make_temp_dir",
    "clean_stale_temp_dirs",
    "check_writable_dir",
    "cache_location",
]


_CACHE_OVERRIDE: list[Path] = []   # innermost :func:`cache_location` first


def default_cache_dir() -> Path:
    """The folder set by the innermost :func:`cache_location` (a run's ``cache_dir``); else ``$CCDLIB_CACHE`` if
    set, else ``~/.cache/ccdlib``."""
    if _CACHE_OVERRIDE:
        return _CACHE_OVERRIDE[0]
    env = os.environ.get("CCDLIB_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ccdlib"


@contextlib.contextmanager
def cache_location(path: str | os.PathLike | None) -> Iterator[None]:
    """``with cache_location(cfg.cache_dir):`` every :func:`default_cache_dir` inside the block (the ConSE text
    cache, mosaic builds, fetched packages) is ``path``; ``None`` changes nothing. One cache for a whole run."""
    if path is None:
        yield
        return
    _CACHE_OVERRIDE.insert(0, Path(path))
    try:
        yield
    finally:
        _CACHE_OVERRIDE.pop(0)


def check_writable_dir(path: str | os.PathLike, what: str = "cache folder") -> Path:
    """Create ``path`` if needed and prove it writable (a probe file is made and removed); return it.

    Raises:
        ConfigError: it cannot be created or written; the message names ``what`` and the folder.
    """
    from .errors import ConfigError
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{what} {p} is not writable ({e.strerror or e}); point it at a folder you can "
                          f"write (cache_dir in the run config, or $CCDLIB_CACHE)") from None
    return p


def process_umask() -> int:
    """The process's file-creation mask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """A new folder ``<parent>/<prefix><pid>-<random>`` with the mode of a plain ``mkdir`` (0777 less the umask,
    not mkdtemp's 0700), so a shared data set or cache stays readable by whom the umask allows. The pid in the
    name lets :func:`clean_stale_temp_dirs` tell a dead writer's leftovers from a live one's."""
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))
    os.chmod(tmp, 0o777 & ~process_umask())
    return tmp


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clean_stale_temp_dirs(parent: str | os.PathLike, prefix: str, *, max_age_s: float = 24 * 3600) -> list[Path]:
    """Remove the ``<parent>/<prefix>*`` folders a killed writer left; return them.

    A folder named by :func:`make_temp_dir` is stale when its pid is not a live process; one without a pid in
    its name (older versions) when it is older than ``max_age_s``. A live writer's folder is left alone."""
    import glob
    import re
    import shutil
    import time
    removed: list[Path] = []
    parent = Path(parent)
    if not parent.is_dir():
        return removed
    for d in parent.glob(f"{glob.escape(prefix)}*"):
        if not d.is_dir() or d.is_symlink():
            continue
        m = re.match(r"(\d+)-", d.name[len(prefix):])
        try:
            stale = (not _pid_alive(int(m.group(1)))) if m else (time.time() - d.stat().st_mtime > max_age_s)
        except OSError:
            continue
        if stale:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": hashlib.sha256(np.ascontiguousarray(obj).tobytes()).hexdigest(),
                "shape": list(obj.shape), "dtype": str(obj.dtype)}
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict
        return _jsonable(asdict(obj))
    return obj


def stable_hash(key: Any, length: int = 32) -> str:
    """SHA-256 (hex, truncated to ``length``) of a canonical JSON rendering of ``key``."""
    blob = json.dumps(_jsonable(key), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def file_fingerprint(path: str | os.PathLike) -> dict:
    """Identity of a file for cache keys: absolute path, size and modification time (ns)."""
    p = Path(path)
    st = p.stat()
    return {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def image_fingerprints(paths: Sequence[str | os.PathLike]) -> Callable[[int], dict]:
    """``fp(i)`` = :func:`file_fingerprint` of ``paths[i]``, computed once per index; a missing file is a
    :class:`~ccdlib.errors.DatasetError` naming it."""
    from .errors import DatasetError
    memo: dict[int, dict] = {}

    def fp(i: int) -> dict:
        if i not in memo:
            try:
                memo[i] = file_fingerprint(paths[i])
            except FileNotFoundError:
                raise DatasetError(f"image not found: {paths[i]}") from None
        return memo[i]
    return fp


def file_fingerprints(paths: Sequence[str | os.PathLike]) -> list[tuple[int, int] | None]:
    """``(size, mtime_ns)`` of every file (``None`` for a missing one): what :func:`file_fingerprint` keys caches
    by, without the path. A file replaced or rewritten gets another mtime, even with the same bytes."""
    out: list[tuple[int, int] | None] = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return out


def changed_files(paths: Sequence[str | os.PathLike], fingerprints: Sequence[tuple[int, int] | None]) -> list[Path]:
    """The files among ``paths`` whose :func:`file_fingerprints` differ from ``fingerprints`` (now missing ones too)."""
    return [Path(p) for p, now, then in zip(paths, file_fingerprints(paths), fingerprints) if now != then]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~process_umask())   # mkstemp makes 0600: give the file a plain open()'s mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_array(path: str | os.PathLike, array: np.ndarray) -> None:
    """Atomically save one array as ``.npy``."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def save_arrays(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Atomically save named arrays as one compressed ``.npz``."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_array(path: str | os.PathLike) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def _entry_problem(arr: np.ndarray, shape: Sequence[int | None] | None, dtype: Any, finite: bool) -> str | None:
    """What makes a cache entry other than expected (:meth:`ArrayCache.get`), or ``None``."""
    if shape is not None and (arr.ndim != len(shape) or any(n not in (None, m) for n, m in zip(shape, arr.shape))):
        return f"shape {tuple(arr.shape)}, expected {tuple('any' if n is None else int(n) for n in shape)}"
    if dtype is not None and arr.dtype != np.dtype(dtype):
        return f"dtype {arr.dtype}, expected {np.dtype(dtype)}"
    if finite and arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        return f"{int(arr.size - np.isfinite(arr).sum())} NaN or infinite value(s)"
    return None


class ArrayCache:
    """A folder of ``<namespace>/<hash>.npy`` arrays. ``None`` root disables caching. :meth:`get` checks an entry
    against what its caller expects (shape, dtype, finite values) and recomputes a damaged one (issue 23)."""

    def __init__(self, root: str | os.PathLike | None, namespace: str):
        self.root = None if root is None else Path(root) / namespace
        self.hits = 0
        self.misses = 0

    def path(self, key: Any) -> Path | None:
        return None if self.root is None else self.root / f"{stable_hash(key)}.npy"

    def get(self, key: Any, *, shape: Sequence[int | None] | None = None, dtype: Any = None, finite: bool = False,
            check: Callable[[np.ndarray], str | None] | None = None) -> np.ndarray | None:
        """The entry stored under ``key``, or ``None`` (absent: the caller computes it and stores it with :meth:`put`).

        An entry that cannot be read, or is readable but not what the caller expects (issue 23: a NaN or
        wrong-shape entry was trusted, and stayed), is a miss too: a warning names the file and why, and the file
        is deleted, so the recomputed value replaces it. Expected: ``shape`` (``None`` entries match any length),
        ``dtype``, ``finite`` (no NaN or inf), and ``check(arr)`` returning what is wrong, or ``None``."""
        p = self.path(key)
        if p is None or not p.exists():
            self.misses += 1
            return None
        try:
            arr = load_array(p)
        except (ValueError, OSError, EOFError) as e:  # unreadable: treat as absent, recompute
            self._discard(p, f"unreadable: {type(e).__name__}: {str(e)[:120]}",
                          delete=not (isinstance(e, OSError) and e.errno is not None))   # not a permission error
            return None
        problem = _entry_problem(arr, shape, dtype, finite) or (check(arr) if check is not None else None)
        if problem:
            self._discard(p, problem)
            return None
        self.hits += 1
        return arr

    def _discard(self, p: Path, why: str, *, delete: bool = True) -> None:
        import warnings
        self.misses += 1
        warnings.warn(f"cache entry {p} is damaged ({why}): {'deleted and ' if delete else ''}recomputed",
                      UserWarning, stacklevel=3)
        if delete:
            with contextlib.suppress(OSError):   # a read-only shared cache: recomputed, the entry stays
                p.unlink()

    def put(self, key: Any, array: np.ndarray) -> None:
        """Store ``array``; a cache folder that cannot be written is a :class:`~ccdlib.errors.ConfigError` naming it."""
        p = self.path(key)
        if p is not None:
            try:
                save_array(p, array)
            except OSError as e:   # read-only, not a folder, disk full: name the folder, no traceback
                import errno
                if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.ENOSPC,
                                   errno.EDQUOT):
                    raise
                from .errors import ConfigError
                raise ConfigError(f"cache folder {self.root} is not writable ({e.strerror or e}); point cache_dir "
                                  f"(or $CCDLIB_CACHE) at a folder you can write, or disable the cache") from None
