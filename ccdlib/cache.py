"""Disk cache for expensive, deterministic work: keyed by everything it depends on, written atomically.

A cache entry is one ``.npy`` (or ``.json``) file whose name is the SHA-256 of a JSON-serialisable key.
Writers go through :func:`atomic_write_bytes` (temp file in the same folder + ``os.replace``), so a run
killed part way never leaves a file that a later run trusts.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

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
]


def default_cache_dir() -> Path:
    """``$CCDLIB_CACHE`` if set, else ``~/.cache/ccdlib``."""
    env = os.environ.get("CCDLIB_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ccdlib"


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


def load_array(path: str | os.PathLike) -> np.ndarray:
    return np.load(path, allow_pickle=False)


class ArrayCache:
    """A folder of ``<namespace>/<hash>.npy`` arrays. ``None`` root disables caching."""

    def __init__(self, root: str | os.PathLike | None, namespace: str):
        self.root = None if root is None else Path(root) / namespace
        self.hits = 0
        self.misses = 0

    def path(self, key: Any) -> Path | None:
        return None if self.root is None else self.root / f"{stable_hash(key)}.npy"

    def get(self, key: Any) -> np.ndarray | None:
        p = self.path(key)
        if p is None or not p.exists():
            self.misses += 1
            return None
        try:
            arr = load_array(p)
        except (ValueError, OSError, EOFError):  # unreadable: treat as absent, recompute
            self.misses += 1
            return None
        self.hits += 1
        return arr

    def put(self, key: Any, array: np.ndarray) -> None:
        p = self.path(key)
        if p is not None:
            save_array(p, array)
