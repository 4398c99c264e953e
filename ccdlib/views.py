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
    "to_rgb",
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
    import struct

    from PIL import UnidentifiedImageError

    from .errors import CCDError, DatasetError
    try:
        with Image.open(path) as im:
            yield im
    except CCDError:
        raise
    except FileNotFoundError:
        raise DatasetError(f"image not found: {path}") from None
    except IsADirectoryError:
        raise DatasetError(f"image path is a folder, not a file: {path}") from None
    except Image.DecompressionBombError as e:
        raise DatasetError(f"image too large {path}: {e} (raise PIL.Image.MAX_IMAGE_PIXELS if you trust "
                           f"it)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError,
            TypeError, KeyError, ZeroDivisionError, MemoryError) as e:   # whatever a damaged file makes PIL raise
        raise DatasetError(f"{problem} {path}: {type(e).__name__}: {e}") from None


_ORIENTATION = 0x0112          # EXIF tag: how the stored pixels must be turned to be seen upright
_SWAPS_AXES = (5, 6, 7, 8)     # orientations that transpose (width and height trade places)


def _exif_orientation(im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(_ORIENTATION, 1))
    except Exception:          # an unreadable EXIF block: shown as stored, as image viewers do
        return 1
    return value if 1 <= value <= 8 else 1


def to_rgb(im: Image.Image, path: str | Path = "<image>") -> Image.Image:
    """The 8-bit RGB picture a person would see, from any PIL image: ``(H, W)`` any mode -> ``(H', W')`` RGB.

    * EXIF orientation applied (``H', W'`` swapped for orientations 5-8), as viewers and cameras do;
    * 1, L, P, RGB, CMYK, YCbCr, LAB, HSV, RGBX: PIL's conversion;
    * transparency (LA, PA, RGBA, RGBa, P with a transparent colour): composited on white;
    * 16-bit (``I;16*``, e.g. a 16-bit PNG) and 32-bit integer ``I`` read as 0-65535, scaled to 0-255
      (PIL's own conversion would clip every value above 255 to white); ``I`` outside that range is refused;
    * float ``F`` read as 0-1, scaled to 0-255; outside [0, 1] or not finite is refused;
    * anything else, or an image with no pixel, is a :class:`~ccdlib.errors.DatasetError` naming ``path``.
    """
    from PIL import ImageOps

    from .errors import DatasetError
    if im.width == 0 or im.height == 0:
        raise DatasetError(f"image {path} has no pixels (size {im.width}x{im.height})")
    if _exif_orientation(im) != 1:
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:      # an EXIF block PIL cannot apply: shown as stored
            pass
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im).astype(np.int64)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise DatasetError(f"image {path}: {mode} pixel values span [{lo}, {hi}], outside the 16-bit range "
                               f"0-65535 that ccdlib maps to 0-255; convert it to 8-bit RGB first")
        return Image.fromarray(((arr * 255 + 32767) // 65535).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise DatasetError(f"image {path}: float pixel values span [{np.nanmin(arr):g}, {np.nanmax(arr):g}] "
                               f"(or are not finite); ccdlib reads float images as 0-1: convert it to 8-bit RGB "
                               f"first")
        return Image.fromarray(np.rint(arr * 255).astype(np.uint8), "L").convert("RGB")
    has_alpha = mode in ("LA", "La", "PA", "RGBA", "RGBa") or (mode == "P" and "transparency" in im.info) \
        or (mode in ("L", "RGB") and "transparency" in im.info)
    try:
        if not has_alpha:
            return im.convert("RGB")
        rgba = im.convert("RGBA")
    except (ValueError, OSError) as e:
        raise DatasetError(f"image {path}: cannot convert PIL mode {mode!r} to RGB ({e})") from None
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` as :func:`to_rgb` shows it (EXIF orientation applied), from the image header (no
    decode). A missing or unreadable file is a :class:`~ccdlib.errors.DatasetError` naming it."""
    with open_image(path) as im:
        w, h = im.size
        return (h, w) if _exif_orientation(im) in _SWAPS_AXES else (w, h)


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
