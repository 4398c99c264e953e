"""Issue 17 §4: inputs tried as a new user would. Each case gives a clear error naming the culprit (exit 2 from the
CLI, before the expensive work where the input is known then) or the right result. The case -> test map is the
"Inputs (issue 17)" section of tests/RELIABILITY.md."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ccdlib.runs
from ccdlib.__main__ import main
from ccdlib.config import apply_overrides, config_from_dict, load_config, run_config_from_params
from ccdlib.errors import CheckpointError, ConfigError, DatasetError, OutputError
from ccdlib.teachers import TeacherConfig

pytestmark = [pytest.mark.filterwarnings("ignore:.*have no positive image:UserWarning"),
              pytest.mark.filterwarnings("ignore:class bias:UserWarning")]


def _boom(*args, **kwargs):
    raise AssertionError("expensive work started before the problem was reported")


@pytest.fixture
def no_expensive_work(monkeypatch):
    """Every step after config validation fails the test if it is reached."""
    for name in ("make_context", "load_data", "get_teacher", "run_ccd", "run_cdul", "run_teacher_global",
                 "run_supervised"):
        monkeypatch.setattr(ccdlib.runs, name, _boom)
    for method in list(ccdlib.runs.RUNNERS):
        monkeypatch.setitem(ccdlib.runs.RUNNERS, method, _boom)


@pytest.fixture
def captured_run(monkeypatch):
    """Replace ``runs.run`` by a recorder: the CLI's config reaches it, nothing runs."""
    seen = []

    def fake_run(cfg, **kw):
        seen.append(cfg)
        return {"name": cfg.name, "selected": {}}
    monkeypatch.setattr(ccdlib.runs, "run", fake_run)
    return seen


# ----------------------------------------------------------------------------------- 5. --set values
@pytest.mark.parametrize("item, field, expected", [
    ("out_dir=runs/res #2", "out_dir", "runs/res #2"),          # '#' was a YAML comment: results in runs/res
    ("out_dir=runs/res#2", "out_dir", "runs/res#2"),
    ("tag=no", "tag", "no"),                                    # YAML: False
    ("tag=2024-01-01", "tag", "2024-01-01"),                    # YAML: a date
    ("tag=a: b", "tag", "a: b"),                                # YAML: a mapping
    ("out_dir='quoted #3'", "out_dir", "quoted #3"),            # a quoted value (the old advice) is unquoted
    ("data.root=null", "data.root", None),                      # null still means None where allowed
    ("cache_dir=~", "cache_dir", None),
])
def test_set_keeps_the_text_of_string_fields(item, field, expected):
    cfg = load_config(None, [item])
    obj = cfg
    for part in field.split("."):
        obj = getattr(obj, part)
    assert obj == expected
    d = apply_overrides({}, [item])
    assert (d[field] if "." not in field else d["data"]["root"]) == expected


def test_set_values_yaml_turns_into_other_types_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"'epochs=2024-01-01'.* as a date .* epochs must be an integer"):
        load_config(None, ["epochs=2024-01-01"])
    with pytest.raises(ConfigError, match=r"'ccd\.r=a: b'.* as a mapping .* ccd\.r must be a number"):
        load_config(None, ["ccd.r=a: b"])
    assert load_config(None, ["ccd.debiasing=no"]).ccd.debiasing is False    # a bool field: YAML's booleans
    assert load_config(None, ["epochs=3", "ccd.r=0.5"]).epochs == 3           # numbers still parsed


def test_set_with_hash_through_the_cli(captured_run, tmp_path, capsys):
    out = str(tmp_path / "res #2")
    assert main(["run", "--set", f"out_dir={out}", "--set", "epochs=3"]) == 0
    assert captured_run[0].out_dir == out and captured_run[0].epochs == 3
    assert main(["run", "--set", "epochs=2024-01-01"]) == 2
    assert "epochs must be an integer" in capsys.readouterr().err


# ------------------------------------------------------------------------------ 6. one template string
def test_one_template_string_is_one_template(tmp_path):
    assert load_config(None, ["teacher.templates=a photo of the {}."]).teacher.templates == ("a photo of the {}.",)
    assert load_config(None, ["teacher.templates=['a {}', 'the {}']"]).teacher.templates == ("a {}", "the {}")
    p = tmp_path / "run.yaml"
    p.write_text("teacher:\n  templates: 'a photo of a {}'\n")
    assert load_config(p).teacher.templates == ("a photo of a {}",)
    assert config_from_dict({"teacher": {"templates": "an {}"}}).teacher.templates == ("an {}",)
    assert TeacherConfig(templates="the {}").templates == ("the {}",)
    assert run_config_from_params(dict(teacher_templates="x {}")).teacher.templates == ("x {}",)
    with pytest.raises(ConfigError, match=r"placeholder.*\['a photo'\]"):   # the string, not its characters
        load_config(None, ["teacher.templates=a photo"])


@pytest.mark.parametrize("value", [3, {"a": "{}"}, [1, "a {}"]])
def test_templates_of_another_type_say_a_list_of_strings_is_expected(value):
    with pytest.raises(ConfigError, match=r"teacher\.templates must be a list of strings"):
        config_from_dict({"teacher": {"templates": value}})


def test_templates_string_through_the_cli(captured_run, capsys):
    assert main(["run", "--set", "teacher.templates=a photo of the {}."]) == 0
    assert captured_run[0].teacher.templates == ("a photo of the {}.",)


# ---------------------------------------------------------------------------- 9. --config is a folder
def test_config_folder_is_named(tmp_path, no_expensive_work, capsys):
    with pytest.raises(ConfigError, match=rf"config {tmp_path} is a folder, expected a YAML file"):
        load_config(tmp_path)
    assert main(["run", "--config", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config ") and "is a folder" in err and "Traceback" not in err
