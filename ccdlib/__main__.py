"""Command line: ``python -m ccdlib {data,run,predict} ...`` (see ``--help`` of each)."""
from __future__ import annotations

import argparse
import sys

from .errors import CCDError, ConfigError


def _data(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m ccdlib data {mosaic,fetch} ...\n"
              "  mosaic  build the embedded stamp-mosaic data set (VOC layout)\n"
              "  fetch   find or fetch the Debian packages the embedded study uses: the tuxpaint photos the\n"
              "          mosaics are made from, and WordNet 3.0 (wordnet-base) for the hierarchy-aware ConSE teacher")
        return 0
    if argv[0] == "mosaic":
        from .mosaic import cli_main
        return cli_main(argv[1:])
    if argv[0] == "fetch":
        ap = argparse.ArgumentParser(prog="python -m ccdlib data fetch",
                                     description="Find or fetch the tuxpaint photo packages and WordNet 3.0 "
                                                 "(wordnet-base) into the ccdlib cache.")
        ap.add_argument("--cache-dir", default=None,
                        help="the ccdlib cache (default $CCDLIB_CACHE or ~/.cache/ccdlib); must be writable to fetch")
        args = ap.parse_args(argv[1:])
        from .mosaic import find_tuxpaint
        from .wordnet import find_wordnet
        print(find_tuxpaint(args.cache_dir))
        print(find_wordnet(args.cache_dir))
        return 0
    print(f"unknown data command {argv[0]!r}; try: mosaic, fetch", file=sys.stderr)
    return 2


def _run(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m ccdlib run", description="Run one method end to end.")
    ap.add_argument("--config", help="YAML run config (see notebooks/params/ and ccdlib.config.RunConfig)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set ccd.r=0.5 --set method=cdul (repeatable)")
    ap.add_argument("--force", action="store_true", help="recompute even if the run's results exist (and drop the training state an "
                         "interrupted run saved; without --force a rerun resumes from it)")
    args = ap.parse_args(argv)
    from .config import load_config
    from .distributed import init_distributed
    from .runs import run
    cfg = load_config(args.config, args.overrides)   # validated before any expensive work
    rank = init_distributed()
    result = run(cfg, force=args.force, save=(rank == 0))
    if rank == 0:
        def num(v) -> str:   # NaN is saved as null (e.g. a test split without labels)
            return "n/a" if v is None else f"{v:.2f}"
        for rule, sel in result["selected"].items():
            m = sel["metrics"]
            print(f"{result['name']}  {rule:9s} epoch={sel['epoch']}  mAP={num(m['mAP'])}  CF1={num(m['CF1'])}  "
                  f"OF1={num(m['OF1'])}")
        print(f"results: {cfg.out_dir}/{result['name']}/")
    return 0


def _predict(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m ccdlib predict",
                                 description="Score images with a trained student checkpoint; writes CSV.")
    ap.add_argument("--checkpoint", required=True, help="student checkpoint (.pt with its .json beside it)")
    ap.add_argument("inputs", nargs="+", help="image files or folders")
    ap.add_argument("--threshold", type=float, default=0.5, help="label threshold on sigmoid scores (default 0.5)")
    ap.add_argument("--out", default="-", help="CSV path (default: stdout)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    from .predict import check_output_path, predict_images
    if args.batch_size < 1:   # validated before any checkpoint is read or image scored
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold must be in [0, 1] (a sigmoid score), got {args.threshold}")
    if args.out != "-":
        check_output_path(args.out)
    df = predict_images(args.checkpoint, args.inputs, threshold=args.threshold, batch_size=args.batch_size,
                        device=args.device)
    if args.out == "-":
        df.to_csv(sys.stdout, index=False)
    else:
        from .cache import atomic_write_text
        atomic_write_text(args.out, df.to_csv(index=False))
        print(f"wrote {len(df)} rows to {args.out}", file=sys.stderr)
    return 0


COMMANDS = {"data": _data, "run": _run, "predict": _predict}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m ccdlib {data,run,predict} ...\n"
              "  data mosaic   build the embedded stamp-mosaic data set\n"
              "  run           run a method (teacher_global, cdul, ccd, supervised) from a YAML config\n"
              "  predict       score images with a trained student checkpoint")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        return COMMANDS[argv[0]](argv[1:])
    except CCDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
