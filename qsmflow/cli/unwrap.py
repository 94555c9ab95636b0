"""``qsmflow unwrap``: spatial phase unwrapping and multi-echo field fitting."""

from __future__ import annotations

import argparse
import logging

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


def register(subparsers) -> None:
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
        choices=("auto", "rad", "siemens", "siemens-raw"),
        default="auto",
        help="phase units: rad, siemens (-4096..4095 -> x pi/4096), siemens-raw (0..4095 -> "
        "x pi/2048 - pi); default auto from the value range",
    )
    p.add_argument(
        "--method",
        choices=("laplacian", "lsq", "temporal"),
        default=None,
        help="unwrapping method (default: temporal for multi-echo with TEs, else laplacian)",
    )
    p.add_argument("--offset-out", metavar="FILE", help="also write the fitted phase offset (rad)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..errors import QSMInputError
    from ..io.nifti import load_volume, save_volume
    from ..physics.multiecho import check_echo_times, multiecho_field
    from ..physics.unwrap import laplacian_unwrap, lsq_unwrap
    from ..physics.validation import check_mask, check_same_grid, phase_to_radians

    log = logging.getLogger("qsmflow.unwrap")
    vol = load_volume(args.phase, ndim=None)
    data = vol.data
    if data.ndim not in (3, 4):
        raise QSMInputError(f"phase must be 3-D or 4-D, got shape {data.shape}", vol.path)
    phase, units = phase_to_radians(data, vol.path, units=args.units)
    log.info("phase units: %s", units)
    grid = phase.shape[:3]
    finite = np.all(np.isfinite(phase), axis=3) if phase.ndim == 4 else np.isfinite(phase)
    if args.mask:
        mvol = load_volume(args.mask, ndim=3)
        check_same_grid(mvol.data.shape, grid, "mask vs phase", mvol.path)
        mask = check_mask(mvol.data, grid, mvol.path)
    else:
        mask = finite
        if not mask.all():
            log.warning("%d non-finite voxel(s) left out of the mask", int((~mask).sum()))
        mask = check_mask(mask, grid, vol.path)
    magnitude = None
    if args.magnitude:
        mag = load_volume(args.magnitude, ndim=None)
        check_same_grid(mag.data.shape, data.shape, "magnitude vs phase", mag.path)
        magnitude = mag.data
    vox = vol.voxel_size
    sidecar: dict = {"PhaseUnitsIn": units}
    if args.echo_times:
        n_echoes = phase.shape[3] if phase.ndim == 4 else 1
        te = check_echo_times(args.echo_times, n_echoes)
        method = args.method or ("temporal" if n_echoes > 1 else "laplacian")
        field, offset = multiecho_field(phase, magnitude, te, vox, mask, method=method)
        save_volume(
            args.output,
            field,
            vol.affine,
            sidecar={**sidecar, "Units": "Hz", "EchoTime": te.tolist(), "Method": method},
        )
        if args.offset_out:
            save_volume(args.offset_out, offset, vol.affine, sidecar={"Units": "rad"})
        return 0
    if args.offset_out:
        raise QSMInputError("--offset-out needs --echo-times (the offset comes from the fit)")
    method = args.method or "laplacian"
    if method == "temporal":
        raise QSMInputError("--method temporal needs --echo-times")
    unwrap_one = laplacian_unwrap if method == "laplacian" else lsq_unwrap
    if phase.ndim == 3:
        out = unwrap_one(phase, vox, mask=mask)
    else:
        out = np.stack(
            [unwrap_one(phase[..., n], vox, mask=mask) for n in range(phase.shape[3])], axis=3
        )
    save_volume(args.output, out, vol.affine, sidecar={**sidecar, "Units": "rad", "Method": method})
    return 0
