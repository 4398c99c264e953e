"""Issue 23 §2: runs, checkpoints and caches tried as a new user would. Each case gives a clear error naming the
culprit (exit 2 from the CLI) or the right result. The case -> test map is the "Inputs and defaults (issue 23)"
section of tests/RELIABILITY.md (``i23r``)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import ccdlib.runs
from ccdlib.__main__ import main
from ccdlib.cache import ArrayCache, cache_location
from ccdlib.config import run_config_from_params
from ccdlib.errors import CheckpointError, ConfigError, OutputError


def _boom(*args, **kwargs):
    raise AssertionError("expensive work started before the problem was reported")


# ------------------------------------------------------------------------------ 1. the run lock on a full disk
def _lock_cfg(tmp_path: Path, **kw):
    return run_config_from_params(dict(dict(method="supervised", epochs=1, teacher_device="cpu", student_device="cpu",
                                            out_dir=str(tmp_path / "results"), cache_dir=str(tmp_path / "c")), **kw))


@pytest.fixture
def full_disk_for_locks(monkeypatch):
    """Writes into a ``run.lock`` go to /dev/full (ENOSPC, as on a full disk); every other file is written."""
    if not Path("/dev/full").exists() or not Path("/proc/self/fd").is_dir():
        pytest.skip("needs Linux's /dev/full and /proc/self/fd")
    real = os.fdopen

    def fdopen(fd, *args, **kwargs):
        if isinstance(fd, int) and os.readlink(f"/proc/self/fd/{fd}").endswith("run.lock"):
            os.close(fd)
            return real(os.open("/dev/full", os.O_WRONLY), *args, **kwargs)
        return real(fd, *args, **kwargs)
    monkeypatch.setattr(os, "fdopen", fdopen)
    return monkeypatch


def test_lock_on_a_full_disk_is_an_output_error_and_leaves_no_lock(tmp_path, full_disk_for_locks, capsys):
    from ccdlib.run_store import RUN_LOCK_FILE, acquire_run_lock, release_run_lock
    run_dir = tmp_path / "results" / "r"
    lock = run_dir / RUN_LOCK_FILE
    with pytest.raises(OutputError) as e:
        acquire_run_lock(run_dir, name="r")
    assert str(e.value).startswith(f"cannot write results to {run_dir}: cannot write {lock}: No space left")
    assert not lock.exists()                              # no empty lock left behind
    # through the CLI: exit 2, one line, no traceback, nothing run
    full_disk_for_locks.setattr(ccdlib.runs, "_run_unlocked", _boom)
    cfg = _lock_cfg(tmp_path)
    assert main(["run", "--set", "method=supervised", "--set", "epochs=1", "--set", "teacher.device=cpu",
                 "--set", "student.device=cpu", "--set", f"out_dir={tmp_path / 'results'}",
                 "--set", f"cache_dir={tmp_path / 'c'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write results to {tmp_path / 'results' / cfg.name}: cannot write ")
    assert "Traceback" not in err and not (tmp_path / "results" / cfg.name / RUN_LOCK_FILE).exists()
    # space freed: the rerun takes the lock at once (it was refused as "already running" for a minute)
    full_disk_for_locks.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("error")                    # no "stale lock" to take over either
        taken = acquire_run_lock(run_dir, name="r")
    assert json.loads(taken.read_text())["pid"] == os.getpid()
    release_run_lock(taken)
    assert not lock.exists()


@pytest.mark.parametrize("pid", [10 ** 30, 2 ** 31, 0, -1, True, "123"], ids=str)
def test_lock_with_an_absurd_pid_is_an_unreadable_lock(tmp_path, pid):
    """Chosen: a pid no process can have makes the lock unreadable (damaged), which is the safe side: refused
    while fresh (it may be being written), taken over with the warning once older than a minute. It was an
    ``OverflowError`` traceback (10**30), and 0 / -1 (a process group: ``os.kill`` succeeds) were "alive" forever."""
    from ccdlib.run_store import RUN_LOCK_FILE, _pid_alive, acquire_run_lock
    if isinstance(pid, int) and not isinstance(pid, bool):
        assert _pid_alive(pid) is False
        assert _pid_alive(pid, started=0.0) is False
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock = run_dir / RUN_LOCK_FILE
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": time.time(),
                                "started_at": "now"}))
    with pytest.raises(OutputError, match=rf"already running into {run_dir}: a process whose lock cannot be read, "
                                          rf"holds {lock}"):
        acquire_run_lock(run_dir, name="run")
    assert json.loads(lock.read_text())["pid"] == pid     # kept
    old = time.time() - 120
    os.utime(lock, (old, old))
    with pytest.warns(UserWarning, match=rf"taking over the stale lock {lock} of a process whose lock cannot be read"):
        acquire_run_lock(run_dir, name="run")
    assert json.loads(lock.read_text())["pid"] == os.getpid()


# --------------------------------------------------------------- 2. a checkpoint's .json tied to its .pt
CLASSES = ["bird", "tool", "deer", "musical_instrument"]


def _write_ckpt(path: Path, seed: int, classes=CLASSES):
    from ccdlib.student import StudentConfig, build_student, write_checkpoint
    cfg = StudentConfig(image_size=64, device="cpu", head_dtype="float32", seed=seed)
    head = build_student(cfg, len(classes)).head.state_dict()
    write_checkpoint(path, state=head, config=cfg, num_classes=len(classes), feature_dim=1280, epoch=1, alpha=3.0,
                     extra={"class_ids": list(classes), "prompt_names": [c.replace("_", " ") for c in classes]})
    return head


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Two 4-class frozen students (other seeds, so other weights) and an image."""
    d = tmp_path_factory.mktemp("ckpt")
    heads = {name: _write_ckpt(d / name / "student", seed) for name, seed in (("a", 0), ("b", 1))}
    Image.new("RGB", (70, 50), (90, 40, 160)).save(d / "img.jpg")
    return d, heads


def _pair(d: Path, src: Path, *, pt_from: Path | None = None, edit=None) -> Path:
    """A checkpoint in ``d`` made of ``src``'s .json (edited by ``edit``) and ``pt_from``'s (default ``src``'s) .pt."""
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy((pt_from or src).with_name("student.pt"), d / "student.pt")
    meta = json.loads(src.with_name("student.json").read_text())
    if edit:
        edit(meta)
    (d / "student.json").write_text(json.dumps(meta, indent=2))
    return d / "student"


def test_checkpoint_files_record_each_other_and_stay_a_plain_state_dict(ckpts):
    from ccdlib.checkpoint_pair import labels_sha256, state_tag
    from ccdlib.student import load_student_checkpoint
    d, heads = ckpts
    pt, js = d / "a" / "student.pt", d / "a" / "student.json"
    meta = json.loads(js.read_text())
    assert meta["format"] == 2 and meta["weights_sha256"] == hashlib.sha256(pt.read_bytes()).hexdigest()
    state = torch.load(pt, map_location="cpu", weights_only=True)
    assert state_tag(state) == labels_sha256(meta)
    assert list(state) == list(heads["a"]) and all(torch.equal(state[k], heads["a"][k]) for k in state)
    from ccdlib.student import StudentConfig, build_student
    build_student(StudentConfig(image_size=64, device="cpu"), 4).head.load_state_dict(state)   # loads as before
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s, _ = load_student_checkpoint(d / "a" / "student")
    assert all(torch.equal(s.head.state_dict()[k], v) for k, v in heads["a"].items())


def test_predict_refuses_a_json_listing_the_classes_in_another_order(ckpts, tmp_path, capsys):
    from ccdlib.student import load_student_checkpoint
    d, _ = ckpts
    img = d / "img.jpg"
    out = tmp_path / "ok.csv"
    assert main(["predict", "--checkpoint", str(d / "a" / "student"), str(img), "--out", str(out),
                 "--device", "cpu"]) == 0
    assert out.read_text().splitlines()[0] == "image," + ",".join(f"score_{c}" for c in CLASSES) + ",labels"
    capsys.readouterr()
    # the .json's classes reordered (edited, or taken from a run whose class list was in another order)
    order = [2, 3, 0, 1]
    swapped = _pair(tmp_path / "swapped", d / "a" / "student",
                    edit=lambda m: m.update(class_ids=[m["class_ids"][i] for i in order],
                                            prompt_names=[m["prompt_names"][i] for i in order]))
    pt, js = swapped.with_name("student.pt"), swapped.with_name("student.json")
    with pytest.raises(CheckpointError) as e:
        load_student_checkpoint(swapped)
    msg = str(e.value)
    assert msg.startswith(f"{js} does not belong with {pt}: it names 4 classes (deer, musical_instrument, bird, "
                          f"tool), not the class list and order the weights were saved with")
    assert main(["predict", "--checkpoint", str(swapped), str(img), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {js} does not belong with {pt}") and "Traceback" not in err
    # only the prompt names reordered: they are part of what the .pt records, too
    prompts = _pair(tmp_path / "prompts", d / "a" / "student",
                    edit=lambda m: m.update(prompt_names=m["prompt_names"][::-1]))
    with pytest.raises(CheckpointError, match="does not belong with"):
        load_student_checkpoint(prompts)


def test_a_json_or_pt_from_another_checkpoint_is_refused(ckpts, tmp_path):
    from ccdlib.student import load_student_checkpoint
    d, _ = ckpts
    # b's weights (same classes, same order) under a's .json: the .pt is not the file the .json records
    mixed = _pair(tmp_path / "mixed", d / "a" / "student", pt_from=d / "b" / "student")
    with pytest.raises(CheckpointError, match=rf"{mixed.with_name('student.json')} does not belong with "
                                              rf"{mixed.with_name('student.pt')}: it records the weights of another "
                                              rf"checkpoint \(sha256 [0-9a-f]{{12}}\.\.\., student.pt has "):
        load_student_checkpoint(mixed)
    # a .pt whose classes were in another order, under a's .json
    _write_ckpt(tmp_path / "rev" / "student", 0, classes=CLASSES[::-1])
    rev = _pair(tmp_path / "rev2", d / "a" / "student", pt_from=tmp_path / "rev" / "student")
    with pytest.raises(CheckpointError, match="it names 4 classes \\(bird, tool, deer, musical_instrument\\), not the"):
        load_student_checkpoint(rev)


def test_an_old_checkpoint_without_the_tie_is_read_with_a_warning(ckpts, tmp_path, capsys):
    """Decided: checkpoints written before the tie (format 1; the study's earlier runs) stay usable, with a
    warning that their class order cannot be checked."""
    from ccdlib.student import load_student_checkpoint
    d, heads = ckpts
    old = tmp_path / "old"
    old.mkdir()
    torch.save(heads["a"], old / "student.pt")            # format 1: a plain state dict
    meta = json.loads((d / "a" / "student.json").read_text())
    meta.pop("weights_sha256")
    meta["format"] = 1
    (old / "student.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match=rf"{old / 'student.pt'} and {old / 'student.json'} were written before "
                                         rf"ccdlib tied a checkpoint's two files together \(format 1\)"):
        s, _ = load_student_checkpoint(old / "student")
    assert all(torch.equal(s.head.state_dict()[k], v) for k, v in heads["a"].items())
    with pytest.warns(UserWarning, match="cannot be checked"):
        assert main(["predict", "--checkpoint", str(old / "student"), str(d / "img.jpg"), "--device", "cpu"]) == 0


# ----------------------------------------------------------------- 3. damaged but readable cache entries
def test_array_cache_checks_entries_on_read_and_recomputes_damaged_ones(tmp_path):
    c = ArrayCache(tmp_path, "ns")
    good = np.arange(6, dtype=np.float32).reshape(2, 3)
    cases = {   # what is stored -> what the warning says
        "nan": (np.array([[0, np.nan, 2], [3, 4, 5]], np.float32), r"1 NaN or infinite value\(s\)"),
        "inf": (np.array([[0, 1, 2], [3, 4, -np.inf]], np.float32), r"1 NaN or infinite value\(s\)"),
        "shape": (np.zeros((2, 5), np.float32), r"shape \(2, 5\), expected \(2, 3\)"),
        "ndim": (np.zeros(6, np.float32), r"shape \(6,\), expected \(2, 3\)"),
        "dtype": (good.astype(np.float64), "dtype float64, expected float32"),
    }
    for key, (bad, why) in cases.items():
        c.put(key, bad)
        p = c.path(key)
        with pytest.warns(UserWarning, match=rf"cache entry {p} is damaged \({why}\): deleted and recomputed"):
            assert c.get(key, shape=(2, 3), dtype=np.float32, finite=True) is None
        assert not p.exists()
    # a valid entry: returned, no warning; None in a shape matches any length; without checks, as before
    c.put("ok", good)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(c.get("ok", shape=(2, None), dtype=np.float32, finite=True), good)
        c.put("nan", cases["nan"][0])
        assert np.isnan(c.get("nan")).sum() == 1          # no expectation given: trusted (the NaN padding case)
    # the caller's own check; an unreadable file is named too
    with pytest.warns(UserWarning, match=r"damaged \(first value 0.0\)"):
        assert c.get("ok", check=lambda a: f"first value {a.flat[0]}" if a.flat[0] == 0 else None) is None
    c.path("junk").write_bytes(b"\x00garbage")
    with pytest.warns(UserWarning, match=rf"cache entry {c.path('junk')} is damaged \(unreadable: "):
        assert c.get("junk") is None
    assert c.hits == 2 and c.misses == len(cases) + 2


@pytest.fixture
def conse_text_cache(tmp_path, monkeypatch):
    """A ConSE teacher over a cache in ``tmp_path`` whose MiniLM is replaced by a fixed, counted embedding."""
    from ccdlib.teachers import ConSETeacher, imagenet_names_key
    calls = []

    def fake_embed(self, names, templates, *, normalize=True):
        calls.append(len(names))
        g = torch.Generator().manual_seed(len(names))
        e = torch.randn(len(names), 384, generator=g)
        return F.normalize(e, dim=-1) if normalize else e
    monkeypatch.setattr(ConSETeacher, "_embed_prompts", fake_embed)
    ArrayCache(tmp_path, "text").put(imagenet_names_key(), np.full((1000, 384), np.nan, np.float32))   # damaged
    with cache_location(tmp_path):
        with pytest.warns(UserWarning, match=rf"cache entry {tmp_path / 'text'}/\w+\.npy is damaged \(384000 NaN"):
            teacher = ConSETeacher("efficientnet-lite0", device="cpu")
    assert torch.isfinite(teacher._imagenet_emb).all() and len(calls) == 1   # recomputed, once
    return teacher, calls


def test_damaged_conse_text_entries_are_named_and_recomputed(conse_text_cache, tmp_path):
    from ccdlib.teachers import MINILM_ID
    teacher, calls = conse_text_cache
    names, templates = ["bird", "tool", "deer"], ["a photo of a {}."]
    key = {"encoder": MINILM_ID, "prompts": names, "templates": templates}
    text = ArrayCache(tmp_path, "text")
    with cache_location(tmp_path):
        clean = teacher.text_classifier(names, templates)             # computed and cached
        for bad, why in ((np.full((3, 384), np.nan, np.float32), r"1152 NaN or infinite value\(s\)"),
                         (np.ones((3, 5), np.float32), r"shape \(3, 5\), expected \(3, 384\)"),   # was a traceback
                         (np.ones((3, 384), np.float64), "dtype float64, expected float32")):
            text.put(key, bad)
            n = len(calls)
            with pytest.warns(UserWarning, match=rf"cache entry {text.path(key)} is damaged \({why}\)"):
                t = teacher.text_classifier(names, templates)
            assert len(calls) == n + 1 and torch.equal(t, clean)      # recomputed: the same value
            np.testing.assert_array_equal(np.load(text.path(key)), clean.numpy())   # the entry replaced
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                assert torch.equal(teacher.text_classifier(names, templates), clean)
            assert len(calls) == n + 1                                # and read back, not recomputed


class _Teacher:
    """Just enough of a teacher for ``embed_views``: mean colour of the view -> 3-d unit vector."""
    image_size, device = 8, torch.device("cpu")

    def fingerprint(self):
        return {"backend": "issue23-fake"}

    def preprocess(self, im):
        return torch.from_numpy(np.asarray(im.convert("RGB").resize((8, 8)), np.float32) / 255).permute(2, 0, 1)

    def encode_images(self, x):
        return F.normalize(x.mean((2, 3)) + 1e-3, dim=-1)


def test_damaged_teacher_embeddings_features_and_intervals_are_recomputed(tmp_path):
    import ccdlib.features
    import ccdlib.scoring
    from ccdlib.features import extract_features
    from ccdlib.scoring import embed_views
    from ccdlib.stats import bootstrap_map
    from ccdlib.student import StudentConfig, build_student
    from ccdlib.views import global_views
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"im{i}.png")
        Image.new("RGB", (20 + i, 16), (60 * i, 100, 200 - 40 * i)).save(paths[-1])
    cache = tmp_path / "cache"
    # teacher embeddings
    kw = dict(chunk_size=2, cache_dir=cache, progress=False, prefetch=False)
    clean = embed_views(_Teacher(), paths, global_views(4), **kw)
    entry = sorted((cache / "embeddings").glob("*.npy"))[0]
    arr = np.load(entry)
    arr[0, 0] = np.nan
    np.save(entry, arr)
    with pytest.warns(UserWarning, match=rf"cache entry {entry} is damaged \(1 NaN"):
        again = embed_views(_Teacher(), paths, global_views(4), **kw)
    np.testing.assert_array_equal(again, clean)
    assert (ccdlib.scoring.last_stats.chunks_computed, ccdlib.scoring.last_stats.chunks_cached) == (1, 1)
    # frozen-trunk features: a chunk of another shape (e.g. another feature_dim)
    s = build_student(StudentConfig(image_size=64, device="cpu", head_dtype="float32"), 3)
    fkw = dict(image_size=64, views=("base",), cache_dir=cache, batch_size=2, progress=False)
    first = extract_features(s, paths, **fkw)["base"]
    entry = next((cache / "student_features").glob("*.npy"))
    np.save(entry, np.zeros((4, 7, 2, 2), np.float16))
    with pytest.warns(UserWarning, match=rf"cache entry {entry} is damaged \(shape \(4, 7, 2, 2\), expected "
                                         rf"\(4, 1280, 2, 2\)\)"):
        np.testing.assert_array_equal(extract_features(s, paths, **fkw)["base"], first)
    assert ccdlib.features.last_extract_stats.chunks_computed == 1
    # bootstrap intervals: a truncated distribution
    rng = np.random.default_rng(0)
    scores, labels = rng.random((12, 3)), (rng.random((12, 3)) > 0.5).astype(int)
    iv = bootstrap_map(scores, labels, n_resamples=50, cache_dir=cache)
    entry = next((cache / "bootstrap").glob("*.npy"))
    np.save(entry, np.load(entry)[:10])
    with pytest.warns(UserWarning, match=rf"cache entry {entry} is damaged \(shape \(10,\), expected \(54,\)\)"):
        iv2 = bootstrap_map(scores, labels, n_resamples=50, cache_dir=cache)
    assert (iv2.estimate, iv2.lo, iv2.hi, iv2.method) == (iv.estimate, iv.lo, iv.hi, iv.method)
    np.testing.assert_array_equal(iv2.distribution, iv.distribution)


# ------------------------------------------------------------- 4. CDUL whose alignment warm-up fills the run
def _cfg(**kw):
    return run_config_from_params(kw)


def test_cdul_warmup_as_long_as_the_run_is_refused_like_ccds(tmp_path, monkeypatch, capsys):
    from ccdlib.schedule import training_schedule
    # config level (before any work), as the CLI gets it
    with pytest.raises(ConfigError, match=r"^cdul.ga_warmup_steps \(3140\) must be < steps \(3140\): CDUL would run "
                                          r"no gradient alignment"):
        _cfg(method="cdul", cdul_ga_warmup_steps=3140)
    for name in ("make_context", "_run_unlocked"):
        monkeypatch.setattr(ccdlib.runs, name, _boom)
    assert main(["run", "--set", "method=cdul", "--set", "steps=300", "--set", "cdul.ga_warmup_steps=400",
                 "--set", f"out_dir={tmp_path / 'r'}", "--set", f"cache_dir={tmp_path / 'c'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cdul.ga_warmup_steps (400) must be < steps (300)") and "gradient_alignment=false" in err
    # the exact check, in whole passes (320 images at CDUL's batch 8: 40 steps per pass)
    with pytest.raises(ConfigError, match=r"cdul.ga_warmup_steps \(50\) and cdul.ga_every_steps \(314\) leave no "
                                          r"alignment step in the run's 40 steps \(1 passes of 40; steps=59\)"):
        training_schedule(_cfg(method="cdul", steps=59, cdul_ga_warmup_steps=50), 320)
    with pytest.raises(ConfigError, match=r"cdul.ga_every_steps \(200\) leave no alignment step in the run's 120"):
        training_schedule(_cfg(method="cdul", steps=100, cdul_ga_warmup_steps=10, cdul_ga_every_steps=200), 320)
    with pytest.raises(ConfigError, match=r"cdul.ga_warmup \(3 epochs\) must be < the run's 3 passes"):
        training_schedule(_cfg(method="cdul", epochs=3, cdul_ga_warmup=3, cdul_ga_every=1), 320)
    # CCD's equivalent, refused alike
    with pytest.raises(ConfigError, match="warm-up"):
        training_schedule(_cfg(method="ccd", steps=100, ccd_warmup_steps=100), 320)
    # CDUL without alignment may have any warm-up; a warm-up leaving one alignment runs
    off = _cfg(method="cdul", steps=300, cdul_ga_warmup_steps=400, cdul_gradient_alignment=False)
    assert training_schedule(off, 320).align_passes == ()
    one = training_schedule(_cfg(method="cdul", steps=120, cdul_ga_warmup_steps=100, cdul_ga_every_steps=10), 320)
    assert one.align_passes == (2,) and one.as_dict()["alignments"] == 1
    assert training_schedule(_cfg(method="cdul", epochs=3, cdul_ga_warmup=2, cdul_ga_every=1), 320).align_passes == (2,)
