"""notebooks/params/*.yaml build valid RunConfigs, and every notebook has one well-formed `parameters` cell.

papermill injects every key of a params file into every notebook. The keys that name a RunConfig field
(``<section>_<field>`` or a top-level field) must build a RunConfig (nothing is loaded: placeholder paths are
fine); the others must be known notebook-only keys, so that a misspelt config key fails here instead of being
silently ignored.
"""
import ast
import json
from pathlib import Path

import pytest
import yaml

from ccdlib import RunConfig, run_config_from_params
from ccdlib.tables import config_params, flat_config_keys

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PARAMS = sorted((NOTEBOOKS / "params").glob("*.yaml"))

#: Keys read by notebooks only (``out_dir`` is also a RunConfig key, but a notebook's out_dir is its reports
#: folder; runs go to ``out_dir/runs``).
NOTEBOOK_KEYS = {"out_dir", "n_examples", "force", "ablation_switches", "ablation_r", "ablation_offset",
                 "ablation_bound", "ablation_box_rule", "seeds", "stamp_protocols", "n_bootstrap", "view_split",
                 "budget_factors", "warmup_steps_grid", "ga_every_grid", "mechanism_seeds", "protocol_seeds",
                 "ablation_seeds", "budget_seeds", "ga_step_grid", "control_protocols", "path_protocols",
                 "view_controls"}

#: Parameter names shared by all notebooks (a notebook that uses one of these settings uses this name).
SHARED = {"out_dir", "cache_dir", "data_kind", "data_root", "data_n_train", "data_n_test", "teacher_backend",
          "teacher_arch", "teacher_pretrained", "student_trunk", "student_mode", "student_image_size",
          "student_trunk_weights", "seed"}
#: The training budget: the embedded study in optimiser steps, the papers' configurations in epochs of their data.
BUDGET = ("steps", "epochs")


def test_the_expected_params_files_exist():
    assert {p.stem for p in PARAMS} >= {"default", "voc2007", "voc2012", "coco2014", "nuswide"}


@pytest.mark.parametrize("path", PARAMS, ids=[p.stem for p in PARAMS])
def test_params_file_builds_a_run_config(path):
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict) and data
    unknown = set(data) - flat_config_keys() - NOTEBOOK_KEYS
    assert not unknown, f"{path.name}: keys that are neither RunConfig fields nor notebook keys: {sorted(unknown)}"
    required = SHARED - ({"data_n_train", "data_n_test"} if data["data_kind"] != "mosaic" else set())
    assert required <= set(data), f"{path.name} lacks shared keys {sorted(required - set(data))}"
    for method in ("teacher_global", "cdul", "ccd", "supervised"):
        cfg = run_config_from_params(config_params(data), method=method, out_dir="runs")
        assert isinstance(cfg, RunConfig) and any(k in data for k in BUDGET)
        assert cfg.epochs == data.get("epochs") and cfg.steps == data.get("steps", RunConfig().steps)
    cfg = run_config_from_params(config_params(data), method="ccd")
    for r in data.get("ablation_r", []):
        run_config_from_params(config_params(data), method="ccd", ccd_r=r)
    assert cfg.data.kind == data["data_kind"]


def test_default_params_are_the_embedded_study():
    data = yaml.safe_load((NOTEBOOKS / "params" / "default.yaml").read_text())
    assert data["out_dir"] == "../reports" and data["data_kind"] == "mosaic" and data["teacher_backend"] == "conse"
    cfg = run_config_from_params(config_params(data))
    assert (cfg.data.n_train, cfg.data.n_test, cfg.teacher.arch, cfg.student.image_size, cfg.epochs) == (
        320, 500, "efficientnet-lite0", 448, None)
    # the budget is the released CCD run's in optimiser steps, for every method (issue 15)
    assert (cfg.steps, cfg.eval_every_steps, cfg.ccd.warmup_steps) == (3140, 314, 628)
    assert (cfg.cdul.ga_warmup_steps, cfg.cdul.ga_every_steps, cfg.data.few_label_k) == (314, 314, 2)
    assert (cfg.data.stamps, cfg.teacher.conse_hierarchy) == ("shared", True)   # the regime of issue 12


@pytest.mark.parametrize("name", ["voc2007", "voc2012", "coco2014", "nuswide"])
def test_paper_params_follow_the_released_code(name):
    cfg = run_config_from_params(config_params(yaml.safe_load((NOTEBOOKS / "params" / f"{name}.yaml").read_text())))
    assert (cfg.teacher.backend, cfg.teacher.arch, cfg.teacher.image_size) == ("open_clip", "RN50x64", 640)
    assert (cfg.student.trunk, cfg.student.mode, cfg.student.image_size, cfg.epochs) == ("resnet50", "finetune", 448, 10)
    assert cfg.data.kind == name and cfg.data.root


NOTEBOOK_FILES = sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=[p.stem for p in NOTEBOOK_FILES])
def test_notebook_has_one_parameters_cell_of_annotated_literals(path):
    nb = json.loads(path.read_text())
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged 'parameters'"
    cell = tagged[0]
    assert cell["cell_type"] == "code" and not cell.get("outputs"), f"{path.name}: outputs not stripped"
    source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
    for node in ast.parse(source).body:
        assert isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name), (
            f"{path.name}: line {node.lineno} of the parameters cell is not `name: type = literal`")
        ast.literal_eval(node.value)


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("[0-9]*.ipynb")), ids=lambda p: p.stem)
def test_papermill_parses_every_parameter_line(path, caplog):
    """papermill's own parser (the one behind ``papermill --help-notebook`` and its "Unable to parse line"
    warning) reads every assignment of the parameters cell, with no warning."""
    from papermill.translators import PythonTranslator

    cell = next(c for c in json.loads(path.read_text())["cells"] if "parameters" in c["metadata"].get("tags", []))
    src = "".join(cell["source"])
    assigned = [n.targets[0].id if isinstance(n, ast.Assign) else n.target.id
                for n in ast.parse(src).body if isinstance(n, (ast.Assign, ast.AnnAssign))]
    with caplog.at_level("WARNING", logger="papermill"):
        parsed = [p.name for p in PythonTranslator.inspect({"source": src})]
    assert not [r for r in caplog.records if "Unable to parse" in r.getMessage()]
    assert parsed == assigned


def test_default_params_run_seeds_and_both_stamp_protocols():
    data = yaml.safe_load((NOTEBOOKS / "params" / "default.yaml").read_text())
    assert data["seeds"] == [0, 1, 2] and data["stamp_protocols"] == ["disjoint", "shared"]
    for protocol in data["stamp_protocols"]:           # each protocol is a valid data.stamps
        assert run_config_from_params(config_params(data), data_stamps=protocol).data.stamps == protocol
    for name in ("03_local_views", "04_main_table", "05_ablations"):   # the notebooks that loop over seeds
        cell = next(c for c in json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())["cells"]
                    if "parameters" in c["metadata"].get("tags", []))
        values = {n.target.id: ast.literal_eval(n.value) for n in ast.parse("".join(cell["source"])).body}
        assert values["seeds"] == [0] and values["n_bootstrap"] <= 500, name   # nbval defaults stay small
