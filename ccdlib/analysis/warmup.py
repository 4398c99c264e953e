"""CCD's warm-up state and what its label update does with it (notebooks 06, 07): the warm-up student, the
classes it selects, its CAM crops, their pseudo-labels, and where the crops land on the true objects."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..context import Context, global_probabilities, view_probabilities
from ..crop_metrics import box_iou, cam_peaks, crop_summary, object_area_in_crop, pointing_game
from ..label_update import (cam_boxes, cam_grid_boxes, cam_to_box, grow_boxes, local_pseudo_labels, mix_labels,
                            select_classes)
from ..pseudolabels import CCDInitialLabels, ccd_initial_pseudo_labels
from ..student import alpha_for
from ..trainer import StudentTrainer
from ..view_controls import object_views
from ..views import Box, View, grid_views


# ============================================================================================ qualitative
@dataclass
class WarmupState:
    """CCD after its warm-up epochs (method.md §4-§6.1), before the label update: what notebook 07 looks at."""

    ctx: Context
    trainer: StudentTrainer
    p_global: np.ndarray          # (N, C) teacher probabilities of the whole training images
    init: CCDInitialLabels        # debiased initial labels y0 and the class bias
    student_probs: np.ndarray     # (N, C) sigmoid outputs after the warm-up
    tau: float                    # the class-selection threshold (method.md §6.1)
    selected: np.ndarray          # (N, C) bool: classes whose CAM gives a crop
    boxed: tuple | None = field(default=None, repr=False)   # _boxed_cams' result, computed once per state


def ccd_warmup(ctx: Context, *, epochs: int | None = None) -> WarmupState:
    """Run CCD's first steps on ``ctx``'s training split as :func:`ccdlib.methods.run_ccd` does: global teacher
    prediction, debiased initial labels, ``epochs`` warm-up passes (default: the schedule's, ``ccd.warmup_steps``)
    of a fresh student, then the class-selection threshold as the run computes it (``ccd.tau_input``,
    ``ccd.tau_walk``, ``ccd.tau_checks``). Returns a :class:`WarmupState`."""
    from ..label_update import tau_walk
    from ..methods import train_view_probabilities
    from ..schedule import training_schedule
    c = ctx.cfg.ccd
    if epochs is None:
        epochs = training_schedule(replace(ctx.cfg, method="ccd"), len(ctx.train)).warmup_passes
    epochs = int(epochs)
    p_global = global_probabilities(ctx, "train")
    init = ccd_initial_pseudo_labels(p_global, h_max=c.h_max, ls=c.ls or None, debiasing=c.debiasing,
                                     fallback=c.bias_fallback, class_names=list(ctx.train.class_ids))
    trainer = StudentTrainer(replace(ctx.cfg.student, seed=ctx.cfg.seed), ctx.train.image_paths,
                             ctx.train.num_classes, cache_dir=ctx.cache_dir, progress=False)
    for epoch in range(epochs):
        trainer.fit_epoch(init.labels, alpha=alpha_for(epoch, ctx.cfg.student.coeff, ctx.cfg.student.alpha_schedule),
                          consistency=False)
    probs = 1.0 / (1.0 + np.exp(-trainer.predict_logits(image_size=c.cam_image_size or None)))
    tau_probs = train_view_probabilities(trainer) if c.tau_input == "train_views" else probs
    tau, _ = tau_walk(tau_probs, tau0=0.05 if c.ls else 0.001, bound=c.bound, seed=ctx.cfg.seed, walk=c.tau_walk,
                      checks=c.tau_checks)
    return WarmupState(ctx=ctx, trainer=trainer, p_global=p_global, init=init, student_probs=probs, tau=tau,
                       selected=select_classes(probs, tau))


def box_to_image(box: tuple[float, float, float, float], resolution: int, size: tuple[int, int]) -> Box:
    """A box on the ``resolution x resolution`` CAM grid -> image pixels of an image of ``size = (w, h)``."""
    w, h = size
    sx, sy = w / resolution, h / resolution
    return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


@dataclass
class ExampleUpdate:
    """The label update of one training image, step by step (method.md §6.2-§6.4).

    ``classes`` are the selected classes (``S`` of them); per selected class its CAM (``cams (S, h, w)``,
    alpha-scaled with ``ccd.cam_alpha``), the
    box of the CAM's top pixels in image pixels under both rules (``boxes_minmax``/``boxes_raster``, ``None`` for a
    flat CAM) and the crop the teacher scores (``crops``: the configured rule's box grown by ``offset``, ``None``
    when there is no box) with its probabilities ``crop_probs (S, C)`` (NaN rows without crop). Labels ``(C,)``:
    ``p_global`` (teacher, whole image), ``y_prev`` (debiased y0), ``y_local`` (max over crops, floored, debiased)
    and ``y_updated`` (the mix; with ``ccd.no_crop: keep``, ``y_prev`` when the image has no crop).
    """

    index: int
    classes: list[int]
    student_probs: np.ndarray
    cams: np.ndarray
    boxes_minmax: list[Box | None]
    boxes_raster: list[Box | None]
    crops: list[Box | None]
    crop_probs: np.ndarray
    p_global: np.ndarray
    y_prev: np.ndarray
    y_local: np.ndarray
    y_updated: np.ndarray


def explain_label_update(state: WarmupState, indices: Sequence[int]) -> list[ExampleUpdate]:
    """CCD's classifier-guided label update (method.md §6.2-§6.4, the config's ``ccd`` options) for a few training
    images, keeping every intermediate (CAMs, both box rules, crops, crop scores, labels) for display. The
    teacher scores only these images' crops (cached), so it is cheap."""
    ctx, c = state.ctx, state.ctx.cfg.ccd
    idx = [int(i) for i in indices]
    sizes = [ctx.image_sizes("train")[i] for i in idx]
    cams = state.trainer.cams(indices=idx, alpha=state.trainer.alpha if c.cam_alpha else None,
                              image_size=c.cam_image_size or None)   # (k, C, h, w), as run_ccd uses
    sel = state.selected[idx]
    crops, owner = cam_boxes(cams, sel, sizes, offset=c.offset, resolution=c.resolution,
                             threshold=c.cam_threshold, box_rule=c.box_rule)
    crops_global = [View(idx[v.image], v.box) for v in crops]
    n_classes = ctx.train.num_classes
    crop_probs = (view_probabilities(ctx, "train", crops_global, desc="CAM crops (examples)") if crops
                  else np.zeros((0, n_classes)))
    y_loc, has = local_pseudo_labels(crop_probs, owner[:, 0], len(idx), state.init.bias, ls=c.ls or None)
    y_prev = state.init.labels[idx]
    y_new = mix_labels(y_prev, y_loc, has, r=c.r, no_crop=c.no_crop)
    out = []
    for k, i in enumerate(idx):
        classes = [int(x) for x in np.flatnonzero(sel[k])]
        boxes = {rule: [cam_to_box(cams[k, cl], resolution=c.resolution, threshold=c.cam_threshold, box_rule=rule)
                        for cl in classes] for rule in ("minmax", "raster")}
        to_img = {rule: [None if b is None else box_to_image(b, c.resolution, sizes[k]) for b in bs]
                  for rule, bs in boxes.items()}
        crop_of: list[Box | None] = []
        probs = np.full((len(classes), n_classes), np.nan)
        for s, cl in enumerate(classes):
            m = np.flatnonzero((owner[:, 0] == k) & (owner[:, 1] == cl)) if len(owner) else []
            crop_of.append(crops[m[0]].box if len(m) else None)
            if len(m):
                probs[s] = crop_probs[m[0]]
        out.append(ExampleUpdate(index=i, classes=classes, student_probs=state.student_probs[i],
                                 cams=cams[k, classes], boxes_minmax=to_img["minmax"], boxes_raster=to_img["raster"],
                                 crops=crop_of, crop_probs=probs, p_global=state.p_global[i], y_prev=y_prev[k],
                                 y_local=y_loc[k], y_updated=y_new[k]))
    return out


def cam_heatmap(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A CAM for display: upsampled bilinearly to the image's ``size = (w, h)`` and min-max normalised to [0, 1]
    (as method.md §6.2 does before thresholding). ``(h', w') -> (h, w)``; a flat map gives zeros."""
    w, h = size
    m = torch.as_tensor(np.asarray(cam), dtype=torch.float32)[None, None]
    up = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
    lo, hi = float(up.min()), float(up.max())
    return np.zeros_like(up) if hi - lo <= 0 else (up - lo) / (hi - lo)


def example_updates_table(examples: Sequence[ExampleUpdate], labels: np.ndarray, class_names: Sequence[str],
                          image_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per (example image, class that is in its ground truth or selected): ``image``, ``class``, ``in_gt``,
    ``selected``, ``student_prob``, ``p_global``, ``y_prev``, ``y_local``, ``y_updated`` (x100). ``labels (N, C)``
    is the training split's ground truth."""
    rows = []
    for e in examples:
        y = np.asarray(labels)[e.index].astype(bool)
        for c in sorted(set(np.flatnonzero(y).tolist()) | set(e.classes)):
            rows.append({"image": image_ids[e.index] if image_ids is not None else e.index, "class": class_names[c],
                         "in_gt": bool(y[c]), "selected": c in e.classes,
                         "student_prob": 100 * float(e.student_probs[c]), "p_global": 100 * float(e.p_global[c]),
                         "y_prev": 100 * float(e.y_prev[c]), "y_local": 100 * float(e.y_local[c]),
                         "y_updated": 100 * float(e.y_updated[c])})
    return pd.DataFrame(rows)


def crop_diagnostics(state: WarmupState, *, offsets: Sequence[float] = (0.0, 80.0, 160.0), grid: int = 3,
                     iou: float = 0.5) -> pd.DataFrame:
    """Where CCD's CAM crops land, and what limits them, on the training split (no teacher call: boxes only).

    From the student's CAMs at the update epoch (``state``, :func:`ccd_warmup`), the maps the run crops from
    (:func:`run_cams`: ``ccd.cam_image_size`` input, alpha-scaled with ``ccd.cam_alpha``), one row per (class selection,
    offset): ``selection`` = ``"tau"`` (the calibrated threshold, what CCD does) or ``"ground truth"`` (the image's
    true classes: isolates the CAMs' localisation from the class selection), ``offset`` in pixels of the
    ``resolution`` grid; plus one row for the ``grid x grid`` tiles CDUL scores. Columns: :func:`crop_summary`'s,
    ``selection``, ``offset``, ``tau``. The config's own offset and box rule are used for the rest.
    """
    ctx, c = state.ctx, state.ctx.cfg.ccd
    ds = ctx.train
    sizes = ctx.image_sizes("train")
    _, selections, on_grid, found = _boxed_cams(state)   # each offset only grows the grid boxes
    rows = []
    for name, selected in selections:
        keep = selected[found[:, 0], found[:, 1]]
        boxes, owners = on_grid[keep], found[keep]
        for off in offsets:
            views = grow_boxes(boxes, owners, sizes, offset=off, resolution=c.resolution)
            rows.append({"views": "CAM crops", "selection": name, "offset": float(off),
                         "tau": state.tau if name == "tau" else float("nan"),
                         **crop_summary(views, owners, ds.boxes, iou=iou)})
    tiles = grid_views(sizes, grid)
    owners = np.stack([np.asarray([v.image for v in tiles]), -np.ones(len(tiles), dtype=np.int64)], axis=1)
    summary = crop_summary(tiles, owners, ds.boxes, iou=iou)
    summary.update(class_precision=float("nan"), on_own_object=float("nan"), mean_iou_own=float("nan"))
    rows.append({"views": f"{grid}x{grid} tiles", "selection": "-", "offset": float("nan"), "tau": float("nan"),
                 **summary})
    return pd.DataFrame(rows)


def run_cams(state: WarmupState, indices: Sequence[int] | None = None) -> np.ndarray:
    """``(N, C, h, w)`` CAMs of the warm-up student as :func:`ccdlib.methods.run_ccd` crops from them: on the
    ``ccd.cam_image_size`` input (released: 640 px; 0 = the student's size) and alpha-scaled when ``ccd.cam_alpha``."""
    c, trainer = state.ctx.cfg.ccd, state.trainer
    idx = np.arange(len(state.ctx.train)) if indices is None else np.asarray(indices)
    return trainer.cams(indices=idx, alpha=trainer.alpha if c.cam_alpha else None,
                        image_size=c.cam_image_size or state.ctx.cfg.student.image_size)


def _boxed_cams(state: WarmupState) -> tuple[np.ndarray, tuple, np.ndarray, np.ndarray]:
    """``(cams, selections, grid boxes, owners)``: :func:`run_cams`, the two class selections (``"tau"``, ``"ground
    truth"``) and :func:`~ccdlib.label_update.cam_grid_boxes` of every (image, class) either selects, computed once
    per state (kept in ``state.boxed``): :func:`crop_diagnostics` and :func:`localisation` read the same ones."""
    if getattr(state, "boxed", None) is None:
        c, ds = state.ctx.cfg.ccd, state.ctx.train
        cams = run_cams(state)
        selections = (("tau", np.asarray(state.selected, bool)), ("ground truth", ds.labels.astype(bool)))
        on_grid, found = cam_grid_boxes(cams, selections[0][1] | selections[1][1], resolution=c.resolution,
                                        threshold=c.cam_threshold, box_rule=c.box_rule)
        state.boxed = (cams, selections, on_grid, found)
    return state.boxed


def localisation(state: WarmupState, *, iou: float = 0.5) -> pd.DataFrame:
    """How well the warm-up student's CAMs localise, in terms CCD's crop rule can meet (issue 22 §4), on the maps the
    run crops from (:func:`run_cams`). One row per (metric, selection) with ``value``, ``chance`` and ``n``
    (percentages x100); ``selection`` = ``"tau"`` (CCD's classes) or ``"ground truth"`` (the image's true classes):

    - ``pointing game``: the CAM's peak inside an object of its class, against the share of the image those
      objects cover (:func:`ccdlib.crop_metrics.pointing_game`; scored on present classes only);
    - ``object area inside its class's crop``: :func:`ccdlib.crop_metrics.object_area_in_crop` of the crops at
      the run's ``ccd.offset``, against the crop's share of the image;
    - ``crop IoU >= iou with an object of its class``: the existing column of ``cam_crops_vs_tiles``, which the
      crop rule can hardly meet (a box around the CAM's top pixels grown by ``offset``); its ``chance`` column holds
      the same criterion for the ground-truth boxes grown by the same offset, the most a grown box can score.
    """
    ctx, c = state.ctx, state.ctx.cfg.ccd
    ds, sizes = ctx.train, ctx.image_sizes("train")
    cams, selections, on_grid, found = _boxed_cams(state)
    # the ground-truth boxes grown by the offset (the oracle control's views), and their IoU with themselves
    grown_views, _ = object_views(ds.boxes, sizes, offset=c.offset, resolution=c.resolution)
    objects = np.concatenate([np.asarray(b, dtype=np.float64).reshape(-1, 5)[:, 1:] for b in ds.boxes]) \
        if grown_views else np.zeros((0, 4))
    grown_iou = [float(box_iou(np.asarray([v.box]), o[None])[0, 0]) for v, o in zip(grown_views, objects)]
    grown = 100 * float(np.mean(np.asarray(grown_iou) >= iou)) if grown_iou else float("nan")
    rows = []
    for name, selected in selections:
        pairs = np.argwhere(selected)
        point = pointing_game(cam_peaks(cams, pairs, sizes, resolution=c.resolution), pairs, ds.boxes, sizes)
        keep = selected[found[:, 0], found[:, 1]]
        views = grow_boxes(on_grid[keep], found[keep], sizes, offset=c.offset, resolution=c.resolution)
        area = object_area_in_crop(views, found[keep], ds.boxes, sizes)
        summary = crop_summary(views, found[keep], ds.boxes, iou=iou)
        rows += [{"metric": "pointing game (CAM peak inside an object of its class)", "selection": name,
                  "value": point["hit"], "chance": point["chance"], "n": point["n"]},
                 {"metric": "object area inside its class's crop", "selection": name, "value": area["share"],
                  "chance": area["chance"], "n": area["objects"]},
                 {"metric": f"crop IoU >= {iou:g} with an object of its class (chance: GT boxes grown by the offset)",
                  "selection": name, "value": summary["on_own_object"], "chance": grown, "n": float(len(views))}]
    return pd.DataFrame(rows)
