"""``qsmflow invert``: single-orientation dipole inversion of a local field (ppm -> ppm)."""

from __future__ import annotations

import argparse

HELP = (
    "dipole inversion of a local field (ppm) to susceptibility (ppm): TKD, TSVD, CFL2, NDI, "
    "STAR, ISDU-QSMNet"
)

DESCRIPTION = """\
Invert the local (tissue) field LOCALFIELD, in ppm of B0 (after background removal), to a
susceptibility map in ppm, written to --output (0 outside --mask).

Conventions: dipole kernel D(k) = 1/3 - (k.b)^2/|k|^2 with D(0) = 0, k in cycles/mm from the
voxel size of the NIfTI affine; b = the B0 direction in array-axis coordinates, taken from the
affine (b = R^T z, R = the affine's rotation) unless --b0-dir is given. The mean susceptibility
is not determined by the data: demean (or reference) the map before comparing. The field is
zero-padded by --pad voxels per side (rounded up to a fast FFT size) against wrap-around.

Methods and the options they use:
  tkd   truncated k-space division: 1/D where |D| > t, sign(D)/t elsewhere (k = 0 -> +1/t);
        --threshold t (default 0.15)
  tsvd  truncated SVD: 1/D where |D| > t, 0 elsewhere; --threshold t (default 0.15)
  cfl2  closed-form Tikhonov D/(D^2 + lambda Gamma); --lambda (default 0.01), --regulariser
        identity (Gamma = 1, default) or gradient (Gamma = |grad|^2 symbol, lambda in mm^2)
  ndi   nonlinear dipole inversion (Polak 2020), gradient descent with step 2;
        --iterations (default 200), --lambda = Tikhonov alpha (default 1e-5), --weights MAG
        (data weights, rescaled by their 99th percentile). On a ppm field NDI is Landweber
        iteration; with --b0-tesla and --te-s the field is converted to radians at that echo
        time for the data term (the paper's nonlinear behaviour); output is ppm either way.
  star  two-level sparse (l1) inversion in the spirit of STAR-QSM (Wei 2015, our
        re-implementation): --threshold = kernel threshold (default 0.065), --lambda = relative
        l1 weight of the weak-source pass (default 1e-4), --iterations = max iterations per
        pass (default 20 and 40). Scale-invariant: no TE/B0 needed.
  isdu  ISDU-QSMNet (unrolled network, qsmflow.models.isdu): --weights FILE = a qsmflow
        checkpoint, the authors' single-denoiser .pth (e.g. their K=1 checkpoint; every one of
        the K denoisers starts as a copy) or their unshared model_*.pt dict, read with
        torch.load(weights_only=True) (never unpickling arbitrary objects). Without --weights
        the shipped qsmflow/data/isdu_default.pt is used (K = 4 unshared, width 16, trained on
        simulated head-model/phantom patches by workflows/train-isdu-cpu.toml; see README).
        --iterations K (default: the checkpoint's; 4 for a single-denoiser .pth),
        --shared-weights (one denoiser for all K iterations), --device auto|cpu|cuda
        (auto: CUDA when available), --tile N (run the denoisers on N^3 tiles with a 20-voxel
        halo: bounded memory, the same result). Its kernel has D(0) = 1/3 (the authors'
        convention) and every axis is zero-padded to a multiple of 16 (split between both
        ends) instead of --pad. --float64 runs the whole network in float64. The sidecar
        records the weights file and its sha256, K, shared, device and tile.
"""

_DEFAULT_THRESHOLD = {"tkd": 0.15, "tsvd": 0.15, "star": 0.065}


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from ..physics.inversion import METHODS

    p = subparsers.add_parser(
        "invert",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("field", metavar="LOCALFIELD", help="local field NIfTI (3-D), ppm of B0")
    p.add_argument("-m", "--mask", required=True, metavar="MASK", help="mask NIfTI (voxels > 0)")
    p.add_argument("-o", "--output", required=True, metavar="CHI", help="output map NIfTI (ppm)")
    p.add_argument(
        "--method", choices=(*METHODS, "isdu"), default="tkd", help="inversion (default tkd)"
    )
    p.add_argument("--threshold", type=float, help="kernel threshold (tkd/tsvd 0.15, star 0.065)")
    p.add_argument(
        "--lambda",
        dest="lam",
        type=float,
        help="cfl2: lambda (0.01); ndi: alpha (1e-5); star: weak-pass l1 weight (1e-4)",
    )
    p.add_argument(
        "--regulariser", choices=("identity", "gradient"), default="identity", help="cfl2 only"
    )
    p.add_argument("--iterations", type=int, help="ndi (200) / star per pass (20, 40) / isdu K (4)")
    p.add_argument(
        "--weights",
        metavar="FILE",
        help="ndi: data weights NIfTI (e.g. magnitude); isdu: model weights (.pt/.pth)",
    )
    p.add_argument(
        "--shared-weights", action="store_true", help="isdu: one denoiser for all K iterations"
    )
    p.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), help="isdu: torch device (default auto)"
    )
    p.add_argument(
        "--tile", type=int, metavar="N", help="isdu: denoise on N^3 tiles (bounded memory)"
    )
    p.add_argument(
        "--b0-dir",
        nargs=3,
        type=float,
        metavar=("X", "Y", "Z"),
        help="B0 direction in array-axis coordinates (default: from the affine)",
    )
    p.add_argument("--b0-tesla", type=float, help="ndi: field strength (T), with --te-s")
    p.add_argument("--te-s", type=float, help="ndi: echo time in seconds, with --b0-tesla")
    p.add_argument(
        "--pad", type=int, help="zero padding per side, voxels (12; not isdu: it pads to x16)"
    )
    p.add_argument("--float64", action="store_true", help="compute in float64 (default float32)")
    p.set_defaults(func=run)
    return p


def load_field_and_mask(field_path: str, mask_path: str):
    """Read a field and its mask; check grids, emptiness and NaN/inf inside the mask, each error
    naming the offending file. Returns (field Volume, mask as bool array)."""
    import numpy as np

    from ..errors import QSMInputError
    from ..io.nifti import load_volume
    from ..physics.validation import check_finite, check_mask

    vol = load_volume(field_path, ndim=3)
    mvol = load_volume(mask_path, ndim=3)
    mask = check_mask(mvol.data, vol.data.shape, source=mvol.path)
    if not np.allclose(mvol.affine, vol.affine, rtol=0.0, atol=1e-3):
        raise QSMInputError(f"mask affine differs from the field's ({field_path})", mvol.path)
    bad = ~np.isfinite(vol.data) & mask
    if bad.any():
        raise QSMInputError(
            f"field has {int(bad.sum())} NaN/inf voxel(s) inside the mask", vol.path
        )
    vol.data = check_finite(vol.data, "field", vol.path, mask=mask)
    return vol, mask


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..errors import QSMInputError
    from ..io.nifti import load_volume, save_volume
    from ..physics import inversion
    from ..physics.kernel import normalise_b0_dir
    from ..physics.units import ppm_to_rad

    vol, mask = load_field_and_mask(args.field, args.mask)
    b0_dir = normalise_b0_dir(args.b0_dir) if args.b0_dir is not None else vol.b0_dir
    voxel_size = vol.voxel_size
    dtype = np.float64 if args.float64 else np.float32
    method = args.method
    if method == "isdu":
        return _run_isdu(args, vol, mask, b0_dir)
    for flag, value in (
        ("--shared-weights", args.shared_weights),
        ("--device", args.device),
        ("--tile", args.tile),
    ):
        if value not in (None, False):
            raise QSMInputError(f"{flag} applies to isdu only")
    pad = 12 if args.pad is None else args.pad
    opts: dict = {"pad": pad, "dtype": dtype}
    if pad < 0:
        raise QSMInputError(f"--pad must be >= 0, got {pad}")
    if (args.b0_tesla is None) != (args.te_s is None):
        raise QSMInputError("--b0-tesla and --te-s must be given together")
    if args.b0_tesla is not None and method != "ndi":
        raise QSMInputError(f"--b0-tesla/--te-s apply to ndi only (method {method} is linear)")
    if args.weights and method != "ndi":
        raise QSMInputError("--weights applies to ndi only")
    if args.threshold is not None and method not in _DEFAULT_THRESHOLD:
        raise QSMInputError(f"--threshold does not apply to {method}")
    if args.iterations is not None and method not in ("ndi", "star"):
        raise QSMInputError(f"--iterations does not apply to {method}")
    if args.lam is not None and method not in ("cfl2", "ndi", "star"):
        raise QSMInputError(f"--lambda does not apply to {method}")
    if args.iterations is not None and args.iterations < 1:
        raise QSMInputError(f"--iterations must be >= 1, got {args.iterations}")

    if method in ("tkd", "tsvd"):
        opts["threshold"] = args.threshold if args.threshold is not None else 0.15
    elif method == "cfl2":
        opts["lam"] = args.lam if args.lam is not None else 0.01
        opts["regulariser"] = args.regulariser
    elif method == "ndi":
        if args.iterations is not None:
            opts["iterations"] = args.iterations
        if args.lam is not None:
            opts["alpha"] = args.lam
        if args.b0_tesla is not None:
            opts["field_scale"] = float(ppm_to_rad(1.0, args.te_s, args.b0_tesla))
        if args.weights:
            wvol = load_volume(args.weights, ndim=3)
            if wvol.data.shape != vol.data.shape:
                raise QSMInputError(
                    f"weights grid {wvol.data.shape} does not match the field "
                    f"{vol.data.shape} ({args.field})",
                    wvol.path,
                )
            bad = ~np.isfinite(wvol.data) & mask
            if bad.any():
                raise QSMInputError("weights have NaN/inf inside the mask", wvol.path)
            opts["weights"] = np.where(mask, wvol.data, 0)
    elif method == "star":
        if args.threshold is not None:
            opts["kernel_threshold"] = args.threshold
        if args.lam is not None:
            opts["weak_lambda"] = args.lam
        if args.iterations is not None:
            opts["iterations"] = (args.iterations, args.iterations)

    chi = inversion.invert(method, vol.data, mask, voxel_size, b0_dir, **opts)
    params = {k: v for k, v in opts.items() if k not in ("dtype", "weights")}
    sidecar = {
        "Method": method,
        "Units": "ppm",
        "InputField": str(args.field),
        "Mask": str(args.mask),
        "B0Direction": [float(x) for x in b0_dir],
        "B0DirectionSource": "--b0-dir" if args.b0_dir is not None else "affine",
        "VoxelSizeMM": [float(x) for x in voxel_size],
        "Parameters": params,
        "DipoleKernelDC": 0.0,
    }
    out = save_volume(args.output, chi, vol.affine, dtype=dtype, sidecar=sidecar)
    print(
        f"qsmflow invert: {method} -> {out} (b0 = {np.round(b0_dir, 4).tolist()}, "
        f"voxel {np.round(voxel_size, 4).tolist()} mm)"
    )
    return 0


def _run_isdu(args: argparse.Namespace, vol, mask, b0_dir) -> int:
    """``--method isdu``: load the weights (our format or the authors'), predict, save."""
    import numpy as np

    from ..errors import QSMInputError
    from ..io.nifti import save_volume
    from ..models.inference import invert_isdu, isdu_sidecar

    for flag, value in (
        ("--threshold", args.threshold),
        ("--lambda", args.lam),
        ("--b0-tesla", args.b0_tesla),
        ("--te-s", args.te_s),
        ("--pad", args.pad),
    ):
        if value is not None:
            raise QSMInputError(f"{flag} does not apply to isdu")
    if args.regulariser != "identity":
        raise QSMInputError("--regulariser does not apply to isdu")
    if args.iterations is not None and args.iterations < 1:
        raise QSMInputError(f"--iterations must be >= 1, got {args.iterations}")
    if args.tile is not None and args.tile < 1:
        raise QSMInputError(f"--tile must be >= 1, got {args.tile}")
    chi, info = invert_isdu(
        vol.data,
        mask,
        vol.voxel_size,
        b0_dir,
        weights=args.weights,
        iterations=args.iterations,
        shared_weights=True if args.shared_weights else None,
        device=args.device or "auto",
        tile_size=args.tile,
        float64=args.float64,
    )
    sidecar = {
        "Method": "isdu",
        "Units": "ppm",
        "InputField": str(args.field),
        "Mask": str(args.mask),
        "B0Direction": [float(x) for x in b0_dir],
        "B0DirectionSource": "--b0-dir" if args.b0_dir is not None else "affine",
        "VoxelSizeMM": [float(x) for x in vol.voxel_size],
        **isdu_sidecar(info),
        "Parameters": info,
    }
    dtype = np.float64 if args.float64 else np.float32
    out = save_volume(args.output, chi, vol.affine, dtype=dtype, sidecar=sidecar)
    tiles = "" if args.tile is None else f", tiles {args.tile}"
    print(
        f"qsmflow invert: isdu (K = {info['iterations']}, "
        f"{'shared' if info['shared_weights'] else 'unshared'}, {info['device']}{tiles}) -> "
        f"{out} (b0 = {np.round(b0_dir, 4).tolist()}, "
        f"voxel {np.round(vol.voxel_size, 4).tolist()} mm)"
    )
    return 0
