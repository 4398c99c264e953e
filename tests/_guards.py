"""Shared guards of the "before any expensive work" tests: the module a run looks each step up in, a function that
fails the test when reached, and the fixture that puts it in every step after config validation."""
from __future__ import annotations

import pytest

import ccdlib.context
import ccdlib.inputs
import ccdlib.methods
import ccdlib.runs

#: the module a run looks each step up in (the one a test patches to catch it)
LOOKED_UP_IN = {"make_context": ccdlib.runs, "load_data": ccdlib.inputs, "get_teacher": ccdlib.context,
                **{m: ccdlib.methods for m in ("run_ccd", "run_cdul", "run_teacher_global", "run_supervised")}}


def _boom(*args, **kwargs):
    raise AssertionError("expensive work started before the problem was reported")


@pytest.fixture
def no_expensive_work(monkeypatch):
    """Every step after config validation fails the test if it is reached."""
    for name in ("make_context", "load_data", "get_teacher", "run_ccd", "run_cdul", "run_teacher_global",
                 "run_supervised"):
        monkeypatch.setattr(LOOKED_UP_IN[name], name, _boom)
    for method in list(ccdlib.methods.RUNNERS):
        monkeypatch.setitem(ccdlib.methods.RUNNERS, method, _boom)
