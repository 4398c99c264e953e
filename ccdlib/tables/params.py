"""Which flat notebook parameters are :class:`~ccdlib.config.RunConfig` keys."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from ..config import flat_config_keys


def config_params(namespace: Mapping[str, Any], *, exclude: Iterable[str] = ("out_dir",)) -> dict[str, Any]:
    """The entries of ``namespace`` (a notebook's parameters, or a loaded ``params/*.yaml``) that are flat
    :class:`RunConfig` keys, minus ``exclude`` (notebooks' ``out_dir`` is the reports folder, not a run's)."""
    keys, skip = flat_config_keys(), set(exclude)
    return {k: v for k, v in namespace.items() if k in keys and k not in skip}
