"""One readable run function per method, built from the paper steps (method.md §2-§6).

- :func:`run_teacher_global` -- the teacher's zero-shot global prediction, and a student trained on it.
- :func:`run_cdul` -- CDUL: global-local aggregated pseudo-labels (+ gradient-alignment updates).
- :func:`run_ccd` -- CCD: debiased global labels, warm-up, one classifier-guided label update, consistency loss.
- :func:`run_supervised` -- the same student trained on ground truth (the upper bound).

Every run returns a :class:`RunResult` holding per-checkpoint history, each checkpoint-selection rule's pick
(:mod:`ccdlib.selection`), pseudo-label quality per stage and wall times; :func:`ccdlib.runs.run` runs one with its
lock, reuse and saving (:mod:`ccdlib.run_store`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from .config import RunConfig, config_to_dict
from .context import Context, global_probabilities, grid_probabilities, make_context, pseudo_label_quality
from .crop_metrics import crop_summary
from .label_update import classifier_guided_label_update
from .metrics import evaluate
from .pseudolabels import (ccd_initial_pseudo_labels, cdul_bernoulli_alignment_update, cdul_gradient_alignment_update,
                           cdul_initial_pseudo_labels)
from .run_setup import precision_info
from .schedule import Schedule, training_schedule
from .selection import resolve_scoring, scores_from_logits, select_checkpoints
from .student import alpha_for
from .trainer import StudentTrainer
from .training_log import TrainingLog
from .view_controls import control_views

__all__ = ["RunResult", "run_teacher_global", "run_cdul", "run_ccd", "run_supervised", "RUNNERS",
           "train_view_probabilities"]


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
            "feature_dim": None if log is None else log.trainer.student.feature_dim,
            "precision": precision_info(ctx.cfg, ctx.teacher, None if log is None else log.trainer)}   # issue 23
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
    if c.initial_labels == "aggregate":
        p_tiles = timer("teacher_tiles", lambda: grid_probabilities(ctx, "train", c.grid))
        # 2. global-local aggregation
        y = cdul_initial_pseudo_labels(p_global, p_tiles, theta=c.theta, lam=c.lam)
    else:   # issue 22 §2: CCD's debiased global labels (method.md §4) under CDUL's training and alignment
        k = cfg.ccd
        y = ccd_initial_pseudo_labels(p_global, h_max=k.h_max, ls=k.ls or None, debiasing=k.debiasing,
                                      fallback=k.bias_fallback, class_names=list(ctx.train.class_ids)).labels
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
        moved = np.abs(np.asarray(y, np.float64) - stages["cdul_initial"])   # what the alignments did to the labels
        info_moved = {"label_change_mean": float(moved.mean()), "label_change_max": float(moved.max())}
    else:
        info_moved = {}
    info = {"aligned_epochs": list(schedule.align_passes), "aligned_steps": [schedule.step_after(p) for p in
                                                                             schedule.align_passes],
            "alignments": len(schedule.align_passes), "student_loss": c.student_loss,
            "alignment": c.alignment if c.gradient_alignment else None, "initial_labels": c.initial_labels,
            **info_moved}
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
        cams = lambda idx: trainer.cams(idx, alpha=cam_alpha, image_size=size)   # noqa: E731
        control = None
        if (c.views, c.selection) != ("cam", "tau"):      # issue 22 §1: only the local views change
            control = lambda tau: control_views(  # noqa: E731
                views=c.views, selection=c.selection, probs=probs, tau=tau, cams=cams,
                image_sizes=ctx.image_sizes("train"), offset=c.offset, resolution=c.resolution,
                threshold=c.cam_threshold, box_rule=c.box_rule, seed=cfg.seed, labels=ctx.train.labels,
                boxes=ctx.train.boxes, top_k=c.top_k, grid=cfg.cdul.grid)
        upd = timer("label_update", lambda: classifier_guided_label_update(
            y_prev=y, student_probs=probs, cams=cams, teacher=ctx.teacher, local_views=control,
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
                    updated_labels_equal_1=int((upd.labels == 1).sum()), views=c.views, selection=c.selection)
        if "k" in upd.control:
            info["top_k"] = upd.control["k"]
        if ctx.train.boxes is not None and upd.crops:
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
