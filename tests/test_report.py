"""ccdlib.report: figures/tables with provenance, the reports index, the commit marker."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from ccdlib.report import Reporter, git_commit  # noqa: E402
from ccdlib.report_index import build_index  # noqa: E402


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    r = tmp_path / "repo"
    (r / "reports").mkdir(parents=True)
    (r / "ccdlib").mkdir()
    (r / "ccdlib" / "x.py").write_text("a = 1\n")
    (r / "reports" / "t.md").write_text("old\n")
    _git(r, "init", "-q")
    _git(r, "-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    _git(r, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return r


def test_git_commit_ignores_changes_under_reports(repo):
    head = _git(repo, "rev-parse", "--short", "HEAD")
    assert git_commit(repo) == head
    (repo / "reports" / "t.md").write_text("regenerated\n")      # what a make reproduce run writes
    assert git_commit(repo) == head
    assert git_commit(repo / "reports") == head                     # from any folder (papermill --cwd notebooks)
    (repo / "ccdlib" / "x.py").write_text("a = 2\n")               # a code change is dirty
    assert git_commit(repo / "reports") == head + "+dirty"


def test_git_commit_outside_a_repository(tmp_path):
    assert git_commit(tmp_path) == "unknown"


def test_reporter_writes_files_provenance_and_index(tmp_path):
    made_by = {"protocol": "shared", "seeds": "0", "schedule": "none (no training)", "rule": "none (no training)",
               "teacher": "conse efficientnet-lite0", "test_images": 24}
    rep = Reporter(tmp_path, notebook="01_demo", params={"seed": 3}, made_by=made_by)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    figs = rep.save_figure(fig, "curve", caption="a line")
    plt.close(fig)
    df = pd.DataFrame({"method": ["a", "b"], "mAP": [12.345, 67.0]})
    tabs = Reporter(tmp_path, notebook="02_demo").save_table(df, "scores", caption="two rows", made_by=made_by)
    assert [p.name for p in figs] == ["curve.png", "curve.pdf"] and all(p.stat().st_size > 0 for p in figs)
    assert figs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figs[1].read_bytes()[:4] == b"%PDF"
    pd.testing.assert_frame_equal(pd.read_csv(tabs[0]), df)
    assert "| a | 12.3 |" in tabs[1].read_text()
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert set(prov) == {"figure/curve", "table/scores"}
    assert prov["figure/curve"]["params"] == {"seed": 3} and prov["figure/curve"]["notebook"] == "01_demo"
    assert "torch" in prov["table/scores"]["packages"]
    assert prov["figure/curve"]["caption"].startswith("a line Made by: protocol shared; seeds 0;")
    assert prov["table/scores"]["made_by"]["test_images"] == 24

    build_index(tmp_path, params="p.yaml", seconds=90, render_html=False)
    md = (tmp_path / "README.md").read_text()
    page = (tmp_path / "index.html").read_text()
    assert "![curve](figures/curve.png)" in md and "[CSV](tables/scores.csv)" in md and "1.5 min" in md
    assert md.index("## 01_demo") < md.index("## 02_demo")
    assert "two rows Made by: protocol shared; seeds 0; schedule none (no training)" in md
    assert "checkpoint rule none (no training); teacher conse efficientnet-lite0; test images 24." in page
    assert re.search(r"<img src='figures/curve.png'", page) and "tables/scores.csv" in page
    assert json.loads((tmp_path / "timing.json").read_text())["reproduce_seconds"] == 90


def test_tau_keeps_three_decimals_in_markdown_and_index(tmp_path):
    """issue 23: tau (~0.09) is not rounded to 0.1 where tables are rendered."""
    df = pd.DataFrame({"tau": [0.0875], "mAP": [37.25]})
    md = Reporter(tmp_path, notebook="06_demo").save_table(df, "taus", made_by=dict(
        protocol="shared", seeds="0", schedule="24 steps", rule="last", teacher="conse", test_images="8"))[1]
    assert "| 0.087 | 37.2 |" in md.read_text()
    build_index(tmp_path, render_html=False)
    page = (tmp_path / "index.html").read_text()
    assert "<td>0.087</td>" in page and "<td>37.2</td>" in page
