"""``python -m ccdlib.mosaic``: the same command as ``python -m ccdlib data mosaic``."""
from .cli import cli_main

if __name__ == "__main__":
    raise SystemExit(cli_main())
