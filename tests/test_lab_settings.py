"""`make lab` opens JupyterLab without the "official Jupyter news" prompt (issue 17 §3): the project's overrides.json
is the folder `make lab` passes as the app settings folder, and its keys are ones the installed JupyterLab knows.
The end-to-end check (a browser) is `make lab-screenshot`."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ROOT / ".jupyter" / "lab" / "settings"
PLUGIN = "@jupyterlab/apputils-extension:notification"


def test_overrides_turn_the_news_prompt_off():
    overrides = json.loads((SETTINGS / "overrides.json").read_text(encoding="utf-8"))
    assert overrides[PLUGIN] == {"fetchNews": "false", "checkForUpdates": False}


def test_make_lab_uses_the_project_settings():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^LAB_SETTINGS := \$\(CURDIR\)/\.jupyter/lab/settings$", makefile, re.M)
    lab = re.search(r"^lab: .*\n\t(.*)$", makefile, re.M).group(1)
    assert "--LabApp.app_settings_dir=$(LAB_SETTINGS)" in lab
    shot = re.search(r"^lab-screenshot: .*\n\t(.*)$", makefile, re.M).group(1)
    assert "LAB_APP_SETTINGS_DIR=$(LAB_SETTINGS)" in shot and "scripts/lab_screenshot.sh" in shot


def test_override_keys_exist_in_the_installed_jupyterlab():
    schema = Path(sys.prefix) / "share/jupyter/lab/schemas/@jupyterlab/apputils-extension/notification.json"
    if not schema.exists():
        pytest.skip("JupyterLab is not installed in this environment")
    props = json.loads(schema.read_text(encoding="utf-8"))["properties"]
    overrides = json.loads((SETTINGS / "overrides.json").read_text(encoding="utf-8"))[PLUGIN]
    for key, value in overrides.items():
        assert key in props, f"JupyterLab no longer has {PLUGIN} {key}"
        allowed = [o["const"] for o in props[key].get("oneOf", [])] or None
        assert allowed is None or value in allowed, (key, value, allowed)
