"""``qsmflow train``: train ISDU-QSMNet or another model of the zoo from patch sets or simulated
patches (preset stages)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

HELP = "train ISDU-QSMNet (K=1, then K unrolled iterations) or any model of `qsmflow models`"

DESCRIPTION = """\
Train ISDU-QSMNet on training pairs (local field phi in ppm, COSMOS chi in ppm, mask, B0
direction per patch) written by `qsmflow run ... --pipeline training-data` (patch-set folders,
--patches), simulated on the fly from the built-in phantom (--simulate N), or simulated patch
by patch with augmentation from the QSM Challenge 2.0 head model and built-in phantoms (the
preset's [phantoms] table, as in workflows/train-isdu-cpu.toml); patch sets together with a
[phantoms] table are mixed (workflows/train-isdu-realistic.toml, the fine-tuning recipe of the
shipped weights, on the patch sets of `qsmflow realistic-patches`). An init_from checkpoint of
qsmflow with the stage's K and weight sharing is loaded whole (fine-tuning).

The preset's `architecture` picks the model (default isdu; spinet, lpcnn, qsmnet, deepqsm,
xqsm: `qsmflow models`, presets workflows/train-<model>.toml with the supplement's settings;
`[model] denoiser = "simple-cnn" | "unet-mini" | "unet-heavy"` swaps ISDU's denoiser for the
ablation). Every model goes through the same trainer, losses and checkpoint format (the model's
name is in it), so `qsmflow invert --method <model> --weights OUTPUT/final.pt` runs the result.

The preset (--config, see workflows/train-isdu.toml) lists the stages, run in order, each in
OUTPUT/<stage name>/ (a preset without [[stages]] trains one stage directly in OUTPUT):
checkpoints/epoch_NNNN.pt every epoch, final.pt, train_log.csv and train_config.json. A stage
with init_from = "previous" starts every denoiser from the previous stage's final.pt (the
paper: K=1 pre-training, then K=4 unshared weights initialised from it).

--resume continues every stage from its newest checkpoint (a finished stage is skipped) and
reproduces an uninterrupted run exactly. Multi-GPU / multi-process: launch with torchrun, e.g.
  torchrun --standalone --nproc_per_node 4 -m qsmflow train --config ... --output ...
(batch_size in the preset is per process). Exit status 0 on success, 2 for unusable
arguments, presets, data or checkpoints.
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config", required=True, metavar="FILE.toml", help="training preset (workflows/)"
    )
    p.add_argument(
        "--patches", nargs="+", metavar="DIR", help="patch-set folder(s) (qsmflow-patches)"
    )
    p.add_argument("--val-patches", nargs="+", metavar="DIR", help="validation patch set(s)")
    p.add_argument(
        "--simulate",
        type=int,
        metavar="N",
        help="train on N patches simulated from the built-in phantom (see [simulate])",
    )
    p.add_argument("--output", metavar="DIR", help="run folder (default: output_dir of the preset)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoints")
    p.add_argument("--epochs", type=int, metavar="N", help="override the epochs of every stage")
    p.add_argument("--stage", nargs="+", metavar="NAME", help="run only these stages of the preset")
    p.add_argument(
        "--init-from",
        metavar="CKPT",
        help="initialise the first stage run from this checkpoint (qsmflow or authors' .pth)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: preset or auto")
    p.add_argument("--num-workers", type=int, metavar="N", help="DataLoader workers")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..training.recipe import StageOverrides, run_preset

    rank0 = int(os.environ.get("RANK", "0")) == 0

    def report(name: str, final: Path, log_csv: Path) -> None:
        if rank0:
            print(f"qsmflow train: stage {name}: {final} (log {log_csv})")

    overrides = StageOverrides(
        epochs=args.epochs,
        device=args.device,
        num_workers=args.num_workers,
        progress=not args.no_progress,
        resume=bool(args.resume),
        init_from=args.init_from,
        only=args.stage,
    )
    run_preset(
        args.config,
        output=args.output,
        patches=args.patches,
        val_patches=args.val_patches,
        simulate=args.simulate,
        overrides=overrides,
        report=report,
    )
    return 0
