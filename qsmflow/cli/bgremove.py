"""``qsmflow bgremove``: background field removal (V-SHARP / SHARP)."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Remove the background field (sources outside the mask) from an unwrapped total field.

V-SHARP (Wu 2012): for each SMV radius from large to small the field is high-passed (field
minus its spherical mean), each voxel keeps the value of the largest radius whose sphere fits
in the mask, and is deconvolved with a truncated inverse (1/(1-S) where |1-S| >= threshold,
else 0): by default that of its own radius (threshold scaled by sqrt(r_max/r)), or with
--deconvolution largest once with the largest kernel's (the classic form, as QSM.rs). With one
radius this is SHARP.
Units: the filter is linear, so the output has the unit of FIELD (ppm in gives ppm out; Hz or
rad work the same). With --b0 the input is taken to be in Hz (as `qsmflow unwrap --echo-times`
writes it) and the output is converted to ppm at that field strength. Radii are in mm (voxel
size from the NIfTI affine). The output is 0 outside the eroded mask (the mask eroded by the
smallest radius), which --mask-out writes."""


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..physics.bgremove import DECONVOLUTIONS, DEFAULT_THRESHOLD

    p = subparsers.add_parser(
        "bgremove",
        help="background field removal with V-SHARP (output in the unit of the input)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("field", metavar="FIELD", help="unwrapped total field NIfTI (3-D)")
    p.add_argument("-m", "--mask", required=True, metavar="MASK", help="brain mask NIfTI")
    p.add_argument("-o", "--output", required=True, metavar="LOCAL", help="local field NIfTI")
    p.add_argument("--mask-out", metavar="ERODED", help="write the eroded mask here")
    p.add_argument(
        "--radii",
        nargs="+",
        type=float,
        metavar="MM",
        help="SMV radii in mm (default: 12 11 ... 1); a single radius gives SHARP",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"deconvolution threshold on |1 - S| (default {DEFAULT_THRESHOLD})",
    )
    p.add_argument(
        "--deconvolution",
        choices=DECONVOLUTIONS,
        default=DECONVOLUTIONS[0],
        help="per_radius (default): each voxel takes the SHARP result of its own radius (more "
        "accurate at the brain edge); largest: the classic V-SHARP, one deconvolution with the "
        "largest kernel (about half the FFTs)",
    )
    p.add_argument(
        "--b0",
        type=float,
        metavar="TESLA",
        help="field strength in tesla: FIELD is in Hz and LOCAL is written in ppm",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..steps.bgremove import vsharp_file
    from . import step_arguments

    dests = {"field_strength": "b0", "radii_mm": "radii", "eroded_mask_output": "mask_out"}
    vsharp_file(**step_arguments(vsharp_file, args, **dests))
    return 0
