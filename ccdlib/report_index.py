"""The index of ``reports/``: ``reports/README.md`` and ``reports/index.html`` built from ``provenance.json``.

``python -m ccdlib.report_index --reports reports`` (``make report``; ``make reproduce`` runs it last) renders the
executed notebooks to HTML and writes both pages. ``index.html`` is for a browser: the claims paragraph rendered
from its Markdown, the main result (table and figure) first, a table of contents with an anchor per notebook and per
artefact, every figure a link to its full-size PNG, wide tables scrolling inside their box, and each artefact's
parameters folded away under "provenance".
"""
from __future__ import annotations

import argparse
import datetime as _dt
import html
import json
import os
import platform
import sys
from pathlib import Path

from .cache import atomic_write_text
from .report import (CLAIMS_FILE, COLUMN_FORMATS, MECHANISMS_FILE, _missing, git_commit, lock_sha256,
                     made_by_sentence, package_versions)

__all__ = ["build_index", "markdown_to_html", "MAIN_RESULT"]

_SEE_01_02 = "View dependency and class bias are measured by notebooks 01 and 02."   # replaced by their numbers
#: The artefacts a reader should meet first on index.html (when the run made them).
MAIN_RESULT = ("table/main_table_intervals", "figure/main_map_intervals")

_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1400px;margin:auto;padding:1em 1.5em;line-height:1.4}"
    "nav{font-size:13px;columns:3;column-gap:2em;border:1px solid #ddd;padding:.5em 1em;background:#fafafa}"
    "nav ul{margin:0 0 .4em 0;padding-left:1.2em}nav>b{display:block}"
    ".claims{background:#f5f8ff;border-left:4px solid #4a78c2;padding:.4em 1em;font-size:14px}"
    ".claims li{margin-bottom:.4em}"
    "figure{display:inline-block;margin:8px;vertical-align:top;width:calc(50% - 20px);min-width:420px}"
    "figure img{width:100%;height:auto;border:1px solid #ccc}figcaption{font-size:12px;color:#333}"
    ".scroll{overflow-x:auto;max-width:100%}"
    "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #bbb;padding:2px 6px;white-space:nowrap}"
    "details.prov{font-size:11px;color:#666;margin:.2em 0 1em 0}details.prov p{word-break:break-word}"
    ".cap{font-size:13px;color:#333;max-width:1100px}"
    "h2{border-bottom:1px solid #ccc;margin-top:2em}h3{margin-bottom:.2em}"
)


def markdown_to_html(text: str) -> str:
    """Markdown (bold, emphasis, code, lists, tables) as HTML, raw HTML in ``text`` escaped (mistune, which
    nbconvert uses)."""
    import mistune
    return mistune.create_markdown(plugins=["table"], escape=True)(text)


def _render_html(reports: Path) -> list[Path]:
    nb_dir = reports / "notebooks"
    out_dir = reports / "html"
    out: list[Path] = []
    if not nb_dir.exists():
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    from nbconvert import HTMLExporter
    exporter = HTMLExporter()
    for nb in sorted(nb_dir.glob("*.ipynb")):
        body, _ = exporter.from_filename(str(nb))
        atomic_write_text(out_dir / f"{nb.stem}.html", body)
        out.append(out_dir / f"{nb.stem}.html")
    return out


def _anchor(key: str) -> str:
    return key.replace("/", "-")


def _caption(e: dict) -> str:
    cap = e.get("caption", "")
    made_by = e.get("made_by")
    if isinstance(made_by, dict) and "Made by:" not in cap and not _missing(made_by):
        cap = (cap.rstrip() + " " + made_by_sentence(made_by)).strip()   # what made it, under each entry
    return cap


def _prov_line(e: dict) -> str:
    return (f"commit {e.get('commit')}, {e.get('written')}, params: "
            + ", ".join(f"{k}={v}" for k, v in sorted(e.get("params", {}).items())))


def _html_entry(reports: Path, key: str, e: dict) -> str:
    """One artefact as HTML: a figure linking its full-size PNG, or a table in a scrolling box; its provenance
    folded under a ``<details>``."""
    import pandas as pd
    name, cap = html.escape(e["name"]), html.escape(_caption(e))
    prov = (f"<details class='prov'><summary>provenance</summary><p>{html.escape(_prov_line(e))}</p></details>")
    if e["kind"] == "figure":
        png = next((f for f in e["files"] if f.endswith(".png")), None)
        pdf = next((f for f in e["files"] if f.endswith(".pdf")), None)
        return (f"<figure id='{_anchor(key)}'><a href='{png}' title='open the full-size PNG'><img src='{png}' "
                f"alt='{name}'></a><figcaption><b>{name}</b> {cap} (<a href='{png}'>full size</a> · "
                f"<a href='{pdf}'>PDF</a>){prov}</figcaption></figure>")
    csv = next((f for f in e["files"] if f.endswith(".csv")), None)
    try:
        df = pd.read_csv(reports / csv)
        tbl = df.to_html(index=False, float_format=lambda v: f"{v:.1f}", na_rep="", formatters={
            c: (lambda v, f=f: "" if pd.isna(v) else format(v, f)) for c, f in COLUMN_FORMATS.items() if c in df})
    except (OSError, ValueError, TypeError, pd.errors.EmptyDataError):
        tbl = ""
    return (f"<section id='{_anchor(key)}'><h3>{name}</h3><p class='cap'>{cap}</p><div class='scroll'>{tbl}</div>"
            f"<p><a href='{csv}'>CSV</a></p>{prov}</section>")


def _claims_text(reports: Path) -> str:
    """The claims paragraph of notebook 04 with the view-dependency and class-bias claims of notebooks 01, 02, then
    notebook 10's mechanism sentences."""
    claims = reports / CLAIMS_FILE
    if not claims.exists():
        return ""
    from .tables import view_and_bias_claims
    extra = view_and_bias_claims(reports / "tables")
    text = claims.read_text().strip()
    if extra:
        text = "\n".join([text.replace(_SEE_01_02, "").rstrip(), *extra])
    mech = reports / MECHANISMS_FILE          # notebook 10: why, against controls (issue 22)
    if mech.exists():
        text = "\n\n".join([text, mech.read_text().strip()])
    return text


def build_index(reports: str | Path = "reports", *, params: str | Path | None = None, seconds: float | None = None,
                render_html: bool = True) -> Path:
    """Write ``reports/README.md`` and ``reports/index.html`` from ``provenance.json`` (and HTML renderings)."""
    reports = Path(reports)
    prov_path = reports / "provenance.json"
    prov = json.loads(prov_path.read_text()) if prov_path.exists() else {}
    if render_html:
        _render_html(reports)
    run_info = {"built": _dt.datetime.now().isoformat(timespec="seconds"), "commit": git_commit(reports.resolve()),
                "params": str(params) if params else None, "packages": package_versions(),
                "machine": f"{platform.machine()} {os.cpu_count()} cpu", "lock_sha256": lock_sha256()}
    if seconds is not None:
        run_info["reproduce_seconds"] = seconds
        atomic_write_text(reports / "timing.json", json.dumps(run_info, indent=1))
    by_nb: dict[str, list[tuple[str, dict]]] = {}
    for key, entry in sorted(prov.items()):
        by_nb.setdefault(entry.get("notebook", "?"), []).append((key, entry))
    built = (f"Built {run_info['built']} at commit `{run_info['commit']}`"
             + (f" in {seconds / 60:.1f} min." if seconds is not None else "."))
    claims_text = _claims_text(reports)

    md = ["# Reports", "", "Generated by `make reproduce` (papermill runs every notebook in `notebooks/` with "
          f"`{params or 'notebooks/params/default.yaml'}`). {built}", ""]
    if claims_text:
        md[1:1] = ["", claims_text]
    h = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>"
         "<meta name='viewport' content='width=device-width, initial-scale=1'><title>ccd-study reports</title>"
         f"<style>{_CSS}</style></head><body>",
         f"<h1>ccd-study reports</h1><p>Generated by <code>make reproduce</code> with "
         f"<code>{html.escape(str(params or 'notebooks/params/default.yaml'))}</code>. "
         f"Built {html.escape(run_info['built'])} at commit <code>{html.escape(run_info['commit'])}</code>"
         + (f"; <code>make reproduce</code> took {seconds / 60:.1f} min" if seconds is not None else "") + ".</p>"]
    if claims_text:
        h.append(f"<div class='claims' id='claims'>{markdown_to_html(claims_text)}</div>")
    main = [(k, prov[k]) for k in MAIN_RESULT if k in prov]
    if main:
        h.append("<h2 id='main-result'>Main result</h2>")
        h += [_html_entry(reports, f"main-{k}", e) for k, e in main]
    toc = ["<nav id='contents'><b>Contents</b>"]
    for nb, entries in sorted(by_nb.items()):
        toc.append(f"<a href='#{html.escape(nb)}'>{html.escape(nb)}</a><ul>"
                   + "".join(f"<li><a href='#{_anchor(k)}'>{html.escape(e['name'])}</a> ({e['kind']})</li>"
                             for k, e in entries) + "</ul>")
    h.append("".join(toc) + "<a href='#environment'>Environment</a></nav>")
    for nb, entries in sorted(by_nb.items()):   # notebooks in their numbered order
        page = reports / "html" / f"{nb}.html"
        md += [f"## {nb}", "", f"[executed notebook](notebooks/{nb}.ipynb)"
               + (f" · [HTML](html/{nb}.html)" if page.exists() else ""), ""]
        h.append(f"<h2 id='{html.escape(nb)}'>{html.escape(nb)}</h2><p><a href='notebooks/{nb}.ipynb'>executed "
                 f"notebook</a>" + (f" · <a href='html/{nb}.html'>HTML</a>" if page.exists() else "")
                 + " · <a href='#contents'>contents</a></p>")
        for key, e in entries:
            cap, prov_md = _caption(e), f"<details><summary>provenance</summary>\n\n{_prov_line(e)}\n\n</details>"
            if e["kind"] == "figure":
                png = next((f for f in e["files"] if f.endswith(".png")), None)
                pdf = next((f for f in e["files"] if f.endswith(".pdf")), None)
                md += [f"### {e['name']}", "", cap, "", f"[![{e['name']}]({png})]({png})", "", f"[PDF]({pdf})", "",
                       prov_md, ""]
            else:
                csv = next((f for f in e["files"] if f.endswith(".csv")), None)
                mdf = next((f for f in e["files"] if f.endswith(".md")), None)
                table_md = (reports / mdf).read_text() if mdf and (reports / mdf).exists() else ""
                md += [f"### {e['name']}", "", cap, "", table_md, f"[CSV]({csv})", "", prov_md, ""]
            h.append(_html_entry(reports, key, e))
    pk = ", ".join(f"{k} {v}" for k, v in run_info["packages"].items())
    pk += f"; requirements.lock sha256 {run_info['lock_sha256']}"
    md += ["## Environment", "", f"{run_info['machine']}; {pk}", ""]
    h.append(f"<h2 id='environment'>Environment</h2><p class='prov'>{html.escape(run_info['machine'])}; "
             f"{html.escape(pk)}</p></body></html>")
    atomic_write_text(reports / "README.md", "\n".join(md))
    atomic_write_text(reports / "index.html", "\n".join(h))
    return reports / "index.html"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ccdlib.report_index", description=__doc__.splitlines()[0])
    ap.add_argument("--reports", default="reports")
    ap.add_argument("--params", default=None)
    ap.add_argument("--seconds", type=float, default=None, help="wall time of the reproduce run, recorded")
    ap.add_argument("--no-html", action="store_true")
    args = ap.parse_args(argv)
    path = build_index(args.reports, params=args.params, seconds=args.seconds, render_html=not args.no_html)
    print(f"wrote {path} and {Path(args.reports) / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
