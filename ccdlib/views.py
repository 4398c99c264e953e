"""Views of an image that the teacher scores: the whole image, grid tiles, boxes and crops.

A view is ``(image_index, box)`` where ``box`` is ``(x0, y0, x1, y1)`` in pixels of the original image
(``x1``/``y1`` exclusive) or ``None`` for the whole image. Geometry helpers here are pure functions.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

__all__ = [
    "View",
    "Box",
    "image_size",
    "open_image",
    "grid_boxes",
    "global_views",
    "grid_views",
    "expand_box",
    "clip_box",
    "crop_view",
]

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class View:
    """One view: an image (by index into a path list) and an optional pixel box ``(x0, y0, x1, y1)``."""

    image: int
    box: Box | None = None

    def key(self) -> tuple:
        return (self.image, None if self.box is None else tuple(round(float(v), 3) for v in self.box))


@contextlib.contextmanager
def open_image(path: str | Path, *, problem: str = "corrupt or unreadable image") -> Iterator[Image.Image]:
    """``with open_image(path) as im``: PIL's ``Image.open`` where a missing file, or a failure to open or read it
    inside the block, is a :class:`~ccdlib.errors.DatasetError` naming the file (``"<problem> <path>: ..."``)."""
    from PIL import UnidentifiedImageError

    from .errors import DatasetError
    try:
        with Image.open(path) as im:
            yield im
    except FileNotFoundError:
        raise DatasetError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DatasetError(f"{problem} {path}: {e}") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` from the image header (no decode). A missing or unreadable file is a
    :class:`~ccdlib.errors.DatasetError` naming it."""
    with open_image(path) as im:
        return im.size


def grid_boxes(width: int, height: int, n: int) -> list[Box]:
    """``n x n`` non-overlapping tiles covering the image, row-major. Returns ``n*n`` boxes.

    Tile edges are ``round(k * width / n)``, so the tiles partition the image exactly.
    """
    if n < 1:
        raise ValueError(f"grid size must be >= 1, got {n}")
    xs = [round(k * width / n) for k in range(n + 1)]
    ys = [round(k * height / n) for k in range(n + 1)]
    return [(xs[i], ys[j], xs[i + 1], ys[j + 1]) for j in range(n) for i in range(n)]


def global_views(n_images: int) -> list[View]:
    """One whole-image view per image: ``n_images`` views."""
    return [View(i) for i in range(n_images)]


def grid_views(sizes: Sequence[tuple[int, int]], n: int) -> list[View]:
    """``n*n`` tile views per image, image-major: ``len(sizes) * n * n`` views."""
    return [View(i, b) for i, (w, h) in enumerate(sizes) for b in grid_boxes(w, h, n)]


def clip_box(box: Box, width: int, height: int) -> Box:
    """Clip a box to ``[0, width] x [0, height]``."""
    x0, y0, x1, y1 = box
    return (max(0.0, float(x0)), max(0.0, float(y0)), min(float(width), float(x1)), min(float(height), float(y1)))


def expand_box(box: Box, *, offset: float = 0.0, fraction: float = 0.0, width: int, height: int) -> Box:
    """Grow a box by ``offset`` pixels plus ``fraction`` of its width/height on every side, then clip."""
    x0, y0, x1, y1 = box
    dx = offset + fraction * (x1 - x0)
    dy = offset + fraction * (y1 - y0)
    return clip_box((x0 - dx, y0 - dy, x1 + dx, y1 + dy), width, height)


def crop_view(image: Image.Image, box: Box | None) -> Image.Image:
    """Crop ``image`` to ``box`` (rounded to whole pixels, at least 1x1), or return it for ``None``."""
    if box is None:
        return image
    w, h = image.size
    x0, y0, x1, y1 = clip_box(box, w, h)
    x0, y0 = min(int(np.floor(x0)), w - 1), min(int(np.floor(y0)), h - 1)  # an empty box on the far edge: last pixel
    x1, y1 = max(int(np.ceil(x1)), x0 + 1), max(int(np.ceil(y1)), y0 + 1)
    return image.crop((x0, y0, min(x1, w), min(y1, h)))


def views_by_image(views: Iterable[View]) -> dict[int, list[int]]:
    """Group view positions by image index (keeps order within an image)."""
    groups: dict[int, list[int]] = {}
    for pos, v in enumerate(views):
        groups.setdefault(v.image, []).append(pos)
    return groups
