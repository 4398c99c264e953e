"""Issue 17 §2: every table and figure in reports/ says what made it (ccdlib.report.PROVENANCE_KEYS).

The caption of each saved table and figure ends with "Made by: protocol ...; seeds ...; schedule ...; checkpoint
rule ...; teacher ...; test images ..." and its provenance entry holds the same values under ``made_by``; a save
that cannot say all six raises before it writes anything.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from ccdlib import report, report_index  # noqa: E402
from ccdlib.report import PROVENANCE_KEYS, Reporter, made_by_from_params  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PARAMS = ROOT / "notebooks" / "params" / "default.yaml"
PROVENANCE = ROOT / "reports" / "provenance.json"

FULL = {"protocol": "shared", "seeds": "0,1,2", "schedule": "3140 steps, checkpoint every 314, CCD warm-up 628",
        "rule": "few_label", "teacher": "conse efficientnet-lite0 (hierarchy)", "test_images": 500}
TABLE = pd.DataFrame({"method": ["CCD"], "mAP": [50.0]})


def test_provenance_keys_are_the_six_of_the_issue():
    assert PROVENANCE_KEYS == ("protocol", "seeds", "schedule", "rule", "teacher", "test_images")


def test_a_table_without_a_rule_raises_and_writes_nothing(tmp_path):
    params = yaml.safe_load(DEFAULT_PARAMS.read_text())
    rep = Reporter(tmp_path, notebook="00_demo", params=params)     # everything but the rule is derived
    with pytest.raises(ValueError, match=r"table 'scores'.*missing \['rule'\].*made_by"):
        rep.save_table(TABLE, "scores", caption="a table")
    fig = plt.figure()
    with pytest.raises(ValueError, match=r"figure 'curve'.*'rule'"):
        rep.save_figure(fig, "curve", caption="a figure")
    plt.close(fig)
    with pytest.raises(ValueError, match="'rule'"):                  # an empty value is missing too
        rep.save_table(TABLE, "scores", made_by={"rule": "  "})
    assert not any(tmp_path.rglob("*")), "nothing may be written before the check"


def test_a_save_override_beats_the_reporter_and_an_empty_reporter_names_every_key(tmp_path):
    with pytest.raises(ValueError) as err:
        Reporter(tmp_path, notebook="00_demo").save_table(TABLE, "t")
    assert all(repr(k) in str(err.value) for k in PROVENANCE_KEYS)
    rep = Reporter(tmp_path, notebook="00_demo", made_by=FULL)
    rep.save_table(TABLE, "t", caption="Gt-free rows.", made_by={"rule": "gt_free"})
    entry = json.loads((tmp_path / "provenance.json").read_text())["table/t"]
    assert entry["made_by"]["rule"] == "gt_free" and "checkpoint rule gt_free;" in entry["caption"]
    assert rep.made_by["rule"] == "few_label"                         # the override is for that save only


def test_with_every_key_the_caption_in_provenance_says_each_value(tmp_path):
    rep = Reporter(tmp_path, notebook="00_demo", made_by=FULL)
    rep.made_by["rule"] = "none (no training)"
    rep.save_table(TABLE, "scores", caption="Two rows.")
    fig = plt.figure()
    rep.save_figure(fig, "curve", caption="A line.")
    plt.close(fig)
    report.save_table(TABLE, "helper", out_dir=tmp_path, notebook="00_demo", made_by=FULL)   # module helpers
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert set(prov) == {"table/scores", "figure/curve", "table/helper"}
    for key, entry in prov.items():
        want = {**FULL, "rule": "few_label" if key == "table/helper" else "none (no training)"}
        assert entry["made_by"] == want
        for k in PROVENANCE_KEYS:
            assert str(want[k]) in entry["caption"], (key, k)
    assert prov["table/scores"]["caption"] == (
        "Two rows. Made by: protocol shared; seeds 0,1,2; schedule 3140 steps, checkpoint every 314, CCD warm-up "
        "628; checkpoint rule none (no training); teacher conse efficientnet-lite0 (hierarchy); test images 500.")
    report_index.build_index(tmp_path, render_html=False)
    assert "checkpoint rule none (no training)" in (tmp_path / "README.md").read_text()


def test_made_by_from_the_default_params():
    params = yaml.safe_load(DEFAULT_PARAMS.read_text())
    assert made_by_from_params(params) == {
        "protocol": "disjoint+shared", "seeds": "0,1,2",
        "schedule": "3140 steps, checkpoint every 314, CCD warm-up 628", "rule": None,
        "teacher": "conse efficientnet-lite0 (hierarchy)", "test_images": "500"}
    # the notebooks other than 04 pass their RunConfig keys only (ccdlib.tables.params.config_params): one protocol
    from ccdlib.tables import config_params
    single = made_by_from_params({**config_params(params), "seeds": params["seeds"]})
    assert single["protocol"] == "shared" and single["seeds"] == "0,1,2"
    assert made_by_from_params(config_params(params))["seeds"] == "0"          # no seeds list: the seed


def test_made_by_from_other_params():
    assert made_by_from_params({}) == dict.fromkeys(PROVENANCE_KEYS)
    assert made_by_from_params({"data_kind": "mosaic"})["protocol"] == "disjoint"    # DataConfig.stamps default
    voc = made_by_from_params({"data_kind": "voc2007", "data_n_test": 500, "seed": 1, "epochs": 10, "steps": 3140,
                               "teacher_backend": "open_clip", "teacher_arch": "RN50x64",
                               "teacher_conse_hierarchy": True})
    assert voc == {"protocol": "voc2007", "seeds": "1", "schedule": "10 epochs", "rule": None,
                   "teacher": "open_clip RN50x64", "test_images": None}    # real data: the notebook counts
    assert made_by_from_params({"steps": 24, "epochs": None, "eval_every_steps": 6, "ccd_warmup_steps": 6}
                               )["schedule"] == "24 steps, checkpoint every 6, CCD warm-up 6"


def _saved_entries() -> dict:
    if not PROVENANCE.exists():
        return {}
    return {k: e for k, e in json.loads(PROVENANCE.read_text()).items() if e.get("kind") in ("table", "figure")}


_ENTRIES = _saved_entries()


@pytest.mark.skipif(not _ENTRIES or not any("made_by" in e for e in _ENTRIES.values()),
                    reason="reports/provenance.json predates issue 17 §2 (no entry has made_by): regenerate reports/")
def test_every_committed_table_and_figure_says_what_made_it():
    bad = {}
    for key, e in _ENTRIES.items():
        m = e.get("made_by") or {}
        missing = [k for k in PROVENANCE_KEYS if m.get(k) is None or str(m.get(k)).strip() == ""]
        if missing:
            bad[key] = missing
        elif "Made by:" not in e.get("caption", ""):
            bad[key] = "caption without 'Made by:'"
    assert not bad, f"tables/figures in reports/ that do not say what made them: {bad}"
