"""Frozen dataclass configs shared by notebooks, the CLI and YAML parameter files.

A :class:`RunConfig` nests :class:`DataConfig`, :class:`~ccdlib.teachers.TeacherConfig`,
:class:`~ccdlib.student.StudentConfig`, :class:`CCDConfig` and :class:`CDULConfig`. Defaults are the papers'
(docs/method.md) except where the CPU-sized embedded run needs otherwise, which is said field by field.

``load_config(path, overrides=["ccd.r=0.5", ...])`` reads YAML, applies ``key=value`` overrides (dotted keys,
values parsed as YAML), rejects unknown keys and out-of-range values before any expensive work starts.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Sequence, get_type_hints

import yaml

from .errors import ConfigError
from .student import StudentConfig
from .teachers import TeacherConfig

__all__ = ["DataConfig", "CCDConfig", "CDULConfig", "RunConfig", "load_config", "config_from_dict",
           "config_to_dict", "apply_overrides", "flat_to_nested", "flat_config_keys", "is_flat", "run_config_from_params", "METHODS"]

METHODS = ("teacher_global", "cdul", "ccd", "supervised")


@dataclass(frozen=True)
class DataConfig:
    """Which data set. ``kind``: ``mosaic`` (embedded default), ``voc``/``voc2007``/``voc2012``, ``coco``/``coco2014``,
    ``nuswide``. ``root``: the data set's folder (mosaic: where to build it; default under the cache).
    ``classes``: a class-list file (id -> prompt name; its order the label columns). VOC layout: every annotated class
    (a set of your own); COCO / NUS-WIDE: a subset of the categories / concepts by name, the others' labels dropped.
    A class the data lacks is a ``DatasetError`` naming it; refused for ``mosaic`` (its set has its ``classes.yaml``).
    A leading ``~`` in ``root`` / ``classes`` is the home folder (``os.path.expanduser``, at construction)."""

    kind: str = "mosaic"
    root: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    classes: str | None = None      # class-list file: a VOC-layout set of your own, or a COCO / NUS-WIDE subset
    n_train: int = 400              # mosaic only
    n_test: int = 200               # mosaic only
    mosaic_seed: int = 0            # mosaic only
    stamps: str = "disjoint"        # mosaic only: "disjoint" (test objects unseen in training) | "shared" (same
                                    # object photos, new scenes); see ccdlib.mosaic
    max_train: int = 0              # 0 = all; else a seeded subsample (quick runs)
    max_test: int = 0
    few_label_k: int = 2            # held out of training: a few-label validation split with >= k positives per
                                    # class (seeded by few_label_seed), for the few_label selection rule; 0 = none
    few_label_seed: int = 0
    rebuild: bool = False           # mosaic only: replace a set in root built with other parameters

    def __post_init__(self) -> None:
        kinds = ("mosaic", "voc", "voc2007", "voc2012", "coco", "coco2014", "nuswide")
        if self.kind not in kinds:
            raise ConfigError(f"data.kind must be one of {kinds}, got {self.kind!r}")
        if self.stamps not in ("disjoint", "shared"):
            raise ConfigError(f"data.stamps must be 'disjoint' or 'shared', got {self.stamps!r}")
        for name in ("n_train", "n_test"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_train", "max_test", "few_label_k", "few_label_seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"data.{name} must be >= 0 (0 = all), got {getattr(self, name)}")
        if self.kind != "mosaic" and not self.root:
            raise ConfigError(f"data.root is required for data.kind={self.kind!r}: the folder of your local copy")
        if self.mosaic_seed < 0:
            raise ConfigError(f"data.mosaic_seed must be >= 0, got {self.mosaic_seed}")
        for name in ("train_split", "test_split"):
            if not str(getattr(self, name)).strip():
                raise ConfigError(f"data.{name} must name a split (e.g. 'train'), got {getattr(self, name)!r}")
        for name in ("root", "classes"):
            if getattr(self, name) is not None and not str(getattr(self, name)).strip():
                raise ConfigError(f"data.{name} must be null or a path, got an empty string")
            object.__setattr__(self, name, _expand_home(f"data.{name}", getattr(self, name)))   # issue 23
        if self.classes is not None and self.kind == "mosaic":   # issue 23: was ignored, yet entered the run name
            raise ConfigError(f"data.classes ({self.classes}) applies to the voc, coco and nuswide kinds, not to "
                              f"data.kind='mosaic' (a mosaic set carries its own classes.yaml): set data.classes "
                              f"to null")


@dataclass(frozen=True)
class CCDConfig:
    """CCD (method.md §4, §6). ``ls=0`` turns the label-smoothing floor off."""

    h_max: float = 2.0
    ls: float = 20.0
    debiasing: bool = True
    bias_fallback: str = "mean"     # "mean" | "one" | "nan" (released code)
    warmup_steps: int = 628         # optimiser steps before the label update: the released 2 epochs of VOC07 trainval
                                    # at batch 16 (2 x 314); ccdlib.schedule rounds it to whole passes
    warmup_epochs: int | None = None  # the same in passes over the split (overrides warmup_steps when given)
    warmup_rounding: str = "checkpoint"  # warmup_steps -> passes: "checkpoint" (whole checkpoint intervals, so the
                                    # first checkpoint after the update is a whole interval on updated labels, as in
                                    # the released run; issue 22) | "pass" (whole passes, the nearest count)
    local_views: bool = True        # the classifier-guided (CAM) label update
    r: float = 0.2
    offset: float = 80.0
    resolution: int = 640
    cam_threshold: float = 0.95
    box_rule: str = "minmax"        # "minmax" | "raster" (released code)
    bound: float = 4.0
    consistency: bool = True
    tau_walk: str = "released_checks"  # "released_checks": the released walk (train.py 216-247) continued over
                                    # reshuffled images until it has made tau_checks checks (VOC07: 50) |
                                    # "single_pass": the released loop as is (3 checks on 320 images) | "multi_pass"
    tau_checks: int = 50            # released_checks: threshold checks (the released walk's on 5,011 images)
    tau_input: str = "train_views"  # the counts behind tau: "train_views" (the student on the 448 px training views
                                    # with random flips, train.py 114-122) | "cam_image" (the cam_image_size pass)
    no_crop: str = "floor"          # image without a crop: "floor" (released: mixed with (1/ls)/bias) | "keep" (y_prev)
    cam_alpha: bool = True          # boxes from the alpha-scaled CAM (released: the forward's fw_cam) | the raw CAM
    cam_image_size: int = 640       # student input for the CAMs, class selection and tau (released: the 640 px
                                    # image); 0 = student.image_size. Frozen mode: one extra trunk forward per image
    views: str = "cam"              # issue 22 controls (ccdlib.view_controls): "cam" (CCD) | "random_boxes" (the same
                                    # boxes at random positions) | "tiles" (3x3, class-free) | "gt_boxes" (oracle)
    selection: str = "tau"          # classes that get a CAM box: "tau" (CCD) | "true_classes" | "random_classes" (as
                                    # many as tau selects) | "top_k" | "all"
    top_k: int = 0                  # k of selection "top_k"; 0 = the mean number of objects per training image

    def __post_init__(self) -> None:
        if not 0.0 <= self.r <= 1.0:
            raise ConfigError(f"ccd.r must lie in [0, 1], got {self.r}")
        if self.offset < 0:
            raise ConfigError(f"ccd.offset must be >= 0 pixels, got {self.offset}")
        if self.ls < 0 or (0 < self.ls < 1):
            raise ConfigError(f"ccd.ls must be 0 (off) or >= 1, got {self.ls}")
        if self.h_max <= 0:
            raise ConfigError(f"ccd.h_max must be > 0, got {self.h_max}")
        if self.bias_fallback not in ("mean", "one", "nan"):
            raise ConfigError(f"ccd.bias_fallback must be 'mean', 'one' or 'nan', got {self.bias_fallback!r}")
        if self.box_rule not in ("minmax", "raster"):
            raise ConfigError(f"ccd.box_rule must be 'minmax' or 'raster', got {self.box_rule!r}")
        if not 0.0 < self.cam_threshold < 1.0:
            raise ConfigError(f"ccd.cam_threshold must lie in (0, 1), got {self.cam_threshold}")
        if self.tau_walk not in ("released_checks", "single_pass", "multi_pass"):
            raise ConfigError(f"ccd.tau_walk must be 'released_checks', 'single_pass' or 'multi_pass', "
                              f"got {self.tau_walk!r}")
        if self.tau_input not in ("train_views", "cam_image"):
            raise ConfigError(f"ccd.tau_input must be 'train_views' or 'cam_image', got {self.tau_input!r}")
        if self.tau_checks < 1:
            raise ConfigError(f"ccd.tau_checks must be >= 1, got {self.tau_checks}")
        if self.no_crop not in ("floor", "keep"):
            raise ConfigError(f"ccd.no_crop must be 'floor' or 'keep', got {self.no_crop!r}")
        if self.views not in ("cam", "random_boxes", "tiles", "gt_boxes"):
            raise ConfigError(f"ccd.views must be 'cam', 'random_boxes', 'tiles' or 'gt_boxes', got {self.views!r}")
        if self.selection not in ("tau", "true_classes", "random_classes", "top_k", "all"):
            raise ConfigError(f"ccd.selection must be 'tau', 'true_classes', 'random_classes', 'top_k' or 'all', "
                              f"got {self.selection!r}")
        if self.top_k < 0:
            raise ConfigError(f"ccd.top_k must be >= 0 (0: the mean number of objects per image), got {self.top_k}")
        if self.warmup_rounding not in ("checkpoint", "pass"):
            raise ConfigError(f"ccd.warmup_rounding must be 'checkpoint' or 'pass', got {self.warmup_rounding!r}")
        if self.cam_image_size != 0 and self.cam_image_size < 32:
            raise ConfigError(f"ccd.cam_image_size must be 0 (the student's) or >= 32, got {self.cam_image_size}")
        if (self.warmup_epochs is not None and self.warmup_epochs < 0) or self.warmup_steps < 0:
            raise ConfigError(f"ccd.warmup_steps and ccd.warmup_epochs must be >= 0, got {self.warmup_steps}, "
                              f"{self.warmup_epochs}")
        if self.resolution < 16 or self.bound < 0:
            raise ConfigError("ccd.resolution >= 16 and ccd.bound >= 0 are required")
        _check_finite(self, "ccd.")


@dataclass(frozen=True)
class CDULConfig:
    """CDUL (method.md §3).

    Gradient alignment, per mini-batch right after the optimiser step, with that batch's pre-step predictions, in
    the passes :func:`ccdlib.schedule.training_schedule` marks: those containing step ``m * ga_every_steps`` with
    ``m * ga_every_steps > ga_warmup_steps`` (the reproduction's voc2012 schedule, one tenth of the run each,
    scaled to the common budget: 9 alignments in 3,140 steps). ``ga_warmup`` / ``ga_every`` (epochs) give the
    reproduction's rule ``(e + 1) > ga_warmup and (e + 1) % ga_every == 0`` instead.
    ``alignment="kl"`` (default, the reproduction): KL of the renormalised label to the softmax prediction, which
    needs ``student_loss="softmax_kl"`` (the reproduction trains softmax + KL; the CDUL paper's Sec. 3.2 also trains
    with a KL loss). ``alignment="bernoulli"``: the aligned analogue for a sigmoid/BCE student,
    ``u <- u - psi(y) (u - z)``, which needs ``student_loss="bce"`` (notebook 04's "CDUL (BCE analogue)" row).
    ``batch_size``: CDUL's mini-batch (the reproduction: 8; the alignment step scales with ``1/B``); 0 =
    ``student.batch_size``.
    """

    grid: int = 3
    theta: float = 0.0
    lam: float = 0.0
    gradient_alignment: bool = True
    ga_step: float = 1.0            # multiplies the alignment step (the reproduction: 1)
    ga_sigma: float = 1.0           # psi's sigma (the reproduction: 1, "not specified in paper")
    alignment: str = "kl"           # "kl" (reproduction) | "bernoulli" (BCE analogue)
    student_loss: str = "softmax_kl"  # "softmax_kl" (reproduction) | "bce" (method.md §5's loss)
    ga_warmup_steps: int = 314      # no alignment at or before this step (voc2012.yaml: 10 of 100 epochs)
    ga_every_steps: int = 314       # align in the pass that contains every multiple of this step count
    ga_warmup: int | None = None    # epochs: no alignment in epochs e with e + 1 <= ga_warmup (config.yaml: 0)
    ga_every: int | None = None     # epochs: align in epochs e with (e + 1) % ga_every == 0 (reproduction: 10)
    batch_size: int = 8             # 0 = student.batch_size
    initial_labels: str = "aggregate"  # "aggregate" (CDUL: global + tiles) | "ccd" (CCD's debiased global labels, the
                                    # ccd section's options: the CDUL -> CCD path of issue 22)

    def __post_init__(self) -> None:
        if self.grid < 1:
            raise ConfigError(f"cdul.grid must be >= 1, got {self.grid}")
        if not 0.0 <= self.theta <= 1.0:
            raise ConfigError(f"cdul.theta must lie in [0, 1], got {self.theta}")
        if self.ga_sigma <= 0:
            raise ConfigError(f"cdul.ga_sigma must be > 0, got {self.ga_sigma}")
        if self.alignment not in ("kl", "bernoulli"):
            raise ConfigError(f"cdul.alignment must be 'kl' or 'bernoulli', got {self.alignment!r}")
        if self.initial_labels not in ("aggregate", "ccd"):
            raise ConfigError(f"cdul.initial_labels must be 'aggregate' or 'ccd', got {self.initial_labels!r}")
        if self.student_loss not in ("softmax_kl", "bce"):
            raise ConfigError(f"cdul.student_loss must be 'softmax_kl' or 'bce', got {self.student_loss!r}")
        needed = {"kl": "softmax_kl", "bernoulli": "bce"}[self.alignment]
        if self.gradient_alignment and self.student_loss != needed:
            raise ConfigError(f"cdul.student_loss must be {needed!r} with cdul.alignment={self.alignment!r} "
                              f"(got {self.student_loss!r})")
        if (self.ga_warmup is not None and self.ga_warmup < 0) or (self.ga_every is not None and self.ga_every < 1):
            raise ConfigError(f"cdul.ga_warmup must be >= 0 and cdul.ga_every >= 1, got {self.ga_warmup}, {self.ga_every}")
        if self.ga_warmup_steps < 0 or self.ga_every_steps < 1:
            raise ConfigError(f"cdul.ga_warmup_steps must be >= 0 and cdul.ga_every_steps >= 1, got "
                              f"{self.ga_warmup_steps}, {self.ga_every_steps}")
        if self.batch_size < 0:
            raise ConfigError(f"cdul.batch_size must be >= 1, or 0 for student.batch_size, got {self.batch_size}")
        if self.lam < 0 or self.ga_step < 0:
            raise ConfigError(f"cdul.lam and cdul.ga_step must be >= 0, got lam={self.lam}, ga_step={self.ga_step}")
        _check_finite(self, "cdul.")


@dataclass(frozen=True)
class RunConfig:
    """One run of one method. ``method``: ``teacher_global`` | ``cdul`` | ``ccd`` | ``supervised``.

    Paths (``out_dir``, ``cache_dir``, ``data.root``, ``data.classes``, ``teacher.pretrained``,
    ``student.trunk_weights``): a leading ``~`` is the home folder, expanded when the config is built (issue 23:
    ``out_dir=~/x`` made a folder named ``~``); other values are kept as given (relative: to the current folder)."""

    method: str = "ccd"
    steps: int = 3140               # training budget in optimiser steps, the same for every method: the released
                                    # CCD run (10 epochs of VOC07 trainval at batch 16; ccdlib.schedule)
    eval_every_steps: int = 314     # checkpoint interval (one released VOC07 epoch: 10 checkpoints per run)
    epochs: int | None = None       # the budget in passes over the split instead (every pass a checkpoint)
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    ccd: CCDConfig = field(default_factory=CCDConfig)
    cdul: CDULConfig = field(default_factory=CDULConfig)
    teacher_batch_size: int = 0     # views per teacher forward pass; 0 = auto (scoring.auto_forward_batch)
    out_dir: str = "results"
    cache_dir: str | None = None    # None: $CCDLIB_CACHE or ~/.cache/ccdlib
    tag: str = ""                   # free text added to the run name
    gt_free_input: str = "eval"     # train mAP behind the GT-free rule: "eval" (eval logits vs labels >= 0.5) |
                                    # "released" (the epoch's training outputs vs labels == 1, released mAP). Not the
                                    # released default, measured (embedded default, seed 0): "released" picks CCD's
                                    # epoch 2 (test mAP 37.7; "eval": epoch 9, 49.2) and is degenerate for CDUL,
                                    # whose soft labels never equal 1 (train mAP 0 in every epoch)
    scoring: str = "reference"      # test scores behind the selection rules and tables: "reference" (each method as
                                    # its reference scores it: a softmax_kl-trained CDUL head by softmax, every other
                                    # by sigmoid) | "sigmoid" | "softmax". Both scorings are saved either way

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1 (or null: the budget is steps), got {self.epochs}")
        if self.steps < 1 or self.eval_every_steps < 1:
            raise ConfigError(f"steps and eval_every_steps must be >= 1, got {self.steps}, {self.eval_every_steps}")
        if self.scoring not in ("reference", "sigmoid", "softmax"):
            raise ConfigError(f"scoring must be 'reference', 'sigmoid' or 'softmax', got {self.scoring!r}")
        if self.gt_free_input not in ("released", "eval"):
            raise ConfigError(f"gt_free_input must be 'released' or 'eval', got {self.gt_free_input!r}")
        if self.teacher_batch_size < 0:
            raise ConfigError(f"teacher_batch_size must be >= 1, or 0 for auto, got {self.teacher_batch_size}")
        if (self.method == "ccd" and self.ccd.local_views and self.epochs is not None
                and self.ccd.warmup_epochs is not None and self.ccd.warmup_epochs >= self.epochs):
            raise ConfigError(f"ccd.warmup_epochs ({self.ccd.warmup_epochs}) must be < epochs ({self.epochs})")
        c = self.cdul   # issue 23: CDUL aligning 0 times is refused as CCD's warm-up is (exact check: schedule.py)
        if self.method == "cdul" and c.gradient_alignment and c.ga_warmup is None and c.ga_every is None \
                and self.epochs is None and c.ga_warmup_steps >= self.steps:
            raise ConfigError(f"cdul.ga_warmup_steps ({c.ga_warmup_steps}) must be < steps ({self.steps}): CDUL would "
                              f"run no gradient alignment; lower it, raise steps or set cdul.gradient_alignment=false")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2 ** 32:
            raise ConfigError(f"seed must be an integer in [0, 2**32), got {self.seed!r}")
        if not str(self.out_dir).strip():
            raise ConfigError("out_dir must name a folder, got an empty string")
        if self.cache_dir is not None and not str(self.cache_dir).strip():
            raise ConfigError("cache_dir must be null ($CCDLIB_CACHE or ~/.cache/ccdlib) or a folder, got ''")
        _check_finite(self.teacher, "teacher.")
        if not isinstance(self.teacher.device, str) or not self.teacher.device.strip():
            raise ConfigError(f"teacher.device must be a device string such as 'auto', 'cpu', 'cuda:0', "
                              f"got {self.teacher.device!r}")
        if self.teacher.backend == "conse" and self.teacher.arch not in ("efficientnet-lite0", "efficientnet-lite2"):
            raise ConfigError(f"teacher.arch must be 'efficientnet-lite0' or 'efficientnet-lite2' for the conse "
                              f"backend, got {self.teacher.arch!r}")
        for name in ("out_dir", "cache_dir"):      # issue 23: '~' is the home folder
            object.__setattr__(self, name, _expand_home(name, getattr(self, name)))
        pre, weights = _expand_home("teacher.pretrained", self.teacher.pretrained), \
            _expand_home("student.trunk_weights", self.student.trunk_weights)
        if pre is not self.teacher.pretrained:
            object.__setattr__(self, "teacher", dataclasses.replace(self.teacher, pretrained=pre))
        if weights is not self.student.trunk_weights:
            object.__setattr__(self, "student", dataclasses.replace(self.student, trunk_weights=weights))
        # One seed (issue 11): ``seed`` seeds the student too, and the recorded config says so (a config file or
        # --set giving both, differently, is refused in config_from_dict; replace(cfg, seed=s) moves both).
        if self.student.seed != self.seed:
            object.__setattr__(self, "student", dataclasses.replace(self.student, seed=self.seed))

    @property
    def name(self) -> str:
        """A run name templated from the config: method, data, teacher, student, a hash of the rest."""
        from .cache import stable_hash
        d = config_to_dict(self)
        for k in ("out_dir", "cache_dir", "teacher_batch_size"):  # where results go and how fast: not what they are
            d.pop(k)
        d["data"].pop("rebuild", None)   # whether an old mosaic set may be replaced: not what the run is
        parts = [self.method, self.data.kind, self.teacher.arch, self.student.trunk, self.student.mode,
                 f"s{self.seed}", stable_hash(d, 8)]
        if self.tag:
            parts.insert(0, self.tag)
        return "_".join(str(p).replace("/", "-") for p in parts)


def _expand_home(name: str, value: Any) -> Any:
    """A path value starting with ``~`` with the home folder expanded (``os.path.expanduser``); any other value,
    ``None`` and a value without a leading ``~`` unchanged (the run name hashes them). A ``~user`` that names no
    user is a :class:`ConfigError` naming the field (it would become a folder literally named so)."""
    import os
    if not isinstance(value, (str, os.PathLike)):
        return value
    text = os.fspath(value)
    if not isinstance(text, str) or not text.startswith("~"):
        return value
    expanded = os.path.expanduser(text)
    if expanded.startswith("~"):
        raise ConfigError(f"{name}: cannot expand {text!r}: no such user or no home folder (give the folder in "
                          f"full)")
    return expanded if isinstance(value, str) else Path(expanded)


def _check_finite(cfg: Any, prefix: str) -> None:
    """Every float field of ``cfg`` is a finite number (NaN passes every range check), named on failure."""
    import math
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{prefix}{f.name} must be a finite number, got {v!r}")


def config_to_dict(cfg: Any) -> dict:
    """A plain dict (tuples -> lists) of a config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def _check_type(name: str, value: Any, hint: Any) -> Any:
    """Check a scalar config value against its field type, naming the key on failure (a wrong type would
    otherwise surface as a TypeError inside ``__post_init__`` that names no key). Accepts ints for floats,
    numeric strings for floats (PyYAML reads ``1e-3`` as a string), 0/1 for bools, paths for strings."""
    import numbers
    import os

    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{name} must not be empty (null)")
    base = next((a for a in args if a is not type(None)), None)
    if base is bool:
        if isinstance(value, bool) or (isinstance(value, numbers.Integral) and value in (0, 1)):
            return bool(value)
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if base is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if base is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if base is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise ConfigError(f"{name} must be a string, got {value!r}")
    return value


def _build(cls: type, data: dict, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown config key(s) {[prefix + k for k in unknown]}; known under "
                          f"{prefix or 'top level'}: {sorted(known)}")
    kwargs = {}
    for k, v in data.items():
        t = hints[k]
        if is_dataclass(t):
            kwargs[k] = _build(t, v or {}, f"{prefix}{k}.")
        elif k == "templates":
            kwargs[k] = _templates(prefix + k, v)
        else:
            kwargs[k] = _check_type(prefix + k, v, t)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"bad config under {prefix or 'top level'}: {e}") from None


def config_from_dict(data: dict) -> RunConfig:
    """Build a :class:`RunConfig` from a nested dict; unknown keys are a :class:`ConfigError`. ``student.seed``, if
    given, must equal ``seed`` (one seed per run: ``seed`` seeds the student and is recorded as both)."""
    cfg = _build(RunConfig, data or {}, "")
    student = (data or {}).get("student")
    if isinstance(student, dict) and "seed" in student and student["seed"] != cfg.seed:
        raise ConfigError(f"student.seed ({student['seed']}) differs from seed ({cfg.seed}): a run has one seed; "
                          f"set `seed` only (it seeds the student as well)")
    return cfg


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ConfigError(f"cannot set {key!r}: {p!r} is not a section")
    d[parts[-1]] = value


def _templates(name: str, value: Any) -> Any:
    """``teacher.templates`` as a tuple: one string is one template (issue 17: it was read as its characters);
    a list of strings as given; anything else is refused, saying what is expected."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)):
        bad = [t for t in value if not isinstance(t, str)]
        if bad:
            raise ConfigError(f"{name} must be a list of strings (prompt templates with a '{{}}'), got non-string "
                              f"item(s) {bad[:3]}")
        return tuple(value)
    raise ConfigError(f"{name} must be a list of strings (prompt templates with a '{{}}', e.g. "
                      f"['a photo of the {{}}.']) or one such string, got {type(value).__name__} {value!r}")


def _override_type(key: str) -> Any:
    """The type hint of the config field a dotted ``--set`` key names (``None`` when it names no field)."""
    cls: Any = RunConfig
    hint: Any = None
    for part in key.split("."):
        if not is_dataclass(cls):
            return None
        hint = get_type_hints(cls).get(part)
        if hint is None:
            return None
        cls = hint
    return hint


_YAML_NULLS = ("", "~", "null", "Null", "NULL")


def _override_value(item: str, key: str, raw: str) -> Any:
    """The value of one ``--set key=value`` (issue 17). For a string field (``out_dir``, ``data.root``, ``tag``...)
    the text is kept as typed, so that ``#`` (a YAML comment), ``no`` (a YAML boolean), ``2024-01-01`` (a YAML date)
    or ``a: b`` (a YAML mapping) survive; a quoted value is unquoted, ``null`` is None where the field allows it.
    ``teacher.templates``: one template as typed, or a YAML list (``[...]``). Other fields: parsed as YAML, and a
    value YAML turns into a date, mapping or list where a number or boolean is expected is refused naming it."""
    import datetime
    hint = _override_type(key)
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    text = raw.strip()
    quoted = len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""
    keep_text = (str in args and not quoted and not (type(None) in args and text in _YAML_NULLS)) or (
        key == "teacher.templates" and not quoted and not text.startswith("["))
    if keep_text:
        return text
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: the value is not valid YAML: {e}") from None
    scalar = next((a for a in args if a in (bool, int, float)), None)
    if scalar is not None and isinstance(value, (datetime.date, dict, list)):
        what = {dict: "a mapping", list: "a list"}.get(type(value), "a date")
        expected = {bool: "true or false", int: "an integer", float: "a number"}[scalar]
        raise ConfigError(f"override {item!r}: YAML reads {text!r} as {what} ({value!r}), but {key} must be "
                          f"{expected}")
    return value


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Apply ``key.sub=value`` strings to a nested dict (a copy). Values are parsed as YAML, except for string
    fields, which keep the text as typed (see :func:`_override_value`: a path with ``#`` in it survives)."""
    import copy
    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. ccd.r=0.5)")
        k, v = item.split("=", 1)
        _set_dotted(out, k.strip(), _override_value(item, k.strip(), v))
    return out


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML run config (or start from defaults), apply overrides, validate."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file not found: {p}")
        if p.is_dir():
            raise ConfigError(f"config {p} is a folder, expected a YAML file (e.g. notebooks/params/*.yaml)")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read config file {p}: {getattr(e, 'strerror', None) or e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping of keys to values")
        if is_flat(data):  # a notebook parameter file (notebooks/params/*.yaml): keep its RunConfig keys
            import difflib
            import warnings
            keys = flat_config_keys() - {"out_dir"}   # a notebook's out_dir is its reports folder, not a run's
            unknown = sorted(set(data) - keys - NOTEBOOK_PARAMETERS)
            if unknown:   # a typo is an error, not a "notebook-only parameter"
                hints = {k: difflib.get_close_matches(k, sorted(keys | NOTEBOOK_PARAMETERS), n=1) for k in unknown}
                raise ConfigError(f"{p}: unknown parameter(s) {unknown}: neither RunConfig keys nor notebook "
                                  f"parameters" + "".join(f"; {k}: did you mean {h[0]!r}?" for k, h in hints.items() if h))
            ignored = sorted(set(data) - keys)
            if ignored:
                warnings.warn(f"{p}: notebook-only parameters ignored by the run config: {ignored}", stacklevel=2)
            data = flat_to_nested({k: v for k, v in data.items() if k in keys})
    return config_from_dict(apply_overrides(data, overrides))


_SECTIONS = ("data", "teacher", "student", "ccd", "cdul")

#: Parameters of the notebooks' ``parameters`` cells that are not RunConfig keys (a flat params file may hold them;
#: ``load_config`` ignores them, and any other unknown key is an error). tests/test_runs_reliability.py keeps this
#: in step with the notebooks.
NOTEBOOK_PARAMETERS = frozenset({
    "out_dir", "force", "n_examples", "grids", "view_split", "around_fraction", "example_index", "local_grid",
    "example_indices", "max_cams", "ablation_switches", "ablation_r", "ablation_offset", "ablation_bound",
    "ablation_box_rule", "seeds", "stamp_protocols", "n_bootstrap", "budget_factors", "warmup_steps_grid",
    "ga_every_grid", "mechanism_seeds", "protocol_seeds", "ablation_seeds", "budget_seeds", "ga_step_grid",
    "control_protocols", "path_protocols", "view_controls"})


def flat_to_nested(params: dict[str, Any]) -> dict:
    """Flat notebook parameters -> a nested config dict: ``teacher_arch`` -> ``teacher.arch``,
    ``ccd_r`` -> ``ccd.r``; top-level keys (``method``, ``epochs``, ``seed``...) stay. Keys that name no config
    field are an error (notebook-only parameters must be removed by the caller first)."""
    nested: dict[str, Any] = {}
    top = {f.name for f in fields(RunConfig)}
    for k, v in params.items():
        section = next((s for s in _SECTIONS if k.startswith(s + "_")), None)
        if section is not None and k not in top:
            nested.setdefault(section, {})[k[len(section) + 1:]] = v
        else:
            nested[k] = v
    return nested


def flat_config_keys() -> frozenset[str]:
    """Every flat parameter name :func:`run_config_from_params` accepts: top-level :class:`RunConfig` fields
    (``epochs``, ``seed``...) and ``<section>_<field>`` (``teacher_arch``, ``ccd_r``...)."""
    hints = get_type_hints(RunConfig)
    keys: set[str] = set()
    for f in fields(RunConfig):
        t = hints[f.name]
        keys.update(f"{f.name}_{g.name}" for g in fields(t)) if is_dataclass(t) else keys.add(f.name)
    return frozenset(keys)


def is_flat(data: dict) -> bool:
    """True for a papermill-style flat parameter file (``teacher_arch: ...``) rather than a nested config."""
    return not any(k in _SECTIONS and isinstance(v, dict) for k, v in data.items()) and any(
        k.startswith(tuple(s + "_" for s in _SECTIONS)) for k in data)


def run_config_from_params(params: dict[str, Any] | None = None, **overrides: Any) -> RunConfig:
    """Build a :class:`RunConfig` from flat notebook/papermill parameters (see :func:`flat_to_nested`).

    Example: ``run_config_from_params(dict(method="ccd", epochs=10, teacher_arch="efficientnet-lite2",
    data_n_train=320, ccd_r=0.2))``. Unknown keys raise :class:`ConfigError` naming them.
    """
    return config_from_dict(flat_to_nested({**(params or {}), **overrides}))
