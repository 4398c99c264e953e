"""The runs behind "why CCD wins" (issue 22, notebook 10): CCD's view controls and the path from CDUL to CCD, one
switch at a time, as run configs built from one base config (the same data, teacher, student, budget and seed).

- :data:`VIEW_CONTROLS` / :func:`view_control_configs` -- CCD with only its local views changed
  (:mod:`ccdlib.view_controls`): placement (CAM, random positions, tiles), selection (tau, true classes, random
  classes, top-k, all) and the oracle (ground-truth boxes).
- :data:`CDUL_TO_CCD_PATH` / :func:`path_configs` -- CDUL as published, then one switch at a time: its loss, its
  mini-batch, its initial labels, its label update, the consistency loss; the last step is CCD itself.

A control or a path step is an ordinary run (:func:`ccdlib.runs.run`): its own run name, reuse and CLI
(``ccd.views``, ``ccd.selection``, ``cdul.initial_labels``...). Steps that equal a row of notebooks 04/05 have the
same config, so they are read back, not retrained.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from .config import RunConfig

__all__ = ["VIEW_CONTROLS", "view_control_configs", "CDUL_TO_CCD_PATH", "path_configs"]

#: key -> (label, what it controls, ccd overrides). "ccd" is CCD itself (the reference of every paired interval).
VIEW_CONTROLS: dict[str, tuple[str, str, Mapping[str, Any]]] = {
    "ccd": ("CCD (CAM boxes of the tau classes)", "-", {}),
    "random_boxes": ("same boxes, random positions", "placement", {"views": "random_boxes"}),
    "tiles": ("3x3 tiles (class-free)", "placement", {"views": "tiles"}),
    "true_classes": ("CAM boxes of the true classes", "selection", {"selection": "true_classes"}),
    "random_classes": ("CAM boxes of random classes (as many as tau)", "selection", {"selection": "random_classes"}),
    "top_k": ("CAM boxes of the top-k classes (k = objects per image)", "selection", {"selection": "top_k"}),
    "all_classes": ("CAM boxes of every class", "selection", {"selection": "all"}),
    "gt_boxes": ("ground-truth boxes of the true classes (oracle)", "oracle", {"views": "gt_boxes"}),
}


def view_control_configs(base: RunConfig, seed: int, controls: tuple[str, ...] | None = None) -> dict[str, RunConfig]:
    """``{control key: RunConfig}``: CCD on ``base`` at ``seed`` with each control's ``ccd`` overrides."""
    keys = tuple(VIEW_CONTROLS) if controls is None else controls
    unknown = [k for k in keys if k not in VIEW_CONTROLS]
    if unknown:
        raise KeyError(f"unknown view controls {unknown}; known: {', '.join(VIEW_CONTROLS)}")
    return {k: replace(base, method="ccd", seed=seed, ccd=replace(base.ccd, **VIEW_CONTROLS[k][2])) for k in keys}


#: (key, switch, method, cdul overrides, ccd overrides), in path order: each step changes one thing of the one
#: before it. Step 0 is CDUL as published (the main table's row); the last is CCD (the main table's row).
CDUL_TO_CCD_PATH: tuple[tuple[str, str, str, Mapping[str, Any], Mapping[str, Any]], ...] = (
    ("cdul", "CDUL as published (softmax + KL, batch 8, global + tiles, gradient alignment)", "cdul", {}, {}),
    ("loss", "loss: softmax + KL -> sigmoid + BCE (alignment: its BCE analogue)", "cdul",
     {"student_loss": "bce", "alignment": "bernoulli"}, {}),
    ("batch", "mini-batch: 8 -> 16 (CCD's)", "cdul",
     {"student_loss": "bce", "alignment": "bernoulli", "batch_size": 0}, {}),
    ("initial_labels", "initial labels: global + tiles -> CCD's debiased global", "cdul",
     {"student_loss": "bce", "alignment": "bernoulli", "batch_size": 0, "initial_labels": "ccd"}, {}),
    ("label_update", "label update: gradient alignment -> classifier-guided local views", "ccd", {},
     {"consistency": False}),
    ("consistency", "consistency loss on (= CCD)", "ccd", {}, {}),
)


def path_configs(base: RunConfig, seed: int) -> dict[str, RunConfig]:
    """``{step key: RunConfig}`` of :data:`CDUL_TO_CCD_PATH` on ``base`` at ``seed``."""
    return {key: replace(base, method=method, seed=seed, cdul=replace(base.cdul, **cdul), ccd=replace(base.ccd, **ccd))
            for key, _, method, cdul, ccd in CDUL_TO_CCD_PATH}
