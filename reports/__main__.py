"""`python -m reports RUN_DIR [--png]`: write RUN_DIR/report.html (one file, opens offline); --png also writes
RUN_DIR/front.png, a static figure of the front against the baselines and references."""

from __future__ import annotations

import argparse
import sys

from reports.html import build_report
from study.core.errors import UserError


def main(argv: list[str] | None = None) -> int:
    """Write RUN_DIR/report.html (and front.png with --png); returns the exit code (2 for a user error, said in one
    line)."""
    p = argparse.ArgumentParser(prog="python -m reports", description=__doc__)
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by `python -m study run`")
    p.add_argument("--png", action="store_true", help="also write RUN_DIR/front.png (matplotlib)")
    args = p.parse_args(argv)
    try:
        out = build_report(args.run_dir)
        png = None
        if args.png:
            from reports.png import write_png

            png = write_png(args.run_dir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
