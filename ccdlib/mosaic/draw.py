"""Drawing one mosaic (background crop, pasted stamps, object map, boxes) and writing its VOC
annotation xml and palette."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import numpy as np

from .assets import _load_stamp
from .params import MASK_ALPHA, MAX_OCCLUSION, MIN_CROP_FRACTION, PLACEMENT_TRIES, _Params
from .spec import _BOX

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
