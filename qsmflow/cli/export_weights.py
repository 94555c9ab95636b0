"""``qsmflow export-weights``: an inference-only copy of a trained ISDU-QSMNet checkpoint."""

from __future__ import annotations

import argparse

HELP = "write an inference-only ISDU-QSMNet weights file from a training checkpoint"

DESCRIPTION = """\
Copy the model of a `qsmflow train` checkpoint (final.pt or checkpoints/epoch_NNNN.pt) into a
small inference-only file: architecture, weights, normalisation constants and the training
summary (epochs, losses, data description), without optimiser or RNG state. --recipe and
--note are recorded as provenance. Use the result with `qsmflow invert --method isdu --weights
FILE`; qsmflow's own default weights (qsmflow/data/isdu_default.pt) were made this way from
workflows/train-isdu-cpu.toml. Exit status 2 for an unusable checkpoint.
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export-weights",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", metavar="CKPT", help="qsmflow training checkpoint")
    p.add_argument("output", metavar="OUT", help="weights file to write (atomically)")
    p.add_argument("--recipe", metavar="FILE.toml", help="training preset to record (copied in)")
    p.add_argument("--note", default="", help="free text recorded with the weights")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import QSMInputError
    from ..models.checkpoints import export_weights
    from ..models.inference import file_sha256

    provenance: dict = {"source_checkpoint": Path(args.checkpoint).name}
    if args.note:
        provenance["note"] = args.note
    if args.recipe:
        recipe = Path(args.recipe)
        if not recipe.is_file():
            raise QSMInputError("recipe file not found", str(recipe))
        provenance["recipe_file"] = recipe.name
        provenance["recipe"] = recipe.read_text()
    out = export_weights(args.checkpoint, args.output, provenance)
    size = out.stat().st_size
    print(f"qsmflow export-weights: {out} ({size / 1e6:.2f} MB, sha256 {file_sha256(out)})")
    return 0
