"""The README's numbers agree with the committed tables (issue 23 §1.3): the headroom sentence against
``reports/tables/main_table_intervals.csv``, the budget's passes, checkpoints and warm-up against
:func:`ccdlib.schedule.training_schedule` on the default parameters and against ``convergence.csv``, the training
split's size against the claims paragraph, and every "N notebooks" against ``notebooks/``."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ccdlib.config import run_config_from_params
from ccdlib.schedule import training_schedule
from ccdlib.tables import config_params

ROOT = Path(__file__).resolve().parents[1]
TABLES = ROOT / "reports" / "tables"


def _readme(name: str = "README.md") -> str:
    return " ".join((ROOT / name).read_text().split())   # line breaks as spaces


def _seedavg(table: pd.DataFrame, method: str, protocol: str) -> str:
    row = table[table["method"] == method].iloc[0]
    return str(row[f"{protocol}: mAP seed-avg [95% CI]"]).split(" ")[0]


@pytest.mark.skipif(not (TABLES / "main_table_intervals.csv").exists(), reason="no committed reports")
def test_headroom_numbers_are_the_main_tables():
    m = re.search(r"supervised bound reaches (\S+) on shared stamps \((\S+) on disjoint ones\), while the teacher's "
                  r"zero-shot prediction reaches (\S+) \((\S+)\) and the best annotation-free student, CCD, (\S+) "
                  r"\((\S+)\)", _readme())
    assert m, "the README's headroom sentence changed: update this test with it"
    t = pd.read_csv(TABLES / "main_table_intervals.csv")
    want = [_seedavg(t, "supervised (upper bound)", "shared"), _seedavg(t, "supervised (upper bound)", "disjoint"),
            _seedavg(t, "teacher zero-shot (global)", "shared"), _seedavg(t, "teacher zero-shot (global)", "disjoint"),
            _seedavg(t, "CCD", "shared"), _seedavg(t, "CCD", "disjoint")]
    assert list(m.groups()) == want
    best = max(t[f"{p}: mAP seed-avg [95% CI]"].str.split(" ").str[0].astype(float)[~t["method"].str.contains(
        "supervised")].max() for p in ("shared",))
    assert float(m.group(5)) == best, "CCD is no longer the best annotation-free student on shared stamps"


@pytest.mark.skipif(not (TABLES / "convergence.csv").exists(), reason="no committed reports")
def test_budget_sentence_is_the_schedule_the_runs_record():
    text = _readme()
    m = re.search(r"the (\d+) training mosaics less the (\d+) few-label images leave (\d+), a pass at batch (\d+) is "
                  r"ceil\(\d+/\d+\) = (\d+) steps, so a run is (\d+) passes = ([\d,]+) steps, a checkpoint comes every "
                  r"(\d+) passes = (\d+) steps \((\d+) checkpoints, the last pass included\) and CCD's warm-up is (\d+) "
                  r"passes = (\d+) steps; CDUL trains at batch (\d+) as the reproduction does \(ceil\(\d+/\d+\) = (\d+) "
                  r"steps a pass\): (\d+) passes = ([\d,]+) steps, a checkpoint every (\d+) passes = (\d+) steps "
                  r"\((\d+) checkpoints\)", text)
    assert m, "the README's budget sentence changed: update this test with it"
    g = [int(v.replace(",", "")) for v in m.groups()]
    n_mosaics, n_few, n_train, batch, spp, passes, steps, k, k_steps, n_ckpt, warm, warm_steps = g[:12]
    cdul_batch, cdul_spp, cdul_passes, cdul_steps, cdul_k, cdul_k_steps, cdul_ckpt = g[12:]
    everything = yaml.safe_load((ROOT / "notebooks" / "params" / "default.yaml").read_text())
    params = config_params(everything)                       # the RunConfig keys of make reproduce's parameters
    claims = (TABLES / "claims.md").read_text()
    assert re.search(rf"\({n_train} train, {n_few} few-label", claims) and n_mosaics == everything["data_n_train"]
    assert n_mosaics - n_few == n_train
    cfg = run_config_from_params(params)
    ccd = training_schedule(run_config_from_params(params, method="ccd"), n_train)
    assert (batch, spp) == (cfg.student.batch_size, -(-n_train // batch))
    assert (ccd.passes, ccd.passes * spp, len(ccd.eval_passes)) == (passes, steps, n_ckpt)
    assert (ccd.eval_passes[0] + 1, (ccd.eval_passes[0] + 1) * spp) == (k, k_steps)
    assert (ccd.warmup_passes, ccd.steps_before_update) == (warm, warm_steps)
    cdul = training_schedule(run_config_from_params(params, method="cdul"), n_train)
    assert cdul_batch == cfg.cdul.batch_size and cdul_spp == -(-n_train // cdul_batch)
    assert (cdul.passes, cdul.passes * cdul_spp, len(cdul.eval_passes)) == (cdul_passes, cdul_steps, cdul_ckpt)
    assert ((cdul.eval_passes[0] + 1), (cdul.eval_passes[0] + 1) * cdul_spp) == (cdul_k, cdul_k_steps)
    conv = pd.read_csv(TABLES / "convergence.csv")          # what the committed runs recorded
    assert set(conv.loc[conv["row"] == "CCD", ["steps", "checkpoints"]].itertuples(index=False, name=None)) == \
        {(steps, n_ckpt)}
    assert set(conv.loc[conv["row"] == "CDUL", ["steps", "checkpoints"]].itertuples(index=False, name=None)) == \
        {(cdul_steps, cdul_ckpt)}


def test_notebook_counts():
    n = len(list((ROOT / "notebooks").glob("[0-9]*.ipynb")))
    for name in ("README.md", "benchmarks/README.md"):
        counts = {int(c) for c in re.findall(r"(\d+) notebooks", _readme(name))}
        assert counts <= {n}, (name, counts, n)


@pytest.mark.skipif(not (TABLES / "view_controls.csv").exists(), reason="no committed reports")
def test_mechanism_numbers_are_notebook_10s_tables():
    """The README's "Why CCD wins" paragraph is tables.mechanism_summary of the committed CSVs, and the numbers of
    the sentences after it are those tables' rows (issue 22)."""
    from ccdlib.tables import mechanism_summary
    vc, path = pd.read_csv(TABLES / "view_controls.csv"), pd.read_csv(TABLES / "cdul_to_ccd_path.csv")
    text = _readme()
    assert mechanism_summary(vc, path) in text
    d = vc.set_index("key")
    for key, words in (("random_boxes", "random positions cost {}"), ("tiles", "pooled CCD's way {}"),
                       ("true_classes", "(3 views per image) cost {}"), ("gt_boxes", "3 views per image) cost {}"),
                       ("random_classes", "(10 views) cost only {}"), ("all_classes", "(16 views) gains {}")):
        assert words.format(f"{abs(d.loc[key, 'diff_vs_ccd']):.1f}") in text, key
        assert d.loc[key, "diff_hi"] < 0 or d.loc[key, "diff_lo"] > 0, key         # each one is resolved
    assert (d.loc[["random_boxes", "tiles", "true_classes", "gt_boxes", "top_k", "random_classes"], "diff_hi"] < 0).all()
    assert d.loc["all_classes", "diff_lo"] > 0
    assert f"selects ~{d.loc['ccd', 'classes_per_image']:.0f} of the 16 classes" in text
    step = pd.read_csv(TABLES / "cdul_alignment_step.csv").set_index("ga_step")
    assert f"by {step.loc[1.0, 'label_change_mean']:.4f} on average" in text
    assert f"at most {step.loc[1.0, 'label_change_max']:.3f}" in text
    assert f"costs them {step.loc[1.0, 'labels_mAP'] - step.loc[100.0, 'labels_mAP']:.0f}" in text
    picks = pd.read_csv(TABLES / "cdul_alignment_picks.csv")
    cdul = picks[picks["row"] == "CDUL"].groupby("protocol")["pre_alignment"].agg(["sum", "count"])
    assert (f"in {cdul.loc['shared', 'sum']} of {cdul.loc['shared', 'count']} shared and "
            f"{cdul.loc['disjoint', 'sum']} of {cdul.loc['disjoint', 'count']} disjoint seeds") in text
    gen = pd.read_csv(TABLES / "generalisation.csv").set_index(["protocol", "row"])
    ccd, sup = gen.loc[("disjoint", "CCD")], gen.loc[("disjoint", "supervised (upper bound)")]
    assert (f"reach {ccd['train_vs_truth']:.1f} mAP against their truth but its test images {ccd['test_mAP']:.1f} "
            f"(supervised: {sup['train_vs_truth']:.0f} and {sup['test_mAP']:.1f}") in text
