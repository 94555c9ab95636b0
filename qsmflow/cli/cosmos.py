"""``qsmflow cosmos``: susceptibility from local fields at several head orientations."""

from __future__ import annotations

import argparse

HELP = "COSMOS: susceptibility (ppm) from several orientations' local fields (ppm), one frame"

DESCRIPTION = """\
Combine N >= 2 local fields FIELD1 FIELD2 ... (ppm of B0, after background removal), all
already registered and resampled onto one reference (head-fixed) grid of the same shape, into
one susceptibility map in ppm (0 outside --mask; with one mask per field, outside their
intersection).

B0 directions (one per field, in the array-axis coordinates of the reference grid):
  --b0-dirs x,y,z x,y,z ...   given on the command line, in FIELD order;
  --b0-dir-files F1 F2 ...    text files of 3 numbers each (LPCNN SubXXX_oriN.txt style);
  default                     from each file's affine (b = R^T z). This is right when each
                              FIELD's array is the common head-fixed grid and its affine maps
                              that grid to scanner coordinates *of its own acquisition* (the
                              head pose at that scan); the grids may then differ by a rotation
                              only. Fields resampled into one frame usually share that frame's
                              affine: directions that all agree within 1 degree are an error.
With --b0-dirs/--b0-dir-files all fields and masks must share one affine. --mask takes one
common mask or one mask per FIELD (COSMOS then runs in their intersection); list the FIELDs
before --mask.

Methods: lsq (default) minimises sum_n ||M (D_n chi - f_n)||^2 + lambda ||chi||^2 by
preconditioned conjugate gradients, with the mask as data weight (--weights: one extra weight
map per field, e.g. each orientation's own V-SHARP mask); lambda default 1e-3. closed is Liu's
closed form F^-1[sum D_n F f_n / (sum D_n^2 + lambda)] (lambda default 0), zeroed where the
denominator is below 1e-4; it treats the zeros outside the mask as data and amplifies
background-removal errors, so lsq is recommended. Kernel D_n(k) = 1/3 - (k.b_n)^2/|k|^2 with
D_n(0) = 0: the mean susceptibility is arbitrary (demean before comparing).
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from ..physics.cosmos import COSMOS_METHODS, COSMOS_REGULARISERS

    p = subparsers.add_parser(
        "cosmos",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("fields", nargs="+", metavar="FIELD", help="local field NIfTI files, ppm")
    p.add_argument(
        "-m",
        "--mask",
        required=True,
        nargs="+",
        metavar="MASK",
        help="mask NIfTI (voxels > 0): one common mask or one per FIELD (intersected)",
    )
    p.add_argument("-o", "--output", required=True, metavar="CHI", help="output map NIfTI (ppm)")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--b0-dirs",
        nargs="+",
        metavar="X,Y,Z",
        help="B0 direction per field, e.g. 0,0.1,0.99; write one that starts with '-' in "
        "brackets, e.g. [-0.14,0.11,0.98]",
    )
    group.add_argument(
        "--b0-dir-files", nargs="+", metavar="TXT", help="B0 direction text file per field"
    )
    p.add_argument("--method", choices=COSMOS_METHODS, help="default lsq")
    p.add_argument("--lambda", dest="lam", type=float, help="lsq 1e-3, closed 0")
    p.add_argument("--regulariser", choices=COSMOS_REGULARISERS, help="default identity")
    p.add_argument("--iterations", type=int, help="lsq: max PCG iterations (30)")
    p.add_argument("--tol", type=float, help="lsq: PCG tolerance (1e-3)")
    p.add_argument("--weights", nargs="+", metavar="W", help="lsq: data weight NIfTI per field")
    p.add_argument("--pad", type=int, help="zero padding per side, voxels (12)")
    p.add_argument("--float64", action="store_true", help="compute in float64 (default float32)")
    p.set_defaults(func=run)
    return p


def _parse_dir(text: str) -> list[float]:
    from ..errors import QSMInputError

    try:
        cleaned = text.strip().strip("[]()").replace(";", ",")
        values = [float(t) for t in cleaned.split(",") if t.strip()]
    except ValueError as exc:
        raise QSMInputError(f"--b0-dirs entry {text!r} is not x,y,z ({exc})") from exc
    if len(values) != 3:
        raise QSMInputError(f"--b0-dirs entry {text!r} must have 3 comma-separated numbers")
    return values


def run(args: argparse.Namespace) -> int:
    from ..steps.cosmos import cosmos_files

    options = {
        "method": args.method,
        "lam": args.lam,
        "regulariser": args.regulariser,
        "iterations": args.iterations,
        "tol": args.tol,
        "pad": args.pad,
        "b0_dir_files": args.b0_dir_files,
        "weights": args.weights,
    }
    if args.b0_dirs is not None:
        options["b0_dirs"] = [_parse_dir(t) for t in args.b0_dirs]
    result = cosmos_files(
        args.fields,
        args.mask,
        args.output,
        float64=args.float64,
        **{k: v for k, v in options.items() if v is not None},
    )
    side = result.sidecar
    print(
        f"qsmflow cosmos: {side['NumberOfOrientations']} orientations ({side['CosmosSolver']}) "
        f"-> {result.outputs['chi']}"
    )
    return 0
