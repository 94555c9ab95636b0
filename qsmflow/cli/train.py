"""``qsmflow train``: train ISDU-QSMNet from patch sets or simulated patches (preset stages)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

HELP = "train ISDU-QSMNet (K=1 pre-training, then K unrolled iterations) from patch sets"

DESCRIPTION = """\
Train ISDU-QSMNet on training pairs (local field phi in ppm, COSMOS chi in ppm, mask, B0
direction per patch) written by `qsmflow run ... --pipeline training-data` (patch-set folders,
--patches), simulated on the fly from the built-in phantom (--simulate N), or simulated patch
by patch with augmentation from the QSM Challenge 2.0 head model and built-in phantoms (the
preset's [phantoms] table, as in workflows/train-isdu-cpu.toml, the recipe of the shipped
weights).

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


def register(subparsers) -> argparse.ArgumentParser:
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
    from ..errors import QSMInputError
    from ..training.dataset import PatchDataset, SimulatedPatchDataset
    from ..training.trainer import load_train_preset

    preset = load_train_preset(args.config)
    base_dir = Path(args.config).resolve().parent
    rank0 = int(os.environ.get("RANK", "0")) == 0

    # ---------------------------------------------------------------- stages and settings
    stages = preset.stages
    if args.stage:
        names = [n for n, _ in stages]
        missing = [s for s in args.stage if s not in names]
        if missing:
            raise QSMInputError(
                f"unknown stage(s) {', '.join(missing)}; the preset has {', '.join(names)}",
                preset.source,
            )
    if args.epochs is not None and args.epochs < 1:
        raise QSMInputError(f"--epochs must be >= 1, got {args.epochs}")
    if args.num_workers is not None and args.num_workers < 0:
        raise QSMInputError(f"--num-workers must be >= 0, got {args.num_workers}")
    output = args.output or stages[0][1].get("output_dir")
    if not output:
        raise QSMInputError("no output folder: give --output (or output_dir in the preset)")
    output = Path(output)
    single = len(stages) == 1

    # ---------------------------------------------------------------- data
    data, sim = preset.data, dict(preset.simulate)
    if args.patches and args.simulate is not None:
        raise QSMInputError("give either --patches or --simulate, not both")
    from_preset = args.simulate is None  # --simulate replaces the preset's patch sets
    patches = args.patches or (
        [_path(p, base_dir) for p in data.get("patches", [])] if from_preset else []
    )
    val_patches = args.val_patches or (
        [_path(p, base_dir) for p in data.get("val_patches", [])] if from_preset else []
    )
    count = args.simulate if args.simulate is not None else sim.pop("count", 0)
    sim.pop("count", None)
    val_count = sim.pop("val_count", 0)
    if args.simulate is not None and args.simulate < 1:
        raise QSMInputError(f"--simulate must be >= 1, got {args.simulate}")
    dc_values = {float(v.get("kernel_dc_value", 1.0 / 3.0)) for _, v in stages}
    if len(dc_values) > 1:
        raise QSMInputError("stages use different kernel_dc_value", preset.source)
    dc_value = dc_values.pop()
    if patches:
        dataset = PatchDataset(
            patches,
            dc_value=dc_value,
            augment=bool(data.get("augment", False)),
            seed=int(stages[0][1].get("seed", 0)),
        )
        val = PatchDataset(val_patches, dc_value=dc_value) if val_patches else None
    elif count or not preset.phantoms:
        if not count:
            raise QSMInputError(
                "no training data: give --patches DIR ... or --simulate N (or [data] patches, "
                "[simulate] count or [phantoms] count in the preset)"
            )
        try:
            dataset = SimulatedPatchDataset(int(count), dc_value=dc_value, **sim)
            if val_count:
                vsim = dict(sim)
                vsim["seed"] = int(sim.get("seed", 0)) + 7919  # other subjects and directions
                val = SimulatedPatchDataset(int(val_count), dc_value=dc_value, **vsim)
            else:
                val = None
        except TypeError as exc:
            raise QSMInputError(f"invalid [simulate] settings ({exc})", preset.source) from exc
    else:
        dataset, val = _phantom_datasets(dict(preset.phantoms), dc_value, base_dir, preset.source)

    # ---------------------------------------------------------------- run the stages
    from ..training import ddp

    try:
        _run_stages(args, stages, output, single, dataset, val, preset.source, rank0)
    finally:
        ddp.shutdown_all()
    return 0


def _run_stages(args, stages, output, single, dataset, val, source, rank0) -> None:
    from ..errors import QSMInputError
    from ..training.trainer import FINAL_NAME, config_from_dict, train

    base_dir = Path(source).resolve().parent if source else Path.cwd()
    previous: Path | None = None
    first = True
    for name, values in stages:
        stage_dir = output if single else output / name
        if args.stage and name not in args.stage:
            previous = stage_dir / FINAL_NAME
            continue
        values = dict(values)
        values["output_dir"] = str(stage_dir)
        if first and args.init_from:
            values["init_from"] = args.init_from
        elif values.get("init_from") == "previous":
            if previous is None or not previous.is_file():
                raise QSMInputError(
                    f"stage {name!r} starts from the previous stage's {FINAL_NAME}, which does "
                    f"not exist ({previous}); run that stage first or give --init-from"
                )
            values["init_from"] = str(previous)
        elif values.get("init_from"):
            values["init_from"] = _path(values["init_from"], base_dir)
        if args.epochs is not None:
            values["epochs"] = args.epochs
        if args.device is not None:
            values["device"] = args.device
        if args.num_workers is not None:
            values["num_workers"] = args.num_workers
        if args.no_progress:
            values["progress"] = False
        values["resume"] = bool(args.resume)
        cfg = config_from_dict(values, source).validate(source)
        final = train(cfg, dataset, val, keep_process_group=True)
        if rank0:
            print(f"qsmflow train: stage {name}: {final} (log {stage_dir / cfg.log_csv})")
        previous = final
        first = False


def _phantom_datasets(opts: dict, dc_value: float, base_dir: Path, source: str | None):
    """[phantoms]: augmented patches simulated from the head model and built-in phantoms."""
    from ..errors import QSMInputError
    from ..training.synthetic import PhantomPatchDataset, default_data_dir

    count = int(opts.pop("count", 0))
    val_count = int(opts.pop("val_count", 0))
    if count < 1:
        raise QSMInputError("[phantoms] count must be >= 1", source)
    hm = opts.get("head_model_dir")
    if hm is None:
        hm_dir = default_data_dir() / "qsm2_head_model"
        if not hm_dir.is_dir():
            raise QSMInputError(
                f"[phantoms] needs the QSM Challenge 2.0 head model: {hm_dir} not found (set "
                "QSMFLOW_TEST_DATA or head_model_dir; head_model_dir = '' trains on the built-in "
                "phantom only)",
                source,
            )
        opts["head_model_dir"] = str(hm_dir)
    elif hm:
        opts["head_model_dir"] = _path(hm, base_dir)
    try:
        dataset = PhantomPatchDataset(count, dc_value=dc_value, **opts)
        val = None
        if val_count:
            vopts = dict(opts)
            vopts["seed"] = int(opts.get("seed", 0)) + 7919  # other crops, contrasts, directions
            val = PhantomPatchDataset(val_count, dc_value=dc_value, **vopts)
    except TypeError as exc:
        raise QSMInputError(f"invalid [phantoms] settings ({exc})", source) from exc
    return dataset, val


def _path(p: str, base: Path) -> str:
    """Preset paths: absolute, or relative to the current directory if that exists, else to
    the preset's folder."""
    q = Path(p)
    if q.is_absolute() or q.exists():
        return str(q)
    alt = base / q
    return str(alt) if alt.exists() else str(q)
