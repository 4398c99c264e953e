"""The ``python -m ccdlib data mosaic`` command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import CCDError
from .build import build_mosaics
from .embedded import default_mosaic_root
from .spec import STAMP_PROTOCOLS

# ----------------------------------------------------------------------------------------- CLI
def cli_main(argv: list[str] | None = None) -> int:
    """``python -m ccdlib data mosaic --out DIR [--train N] [--test M] [--seed S] [--image-size PX] [--stamps P]``."""
    ap = argparse.ArgumentParser(
        prog="python -m ccdlib data mosaic",
        description="Build the embedded 'stamp mosaic' data set (VOC layout) from the tuxpaint photo "
                    "packages, fetching them if needed.")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default: under the ccdlib cache, see ccdlib.mosaic)")
    ap.add_argument("--train", type=int, default=400, help="number of training mosaics (default 400)")
    ap.add_argument("--test", type=int, default=200, help="number of test mosaics (default 200)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--image-size", type=int, default=448, help="image side in pixels (default 448)")
    ap.add_argument("--min-objects", type=int, default=2, help="fewest objects per image (default 2)")
    ap.add_argument("--max-objects", type=int, default=4, help="most objects per image (default 4)")
    ap.add_argument("--min-scale", type=float, default=0.25,
                    help="smallest object size, longer side / image side (default 0.25)")
    ap.add_argument("--max-scale", type=float, default=0.5,
                    help="largest object size, longer side / image side (default 0.5)")
    ap.add_argument("--stamps", choices=STAMP_PROTOCOLS, default="disjoint",
                    help="stamp protocol: disjoint train/test stamps (default) or shared (new scenes)")
    ap.add_argument("--source", type=Path, default=None,
                    help="a usr/share/tuxpaint folder (default: found or fetched by find_tuxpaint)")
    ap.add_argument("--classes", type=Path, default=None, help="class-set YAML (default: the shipped one)")
    ap.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    ap.add_argument("--rebuild", action="store_true",
                    help="replace a set in --out built with other parameters (a folder holding files the "
                         "builder did not write is still refused: they are never deleted)")
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="the ccdlib cache (default $CCDLIB_CACHE or ~/.cache/ccdlib): default --out, fetched packages")
    args = ap.parse_args(argv)
    from ..cache import cache_location
    try:
        with cache_location(args.cache_dir):
            out = args.out or default_mosaic_root(n_train=args.train, n_test=args.test, seed=args.seed,
                                                  image_size=args.image_size, stamps=args.stamps)
            root = build_mosaics(
                out, n_train=args.train, n_test=args.test, seed=args.seed, image_size=args.image_size,
                min_objects=args.min_objects, max_objects=args.max_objects, min_scale=args.min_scale,
                max_scale=args.max_scale, stamps=args.stamps, source=args.source, classes_file=args.classes,
                progress=args.progress, rebuild=args.rebuild or args.out is None)
    except CCDError as e:   # exit 2, as every ccdlib command documents
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(root)
    return 0


main = cli_main
