"""Issue 23 §2, data inputs: a test split equal to the training split with a few-label split held out of it, ``~``
in path fields, ``data.classes`` for the COCO and NUS-WIDE kinds, the few-label split on small sets. Each case gives a
clear error naming the culprit (exit 2 from the CLI, before the expensive work where the input is known) or the
right result. The case -> test map is the "Inputs and defaults (issue 23)" section of tests/RELIABILITY.md."""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ccdlib.config
import ccdlib.context
import ccdlib.inputs
import ccdlib.methods
import ccdlib.runs
from ccdlib.__main__ import main
from ccdlib.config import DataConfig, RunConfig, config_from_dict, load_config, run_config_from_params
from ccdlib.errors import ConfigError, DatasetError

from _guards import LOOKED_UP_IN, _boom, no_expensive_work  # noqa: F401  (a shared fixture)

pytestmark = [pytest.mark.filterwarnings("ignore:.*have no positive image:UserWarning"),
              pytest.mark.filterwarnings("ignore:few-label split:UserWarning")]   # tiny sets; checked in section 4


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh home folder (``$HOME``) and another current folder, so that a folder literally named ``~`` shows."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return h


CLASSES = ("cat", "dog", "bird")


def _voc(root: Path, n: int = 12, splits: dict[str, list[int]] | None = None) -> Path:
    """A VOC-layout set of ``n`` images ``im00..``, image k holding ``CLASSES[k % 3]`` and ``CLASSES[(k+1) % 3]``,
    with ``classes.yaml``; ``splits``: split name -> image numbers (default: train and test both list all)."""
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for k in range(n):
        Image.new("RGB", (40, 30), (20 * k % 255, 0, 0)).save(root / "JPEGImages" / f"im{k:02d}.jpg")
        objs = "".join(f"<object><name>{c}</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>1</ymin>"
                       f"<xmax>20</xmax><ymax>20</ymax></bndbox></object>"
                       for c in (CLASSES[k % 3], CLASSES[(k + 1) % 3]))
        (root / "Annotations" / f"im{k:02d}.xml").write_text(
            f"<annotation><filename>im{k:02d}.jpg</filename><size><width>40</width><height>30</height>"
            f"<depth>3</depth></size>{objs}</annotation>")
    for split, ks in (splits or {"train": list(range(n)), "test": list(range(n))}).items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"im{k:02d}\n" for k in ks))
    (root / "classes.yaml").write_text("".join(f"{c}: {c}\n" for c in CLASSES))
    return root


def _cli_args(**kw) -> list[str]:
    out = []
    for k, v in kw.items():
        out += ["--set", f"{k.replace('__', '.')}={v}"]
    return out


# ------------------------------------------------------------------ 1. train == test with a few-label split
@pytest.mark.parametrize("k", [0, 2])
def test_train_equal_to_test_is_refused_whatever_few_label_k(tmp_path, monkeypatch, capsys, k):
    from ccdlib.context import make_context
    from ccdlib.inputs import check_splits, load_splits
    root = _voc(tmp_path / "voc")
    data = DataConfig(kind="voc", root=str(root), classes=str(root / "classes.yaml"), few_label_k=k)
    train, test, val = load_splits(data)
    assert (val is None) == (k == 0) and len(train) + (len(val) if val is not None else 0) == 12
    with pytest.raises(DatasetError, match=r"the test split .* and the training split .* hold the same 12 images "
                                           r"\(e\.g\. im00, im01, im02, im03, im04\)"):
        check_splits(train, test, val)
    monkeypatch.setattr(ccdlib.context, "get_teacher", _boom)     # refused before the teacher
    cfg = run_config_from_params(dict(data_kind="voc", data_root=str(root), data_classes=str(root / "classes.yaml"),
                                      data_few_label_k=k, teacher_device="cpu", student_device="cpu",
                                      out_dir=str(tmp_path / "r"), cache_dir=str(tmp_path / "cache")))
    with pytest.raises(DatasetError, match="hold the same 12 images"):
        make_context(cfg)
    args = _cli_args(data__kind="voc", data__root=root, data__classes=root / "classes.yaml",
                     data__few_label_k=k, teacher__device="cpu", student__device="cpu", out_dir=tmp_path / "r",
                     cache_dir=tmp_path / "cache")
    assert main(["run", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the test split ") and "hold the same 12 images" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()                         # nothing saved


def test_partial_overlap_with_a_few_label_split_stays_a_warning(tmp_path):
    from ccdlib.inputs import check_splits, load_splits
    root = _voc(tmp_path / "voc", n=18, splits={"train": list(range(12)), "test": list(range(6, 18))})
    train, test, val = load_splits(DataConfig(kind="voc", root=str(root), classes=str(root / "classes.yaml")))
    assert val is not None and len(train) + len(val) == 12
    with pytest.warns(UserWarning, match=r"6 of the 12 test images .* also in the training split .* with its "
                                         r"\d+ few-label images .*\(e\.g\. im06, im07, im08, im09, im10\)"):
        check_splits(train, test, val)
    # the training split without its few-label images, as check_splits saw it before: not the same images, yet
    # refused above only because the few-label images count as training images
    root2 = _voc(tmp_path / "voc2", n=12)
    train, test, val = load_splits(DataConfig(kind="voc", root=str(root2), classes=str(root2 / "classes.yaml")))
    with pytest.warns(UserWarning, match=r"\d+ of the 12 test images"):
        check_splits(train, test)                                 # val not given: a partial overlap, as before
    with pytest.raises(DatasetError, match="hold the same 12 images"):
        check_splits(train, test, val)


# --------------------------------------------------------------------------------------- 2. '~' in paths
def test_tilde_in_every_path_field_is_the_home_folder(home, tmp_path):
    fields = {"out_dir": "~/res", "cache_dir": "~/cache", "data.root": "~/data/VOC", "data.classes": "~/cls.yaml",
              "teacher.pretrained": "~/w/clip.pt", "student.trunk_weights": "~/w/trunk.pth"}
    sets = [f"{k}={v}" for k, v in fields.items()] + ["data.kind=voc"]

    def values(cfg: RunConfig) -> dict[str, object]:
        return {k: getattr(getattr(cfg, k.split(".")[0]), k.split(".")[1]) if "." in k else getattr(cfg, k)
                for k in fields}
    expected = {k: str(home / v[2:]) for k, v in fields.items()}
    assert values(load_config(None, sets)) == expected                               # --set
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("out_dir: ~/res\ncache_dir: ~/cache\ndata:\n  kind: voc\n  root: ~/data/VOC\n"
                         "  classes: ~/cls.yaml\nteacher:\n  pretrained: ~/w/clip.pt\n"
                         "student:\n  trunk_weights: ~/w/trunk.pth\n")
    assert values(load_config(yaml_file)) == expected                                # a YAML file
    flat = {k.replace(".", "_"): v for k, v in fields.items()}
    assert values(run_config_from_params(dict(flat, data_kind="voc"))) == expected   # notebook parameters
    nested = {"out_dir": "~/res", "cache_dir": "~/cache", "data": {"kind": "voc", "root": "~/data/VOC",
              "classes": "~/cls.yaml"}, "teacher": {"pretrained": "~/w/clip.pt"},
              "student": {"trunk_weights": "~/w/trunk.pth"}}
    assert values(config_from_dict(nested)) == expected                              # config_from_dict
    assert DataConfig(kind="voc", root="~/d").root == str(home / "d")                # the dataclasses themselves
    assert RunConfig(out_dir="~").out_dir == str(home)
    assert RunConfig(out_dir=Path("~/p")).out_dir == home / "p"


def test_paths_without_a_leading_tilde_and_run_names_are_unchanged(home, monkeypatch):
    # values that do not start with '~' are kept as given (the study's cached runs are keyed by the run name)
    cfg = load_config(None, ["out_dir=res/~x", "data.kind=voc", "data.root=data/~/VOC", "teacher.pretrained=openai",
                             "student.trunk_weights=w/~trunk.pth"])
    assert (cfg.out_dir, cfg.data.root, cfg.teacher.pretrained, cfg.student.trunk_weights) == (
        "res/~x", "data/~/VOC", "openai", "w/~trunk.pth")
    assert load_config(None, ["cache_dir=~"]).cache_dir is None                      # YAML null, as before
    assert RunConfig(out_dir=Path("res")).out_dir == Path("res")                     # not even its type changes
    # every run name of a config without '~' is the one computed without the expansion (checked by hand against
    # the code before issue 23, git 2312956: 089e108c, cac2ad31, aef3a04d with that commit's defaults)
    root = Path(__file__).resolve().parents[1]

    def names() -> list[str]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")            # notebook-only parameters of the flat file
            return [RunConfig().name, load_config(root / "notebooks" / "params" / "default.yaml").name,
                    run_config_from_params(dict(
                        method="cdul", data_kind="voc", data_root="/data/VOC2007", data_classes="cls.yaml",
                        teacher_backend="open_clip", teacher_arch="RN50", teacher_pretrained="openai",
                        student_trunk_weights="w/r.pth", out_dir="res", cache_dir="c")).name]
    with_expansion = names()
    with monkeypatch.context() as m:
        m.setattr(ccdlib.config, "_expand_home", lambda name, value: value)
        assert names() == with_expansion
    # a '~' path names the same run as its expanded form
    assert load_config(None, ["data.kind=voc", "data.root=~/VOC"]).name == \
        load_config(None, ["data.kind=voc", f"data.root={home / 'VOC'}"]).name


def test_tilde_of_an_unknown_user_is_refused_naming_the_field(home, no_expensive_work, capsys):
    with pytest.raises(ConfigError, match=r"out_dir: cannot expand '~no_such_user_ccdlib/x'"):
        load_config(None, ["out_dir=~no_such_user_ccdlib/x"])
    with pytest.raises(ConfigError, match=r"data\.root: cannot expand"):
        DataConfig(kind="voc", root="~no_such_user_ccdlib")
    assert main(["run", "--set", "student.trunk_weights=~no_such_user_ccdlib/w.pth"]) == 2
    assert "error: student.trunk_weights: cannot expand" in capsys.readouterr().err


def test_out_dir_with_tilde_writes_under_home_not_into_a_folder_named_tilde(home, tmp_path, monkeypatch, capsys):
    seen = []

    def fake_run_unlocked(cfg, **kw):          # what run() does before the work: the lock in the run folder
        seen.append((cfg, (Path(cfg.out_dir) / cfg.name / "run.lock").is_file()))
        return {"name": cfg.name, "selected": {}}
    monkeypatch.setattr(ccdlib.runs, "_run_unlocked", fake_run_unlocked)
    assert main(["run", "--set", "out_dir=~/x", "--set", "epochs=2"]) == 0
    cfg, locked = seen[0]
    assert cfg.out_dir == str(home / "x") and locked
    assert not (Path.cwd() / "~").exists()                      # no folder literally named '~'
    assert str(home / "x") in capsys.readouterr().out           # the printed results folder is the real one


def test_data_root_with_tilde_is_read(home):
    from ccdlib.inputs import load_splits
    _voc(home / "sets" / "voc", n=12, splits={"train": list(range(8)), "test": list(range(8, 12))})
    train, test, val = load_splits(DataConfig(kind="voc", root="~/sets/voc", classes="~/sets/voc/classes.yaml"))
    assert len(train) + len(val) == 8 and len(test) == 4
    assert str(train.image_paths[0]).startswith(str(home / "sets" / "voc"))
    with pytest.raises(DatasetError, match=rf"VOC root not found: {home / 'absent'}"):   # the expanded path named
        load_splits(DataConfig(kind="voc", root="~/absent"))


# ------------------------------------------------------------------ 3. data.classes for COCO and NUS-WIDE
def _coco_split(root: Path, split: str, categories: list[tuple[int, str]], images: list[tuple[str, list[str]]]) -> Path:
    """``root/split/<file>.jpg`` and ``root/annotations/instances_<split>.json``; ``images``: (file, class names)."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(parents=True, exist_ok=True)
    by_name = {name: cid for cid, name in categories}
    imgs, anns = [], []
    for k, (fname, names) in enumerate(images, 1):
        Image.new("RGB", (40, 30), (k * 20, 0, 0)).save(root / split / fname)
        imgs.append({"id": k, "file_name": fname, "width": 40, "height": 30})
        for j, n in enumerate(names):
            anns.append({"id": len(anns) + 1, "image_id": k, "category_id": by_name[n],
                         "bbox": [1 + j, 1, 10, 10], "iscrowd": 0, "area": 100})
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps({"images": imgs, "annotations": anns,
                                "categories": [{"id": cid, "name": n} for cid, n in categories]}))
    return path


def _coco(tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    _coco_split(root, "train", [(1, "cat"), (2, "dog"), (3, "bird")],
                [("t1.jpg", ["cat"]), ("t2.jpg", ["dog", "bird"]), ("t3.jpg", ["cat", "dog"]), ("t4.jpg", ["bird"])])
    _coco_split(root, "val", [(1, "dog"), (2, "cat"), (3, "bird")],          # numbered differently
                [("v1.jpg", ["cat", "bird"]), ("v2.jpg", ["dog"]), ("v3.jpg", ["bird"])])
    return root


def test_coco_class_list_selects_and_renames_categories(tmp_path):
    from ccdlib.inputs import load_data
    root = _coco(tmp_path)
    (tmp_path / "classes.yaml").write_text("dog: a dog\ncat: a house cat\n")     # a subset, in another order
    cfg = DataConfig(kind="coco", root=str(root), train_split="train", test_split="val",
                     classes=str(tmp_path / "classes.yaml"), few_label_k=0)
    train, test = load_data(cfg)
    for ds in (train, test):
        assert ds.class_ids == ("dog", "cat") and ds.prompt_names == ("a dog", "a house cat")
    np.testing.assert_array_equal(train.labels, [[0, 1], [1, 0], [1, 1], [0, 0]])   # bird dropped; t4 empty
    np.testing.assert_array_equal(test.labels, [[0, 1], [1, 0], [0, 0]])
    assert train.meta["category_ids"] == [2, 1] and test.meta["category_ids"] == [1, 2]
    assert [b[:, 0].tolist() for b in train.boxes] == [[1], [0], [1, 0], []]        # boxes of listed classes only
    # the file now changes what a run reads: another list, another run name and other inputs
    other = DataConfig(kind="coco", root=str(root), train_split="train", test_split="val", few_label_k=0)
    with pytest.warns(UserWarning, match="number their classes differently"):   # without the list (issue 17)
        full_train, _ = load_data(other)
    assert full_train.class_ids == ("cat", "dog", "bird")
    assert RunConfig(data=cfg).name != RunConfig(data=other).name
    from ccdlib.readers import read_coco                        # the reader alone, with a ClassList
    from ccdlib.datasets import ClassList
    ds = read_coco(root, "train", classes=ClassList(("bird",), ("a bird",)), drop_empty=True)
    assert ds.image_ids == ["2", "4"] and ds.labels.tolist() == [[1], [1]]


def test_coco_class_list_naming_an_unknown_category_is_refused(tmp_path, monkeypatch, capsys):
    from ccdlib.inputs import load_data
    root = _coco(tmp_path)
    cls = tmp_path / "classes.txt"
    cls.write_text("cat\nhorse\n")
    cfg = DataConfig(kind="coco", root=str(root), train_split="train", test_split="val", classes=str(cls))
    with pytest.raises(DatasetError, match=rf"class list file {cls} names 1 class\(es\) that are not categories of "
                                           rf"the COCO annotation file .*instances_train\.json: \['horse'\]"):
        load_data(cfg)
    monkeypatch.setattr(ccdlib.context, "get_teacher", _boom)
    args = _cli_args(data__kind="coco", data__root=root, data__train_split="train", data__test_split="val",
                     data__classes=cls, teacher__device="cpu", student__device="cpu", out_dir=tmp_path / "r",
                     cache_dir=tmp_path / "cache")
    assert main(["run", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: class list file ") and "'horse'" in err and "Traceback" not in err


def _nuswide(root: Path) -> Path:
    concepts = ["beach", "dog", "sky"]
    lists = {"Train": ["beach\\0001_1.jpg", "dog\\0002_2.jpg", "beach\\0003_3.jpg"],
             "Test": ["sky\\0004_4.jpg", "dog\\0005_5.jpg"]}
    labels = {"Train": {"beach": [1, 0, 1], "dog": [0, 1, 0], "sky": [1, 0, 0]},
              "Test": {"beach": [0, 0], "dog": [0, 1], "sky": [1, 0]}}
    (root / "ImageList").mkdir(parents=True)
    (root / "Groundtruth" / "TrainTestLabels").mkdir(parents=True)
    (root / "Concepts81.txt").write_text("".join(c + "\n" for c in concepts))
    for tag, rels in lists.items():
        (root / "ImageList" / f"{tag}Imagelist.txt").write_text("".join(r + "\r\n" for r in rels))
        for r in rels:
            p = root / "Flickr" / r.replace("\\", "/")
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8)).save(p)
        for c in concepts:
            (root / "Groundtruth" / "TrainTestLabels" / f"Labels_{c}_{tag}.txt").write_text(
                "".join(f"{v}\n" for v in labels[tag][c]))
    return root


def test_nuswide_class_list_selects_and_renames_concepts(tmp_path, monkeypatch, capsys):
    from ccdlib.inputs import load_data
    root = _nuswide(tmp_path / "nus")
    (tmp_path / "classes.txt").write_text("sky,the sky\ndog\n")
    cfg = DataConfig(kind="nuswide", root=str(root), classes=str(tmp_path / "classes.txt"), few_label_k=0)
    train, test = load_data(cfg)
    assert train.class_ids == test.class_ids == ("sky", "dog") and train.prompt_names == ("the sky", "dog")
    np.testing.assert_array_equal(train.labels, [[1, 0], [0, 1], [0, 0]])
    np.testing.assert_array_equal(test.labels, [[1, 0], [0, 1]])
    assert load_data(DataConfig(kind="nuswide", root=str(root), few_label_k=0))[0].class_ids == ("beach", "dog", "sky")
    (tmp_path / "bad.txt").write_text("sky\nzebra\n")
    bad = DataConfig(kind="nuswide", root=str(root), classes=str(tmp_path / "bad.txt"))
    with pytest.raises(DatasetError, match=r"label file for concept 'zebra' not found: .*Labels_zebra_Train\.txt "
                                           r"\(class list file .*bad\.txt names it"):
        load_data(bad)
    monkeypatch.setattr(ccdlib.context, "get_teacher", _boom)
    args = _cli_args(data__kind="nuswide", data__root=root, data__classes=tmp_path / "bad.txt", teacher__device="cpu",
                     student__device="cpu", out_dir=tmp_path / "r", cache_dir=tmp_path / "cache")
    assert main(["run", *args]) == 2
    assert "'zebra'" in capsys.readouterr().err


def test_data_classes_for_the_mosaic_kind_is_refused(tmp_path, no_expensive_work, capsys):
    with pytest.raises(ConfigError, match=r"data\.classes .* not to data\.kind='mosaic'"):
        DataConfig(classes="classes.yaml")
    assert main(["run", "--set", f"data.classes={tmp_path / 'c.yaml'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data.classes") and "mosaic" in err
    assert DataConfig(classes=None).classes is None                     # the default stays valid


# ------------------------------------------------------------------------ 4. the few-label split on small sets
def _few_label_split_before(labels, *, k=2, seed=0, max_fraction=0.15):
    """``selection.few_label_split`` as it was before issue 23 (git 2312956), verbatim: the reference the embedded
    default study's cached results were computed with."""
    y = np.asarray(labels) > 0
    n, c = y.shape
    if k <= 0 or n == 0:
        return np.zeros(0, dtype=np.int64)
    cap = max(1, math.ceil(max_fraction * n))
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    taken = np.zeros(n, dtype=bool)
    for cls in np.argsort(y.sum(0), kind="stable"):
        need = k - int(y[taken, cls].sum())
        if need <= 0:
            continue
        cand = np.flatnonzero(y[:, cls] & ~taken)
        for i in rng.permutation(cand)[:need]:
            if len(chosen) >= cap:
                break
            chosen.append(int(i))
            taken[i] = True
    return np.asarray(sorted(chosen), dtype=np.int64)


def _mosaic_like(n: int, seed: int, num_classes: int = 16) -> np.ndarray:
    """Labels drawn as ``mosaic.build_mosaics`` draws them: 2-4 distinct classes per image, uniformly."""
    rng = np.random.default_rng(seed)
    y = np.zeros((n, num_classes), np.uint8)
    for i in range(n):
        y[i, rng.choice(num_classes, size=int(rng.integers(2, 5)), replace=False)] = 1
    return y


def _skewed(n: int, seed: int, num_classes: int = 20) -> np.ndarray:
    """VOC-like labels: class frequencies from 3 % to 40 %, at least 10 positives per class."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, num_classes)) < np.linspace(0.03, 0.4, num_classes)).astype(np.uint8)
    assert (y.sum(0) >= 10).all()
    return y


@pytest.mark.parametrize("make, n", [(_mosaic_like, 320), (_mosaic_like, 400), (_skewed, 500)])
def test_few_label_split_is_unchanged_on_realistic_label_matrices(make, n):
    from ccdlib.selection import few_label_split
    with warnings.catch_warnings():
        warnings.simplefilter("error")             # nothing to warn of either
        for data_seed in range(4):
            y = make(n, data_seed)
            for k in (1, 2, 3):
                for seed in (0, 1, 2):
                    assert np.array_equal(few_label_split(y, k=k, seed=seed),
                                          _few_label_split_before(y, k=k, seed=seed)), (data_seed, k, seed)


def test_few_label_split_is_unchanged_on_the_default_study_set():
    """The embedded default study's training labels (notebooks/params/default.yaml: 320 mosaics, both stamp
    protocols), where a build of it is in the cache (``make reproduce`` makes them); skipped elsewhere."""
    from ccdlib.mosaic import read_mosaic
    from ccdlib.mosaic.embedded import default_mosaic_root
    from ccdlib.selection import few_label_split
    roots = [default_mosaic_root(n_train=320, n_test=500, stamps=s) for s in ("shared", "disjoint")]
    roots = [r for r in roots if (r / "mosaic.json").is_file()]
    if not roots:
        pytest.skip("no build of the default study's mosaics in the cache ($CCDLIB_CACHE or ~/.cache/ccdlib)")
    for root in roots:
        y = read_mosaic(root, "train").labels
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for k in (1, 2, 3):
                for seed in range(5):
                    assert np.array_equal(few_label_split(y, k=k, seed=seed),
                                          _few_label_split_before(y, k=k, seed=seed)), (root, k, seed)


def _small(labels, names):
    from ccdlib.datasets import ClassList, MultiLabelDataset
    return MultiLabelDataset(name="small", image_ids=[f"i{k}" for k in range(len(labels))],
                             image_paths=[f"/x/i{k}.jpg" for k in range(len(labels))], labels=np.asarray(labels),
                             classes=ClassList(tuple(names), tuple(names)))


def test_few_label_split_never_takes_a_class_s_last_training_image_and_warns():
    from ccdlib.inputs import split_few_label
    from ccdlib.selection import few_label_split
    # 'lonely' has one image, 'pair' two, 'common' many: k=2 cannot be met for the first two
    y = np.zeros((40, 3), np.uint8)
    y[:, 2] = 1
    y[0, 0] = 1                      # lonely
    y[[1, 2], 1] = 1                 # pair
    before = _few_label_split_before(y, k=2, seed=0)
    assert 0 in before and {1, 2} <= set(before)          # the old split took every image of both
    with pytest.warns(UserWarning, match=r"few-label split: 2 class\(es\) hold fewer than k=2 labelled images: "
                                         r"lonely \(0/2 of its 1 images\), pair \(1/2 of its 2 images\): a class's "
                                         r"last training image is never taken \(kept for training: lonely, pair\)"):
        train, val = split_few_label(_small(y, ["lonely", "pair", "common"]), DataConfig(few_label_k=2))
    assert (train.labels.sum(0) >= 1).all()                # every class keeps a training image
    assert val.labels[:, 1].sum() == 1 and val.labels[:, 2].sum() >= 2
    with pytest.warns(UserWarning, match=r"class 0 \(0/2 of its 1 images\)"):   # without names: the column
        few_label_split(y, k=2)


def test_few_label_split_under_filled_by_the_cap_is_warned():
    from ccdlib.inputs import split_few_label
    y = _mosaic_like(16, 0)          # 16 images of 16 classes: the cap (3 images) leaves most classes short
    names = [f"c{j}" for j in range(16)]
    with pytest.warns(UserWarning, match=r"few-label split: \d+ class\(es\) hold fewer than k=2 labelled images: "
                                         r".*c\d+ \(\d/2 of its \d+ images\).*the split is capped at 3 images"):
        train, val = split_few_label(_small(y, names), DataConfig(few_label_k=2))
    assert len(val) <= 3 and (train.labels.sum(0) >= (y.sum(0) > 0)).all()


def test_few_label_split_with_enough_images_is_silent():
    from ccdlib.inputs import split_few_label
    y = _mosaic_like(320, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train, val = split_few_label(_small(y, [f"c{j}" for j in range(16)]), DataConfig(few_label_k=2))
    assert (val.labels.sum(0) >= 2).all() and os.fspath(val.name).endswith(":few_label2")
