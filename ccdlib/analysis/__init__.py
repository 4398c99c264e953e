"""The analyses behind the figure notebooks (method.md §9): the computations that Fig. 1-3 and the qualitative
figure need beyond the method itself. Notebooks call these and plot; nothing here draws.

- Fig. 1, view dependency (:mod:`ccdlib.analysis.view_dependency`): :func:`max_over_tiles`,
  :func:`view_dependency_summary`, :func:`example_view_probabilities`, :func:`object_views`, :func:`top1_rates`.
- Fig. 2, class bias (:mod:`ccdlib.analysis.class_bias`): :func:`top1_statistics`, :func:`biased_examples`,
  :func:`debiasing_effect`.
- Fig. 3, local views (:mod:`ccdlib.analysis.local_views`): :func:`random_box_views`, :func:`max_over_views`,
  :func:`local_view_label_sets`, :func:`train_student_on_labels`, :func:`compare_label_sets`.
- Qualitative and CAM crops vs tiles, notebooks 06-07 (:mod:`ccdlib.analysis.warmup`): :func:`ccd_warmup`,
  :func:`explain_label_update`, :func:`example_updates_table`, :func:`cam_heatmap`, :func:`box_to_image`,
  :func:`crop_diagnostics`, :func:`localisation`, :func:`run_cams`; the crop metrics it reports live in :mod:`ccdlib.crop_metrics` (:func:`box_iou`,
  :func:`crop_hits`, :func:`crop_summary`), re-exported here.

Shapes: ``N`` images, ``C`` classes, ``K`` tiles per image, ``M`` views (crops) over all images. Probabilities
are the teacher's (method.md §2) unless said otherwise; percentages are x100.
"""
from __future__ import annotations

from ..crop_metrics import box_iou, crop_hits, crop_summary
from .class_bias import biased_examples, debiasing_effect, top1_statistics
from .local_views import (LOCAL_VIEW_KINDS, LabelSet, compare_label_sets, local_view_label_sets, max_over_views,
                          random_box_views, train_student_on_labels)
from .view_dependency import (VIEW_NAMES, example_view_probabilities, gt_mean_probability, max_over_tiles,
                              object_views, top1_rates, view_dependency_summary)
from .warmup import (ExampleUpdate, WarmupState, box_to_image, cam_heatmap, ccd_warmup, crop_diagnostics,
                     example_updates_table, explain_label_update, localisation, run_cams)

__all__ = [
    "VIEW_NAMES", "max_over_tiles", "gt_mean_probability", "view_dependency_summary",
    "example_view_probabilities", "object_views", "top1_rates", "top1_statistics", "biased_examples",
    "debiasing_effect", "random_box_views", "max_over_views", "LabelSet", "LOCAL_VIEW_KINDS", "local_view_label_sets",
    "train_student_on_labels", "compare_label_sets", "WarmupState", "ccd_warmup", "ExampleUpdate",
    "explain_label_update", "example_updates_table", "cam_heatmap", "box_to_image",
    "box_iou", "crop_hits", "crop_summary", "crop_diagnostics", "localisation", "run_cams",
]
