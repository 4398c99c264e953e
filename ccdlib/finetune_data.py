"""Finetune-mode data of :class:`ccdlib.trainer.StudentTrainer`: decoded training views of the images
(:class:`_ImageViews`, seeded per (seed, epoch, index)) and their collation (:func:`_collate_views`)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .scoring import load_rgb
from .student import _TAG_FINETUNE_SAMPLE, _augmented_view, _generator, preprocess_image

__all__: list[str] = []


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


def _collate_views(samples: list, *, image_size: int, with_aug: bool):
    """``default_collate``, plus an empty batch of the right shapes for a rank with no image in a step."""
    if samples:
        return torch.utils.data.default_collate(samples)
    x = torch.empty(0, 3, image_size, image_size)
    return x, (torch.empty_like(x) if with_aug else torch.empty(0, 0)), torch.empty(0, dtype=torch.long)
