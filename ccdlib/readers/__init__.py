"""Readers that turn a data set on disk into a :class:`~ccdlib.datasets.MultiLabelDataset`.

Nothing here downloads anything: every reader reads files the user already has and raises
:class:`~ccdlib.errors.DatasetError` (naming the path, class or id at fault) when they are missing or
inconsistent. A class with no positive image in the split read is allowed, but a ``UserWarning``
naming those classes is emitted.

Supported layouts
-----------------
* **Pascal VOC** (:func:`read_voc`), also any user data set laid out the VOC way with its own class list::

      VOC2007/                      # a "year folder"; a VOCdevkit/ holding exactly one VOC20xx/ also works
        JPEGImages/<id>.jpg
        Annotations/<id>.xml
        ImageSets/Main/<split>.txt  # one image id per line

* **MS-COCO** (:func:`read_coco`)::

      <root>/<split>/<file_name>                    # e.g. train2014/COCO_train2014_000000000009.jpg
      <root>/annotations/instances_<split>.json

* **NUS-WIDE** (:func:`read_nuswide`)::

      <root>/Concepts81.txt                                    # 81 concept names, one per line (optional)
      <root>/ImageList/TrainImagelist.txt, TestImagelist.txt   # relative image paths, '\\' or '/'
      <root>/Groundtruth/TrainTestLabels/Labels_<concept>_Train.txt, ..._Test.txt  # one 0/1 per line
      <root>/Flickr/<relative path>   (or <root>/images/<relative path or file name>)

VOC "difficult" policy (fixed; see method.md §8)
-------------------------------------------
A VOC object may be flagged ``<difficult>1</difficult>``. :func:`read_voc` takes ``difficult=``:

* ``"negative"`` (default, like the released CCD code's preprocessing): class *c* is a positive of an
  image only if the image has at least one **non-difficult** object of class *c*. A class present
  only through difficult objects gets label 0.
* ``"positive"``: difficult objects count as positives like any other object.
* ``"ignore"``: the same labels as ``"negative"``; the caller is expected to use the
  ``difficult`` matrix to leave those (image, class) entries out of evaluation.

Whatever the policy, the returned data set's ``difficult`` matrix ``(N, C) uint8`` is 1 exactly where
the class is present in the image *only* as difficult objects, and ``meta["difficult_policy"]``
records the policy used. (This matches the 1 / 0 / -1 coding of VOC's own
``ImageSets/Main/<class>_<split>.txt`` files: 1 = a non-difficult object, 0 = difficult objects only.)

Boxes
-----
``boxes[i]`` is a float32 ``(K, 5)`` array ``[class_index, x0, y0, x1, y1]`` in pixels, 0-based,
continuous coordinates (a box covering a whole ``W x H`` image is ``[0, 0, W, H]``):

* VOC xml is 1-based and inclusive, so ``x0 = xmin - 1, y0 = ymin - 1, x1 = xmax, y1 = ymax``. Every
  object is listed, difficult ones included; an object without ``<bndbox>`` counts for the labels but
  has no box row.
* COCO ``bbox = [x, y, w, h]`` is already 0-based: ``[c, x, y, x + w, y + h]``; crowd regions included.

Dispatch
--------
:func:`load_dataset` picks a reader by kind from the registry :data:`READERS` (``"voc"``, ``"voc2007"``,
``"voc2012"``, ``"coco"``, ``"coco2014"``, ``"nuswide"``); other modules add kinds with
:func:`register_reader` (or by setting ``READERS[kind]`` directly).
"""
from __future__ import annotations

# Submodules, lowest first: common (shared helpers) <- voc, coco, nuswide (one data-set kind each) <- registry
# (READERS, register_reader, load_dataset). The private helpers live in those submodules.
from .coco import read_coco
from .nuswide import NUSWIDE_CLASSES, read_nuswide
from .registry import READERS, load_dataset, register_reader
from .voc import DIFFICULT_POLICIES, VOC_CLASSES, read_voc

__all__ = [
    "VOC_CLASSES",
    "NUSWIDE_CLASSES",
    "DIFFICULT_POLICIES",
    "read_voc",
    "read_coco",
    "read_nuswide",
    "load_dataset",
    "register_reader",
    "READERS",
]
