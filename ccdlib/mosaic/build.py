"""Building a mosaic set on disk: reuse of a build with the same parameters, refusal to replace what the
builder did not write, and the atomic write of the VOC folder."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from ..cache import check_writable_dir, clean_stale_temp_dirs, make_temp_dir
from ..errors import DatasetError, DataSetupError
from .assets import TUXPAINT_PACKAGES, _has_assets, find_tuxpaint, list_stamps, protocol_pools, split_pools
from .draw import _draw_one, _voc_palette, _voc_xml
from .params import JPEG_QUALITY, _check_params, _Params
from .spec import _BOX, SPLITS, load_mosaic_spec

def _assets_sha256(stamps_root: Path, pools: dict, backgrounds: list[tuple[str, object, _BOX]],
                   templates: Path) -> str:
    h = hashlib.sha256()
    files = sorted({s for split in pools.values() for names in split.values() for s in names})
    for rel in files:
        h.update(rel.encode() + b"\0" + hashlib.sha256((stamps_root / rel).read_bytes()).digest())
    for name, _, _ in backgrounds:
        h.update(name.encode() + b"\0" + hashlib.sha256((templates / name).read_bytes()).digest())
    return h.hexdigest()


def _existing_params(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / "mosaic.json").read_text())["params"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _param_differences(old: dict, new: dict) -> str:
    """``"seed 0 -> 1, n_train 16 -> 8"``: the build parameters that differ, old value first."""
    out = []
    for k in list(new) + sorted(set(old) - set(new)):
        if old.get(k, "<absent>") != new.get(k, "<absent>"):
            out.append(f"{k} {old.get(k, '<absent>')} -> {new.get(k, '<absent>')}")
    return ", ".join(out)


def _builder_files(out_dir: Path) -> set[str]:
    """The paths (relative, posix) of every file and folder a build wrote in ``out_dir``, from its
    ``mosaic.json`` (empty if that cannot be read)."""
    try:
        ids = list(json.loads((out_dir / "mosaic.json").read_text())["images"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    made = {"mosaic.json", "classes.yaml", "JPEGImages", "Annotations", "SegmentationObject", "ImageSets",
            "ImageSets/Main"} | {f"ImageSets/Main/{split}.txt" for split in SPLITS}
    for i in ids:
        made |= {f"JPEGImages/{i}.jpg", f"Annotations/{i}.xml", f"SegmentationObject/{i}.png"}
    return made


def _refuse_foreign(out_dir: Path) -> None:
    """Raise if ``out_dir`` holds a file or folder that the build recorded in its ``mosaic.json`` did not write."""
    made = _builder_files(out_dir)
    foreign = []
    for dirpath, dirnames, filenames in os.walk(out_dir):
        rel_dir = Path(dirpath).relative_to(out_dir)
        foreign += [(rel_dir / n).as_posix() for n in dirnames + filenames if (rel_dir / n).as_posix() not in made]
    if foreign:
        foreign.sort()
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise DatasetError(
            f"{out_dir} holds {len(foreign)} file(s) the mosaic builder did not write ({shown}); refusing to "
            f"replace it, as that would delete them: move them elsewhere or pick another folder")


def build_mosaics(
    out_dir: str | Path,
    *,
    n_train: int = 400,
    n_test: int = 200,
    seed: int = 0,
    image_size: int = 448,
    min_objects: int = 2,
    max_objects: int = 4,
    min_scale: float = 0.25,
    max_scale: float = 0.5,
    stamps: str = "disjoint",
    source: str | Path | None = None,
    classes_file: str | Path | None = None,
    progress: bool = True,
    rebuild: bool = False,
) -> Path:
    """Build the mosaic data set in VOC layout under ``out_dir`` (see the module docstring); return it.

    Args:
        out_dir: the data set folder. A build with the same parameters there is reused; one with other
            parameters is refused (the message names the differing parameters) unless ``rebuild``; an
            existing non-empty folder without ``mosaic.json`` is refused. Nothing the builder did not
            write is ever deleted: a set holding other files is refused even with ``rebuild``.
        n_train, n_test: number of mosaics per split (``stamps="disjoint"``: train and test stamps never overlap).
        seed: the seed of every random choice.
        image_size: side of the square images, in pixels.
        min_objects, max_objects: number of objects per image, drawn uniformly; their classes are
            distinct and drawn uniformly.
        min_scale, max_scale: the longer side of each object, as a fraction of ``image_size``, drawn
            uniformly.
        stamps: the stamp protocol: ``"disjoint"`` (train and test stamps never overlap) or ``"shared"``
            (both splits draw from every stamp: the same object photos in new scenes); see the module docstring.
        source: a ``usr/share/tuxpaint`` folder; default :func:`find_tuxpaint` (may download).
        classes_file: the class-set YAML; default :data:`DEFAULT_CLASSES_FILE`.
        progress: show a tqdm bar and print when a build is reused.
        rebuild: replace a set built with other parameters (``--rebuild``, ``data.rebuild``).

    Stale temporary folders (``.<name>.tmp-*``) that a killed build left beside ``out_dir`` are removed first.
    Folders and files are created with the process's umask (a shared data set stays readable).
    """
    spec = load_mosaic_spec(classes_file)
    p = _Params(int(n_train), int(n_test), int(seed), int(image_size), int(min_objects),
                int(max_objects), float(min_scale), float(max_scale), str(stamps))
    _check_params(p, len(spec.classes))
    params = p.as_dict(spec)
    out_dir = Path(out_dir)

    if out_dir.exists():
        old = _existing_params(out_dir)
        if old == params:
            if progress:
                print(f"ccdlib: reusing the mosaic data set in {out_dir} (same parameters)", file=sys.stderr)
            return out_dir
        if old is None and (not out_dir.is_dir() or any(out_dir.iterdir())):
            raise DatasetError(
                f"{out_dir} exists and is not a mosaic data set (no readable mosaic.json); refusing to "
                f"overwrite it: pick another folder or delete it")
        if old is not None and not rebuild:
            raise DatasetError(
                f"{out_dir} holds a mosaic data set built with other parameters "
                f"({_param_differences(old, params)}); refusing to replace it: rebuild it with --rebuild "
                f"(data.rebuild: true, build_mosaics(rebuild=True)) or pick another folder")
        if old is not None:
            _refuse_foreign(out_dir)
    check_writable_dir(out_dir.parent, "mosaic output folder")
    for stale in (f".{out_dir.name}.tmp-", f".{out_dir.name}.old-"):
        for d in clean_stale_temp_dirs(out_dir.parent, stale):
            if progress:
                print(f"ccdlib: removed {d}, left by a killed build", file=sys.stderr)

    src = Path(source) if source is not None else find_tuxpaint()
    if not _has_assets(src):
        raise DataSetupError(f"{src} holds no stamps/ and templates/ folders (a usr/share/tuxpaint folder)")
    stamps_root, templates = src / "stamps", src / "templates"
    pools = protocol_pools(split_pools(list_stamps(src, spec), spec.test), p.stamps)

    from PIL import Image

    backgrounds = []
    for name, box in spec.backgrounds:
        path = templates / name
        if not path.is_file():
            raise DataSetupError(f"background photo {path} (listed in {spec.path}) is absent")
        with Image.open(path) as im:
            im = im.convert("RGB")
        box = box or (0, 0, im.width, im.height)
        if box[2] > im.width or box[3] > im.height:
            raise DatasetError(f"{spec.path}: box {list(box)} of {name} exceeds its size {im.size}")
        backgrounds.append((name, im, box))

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out_dir.parent, f".{out_dir.name}.tmp-")
    try:
        for sub in ("JPEGImages", "Annotations", "SegmentationObject", "ImageSets/Main"):
            (tmp / sub).mkdir(parents=True)
        palette = _voc_palette()
        class_ids = spec.classes.ids
        manifest: dict[str, dict] = {}
        jobs = [(si, split, i) for si, (split, n) in enumerate(zip(SPLITS, (p.n_train, p.n_test)))
                for i in range(n)]
        from tqdm.auto import tqdm

        for si, split, i in tqdm(jobs, desc="mosaics", unit="img", disable=not progress):
            rng = np.random.default_rng(np.random.SeedSequence([p.seed, si, i]))
            rgb, objmap, record = _draw_one(rng, p, pools[split], class_ids, stamps_root, backgrounds)
            image_id = f"{split}_{i:06d}"
            Image.fromarray(rgb, "RGB").save(tmp / "JPEGImages" / f"{image_id}.jpg", quality=JPEG_QUALITY)
            seg = Image.fromarray(objmap, "P")
            seg.putpalette(palette)
            seg.save(tmp / "SegmentationObject" / f"{image_id}.png", optimize=False)
            (tmp / "Annotations" / f"{image_id}.xml").write_bytes(
                _voc_xml(image_id, p.image_size, record["objects"]))
            manifest[image_id] = {"split": split, **record}
        for split, n in zip(SPLITS, (p.n_train, p.n_test)):
            (tmp / "ImageSets" / "Main" / f"{split}.txt").write_text(
                "".join(f"{split}_{i:06d}\n" for i in range(n)))
        (tmp / "classes.yaml").write_text(
            "# class id: prompt name (label-column order); written by ccdlib.mosaic\n"
            + "".join(f"{cid}: {json.dumps(pn)}\n" for cid, pn in zip(class_ids, spec.classes.prompt_names)))
        info = {
            "params": params,
            "sources": {"packages": list(TUXPAINT_PACKAGES),
                        "assets_sha256": _assets_sha256(stamps_root, pools, backgrounds, templates)},
            "classes": dict(zip(class_ids, spec.classes.prompt_names)),
            "pools": pools,
            "backgrounds": [{"file": n, "box": list(b)} for n, _, b in backgrounds],
            "conventions": {"box": "[x0, y0, x1, y1] 0-based pixels, x1/y1 exclusive, of the visible mask",
                            "masks": "SegmentationObject/<id>.png: k = k-th object (1-based), 0 = none",
                            "crop": "[x0, y0, x1, y1, flipped] of the background photo"},
            "images": manifest,
        }
        (tmp / "mosaic.json").write_text(json.dumps(info, indent=1) + "\n")   # written last
        if out_dir.exists():
            if _existing_params(out_dir) is not None:
                _refuse_foreign(out_dir)   # again: a file may have been added while we built
            elif any(out_dir.iterdir()):
                raise DatasetError(f"{out_dir} was filled while the mosaics were built; refusing to replace it")
            trash = make_temp_dir(out_dir.parent, f".{out_dir.name}.old-")
            os.replace(out_dir, trash / "old")
            os.replace(tmp, out_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
