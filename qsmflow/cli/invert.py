"""``qsmflow invert``: single-orientation dipole inversion of a local field (ppm -> ppm)."""

from __future__ import annotations

import argparse

import numpy as np

HELP = (
    "dipole inversion of a local field (ppm) to susceptibility (ppm): TKD, TSVD, CFL2, NDI, "
    "STAR, TV, ISDU-QSMNet and the model zoo (spinet, lpcnn, qsmnet, deepqsm, xqsm)"
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
        --threshold t (default {tkd_threshold})
  tsvd  truncated SVD: 1/D where |D| > t, 0 elsewhere; --threshold t (default 0.15)
  cfl2  closed-form Tikhonov D/(D^2 + lambda Gamma); --lambda (default 0.01), --regulariser
        identity (Gamma = 1, default) or gradient (Gamma = |grad|^2 symbol, lambda in mm^2)
  ndi   nonlinear dipole inversion (Polak 2020), gradient descent with step 2;
        --stop discrepancy (default: stop when the residual rms reaches the noise level of
        the field, --noise-ppm or else estimated from the field) or iterations (run exactly
        --iterations); --iterations = the most steps (default {ndi_iterations}), --lambda =
        Tikhonov alpha (default 1e-5), --weights MAG (data weights, rescaled by their 99th
        percentile). On a ppm field NDI is Landweber iteration; with --b0-tesla and --te-s
        the field is converted to radians at that echo time for the data term (the paper's
        nonlinear behaviour); output is ppm either way.
  star  STAR-QSM (Wei 2015): two SpaRSA passes of l1-regularised inversion with the kernel
        thresholded at --threshold (default 0.065), strong sources first, then weak ones:
        --strong-lambda / --lambda = relative l1 weights of the two passes (default
        {star_strong} and {star_weak}, times max|A^T f|, so no unit dependence: no TE/B0
        needed), --iterations = most iterations per pass (default {star_iterations}), --tol =
        relative objective change that ends a pass (default {star_tol}).
  tv    total-variation regularised inversion, ADMM with FFT solves (Bilgic 2014 family):
        min 1/2||D chi - f||^2 + lambda ||G grad chi||_1; --lambda in ppm/(ppm/mm) (default
        {tv_lam}), --iterations (most ADMM steps, default {tv_iterations}), --tol (relative
        change of chi that stops it, default {tv_tol}), --weights MAG: MEDI-style edge weights
        G = 0 on the --edge-fraction (default {tv_edge}) of mask voxels with the largest
        magnitude gradient, 1 elsewhere (a 4-D magnitude is combined as the rms over echoes).
  isdu  ISDU-QSMNet (unrolled network, qsmflow.models.isdu): --weights FILE = a qsmflow
        checkpoint, the authors' single-denoiser .pth (e.g. their K=1 checkpoint; every one of
        the K denoisers starts as a copy) or their unshared model_*.pt dict, read with
        torch.load(weights_only=True) (never unpickling arbitrary objects). Without --weights
        the shipped qsmflow/data/isdu_default.pt is used (K = 4 unshared, width 16, trained on
        simulated head-model/phantom patches by workflows/train-isdu-cpu.toml, then fine-tuned
        on realistic acquisitions through our chain by workflows/train-isdu-realistic.toml;
        see README).
        --iterations K (default: the checkpoint's; 4 for a single-denoiser .pth),
        --shared-weights (one denoiser for all K iterations), --device auto|cpu|cuda
        (auto: CUDA when available), --tile N (run the denoisers on N^3 tiles with a 20-voxel
        halo: bounded memory, the same result), --adapt N (test-time data consistency, FINE:
        N Adam steps, learning rate --adapt-lr (default 1e-5), of the network's weights
        on the model loss of this field, one 64^3 crop per step, ~5-10 s per step on 2 CPU
        cores; qsmflow.models.adapt), --crop-margin N (run the denoisers only on the mask's
        bounding box grown by N + 17 voxels, exact to N voxels beyond it, default 8; within
        1e-3 of the whole-array result in the mask; -1 = the whole array). Its kernel has
        D(0) = 1/3 (the authors' convention) and every axis is zero-padded to a multiple of 16
        (split between both ends) instead of --pad. --float64 runs the whole network in
        float64. The sidecar records the weights file and its sha256, K, shared, device, tile,
        crop margin and the adaptation (steps, learning rate, model loss first and last step,
        seconds).
  spinet, lpcnn, qsmnet, deepqsm, xqsm  the other networks of the zoo (`qsmflow models`), with
        --weights FILE = a qsmflow checkpoint of that model (from `qsmflow train`; spinet also
        reads the authors' SpiNet-QSM .pth: K = 3, one shared denoiser, learned p, CG <= 25).
        --device, the 16-multiple padding and the sidecar as for isdu; --iterations and
        --shared-weights apply to spinet too, --tile, --crop-margin and --adapt to the
        WideResNet-denoiser ISDU family only. The data-driven nets (qsmnet, deepqsm, xqsm) see
        the field but not the dipole kernel, so they refuse a B0 direction more than 15 degrees
        from the third array axis unless --no-geometry-check is given.
"""

#: The step option each method-dependent flag sets (the step checks which method takes it).
_LAMBDA_OPTION = {"cfl2": "lam", "ndi": "alpha", "star": "weak_lambda", "tv": "lam"}
_THRESHOLD_OPTION = {"star": "kernel_threshold"}


def _description() -> str:
    """:data:`DESCRIPTION` with each method's defaults read from its signature."""
    from ..physics.inversion import method_options

    ndi, star, tv = (method_options(m) for m in ("ndi", "star", "tv"))
    star_its = np.broadcast_to(np.asarray(star["iterations"]), (2,))
    return DESCRIPTION.format(
        tkd_threshold=method_options("tkd")["threshold"],
        ndi_iterations=ndi["iterations"],
        star_strong=star["strong_lambda"],
        star_weak=star["weak_lambda"],
        star_iterations=" and ".join(str(int(i)) for i in star_its),
        star_tol=star["tol"],
        tv_lam=tv["lam"],
        tv_iterations=tv["iterations"],
        tv_tol=tv["tol"],
        tv_edge=tv["edge_fraction"],
    )


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from ..steps.inversion import INVERSION_METHODS, NETWORK_DEVICES

    p = subparsers.add_parser(
        "invert",
        help=HELP,
        description=_description(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("field", metavar="LOCALFIELD", help="local field NIfTI (3-D), ppm of B0")
    p.add_argument("-m", "--mask", required=True, metavar="MASK", help="mask NIfTI (voxels > 0)")
    p.add_argument("-o", "--output", required=True, metavar="CHI", help="output map NIfTI (ppm)")
    p.add_argument(
        "--method", choices=INVERSION_METHODS, default="tkd", help="inversion (default tkd)"
    )
    p.add_argument("--threshold", type=float, help="kernel threshold (tkd/tsvd, star)")
    p.add_argument(
        "--lambda",
        dest="lam",
        type=float,
        help="cfl2: lambda; ndi: alpha; star: weak-pass l1 weight; tv: TV weight",
    )
    p.add_argument("--strong-lambda", type=float, help="star: strong-pass l1 weight")
    p.add_argument(
        "--regulariser", choices=("identity", "gradient"), help="cfl2 only (default identity)"
    )
    p.add_argument("--iterations", type=int, help="ndi / tv most steps; star per pass; isdu K")
    p.add_argument("--tol", type=float, help="star / tv: relative change that stops it")
    p.add_argument(
        "--stop", choices=("discrepancy", "iterations"), help="ndi: stopping rule (discrepancy)"
    )
    p.add_argument("--noise-ppm", type=float, help="ndi: noise sd of the field, ppm (estimated)")
    p.add_argument(
        "--edge-fraction", type=float, help="tv: fraction of mask voxels left unpenalised"
    )
    p.add_argument(
        "--weights",
        metavar="FILE",
        help="ndi / tv: magnitude NIfTI (3-D or 4-D; data / edge weights); networks: model "
        "weights (.pt/.pth)",
    )
    p.add_argument(
        "--shared-weights", action="store_true", help="isdu: one denoiser for all K iterations"
    )
    p.add_argument(
        "--device", choices=NETWORK_DEVICES, help="networks: torch device (default auto)"
    )
    p.add_argument(
        "--no-geometry-check",
        action="store_true",
        help="qsmnet, deepqsm, xqsm: run even where B0 is tilted from the third axis",
    )
    p.add_argument(
        "--tile", type=int, metavar="N", help="isdu: denoise on N^3 tiles (bounded memory)"
    )
    p.add_argument(
        "--adapt", type=int, metavar="N", help="isdu: N steps of test-time adaptation (FINE)"
    )
    p.add_argument("--adapt-lr", type=float, metavar="LR", help="isdu: adaptation learning rate")
    p.add_argument(
        "--crop-margin",
        type=int,
        metavar="N",
        help="isdu: voxels around the mask's bounding box to compute (-1: whole array)",
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


def step_options(args: argparse.Namespace) -> dict:
    """The step options the given flags set for ``args.method`` (flags left out are not set,
    so the step's defaults apply; the step rejects an option its method does not take)."""
    from ..errors import QSMInputError
    from ..physics.units import ppm_to_rad
    from ..steps.inversion import NETWORK_METHODS

    method = args.method
    if (args.b0_tesla is None) != (args.te_s is None):
        raise QSMInputError("--b0-tesla and --te-s must be given together")
    given = {
        _THRESHOLD_OPTION.get(method, "threshold"): args.threshold,
        _LAMBDA_OPTION.get(method, "lambda"): args.lam,
        "regulariser": args.regulariser,
        "iterations": args.iterations,
        "strong_lambda": args.strong_lambda,
        "tol": args.tol,
        "stop": args.stop,
        "noise_ppm": args.noise_ppm,
        "edge_fraction": args.edge_fraction,
        "pad": args.pad,
        "shared_weights": True if args.shared_weights else None,
        "device": args.device,
        "tile_size": args.tile,
        "adapt": args.adapt,
        "adapt_lr": args.adapt_lr,
    }
    if args.crop_margin is not None:
        given["crop_margin"] = None if args.crop_margin < 0 else args.crop_margin
    if args.b0_tesla is not None:
        given["field_scale"] = float(ppm_to_rad(1.0, args.te_s, args.b0_tesla))
    if args.no_geometry_check:
        given["check_geometry"] = False
    if method in NETWORK_METHODS:
        given["weights"] = args.weights
    return {key: value for key, value in given.items() if value is not None or key == "crop_margin"}


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..steps.inversion import NETWORK_METHODS, invert_file

    method = args.method
    result = invert_file(
        args.field,
        args.mask,
        args.output,
        method=method,
        options=step_options(args),
        b0_dir=args.b0_dir,
        weights_image=args.weights if method not in NETWORK_METHODS else None,
        float64=args.float64,
    )
    used = result.sidecar["InversionOptions"]
    label = method
    if method in ("isdu", "spinet"):
        tiles = "" if used["tile_size"] is None else f", tiles {used['tile_size']}"
        tiles += f", adapted {used['adapt']} steps" if used["adapt"] else ""
        sharing = "shared" if used["shared_weights"] else "unshared"
        label = f"{method} (K = {used['iterations']}, {sharing}, {used['device']}{tiles})"
    elif method in NETWORK_METHODS:
        label = f"{method} ({used['device']})"
    print(
        f"qsmflow invert: {label} -> {result.outputs['chi']} "
        f"(b0 = {np.round(result.values['b0_dir'], 4).tolist()}, "
        f"voxel {np.round(result.sidecar['VoxelSizeMM'], 4).tolist()} mm)"
    )
    return 0
