"""Shared test set-up: no network, few threads.

The ConSE teacher caches its ImageNet-name embeddings under the user's cache (``$CCDLIB_CACHE`` or
``~/.cache/ccdlib``); that is deterministic and fine to share. Tests that check caching pass ``tmp_path``
as the cache folder explicitly.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(2)
