"""``qsmflow export-weights``: an inference-only copy of a trained checkpoint (any model)."""

from __future__ import annotations

import argparse

HELP = "write an inference-only weights file from a training checkpoint (any model)"

DESCRIPTION = """\
Copy the model of a `qsmflow train` checkpoint (final.pt or checkpoints/epoch_NNNN.pt) into a
small inference-only file: architecture, weights, normalisation constants and the training
summary (epochs, losses, data description), without optimiser or RNG state. Provenance
recorded with it: --recipe (the training preset) and --data-recipe (e.g. the
realistic-patches recipe) copied in, --note, the sha256 and provenance of the checkpoint the
training started from (init_from) when that file is found, and for every patch-set folder of
the training data that is found, its size and the acquisition it was made from. Use the result
with `qsmflow invert --method <model> --weights FILE` (the model's name is in the file);
qsmflow's own default weights (qsmflow/data/isdu_default.pt) were made this way from
workflows/train-isdu-realistic.toml.
Exit status 2 for an unusable checkpoint.
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
    p.add_argument(
        "--data-recipe", metavar="FILE.toml", help="training-data recipe to record (copied in)"
    )
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
    for flag, key in ((args.recipe, "recipe"), (args.data_recipe, "data_recipe")):
        if flag:
            recipe = Path(flag)
            if not recipe.is_file():
                raise QSMInputError("recipe file not found", str(recipe))
            provenance[f"{key}_file"] = recipe.name
            provenance[key] = recipe.read_text()
    provenance.update(_training_inputs(Path(args.checkpoint)))
    out = export_weights(args.checkpoint, args.output, provenance)
    size = out.stat().st_size
    print(f"qsmflow export-weights: {out} ({size / 1e6:.2f} MB, sha256 {file_sha256(out)})")
    return 0


def _training_inputs(checkpoint) -> dict:
    """Where the training started (init_from: sha256, its provenance) and what the patch-set
    folders of its data were made from, as far as those files are still there."""
    import json
    from pathlib import Path

    from ..models.checkpoints import checkpoint_extra
    from ..models.inference import file_sha256

    training = checkpoint_extra(checkpoint).get("training") or {}
    out: dict = {}
    init = (training.get("config") or {}).get("init_from")
    if init and Path(init).is_file():
        prior = checkpoint_extra(init).get("provenance") or {}
        out["init_from"] = {
            "file": Path(init).name,
            "sha256": file_sha256(init),
            "recipe_file": prior.get("recipe_file"),
        }
    try:
        dataset = json.loads(training.get("dataset") or "{}")
    except (TypeError, ValueError):
        dataset = {}
    parts = dataset.get("parts", [dataset])
    sets = []
    for part in parts:
        for folder in part.get("folders", []) if isinstance(part, dict) else []:
            meta_file = Path(folder) / "patches.json"
            if not meta_file.is_file():
                continue
            meta = json.loads(meta_file.read_text())
            acq = (meta.get("sources") or {}).get("realistic_acquisition") or {}
            sets.append(
                {
                    "name": Path(folder).name,
                    "count": meta.get("count"),
                    "patch_size": meta.get("patch_size"),
                    "voxel_size_mm": meta.get("voxel_size_mm"),
                    "b0_dirs": meta.get("b0_dirs"),
                    "acquisition": acq.get("acquisition"),
                }
            )
    if sets:
        out["patch_sets"] = sets
    return out
