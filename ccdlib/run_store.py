"""The run store: a finished run's files under ``out_dir/<run name>/`` (``result.json``, ``metrics.csv``, the
selected students, the stage pseudo-labels, the test probabilities), written atomically and read back, and the lock a
saving run holds on its folder."""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .cache import atomic_write_text, save_arrays

if TYPE_CHECKING:
    from .methods import RunResult

__all__ = ["save_result", "TEST_SCORES_FILE", "save_test_scores", "load_test_scores", "load_result", "RUN_LOCK_FILE",
           "acquire_run_lock", "release_run_lock"]


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
    if not _valid_pid(pid):   # 0 or -1 would signal a process group (always "alive"), 10**30 overflows os.kill
        return False
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
    return holder if isinstance(holder, dict) and _valid_pid(holder.get("pid")) else {}


def _valid_pid(pid: object) -> bool:
    """A pid :func:`os.kill` can take: a positive int of ``pid_t`` range (a lock holding another is damaged)."""
    return isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid < 2 ** 31


def acquire_run_lock(run_dir: str | Path, *, name: str = "") -> Path:
    """Take the lock of a run folder: ``run_dir/run.lock`` created atomically (``O_CREAT | O_EXCL``) holding this
    process's pid, host name and start time. A lock held by a live process is an :class:`~ccdlib.errors.OutputError`
    naming that process (pid, host, start) and the lock file: the same run started twice into one ``out_dir`` would
    otherwise resume from the first one's live training state and overwrite its results. A stale lock (its process
    is gone: a dead pid on this machine, or an unreadable lock older than a minute) is taken over with a warning
    saying so. A lock from another machine is never taken over (its pid cannot be checked from here). A lock whose
    pid is not a valid pid (``0``, negative, ``10**30``) is unreadable. A lock that cannot be written (a full disk)
    is removed again and is an ``OutputError`` "cannot write results to ..." (issue 23)."""
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
        try:   # a full disk fails here: remove the empty lock, or a rerun is refused as "already running" (issue 23)
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": host, "started": now,
                           "started_at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)), "run": name}, f)
        except OSError as e:
            lock.unlink(missing_ok=True)
            raise OutputError(f"cannot write results to {run_dir}: cannot write {lock}: {e.strerror or e}") from None
        return lock
    raise OutputError(f"cannot take the lock {lock}: other processes keep taking it")


def release_run_lock(lock: str | Path) -> None:
    """Remove a lock :func:`acquire_run_lock` took, if it is still this process's."""
    import os
    lock = Path(lock)
    holder = _read_run_lock(lock)
    if holder and holder.get("pid") == os.getpid():
        lock.unlink(missing_ok=True)
