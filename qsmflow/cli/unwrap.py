"""``qsmflow unwrap``: spatial phase unwrapping and multi-echo field fitting."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Unwrap a phase image, or fit a field map from multi-echo phase.

Input PHASE is 3-D (one echo) or 4-D (echoes along the 4th axis), in radians or Siemens
12-bit units (-4096..4095 scaled by pi/4096, or raw 0..4095); --units auto decides from the
value range and refuses anything else.
Output:
  * without --echo-times: the unwrapped phase in rad (3-D, or 4-D with each echo unwrapped
    separately);
  * with --echo-times (seconds, one per echo, increasing; e.g. 0.004 0.008 0.012): the field
    map in Hz, f = slope of phase against TE / 2 pi (magnitude-weighted fit with intercept
    for 2 or more echoes, through the origin for one echo). The sign follows the data: phase =
    +2 pi f TE.
Outside the mask the output is 0. Voxels that are NaN/inf are left out of the default mask
(all voxels); with --mask they must not lie inside it.
Methods: laplacian (FFT Laplacian unwrapping; correct up to a function harmonic in the mask,
which background field removal takes out), lsq (masked least-squares unwrapping: exact where
neighbouring voxels differ by less than pi), temporal (multi-echo only and the default there:
phase-offset removal from echoes 1-2, exact unwrapping of echo 1, temporal unwrapping of the
other echoes).
A JSON sidecar next to OUT records units, echo times and method."""


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..physics.multiecho import UNWRAPPING_METHODS
    from ..physics.validation import PHASE_UNITS

    p = subparsers.add_parser(
        "unwrap",
        help="unwrap phase (rad) or fit a multi-echo field map (Hz)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("phase", metavar="PHASE", help="phase NIfTI, 3-D or 4-D (echoes last)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output NIfTI")
    p.add_argument("-m", "--mask", metavar="MASK", help="brain/signal mask NIfTI (same grid)")
    p.add_argument(
        "--magnitude", metavar="MAG", help="magnitude NIfTI (same shape as PHASE): fit weights"
    )
    p.add_argument(
        "--echo-times",
        "--te",
        dest="echo_times",
        nargs="+",
        type=float,
        metavar="TE",
        help="echo times in SECONDS, one per echo; gives a field map in Hz",
    )
    p.add_argument(
        "--units",
        choices=PHASE_UNITS,
        default="auto",
        help="phase units: rad, siemens (-4096..4095 -> x pi/4096), siemens-raw (0..4095 -> "
        "x pi/2048 - pi); default auto from the value range",
    )
    p.add_argument(
        "--method",
        choices=[m for m in UNWRAPPING_METHODS if m != "auto"],
        default=None,
        help="unwrapping method (default: temporal for multi-echo with TEs, else laplacian)",
    )
    p.add_argument("--offset-out", metavar="FILE", help="also write the fitted phase offset (rad)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import QSMInputError
    from ..steps.fieldmap import fit_field, unwrap_phase

    if args.echo_times:
        fit_field(
            args.phase,
            args.output,
            echo_times=args.echo_times,
            magnitude=args.magnitude,
            mask=args.mask,
            method=args.method or "auto",
            phase_units=args.units,
            offset_output=args.offset_out,
        )
        return 0
    if args.offset_out:
        raise QSMInputError("--offset-out needs --echo-times (the offset comes from the fit)")
    if args.method == "temporal":
        raise QSMInputError("--method temporal needs --echo-times")
    unwrap_phase(
        args.phase,
        args.output,
        mask=args.mask,
        method=args.method or "laplacian",
        phase_units=args.units,
    )
    return 0
