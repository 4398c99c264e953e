"""Issue 11, runs: no stale results, no work lost, config validated (items 1-6 and 13). The case -> test map is the
"Runs (issue 11)" section of tests/RELIABILITY.md.

Run-level tests use the real pipeline scaled down (as tests/test_reliability.py): a 16/8-image mosaic set built once
into a temporary folder and read as a VOC-layout data set (so a test can edit its files), the offline ConSE teacher
(EfficientNet-Lite0 at 96 px) and the frozen EfficientNet-Lite0 student at 96 px, one torch thread, one shared cache.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import ccdlib.context
import ccdlib.inputs
import ccdlib.methods
import ccdlib.run_store
import ccdlib.runs
import ccdlib.training_log
import ccdlib.teachers
from ccdlib.__main__ import main
from ccdlib.config import NOTEBOOK_PARAMETERS, config_to_dict, flat_config_keys, load_config, run_config_from_params
from ccdlib.errors import ConfigError, DatasetError, OutputError
from ccdlib.metrics import evaluate, topk_metrics
from ccdlib.methods import RUNNERS
from ccdlib.context import make_context
from ccdlib.runs import run
from ccdlib.selection import select_checkpoints
from ccdlib.trainer import StudentTrainer

from _guards import LOOKED_UP_IN  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:.*have no positive image:UserWarning"),
              pytest.mark.filterwarnings("ignore:class bias:UserWarning"),
              pytest.mark.usefixtures("one_thread")]

N_TRAIN, N_TEST = 16, 8
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


class Killed(Exception):
    """Stands in for a kill at a chosen point."""


def _boom(*args, **kwargs):
    raise AssertionError("expensive work started before the problem was reported")




@pytest.fixture(scope="module")
def mosaic_root(small_mosaic_root) -> Path:
    assert (N_TRAIN, N_TEST) == (16, 8)          # the size of conftest's shared set
    return small_mosaic_root


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def data(mosaic_root, tmp_path) -> Path:
    """A private VOC-layout copy of the mosaic set that a test may edit."""
    root = tmp_path / "data"
    shutil.copytree(mosaic_root, root)
    return root


def _cfg(root: Path, tmp: Path, cache: Path, **kw):
    params = dict(method="ccd", epochs=3, ccd_warmup_epochs=2, seed=0, data_kind="voc", data_root=str(root),
                  data_classes=str(root / "classes.yaml"), teacher_arch="efficientnet-lite0", teacher_image_size=96,
                  teacher_device="cpu", student_image_size=96, student_batch_size=8, student_device="cpu",
                  student_n_aug_views=1, teacher_batch_size=32, out_dir=str(tmp / "results"), cache_dir=str(cache),
                  teacher_conse_hierarchy=False, teacher_dtype="float32", student_head_dtype="float32")   # issue 23
    params.update(kw)
    return run_config_from_params(params)


@pytest.fixture
def count_runs(monkeypatch):
    """``calls[method]``: how many times each runner ran."""
    calls: dict[str, int] = {}
    for method, fn in list(RUNNERS.items()):
        def counting(c, ctx=None, _fn=fn, _m=method):
            calls[_m] = calls.get(_m, 0) + 1
            return _fn(c, ctx)
        monkeypatch.setitem(RUNNERS, method, counting)
    return calls


@pytest.fixture
def count_epochs(monkeypatch):
    """The epochs actually trained (``StudentTrainer.fit_epoch`` calls), by trainer epoch index."""
    trained: list[int] = []
    orig = StudentTrainer.fit_epoch

    def fit_epoch(self, *a, **kw):
        trained.append(self.epoch)
        return orig(self, *a, **kw)
    monkeypatch.setattr(StudentTrainer, "fit_epoch", fit_epoch)
    return trained


def _rewrite_names(xml: Path, fn) -> None:
    xml.write_text(re.sub(r"<name>([^<]*)</name>", lambda m: f"<name>{fn(m.group(1))}</name>", xml.read_text()))


def _without_times(result: dict) -> dict:
    r = json.loads(json.dumps(result))
    for row in r["history"]:
        row.pop("seconds", None)
    r.pop("seconds", None)
    return r


def _checkpoints(run_dir: Path) -> dict[str, dict]:
    return {p.stem: torch.load(p, map_location="cpu", weights_only=True) for p in sorted(run_dir.glob("student_*.pt"))}


def _assert_same_checkpoints(a: Path, b: Path) -> None:
    ca, cb = _checkpoints(a), _checkpoints(b)
    assert ca.keys() == cb.keys() and ca
    for name in ca:
        for k in ca[name]:
            assert torch.equal(ca[name][k], cb[name][k]), (name, k)


# --------------------------------------------------------------------------------------------------
# 1. a finished run is reused only when its inputs' contents match
# --------------------------------------------------------------------------------------------------
def test_finished_run_is_reused_only_when_the_inputs_match(data, shared_cache, tmp_path, count_runs, capsys):
    cfg = _cfg(data, tmp_path, shared_cache, method="supervised", epochs=1)
    first = run(cfg)
    assert count_runs == {"supervised": 1}
    assert "inputs" in first["info"] and set(first["info"]["inputs"]) == {"train", "test", "few_label"}
    capsys.readouterr()
    assert run(cfg) == first and count_runs["supervised"] == 1
    assert f"reusing results of {cfg.name}" in capsys.readouterr().out

    few = first["info"]["few_label_ids"]                   # images held out of training for the few-label rule
    trained = next(i for i in (f"train_{k:06d}" for k in range(16)) if i not in few)
    edits = {   # what a user changes under the same data.root -> the part named in the message
        "test labels": lambda: _rewrite_names(
            data / "Annotations" / "test_000000.xml",
            lambda n: next(c for c in yaml.safe_load((data / "classes.yaml").read_text()) if c != n)),
        "test classes": lambda: (data / "classes.yaml").write_text(
            (data / "classes.yaml").read_text().replace('bird: "bird"', 'bird: "small bird"')),
        "train images": lambda: shutil.copy(data / "JPEGImages" / f"{few[0]}.jpg", data / "JPEGImages" / f"{trained}.jpg"),
        "few_label images": lambda: shutil.copy(data / "JPEGImages" / f"{trained}.jpg",   # held out: picks few_label
                                                data / "JPEGImages" / f"{few[0]}.jpg"),
        "test ids": lambda: (data / "ImageSets" / "Main" / "test.txt").write_text(
            "".join((data / "ImageSets" / "Main" / "test.txt").read_text().splitlines(True)[:-1])),
    }
    for n, (part, edit) in enumerate(edits.items(), start=2):
        edit()
        result = run(cfg)
        out = capsys.readouterr().out
        assert count_runs["supervised"] == n, part
        assert f"recomputing {cfg.name}" in out and part in out, out
        assert result["info"]["inputs"] != first["info"]["inputs"]
        assert run(cfg) == result and count_runs["supervised"] == n        # and is reused once saved
        assert "reusing results of" in capsys.readouterr().out
    # the notebooks' path: run(cfg, ctx=make_context(...)) checks the same fingerprint
    ctx = make_context(cfg)
    assert run(cfg, ctx=ctx) == result and count_runs["supervised"] == n
    shutil.copy(data / "JPEGImages" / "test_000002.jpg", data / "JPEGImages" / "test_000001.jpg")
    run(cfg, ctx=make_context(cfg))
    assert count_runs["supervised"] == n + 1
    # a result saved before fingerprints were recorded is not trusted
    d = Path(cfg.out_dir) / cfg.name
    old = json.loads((d / "result.json").read_text())
    old["info"].pop("inputs")
    (d / "result.json").write_text(json.dumps(old))
    run(cfg)
    assert count_runs["supervised"] == n + 2 and "not recorded" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------
# 2. the data folder changes while a run trains: stop with an error naming it, save nothing
# --------------------------------------------------------------------------------------------------
def test_data_replaced_during_the_run_stops_it(data, shared_cache, tmp_path, monkeypatch):
    cfg = _cfg(data, tmp_path, shared_cache, method="supervised", epochs=2)
    orig = ccdlib.training_log.TrainingLog._evaluate

    def epoch_then_rebuild(self, *a, **kw):
        row = orig(self, *a, **kw)
        if row[0]["epoch"] == 0:   # "another build into the same folder": a test image replaced
            shutil.copy(data / "JPEGImages" / "test_000003.jpg", data / "JPEGImages" / "test_000004.jpg")
        return row
    monkeypatch.setattr(ccdlib.training_log.TrainingLog, "_evaluate", epoch_then_rebuild)
    with pytest.raises(DatasetError) as e:
        run(cfg)
    assert str(data) in str(e.value) and "changed during the run" in str(e.value)
    assert "test_000004.jpg" in str(e.value)
    assert not (Path(cfg.out_dir) / cfg.name / "result.json").exists()
    training = Path(cfg.out_dir) / cfg.name / "training"
    assert not list(training.glob("epoch_*.pt"))      # the epoch that saw the change was not saved either


# --------------------------------------------------------------------------------------------------
# 3. a test split without any labelled object: train, label and save; skip the gt_best rule and say so
# --------------------------------------------------------------------------------------------------
def test_unlabelled_test_split_trains_labels_and_saves(data, shared_cache, tmp_path, capsys):
    for xml in (data / "Annotations").glob("test_*.xml"):
        xml.write_text(re.sub(r"\s*<object>.*?</object>", "", xml.read_text(), flags=re.S))
    cfg = _cfg(data, tmp_path, shared_cache)
    with pytest.warns(UserWarning, match="no labelled object.*gt_best"):
        result = run(cfg)
    d = Path(cfg.out_dir) / cfg.name
    assert (d / "result.json").exists() and (d / "pseudo_labels.npz").exists()
    assert set(result["selected"]) == {"last", "gt_free", "few_label"}     # gt_best skipped
    assert result["selected"]["last"]["metrics"]["mAP"] is None            # NaN, saved as null
    assert result["pseudo_label_quality"]["ccd_updated"]["mAP"] > 0        # the training split is labelled
    assert (d / "student_last.pt").exists() and not (d / "student_gt_best.pt").exists()
    capsys.readouterr()
    assert main(["run", "--config", _write_yaml(cfg, tmp_path)]) == 0      # reused; the CLI prints n/a
    assert "mAP=n/a" in capsys.readouterr().out
    # the rule itself, by hand
    assert select_checkpoints([1.0, 2.0, 3.0], [float("nan")] * 3) == {"last": 2, "gt_free": 2}
    assert select_checkpoints([1.0, 2.0, 3.0], [0.3, float("nan"), 0.5])["gt_best"] == 2


def _write_yaml(cfg, tmp_path: Path) -> str:
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(config_to_dict(cfg)))
    return str(p)


# --------------------------------------------------------------------------------------------------
# 4. fewer than 3 classes: top-k is skipped (NaN); one class is refused before any work
# --------------------------------------------------------------------------------------------------
def test_topk_with_fewer_classes_than_k_is_skipped():
    rng = np.random.default_rng(0)
    scores, labels = rng.random((12, 2)), rng.integers(0, 2, (12, 2))
    labels[0] = 1
    with pytest.warns(UserWarning, match="top-3 metrics skipped"):
        m = evaluate(scores, labels)
    assert all(np.isnan(m[f"{k}_top3"]) for k in ("CP", "CR", "CF1", "OP", "OR", "OF1"))
    assert m["CF1"] == evaluate(scores, labels, k=2)["CF1"] and np.isfinite(m["mAP"])
    three = np.c_[scores, rng.random(12)]
    assert evaluate(three, np.c_[labels, labels[:, :1]])["CF1_top3"] == topk_metrics(
        three, np.c_[labels, labels[:, :1]], k=3)["CF1"]


def _keep_classes(root: Path, keep: list[str]) -> None:
    """Make ``root`` a data set of the classes ``keep``: every object is renamed to one of them."""
    classes = list(yaml.safe_load((root / "classes.yaml").read_text()))
    (root / "classes.yaml").write_text("".join(f"{c}: {c}\n" for c in keep))
    for xml in (root / "Annotations").glob("*.xml"):
        _rewrite_names(xml, lambda n: keep[classes.index(n) % len(keep)])


def test_two_classes_run_to_the_end(data, shared_cache, tmp_path):
    _keep_classes(data, ["bird", "fish"])
    cfg = _cfg(data, tmp_path, shared_cache)
    result = run(cfg)
    assert (Path(cfg.out_dir) / cfg.name / "result.json").exists()
    m = result["selected"]["last"]["metrics"]
    assert m["mAP"] is not None and m["CF1_top3"] is None                  # top-3 of 2 classes: skipped


def test_one_class_is_refused_before_any_work(data, tmp_path, monkeypatch, capsys):
    _keep_classes(data, ["bird"])
    cfg = _cfg(data, tmp_path, tmp_path / "cache")
    monkeypatch.setattr(ccdlib.context, "get_teacher", _boom)
    monkeypatch.setattr(ccdlib.teachers, "build_teacher", _boom)
    with pytest.raises(DatasetError, match="1 class.*at least 2"):
        run(cfg)
    assert main(["run", "--config", _write_yaml(cfg, tmp_path)]) == 2
    assert "at least 2 classes" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# 5. out_dir not writable: before any work; a failed write: "cannot write results to ...", exit 2
# --------------------------------------------------------------------------------------------------
def test_unwritable_out_dir_fails_before_any_work(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for name in ("make_context", "load_data", "get_teacher"):
        monkeypatch.setattr(LOOKED_UP_IN[name], name, _boom)
    for method in list(RUNNERS):
        monkeypatch.setitem(RUNNERS, method, _boom)
    cfg = run_config_from_params(dict(out_dir=str(blocker / "results")))
    with pytest.raises(OutputError, match="cannot write results to .*a_file"):
        run(cfg)
    assert main(["run", "--set", f"out_dir={blocker / 'results'}"]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"error: cannot write results to {blocker / 'results'}")


def test_failed_write_at_the_end_keeps_the_training(data, shared_cache, tmp_path, monkeypatch, capsys,
                                                    count_epochs):
    import errno
    cfg = _cfg(data, tmp_path, shared_cache, method="supervised", epochs=2)
    orig = ccdlib.run_store.atomic_write_text

    def disk_full(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(ccdlib.run_store, "atomic_write_text", disk_full)
    assert main(["run", "--config", _write_yaml(cfg, tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()[-1]                        # (progress bars above it)
    d = Path(cfg.out_dir) / cfg.name
    assert err.startswith(f"error: cannot write results to {d}") and "training state is kept" in err, err
    assert count_epochs == [0, 1] and not (d / "result.json").exists()
    monkeypatch.setattr(ccdlib.run_store, "atomic_write_text", orig)          # space freed: rerun
    count_epochs.clear()
    result = run(cfg)
    assert count_epochs == [] and (d / "result.json").exists()            # saved without training again
    assert not (d / "training").exists()                                  # the state is dropped once saved
    from dataclasses import replace
    reference = run(replace(cfg, out_dir=str(tmp_path / "ref")))           # an uninterrupted run
    assert _without_times(reference)["selected"] == _without_times(result)["selected"]
    _assert_same_checkpoints(d, tmp_path / "ref" / cfg.name)


# --------------------------------------------------------------------------------------------------
# 6. a killed training run resumes at the next epoch; the result equals an uninterrupted run's
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method, epochs, kill_after", [
    ("ccd", 4, 0),      # during the warm-up
    ("ccd", 4, 1),      # the last warm-up epoch: the rerun recomputes the label update from the restored student
    ("ccd", 4, 2),      # after the label update
    ("cdul", 3, 1),     # across a gradient-alignment update
])
def test_killed_training_resumes_at_the_next_epoch(mosaic_root, shared_cache, tmp_path, monkeypatch, capsys,
                                                   count_epochs, method, epochs, kill_after):
    kw = dict(method=method, epochs=epochs, data_kind="mosaic", data_classes=None, data_n_train=N_TRAIN,
              data_n_test=N_TEST, seed=1)
    reference = run(_cfg(mosaic_root, tmp_path / "ref", shared_cache, **kw))
    cfg = _cfg(mosaic_root, tmp_path / "killed", shared_cache, **kw)
    d = Path(cfg.out_dir) / cfg.name
    orig_save = ccdlib.training_log.TrainingState.save

    def save_then_kill(self, epoch, *a, **k):
        orig_save(self, epoch, *a, **k)
        if epoch == kill_after:
            raise Killed
    monkeypatch.setattr(ccdlib.training_log.TrainingState, "save", save_then_kill)
    count_epochs.clear()
    capsys.readouterr()
    with pytest.raises(Killed):
        run(cfg)
    assert count_epochs == list(range(kill_after + 1)) and not (d / "result.json").exists()
    assert (d / "training" / "state.pt").exists()
    out = capsys.readouterr().out
    assert len(re.findall(r"^checkpoint \d/\d \(step \d+/\d+\)  loss \d\.\d{4}  train mAP .* test mAP ", out, flags=re.M)) == kill_after + 1
    monkeypatch.undo()
    monkeypatch.setattr(StudentTrainer, "fit_epoch", _counting(count_epochs))
    count_epochs.clear()
    resumed = run(cfg)
    assert count_epochs == list(range(kill_after + 1, epochs))             # resumes at kill_after + 1
    assert capsys.readouterr().out.count("resumed from") == kill_after + 1
    assert _without_times(resumed)["history"] == _without_times(reference)["history"]
    for key in ("selected", "pseudo_label_quality"):
        assert _without_times(resumed)[key] == _without_times(reference)[key], key
    assert {k: v for k, v in resumed["info"].items() if k != "inputs"} == \
        {k: v for k, v in reference["info"].items() if k != "inputs"}
    _assert_same_checkpoints(d, tmp_path / "ref" / "results" / cfg.name)
    assert not (d / "training").exists()


def _counting(trained: list[int]):
    orig = StudentTrainer.fit_epoch

    def fit_epoch(self, *a, **kw):
        trained.append(self.epoch)
        return orig(self, *a, **kw)
    return fit_epoch


def test_saved_state_for_other_labels_or_data_is_not_used(mosaic_root, shared_cache, tmp_path, monkeypatch,
                                                          capsys, count_epochs):
    kw = dict(method="supervised", epochs=2, data_kind="mosaic", data_classes=None, data_n_train=N_TRAIN,
              data_n_test=N_TEST)
    cfg = _cfg(mosaic_root, tmp_path, shared_cache, **kw)
    d = Path(cfg.out_dir) / cfg.name
    orig_save = ccdlib.training_log.TrainingState.save

    def save_then_kill(self, epoch, *a, **k):
        orig_save(self, epoch, *a, **k)
        raise Killed
    monkeypatch.setattr(ccdlib.training_log.TrainingState, "save", save_then_kill)
    with pytest.raises(Killed):
        run(cfg)
    monkeypatch.setattr(ccdlib.training_log.TrainingState, "save", orig_save)
    state = torch.load(d / "training" / "epoch_000.pt", weights_only=False)
    state["targets"][0, 0] = 1 - state["targets"][0, 0]                   # "trained on other pseudo-labels"
    torch.save(state, d / "training" / "epoch_000.pt")
    count_epochs.clear()
    run(cfg)
    assert count_epochs == [0, 1] and "other pseudo-labels" in capsys.readouterr().out
    # --force drops a saved state
    monkeypatch.setattr(ccdlib.training_log.TrainingState, "save", save_then_kill)
    with pytest.raises(Killed):
        run(cfg, force=True)
    monkeypatch.setattr(ccdlib.training_log.TrainingState, "save", orig_save)
    count_epochs.clear()
    run(cfg, force=True)
    assert count_epochs == [0, 1]


# --------------------------------------------------------------------------------------------------
# 13. config: every field validated and named; one seed; typos in a flat params file are errors
# --------------------------------------------------------------------------------------------------
BAD = {   # every flat parameter -> a value it must refuse (out of range where there is a range, else a wrong type)
    "method": "ccdd", "epochs": 0, "seed": -1, "teacher_batch_size": -1, "out_dir": "", "cache_dir": "", "tag": 3,
    "data_kind": "vocc", "data_root": "", "data_train_split": "", "data_test_split": " ", "data_classes": "",
    "data_n_train": 0, "data_n_test": 0, "data_mosaic_seed": -1, "data_stamps": "some", "data_max_train": -1,
    "data_max_test": -1,
    "teacher_backend": "clip", "teacher_arch": "efficientnet-lite9", "teacher_pretrained": 3, "teacher_image_size": -1,
    "teacher_logit_scale": float("nan"), "teacher_templates": [], "teacher_device": "",
    "student_trunk": "vgg", "student_trunk_weights": "", "student_mode": "thawed", "student_image_size": 8,
    "student_batch_size": 0, "student_lr": 0, "student_head_lr": -1, "student_frozen_head_lr": float("inf"),
    "student_coeff": 0, "student_consistency_weight": -1, "student_n_aug_views": 0, "student_num_workers": -1,
    "student_device": "", "student_seed": -1,
    "ccd_h_max": 0, "ccd_ls": 0.5, "ccd_debiasing": "maybe", "ccd_bias_fallback": "zero", "ccd_warmup_epochs": -1,
    "ccd_local_views": "yes", "ccd_r": 1.5, "ccd_offset": -1, "ccd_resolution": 8, "ccd_cam_threshold": 1.0,
    "ccd_box_rule": "box", "ccd_bound": float("nan"), "ccd_consistency": 2,
    "cdul_grid": 0, "cdul_theta": -0.1, "cdul_lam": -1, "cdul_gradient_alignment": "no", "cdul_ga_step": -1,
    "cdul_ga_sigma": 0,
    # issue 10 (released-code options) and issue 12 (teacher hierarchy), data.rebuild (issue 11)
    "ccd_cam_alpha": "yes", "ccd_cam_image_size": 16, "ccd_no_crop": "drop", "ccd_tau_walk": "twice",
    "cdul_alignment": "bce", "cdul_batch_size": -1, "cdul_ga_every": 0, "cdul_ga_warmup": -1,
    "cdul_student_loss": "mse", "data_rebuild": "yes", "gt_free_input": "test", "student_alpha_schedule": "late",
    "teacher_conse_hierarchy": "on", "teacher_normalization": "clip",
    # issue 15: budgets in optimiser steps, the tau walk at the paper's scale, the few-label split, scoring
    "steps": 0, "eval_every_steps": 0, "scoring": "logit", "ccd_warmup_steps": -1, "ccd_tau_checks": 0,
    "ccd_tau_input": "loader", "cdul_ga_warmup_steps": -1, "cdul_ga_every_steps": 0, "data_few_label_k": -1,
    "data_few_label_seed": -1, "student_aug_pool_seed": -1,
    # issue 16: precision options
    "student_head_dtype": "float16", "teacher_dtype": "half",
    # issue 22: the warm-up in checkpoint intervals, the view controls, CDUL on CCD's initial labels
    "ccd_warmup_rounding": "epoch", "ccd_views": "crops", "ccd_selection": "some", "ccd_top_k": -1,
    "cdul_initial_labels": "clip",
}


def test_the_bad_value_table_covers_every_config_field():
    assert set(BAD) == set(flat_config_keys())


@pytest.mark.parametrize("key", sorted(BAD))
def test_every_config_field_is_validated_and_named(key):
    from dataclasses import fields
    from ccdlib.config import RunConfig
    top = {f.name for f in fields(RunConfig)}
    section = None if key in top else next(s for s in ("data", "teacher", "student", "ccd", "cdul")
                                           if key.startswith(s + "_"))
    dotted = key if section is None else f"{section}.{key[len(section) + 1:]}"
    with pytest.raises(ConfigError) as e:
        run_config_from_params({key: BAD[key]})
    named = dotted.split(".")[-1] if dotted == "teacher.templates" else dotted
    assert named in str(e.value) or (key == "student_seed" and "student.seed" in str(e.value)), str(e.value)


def test_seed_minus_one_is_refused_by_the_cli_before_work(monkeypatch, capsys):
    for name in ("make_context", "load_data", "get_teacher"):
        monkeypatch.setattr(LOOKED_UP_IN[name], name, _boom)
    assert main(["run", "--set", "seed=-1"]) == 2
    assert "seed" in capsys.readouterr().err


def test_one_seed_seeds_and_is_recorded_as_the_students():
    cfg = run_config_from_params(dict(seed=7))
    assert cfg.student.seed == 7 and config_to_dict(cfg)["student"]["seed"] == 7
    assert run_config_from_params(dict(seed=7, student_seed=7)).student.seed == 7
    with pytest.raises(ConfigError, match=r"student.seed \(3\) differs from seed \(7\)"):
        run_config_from_params(dict(seed=7, student_seed=3))
    with pytest.raises(ConfigError, match="student.seed"):
        load_config(None, ["seed=1", "student.seed=2"])
    from dataclasses import replace
    assert replace(cfg, seed=2).student.seed == 2                          # replace moves both
    assert replace(cfg, seed=2).name != cfg.name


def test_flat_params_file_typos_are_errors(tmp_path, monkeypatch, capsys):
    for name in ("make_context", "load_data", "get_teacher"):
        monkeypatch.setattr(LOOKED_UP_IN[name], name, _boom)
    p = tmp_path / "params.yaml"
    p.write_text("data_kind: mosaic\nteacher_arch: efficientnet-lite0\nccd_rr: 0.5\nn_examples: 4\n")
    with pytest.raises(ConfigError, match=r"ccd_rr.*did you mean 'ccd_r'"):
        load_config(p)
    assert main(["run", "--config", str(p)]) == 2
    assert "ccd_rr" in capsys.readouterr().err
    p.write_text("data_kind: mosaic\nteacher_arch: efficientnet-lite0\nn_examples: 4\nforce: false\n")
    with pytest.warns(UserWarning, match="notebook-only"):                 # real notebook parameters: ignored
        assert load_config(p).teacher.arch == "efficientnet-lite0"


def test_notebook_parameters_constant_matches_the_notebooks():
    import ast
    names: set[str] = set()
    for path in sorted(NOTEBOOKS.glob("[0-9]*.ipynb")):
        cell = next(c for c in json.loads(path.read_text())["cells"] if "parameters" in c["metadata"].get("tags", []))
        names |= {n.target.id for n in ast.parse("".join(cell["source"])).body if isinstance(n, ast.AnnAssign)}
    assert names - flat_config_keys() <= NOTEBOOK_PARAMETERS
    for params in sorted((NOTEBOOKS / "params").glob("*.yaml")):          # the shipped params files load
        with pytest.warns(UserWarning):
            load_config(params)


def test_trainer_state_round_trip_in_finetune_mode(tmp_path):
    """StudentTrainer.training_state -> a fresh trainer -> the next epoch equals an uninterrupted trainer's
    (the whole model incl. BatchNorm statistics, Adam's moments, epoch and alpha), through torch.save."""
    from PIL import Image
    from ccdlib.student import StudentConfig
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    cfg = StudentConfig(trunk_weights="random", mode="finetune", image_size=32, batch_size=2, device="cpu", seed=3)
    y = rng.random((4, 3)).astype(np.float32)

    def trainer():
        return StudentTrainer(cfg, paths, 3, cache_dir=None, progress=False)
    a = trainer()
    for e in range(2):
        a.fit_epoch(y, alpha=1.0 if e == 0 else 3.0, consistency=e == 1)
    b = trainer()
    b.fit_epoch(y, alpha=1.0, consistency=False)
    torch.save(b.training_state(), tmp_path / "state.pt")
    c = trainer()
    c.load_training_state(torch.load(tmp_path / "state.pt", weights_only=False))
    assert c.epoch == 1 and c.alpha == 1.0
    c.fit_epoch(y, alpha=3.0, consistency=True)
    sa, sc = a.state_dict(), c.state_dict()
    assert sa.keys() == sc.keys()
    for k in sa:
        assert torch.equal(sa[k], sc[k]), k
    fresh = trainer()                                  # the check has teeth: without the optimiser state it differs
    fresh.load_state_dict(b.state_dict())
    fresh.epoch = 1
    fresh.fit_epoch(y, alpha=3.0, consistency=True)
    assert any(not torch.equal(sa[k], fresh.state_dict()[k]) for k in sa)


@pytest.mark.parametrize("params, error, culprit", [
    (dict(student_trunk_weights="/nowhere/lite0.pth"), ConfigError, "/nowhere/lite0.pth"),
    (dict(student_trunk="resnet50", student_mode="finetune"), "CheckpointError", "resnet50"),   # no hub weights
    (dict(teacher_backend="open_clip", teacher_arch="RN50", teacher_pretrained="no-such-tag"), ConfigError,
     "no-such-tag"),
    (dict(teacher_backend="open_clip", teacher_arch="RN5O"), ConfigError, "RN5O"),
], ids=["trunk-weights-file", "resnet-hub-weights", "open-clip-tag", "open-clip-arch"])
def test_weights_named_but_absent_fail_before_any_work(params, error, culprit, tmp_path, monkeypatch, capsys):
    from ccdlib.errors import CheckpointError
    error = CheckpointError if error == "CheckpointError" else error
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))   # an empty torch hub cache
    for name in ("load_data", "get_teacher"):
        monkeypatch.setattr(LOOKED_UP_IN[name], name, _boom)
    cfg = run_config_from_params(dict(params, teacher_device="cpu", student_device="cpu",
                                      out_dir=str(tmp_path / "r")))
    with pytest.raises(error) as e:
        make_context(cfg)
    assert culprit in str(e.value)
    assert main(["run", "--config", _write_yaml(cfg, tmp_path)]) == 2
    assert culprit in capsys.readouterr().err
