"""Fold finished runs into the study's tables (notebooks 04, 05, 06): data in, ``pandas.DataFrame`` out.

Every function here reads what :func:`ccdlib.runs.run` returns (the JSON of a run: ``method``, ``selected``,
``history``, ``pseudo_label_quality``...) or plain arrays; none trains or scores anything, so each is fast and
unit-tested on hand-made inputs (``tests/test_tables.py``).

- :func:`main_table`, :func:`selection_rules_table`, :func:`dataset_columns` -- the main results table
  (method.md §9) with the checkpoint-selection rule of every row (method.md §7).
- :func:`published_numbers` -- the papers' published mAP (method.md §10), from ``ccdlib/data/published.yaml``.
- :func:`epoch_curves`, :func:`selected_epochs` -- test mAP per epoch and the epochs each rule picked.
- :func:`ablation_grid`, :func:`ablation_table` -- one-override CCD ablations against the default run.
- :func:`stage_quality_table`, :func:`per_class_stage_ap`, :func:`initial_stage_labels`,
  :func:`load_stage_labels` -- pseudo-label quality after each stage, overall and per class.
- :func:`flat_config_keys`, :func:`config_params` -- which flat notebook parameters are :class:`RunConfig` keys.
- :class:`SeedRun`, :func:`seeded_main_table`, :func:`protocol_columns`, :func:`seeded_score_table`,
  :func:`seed_values` -- the same over training seeds, with bootstrap intervals.
- :func:`claims_table`, :func:`claims_paragraph`, :func:`view_and_bias_claims` -- the papers' claims, tested.
- :func:`view_controls_table`, :func:`path_table` -- issue 22: CCD's view controls and the CDUL -> CCD path.

One module per table family, each importing only the ones above it: ``labels`` (names shared by every
table), ``main``, ``ablations``, ``stages``, ``params``, ``seeded``, ``claims`` and ``mechanisms`` (use ``seeded``).
Import from ``ccdlib.tables``.
"""
from __future__ import annotations

from ..config import flat_config_keys  # re-exported for notebooks
from .ablations import Ablation, ablation_grid, ablation_table
from .claims import CLAIMS, claims_paragraph, claims_table, view_and_bias_claims
from .labels import MAIN_METRICS, METHOD_LABELS, RULE_LABELS, method_label
from .labels import _method_key  # noqa: F401  (private, used by ccdlib.fairness and notebook 04)
from .mechanisms import mechanism_paragraph, mechanism_summary, path_table, view_controls_table
from .main import (DATASET_COLUMNS, dataset_columns, epoch_curves, main_table, published_numbers,
                   selected_epochs, selection_rules_table)
from .params import config_params
from .seeded import SeedRun, protocol_columns, seed_values, seeded_main_table, seeded_score_table
from .stages import (PSEUDO_LABELS_FILE, STAGE_LABELS, STAGES, initial_stage_labels, load_stage_labels,
                     per_class_stage_ap, stage_quality_table)

__all__ = [
    "MAIN_METRICS", "RULE_LABELS", "METHOD_LABELS", "DATASET_COLUMNS", "STAGES", "STAGE_LABELS",
    "method_label", "main_table", "selection_rules_table", "dataset_columns", "published_numbers",
    "epoch_curves", "selected_epochs", "Ablation", "ablation_grid", "ablation_table", "stage_quality_table",
    "per_class_stage_ap", "initial_stage_labels", "load_stage_labels", "flat_config_keys", "config_params",
    "PSEUDO_LABELS_FILE", "SeedRun", "seeded_main_table", "protocol_columns", "CLAIMS", "claims_table",
    "claims_paragraph", "seeded_score_table", "seed_values", "view_and_bias_claims", "view_controls_table",
    "path_table", "mechanism_paragraph", "mechanism_summary",
]
