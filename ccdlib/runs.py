"""One readable run function per method, built from the paper steps.

- :func:`run_teacher_global` -- the teacher's zero-shot global prediction, and a student trained on it.
- :func:`run_cdul` -- CDUL: global-local aggregated pseudo-labels (+ gradient-alignment updates).
- :func:`run_ccd` -- CCD: debiased global labels, warm-up, one classifier-guided label update, consistency loss.
- :func:`run_supervised` -- the same student trained on ground truth (the upper bound).

Every run returns a :class:`RunResult` holding per-epoch history, the three checkpoint-selection rules
(``last``, ``gt_free``, ``gt_best``), pseudo-label quality per stage and wall times; :func:`run` writes it as
JSON + CSV under ``out_dir/<run name>/`` and skips runs whose results exist (unless ``force``).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .cache import (atomic_write_bytes, atomic_write_text, cache_location, changed_files, check_writable_dir,
                    default_cache_dir, file_fingerprints, save_arrays, stable_hash)
from .config import DataConfig, RunConfig, config_to_dict
from .datasets import MultiLabelDataset
from .metrics import evaluate, mean_average_precision, released_code_map
from .pseudolabels import (ccd_initial_pseudo_labels, cdul_alignment_schedule, cdul_bernoulli_alignment_update,
                           cdul_gradient_alignment_update, cdul_initial_pseudo_labels)
from .label_update import classifier_guided_label_update
from .schedule import Schedule, training_schedule
from .scoring import embed_views
from .student import alpha_for
from .trainer import StudentTrainer
from .teachers import Teacher, TeacherConfig, build_teacher
from .views import View, global_views, grid_views, image_size

__all__ = [
    "Context", "make_context", "load_data", "global_probabilities", "grid_probabilities", "view_probabilities",
    "pseudo_label_quality", "select_checkpoints", "RunResult", "run_teacher_global", "run_cdul", "run_ccd",
    "run_supervised", "run", "RUNNERS", "input_fingerprint", "check_inputs_unchanged", "check_writable",
    "check_splits", "TrainingState", "discard_training_state", "TEST_SCORES_FILE", "save_test_scores", "load_test_scores",
    "run_with_test_scores", "load_splits", "split_few_label", "train_view_probabilities",
    "align_split_classes", "acquire_run_lock", "release_run_lock", "RUN_LOCK_FILE",
]


# --------------------------------------------------------------------------------------------- context
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
        extra = {"classes": cfg.classes} if cfg.classes and cfg.kind.startswith("voc") else {}
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
    held = few_label_split(train.labels, k=cfg.few_label_k, seed=cfg.few_label_seed)
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


_TEACHERS: dict[str, Teacher] = {}


def get_teacher(cfg: TeacherConfig) -> Teacher:
    """Build a teacher once per process (notebooks reuse it across runs)."""
    key = json.dumps(config_to_dict(cfg), sort_keys=True)
    if key not in _TEACHERS:
        _TEACHERS[key] = build_teacher(cfg)
    return _TEACHERS[key]


@dataclass
class Context:
    """What every step of a run needs: the config, the splits, the teacher and its text classifier."""

    cfg: RunConfig
    train: MultiLabelDataset
    test: MultiLabelDataset
    teacher: Teacher
    classifier: torch.Tensor          # (C, D)
    cache_dir: Path
    val: MultiLabelDataset | None = None   # the few-label validation split held out of training (data.few_label_k)
    sizes: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    inputs: dict[str, dict[str, str]] = field(default_factory=dict)   # input_fingerprint(train, test)
    file_stats: dict[str, list] = field(default_factory=dict)          # split -> file_fingerprints of its images
    state_dir: Path | None = None     # where TrainingLog keeps the resumable training state (run() sets it)
    write_state: bool = False         # this process writes it (rank 0 of a saving run)

    def split(self, name: str) -> MultiLabelDataset:
        if name == "val" and self.val is None:
            raise KeyError("this context has no few-label validation split (data.few_label_k: 0)")
        return {"train": self.train, "test": self.test, "val": self.val}[name]

    def image_sizes(self, split: str) -> list[tuple[int, int]]:
        if split not in self.sizes:
            self.sizes[split] = [image_size(p) for p in self.split(split).image_paths]
        return self.sizes[split]


def make_context(cfg: RunConfig, *, data: tuple[MultiLabelDataset, ...] | None = None) -> Context:
    """Load the data and the teacher for ``cfg`` (validates everything cheap first). ``data``: the splits
    ``(train, test)`` or ``(train, test, val)``, when the caller has loaded them already (:func:`run` does, to
    decide whether finished results are still valid)."""
    from .errors import ConfigError
    from .teachers import resolve_device
    for key, dev in (("teacher.device", cfg.teacher.device), ("student.device", cfg.student.device)):
        try:                                    # a CUDA device where there is none: fail before any work
            resolve_device(dev)
        except ConfigError as e:
            raise ConfigError(f"{key}: {e}") from None
    if cfg.teacher.backend == "open_clip":      # an unknown architecture: before the data is built or read
        import open_clip
        if cfg.teacher.arch not in open_clip.list_models():
            raise ConfigError(f"teacher.arch: unknown open_clip architecture {cfg.teacher.arch!r}; "
                              f"see open_clip.list_models()")
        pre = cfg.teacher.pretrained
        if pre and not Path(pre).is_file() and pre not in open_clip.list_pretrained_tags_by_model(cfg.teacher.arch):
            raise ConfigError(f"teacher.pretrained: {pre!r} is neither a local checkpoint file nor an open_clip tag "
                              f"for {cfg.teacher.arch!r}")
    weights = cfg.student.trunk_weights              # trunk weights that are absent: before any teacher scoring
    if cfg.student.trunk.startswith("resnet") and weights != "random":
        from .student import _resnet_weights_file
        _resnet_weights_file(cfg.student.trunk, weights)  # CheckpointError saying where to put the file
    elif weights not in (None, "random") and not Path(weights).expanduser().is_file():
        raise ConfigError(f"student.trunk_weights: file not found: {weights}")
    _check_student_weights(cfg)   # read and fitted to the trunk, before any teacher scoring (issue 17)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    check_writable_dir(cache_dir, "cache folder (cache_dir, or $CCDLIB_CACHE)")   # before any work
    if data is None:
        data = load_splits(cfg.data, cache_dir=cache_dir, seed=cfg.seed)
    train, test = data[0], data[1]
    val = data[2] if len(data) > 2 else None
    check_splits(train, test)
    stats = {"train": file_fingerprints(train.image_paths), "test": file_fingerprints(test.image_paths)}
    inputs = input_fingerprint(train, test, file_stats=stats)
    with cache_location(cache_dir):   # the ConSE text cache goes there too
        teacher = get_teacher(cfg.teacher)
    classifier = teacher.text_classifier(train.prompt_names, cfg.teacher.templates)
    return Context(cfg=cfg, train=train, test=test, teacher=teacher, classifier=classifier, cache_dir=cache_dir,
                   val=val, inputs=inputs, file_stats=stats)


# --------------------------------------------------------------------------------------------- input checks
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


def check_splits(train: MultiLabelDataset, test: MultiLabelDataset) -> None:
    """What a run needs of its splits, checked before any work (issue 11): at least 2 classes (a softmax over one
    class is always 1); a test split without any labelled object is allowed (an annotation-free method trains
    and labels without it) but its metrics are NaN and the ``gt_best`` rule is skipped, which is warned."""
    import warnings
    from .errors import DatasetError
    if train.num_classes < 2:
        raise DatasetError(f"{train.name} has {train.num_classes} class ({', '.join(train.class_ids)}): a run needs "
                           f"at least 2 classes (the teacher's softmax over one class is always 1)")
    if tuple(train.class_ids) != tuple(test.class_ids):   # issue 17: else a shape mismatch at the first evaluation
        raise DatasetError(_class_mismatch(train, test))
    _check_measurable(train, test)
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


def _check_measurable(train: MultiLabelDataset, test: MultiLabelDataset) -> None:
    """Issue 17: a test split that cannot measure anything. Fewer than 2 images (a mAP over one image is 100 or 0)
    and a test split holding exactly the training images are :class:`~ccdlib.errors.DatasetError`; a partial
    overlap (the same image files) is warned, naming the first ids and the count. Image ids are not compared: a
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
    shared = [i for i, p in zip(test.image_ids, test.image_paths) if norm(p) in train_paths]
    if not shared:
        return
    if len(shared) == len(test) == len(train):
        raise DatasetError(f"the test split {_split_source(test)} and the training split {_split_source(train)} hold "
                           f"the same {len(test)} images (e.g. {', '.join(test.image_ids[:5])}): a test split must "
                           f"hold images the student did not train on (check data.train_split / data.test_split)")
    warnings.warn(f"{len(shared)} of the {len(test)} test images of {_split_source(test)} are also in the training "
                  f"split {_split_source(train)} (e.g. {', '.join(shared[:5])}): test metrics on them measure "
                  f"memorisation, not generalisation", UserWarning, stacklevel=3)


def input_fingerprint(train: MultiLabelDataset, test: MultiLabelDataset, *,
                      file_stats: dict[str, list] | None = None) -> dict[str, dict[str, str]]:
    """What a run's results depend on in its data, per split: ``ids`` (the split file), ``classes`` (class ids and
    prompt names: the class list), ``labels`` (labels, difficult flags, boxes: the annotations) and ``images``
    (each image's size and mtime, :func:`~ccdlib.cache.file_fingerprints`; pass ``file_stats``, split -> those
    fingerprints, when they are at hand). Hashes (16 hex digits)."""
    out = {}
    for split, ds in (("train", train), ("test", test)):
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
    """``["test labels", "train images", ...]``: the parts of two :func:`input_fingerprint` that differ."""
    if not old:
        return ["not recorded"]
    return [f"{split} {part}" for split in new for part in new[split]
            if (old.get(split) or {}).get(part) != new[split][part]]


def _data_folder(ctx: Context) -> str:
    import os
    if ctx.cfg.data.root:
        return str(ctx.cfg.data.root)
    return os.path.commonpath([str(Path(p).parent) for p in [*ctx.train.image_paths, *ctx.test.image_paths]])


def check_inputs_unchanged(ctx: Context) -> None:
    """Stop with a :class:`DatasetError` naming the data folder if any image of the run's splits was replaced,
    rewritten or removed since :func:`make_context` (issue 11: another build into the same folder while a run
    trains would otherwise score new images against old labels)."""
    from .errors import DatasetError
    for split in ("train", "test"):
        if split not in ctx.file_stats:
            continue
        changed = changed_files(ctx.split(split).image_paths, ctx.file_stats[split])
        if changed:
            raise DatasetError(f"the data under {_data_folder(ctx)} changed during the run ({len(changed)} {split} "
                               f"image(s) replaced or removed, e.g. {changed[0]}): nothing of this run is saved "
                               f"from here on; rerun when the folder is stable")


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


# --------------------------------------------------------------------------------------------- teacher views
def view_probabilities(ctx: Context, split: str, views: list[View], *, desc: str = "teacher") -> np.ndarray:
    """Teacher probabilities of arbitrary views of a split's images: ``(V, C)`` (batched, cached)."""
    emb = embed_views(ctx.teacher, ctx.split(split).image_paths, views, batch_size=ctx.cfg.teacher_batch_size or None,
                      cache_dir=ctx.cache_dir, desc=desc)
    return ctx.teacher.predict(emb, ctx.classifier).numpy()


def global_probabilities(ctx: Context, split: str = "train") -> np.ndarray:
    """method.md §2/§4.1: ``p(whole image)`` for every image of the split: ``(N, C)``."""
    return view_probabilities(ctx, split, global_views(len(ctx.split(split))), desc=f"global views ({split})")


def grid_probabilities(ctx: Context, split: str = "train", n: int = 3) -> np.ndarray:
    """``p(tile)`` for an ``n x n`` grid of every image: ``(N, n*n, C)`` (method.md §3, Fig. 1)."""
    ds = ctx.split(split)
    p = view_probabilities(ctx, split, grid_views(ctx.image_sizes(split), n), desc=f"{n}x{n} tiles ({split})")
    return p.reshape(len(ds), n * n, -1)


def pseudo_label_quality(labels: np.ndarray, ds: MultiLabelDataset) -> dict[str, float]:
    """mAP, CF1, OF1 (x100) of pseudo-labels against a split's ground truth (method.md §9 ablations)."""
    m = evaluate(np.asarray(labels, dtype=np.float64), ds.labels, class_names=list(ds.class_ids))
    return {k: m[k] for k in ("mAP", "CF1", "OF1", "CF1_top3", "OF1_top3")}


# --------------------------------------------------------------------------------------------- training log
from .selection import select_checkpoints  # noqa: E402  (re-exported: the rules live in ccdlib.selection)
from .training_log import TrainingLog, TrainingState, discard_training_state  # noqa: E402


@dataclass
class RunResult:
    """What a run produced. ``selected`` maps each selection rule to its epoch and test metrics."""

    name: str
    method: str
    config: dict
    history: list[dict]
    selected: dict[str, dict]
    pseudo_label_quality: dict[str, dict]
    info: dict
    seconds: dict[str, float]
    test_scores: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    states: dict[str, dict] = field(default_factory=dict, repr=False)
    stage_labels: dict[str, np.ndarray] = field(default_factory=dict, repr=False)   # (N_train, C) per stage

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in ("name", "method", "config", "history", "selected",
                                              "pseudo_label_quality", "info", "seconds")}

    def table_row(self, rule: str = "gt_free") -> dict:
        sel = self.selected[rule]
        return {"method": self.method, "selection": rule, "epoch": sel["epoch"], **sel["metrics"]}


def _finish(ctx: Context, log: TrainingLog | None, *, method: str, stages: dict[str, np.ndarray], info: dict,
            seconds: dict[str, float], zero_shot: np.ndarray | None = None) -> RunResult:
    """Pick each selection rule's checkpoint (:func:`ccdlib.selection.select_checkpoints`) and fold the run into a
    :class:`RunResult`: per rule the checkpoint, its test metrics under the run's scoring rule and the test
    probabilities under it (``test_scores[rule]``) and under sigmoid and softmax (``test_scores[rule + "__sigmoid"]``
    ...)."""
    from .selection import scores_from_logits
    quality = {stage: pseudo_label_quality(y, ctx.train) for stage, y in stages.items()}
    selected: dict[str, dict] = {}
    scores: dict[str, np.ndarray] = {}
    states: dict[str, dict] = {}
    if log is not None:
        val = [h.get("val_mAP", float("nan")) for h in log.history] if ctx.val is not None else None
        rules = select_checkpoints([h["train_mAP_vs_pseudo"] for h in log.history],
                                   [h["test_mAP"] for h in log.history], val)
        for rule, e in rules.items():
            h = log.history[e]
            selected[rule] = {"epoch": e, "step": h["step"], "uses_ground_truth": rule == "gt_best",
                              "uses_labels": {"gt_best": "test", "few_label": "few-label validation"}.get(rule, "none"),
                              "scoring": log.scoring,
                              "metrics": {k[5:]: v for k, v in h.items() if k.startswith("test_")}}
            scores[rule] = scores_from_logits(log.test_logits[e], log.scoring)
            for s in ("sigmoid", "softmax"):
                scores[f"{rule}__{s}"] = scores_from_logits(log.test_logits[e], s)
            states[rule] = log.states[e]
        info = {**info, "schedule": {**log.schedule.as_dict(), "batch_size": log.trainer.config.batch_size},
                "scoring": log.scoring, "pass_rows": log.pass_rows}
    if zero_shot is not None:
        m = evaluate(zero_shot, ctx.test.labels, class_names=list(ctx.test.class_ids))
        selected["zero_shot"] = {"epoch": None, "uses_ground_truth": False, "metrics": m}
        scores["zero_shot"] = zero_shot
    seconds["total"] = sum(seconds.values())
    info = {**info, "class_ids": list(ctx.train.class_ids), "prompt_names": list(ctx.train.prompt_names),
            "n_train": len(ctx.train), "n_test": len(ctx.test), "n_few_label": 0 if ctx.val is None else len(ctx.val),
            "few_label_ids": [] if ctx.val is None else list(ctx.val.image_ids),
            "feature_dim": None if log is None else log.trainer.student.feature_dim}
    return RunResult(name=ctx.cfg.name, method=method, config=config_to_dict(ctx.cfg),
                     history=[] if log is None else log.history, selected=selected, pseudo_label_quality=quality,
                     info=info, seconds=seconds, test_scores=scores, states=states,
                     stage_labels={k: np.asarray(v, np.float32) for k, v in stages.items()})


def _trainer(ctx: Context, **student_overrides: Any) -> StudentTrainer:
    student_cfg = replace(ctx.cfg.student, seed=ctx.cfg.seed, **student_overrides)
    return StudentTrainer(student_cfg, ctx.train.image_paths, ctx.train.num_classes, cache_dir=ctx.cache_dir)


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        out = fn()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t
        return out


# --------------------------------------------------------------------------------------------- methods
def _log(ctx: Context, trainer: StudentTrainer, method: str, *, student_loss: str | None = None
         ) -> tuple[TrainingLog, Schedule]:
    """The run's :class:`~ccdlib.schedule.Schedule` (its step budget in passes over this training split) and the
    :class:`TrainingLog` that keeps its checkpoints under the run's scoring rule."""
    from .selection import resolve_scoring
    schedule = training_schedule(ctx.cfg, len(ctx.train), batch_size=trainer.config.batch_size)
    return TrainingLog(ctx, trainer, schedule, scoring=resolve_scoring(ctx.cfg.scoring, method, student_loss)), schedule


def _train_passes(log: TrainingLog, timer: "_Timer", targets: np.ndarray, passes: range, *, consistency: bool = False,
                  loss: str = "bce") -> None:
    """Train ``passes`` on fixed ``targets`` (alpha from ``student.alpha_schedule``)."""
    st = log.ctx.cfg.student
    for p in passes:
        timer("student_training", lambda: log.train_pass(p, targets, alpha=alpha_for(p, st.coeff, st.alpha_schedule),
                                                         consistency=consistency, loss=loss))


def run_teacher_global(cfg: RunConfig, ctx: Context | None = None) -> RunResult:
    """The teacher alone: zero-shot global prediction on the test split; and a student trained on the raw
    global probabilities of the training split (no debiasing, no local views), for the common step budget."""
    ctx = ctx or make_context(cfg)
    timer = _Timer()
    # 1. teacher global prediction (method.md §2)
    p_train = timer("teacher_global", lambda: global_probabilities(ctx, "train"))
    p_test = timer("teacher_global", lambda: global_probabilities(ctx, "test"))
    # 2. student on the global labels
    trainer = timer("student_features", lambda: _trainer(ctx))
    log, schedule = _log(ctx, trainer, "teacher_global")
    _train_passes(log, timer, p_train, range(schedule.passes))
    return _finish(ctx, log, method="teacher_global", stages={"global": p_train}, info={},
                   seconds=timer.seconds, zero_shot=p_test)


def run_cdul(cfg: RunConfig, ctx: Context | None = None) -> RunResult:
    """CDUL (method.md §3): global + 3x3-tile aggregation -> y0; train; refine labels by gradient alignment in the
    passes the schedule marks (``cdul.ga_warmup_steps`` / ``cdul.ga_every_steps``)."""
    ctx = ctx or make_context(cfg)
    c = cfg.cdul
    timer = _Timer()
    # 1. global and local (tile) teacher predictions
    p_global = timer("teacher_global", lambda: global_probabilities(ctx, "train"))
    p_tiles = timer("teacher_tiles", lambda: grid_probabilities(ctx, "train", c.grid))
    # 2. global-local aggregation
    y = cdul_initial_pseudo_labels(p_global, p_tiles, theta=c.theta, lam=c.lam)
    stages = {"global": p_global, "cdul_initial": y}
    # 3. train (softmax + KL as the reproduction, or BCE); in the scheduled passes, after every optimiser step, move
    #    that mini-batch's labels by gradient alignment with its pre-step predictions (method.md §3)
    trainer = timer("student_features", lambda: _trainer(ctx, batch_size=c.batch_size or cfg.student.batch_size))
    log, schedule = _log(ctx, trainer, "cdul", student_loss=c.student_loss)
    labels = np.array(y, dtype=np.float64, copy=True)      # the live labels the alignment writes

    def align(idx: np.ndarray, logits: np.ndarray) -> None:
        if c.alignment == "kl":
            z = logits - logits.max(1, keepdims=True)
            p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
            labels[idx] = cdul_gradient_alignment_update(labels[idx], p, sigma=c.ga_sigma, step=c.ga_step)
        else:
            labels[idx] = cdul_bernoulli_alignment_update(labels[idx], logits, sigma=c.ga_sigma, step=c.ga_step)

    st = cfg.student
    for p in range(schedule.passes):
        on = p in schedule.align_passes
        timer("student_training", lambda: log.train_pass(p, y, alpha=alpha_for(p, st.coeff, st.alpha_schedule),
                                                         consistency=False, loss=c.student_loss,
                                                         on_batch=align if on else None,
                                                         live_labels=labels if on else None, save=on))
        if on:
            y = labels.copy()
    if c.gradient_alignment:
        stages["cdul_final"] = y
    info = {"aligned_epochs": list(schedule.align_passes), "aligned_steps": [schedule.step_after(p) for p in
                                                                             schedule.align_passes],
            "alignments": len(schedule.align_passes), "student_loss": c.student_loss,
            "alignment": c.alignment if c.gradient_alignment else None}
    return _finish(ctx, log, method="cdul", stages=stages, info=info, seconds=timer.seconds)


def train_view_probabilities(trainer: StudentTrainer) -> np.ndarray:
    """``(2, N, C)`` sigmoid outputs of the student on the training views it trains on (448 px; unflipped and
    flipped): what the released tau walk counts on (``train.py`` 114-122, the training loader with random flips)."""
    n = len(trainer.image_paths)
    idx = np.arange(n)
    return np.stack([1.0 / (1.0 + np.exp(-trainer.view_logits(idx, np.full(n, f)))) for f in (False, True)])


def run_ccd(cfg: RunConfig, ctx: Context | None = None) -> RunResult:
    """CCD (method.md §4-§6): debiased global labels -> warm-up (``ccd.warmup_steps``) -> classifier-guided label
    update -> consistency, for the common step budget."""
    ctx = ctx or make_context(cfg)
    c = cfg.ccd
    timer = _Timer()
    # 1. teacher global prediction of every training image
    p_global = timer("teacher_global", lambda: global_probabilities(ctx, "train"))
    # 2. initial pseudo-labels: confidence filter, class bias, LS floor, debiasing (method.md §4)
    init = ccd_initial_pseudo_labels(p_global, h_max=c.h_max, ls=c.ls or None, debiasing=c.debiasing,
                                     fallback=c.bias_fallback, class_names=list(ctx.train.class_ids))
    y = init.labels
    stages = {"global": p_global, "ccd_floored": init.floored, "ccd_debiased": init.labels}
    info: dict[str, Any] = {"bias": init.bias.tolist(), "bias_fell_back": [ctx.train.class_ids[k] for k in init.fell_back],
                            "n_confident": int(init.confident.sum())}
    trainer = timer("student_features", lambda: _trainer(ctx))
    log, schedule = _log(ctx, trainer, "ccd")
    # 3. warm-up passes on the initial labels
    warmup = schedule.warmup_passes
    _train_passes(log, timer, y, range(warmup))
    info["steps_before_update"] = schedule.steps_before_update
    # 4. the classifier-guided label update, once (method.md §6): tau from the student on its training views (or the
    #    cam_image_size pass: ccd.tau_input), the class selection and the (alpha-scaled) CAMs from the
    #    cam_image_size image (released: 640 px)
    if c.local_views:
        info["warmup_test_mAP"] = timer("label_update", log.test_map_now)
        size = c.cam_image_size or cfg.student.image_size
        cam_alpha = trainer.alpha if c.cam_alpha else None
        probs = timer("label_update", lambda: 1.0 / (1.0 + np.exp(-trainer.predict_logits(image_size=size))))
        tau_probs = timer("label_update", lambda: train_view_probabilities(trainer)) \
            if c.tau_input == "train_views" else probs
        upd = timer("label_update", lambda: classifier_guided_label_update(
            y_prev=y, student_probs=probs, cams=lambda idx: trainer.cams(idx, alpha=cam_alpha, image_size=size),
            teacher=ctx.teacher,
            classifier=ctx.classifier, image_paths=ctx.train.image_paths, image_sizes=ctx.image_sizes("train"),
            bias=init.bias, ls=c.ls or None, r=c.r, offset=c.offset, resolution=c.resolution,
            threshold=c.cam_threshold, box_rule=c.box_rule, bound=c.bound, seed=cfg.seed,
            tau_walk=c.tau_walk, tau_probs=tau_probs, tau_checks=c.tau_checks, no_crop=c.no_crop,
            batch_size=cfg.teacher_batch_size or None, cache_dir=ctx.cache_dir))
        y = upd.labels
        stages["ccd_local"] = np.where(upd.has_crops[:, None] | (c.no_crop == "floor"), upd.local, init.labels)
        stages["ccd_updated"] = upd.labels
        info.update(tau=upd.tau, tau_checks=upd.tau_checks, classes_per_image=upd.classes_per_image,
                    crops=len(upd.crops), crops_per_image=upd.crops_per_image,
                    images_without_crops=int((~upd.has_crops).sum()),
                    updated_labels_equal_1=int((upd.labels == 1).sum()))
        if ctx.train.boxes is not None and upd.crops:
            from .analysis import crop_summary
            info["crop_summary"] = crop_summary(upd.crops, upd.crop_owner, ctx.train.boxes)
    # 5. the remaining passes, with the consistency loss
    _train_passes(log, timer, y, range(warmup, schedule.passes), consistency=c.consistency and c.local_views)
    return _finish(ctx, log, method="ccd", stages=stages, info=info, seconds=timer.seconds)


def run_supervised(cfg: RunConfig, ctx: Context | None = None) -> RunResult:
    """The upper bound: the same student trained on the ground-truth labels of the training split (same budget)."""
    ctx = ctx or make_context(cfg)
    timer = _Timer()
    y = ctx.train.labels.astype(np.float64)
    trainer = timer("student_features", lambda: _trainer(ctx))
    log, schedule = _log(ctx, trainer, "supervised")
    _train_passes(log, timer, y, range(schedule.passes))
    return _finish(ctx, log, method="supervised", stages={}, info={}, seconds=timer.seconds)


RUNNERS: dict[str, Callable[[RunConfig, Context | None], RunResult]] = {
    "teacher_global": run_teacher_global, "cdul": run_cdul, "ccd": run_ccd, "supervised": run_supervised,
}


def _jsonify(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonify(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonify(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return _jsonify(obj.tolist())
    return obj


def save_result(result: RunResult, out_dir: str | Path, *, checkpoints: bool = True) -> Path:
    """Write ``result.json``, ``metrics.csv`` (one row per selection rule) and, with ``checkpoints``, each selected
    epoch's student as a state dict (``.pt``) plus a JSON config -- atomically."""
    import pandas as pd

    d = Path(out_dir) / result.name
    d.mkdir(parents=True, exist_ok=True)
    (d / "result.json").unlink(missing_ok=True)   # overwriting: a kill mid-save must not leave an old "done" mark
    rows = [result.table_row(rule) for rule in result.selected]
    atomic_write_text(d / "metrics.csv", pd.DataFrame(rows).to_csv(index=False))
    if checkpoints:
        from .student import StudentConfig, write_checkpoint
        from .config import _build
        student_cfg = _build(StudentConfig, result.config["student"], "student.")
        student_cfg = replace(student_cfg, seed=result.config["seed"])
        for rule, state in result.states.items():
            e = result.selected[rule]["epoch"]
            write_checkpoint(d / f"student_{rule}", state=state, config=student_cfg,
                             num_classes=len(result.info["class_ids"]), feature_dim=result.info["feature_dim"],
                             epoch=e, alpha=result.history[e]["alpha"],
                             extra={"class_ids": result.info["class_ids"], "prompt_names": result.info["prompt_names"],
                                    "selection_rule": rule, "run": result.name})
    if result.stage_labels:
        save_arrays(d / "pseudo_labels.npz", result.stage_labels)
    save_test_scores(result, d)
    atomic_write_text(d / "result.json", json.dumps(_jsonify(result.to_json()), indent=1))  # last: marks "done"
    return d


#: File beside ``result.json`` holding the test probabilities ``(N_test, C)`` of every selected rule.
TEST_SCORES_FILE = "test_scores.npz"


def save_test_scores(result: RunResult, run_dir: str | Path) -> Path | None:
    """Write ``run_dir/test_scores.npz``: one ``(N_test, C)`` float32 array of test probabilities per selection
    rule (``last``, ``gt_free``, ``gt_best``, ``zero_shot``), in the test split's image order, so intervals
    (:mod:`ccdlib.stats`) can be computed from finished runs. Atomic; ``None`` when the run kept no scores."""
    if not result.test_scores:
        return None
    p = Path(run_dir) / TEST_SCORES_FILE
    save_arrays(p, {k: np.asarray(v, np.float32) for k, v in result.test_scores.items()})
    return p


def load_test_scores(run_dir: str | Path) -> dict[str, np.ndarray]:
    """The per-rule test probabilities ``{rule: (N_test, C) float32}`` saved by :func:`save_test_scores`
    (``run_dir``: ``out_dir/<run name>`` or its ``result.json``); ``{}`` for a run saved without them."""
    d = Path(run_dir)
    p = (d.parent if d.name == "result.json" else d) / TEST_SCORES_FILE
    if not p.exists():
        return {}
    with np.load(p) as z:
        return {k: z[k] for k in z.files}


def load_result(path: str | Path) -> dict:
    """The JSON of a finished run (``out_dir/<name>`` or its ``result.json``)."""
    p = Path(path)
    p = p / "result.json" if p.is_dir() else p
    return json.loads(p.read_text())


#: The lock file a saving run holds in its run folder (``out_dir/<run name>/``) while it runs (issue 17).
RUN_LOCK_FILE = "run.lock"


def _pid_alive(pid: int, started: float | None = None) -> bool:
    """Whether process ``pid`` of this machine still runs (and, on Linux, was not started after ``started``: a
    reused pid is another process)."""
    import os
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's live process
        pass
    except OSError:
        return False
    if started is not None:
        try:   # Linux: the process's start time, from /proc (field 22: clock ticks after boot)
            ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
            boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                        if line.startswith("btime "))
            if boot + ticks / os.sysconf("SC_CLK_TCK") > started + 2:
                return False
        except (OSError, ValueError, IndexError, StopIteration):
            pass
    return True


def _read_run_lock(lock: Path) -> dict | None:
    """The holder recorded in a lock file (``pid``, ``host``, ``started``...); ``{}`` when it cannot be read (being
    written, or damaged), ``None`` when it is gone."""
    try:
        holder = json.loads(lock.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else {}


def acquire_run_lock(run_dir: str | Path, *, name: str = "") -> Path:
    """Take the lock of a run folder: ``run_dir/run.lock`` created atomically (``O_CREAT | O_EXCL``) holding this
    process's pid, host name and start time. A lock held by a live process is an :class:`~ccdlib.errors.OutputError`
    naming that process (pid, host, start) and the lock file: the same run started twice into one ``out_dir`` would
    otherwise resume from the first one's live training state and overwrite its results. A stale lock (its process
    is gone: a dead pid on this machine, or an unreadable lock older than a minute) is taken over with a warning
    saying so. A lock from another machine is never taken over (its pid cannot be checked from here)."""
    import os
    import socket
    import warnings
    from .errors import OutputError
    run_dir = Path(run_dir)
    lock = run_dir / RUN_LOCK_FILE
    host = socket.gethostname()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot write results to {run_dir}: {e.strerror or e}") from None
    for _ in range(5):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            holder = _read_run_lock(lock)
            if holder is None:          # released in between: try again
                continue
            who = (f"process {holder.get('pid')} on {holder.get('host')}, started {holder.get('started_at')}"
                   if holder else "a process whose lock cannot be read")
            if holder:
                stale = holder.get("host") == host and not _pid_alive(holder["pid"], holder.get("started"))
            else:
                try:
                    stale = time.time() - lock.stat().st_mtime > 60
                except FileNotFoundError:
                    continue
            if not stale:
                where = "" if not holder or holder.get("host") == host else \
                    " (another machine: its process cannot be checked from here)"
                raise OutputError(f"run {name or run_dir.name} is already running into {run_dir}: {who}{where}, "
                                  f"holds {lock}. Wait for it to finish or give another out_dir; if that process is "
                                  f"gone, delete {lock}")
            if _read_run_lock(lock) != holder:   # changed hands meanwhile: look again
                continue
            warnings.warn(f"taking over the stale lock {lock} of {who}, which is no longer running", UserWarning,
                          stacklevel=3)
            lock.unlink(missing_ok=True)
            continue
        except OSError as e:
            raise OutputError(f"cannot write results to {run_dir}: cannot create {lock}: {e.strerror or e}") from None
        now = time.time()
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": host, "started": now,
                       "started_at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)), "run": name}, f)
        return lock
    raise OutputError(f"cannot take the lock {lock}: other processes keep taking it")


def release_run_lock(lock: str | Path) -> None:
    """Remove a lock :func:`acquire_run_lock` took, if it is still this process's."""
    import os
    lock = Path(lock)
    holder = _read_run_lock(lock)
    if holder and holder.get("pid") == os.getpid():
        lock.unlink(missing_ok=True)


def run(cfg: RunConfig, *, ctx: Context | None = None, force: bool = False, save: bool = True) -> dict:
    """Run ``cfg.method`` end to end and write its results under ``out_dir/<run name>/``.

    A saving run holds a lock on its run folder while it runs (:func:`acquire_run_lock`, released at the end
    whatever happens): the same run started a second time into the same ``out_dir`` stops with an
    :class:`~ccdlib.errors.OutputError` naming the first one's process; a stale lock is taken over, with a warning.
    Different runs into one ``out_dir`` have different folders and do not meet.

    Before any work: ``out_dir`` must be writable (:func:`check_writable`). A finished run (``result.json``) is
    reused, printing ``reusing results of <run>``, only when its recorded :func:`input_fingerprint` equals the data's
    now (split files, class list, annotations, image files); else it is recomputed, saying which inputs changed.
    ``force`` recomputes (and drops any saved training state). Training resumes from the state an interrupted run
    saved (:class:`TrainingState`); the data changing during the run stops it (:func:`check_inputs_unchanged`);
    a failed write is an :class:`~ccdlib.errors.OutputError` ``cannot write results to ...``."""
    if not save:
        return _run_unlocked(cfg, ctx=ctx, force=force, save=save)
    check_writable(cfg.out_dir)
    run_dir = Path(cfg.out_dir) / cfg.name
    created = [d for d in (run_dir, *run_dir.parents) if not d.exists()]   # the folders this run makes
    lock = acquire_run_lock(run_dir, name=cfg.name)
    try:
        return _run_unlocked(cfg, ctx=ctx, force=force, save=save)
    finally:
        release_run_lock(lock)
        for d in created:          # a run that stopped before writing anything leaves no empty folder
            try:
                d.rmdir()
            except OSError:
                break


def _run_unlocked(cfg: RunConfig, *, ctx: Context | None = None, force: bool = False, save: bool = True) -> dict:
    """:func:`run` without the run folder's lock."""
    from .distributed import rank_and_world
    from .errors import OutputError
    out = Path(cfg.out_dir) / cfg.name
    if save:
        check_writable(cfg.out_dir)
    if ctx is not None and ctx.cfg != cfg:   # a shared context (same data and teacher), this run's config
        ctx = replace(ctx, cfg=cfg)
    data = None
    if save and not force and (out / "result.json").exists():
        if ctx is None:
            cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
            data = load_splits(cfg.data, cache_dir=cache_dir, seed=cfg.seed)
            check_splits(data[0], data[1])
            inputs = input_fingerprint(data[0], data[1])
        else:
            inputs = ctx.inputs or input_fingerprint(ctx.train, ctx.test)
        old = load_result(out)
        changed = _changed_inputs((old.get("info") or {}).get("inputs"), inputs)
        if not changed:
            print(f"reusing results of {cfg.name}")
            return old
        print(f"recomputing {cfg.name}: its inputs changed since it was saved ({', '.join(changed)})")
    ctx = ctx if ctx is not None else make_context(cfg, data=data)
    if not ctx.inputs:                       # a Context built by hand
        stats = {k: file_fingerprints(ctx.split(k).image_paths) for k in ("train", "test")}
        ctx = replace(ctx, inputs=input_fingerprint(ctx.train, ctx.test, file_stats=stats), file_stats=stats)
    rank, world = rank_and_world()
    state_dir = out / "training" if (save or world > 1) else None
    if force and save and rank == 0:
        discard_training_state(state_dir)
    if force and world > 1:
        torch.distributed.barrier()
    ctx = replace(ctx, state_dir=state_dir, write_state=save and rank == 0)
    result = RUNNERS[cfg.method](cfg, ctx)
    check_inputs_unchanged(ctx)
    result.info["inputs"] = ctx.inputs
    if save:
        try:
            save_result(result, cfg.out_dir)
        except OSError as e:
            kept = f"; the training state is kept in {state_dir}: rerun to save without training again" \
                if state_dir is not None and (state_dir / "state.pt").exists() else ""
            raise OutputError(f"cannot write results to {out}: {e.strerror or e}{kept}") from None
        discard_training_state(state_dir)
    return _jsonify(result.to_json())


def run_with_test_scores(cfg: RunConfig, *, ctx: Context | None = None, force: bool = False
                         ) -> tuple[dict, dict[str, np.ndarray]]:
    """:func:`run`, then its per-rule test probabilities (:func:`load_test_scores`); a run finished before test
    scores were saved is run again (once) so that intervals can be computed from it."""
    res = run(cfg, ctx=ctx, force=force)
    scores = load_test_scores(Path(cfg.out_dir) / cfg.name)
    if not scores:
        res = run(cfg, ctx=ctx, force=True)
        scores = load_test_scores(Path(cfg.out_dir) / cfg.name)
    return res, scores
