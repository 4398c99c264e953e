"""Training schedules in optimiser steps (docs/method.md §6a, "Budgets").

A run's length, CCD's warm-up and CDUL's alignment warm-up and cadence are given in **optimiser steps**, so that
every method gets the same budget whatever the size of the training split. The defaults are the released runs'
step counts on VOC07 trainval (5,011 images, batch 16, ``ceil(5011 / 16) = 314`` steps per epoch):

- ``RunConfig.steps = 3140``: CCD's 10 epochs (k0u-id/CCD ``train.py``, ``--epochs 10``);
- ``ccd.warmup_steps = 628``: CCD's 2 warm-up epochs before its one label update;
- ``RunConfig.eval_every_steps = 314``: one released VOC07 epoch, so a run has the released run's 10 checkpoints
  among which the selection rules (oracle, last, GT-free, few-label) choose;
- ``cdul.ga_warmup_steps = cdul.ga_every_steps = 314``: the CDUL reproduction (cs-mshah/CDUL
  ``configs/experiment/voc2012.yaml``) trains 100 epochs and aligns in the epochs ending at a multiple of 10 after a
  10-epoch warm-up: one tenth of its run each. At the common budget of 3,140 steps that is 314 steps each, which
  keeps the reproduction's 9 alignments (at steps 628, 942, ..., 3140; the last one reaches no checkpoint, as in
  the reproduction). Its own 71,500 steps (715 per epoch at batch 8) are 23x the common budget.

The training loop runs whole passes over the shuffled split (``ceil(N / batch)`` steps each), so a schedule in
steps is rounded to whole passes (:func:`training_schedule`), and what was run is recorded (``info.schedule``).
The epoch fields (``RunConfig.epochs``, ``ccd.warmup_epochs``, ``cdul.ga_warmup`` / ``cdul.ga_every``) remain a
way to say the same in passes; when ``epochs`` is given every pass is a checkpoint (the released code's rule).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

__all__ = ["Schedule", "training_schedule", "released_steps_per_epoch", "VOC07_TRAINVAL", "RELEASED_BATCH",
           "TAU_BLOCK", "released_tau_checks"]

#: VOC07 trainval images and the released batch size: what the default step counts are derived from.
VOC07_TRAINVAL = 5011
RELEASED_BATCH = 16
#: The released tau walk checks the class count every 100 images (``train.py`` 216-247).
TAU_BLOCK = 100


def released_steps_per_epoch(n_images: int = VOC07_TRAINVAL, batch_size: int = RELEASED_BATCH) -> int:
    """Optimiser steps of one epoch (the last, partial batch counts: ``drop_last=False``): ``ceil(n / batch)``."""
    return math.ceil(n_images / batch_size)


def released_tau_checks(n_images: int = VOC07_TRAINVAL, block: int = TAU_BLOCK) -> int:
    """Threshold checks the released single-pass walk makes over ``n_images``: one at every 0-based position
    ``block, 2 block, ...`` below ``n_images`` (VOC07 trainval: 50)."""
    return max(0, (n_images - 1) // block)


@dataclass(frozen=True)
class Schedule:
    """A run's schedule in whole passes over the training split (0-based pass indices).

    Fields: ``steps_per_pass`` (``ceil(N / B)``), ``passes`` (training passes), ``eval_passes`` (the passes after
    which the student is evaluated: the checkpoints the selection rules choose among; always includes the last),
    ``warmup_passes`` (CCD: passes before its label update), ``align_passes`` (CDUL: passes whose every step is
    followed by the gradient-alignment update). ``steps`` etc. are derived."""

    steps_per_pass: int
    passes: int
    eval_passes: tuple[int, ...]
    warmup_passes: int = 0
    align_passes: tuple[int, ...] = ()

    @property
    def steps(self) -> int:
        return self.passes * self.steps_per_pass

    @property
    def steps_before_update(self) -> int:
        return self.warmup_passes * self.steps_per_pass

    def step_after(self, p: int) -> int:
        """Optimiser steps done at the end of pass ``p``."""
        return (p + 1) * self.steps_per_pass

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(steps=self.steps, steps_before_update=self.steps_before_update,
                 eval_steps=[self.step_after(p) for p in self.eval_passes],
                 alignments=len(self.align_passes))
        return d


def _passes(steps: int, steps_per_pass: int) -> int:
    """Whole passes nearest to ``steps`` (ties up)."""
    return int(math.floor(steps / steps_per_pass + 0.5))


def training_schedule(cfg, n_train: int, *, batch_size: int | None = None) -> Schedule:
    """The :class:`Schedule` of run config ``cfg`` (a :class:`~ccdlib.config.RunConfig`) on ``n_train`` training
    images at ``batch_size`` images per step (default: CDUL's ``cdul.batch_size`` for a CDUL run, else
    ``student.batch_size``).

    - passes = ``epochs`` when given, else ``round(steps / steps_per_pass)`` (at least 1);
    - checkpoints: every pass when ``epochs`` is given, else every ``max(1, round(eval_every_steps / S))`` passes,
      and the last pass;
    - CCD warm-up: ``ccd.warmup_epochs`` passes when given; else, with ``ccd.warmup_rounding="checkpoint"``
      (default), ``ccd.warmup_steps`` rounded to whole checkpoint intervals of ``k`` passes (at least one when
      ``warmup_steps > 0``), so the
      update lands on a checkpoint and the next checkpoint is a whole interval on updated labels, as in the released
      run (VOC07: 2 of 10 epochs); ``"pass"``: ``round(ccd.warmup_steps / S)`` passes. Must leave at least one pass
      after the update;
    - CDUL alignment: with ``epochs``, ``cdul.ga_every`` or ``cdul.ga_warmup`` given (epochs), the reproduction's
      rule ``(e + 1) > ga_warmup and (e + 1) % ga_every == 0`` (unset: 0 and 10, its ``config.yaml``); else pass ``p`` aligns when it contains step ``m * ga_every_steps`` for some
      ``m`` with ``m * ga_every_steps > ga_warmup_steps`` (on VOC12 at batch 8 both give the same epochs). A warm-up
      (``ga_warmup`` / ``ga_warmup_steps``) that leaves no alignment in the run is a ``ConfigError``, as CCD's is
      (issue 23); ``cdul.gradient_alignment=false`` is the way to run CDUL without alignment.
    """
    from .errors import ConfigError
    if n_train < 1:
        raise ConfigError("a training split needs at least one image")
    if batch_size is None:
        batch_size = (cfg.cdul.batch_size or cfg.student.batch_size) if cfg.method == "cdul" else cfg.student.batch_size
    s = math.ceil(n_train / batch_size)
    if cfg.epochs is not None:
        passes = int(cfg.epochs)
        k = 1
        evals = tuple(range(passes))
    else:
        passes = max(1, _passes(cfg.steps, s))
        k = max(1, _passes(cfg.eval_every_steps, s))
        evals = tuple(sorted({*range(k - 1, passes, k), passes - 1}))
    warmup = 0
    if cfg.method == "ccd" and cfg.ccd.local_views:
        c = cfg.ccd
        if c.warmup_epochs is not None:
            warmup = int(c.warmup_epochs)
        elif c.warmup_rounding == "checkpoint":
            intervals = _passes(c.warmup_steps, k * s)
            warmup = k * (max(1, intervals) if c.warmup_steps > 0 else 0)
        else:
            warmup = _passes(c.warmup_steps, s)
        if warmup >= passes:
            raise ConfigError(f"CCD's warm-up ({warmup} passes = {warmup * s} steps of {s}) must be shorter than the "
                              f"run ({passes} passes = {passes * s} steps): lower ccd.warmup_steps / "
                              f"ccd.warmup_epochs or raise steps / epochs")
    aligned: tuple[int, ...] = ()
    if cfg.method == "cdul" and cfg.cdul.gradient_alignment:
        c = cfg.cdul
        if c.ga_every is not None or c.ga_warmup is not None or cfg.epochs is not None:
            every = c.ga_every if c.ga_every is not None else 10     # the reproduction's epochs
            wu = c.ga_warmup if c.ga_warmup is not None else 0       # config.yaml's warm-up
            aligned = tuple(p for p in range(passes) if (p + 1) > wu and (p + 1) % every == 0)
        else:
            e = c.ga_every_steps
            aligned = tuple(p for p in range(passes)
                            if any(m * e > c.ga_warmup_steps
                                   for m in range(p * s // e + 1, (p + 1) * s // e + 1)))
            if not aligned:   # issue 23: CDUL aligning 0 times, refused as CCD's warm-up is
                raise ConfigError(
                    f"CDUL would run no gradient alignment: cdul.ga_warmup_steps ({c.ga_warmup_steps}) and "
                    f"cdul.ga_every_steps ({c.ga_every_steps}) leave no alignment step in the run's {passes * s} "
                    f"steps ({passes} passes of {s}; steps={cfg.steps}): lower cdul.ga_warmup_steps / "
                    f"cdul.ga_every_steps, raise steps, or set cdul.gradient_alignment=false")
        if c.ga_warmup is not None and c.ga_warmup >= passes:
            raise ConfigError(f"CDUL would run no gradient alignment: cdul.ga_warmup ({c.ga_warmup} epochs) must be "
                              f"< the run's {passes} passes (epochs={cfg.epochs}, steps={cfg.steps}): lower "
                              f"cdul.ga_warmup, raise epochs, or set cdul.gradient_alignment=false")
    return Schedule(steps_per_pass=s, passes=passes, eval_passes=evals, warmup_passes=warmup, align_passes=aligned)
