"""``qsmflow patches``: cut training pairs into a patch set (the pipeline's training-data step)."""

from __future__ import annotations

import argparse

HELP = "cut training pairs (local fields, COSMOS chi, mask, B0 directions) into a patch set"

DESCRIPTION = """\
Write the training patches of one subject, as `qsmflow run --pipeline training-data` does: the
COSMOS susceptibility CHI (ppm), its MASK (voxels > 0.5) and every orientation's local field
FIELD (ppm of B0) resampled onto CHI's grid (same affine), with one --b0-dir X Y Z per FIELD (in
FIELD order; unit vector in the grid's array axes). Patches of --patch-size^3 voxels lie on a
grid with --stride voxels; a patch is kept when more than --min-mask-fraction of it is inside
the mask. Output: a qsmflow-patches folder (field/chi/mask/b0_dir/orientation/origin .npy and
patches.json), written atomically; an existing non-empty folder needs --overwrite. Train on it
with `qsmflow train --patches DIR`. Exit status 2 for unusable inputs.
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from ..training.patch_grid import MIN_MASK_FRACTION, PATCH_SIZE, STRIDE

    p = subparsers.add_parser(
        "patches",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--b0-dir",
        dest="b0_dirs",
        required=True,
        action="append",
        nargs=3,
        type=float,
        metavar=("X", "Y", "Z"),
        help="B0 direction of one FIELD (repeat once per FIELD, in order)",
    )
    p.add_argument("fields", nargs="+", metavar="FIELD", help="local field NIfTI per orientation")
    p.add_argument("--chi", required=True, metavar="CHI", help="COSMOS susceptibility NIfTI, ppm")
    p.add_argument("-m", "--mask", required=True, metavar="MASK", help="mask NIfTI (> 0.5)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="patch-set folder")
    p.add_argument(
        "--patch-size", type=int, default=PATCH_SIZE, metavar="N", help=f"voxels ({PATCH_SIZE})"
    )
    p.add_argument("--stride", type=int, default=STRIDE, metavar="N", help=f"voxels ({STRIDE})")
    p.add_argument(
        "--min-mask-fraction",
        type=float,
        default=MIN_MASK_FRACTION,
        metavar="F",
        help=f"keep patches more than this much inside the mask ({MIN_MASK_FRACTION})",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing patch set")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..steps.patches import training_patches

    grid = {k: getattr(args, k) for k in ("patch_size", "stride", "min_mask_fraction")}
    paths = (args.fields, args.chi, args.mask, args.b0_dirs, args.output)
    result = training_patches(*paths, **grid, overwrite=args.overwrite)
    print(f"qsmflow patches: {result.values['count']} patches -> {result.outputs['patches']}")
    return 0
