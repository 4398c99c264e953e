"""The tie between a student checkpoint's two files (issue 23): ``<path>.pt`` (a state dict) and ``<path>.json`` (its
description: classes, config, alpha). Nothing tied them: a ``.json`` listing the classes in another order (edited,
or copied from another checkpoint) made ``predict`` relabel every image silently.

- the ``.pt`` records the SHA-256 of what names its outputs -- the class count, ``class_ids`` and ``prompt_names``,
  in order -- in its state dict's ``_metadata`` (where ``load_state_dict`` looks up module versions only: the
  file stays a plain state dict of tensors, loadable as before);
- the ``.json`` records ``weights_sha256``, the SHA-256 of the ``.pt`` file's bytes.

:func:`check_pair` refuses a mismatch either way with a :class:`~ccdlib.errors.CheckpointError` naming both files.
A checkpoint written before the tie (format 1: neither file records the other) is read with a warning saying its
class order cannot be checked: the study's earlier runs stay usable.
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path

from .errors import CheckpointError

__all__ = ["PAIR_KEY", "labels_sha256", "weights_sha256", "tag_state", "state_tag", "check_pair"]

#: The key of the state dict's ``_metadata`` entry that records the ``.json``'s class list.
PAIR_KEY = "ccdlib.labels_sha256"


def labels_sha256(meta: dict) -> str:
    """SHA-256 of what names a checkpoint's outputs, in order: ``num_classes``, ``class_ids``, ``prompt_names`` of
    a ``.json`` description (as read back from JSON)."""
    names = [meta.get(k) for k in ("num_classes", "class_ids", "prompt_names")]
    return hashlib.sha256(json.dumps(names).encode()).hexdigest()


def weights_sha256(data: bytes) -> str:
    """SHA-256 of a ``.pt`` file's bytes (what its ``.json`` records as ``weights_sha256``)."""
    return hashlib.sha256(data).hexdigest()


def tag_state(state: dict, meta: dict) -> OrderedDict:
    """A copy of ``state`` (same tensors) whose ``_metadata`` also records :func:`labels_sha256` of ``meta`` (the
    description about to be written, taken as JSON will read it back)."""
    tagged = OrderedDict(state)
    tagged._metadata = {**(getattr(state, "_metadata", None) or {}),  # type: ignore[attr-defined]
                        PAIR_KEY: {"sha256": labels_sha256(json.loads(json.dumps(meta)))}}
    return tagged


def state_tag(state: dict) -> str | None:
    """The class-list SHA-256 a loaded state dict records (``None``: written before the tie, or not by ccdlib)."""
    entry = (getattr(state, "_metadata", None) or {}).get(PAIR_KEY)
    return entry.get("sha256") if isinstance(entry, dict) else None


def check_pair(pt: Path, js: Path, meta: dict, tag: str | None, data: bytes) -> None:
    """Raise :class:`CheckpointError` naming both files unless ``js`` (description ``meta``) was written with
    ``pt`` (whose bytes are ``data`` and whose state dict records ``tag``): its class list must be the one ``pt``
    records, and ``pt`` the file it records. Neither recorded (an older checkpoint): a warning, and the pair is read
    as it is."""
    ids, recorded = meta.get("class_ids") or [], meta.get("weights_sha256")
    keep = f"keep {pt.name} with the .json written beside it"
    if tag is not None and tag != labels_sha256(meta):
        shown = ", ".join(map(str, ids[:8])) + (", ..." if len(ids) > 8 else "")
        raise CheckpointError(f"{js} does not belong with {pt}: it names {len(ids)} classes ({shown}), not the class "
                              f"list and order the weights were saved with (the .json was edited or comes from "
                              f"another checkpoint); {keep}")
    if recorded is not None:
        actual = weights_sha256(data)
        if actual != recorded:
            raise CheckpointError(f"{js} does not belong with {pt}: it records the weights of another checkpoint "
                                  f"(sha256 {str(recorded)[:12]}..., {pt.name} has {actual[:12]}...); {keep}")
    elif tag is None:
        import warnings
        warnings.warn(f"{pt} and {js} were written before ccdlib tied a checkpoint's two files together (format 1): "
                      f"that the .json's class list and order are the weights' cannot be checked", UserWarning,
                      stacklevel=3)
