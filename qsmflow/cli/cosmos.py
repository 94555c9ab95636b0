"""``qsmflow cosmos``: susceptibility from local fields at several head orientations."""

from __future__ import annotations

import argparse

HELP = "COSMOS: susceptibility (ppm) from several orientations' local fields (ppm), one frame"

DESCRIPTION = """\
Combine N >= 2 local fields FIELD1 FIELD2 ... (ppm of B0, after background removal), all
already registered and resampled onto one reference (head-fixed) grid of the same shape, into
one susceptibility map in ppm (0 outside --mask).

B0 directions (one per field, in the array-axis coordinates of the reference grid):
  --b0-dirs x,y,z x,y,z ...   given on the command line, in FIELD order;
  --b0-dir-files F1 F2 ...    text files of 3 numbers each (LPCNN SubXXX_oriN.txt style);
  default                     from each file's affine (b = R^T z). This is right when each
                              FIELD's array is the common head-fixed grid and its affine maps
                              that grid to scanner coordinates *of its own acquisition* (the
                              head pose at that scan); the grids may then differ by a rotation
                              only. Fields resampled into one frame usually share that frame's
                              affine: directions that all agree within 1 degree are an error.
With --b0-dirs/--b0-dir-files all fields and the mask must share one affine.

Methods: lsq (default) minimises sum_n ||M (D_n chi - f_n)||^2 + lambda ||chi||^2 by
preconditioned conjugate gradients, with the mask as data weight (--weights: one extra weight
map per field, e.g. each orientation's own V-SHARP mask); lambda default 1e-3. closed is Liu's
closed form F^-1[sum D_n F f_n / (sum D_n^2 + lambda)] (lambda default 0), zeroed where the
denominator is below 1e-4; it treats the zeros outside the mask as data and amplifies
background-removal errors, so lsq is recommended. Kernel D_n(k) = 1/3 - (k.b_n)^2/|k|^2 with
D_n(0) = 0: the mean susceptibility is arbitrary (demean before comparing).
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "cosmos",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("fields", nargs="+", metavar="FIELD", help="local field NIfTI files, ppm")
    p.add_argument("-m", "--mask", required=True, metavar="MASK", help="mask NIfTI (voxels > 0)")
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
    p.add_argument("--method", choices=("lsq", "closed"), default="lsq", help="default lsq")
    p.add_argument("--lambda", dest="lam", type=float, help="lsq 1e-3, closed 0")
    p.add_argument(
        "--regulariser", choices=("identity", "gradient"), default="identity", help="identity"
    )
    p.add_argument("--iterations", type=int, default=30, help="lsq: max PCG iterations (30)")
    p.add_argument("--tol", type=float, default=1e-3, help="lsq: PCG tolerance (1e-3)")
    p.add_argument("--weights", nargs="+", metavar="W", help="lsq: data weight NIfTI per field")
    p.add_argument("--pad", type=int, default=12, help="zero padding per side, voxels (12)")
    p.add_argument("--float64", action="store_true", help="compute in float64 (default float32)")
    p.set_defaults(func=run)
    return p


def _parse_dir(text: str):
    import numpy as np

    from ..errors import QSMInputError

    try:
        cleaned = text.strip().strip("[]()").replace(";", ",")
        values = [float(t) for t in cleaned.split(",") if t.strip()]
    except ValueError as exc:
        raise QSMInputError(f"--b0-dirs entry {text!r} is not x,y,z ({exc})") from exc
    if len(values) != 3:
        raise QSMInputError(f"--b0-dirs entry {text!r} must have 3 comma-separated numbers")
    return np.asarray(values, dtype=np.float64)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..errors import QSMInputError
    from ..io.nifti import load_volume, save_volume
    from ..physics.cosmos import cosmos
    from ..physics.kernel import normalise_b0_dir
    from ..physics.validation import check_mask
    from ..simulate.orientations import read_b0_dir_txt

    n = len(args.fields)
    if n < 2:
        raise QSMInputError("COSMOS needs at least 2 local fields (3 or more well spread)")
    mvol = load_volume(args.mask, ndim=3)
    vols = [load_volume(path, ndim=3) for path in args.fields]
    mask = check_mask(mvol.data, vols[0].data.shape, source=mvol.path)
    for vol in vols:
        if vol.data.shape != mask.shape:
            raise QSMInputError(
                f"grid {vol.data.shape} does not match the mask grid {mask.shape} ({args.mask})",
                vol.path,
            )
        bad = ~np.isfinite(vol.data) & mask
        if bad.any():
            raise QSMInputError(
                f"field has {int(bad.sum())} NaN/inf voxel(s) inside the mask", vol.path
            )
        vol.data = np.where(mask, vol.data, 0).astype(np.float32)
    if args.b0_dirs is not None or args.b0_dir_files is not None:
        # All fields (and the mask) must be in one frame: same affine.
        for vol in [*vols[1:], mvol]:
            if not np.allclose(vol.affine, vols[0].affine, rtol=0.0, atol=1e-3):
                raise QSMInputError(
                    f"affine differs from {vols[0].path}'s: resample all fields and the mask "
                    "into one reference frame",
                    vol.path,
                )
    else:
        # Directions from the affines: the grids may differ only by a rotation.
        for vol in vols[1:]:
            if not np.allclose(vol.voxel_size, vols[0].voxel_size, atol=1e-3):
                raise QSMInputError(
                    f"voxel size {vol.voxel_size.tolist()} differs from {vols[0].path}'s",
                    vol.path,
                )
    if args.b0_dirs is not None:
        if len(args.b0_dirs) != n:
            raise QSMInputError(f"--b0-dirs has {len(args.b0_dirs)} entries for {n} fields")
        dirs = np.stack([normalise_b0_dir(_parse_dir(t)) for t in args.b0_dirs])
        source = "--b0-dirs"
    elif args.b0_dir_files is not None:
        if len(args.b0_dir_files) != n:
            raise QSMInputError(f"--b0-dir-files has {len(args.b0_dir_files)} files for {n} fields")
        dirs = np.stack([read_b0_dir_txt(p) for p in args.b0_dir_files])
        source = "--b0-dir-files"
    else:
        dirs = np.stack([v.b0_dir for v in vols])
        source = "affines"
        cos = np.abs(dirs @ dirs.T)
        if np.min(cos) > np.cos(np.deg2rad(1.0)):
            raise QSMInputError(
                "the B0 directions from the fields' affines all agree within 1 degree (fields "
                "resampled into one frame share its affine); give the acquisition directions "
                "with --b0-dirs or --b0-dir-files"
            )
    weights = None
    if args.weights is not None:
        if len(args.weights) != n:
            raise QSMInputError(f"--weights has {len(args.weights)} files for {n} fields")
        weights = []
        for path in args.weights:
            w = load_volume(path, ndim=3)
            if w.data.shape != mask.shape:
                raise QSMInputError(
                    f"weights grid {w.data.shape} does not match the fields {mask.shape}", path
                )
            if not np.all(np.isfinite(w.data[mask])) or np.any(w.data[mask] < 0):
                raise QSMInputError("weights must be finite and >= 0 inside the mask", path)
            weights.append(np.where(mask, w.data, 0))
        weights = np.stack(weights)
    if args.pad < 0:
        raise QSMInputError(f"--pad must be >= 0, got {args.pad}")
    if args.iterations < 1:
        raise QSMInputError(f"--iterations must be >= 1, got {args.iterations}")
    dtype = np.float64 if args.float64 else np.float32
    chi = cosmos(
        [v.data for v in vols],
        dirs,
        vols[0].voxel_size,
        mask,
        method=args.method,
        lam=args.lam,
        regulariser=args.regulariser,
        weights=weights,
        iterations=args.iterations,
        tol=args.tol,
        pad=args.pad,
        dtype=dtype,
    )
    sidecar = {
        "Method": f"COSMOS ({args.method})",
        "Units": "ppm",
        "InputFields": [str(p) for p in args.fields],
        "Mask": str(args.mask),
        "B0Directions": dirs.tolist(),
        "B0DirectionSource": source,
        "VoxelSizeMM": [float(x) for x in vols[0].voxel_size],
        "Lambda": args.lam if args.lam is not None else (1e-3 if args.method == "lsq" else 0.0),
        "Regulariser": args.regulariser,
        "DipoleKernelDC": 0.0,
    }
    out = save_volume(args.output, chi, vols[0].affine, dtype=dtype, sidecar=sidecar)
    print(f"qsmflow cosmos: {n} orientations ({args.method}) -> {out}")
    return 0
