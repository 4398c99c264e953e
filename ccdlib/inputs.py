"""The inputs of a run, loaded and checked before any work: the splits a data config names (and the few-label
split held out of them), the checks a run needs of them (classes, overlap, measurability), the student's weights
file, the output folder, and the fingerprint of everything a run's results depend on in its data."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from .cache import file_fingerprints, stable_hash
from .config import DataConfig, RunConfig
from .datasets import MultiLabelDataset

__all__ = ["load_data", "split_few_label", "load_splits", "check_splits", "align_split_classes", "input_fingerprint",
           "check_writable"]


def load_data(cfg: DataConfig, *, cache_dir: str | Path | None = None, seed: int = 0
              ) -> tuple[MultiLabelDataset, MultiLabelDataset]:
    """The train and test splits named by ``cfg`` (the mosaic data is built on first use)."""
    if cfg.kind == "mosaic":
        from .mosaic import embedded_dataset
        kw = dict(root=cfg.root, n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.mosaic_seed, stamps=cfg.stamps)
        kw.update(cache_dir=cache_dir, rebuild=cfg.rebuild)   # one cache for everything (issue 11 items 7, 9)
        train, test = embedded_dataset("train", **kw), embedded_dataset("test", **kw)
    else:
        from .readers import load_dataset
        extra = {"classes": cfg.classes} if cfg.classes else {}   # VOC, COCO and NUS-WIDE readers (issue 23)
        train = load_dataset(cfg.kind, cfg.root, cfg.train_split, **extra)
        test = load_dataset(cfg.kind, cfg.root, cfg.test_split, **extra)
        test = align_split_classes(train, test)   # COCO: each file numbers its own categories (issue 17)
    rng = np.random.default_rng(seed)
    if cfg.max_train and cfg.max_train < len(train):
        train = train.subset(sorted(rng.choice(len(train), cfg.max_train, replace=False)), name=f"{train.name}[:{cfg.max_train}]")
    if cfg.max_test and cfg.max_test < len(test):
        test = test.subset(sorted(rng.choice(len(test), cfg.max_test, replace=False)), name=f"{test.name}[:{cfg.max_test}]")
    train, _ = split_few_label(train, cfg)
    return train, test


def split_few_label(train: MultiLabelDataset, cfg: DataConfig) -> tuple[MultiLabelDataset, MultiLabelDataset | None]:
    """``(training split without the few-label images, the few-label validation split or None)``
    (:func:`ccdlib.selection.few_label_split`, ``data.few_label_k`` per class, seeded by ``data.few_label_seed``)."""
    from .selection import few_label_split
    if not cfg.few_label_k:
        return train, None
    held = few_label_split(train.labels, k=cfg.few_label_k, seed=cfg.few_label_seed,
                           class_names=train.class_ids)   # warns of classes left short (issue 23)
    if not len(held) or len(held) >= len(train):
        return train, None
    keep = np.setdiff1d(np.arange(len(train)), held)
    return (train.subset(keep, name=f"{train.name}-few{cfg.few_label_k}"),
            train.subset(held, name=f"{train.name}:few_label{cfg.few_label_k}"))


def load_splits(cfg: DataConfig, *, cache_dir: str | Path | None = None, seed: int = 0
                ) -> tuple[MultiLabelDataset, MultiLabelDataset, MultiLabelDataset | None]:
    """:func:`load_data`'s splits plus the few-label validation split held out of training (or None):
    ``(train, test, val)``."""
    full_cfg = replace(cfg, few_label_k=0)
    train, test = load_data(full_cfg, cache_dir=cache_dir, seed=seed)
    train, val = split_few_label(train, cfg)
    return train, test, val



def _check_student_weights(cfg: RunConfig) -> None:
    """The student's trunk weights file read and checked against ``student.trunk`` (:func:`~ccdlib.student.
    check_trunk_weights`): a :class:`~ccdlib.errors.CheckpointError` naming the file, the architecture expected and
    a few differing keys / shapes, before the data and the teacher (the student is built after the teacher's
    scoring). An open_clip ``teacher.pretrained`` file is read when the teacher is built, also in
    :func:`make_context` and before any scoring (a :class:`~ccdlib.errors.TeacherError` naming it)."""
    from .errors import CheckpointError
    from .student import check_trunk_weights
    try:
        check_trunk_weights(cfg.student)
    except CheckpointError as e:
        raise CheckpointError(f"student.trunk_weights: {e}") from None


def check_splits(train: MultiLabelDataset, test: MultiLabelDataset, val: MultiLabelDataset | None = None) -> None:
    """What a run needs of its splits, checked before any work (issue 11): at least 2 classes (a softmax over one
    class is always 1); a test split without any labelled object is allowed (an annotation-free method trains
    and labels without it) but its metrics are NaN and the ``gt_best`` rule is skipped, which is warned.
    ``val``: the few-label split held out of ``train`` (:func:`load_splits`' third split): the test split is
    compared with the whole training split, ``train`` and ``val`` together (issue 23)."""
    import warnings
    from .errors import DatasetError
    if train.num_classes < 2:
        raise DatasetError(f"{train.name} has {train.num_classes} class ({', '.join(train.class_ids)}): a run needs "
                           f"at least 2 classes (the teacher's softmax over one class is always 1)")
    if tuple(train.class_ids) != tuple(test.class_ids):   # issue 17: else a shape mismatch at the first evaluation
        raise DatasetError(_class_mismatch(train, test))
    _check_measurable(train, test, val)
    if not np.asarray(test.labels).any():
        warnings.warn(f"test split {test.name} has no labelled object: the run trains, labels and saves, but its "
                      f"test metrics are NaN and the gt_best checkpoint rule (best test mAP) is skipped", stacklevel=3)


def _split_source(ds: MultiLabelDataset) -> str:
    """The file a split was read from where there is one (COCO's JSON), else its name and root."""
    meta = ds.meta or {}
    if meta.get("annotation_file"):
        return str(meta["annotation_file"])
    return f"{ds.name} ({meta['root']})" if meta.get("root") else ds.name


def _class_mismatch(train: MultiLabelDataset, test: MultiLabelDataset) -> str:
    only_train = [c for c in train.class_ids if c not in set(test.class_ids)]
    only_test = [c for c in test.class_ids if c not in set(train.class_ids)]
    if not only_train and not only_test:
        return (f"the training split {_split_source(train)} and the test split {_split_source(test)} list the same "
                f"classes in another order ({list(train.class_ids)[:5]}... vs {list(test.class_ids)[:5]}...): the "
                f"label columns would not correspond")
    return (f"the training split {_split_source(train)} and the test split {_split_source(test)} have different "
            f"classes: only in training {only_train[:10]}{' ...' if len(only_train) > 10 else ''}, only in test "
            f"{only_test[:10]}{' ...' if len(only_test) > 10 else ''}; both splits must use one class list")


def align_split_classes(train: MultiLabelDataset, test: MultiLabelDataset) -> MultiLabelDataset:
    """``test`` with its class columns in ``train``'s order (issue 17). COCO orders each file's categories by its
    own category ids, so two files numbering them differently gave test labels whose columns meant other classes
    (a silently wrong mAP). Classes are matched by name; the training split's order wins, the test labels, boxes,
    difficult flags and ``meta["category_ids"]`` are re-indexed, and a warning names both files and the ids that
    differ. Different class sets are a :class:`~ccdlib.errors.DatasetError` naming both files and the classes."""
    import warnings
    from .datasets import ClassList
    from .errors import DatasetError
    if tuple(train.class_ids) == tuple(test.class_ids):
        return test
    if set(train.class_ids) != set(test.class_ids) or len(train.class_ids) != len(test.class_ids):
        raise DatasetError(_class_mismatch(train, test))
    order = [test.class_ids.index(c) for c in train.class_ids]    # new column k = old column order[k]
    new_index = np.empty(len(order), dtype=np.int64)
    new_index[order] = np.arange(len(order))                     # old column j -> new column new_index[j]
    meta = dict(test.meta)
    cat_ids = meta.get("category_ids")
    differ = ""
    if cat_ids is not None and train.meta.get("category_ids") is not None:
        tr = dict(zip(train.class_ids, train.meta["category_ids"]))
        te = dict(zip(test.class_ids, cat_ids))
        diff = [f"{c!r}: {tr[c]} vs {te[c]}" for c in train.class_ids if tr[c] != te[c]]
        differ = f" (category ids {', '.join(diff[:5])}{' ...' if len(diff) > 5 else ''})"
        meta["category_ids"] = [cat_ids[j] for j in order]
    boxes = None
    if test.boxes is not None:
        boxes = []
        for b in test.boxes:
            b = np.array(b, copy=True)
            if len(b):
                b[:, 0] = new_index[b[:, 0].astype(np.int64)]
            boxes.append(b)
    warnings.warn(f"the training split {_split_source(train)} and the test split {_split_source(test)} number their "
                  f"classes differently{differ}: the test labels are re-indexed by class name to the training "
                  f"split's order", UserWarning, stacklevel=2)
    classes = ClassList(tuple(train.class_ids), tuple(test.prompt_names[j] for j in order))
    return MultiLabelDataset(name=test.name, image_ids=list(test.image_ids), image_paths=list(test.image_paths),
                             labels=np.asarray(test.labels)[:, order], classes=classes, boxes=boxes,
                             difficult=None if test.difficult is None else np.asarray(test.difficult)[:, order],
                             meta=meta)


def _check_measurable(train: MultiLabelDataset, test: MultiLabelDataset, val: MultiLabelDataset | None = None
                      ) -> None:
    """Issue 17: a test split that cannot measure anything. Fewer than 2 images (a mAP over one image is 100 or 0)
    and a test split holding exactly the training images are :class:`~ccdlib.errors.DatasetError`; a partial
    overlap (the same image files) is warned, naming the first ids and the count. The training images are those of
    ``train`` and of the few-label split ``val`` held out of it (issue 23: without ``val``, a test split equal to the
    training split looked like a partial overlap whenever ``data.few_label_k`` > 0). Image ids are not compared: a
    VOC / NUS-WIDE id names one file under its root (the paths say it), and COCO-format files that each number
    their images from 1 name different images in their own split folders."""
    import os
    import warnings
    from .errors import DatasetError
    if len(test) < 2:
        raise DatasetError(f"test split {test.name} ({_split_source(test)}) has {len(test)} image "
                           f"({', '.join(test.image_ids)}): its mAP would be 100 or 0; a test split needs at least "
                           f"2 images (check data.test_split / data.max_test)")

    def norm(p) -> str:
        return os.path.normpath(os.path.abspath(os.fspath(p)))
    train_paths = {norm(p) for p in train.image_paths}
    if val is not None:
        train_paths |= {norm(p) for p in val.image_paths}
    shared = [i for i, p in zip(test.image_ids, test.image_paths) if norm(p) in train_paths]
    if not shared:
        return
    where = _split_source(train) + (f" with its {len(val)} few-label images {val.name}" if val is not None else "")
    if len(shared) == len(test) == len(train_paths):
        raise DatasetError(f"the test split {_split_source(test)} and the training split {where} hold the same "
                           f"{len(test)} images (e.g. {', '.join(test.image_ids[:5])}): a test split must hold "
                           f"images the student did not train on (check data.train_split / data.test_split)")
    warnings.warn(f"{len(shared)} of the {len(test)} test images of {_split_source(test)} are also in the training "
                  f"split {where} (e.g. {', '.join(shared[:5])}): test metrics on them measure memorisation, not "
                  f"generalisation", UserWarning, stacklevel=3)


def input_fingerprint(train: MultiLabelDataset, test: MultiLabelDataset, *, val: MultiLabelDataset | None = None,
                      file_stats: dict[str, list] | None = None) -> dict[str, dict[str, str]]:
    """What a run's results depend on in its data, per split: ``ids`` (the split file), ``classes`` (class ids and
    prompt names: the class list), ``labels`` (labels, difficult flags, boxes: the annotations) and ``images``
    (each image's size and mtime, :func:`~ccdlib.cache.file_fingerprints`; pass ``file_stats``, split -> those
    fingerprints, when they are at hand). Hashes (16 hex digits). ``val``: the few-label split held out of the
    training split (``data.few_label_k``), fingerprinted as ``few_label`` (its labels pick the few-label rule's
    checkpoint)."""
    out = {}
    for split, ds in (("train", train), ("test", test), ("few_label", val)):
        if ds is None:
            continue
        fps = (file_stats or {}).get(split) or file_fingerprints(ds.image_paths)
        boxes = None if ds.boxes is None else [np.asarray(b) for b in ds.boxes]
        out[split] = {
            "ids": stable_hash(list(ds.image_ids), 16),
            "classes": stable_hash([list(ds.class_ids), list(ds.prompt_names)], 16),
            "labels": stable_hash([np.asarray(ds.labels), ds.difficult, boxes], 16),
            "images": stable_hash([[i, fp] for i, fp in zip(ds.image_ids, fps)], 16),
        }
    return out


def _changed_inputs(old: dict | None, new: dict) -> list[str]:
    """``["test labels", "train images", ...]``: the parts of two :func:`input_fingerprint` that differ. A split
    the old record lacks is not compared: results saved before the few-label split was fingerprinted are reused as
    they were."""
    if not old:
        return ["not recorded"]
    return [f"{split} {part}" for split in new if split in old for part in new[split]
            if (old.get(split) or {}).get(part) != new[split][part]]


def check_writable(folder: str | Path) -> None:
    """An :class:`OutputError` ``cannot write results to <folder>: ...`` unless files can be created in
    ``folder`` (or, when it does not exist yet, in its nearest existing parent). Creates nothing that stays."""
    import tempfile
    from .errors import OutputError
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"cannot write results to {folder}: {probe} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise OutputError(f"cannot write results to {folder}: {e.strerror or e}") from None
