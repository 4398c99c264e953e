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

__all__ = ["IMAGE_SUFFIXES", "list_images", "predict_images", "check_output_path"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


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
    """Files as given, folders expanded (sorted, recursive) to their image files. A missing input is an error."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise DatasetError(f"input not found: {p}")
    if not out:
        raise DatasetError(f"no images found in {list(map(str, inputs))}")
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
    paths = list_images(inputs)
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
