"""Inference with a trained student: per-image sigmoid scores and thresholded labels (CSV-ready)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .errors import CheckpointError, DatasetError
from .scoring import load_rgb
from .student import _checkpoint_paths, load_student_checkpoint, preprocess_image
from .teachers import resolve_device

__all__ = ["IMAGE_SUFFIXES", "UNSUPPORTED_IMAGE_SUFFIXES", "list_images", "predict_images", "check_output_path"]


def _pil_reads(codec: str) -> bool:
    from PIL import features
    try:
        return bool(features.check(codec))
    except (ValueError, KeyError):   # a Pillow that does not know the codec at all
        return False


#: What ``predict`` reads from a folder (a file named on the command line is read whatever its name, if PIL can).
#: ``.jfif``/``.jpe`` are JPEGs. ``.gif``: the first frame (issue 17: accepted rather than skipped; an animated GIF
#: is scored on its first frame, as PIL opens it). ``.avif`` where this Pillow has AVIF support.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif") + (
    (".avif",) if _pil_reads("avif") else ())

#: Image formats this Pillow cannot decode: skipped in a folder with a warning saying so, refused by name when a
#: file is given (issue 17: a ``.heic`` was called "corrupt").
UNSUPPORTED_IMAGE_SUFFIXES = tuple(s for s in (
    ".heic", ".heif", ".avif", ".jxl", ".svg", ".raw", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2",
    ".psd", ".xcf") if s not in IMAGE_SUFFIXES)


def _unsupported(p: Path) -> DatasetError:
    return DatasetError(f"{p}: {p.suffix.lower()} is not a supported image format; supported: "
                        f"{', '.join(IMAGE_SUFFIXES)} (convert it, e.g. to .jpg or .png)")


def check_output_path(out: str | Path) -> Path:
    """Raise :class:`~ccdlib.errors.ConfigError` unless ``out`` can be written as a file: not a folder, its folder
    (made if absent) writable. Called before any scoring, so a bad ``--out`` costs nothing."""
    import os

    from .cache import check_writable_dir
    from .errors import ConfigError
    p = Path(out)
    if p.is_dir() or str(out).endswith(("/", os.sep)):
        raise ConfigError(f"--out {out} is a folder; give a CSV file path (e.g. {p / 'predictions.csv'})")
    if p.exists() and not os.access(p, os.W_OK):
        raise ConfigError(f"--out {out} exists and is not writable")
    check_writable_dir(p.parent if str(p.parent) else Path("."), "--out folder")
    return p


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders expanded (sorted, recursive) to their image files (:data:`IMAGE_SUFFIXES`). A missing
    input is an error, and so is a file given by name in a format PIL cannot read
    (:data:`UNSUPPORTED_IMAGE_SUFFIXES`). The files of a folder that are skipped are warned, by reason: an
    unsupported image format, or not an image file (issue 17: they were skipped without a word)."""
    import warnings
    out: list[Path] = []
    skipped: dict[str, list[Path]] = {}
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for q in sorted(q for q in p.rglob("*") if q.is_file()):
                suffix = q.suffix.lower()
                if suffix in IMAGE_SUFFIXES:
                    out.append(q)
                elif suffix in UNSUPPORTED_IMAGE_SUFFIXES:
                    skipped.setdefault(f"not a supported image format (supported: {', '.join(IMAGE_SUFFIXES)})",
                                       []).append(q)
                else:
                    skipped.setdefault("not an image file", []).append(q)
        elif p.is_file():
            if p.suffix.lower() in UNSUPPORTED_IMAGE_SUFFIXES:
                raise _unsupported(p)
            out.append(p)
        else:
            raise DatasetError(f"input not found: {p}")

    def listing(files: list[Path]) -> str:
        return ", ".join(map(str, files[:10])) + (f" and {len(files) - 10} more" if len(files) > 10 else "")
    summary = "; ".join(f"{len(fs)} {why}: {listing(fs)}" for why, fs in skipped.items())
    if not out:
        raise DatasetError(f"no images found in {list(map(str, inputs))}" + (f" (skipped {summary})" if summary else ""))
    if summary:
        warnings.warn(f"predict skipped {sum(map(len, skipped.values()))} file(s): {summary}", UserWarning,
                      stacklevel=2)
    return out


@torch.no_grad()
def predict_images(checkpoint: str | Path, inputs: Sequence[str | Path], *, threshold: float = 0.5,
                   batch_size: int = 16, device: str = "auto"):
    """Score images with a student checkpoint -> DataFrame: ``image``, one ``score_<class>`` column per class
    (sigmoid of the logit, alpha as at the checkpoint's epoch), and ``labels`` (classes with score >= threshold,
    ``;``-separated). ``(N images) -> N rows``."""
    import json

    import pandas as pd

    from .errors import ConfigError
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    paths = list_images(inputs)   # the inputs first: a missing or unsupported file before the checkpoint is read
    student, config = load_student_checkpoint(checkpoint)
    meta = json.loads(_checkpoint_paths(checkpoint)[1].read_text())
    classes = meta.get("class_ids") or [f"class_{k}" for k in range(meta["num_classes"])]
    if len(classes) != student.num_classes:
        raise CheckpointError(f"{_checkpoint_paths(checkpoint)[1]} names {len(classes)} classes (class_ids) but "
                              f"the checkpoint has {student.num_classes}")
    alpha = meta.get("alpha", 1.0)
    dev = resolve_device(device)
    student = student.to(dev)
    a = torch.as_tensor(alpha, dtype=torch.float32, device=dev) if np.ndim(alpha) else float(alpha)
    scores = []
    for s in range(0, len(paths), batch_size):
        x = torch.stack([preprocess_image(load_rgb(p), trunk=config.trunk, image_size=config.image_size)
                         for p in paths[s:s + batch_size]]).to(dev)
        scores.append(torch.sigmoid(student(x, alpha=a)).float().cpu().numpy())
    sc = np.concatenate(scores)
    df = pd.DataFrame(sc, columns=[f"score_{c}" for c in classes])
    df.insert(0, "image", [str(p) for p in paths])
    df["labels"] = [";".join(c for c, v in zip(classes, row) if v >= threshold) for row in sc]
    return df
