"""The ``qsmflow`` command: one subcommand per module in :mod:`qsmflow.cli`.

Each subcommand module defines ``register(subparsers)``, which adds its parser and sets
``func`` (called with the parsed namespace, returns an exit code). Numerical imports happen
inside ``func`` so that ``qsmflow --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .. import __version__
from ..errors import QSMInputError

#: Subcommand modules, in the order ``--help`` lists them.
SUBCOMMANDS = (
    "dicom",
    "run",
    "simulate",
    "mask",
    "register",
    "unwrap",
    "bgremove",
    "invert",
    "cosmos",
    "patches",
    "realistic_patches",
    "models",
    "train",
    "export_weights",
    "evaluate",
    "report",
    "demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qsmflow",
        description=(
            "Quantitative susceptibility mapping from multi-echo GRE. Units: fields in ppm of "
            "B0 (or rad/Hz where named), susceptibility in ppm, echo times in seconds, B0 in "
            "tesla, voxel sizes in mm; B0 direction from the NIfTI affine."
        ),
    )
    parser.add_argument("--version", action="version", version=f"qsmflow {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"qsmflow.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"qsmflow.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed, for run records
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except QSMInputError as exc:
        print(f"qsmflow {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
