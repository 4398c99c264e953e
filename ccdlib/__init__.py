"""ccdlib: annotation-free multi-label classification -- CCD (CVPR 2025) and CDUL (ICCV 2023), reproduced.

The public API is re-exported here; import from ``ccdlib``, not from its modules.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .config import (CCDConfig, CDULConfig, DataConfig, RunConfig, load_config, run_config_from_params)
from .datasets import ClassList, MultiLabelDataset, load_class_list
from .errors import (CCDError, CheckpointError, ConfigError, DatasetError, DataSetupError, TeacherError)
from .label_update import (calibrate_class_threshold, cam_boxes, cam_to_box, classifier_guided_label_update,
                           local_pseudo_labels, mix_labels)
from .metrics import evaluate, mean_average_precision, threshold_metrics, topk_metrics
from .mosaic import build_mosaics, embedded_dataset, read_mosaic
from .pseudolabels import (ccd_initial_pseudo_labels, cdul_aggregate, cdul_gradient_alignment_update,
                           cdul_initial_pseudo_labels, class_bias, confident_images, debias, entropy,
                           label_smoothing_floor)
from .pseudolabels import cdul_alignment_schedule, cdul_bernoulli_alignment_update, cdul_kl_label_gradient
from .readers import VOC_CLASSES, load_dataset, read_coco, read_nuswide, read_voc
from .context import (Context, check_inputs_unchanged, global_probabilities, grid_probabilities, make_context,
                      pseudo_label_quality, view_probabilities)
from .inputs import check_writable, input_fingerprint
from .methods import RunResult, run_ccd, run_cdul, run_supervised, run_teacher_global
from .run_store import load_result, load_test_scores, save_test_scores
from .runs import run, run_with_test_scores
from .selection import select_checkpoints
from .training_log import TrainingState
from .errors import OutputError
from .stats import (Interval, bootstrap_map, bootstrap_metric, paired_bootstrap_difference, seed_averaged_scores,
                    seed_mean_sd)
from .scoring import embed_views, score_views
from .student import CAMStudent, StudentConfig, build_student, cam_to_logits, load_student_checkpoint
from .trainer import StudentTrainer
from .teachers import (ConSETeacher, OpenCLIPTeacher, Teacher, TeacherConfig, build_teacher, fit_logit_scale,
                       teacher_probabilities)
from .views import View, expand_box, global_views, grid_boxes, grid_views, to_rgb

__all__ = [n for n in dir() if not n.startswith("_") and n not in ("annotations",)]
