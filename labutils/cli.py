"""The ``labutils`` command (also ``python -m labutils``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from .config import PROFILES, ConfigError


def _cmd_run_labs(args) -> int:
    from .runner import NOTEBOOK_DIR, run_notebooks
    out = run_notebooks(args.out, args.profile, args.labs,
                        Path(args.notebooks) if args.notebooks else NOTEBOOK_DIR)
    print(f"Executed notebooks and figures: {out}/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labutils", description="Diffusion-model labs: run the notebooks, train, sample.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("run-labs", help="execute the lab notebooks; copies go to runs/<time>/")
    p.add_argument("--profile", choices=PROFILES, help="default: full with a GPU, else quick")
    p.add_argument("--out", type=Path, help="output folder (default runs/<timestamp>)")
    p.add_argument("--labs", nargs="*", help="only these notebooks, by number prefix (01 02 ...)")
    p.add_argument("--notebooks", help="the notebook folder (default: the checkout's notebooks/)")
    p.set_defaults(func=_cmd_run_labs)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"labutils {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"labutils {args.command}: interrupted", file=sys.stderr)
        return 130
