"""What a run is set up with, said before its work starts and recorded with its results (issue 23): the teacher
(back-end, architecture, hierarchy), the precision of the teacher and of the student's head (resolved, and whether
``"auto"`` chose it, :mod:`ccdlib.precision`) and the schedule (:mod:`ccdlib.schedule`).

:func:`setup_line` is the one line :func:`ccdlib.runs.run` prints before a run's teacher scoring and training;
:func:`precision_info` is ``info.precision`` of the run's ``result.json``.
"""
from __future__ import annotations

from typing import Any

from .precision import bfloat16_support, resolve_precision
from .schedule import Schedule, training_schedule
from .teachers import resolve_device

__all__ = ["precision_info", "setup_line", "teacher_description", "schedule_description"]


def precision_info(cfg: Any, teacher: Any = None, trainer: Any = None) -> dict:
    """The run's precision: ``teacher`` and ``head`` (resolved: ``"float32"`` or ``"bfloat16"``), ``teacher_auto`` and
    ``head_auto`` (whether ``"auto"`` chose them) and, for each auto value, why (``teacher_detected``,
    ``head_detected``: ``"CPU flag avx512_bf16"``, ``"CUDA bfloat16"``, ``"no avx512_bf16/amx_bf16 CPU flag"``...).
    ``cfg`` a :class:`~ccdlib.config.RunConfig`; ``teacher`` the built teacher and ``trainer`` the built
    :class:`~ccdlib.trainer.StudentTrainer` when there are (their resolved values are read back), else resolved
    here the same way."""
    tc, sc = cfg.teacher, cfg.student
    if teacher is not None and hasattr(teacher, "device"):   # what the built teacher uses
        t_dev, t_dtype = teacher.device, getattr(teacher, "dtype", "float32")
        t_auto = bool(getattr(teacher, "dtype_auto", False))
    else:
        t_dev = resolve_device(tc.device)
        t_dtype, t_auto = resolve_precision(tc.dtype, t_dev), tc.dtype == "auto"
    s_dev = trainer.device if trainer is not None else resolve_device(sc.device)
    head = trainer.config.head_dtype if trainer is not None else sc.resolved_head_dtype(s_dev)
    out: dict = {"teacher": t_dtype, "teacher_auto": t_auto, "head": head,
                 "head_auto": bool(getattr(trainer, "head_dtype_auto", sc.head_dtype == "auto"))}
    if out["teacher_auto"]:
        out["teacher_detected"] = bfloat16_support(t_dev)[1]
    if out["head_auto"]:
        out["head_detected"] = bfloat16_support(s_dev)[1] if sc.mode == "frozen" else "finetune trains in float32"
    return out


def teacher_description(cfg: Any) -> str:
    """``conse efficientnet-lite2, hierarchy on`` / ``open_clip RN50x64``."""
    tc = cfg.teacher
    text = f"{tc.backend} {tc.arch}"
    return text + (f", hierarchy {'on' if tc.conse_hierarchy else 'off'}" if tc.backend == "conse" else "")


def schedule_description(cfg: Any, schedule: Schedule) -> str:
    """``3140 steps (157 passes of 20), checkpoints every 314 steps (10), CCD warm-up 628 steps`` (CDUL: its
    alignments instead of the warm-up)."""
    s = schedule

    def passes(n: int) -> str:
        return f"{n} pass" if n == 1 else f"{n} passes"

    text = f"{s.steps} steps ({passes(s.passes)} of {s.steps_per_pass})"
    if cfg.epochs is not None:
        text += f", a checkpoint every pass ({len(s.eval_passes)})"
    else:
        every = (s.eval_passes[0] + 1) * s.steps_per_pass if len(s.eval_passes) > 1 else s.steps
        text += f", checkpoints every {every} steps ({len(s.eval_passes)})"
    if cfg.method == "ccd":
        text += (f", CCD warm-up {s.steps_before_update} steps ({passes(s.warmup_passes)})" if cfg.ccd.local_views
                 else ", CCD without its label update (ccd.local_views off)")
    elif cfg.method == "cdul":
        steps = [s.step_after(p) for p in s.align_passes]
        text += f", CDUL alignments {len(steps)}" + (f" (passes ending at steps {steps[0]}-{steps[-1]})" if steps
                                                     else "")
    return text


def setup_line(cfg: Any, n_train: int, teacher: Any = None) -> str:
    """The line a run prints before its work: its name, teacher, precision (resolved; ``auto: <why>`` or ``set``)
    and schedule on ``n_train`` training images, e.g. ``run ccd_...: teacher conse efficientnet-lite2, hierarchy on;
    precision teacher bfloat16 (auto: CPU flag avx512_bf16), head bfloat16 (auto: CPU flag avx512_bf16); schedule
    3140 steps (157 passes of 20), checkpoints every 314 steps (10), CCD warm-up 628 steps (31 passes)``."""
    p = precision_info(cfg, teacher)

    def how(key: str) -> str:
        return f"auto: {p[key + '_detected']}" if p[key + "_auto"] else "set"

    schedule = training_schedule(cfg, n_train)
    return (f"run {cfg.name}: teacher {teacher_description(cfg)}; precision teacher {p['teacher']} ({how('teacher')}), "
            f"head {p['head']} ({how('head')}); schedule {schedule_description(cfg, schedule)}")
