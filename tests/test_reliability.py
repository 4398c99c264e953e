"""Issue 6, reliability: bad input gets a clear error before expensive work, killed runs resume, same seed gives
the same numbers. The case -> test map is tests/RELIABILITY.md; unit-level cases live in the other test files.

Run-level tests use a tiny embedded mosaic set (16 train / 8 test images, built once into a temporary folder),
the real offline ConSE teacher (EfficientNet-Lite0 at 96 px) and the real frozen EfficientNet-Lite0 student at
96 px, 3 epochs (CCD: 2 warm-up epochs, then the CAM label update). They run with one torch thread (on shared
cores two threads were several times slower) and share one cache folder where a fresh one is not the point: a
run with a fresh cache takes a few seconds on a CPU, a cached one about one.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ccdlib.context
import ccdlib.inputs
import ccdlib.methods
import ccdlib.run_store
import ccdlib.runs
import ccdlib.scoring
import ccdlib.features
import ccdlib.student
import ccdlib.teachers
from ccdlib import mosaic
from ccdlib.__main__ import main
from ccdlib.config import run_config_from_params
from ccdlib.datasets import load_class_list
from ccdlib.errors import CheckpointError, ConfigError, DatasetError
from ccdlib.readers import read_voc
from ccdlib.methods import RUNNERS, run_ccd, run_cdul, run_supervised
from ccdlib.context import make_context
from ccdlib.runs import run
from ccdlib.features import extract_features
from ccdlib.student import StudentConfig, build_student, load_student_checkpoint, write_checkpoint
from ccdlib.views import image_size

# 16 or 8 mosaics need not show all 16 classes: read_voc warns about that (its own test is below).
pytestmark = [pytest.mark.filterwarnings("ignore:.*have no positive image:UserWarning"),
              pytest.mark.filterwarnings("ignore:class bias:UserWarning"),
              pytest.mark.usefixtures("one_thread")]   # never-top-1 classes in 16 images

N_TRAIN, N_TEST = 16, 8


class Killed(Exception):
    """Stands in for a kill (SIGKILL, Ctrl-C) at a chosen point."""


def _boom(*args, **kwargs):
    raise AssertionError("expensive work started before the bad input was reported")


# --------------------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mosaic_root(small_mosaic_root) -> Path:
    assert (N_TRAIN, N_TEST) == (16, 8)          # the size of conftest's shared set
    return small_mosaic_root


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """A cache folder shared by the run-level tests that do not need a fresh one."""
    return tmp_path_factory.mktemp("shared_cache")




def _cfg(root: Path, tmp: Path, **kw):
    """A tiny, CPU-sized run config; ``kw`` are flat notebook-style parameters (``ccd_r=...``)."""
    params = dict(method="ccd", epochs=3, ccd_warmup_epochs=2, seed=0, data_root=str(root), data_n_train=N_TRAIN,
                  data_n_test=N_TEST, teacher_arch="efficientnet-lite0", teacher_image_size=96, teacher_device="cpu",
                  student_image_size=96, student_batch_size=8, student_device="cpu", student_n_aug_views=1,
                  teacher_batch_size=32, teacher_conse_hierarchy=False, teacher_dtype="float32",
                  student_head_dtype="float32",   # explicit: the defaults before issue 23
                  out_dir=str(tmp / "results"), cache_dir=str(tmp / "cache"))
    params.update(kw)
    return run_config_from_params(params)


def _canon(obj) -> str:
    """Exact, NaN-safe comparison key of JSON-like data (floats by repr)."""
    return json.dumps(obj, sort_keys=True, default=str)


def _without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def assert_same_result(a, b) -> None:
    """Two RunResults report identical numbers and hold identical student weights (names and paths aside)."""
    assert _canon(a.pseudo_label_quality) == _canon(b.pseudo_label_quality)
    assert _canon(_without_seconds(a.history)) == _canon(_without_seconds(b.history))
    assert _canon(a.selected) == _canon(b.selected)
    assert _canon(a.info) == _canon(b.info)
    assert a.test_scores.keys() == b.test_scores.keys()
    for rule in a.test_scores:
        np.testing.assert_array_equal(a.test_scores[rule], b.test_scores[rule])
    assert a.states.keys() == b.states.keys() and a.states
    for rule in a.states:
        assert a.states[rule].keys() == b.states[rule].keys()
        for k in a.states[rule]:
            assert torch.equal(a.states[rule][k], b.states[rule][k]), (rule, k)


@pytest.fixture
def record_labels(monkeypatch):
    """Record every pseudo-label array the run functions produce (initial labels and label updates)."""
    seen: list[tuple[str, np.ndarray]] = []

    def wrap(name, fn, pick):
        def wrapped(*a, **kw):
            out = fn(*a, **kw)
            seen.append((name, np.array(pick(out), copy=True)))
            return out
        monkeypatch.setattr(ccdlib.methods, name, wrapped)

    wrap("ccd_initial_pseudo_labels", ccdlib.methods.ccd_initial_pseudo_labels, lambda r: r.labels)
    wrap("classifier_guided_label_update", ccdlib.methods.classifier_guided_label_update, lambda r: r.labels)
    wrap("cdul_initial_pseudo_labels", ccdlib.methods.cdul_initial_pseudo_labels, lambda r: r)
    wrap("cdul_gradient_alignment_update", ccdlib.methods.cdul_gradient_alignment_update, lambda r: r)
    return seen


def _assert_same_labels(a: list, b: list) -> None:
    assert [n for n, _ in a] == [n for n, _ in b] and a
    for (name, x), (_, y) in zip(a, b):
        np.testing.assert_array_equal(x, y, err_msg=name)


# --------------------------------------------------------------------------------------------------
# bad configuration: reported by the CLI before any expensive work
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def no_expensive_work(monkeypatch):
    """Anything past config validation (data, teacher, a runner) fails the test."""
    monkeypatch.setattr(ccdlib.runs, "make_context", _boom)
    monkeypatch.setattr(ccdlib.inputs, "load_data", _boom)
    monkeypatch.setattr(ccdlib.context, "get_teacher", _boom)
    monkeypatch.setattr(ccdlib.teachers, "build_teacher", _boom)
    monkeypatch.setattr(mosaic.embedded, "build_mosaics", _boom)   # where embedded_dataset and cli_main look it up
    monkeypatch.setattr(mosaic.cli, "build_mosaics", _boom)
    for method in list(RUNNERS):
        monkeypatch.setitem(RUNNERS, method, _boom)


@pytest.mark.parametrize("args, culprit", [
    (["--set", "ccd.r=2"], "ccd.r"),
    (["--set", "ccd.r=-0.5"], "ccd.r"),
    (["--set", "cdul.theta=1.5"], "cdul.theta"),
    (["--set", "ccd.offset=-10"], "ccd.offset"),
    (["--set", "student.batch_size=0"], "student.batch_size"),
    (["--set", "teacher_batch_size=-1"], "teacher_batch_size"),
    (["--set", "epochs=0"], "epochs"),
    (["--set", "ccd.radius=3"], "ccd.radius"),                 # unknown key
    (["--set", "no_such_key=1"], "no_such_key"),               # unknown top-level key
    (["--set", "student.learning_rate=0.1"], "student.learning_rate"),
    (["--set", "epochs=ten"], "epochs"),                       # wrong type names the key
    (["--set", "ccd.r=abc"], "ccd.r"),
    (["--set", "ccd.debiasing=maybe"], "ccd.debiasing"),
    (["--set", "ccd.r=[0.1"], "ccd.r"),                        # not YAML
    (["--set", "ccd.r"], "ccd.r"),                             # not key=value
    (["--set", "data.kind=voc2007"], "data.root"),             # a real data set needs its folder
    (["--set", "teacher.templates=[]"], "templates"),          # empty template list
    (["--set", "teacher.templates=['a photo']"], "placeholder"),
], ids=lambda v: v[-1] if isinstance(v, list) else None)
def test_cli_bad_overrides_fail_before_work(args, culprit, no_expensive_work, capsys):
    assert main(["run", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and culprit in err, err


@pytest.mark.parametrize("text, culprit", [
    ("method: ccd\nccd:\n  r: 2\n", "ccd.r"),
    ("method: ccd\nccd:\n  r: 0.3\n  radius: 5\n", "ccd.radius"),
    ("student:\n  batch_size: 0\n", "student.batch_size"),
    ("learning_rate: 0.1\n", "learning_rate"),
    ("ccd: [1, 2]\n", "ccd"),
    ("method: ccd\n  r: 0.3\n bad indent: [\n", "bad.yaml"),    # not YAML: names the file
], ids=["ccd.r=2", "unknown-ccd.radius", "student.batch_size=0", "unknown-top-level", "section-not-a-mapping",
        "not-yaml"])
def test_cli_bad_yaml_fails_before_work(text, culprit, no_expensive_work, tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    assert main(["run", "--config", str(p)]) == 2
    err = capsys.readouterr().err
    assert culprit in err, err
    assert main(["run", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_cli_process_exit_status(tmp_path):
    """The real entry point: a non-zero exit status and one line naming the key, no traceback."""
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-m", "ccdlib", "run", "--set", "ccd.r=2"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert p.returncode == 2
    assert "ccd.r" in p.stderr and "Traceback" not in p.stderr


def test_numeric_strings_and_paths_are_accepted():
    """PyYAML reads ``1e-3`` as a string: a float field takes it; a Path is a string field."""
    from ccdlib.config import load_config
    cfg = load_config(None, ["student.frozen_head_lr=1e-3", "ccd.r=1", "ccd.debiasing=0"])
    assert cfg.student.frozen_head_lr == 1e-3 and cfg.ccd.r == 1 and cfg.ccd.debiasing is False
    assert run_config_from_params(dict(out_dir=Path("/tmp/x"))).out_dir == "/tmp/x"


# --------------------------------------------------------------------------------------------------
# bad data: DatasetError naming the path, before the teacher is built
# --------------------------------------------------------------------------------------------------
def test_missing_data_root_fails_before_the_teacher(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "nowhere" / "VOCdevkit"
    cfg = run_config_from_params(dict(method="ccd", data_kind="voc2007", data_root=str(missing),
                                      out_dir=str(tmp_path / "r"), cache_dir=str(tmp_path / "c")))
    monkeypatch.setattr(ccdlib.context, "get_teacher", _boom)
    monkeypatch.setattr(ccdlib.teachers, "build_teacher", _boom)
    with pytest.raises(DatasetError) as e:
        make_context(cfg)
    assert str(missing) in str(e.value)
    assert main(["run", "--set", "data.kind=voc2007", "--set", f"data.root={missing}",
                 "--set", f"out_dir={tmp_path / 'r'}"]) == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("field", ["teacher.device", "student.device"])
def test_cuda_where_there_is_none_fails_before_work(field, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(ccdlib.inputs, "load_data", _boom)
    monkeypatch.setattr(ccdlib.context, "get_teacher", _boom)
    section, key = field.split(".")
    cfg = run_config_from_params({f"{section}_{key}": "cuda:0"})
    with pytest.raises(ConfigError, match="CUDA") as e:
        make_context(cfg)
    assert field in str(e.value)
    assert main(["run", "--set", f"{field}=cuda"]) == 2
    err = capsys.readouterr().err
    assert "CUDA" in err and field in err


def test_prompt_name_missing_in_class_list(tmp_path):
    p = tmp_path / "classes.yaml"
    p.write_text("widget: widget\ngizmo: ''\nsprocket: null\n")
    with pytest.raises(DatasetError, match="prompt name missing") as e:
        load_class_list(p)
    assert "gizmo" in str(e.value) and "sprocket" in str(e.value) and "widget" not in str(e.value).split(":")[-1]


def test_corrupt_jpeg_passes_the_reader_and_stops_the_run(mosaic_root, tmp_path):
    """Documented choice: readers check that files exist but do not decode them; the first decode (teacher
    scoring, here the global views) raises DatasetError naming the file, before any student training."""
    root = tmp_path / "copy"
    shutil.copytree(mosaic_root, root)
    bad = root / "JPEGImages" / "train_000005.jpg"
    blob = bad.read_bytes()
    bad.write_bytes(blob[: len(blob) // 3])
    ds = read_voc(root, "train", classes=root / "classes.yaml")   # no decode, no error
    assert bad in ds.image_paths
    cfg = _cfg(root, tmp_path, data_kind="voc", data_classes=str(root / "classes.yaml"))
    with pytest.raises(DatasetError) as e:
        run_ccd(cfg)
    assert str(bad) in str(e.value)


def test_corrupt_images_in_student_features_and_views(tmp_path):
    good = tmp_path / "good.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(good, quality=95)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:300])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all" * 10)
    student = build_student(StudentConfig(image_size=64, device="cpu"), 3)
    for bad in (truncated, garbage, tmp_path / "gone.jpg"):
        with pytest.raises(DatasetError) as e:
            extract_features(student, [good, bad], image_size=64, cache_dir=None, progress=False)
        assert str(bad) in str(e.value)
    assert image_size(good) == (48, 40)
    for bad in (garbage, tmp_path / "gone.jpg"):
        with pytest.raises(DatasetError) as e:
            image_size(bad)
        assert str(bad) in str(e.value)


def test_student_feature_cache_key_covers_the_image_size(tmp_path):
    paths = []
    for i in range(2):
        p = tmp_path / f"im{i}.png"
        Image.new("RGB", (50, 40), (60 * i, 90, 200)).save(p)
        paths.append(p)
    student = build_student(StudentConfig(image_size=64, device="cpu"), 3)
    kw = dict(cache_dir=tmp_path / "cache", progress=False)
    a = extract_features(student, paths, image_size=64, **kw)["base"]
    b = extract_features(student, paths, image_size=96, **kw)["base"]
    assert ccdlib.features.last_extract_stats.chunks_computed == 1 and b.shape[2:] == (3, 3)
    again = extract_features(student, paths, image_size=64, **kw)["base"]
    assert ccdlib.features.last_extract_stats.chunks_cached == 1
    np.testing.assert_array_equal(a, again)


# --------------------------------------------------------------------------------------------------
# checkpoints that do not fit: load_student_checkpoint and the predict CLI
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 3-class frozen EfficientNet-Lite0 student checkpoint and two small images."""
    d = tmp_path_factory.mktemp("ckpt")
    cfg = StudentConfig(image_size=64, device="cpu")
    head = build_student(cfg, 3).head.state_dict()
    path = d / "student"
    write_checkpoint(path, state=head, config=cfg, num_classes=3, feature_dim=1280, epoch=1, alpha=3.0,
                     extra={"class_ids": ["a", "b", "c"]})
    images = []
    for i in range(2):
        p = d / f"img{i}.jpg"
        Image.new("RGB", (70, 50), (90 * i, 40, 160)).save(p)
        images.append(p)
    return path, images


def _variant(src: Path, dst_dir: Path, **meta_changes) -> Path:
    """Copy a checkpoint, editing its JSON description."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    dst = dst_dir / "student"
    shutil.copy(src.with_name("student.pt"), dst.with_name("student.pt"))
    meta = json.loads(src.with_name("student.json").read_text())
    for k, v in meta_changes.items():
        if k.startswith("config."):
            meta["config"][k[7:]] = v
        else:
            meta[k] = v
    dst.with_name("student.json").write_text(json.dumps(meta))
    return dst


def test_predict_cli_writes_scores(checkpoint, tmp_path, capsys):
    path, images = checkpoint
    out = tmp_path / "scores.csv"
    assert main(["predict", "--checkpoint", str(path), *map(str, images), "--out", str(out), "--device", "cpu"]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "image,score_a,score_b,score_c,labels" and len(lines) == 3


@pytest.mark.parametrize("change, culprit", [
    (dict(num_classes=5), "5 classes"),                                      # another class count
    (dict(trunk="resnet50", **{"config.trunk": "resnet50", "config.trunk_weights": "random"}), "resnet50"),
    (dict(class_ids=["a", "b"]), "2 classes"),                               # names that do not fit the head
], ids=["class-count", "trunk", "class-names"])
def test_checkpoint_for_another_model(checkpoint, tmp_path, capsys, change, culprit):
    path, images = checkpoint
    bad = _variant(path, tmp_path / "bad", **change)
    pt = str(bad.with_name("student.pt"))
    if "class_ids" not in change:
        with pytest.raises(CheckpointError) as e:
            load_student_checkpoint(bad)
        assert pt in str(e.value) and culprit in str(e.value)
    assert main(["predict", "--checkpoint", str(bad), *map(str, images), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert str(bad.parent) in err and culprit in err, err


def test_checkpoint_expected_class_count_and_trunk(checkpoint):
    path, _ = checkpoint
    with pytest.raises(CheckpointError, match=r"3 classes.*20"):
        load_student_checkpoint(path, expect_num_classes=20)
    with pytest.raises(CheckpointError, match=r"efficientnet-lite0.*resnet50"):
        load_student_checkpoint(path, expect_trunk="resnet50")


def test_predict_cli_bad_inputs(checkpoint, tmp_path, monkeypatch, capsys):
    path, images = checkpoint
    garbage = _variant(path, tmp_path / "garbage")
    garbage.with_name("student.pt").write_bytes(b"\x00not a torch file" * 50)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(images[0].read_bytes()[:100])
    cases = [
        (["--checkpoint", str(garbage), str(images[0])], str(garbage.with_name("student.pt"))),
        (["--checkpoint", str(tmp_path / "none" / "student"), str(images[0])], str(tmp_path / "none")),
        (["--checkpoint", str(path), str(images[0]), str(truncated)], str(truncated)),
        (["--checkpoint", str(path), str(tmp_path / "absent.jpg")], "absent.jpg"),
    ]
    for args, culprit in cases:
        assert main(["predict", *args, "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert culprit in err, (args, err)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["predict", "--checkpoint", str(path), str(images[0]), "--device", "cuda"]) == 2
    assert "CUDA" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# determinism: same seed, same machine -> identical pseudo-labels, weights and metrics
# --------------------------------------------------------------------------------------------------
def test_ccd_same_seed_same_numbers_with_and_without_cache(mosaic_root, shared_cache, tmp_path, record_labels):
    cfg_a = _cfg(mosaic_root, tmp_path / "a", cache_dir=str(shared_cache))
    a = run_ccd(cfg_a)
    labels_a = list(record_labels)
    assert {n for n, _ in labels_a} == {"ccd_initial_pseudo_labels", "classifier_guided_label_update"}
    assert a.info["crops"] > 0 and len(a.history) == 3
    record_labels.clear()
    b = run_ccd(replace(cfg_a, out_dir=str(tmp_path / "b" / "results")))    # same cache: every step reused
    s = ccdlib.scoring.last_stats                                           # the CAM-crop scoring
    assert s.chunks_cached >= 1 and s.chunks_computed == 0
    labels_b = list(record_labels)
    record_labels.clear()
    c = run_ccd(_cfg(mosaic_root, tmp_path / "c"))                          # fresh cache: everything recomputed
    assert ccdlib.scoring.last_stats.chunks_computed >= 1 and ccdlib.scoring.last_stats.chunks_cached == 0
    labels_c = list(record_labels)
    for other, other_labels in ((b, labels_b), (c, labels_c)):
        assert_same_result(a, other)
        _assert_same_labels(labels_a, other_labels)
    # the check has teeth: another seed gives another student
    d = run_ccd(_cfg(mosaic_root, tmp_path / "a", cache_dir=str(shared_cache), seed=1))
    assert not torch.equal(d.states["last"]["weight"], a.states["last"]["weight"])


def test_cdul_same_seed_same_numbers(mosaic_root, shared_cache, tmp_path, record_labels):
    a = run_cdul(_cfg(mosaic_root, tmp_path / "a", cache_dir=str(shared_cache), method="cdul", epochs=2,
                      cdul_ga_every=1))   # align in both epochs (default: every 10th)
    labels_a = list(record_labels)
    assert {n for n, _ in labels_a} == {"cdul_initial_pseudo_labels", "cdul_gradient_alignment_update"}
    record_labels.clear()
    b = run_cdul(_cfg(mosaic_root, tmp_path / "b", method="cdul", epochs=2, cdul_ga_every=1))   # fresh cache
    assert_same_result(a, b)
    _assert_same_labels(labels_a, list(record_labels))


# --------------------------------------------------------------------------------------------------
# resume: a run killed during the CAM-crop scoring continues from the cache
# --------------------------------------------------------------------------------------------------
def test_killed_ccd_run_resumes_from_the_cache(mosaic_root, shared_cache, tmp_path, monkeypatch):
    calls: list[dict] = []
    kill_at: list[int] = []          # chunk index after which the crop scoring is "killed"
    orig = ccdlib.scoring.embed_views

    def embed_views(*a, **kw):
        crops = kw.get("desc") == "CAM crops"
        if crops:
            kw["chunk_size"] = 8     # many small chunks (the unit of resumption)

            def on_chunk(c):
                if kill_at and c == kill_at[0]:
                    raise Killed
            kw["on_chunk"] = on_chunk
        try:
            return orig(*a, **kw)
        finally:
            st = ccdlib.scoring.last_stats
            calls.append(dict(desc=kw.get("desc"), computed=st.chunks_computed, cached=st.chunks_cached,
                              views=st.views_computed))

    monkeypatch.setattr(ccdlib.scoring, "embed_views", embed_views)   # label_update looks it up per call
    monkeypatch.setattr(ccdlib.context, "embed_views", embed_views)      # global views
    features: list[tuple] = []                                       # student feature extraction calls
    orig_extract = ccdlib.features.extract_features

    def extract_features(*a, **kw):
        out = orig_extract(*a, **kw)
        st = ccdlib.features.last_extract_stats
        features.append((tuple(kw["views"]), st.chunks_computed, st.chunks_cached))
        return out

    monkeypatch.setattr(ccdlib.features, "extract_features", extract_features)

    reference = run_ccd(_cfg(mosaic_root, tmp_path / "ref", cache_dir=str(shared_cache)))   # uninterrupted
    n_crops = reference.info["crops"]
    n_chunks = -(-n_crops // 8)
    assert n_chunks >= 4

    cfg = _cfg(mosaic_root, tmp_path / "killed")                       # a fresh cache
    kill_at.append(1)
    calls.clear()
    with pytest.raises(Killed):
        run(cfg)                                                         # killed after 2 crop chunks
    assert calls[-1] == dict(desc="CAM crops", computed=2, cached=0, views=16)
    assert not (Path(cfg.out_dir) / cfg.name / "result.json").exists()  # nothing marks the run done
    cache_files = list((Path(cfg.cache_dir) / "embeddings").iterdir())
    assert cache_files and not [p for p in cache_files if p.suffix != ".npy"]   # no temp files left

    kill_at.clear()
    calls.clear()
    features.clear()
    resumed = run_ccd(cfg)
    glob, crops = calls[0], calls[-1]
    assert glob["desc"].startswith("global") and glob["computed"] == 0 and glob["cached"] >= 1
    # student features: only the jittered view (first needed after the label update) is new
    assert [f for f in features if f[1]] == [(("aug0",), 1, 0)] and len(features) > 1
    assert crops == dict(desc="CAM crops", computed=n_chunks - 2, cached=2, views=n_crops - 16)
    assert_same_result(reference, resumed)


# --------------------------------------------------------------------------------------------------
# result files: result.json is written last; a run dir without it is recomputed
# --------------------------------------------------------------------------------------------------
def test_result_json_marks_a_finished_run(mosaic_root, shared_cache, tmp_path, monkeypatch):
    cfg = _cfg(mosaic_root, tmp_path, cache_dir=str(shared_cache), method="supervised", epochs=1)
    d = Path(cfg.out_dir) / cfg.name
    runs: list[int] = []
    orig_runner = RUNNERS["supervised"]

    def counting(c, ctx=None):
        runs.append(1)
        return orig_runner(c, ctx)

    monkeypatch.setitem(RUNNERS, "supervised", counting)
    writes: list[str] = []

    def recorder(mod, name):
        orig = getattr(mod, name)

        def wrapped(path, data):
            orig(path, data)
            writes.append(Path(path).name)
        monkeypatch.setattr(mod, name, wrapped)

    recorder(ccdlib.run_store, "atomic_write_text")
    recorder(ccdlib.student, "atomic_write_text")
    recorder(ccdlib.student, "atomic_write_bytes")

    first = run(cfg)
    assert len(runs) == 1 and writes[-1] == "result.json" and writes.count("result.json") == 1
    assert {"metrics.csv", "student_last.pt", "student_last.json", "student_gt_free.pt"} <= set(writes)
    assert not [p for p in d.iterdir() if p.name.startswith(".")]        # no temp files

    assert run(cfg) == first and len(runs) == 1                          # finished: skipped
    run(cfg, force=True)
    assert len(runs) == 2                                                # force recomputes

    (d / "result.json").unlink()                                         # killed before result.json
    run(cfg)
    assert len(runs) == 3 and (d / "result.json").exists()

    def killed_checkpoint(*a, **kw):
        raise Killed
    monkeypatch.setattr(ccdlib.student, "write_checkpoint", killed_checkpoint)
    with pytest.raises(Killed):
        run(cfg, force=True)                                             # killed while re-saving
    assert len(runs) == 4 and not (d / "result.json").exists()           # the old "done" mark is gone
    monkeypatch.undo()
    monkeypatch.setitem(RUNNERS, "supervised", counting)
    run(cfg)
    assert len(runs) == 5 and (d / "result.json").exists()

    other = replace(cfg, seed=1)                                         # other settings: another run dir
    assert other.name != cfg.name
    run(other)
    assert len(runs) == 6 and (Path(other.out_dir) / other.name / "result.json").exists()


# --------------------------------------------------------------------------------------------------
# a class with no positive in the test split: warned by the reader, excluded and counted in the metrics
# --------------------------------------------------------------------------------------------------
def test_class_without_test_positives_is_warned_and_counted(mosaic_root, shared_cache, tmp_path):
    root = mosaic_root                              # a split file is added; nothing else changes
    test = mosaic.read_mosaic(root, "test")
    counts = test.labels.sum(0)
    k = int(np.argmax(counts))                      # the most frequent class: removing it keeps images
    absent = test.labels[:, k] == 0
    keep = [i for i, a in enumerate(absent) if a]
    assert keep
    (root / "ImageSets" / "Main" / "test_no_k.txt").write_text("".join(test.image_ids[i] + "\n" for i in keep))
    expected_missing = [c for c, n in zip(test.class_ids, test.labels[keep].sum(0)) if n == 0]
    cls_k = test.class_ids[k]
    assert cls_k in expected_missing
    cfg = _cfg(root, tmp_path, method="supervised", epochs=1, data_kind="voc", data_classes=str(root / "classes.yaml"),
               data_test_split="test_no_k", cache_dir=str(shared_cache))
    with pytest.warns(UserWarning, match="no positive image") as rec:
        ctx = make_context(cfg)
    assert any(cls_k in str(w.message) and "test_no_k" in str(w.message) for w in rec)
    result = run_supervised(cfg, ctx)
    for rule, sel in result.selected.items():
        assert sel["metrics"]["n_excluded"] == len(expected_missing), rule
        assert np.isfinite(sel["metrics"]["mAP"])
    assert result.history[0]["test_n_excluded"] == len(expected_missing)
