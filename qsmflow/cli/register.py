"""``qsmflow register``: rigid registration of a magnitude to a reference, and resampling."""

from __future__ import annotations

import argparse

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

Backends: auto (default) runs FSL FLIRT (-dof 6, --cost, default mutualinfo) when `flirt` is
on PATH and the python method (SimpleITK, Mattes mutual information, multi-resolution)
otherwise; fsl insists on FSL (error 2 without it); python never uses FSL.
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from ..interfaces.fsl import FLIRT_COSTS

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
    p.add_argument(
        "--backend", choices=("auto", "fsl", "python"), default="auto", help="default auto"
    )
    p.add_argument(
        "--interpolation",
        choices=("linear", "nearest", "cubic"),
        default="linear",
        help="resampling of --output (default linear)",
    )
    p.add_argument("--moving-mask", metavar="MASK", help="mask on MOVING's grid for the cost")
    p.add_argument("--reference-mask", metavar="MASK", help="mask on REF's grid for the cost")
    p.add_argument(
        "--cost", choices=FLIRT_COSTS, default="mutualinfo", help="FLIRT cost (FSL only)"
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..interfaces.registration import estimate_rigid, resample_file, write_outcome
    from ..io.nifti import write_json

    res = estimate_rigid(
        args.moving,
        args.reference,
        moving_mask=args.moving_mask,
        reference_mask=args.reference_mask,
        backend=args.backend,
        cost=args.cost,
    )
    write_outcome(
        res,
        transform_file=args.transform,
        fsl_matrix_file=args.matrix,
        moving=str(args.moving),
        reference=str(args.reference),
    )
    out = resample_file(
        args.moving, args.reference, res.transform, args.output, interpolation=args.interpolation
    )
    name = out.name
    stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else out.stem
    write_json(
        out.with_name(stem + ".json"),
        {
            "Moving": str(args.moving),
            "Reference": str(args.reference),
            "Backend": res.backend,
            "Interpolation": args.interpolation,
            "TransformConvention": "RAS mm world, reference -> moving (p_moving = T p_ref)",
            "Transform": res.transform,
            "RotationDeg": res.rotation_deg,
            "TranslationMM": res.translation_mm,
        },
    )
    axis = np.round(res.rotation_axis, 3).tolist()
    t = np.asarray(res.translation_mm)
    print(
        f"qsmflow register: {res.backend} backend: rotation {res.rotation_deg:.2f} deg about "
        f"{axis}, translation {np.round(t, 2).tolist()} mm (|t| {np.linalg.norm(t):.2f} mm) "
        f"-> {out}"
    )
    return 0
