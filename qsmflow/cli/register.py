"""``qsmflow register``: rigid registration of a magnitude to a reference, and resampling."""

from __future__ import annotations

import argparse

from ..backends import BACKENDS

HELP = "rigid (6-dof) registration of a magnitude to a reference: FSL FLIRT or python"

DESCRIPTION = """\
Register MOVING (a magnitude, 3-D or 4-D multi-echo: the first echo drives the registration) to
--reference (same) with a rigid 6-dof transform and write MOVING (all volumes) resampled onto
the reference grid to --output (0 outside MOVING's field of view).

Transform files:
  --transform  qsmflow's convention: 4x4 matrix on RAS+ world coordinates in mm mapping
               REFERENCE-world points to MOVING-world points (p_moving = T p_reference), text
               with '#' comment lines; use it with the ResampleToReference interface.
  --matrix     the same registration as an FSL FLIRT .mat: MOVING (-in) -> reference (-ref) in
               FSL scaled-mm coordinates (for flirt -applyxfm -init, convert_xfm).
Each transform file gets a JSON sidecar (RegistrationBackend, RotationAngleDeg, RotationAxis,
TranslationMM); --output's sidecar records the Interpolation and the Transform applied.

Backends: auto (default) runs FSL FLIRT (-dof 6, --cost, default mutualinfo) when `flirt` is
on PATH and the python method (SimpleITK, Mattes mutual information, multi-resolution)
otherwise; fsl insists on FSL (error 2 without it); python never uses FSL.
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from ..backends import FLIRT_COSTS
    from ..steps.registration import INTERPOLATION_ORDER

    p = subparsers.add_parser(
        "register",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("moving", metavar="MOVING", help="moving magnitude NIfTI, 3-D or 4-D")
    p.add_argument(
        "-r", "--reference", required=True, metavar="REF", help="reference magnitude NIfTI"
    )
    p.add_argument(
        "-o", "--output", required=True, metavar="RESAMPLED", help="MOVING on the reference grid"
    )
    p.add_argument("--matrix", metavar="OUT.mat", help="write the FSL FLIRT matrix here")
    p.add_argument("--transform", metavar="OUT.txt", help="write qsmflow's world transform here")
    p.add_argument("--backend", choices=BACKENDS, help="default auto")
    p.add_argument(
        "--interpolation",
        choices=tuple(INTERPOLATION_ORDER),
        help="resampling of --output (default linear)",
    )
    p.add_argument("--moving-mask", metavar="MASK", help="mask on MOVING's grid for the cost")
    p.add_argument("--reference-mask", metavar="MASK", help="mask on REF's grid for the cost")
    p.add_argument("--cost", choices=FLIRT_COSTS, help="FLIRT cost (FSL only, mutualinfo)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..steps.registration import register_file, resample_file
    from . import step_arguments

    dests = {"transform_file": "transform", "fsl_matrix_file": "matrix"}
    registered = register_file(**step_arguments(register_file, args, **dests))
    values = registered.values
    interpolation = {} if args.interpolation is None else {"interpolation": args.interpolation}
    # the written transform file when there is one, so that --output is exactly what
    # ResampleToReference makes of it
    transform = values["transform"] if args.transform is None else args.transform
    out = resample_file(
        args.moving, args.reference, args.output, transform=transform, **interpolation
    ).outputs["out_file"]
    axis = np.round(registered.sidecar["RotationAxis"], 3).tolist()
    t = np.asarray(values["translation_mm"])
    print(
        f"qsmflow register: {values['backend']} backend: rotation {values['rotation_deg']:.2f} "
        f"deg about {axis}, translation {np.round(t, 2).tolist()} mm "
        f"(|t| {np.linalg.norm(t):.2f} mm) -> {out}"
    )
    return 0
