"""The training recipe of a preset: which datasets it selects and how its stages chain.

``qsmflow train`` is a thin adapter around :func:`run_preset`:

* **Data** (:func:`preset_datasets`): patch-set folders (``--patches`` or ``[data] patches``)
  give :class:`~qsmflow.training.dataset.PatchDataset`; ``--simulate N`` or ``[simulate]
  count`` give :class:`~qsmflow.training.dataset.SimulatedPatchDataset`; otherwise
  ``[phantoms]`` gives :class:`~qsmflow.training.synthetic.PhantomPatchDataset`; patch sets
  from the preset and ``[phantoms]`` together are mixed into one
  :class:`~qsmflow.training.dataset.MixedDataset` (e.g. realistic patch sets plus phantoms,
  ``workflows/train-isdu-realistic.toml``). A validation
  set of the simulated kinds (``val_count``) uses the seed plus :data:`VALIDATION_SEED_OFFSET`
  (other subjects, crops and directions).
* **Stages** (:func:`run_stages`): run in order, each in ``OUTPUT/<stage name>/`` (a preset
  with one stage trains directly in ``OUTPUT``); ``init_from = "previous"`` starts from the
  previous stage's ``final.pt``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..errors import QSMInputError
from ..models.kernels import ISDU_KERNEL_K0
from . import ddp
from .config import TrainPreset, load_train_preset, train_config_from_dict
from .state import FINAL_NAME

#: Added to a simulated dataset's seed for its validation set.
VALIDATION_SEED_OFFSET = 7919

#: ``report(stage name, final checkpoint, CSV log)`` after each stage (rank 0 only).
StageReport = Callable[[str, Path, Path], None]


@dataclass(frozen=True)
class StageOverrides:
    """Settings given for every stage of a run (the ``qsmflow train`` options).

    ``only``: run only these stages (the others' ``final.pt`` still chain); ``init_from``: the
    first stage run starts from this checkpoint; the rest replace the preset's settings where
    not None.
    """

    epochs: int | None = None
    device: str | None = None
    num_workers: int | None = None
    progress: bool = True
    resume: bool = False
    init_from: str | None = None
    only: Sequence[str] | None = None


def preset_path(p: str, base: Path) -> str:
    """Preset paths: absolute, or relative to the current directory if that exists, else to
    the preset's folder."""
    q = Path(p)
    if q.is_absolute() or q.exists():
        return str(q)
    alt = base / q
    return str(alt) if alt.exists() else str(q)


def kernel_k0_of(preset: TrainPreset) -> float:
    """The kernel value at k = 0 (``kernel_dc_value``) shared by all stages of a preset."""
    values = {float(v.get("kernel_dc_value", ISDU_KERNEL_K0)) for _, v in preset.stages}
    if len(values) > 1:
        raise QSMInputError("stages use different kernel_dc_value", preset.source)
    return values.pop()


def _with_validation_seed(opts: dict[str, Any]) -> dict[str, Any]:
    return {**opts, "seed": int(opts.get("seed", 0)) + VALIDATION_SEED_OFFSET}


def preset_datasets(
    preset: TrainPreset,
    base_dir: Path,
    *,
    patches: Sequence[str] | None = None,
    val_patches: Sequence[str] | None = None,
    simulate: int | None = None,
) -> tuple[Dataset, Dataset | None]:
    """(training, validation or None) datasets of a preset (module docstring).

    ``patches``/``val_patches`` replace the preset's ``[data]`` folders; ``simulate`` (N >= 1)
    replaces them by N simulated patches (``[simulate]`` settings).
    """
    from .dataset import MixedDataset, PatchDataset, SimulatedPatchDataset

    data, sim = preset.data, dict(preset.simulate)
    if patches and simulate is not None:
        raise QSMInputError("give either --patches or --simulate, not both")
    from_preset = simulate is None  # --simulate replaces the preset's patch sets
    patches = patches or (
        [preset_path(p, base_dir) for p in data.get("patches", [])] if from_preset else []
    )
    val_patches = val_patches or (
        [preset_path(p, base_dir) for p in data.get("val_patches", [])] if from_preset else []
    )
    count = simulate if simulate is not None else sim.pop("count", 0)
    sim.pop("count", None)
    val_count = sim.pop("val_count", 0)
    if simulate is not None and simulate < 1:
        raise QSMInputError(f"--simulate must be >= 1, got {simulate}")
    k0 = kernel_k0_of(preset)
    if patches:
        dataset: Dataset = PatchDataset(
            patches,
            kernel_k0=k0,
            augment=bool(data.get("augment", False)),
            seed=int(preset.stages[0][1].get("seed", 0)),
        )
        val = PatchDataset(val_patches, kernel_k0=k0) if val_patches else None
        if preset.phantoms and from_preset:
            # patch sets and [phantoms] together: one mixed training set (validation: the
            # patch sets' validation folders, else the phantoms')
            extra, extra_val = _phantom_datasets(dict(preset.phantoms), k0, base_dir, preset.source)
            dataset = MixedDataset([dataset, extra])
            val = val or extra_val
        return dataset, val
    if count or not preset.phantoms:
        if not count:
            raise QSMInputError(
                "no training data: give --patches DIR ... or --simulate N (or [data] patches, "
                "[simulate] count or [phantoms] count in the preset)"
            )
        return _simulated(
            SimulatedPatchDataset, "simulate", sim, count, val_count, k0, preset.source
        )
    return _phantom_datasets(dict(preset.phantoms), k0, base_dir, preset.source)


def _simulated(
    cls: type,
    table: str,
    opts: dict[str, Any],
    count: int,
    val_count: int,
    k0: float,
    preset_or_source: TrainPreset | str | None,
) -> tuple[Dataset, Dataset | None]:
    """A simulated dataset and its validation set (other seed); bad settings name the table."""
    source = (
        preset_or_source.source if isinstance(preset_or_source, TrainPreset) else preset_or_source
    )
    try:
        dataset = cls(int(count), kernel_k0=k0, **opts)
        val = None
        if val_count:
            val = cls(int(val_count), kernel_k0=k0, **_with_validation_seed(opts))
    except TypeError as exc:
        raise QSMInputError(f"invalid [{table}] settings ({exc})", source) from exc
    return dataset, val


def _phantom_datasets(
    opts: dict[str, Any], k0: float, base_dir: Path, source: str | None
) -> tuple[Dataset, Dataset | None]:
    """[phantoms]: augmented patches simulated from the head model and built-in phantoms."""
    from .synthetic import PhantomPatchDataset, default_data_dir

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
        opts["head_model_dir"] = preset_path(hm, base_dir)
    return _simulated(PhantomPatchDataset, "phantoms", opts, count, val_count, k0, source)


def run_stages(
    preset: TrainPreset,
    output: Path,
    dataset: Dataset,
    val: Dataset | None,
    overrides: StageOverrides,
    report: StageReport | None = None,
) -> list[Path]:
    """Train the preset's stages in order (module docstring); returns the final checkpoints.

    The process group of a ``torchrun`` launch is kept between stages; the caller destroys it
    (:func:`~qsmflow.training.ddp.shutdown_all`).
    """
    from .trainer import train

    source = preset.source
    base_dir = Path(source).resolve().parent if source else Path.cwd()
    single = len(preset.stages) == 1
    previous: Path | None = None
    first = True
    finals = []
    for name, values in preset.stages:
        stage_dir = output if single else output / name
        if overrides.only and name not in overrides.only:
            previous = stage_dir / FINAL_NAME
            continue
        values = dict(values)
        values["output_dir"] = str(stage_dir)
        if first and overrides.init_from:
            values["init_from"] = overrides.init_from
        elif values.get("init_from") == "previous":
            if previous is None or not previous.is_file():
                raise QSMInputError(
                    f"stage {name!r} starts from the previous stage's {FINAL_NAME}, which does "
                    f"not exist ({previous}); run that stage first or give --init-from"
                )
            values["init_from"] = str(previous)
        elif values.get("init_from"):
            values["init_from"] = preset_path(values["init_from"], base_dir)
        for key in ("epochs", "device", "num_workers"):
            if getattr(overrides, key) is not None:
                values[key] = getattr(overrides, key)
        if not overrides.progress:
            values["progress"] = False
        values["resume"] = bool(overrides.resume)
        cfg = train_config_from_dict(values, source).validate(source)
        final = train(cfg, dataset, val, keep_process_group=True)
        if report is not None:
            report(name, final, stage_dir / cfg.log_csv)
        finals.append(final)
        previous = final
        first = False
    return finals


def run_preset(
    config: str | os.PathLike,
    *,
    output: str | os.PathLike | None = None,
    patches: Sequence[str] | None = None,
    val_patches: Sequence[str] | None = None,
    simulate: int | None = None,
    overrides: StageOverrides | None = None,
    report: StageReport | None = None,
) -> list[Path]:
    """Read a preset, select its data and train its stages; returns the final checkpoints.

    ``output`` defaults to the first stage's ``output_dir``. Bad options raise
    :class:`QSMInputError`. Under ``torchrun`` the process group is destroyed at the end.
    """
    overrides = overrides or StageOverrides()
    preset = load_train_preset(config)
    base_dir = Path(config).resolve().parent
    names = [n for n, _ in preset.stages]
    if overrides.only:
        missing = [s for s in overrides.only if s not in names]
        if missing:
            raise QSMInputError(
                f"unknown stage(s) {', '.join(missing)}; the preset has {', '.join(names)}",
                preset.source,
            )
    if overrides.epochs is not None and overrides.epochs < 1:
        raise QSMInputError(f"--epochs must be >= 1, got {overrides.epochs}")
    if overrides.num_workers is not None and overrides.num_workers < 0:
        raise QSMInputError(f"--num-workers must be >= 0, got {overrides.num_workers}")
    out = output or preset.stages[0][1].get("output_dir")
    if not out:
        raise QSMInputError("no output folder: give --output (or output_dir in the preset)")
    dataset, val = preset_datasets(
        preset, base_dir, patches=patches, val_patches=val_patches, simulate=simulate
    )
    try:
        return run_stages(preset, Path(out), dataset, val, overrides, report)
    finally:
        ddp.shutdown_all()


__all__ = [
    "VALIDATION_SEED_OFFSET",
    "StageOverrides",
    "kernel_k0_of",
    "preset_datasets",
    "preset_path",
    "run_preset",
    "run_stages",
]
