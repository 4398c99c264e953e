"""The build parameters of a mosaic set: those a caller picks, the fixed drawing constants recorded with
them in ``mosaic.json``, and their checks."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import DatasetError
from .spec import STAMP_PROTOCOLS, MosaicSpec

FORMAT_VERSION = 1          # bump when the drawing procedure changes: old builds are then rebuilt
MASK_ALPHA = 128            # alpha at or above which a stamp pixel belongs to the object's mask
JPEG_QUALITY = 95
MIN_CROP_FRACTION = 0.6     # background crop side, as a fraction of the background's shorter side
MAX_OCCLUSION = 0.3         # a new stamp may hide at most this fraction of an earlier object
PLACEMENT_TRIES = 20        # random positions tried per stamp before taking the least occluding one


@dataclass(frozen=True)
class _Params:
    n_train: int
    n_test: int
    seed: int
    image_size: int
    min_objects: int
    max_objects: int
    min_scale: float
    max_scale: float
    stamps: str = "disjoint"

    def as_dict(self, spec: MosaicSpec) -> dict:
        d = dict(self.__dict__)
        d.update(format_version=FORMAT_VERSION, classes_sha256=spec.sha256, jpeg_quality=JPEG_QUALITY,
                 mask_alpha=MASK_ALPHA, max_occlusion=MAX_OCCLUSION, min_crop_fraction=MIN_CROP_FRACTION)
        return d


def _check_params(p: _Params, num_classes: int) -> None:
    if p.n_train < 0 or p.n_test < 0 or p.n_train + p.n_test == 0:
        raise DatasetError(f"n_train={p.n_train}, n_test={p.n_test}: need non-negative counts, not both 0")
    if p.image_size < 32:
        raise DatasetError(f"image_size={p.image_size}: must be at least 32")
    if not 1 <= p.min_objects <= p.max_objects <= num_classes:
        raise DatasetError(
            f"min_objects={p.min_objects}, max_objects={p.max_objects}: need 1 <= min <= max <= "
            f"{num_classes} (the number of classes)")
    if not 0.0 < p.min_scale <= p.max_scale <= 1.0:
        raise DatasetError(f"min_scale={p.min_scale}, max_scale={p.max_scale}: need 0 < min <= max <= 1")
    if p.stamps not in STAMP_PROTOCOLS:
        raise DatasetError(f"stamps={p.stamps!r}: the stamp protocol must be one of {list(STAMP_PROTOCOLS)}")
