"""``qsmflow mask``: brain mask from a GRE magnitude (FSL BET or qsmflow's python method)."""

from __future__ import annotations

import argparse

from ..backends import BACKENDS

HELP = "brain mask from a (multi-echo) GRE magnitude: FSL BET or the python method"

DESCRIPTION = """\
Compute a brain mask from MAGNITUDE (3-D, or 4-D multi-echo with echoes last: the first echo
is used) and write it to --output as a uint8 NIfTI (1 = brain) on the input grid, with a JSON
sidecar naming the backend (MaskBackend), the voxel count and the volume.

Backends: auto (default) runs FSL BET when `bet` is on PATH and the python method otherwise;
fsl insists on FSL (error 2 without it); python never uses FSL. --frac is BET's fractional
intensity threshold (-f, 0-1, smaller = larger brain; FSL only). The python method
(qsmflow.masking.brain_mask) thresholds, opens and fills the magnitude in mm, then strips the
CSF shell.
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "mask",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("magnitude", metavar="MAGNITUDE", help="magnitude NIfTI, 3-D or 4-D")
    p.add_argument("-o", "--output", required=True, metavar="MASK", help="output mask NIfTI")
    p.add_argument("--backend", choices=BACKENDS, help="default auto")
    p.add_argument("--frac", type=float, help="BET fractional intensity (FSL only, 0.5)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..steps.masking import brain_mask_file
    from . import step_arguments

    result = brain_mask_file(**step_arguments(brain_mask_file, args, out_file="output"))
    side = result.sidecar
    print(
        f"qsmflow mask: {side['MaskBackend']} backend -> {result.outputs['mask']} "
        f"({side['Voxels']} voxels, {side['VolumeML']:.1f} mL)"
    )
    return 0
