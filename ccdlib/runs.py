"""A run end to end: :func:`run` takes the run folder's lock, reuses finished results whose inputs are unchanged,
builds the context, runs the method (:mod:`ccdlib.methods`) and saves what it produced (:mod:`ccdlib.run_store`).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .cache import default_cache_dir, file_fingerprints
from .config import RunConfig
from .context import Context, check_inputs_unchanged, make_context
from .inputs import _changed_inputs, check_splits, check_writable, input_fingerprint, load_splits
from .methods import RUNNERS
from .run_setup import setup_line
from .run_store import _jsonify, acquire_run_lock, load_result, load_test_scores, release_run_lock, save_result
from .training_log import discard_training_state

__all__ = ["run", "run_with_test_scores"]


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
            check_splits(*data)     # (train, test, val): val is part of the training split
            inputs = input_fingerprint(data[0], data[1], val=data[2])
        else:
            inputs = ctx.inputs or input_fingerprint(ctx.train, ctx.test, val=ctx.val)
        old = load_result(out)
        changed = _changed_inputs((old.get("info") or {}).get("inputs"), inputs)
        if not changed:
            print(f"reusing results of {cfg.name}")
            return old
        print(f"recomputing {cfg.name}: its inputs changed since it was saved ({', '.join(changed)})")
    ctx = ctx if ctx is not None else make_context(cfg, data=data)
    if not ctx.inputs:                       # a Context built by hand
        stats = {k: file_fingerprints(ctx.split(k).image_paths) for k in ("train", "test")}
        ctx = replace(ctx, inputs=input_fingerprint(ctx.train, ctx.test, val=ctx.val, file_stats=stats),
                      file_stats=stats)
    rank, world = rank_and_world()
    state_dir = out / "training" if (save or world > 1) else None
    if force and save and rank == 0:
        discard_training_state(state_dir)
    if force and world > 1:
        torch.distributed.barrier()
    ctx = replace(ctx, state_dir=state_dir, write_state=save and rank == 0)
    if rank == 0:   # issue 23: which teacher, precision and schedule this run uses, before its work
        print(setup_line(cfg, len(ctx.train), ctx.teacher), flush=True)
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
