"""The embedded default data set: "stamp mosaics" built on the fly from real photos.

Every mosaic is a random crop of a background photo with 2-4 object photos ("stamps", cut-outs with an
alpha channel) of distinct classes pasted on it, so its multi-hot labels, boxes and object masks are
exact by construction. The photos come from two Debian packages, fetched on first use:

* ``tuxpaint-stamps-default``: ~350 real-photo cut-outs, PNG with alpha, in labelled folders under
  ``usr/share/tuxpaint/stamps/``;
* ``tuxpaint-data``: background photos ``usr/share/tuxpaint/templates/*.jpg``.

The class set is data: ``ccdlib/data/mosaic_classes.yaml`` maps each class id to its prompt name, its
stamp folders and optional include/exclude lists, and lists the background photos kept. Stamps of each
class are split into disjoint train and test pools (:func:`split_pools`); backgrounds are shared.

Two stamp protocols (``stamps``, :data:`STAMP_PROTOCOLS`):

* ``"disjoint"`` (default): train and test mosaics draw from the disjoint pools, so every test object is a
  photo never seen in training (the student must generalise from ~7 photos per class).
* ``"shared"``: both splits draw from every usable stamp of a class (the union of the two pools), so test
  mosaics show the same object photos as training, in new scenes: other backgrounds, positions, scales,
  flips and partners (each image has its own random stream, so no test image repeats a training one).

The protocol is a build parameter: it is recorded in ``mosaic.json`` (``params.stamps`` and the ``pools``
actually used) and a shared-stamp set gets its own default folder (suffix ``-shared``), so sets built with
different protocols never collide.

Output layout (Pascal VOC, readable by :func:`ccdlib.readers.read_voc` with the set's own class list)::

    <out>/JPEGImages/<id>.jpg            # image_size x image_size RGB, JPEG quality 95
    <out>/Annotations/<id>.xml           # VOC xml; bndbox 1-based inclusive, difficult=0, truncated=0
    <out>/SegmentationObject/<id>.png    # palette PNG: 0 background, k = the k-th <object> of the xml
    <out>/ImageSets/Main/train.txt       # ids train_000000 ...
    <out>/ImageSets/Main/test.txt        # ids test_000000 ...
    <out>/classes.yaml                   # {class id: prompt name}, label-column order
    <out>/mosaic.json                    # build parameters, stamp pools and a per-image manifest

Conventions:

* An object's *mask* is the set of pixels where its resized stamp has alpha >= 128 (:data:`MASK_ALPHA`)
  and no later stamp (alpha >= 128) covers it: the *visible* part. Faint stamp halos (alpha < 128,
  often a few pixels wide) are blended into the picture but belong to no mask, so they do not inflate
  boxes.
* An object's box is the tight box of its visible mask, ``[x0, y0, x1, y1]`` 0-based with x1, y1
  exclusive in ``mosaic.json`` (what :func:`ccdlib.readers.read_voc` returns), and
  ``xmin = x0 + 1, ymin = y0 + 1, xmax = x1, ymax = y1`` in the VOC xml.
* Every image is drawn from its own ``numpy.random.Generator`` seeded with
  ``SeedSequence([seed, split_index, image_index])`` (train 0, test 1), so a build is reproducible
  byte for byte for a seed (given the same Pillow/libjpeg/zlib) and an image does not depend on how
  many others are built.

Building is skipped when ``<out>/mosaic.json`` already records the same parameters; otherwise the
set is written to a temporary sibling folder and renamed into place, so a killed build leaves nothing
that a later run trusts. :func:`embedded_dataset` builds under
``<cache>/mosaics/s<seed>-n<train>-<test>-<size>px`` (cache = :func:`ccdlib.cache.default_cache_dir`)
unless given ``root``.

Command line (wired as ``python -m ccdlib data mosaic``)::

    python -m ccdlib data mosaic --out DIR --train 400 --test 200 --seed 0 [--image-size 448] [--stamps shared]
"""
from __future__ import annotations

# Submodules, lowest first: spec (class-set file, splits, protocols) <- params (build parameters, drawing
# constants) <- assets (tuxpaint source, stamps, pools) <- draw (one mosaic, VOC xml) <- build (the set on
# disk) <- embedded (default root, reading, the "mosaic" reader) <- cli. The private helpers live there.
from .spec import DEFAULT_CLASSES_FILE, STAMP_PROTOCOLS, MosaicSpec, load_mosaic_spec, mosaic_class_list
from .assets import TUXPAINT_PACKAGES, find_tuxpaint, list_stamps, protocol_pools, split_pools
from .build import build_mosaics
from .embedded import default_mosaic_root, embedded_dataset, read_mosaic   # registers the "mosaic" reader
from .cli import cli_main, main

__all__ = [
    "DEFAULT_CLASSES_FILE",
    "TUXPAINT_PACKAGES",
    "MosaicSpec",
    "load_mosaic_spec",
    "mosaic_class_list",
    "find_tuxpaint",
    "list_stamps",
    "split_pools",
    "protocol_pools",
    "STAMP_PROTOCOLS",
    "build_mosaics",
    "read_mosaic",
    "embedded_dataset",
    "default_mosaic_root",
    "cli_main",
    "main",
]
