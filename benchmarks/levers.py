"""The headroom frontier of the embedded regime (issue 12, part 2): what each lever gives, and at what cost.

A *lever* is a named setting of flat run parameters (``data_stamps``, ``data_n_train``, ``teacher_arch``,
``teacher_conse_hierarchy``, ``student_trunk``, ...) applied on top of a base configuration (``BASE``: the
``make reproduce`` default, one seed, a larger test split). For every lever setting this script runs, on the
same data and teacher for all methods (no knob is set for one method only; nothing is tuned on test labels):

- ``supervised``: the student on ground-truth labels (the ceiling), epoch picked by the GT-free rule;
- ``teacher_global``: the teacher's zero-shot global prediction on the test split;
- ``cdul``: CDUL *without* gradient alignment (its global + 3x3-tile labels), GT-free rule;
- ``ccd``: CCD (debiased global labels, one CAM-guided update, consistency), GT-free rule;

and records test mAP of each, the best annotation-free student (max of CDUL-without-alignment and CCD), and the
cost of the configuration counted in forward passes: views scored by the teacher (global train + test, 3x3 tiles
of the training images, CCD's crops) and student trunk passes (cached feature views of the training images, the
test images, one CAM pass per training image at CCD's update). Wall seconds are recorded too but mean little on a
shared machine.

One JSON per (lever, setting) under ``--out`` (default ``/tmp/ccdlib-levers``), skipped when present; ``--table``
folds them into the Markdown table of ``benchmarks/README.md``.

    nice -n 10 python benchmarks/levers.py                      # every lever (hours on 2 busy cores)
    nice -n 10 python benchmarks/levers.py --only protocol n_train
    python benchmarks/levers.py --table                          # print the table from what has run
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: The base configuration every lever changes (flat run parameters, ``ccdlib.run_config_from_params``).
#: The teacher's hierarchy and both precisions are given: the levers were measured on the plain ConSE teacher in
#: float32 (the library defaults before issue 23), and the records keep their run names.
BASE: dict = dict(data_kind="mosaic", data_n_train=320, data_n_test=200, data_stamps="disjoint",
                  teacher_backend="conse", teacher_arch="efficientnet-lite0", student_trunk="efficientnet-lite0",
                  student_mode="frozen", student_image_size=448, epochs=10, seed=0,
                  teacher_conse_hierarchy=False, teacher_dtype="float32", student_head_dtype="float32")

#: lever -> [(setting label, flat overrides of BASE)]. The first setting of each lever is the base itself.
LEVERS: dict[str, list[tuple[str, dict]]] = {
    "protocol": [("disjoint", {}), ("shared", {"data_stamps": "shared"}),
                 ("shared + hierarchy", {"data_stamps": "shared", "teacher_conse_hierarchy": True})],
    "n_train": [("320", {}), ("800", {"data_n_train": 800})],
    "teacher": [("Lite0", {}), ("Lite0 + hierarchy", {"teacher_conse_hierarchy": True}),
                ("Lite2", {"teacher_arch": "efficientnet-lite2"}),
                ("Lite2 + hierarchy", {"teacher_arch": "efficientnet-lite2", "teacher_conse_hierarchy": True})],
    "student": [("Lite0 448 px", {}), ("Lite0 320 px", {"student_image_size": 320}),
                ("Lite2 448 px", {"student_trunk": "efficientnet-lite2"})],
    "combined": [("shared, Lite2 + hierarchy", {"data_stamps": "shared", "teacher_arch": "efficientnet-lite2",
                                                "teacher_conse_hierarchy": True}),
                 ("shared, 800, Lite0 + hierarchy", {"data_stamps": "shared", "data_n_train": 800,
                                                     "teacher_conse_hierarchy": True}),
                 ("shared, 800, Lite2 + hierarchy, student Lite2",
                  {"data_stamps": "shared", "data_n_train": 800, "teacher_arch": "efficientnet-lite2",
                   "teacher_conse_hierarchy": True, "student_trunk": "efficientnet-lite2"})],
}

METHODS = ("supervised", "teacher_global", "cdul", "ccd")


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text).strip("-").lower()


def run_setting(lever: str, label: str, overrides: dict, out: Path, *, force: bool = False,
                methods: tuple[str, ...] = METHODS) -> dict:
    """Run the methods of one lever setting (sharing data, teacher and cached features); return the record.
    ``methods`` a subset of :data:`METHODS` (cheap partial records: the others' numbers are NaN)."""
    import ccdlib

    path = out / f"{_slug(lever)}__{_slug(label)}.json"
    partial = tuple(methods) != METHODS
    if partial:
        path = path.with_name(path.stem + "__" + "-".join(methods) + ".json")
    params = {**BASE, **overrides}
    base = ccdlib.run_config_from_params(params, out_dir=str(out / "runs"))
    if path.exists() and not force:
        record = json.loads(path.read_text())
        if "crop_diagnostics" not in record and not partial:   # a record from before the diagnostics: add them (cheap)
            record["crop_diagnostics"] = _crop_diagnostics(ccdlib.make_context(base))
            path.write_text(json.dumps(record, indent=1, default=float) + "\n")
        return record
    ctx = ccdlib.make_context(base)
    per: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    for method in methods:
        cfg = ccdlib.run_config_from_params({**params, "method": method}, out_dir=str(out / "runs"))
        if method == "cdul":
            cfg = ccdlib.run_config_from_params({**params, "method": method, "cdul_gradient_alignment": False},
                                                out_dir=str(out / "runs"))
        t = time.perf_counter()
        res = ccdlib.run(cfg, ctx=ctx, force=force)
        seconds[method] = time.perf_counter() - t
        per[method] = res
    n_train, n_test = len(ctx.train), len(ctx.test)
    nan = float("nan")
    get = lambda m, rule: per[m]["selected"][rule]["metrics"]["mAP"] if m in per else nan
    crops = int(per["ccd"]["info"].get("crops", 0)) if "ccd" in per else 0
    s = base.student
    record = {
        "lever": lever, "setting": label, "params": params, "methods": list(methods),
        "n_train": n_train, "n_test": n_test,
        "supervised": get("supervised", "gt_free"), "supervised_last": get("supervised", "last"),
        "teacher_zero_shot": get("teacher_global", "zero_shot"),
        "student_on_global": get("teacher_global", "gt_free"),
        "cdul_no_alignment": get("cdul", "gt_free"), "ccd": get("ccd", "gt_free"),
        "pseudo_label_mAP": {m: {k: v["mAP"] for k, v in per[m]["pseudo_label_quality"].items()}
                             for m in ("cdul", "ccd") if m in per},
        "ccd_info": {k: per["ccd"]["info"].get(k) for k in ("tau", "crops", "crops_per_image",
                                                              "images_without_crops", "bias_fell_back")}
        if "ccd" in per else {},
        "teacher_views": (n_train + n_test) + 9 * n_train + crops,
        "student_passes": n_train * (2 + s.n_aug_views) + n_test + n_train,
        "teacher_image_size": ctx.teacher.image_size, "student_image_size": s.image_size,
        "seconds": seconds,
    }
    record["best_annotation_free"] = max(record["cdul_no_alignment"], record["ccd"]) if not partial else nan
    if "ccd" in per:
        record["crop_diagnostics"] = _crop_diagnostics(ctx)
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, default=float) + "\n")
    return record


def _crop_diagnostics(ctx) -> list[dict]:
    """Where CCD's CAM crops land at the update epoch (:func:`ccdlib.analysis.warmup.crop_diagnostics`; boxes only)."""
    from ccdlib.analysis import ccd_warmup, crop_diagnostics
    c = ctx.cfg
    diag = crop_diagnostics(ccd_warmup(ctx), offsets=(0.0, c.ccd.offset, 2 * c.ccd.offset), grid=c.cdul.grid)
    return diag.to_dict(orient="records")


def diagnostics_table(records: list[dict]) -> str:
    """Markdown: CCD's crops vs the tiles, per lever setting (percentages)."""
    head = ("| setting | views | selection | offset | views/img | objects/img | class precision | on own object | "
            "on any object | object recall |\n|" + "---|" * 10 + "\n")
    rows = []
    for r in records:
        for d in r.get("crop_diagnostics", []):
            off = "" if d["offset"] != d["offset"] else f"{d['offset']:.0f}"
            fmt = lambda v: "-" if v != v else f"{v:.1f}"
            rows.append(f"| {r['lever']}: {r['setting']} | {d['views']} | {d['selection']} | {off} | "
                        f"{d['views_per_image']:.1f} | {d['objects_per_image']:.1f} | {fmt(d['class_precision'])} | "
                        f"{fmt(d['on_own_object'])} | {fmt(d['on_any_object'])} | {fmt(d['object_recall'])} |")
    return head + "\n".join(rows) + "\n"


def table(records: list[dict]) -> str:
    """The Markdown frontier table (one row per lever setting)."""
    head = ("| lever | setting | n train / test | supervised | teacher zero-shot | student on global | CDUL w/o GA | "
            "CCD | best annotation-free | teacher views | student passes |\n|" + "---|" * 11 + "\n")
    rows = []
    f = lambda v: "-" if v is None or v != v else f"{v:.1f}"
    for r in records:
        rows.append(f"| {r['lever']} | {r['setting']} | {r['n_train']} / {r['n_test']} | {f(r['supervised'])} | "
                    f"{f(r['teacher_zero_shot'])} | {f(r['student_on_global'])} | {f(r['cdul_no_alignment'])} | "
                    f"{f(r['ccd'])} | **{f(r['best_annotation_free'])}** | {r['teacher_views']:,} | "
                    f"{r['student_passes']:,} |")
    return head + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/ccdlib-levers"), help="results folder")
    ap.add_argument("--only", nargs="*", default=None, help=f"levers to run (default all: {list(LEVERS)})")
    ap.add_argument("--table", action="store_true", help="only print the table of the results found")
    ap.add_argument("--force", action="store_true", help="rerun settings whose results exist")
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS,
                    help="run only these methods (a partial record, its own file)")
    ap.add_argument("--settings", nargs="*", default=None, help="run only the settings with these labels")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    names = args.only or list(LEVERS)
    unknown = sorted(set(names) - set(LEVERS))
    if unknown:
        ap.error(f"unknown lever(s) {unknown}; known: {list(LEVERS)}")
    records = []
    for lever in names:
        for label, overrides in LEVERS[lever]:
            if args.settings is not None and label not in args.settings:
                continue
            if args.table:
                stem = f"{_slug(lever)}__{_slug(label)}"
                found = sorted([args.out / f"{stem}.json"] if (args.out / f"{stem}.json").exists() else [])
                found += sorted(args.out.glob(f"{stem}__*.json"))   # partial records (--methods)
                records += [json.loads(p.read_text()) for p in found]
                continue
            rec = run_setting(lever, label, overrides, args.out, force=args.force, methods=tuple(args.methods))
            print(f"{lever} / {label}: supervised {rec['supervised']:.1f}, teacher {rec['teacher_zero_shot']:.1f}, "
                  f"CDUL w/o GA {rec['cdul_no_alignment']:.1f}, CCD {rec['ccd']:.1f}", flush=True)
            records.append(rec)
    print(table(records))
    if any("crop_diagnostics" in r for r in records):
        print(diagnostics_table(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
