"""The per-pass bookkeeping of a training run: checkpoints, evaluation and the resumable training state.

A run trains whole passes over its shuffled training split (:mod:`ccdlib.schedule` turns the step budget into
passes). After the passes the schedule marks as checkpoints, :class:`TrainingLog` evaluates the student: the train
mAP against the current pseudo-labels (the GT-free rule's input), the test metrics under the run's scoring rule and
the test mAP under both sigmoid and softmax, and the mAP on the few-label validation split; the selection rules
(:mod:`ccdlib.selection`) choose among these checkpoints. :class:`TrainingState` makes a killed run resumable.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from .cache import atomic_write_bytes
from .metrics import evaluate, mean_average_precision, released_code_map
from .schedule import Schedule
from .selection import scores_from_logits
from .trainer import StudentTrainer

if TYPE_CHECKING:
    from .context import Context

__all__ = ["TrainingState", "TrainingLog", "discard_training_state"]


class TrainingState:
    """The resumable training state of one run (issue 11), in ``ctx.state_dir`` (``out_dir/<run>/training/``).

    After every *saved* pass ``p`` (the checkpoints, and the passes a runner changes its labels in, e.g. CDUL's
    aligned passes): ``epoch_<p>.pt`` holds that pass's model (the head in frozen mode), the pseudo-labels it
    trained on, its row, its test logits (checkpoints) and the live labels after it; then ``state.pt`` (written
    last: it marks pass ``p`` done) holds the trainer's :meth:`~ccdlib.trainer.StudentTrainer.training_state`
    (model, optimiser, pass count, alpha), the number of finished passes, the per-pass losses and the run's
    :func:`~ccdlib.inputs.input_fingerprint`. No RNG state: every random draw of a pass is derived from
    ``(seed, pass)``. A rerun replays the finished passes (a saved pass restores its model and labels; the passes
    between saved ones are skipped, their effect being in the next saved state), so what a runner computes between
    passes -- CDUL's alignment, CCD's label update -- is recomputed exactly (the teacher's crops come from the
    cache), and trains from the first unfinished one. A saved pass whose pseudo-labels differ from the rerun's, or
    other inputs, is discarded (and said so)."""

    def __init__(self, ctx: "Context"):
        self.dir = ctx.state_dir
        self.write = ctx.write_state and self.dir is not None
        self.inputs = ctx.inputs
        self.done = 0                       # passes that can be replayed
        self.state: dict | None = None
        if self.dir is None or not (self.dir / "state.pt").exists():
            return
        try:
            state = torch.load(self.dir / "state.pt", map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 -- an unreadable state is discarded, never trusted
            print(f"training state in {self.dir} is unreadable ({type(e).__name__}): training from pass 1")
            return
        if state.get("inputs") != self.inputs:
            print(f"training state in {self.dir} was made on other data: training from pass 1")
            return
        self.state, self.done = state, int(state["epochs_done"])

    def _path(self, p: int) -> Path:
        return self.dir / f"epoch_{p:03d}.pt"

    def replay(self, p: int, targets: np.ndarray, trainer: StudentTrainer) -> dict | str | None:
        """Pass ``p`` of a resumed run: its saved ``{"row", "test_logits", "model", "labels_after"}`` with the
        trainer restored to its end; ``"skip"`` for a finished pass that was not saved (nothing to restore: the
        next saved pass holds its effect); ``None`` (train it) when it was not finished or trained on other
        pseudo-labels."""
        if p >= self.done:
            return None
        path = self._path(p)
        if not path.exists():
            return "skip"
        try:
            saved = torch.load(path, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001
            saved = None
        if saved is None or not np.array_equal(saved["targets"], np.asarray(targets, dtype=np.float32)):
            print(f"training state in {self.dir}: pass {p + 1} was trained on other pseudo-labels: "
                  f"training from pass {p + 1}")
            self.done = p
            return None
        if p == self.done - 1:
            trainer.load_training_state(self.state)      # model, optimiser, pass count, alpha
        else:
            trainer.load_state_dict(saved["model"])
            trainer.epoch = p + 1
            trainer.alpha = saved["row"]["alpha"]
        return saved

    def save(self, p: int, targets: np.ndarray, row: dict, test_logits: np.ndarray | None,
             trainer: StudentTrainer, *, labels_after: np.ndarray | None = None, pass_rows: list | None = None) -> None:
        if not self.write:
            return
        import io
        from .errors import OutputError

        def write(path: Path, obj: dict) -> None:
            buf = io.BytesIO()
            torch.save(obj, buf)
            atomic_write_bytes(path, buf.getvalue())
        try:
            write(self._path(p), {"model": trainer.state_dict(), "targets": np.asarray(targets, dtype=np.float32),
                                  "row": row, "test_logits": test_logits,
                                  "labels_after": None if labels_after is None else np.array(labels_after)})
            write(self.dir / "state.pt", {**trainer.training_state(), "epochs_done": p + 1,
                                          "inputs": self.inputs, "pass_rows": list(pass_rows or [])})
        except OSError as e:
            raise OutputError(f"cannot write results to {self.dir}: {e.strerror or e} (the training state of "
                              f"pass {p + 1})") from None
        self.done = max(self.done, p + 1)


def discard_training_state(state_dir: Path | None) -> None:
    """Remove the files :class:`TrainingState` writes (and the folder, if that leaves it empty); nothing else."""
    if state_dir is None or not state_dir.is_dir():
        return
    for p in [*state_dir.glob("epoch_[0-9][0-9][0-9].pt"), state_dir / "state.pt"]:
        p.unlink(missing_ok=True)
    try:
        state_dir.rmdir()
    except OSError:
        pass


class TrainingLog:
    """Trains (or replays) one pass at a time (:meth:`train_pass`) and keeps the checkpoints of the run's
    :class:`~ccdlib.schedule.Schedule`: ``history`` (one row per checkpoint: ``epoch`` = checkpoint index, ``pass``,
    ``step``, losses, ``train_mAP_vs_pseudo``, ``train_mAP_truth`` (the training images against their ground truth,
    which no rule reads), ``test_<metric>`` under the run's scoring rule ``scoring``,
    ``test_mAP_sigmoid``, ``test_mAP_softmax``, ``val_mAP``), ``test_logits`` and ``states`` (the model) per
    checkpoint, and ``pass_rows`` (``pass``, ``step``, losses of every pass: the training curve). Prints one line per
    checkpoint."""

    def __init__(self, ctx: "Context", trainer: StudentTrainer, schedule: Schedule, *, scoring: str = "sigmoid"):
        self.ctx, self.trainer, self.schedule, self.scoring = ctx, trainer, schedule, scoring
        self.history: list[dict] = []
        self.test_logits: list[np.ndarray] = []
        self.states: list[dict] = []
        self.pass_rows: list[dict] = []
        self.t0 = time.perf_counter()
        self.resume = TrainingState(ctx)
        if self.resume.state is not None:
            self.pass_rows = list(self.resume.state.get("pass_rows") or [])[:self.resume.done]

    def _print(self, row: dict, note: str = "") -> None:
        from .distributed import rank_and_world
        if rank_and_world()[0] == 0:
            print(f"checkpoint {row['epoch'] + 1}/{len(self.schedule.eval_passes)} (step {row['step']}/"
                  f"{self.schedule.steps})  loss {row.get('loss', float('nan')):.4f}  "
                  f"train mAP {row['train_mAP_vs_pseudo']:.2f} (vs pseudo-labels)  test mAP {row['test_mAP']:.2f}"
                  f"{note}", flush=True)

    def train_pass(self, p: int, targets: np.ndarray, *, alpha: float, consistency: bool, loss: str = "bce",
                   on_batch: Callable[[np.ndarray, np.ndarray], None] | None = None,
                   live_labels: np.ndarray | None = None, save: bool = False) -> dict:
        """Train (or, after an interruption, replay) pass ``p``; evaluate it when the schedule makes it a
        checkpoint. ``on_batch(idx, logits)`` runs after every optimiser step (CDUL's alignment); ``live_labels`` is
        the array it writes, saved with the pass (``save=True`` saves a non-checkpoint pass too) and restored on
        replay. Returns the pass's row (the checkpoint row for a checkpoint)."""
        is_eval = p in self.schedule.eval_passes
        saved = self.resume.replay(p, targets, self.trainer)
        if saved == "skip":
            return {"pass": p, "skipped": True}
        if saved is not None:                   # finished before an interruption: restored, not retrained
            if live_labels is not None and saved.get("labels_after") is not None:
                np.copyto(live_labels, saved["labels_after"])
            if is_eval:
                self.history.append(saved["row"])
                self.test_logits.append(saved["test_logits"])
                self.states.append(saved["model"])
                self._print(saved["row"], f"  (resumed from {self.resume.dir})")
            return saved["row"]
        t = time.perf_counter()
        losses = self.trainer.fit_epoch(targets, alpha=alpha, consistency=consistency, loss=loss, on_batch=on_batch)
        prow = {"pass": p, "step": self.schedule.step_after(p), "alpha": alpha, "consistency_on": consistency,
                **{k: float(v) for k, v in losses.items() if k in ("loss", "bce", "consistency")}}
        self.pass_rows.append(dict(prow))
        row, z = prow, None
        if is_eval:
            row, z = self._evaluate(prow, targets, losses["train_scores"])
            row["seconds"] = time.perf_counter() - t
        from .context import check_inputs_unchanged
        check_inputs_unchanged(self.ctx)        # the data folder replaced while this pass ran: stop, save nothing
        if is_eval:
            self._print(row)
        if is_eval or save:
            self.resume.save(p, targets, row, z, self.trainer, labels_after=live_labels, pass_rows=self.pass_rows)
        return row

    def _evaluate(self, prow: dict, targets: np.ndarray, train_scores: np.ndarray) -> tuple[dict, np.ndarray]:
        ctx = self.ctx
        train_logits, test_logits = self.trainer.eval_logits(ctx.test.image_paths)
        hard = (np.asarray(targets) >= 0.5).astype(np.uint8)
        # the GT-free rule's train mAP (RunConfig.gt_free_input): "eval" = eval-mode logits vs labels >= 0.5;
        # "released" = the pass's training outputs vs labels == 1, released mAP (train.py, end of the epoch loop)
        map_eval = mean_average_precision(train_logits, hard).map
        map_truth = mean_average_precision(train_logits, ctx.train.labels).map   # issue 22 §5: generalisation
        map_released = released_code_map(train_scores, (np.asarray(targets) == 1).astype(np.uint8)).map
        train_map = map_released if ctx.cfg.gt_free_input == "released" else map_eval
        test_metrics = evaluate(scores_from_logits(test_logits, self.scoring), ctx.test.labels,
                                class_names=list(ctx.test.class_ids))
        maps = {f"test_mAP_{s}": mean_average_precision(scores_from_logits(test_logits, s), ctx.test.labels).map
                for s in ("sigmoid", "softmax")}
        val_map = float("nan")
        if ctx.val is not None:
            val_logits = self.trainer.predict_logits(ctx.val.image_paths)
            val_map = mean_average_precision(scores_from_logits(val_logits, self.scoring), ctx.val.labels).map
        row = {**prow, "epoch": len(self.history), "train_mAP_vs_pseudo": train_map, "train_mAP_eval": map_eval,
               "train_mAP_released": map_released, "train_mAP_truth": map_truth, **{f"test_{k}": v for k, v in test_metrics.items()}, **maps,
               "val_mAP": val_map}
        self.history.append(row)
        self.test_logits.append(np.asarray(test_logits, dtype=np.float32))
        self.states.append({k: v.detach().cpu().clone() for k, v in self.trainer.state_dict().items()})
        return row, self.test_logits[-1]

    def test_map_now(self) -> float:
        """Test mAP (run's scoring) of the student as it is now, outside the checkpoints (CCD's warm-up end)."""
        z = self.trainer.predict_logits(self.ctx.test.image_paths)
        return mean_average_precision(scores_from_logits(z, self.scoring), self.ctx.test.labels).map

    def train_probabilities(self) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.trainer.predict_logits()))
