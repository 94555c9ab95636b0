"""``qsmflow realistic-patches``: training patches that look like measured data."""

from __future__ import annotations

import argparse

HELP = "simulate realistic acquisitions, run our chain and cut training patches (recipe TOML)"

DESCRIPTION = """\
Make the training patch sets of a recipe (e.g. workflows/realistic-patches.toml): every
[[acquisitions]] entry is a realistic multi-echo GRE simulation of the QSM Challenge 2.0 head
model (qsmflow.simulate.realism: 3 T or 7 T, noise, T2* decay, white-matter anisotropy, veins,
sub-voxel texture, residual background field) at its voxel size (mm) and B0 tilt (degrees from
array axis 2), with jittered brain susceptibilities; it is processed as `qsmflow run` processes
measured data (Python brain mask, multi-echo field fit, V-SHARP), and its local field (ppm) and
true susceptibility (ppm) are cut into a qsmflow-patches folder OUT/<name> inside the V-SHARP
mask. Sets already in OUT are kept (a rerun resumes). Train on them with `qsmflow train
--patches OUT/<name> ...`. About 2-4 min and 9 GB per 1 mm acquisition on 2 cores. Needs the
head model ($QSMFLOW_TEST_DATA/qsm2_head_model or --head-model). Exit status 2 for unusable
input.
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "realistic-patches",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "recipe", metavar="RECIPE", help="recipe TOML (workflows/realistic-patches.toml)"
    )
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="folder of the patch sets")
    p.add_argument("--only", nargs="+", metavar="NAME", help="make only these acquisitions")
    p.add_argument("--head-model", metavar="DIR", help="QSM Challenge 2.0 head-model folder")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..training.realistic import load_recipe, make_realistic_patch_sets

    recipe = load_recipe(args.recipe)
    sets = make_realistic_patch_sets(
        recipe, args.output, head_model_dir=args.head_model, only=args.only
    )
    print(f"qsmflow realistic-patches: {len(sets)} patch set(s) in {args.output}")
    return 0
