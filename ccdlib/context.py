"""The run context: what every step of a run needs (the config, the checked splits, the teacher and its text
classifier, the cache folder), built once by :func:`make_context`, and the teacher's predictions of views of a split's
images through it (method.md §2)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .cache import cache_location, changed_files, check_writable_dir, default_cache_dir, file_fingerprints
from .config import RunConfig, config_to_dict
from .datasets import MultiLabelDataset
from .inputs import _check_student_weights, check_splits, input_fingerprint, load_splits
from .metrics import evaluate
from .scoring import embed_views
from .teachers import Teacher, TeacherConfig, build_teacher
from .views import View, global_views, grid_views, image_size

__all__ = ["Context", "make_context", "get_teacher", "check_inputs_unchanged", "view_probabilities",
           "global_probabilities", "grid_probabilities", "pseudo_label_quality"]


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
    check_splits(train, test, val)   # test vs the whole training split, few-label images included
    stats = {"train": file_fingerprints(train.image_paths), "test": file_fingerprints(test.image_paths)}
    inputs = input_fingerprint(train, test, val=val, file_stats=stats)
    with cache_location(cache_dir):   # the ConSE text cache goes there too
        teacher = get_teacher(cfg.teacher)
    classifier = teacher.text_classifier(train.prompt_names, cfg.teacher.templates)
    return Context(cfg=cfg, train=train, test=test, teacher=teacher, classifier=classifier, cache_dir=cache_dir,
                   val=val, inputs=inputs, file_stats=stats)


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
