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


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def source():
    """The tuxpaint photo folder the mosaic tests build from (found or fetched once); skipped, with the reason,
    where the photos cannot be had."""
    from ccdlib import mosaic
    from ccdlib.errors import DataSetupError
    try:
        return mosaic.find_tuxpaint()
    except DataSetupError as e:
        pytest.skip(f"tuxpaint photos unavailable: {e}")


@pytest.fixture(scope="session")
def small_mosaic_root(source, tmp_path_factory):
    """A 16 train / 8 test mosaic set (448 px) shared by the run-level reliability tests."""
    from ccdlib import mosaic
    return mosaic.build_mosaics(tmp_path_factory.mktemp("data") / "mosaic", n_train=16, n_test=8, seed=0,
                                source=source, progress=False)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's run-level tests (``pytestmark = pytest.mark.usefixtures("one_thread")``): the
    tiny runs are faster so, and their timings do not depend on the machine's core count."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
