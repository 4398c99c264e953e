"""Reporting: the one place figures and tables are written, and the index of ``reports/``.

Notebooks call :func:`save_figure` (PNG + PDF) and :func:`save_table` (CSV + Markdown); each write also records
a provenance entry (git commit, notebook, parameters, package versions, time) in ``reports/provenance.json``.
Every table and figure says what made it (:data:`PROVENANCE_KEYS`: stamp protocol, training seeds, schedule,
checkpoint rule, teacher, test images): its caption ends with a "Made by: ..." sentence and its provenance entry
holds the same values under ``made_by``; a save that cannot say all six raises before writing anything.
:mod:`ccdlib.report_index` (``python -m ccdlib.report_index --reports reports``) renders the executed notebooks to
HTML and writes ``reports/README.md`` and ``reports/index.html`` linking every figure and table with its provenance.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from .cache import atomic_write_bytes, atomic_write_text

__all__ = ["Reporter", "save_figure", "save_table", "provenance", "package_versions", "lock_sha256",
           "CLAIMS_FILE", "MECHANISMS_FILE", "COLUMN_FORMATS", "PROVENANCE_KEYS", "made_by_from_params",
           "made_by_sentence"]

LOCK_FILE = Path(__file__).resolve().parents[1] / "requirements.lock"   # what `make setup` installs

#: The claims paragraph notebook 04 writes (``tables.claims_paragraph``); ``reports/README.md`` opens with it.
CLAIMS_FILE = "tables/claims.md"
#: Notebook 10's mechanism sentences (issue 22), written from its tables; the index puts them after the claims.
MECHANISMS_FILE = "tables/mechanisms.md"

#: What every saved table and figure must say made it (issue 17 §2). A key that does not apply is given as text
#: saying so (``rule="none (no training)"``), never left out.
PROVENANCE_KEYS = ("protocol", "seeds", "schedule", "rule", "teacher", "test_images")
#: How each key reads in the caption's "Made by: ..." sentence.
_MADE_BY_LABELS = {"protocol": "protocol", "seeds": "seeds", "schedule": "schedule", "rule": "checkpoint rule",
                   "teacher": "teacher", "test_images": "test images"}
_MOSAIC = "mosaic"
_DEFAULT_STAMPS = "disjoint"   # ccdlib.config.DataConfig.stamps


def made_by_from_params(params: dict | None) -> dict:
    """The :data:`PROVENANCE_KEYS` that a notebook's flat parameters determine; ``None`` where they do not.

    ``protocol``: the mosaic's stamp protocols joined by ``+`` (``stamp_protocols``, notebook 04) or its
    ``data_stamps`` (default ``disjoint``), or the ``data_kind`` of a real data set (``voc2007``). ``seeds``: the
    training seeds (``seeds``, else ``seed``). ``schedule``: ``steps``/``eval_every_steps``/``ccd_warmup_steps``,
    or ``epochs`` when set. ``teacher``: backend and arch (``(hierarchy)``: hierarchy-aware ConSE, the default unless
    ``teacher_conse_hierarchy`` is false).
    ``test_images``: ``data_n_test`` for the mosaic (a notebook overwrites it with ``len(ctx.test)``); real data
    sets: ``None`` until the notebook sets it. ``rule`` is never derived: each notebook says which it reads.
    """
    p = dict(params or {})
    kind = p.get("data_kind")
    mosaic = kind == _MOSAIC
    if mosaic and p.get("stamp_protocols"):
        protocol = "+".join(str(v) for v in p["stamp_protocols"])
    elif mosaic:
        protocol = p.get("data_stamps") or _DEFAULT_STAMPS
    else:
        protocol = kind
    if p.get("seeds") is not None:
        seeds = ",".join(str(v) for v in p["seeds"]) if isinstance(p["seeds"], (list, tuple)) else str(p["seeds"])
    else:
        seeds = str(p["seed"]) if p.get("seed") is not None else None
    if p.get("epochs") is not None:
        schedule = f"{p['epochs']} epochs"
    elif p.get("steps") is not None:
        schedule = (f"{p['steps']} steps, checkpoint every {p.get('eval_every_steps')}, "
                    f"CCD warm-up {p.get('ccd_warmup_steps')}")
    else:
        schedule = None
    backend, arch = p.get("teacher_backend"), p.get("teacher_arch")
    if backend and arch:
        hierarchy = p.get("teacher_conse_hierarchy")   # unset or null: on for ConSE (TeacherConfig's default)
        teacher = f"{backend} {arch}" + (" (hierarchy)" if backend == "conse" and hierarchy is not False else "")
    else:
        teacher = None
    test_images = str(p["data_n_test"]) if mosaic and p.get("data_n_test") is not None else None
    return {"protocol": protocol, "seeds": seeds, "schedule": schedule, "rule": None, "teacher": teacher,
            "test_images": test_images}


def _missing(made_by: dict) -> list[str]:
    return [k for k in PROVENANCE_KEYS if made_by.get(k) is None or str(made_by.get(k)).strip() == ""]


def made_by_sentence(made_by: dict) -> str:
    """``Made by: protocol shared; seeds 0,1,2; schedule ...; checkpoint rule last; teacher ...; test images 500.``"""
    return "Made by: " + "; ".join(f"{_MADE_BY_LABELS[k]} {made_by[k]}" for k in PROVENANCE_KEYS) + "."


def git_commit(cwd: str | Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=cwd, timeout=10)
        # "+dirty": code or notebooks differ from the commit; reports/ (what a run writes) does not count
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/",
                                ":(top,exclude)reports"], capture_output=True,
                               text=True, cwd=cwd, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": platform.python_version()}
    for pkg in ("ccdlib", "torch", "torchvision", "open_clip_torch", "numpy", "scikit-learn", "pandas",
                "efficientnet-lite-pytorch", "sentence-transformers", "papermill"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def lock_sha256(path: str | Path = LOCK_FILE) -> str | None:
    """SHA-256 of the lock file the environment was installed from (``requirements.lock``); ``None`` if absent
    (an installed copy of ccdlib without its repository)."""
    import hashlib
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def provenance(**extra: Any) -> dict:
    """Git commit, time, machine and package versions, plus whatever the caller adds (config, data, seed...)."""
    return {"commit": git_commit(Path(__file__).resolve().parent), "written": _dt.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {os.cpu_count()} cpu", "packages": package_versions(),
            "lock_sha256": lock_sha256(), **extra}


class Reporter:
    """Writes a notebook's figures and tables under ``out_dir`` and records their provenance.

    ``Reporter(out_dir, notebook="01_view_dependency", params={...}, made_by={"rule": ...})``; then
    ``save_figure(fig, "name", caption=...)``, ``save_table(df, "name", caption=...)``. Files:
    ``figures/<name>.{png,pdf}``, ``tables/<name>.{csv,md}``.

    ``self.made_by`` (:data:`PROVENANCE_KEYS`) starts from :func:`made_by_from_params` and the constructor's
    ``made_by``; notebooks update it (``reporter.made_by["test_images"] = len(ctx.test)``) and a save's own
    ``made_by`` overrides it for that table or figure. Every save needs all six keys non-empty.
    """

    def __init__(self, out_dir: str | Path, *, notebook: str, params: dict | None = None, caption: str = "",
                 made_by: dict | None = None):
        self.out_dir = Path(out_dir)
        self.notebook = notebook
        self.params = dict(params or {})
        self.caption = caption
        self.made_by = made_by_from_params(self.params)
        self.made_by.update(made_by or {})
        self._started = _dt.datetime.now()

    def _made_by(self, kind: str, name: str, caption: str, made_by: dict | None) -> tuple[str, dict]:
        """The caption with its "Made by" sentence and the values; ``ValueError`` (nothing written) if any is
        missing."""
        m = {**self.made_by, **(made_by or {})}
        missing = _missing(m)
        if missing:
            raise ValueError(f"{kind} {name!r}: its caption must say what made it; missing {missing} "
                             "(pass made_by=... or set reporter.made_by)")
        m = {k: (v if isinstance(v, (str, int, float)) else str(v)) for k, v in m.items()}
        caption = caption.rstrip()
        return (caption + " " if caption else "") + made_by_sentence(m), m

    def _record(self, kind: str, name: str, files: list[str], caption: str, extra: dict | None = None) -> None:
        path = self.out_dir / "provenance.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        data[f"{kind}/{name}"] = provenance(notebook=self.notebook, kind=kind, name=name, files=files,
                                            caption=caption, params=self.params, **(extra or {}))
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True, default=str))

    def save_figure(self, fig, name: str, *, caption: str = "", made_by: dict | None = None, dpi: int = 120,
                    **extra) -> list[Path]:
        import io
        caption, m = self._made_by("figure", name, caption, made_by)
        d = self.out_dir / "figures"
        d.mkdir(parents=True, exist_ok=True)
        files = []
        for ext in ("png", "pdf"):
            buf = io.BytesIO()
            fig.savefig(buf, format=ext, dpi=dpi, bbox_inches="tight", metadata={"CreationDate": None} if ext == "pdf" else None)
            atomic_write_bytes(d / f"{name}.{ext}", buf.getvalue())
            files.append(d / f"{name}.{ext}")
        self._record("figure", name, [str(f.relative_to(self.out_dir)) for f in files], caption,
                     {**extra, "made_by": m})
        return files

    def save_table(self, df, name: str, *, caption: str = "", made_by: dict | None = None, floatfmt: str = ".1f",
                   index: bool = False, **extra) -> list[Path]:
        caption, m = self._made_by("table", name, caption, made_by)
        d = self.out_dir / "tables"
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(d / f"{name}.csv", df.to_csv(index=index))
        atomic_write_text(d / f"{name}.md", to_markdown(df, floatfmt=floatfmt, index=index))
        files = [d / f"{name}.csv", d / f"{name}.md"]
        self._record("table", name, [str(f.relative_to(self.out_dir)) for f in files], caption,
                     {**extra, "made_by": m})
        return files

    def _save_text(self, rel: str, text: str) -> Path:
        p = self.out_dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(p, text)
        return p

    def save_mechanisms(self, text: str) -> Path:
        """Write notebook 10's mechanism sentences (Markdown) to :data:`MECHANISMS_FILE` (shown after the claims)."""
        return self._save_text(MECHANISMS_FILE, text)

    def save_claims(self, text: str) -> Path:
        """Write the claims paragraph (Markdown) to :data:`CLAIMS_FILE`; :func:`build_index` puts it at the top."""
        return self._save_text(CLAIMS_FILE, text)


#: Columns shown with more digits than ``floatfmt`` wherever a table is rendered (Markdown and index.html): tau, the
#: class-selection threshold, is ~0.09 and one decimal would hide the quantity studied (issue 23).
COLUMN_FORMATS = {"tau": ".3f", "label_change_mean": ".4f", "label_change_max": ".3f"}   # CDUL's labels barely move


def to_markdown(df, *, floatfmt: str = ".1f", index: bool = False) -> str:
    """A GitHub Markdown table (no extra dependency); floats with ``floatfmt``, or :data:`COLUMN_FORMATS`'s."""
    import math
    frame = df.reset_index() if index else df
    cols = [str(c) for c in frame.columns]

    def fmt(v: Any, f: str) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else format(v, f)
        return str(v)
    formats = [COLUMN_FORMATS.get(c, floatfmt) for c in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(v, f) for v, f in zip(row, formats)) + " |"
              for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def save_figure(fig, name: str, *, out_dir: str | Path, notebook: str = "", params: dict | None = None,
                made_by: dict | None = None, **kw) -> list[Path]:
    """One figure without a notebook's :class:`Reporter`; ``made_by`` as for :meth:`Reporter.save_figure`."""
    return Reporter(out_dir, notebook=notebook, params=params, made_by=made_by).save_figure(fig, name, **kw)


def save_table(df, name: str, *, out_dir: str | Path, notebook: str = "", params: dict | None = None,
               made_by: dict | None = None, **kw) -> list[Path]:
    """One table without a notebook's :class:`Reporter`; ``made_by`` as for :meth:`Reporter.save_table`."""
    return Reporter(out_dir, notebook=notebook, params=params, made_by=made_by).save_table(df, name, **kw)
