"""Settings of ISDU-QSMNet training: one stage (:class:`TrainConfig`) and presets.

A preset (``qsmflow train --config``, e.g. ``workflows/train-isdu.toml``) holds settings shared
by all stages, ``[[stages]]`` tables overriding them and the data tables ``[data]``,
``[simulate]`` and ``[phantoms]`` (:func:`load_train_preset`). The TOML keys are the
:class:`TrainConfig` field names; the ``[simulate]``/``[phantoms]`` keys are the constructor
arguments of :class:`~qsmflow.training.dataset.SimulatedPatchDataset` and
:class:`~qsmflow.training.synthetic.PhantomPatchDataset` (read from their signatures).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import re
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

from ..errors import QSMInputError
from ..models.kernels import ISDU_KERNEL_K0
from .losses import LOSSES

#: "k1" and "unrolled": the ISDU stages; "train": the one stage of another model of the zoo.
STAGES = ("k1", "unrolled", "train")
AMP_DTYPES = ("bfloat16", "float16")


@dataclass
class TrainConfig:
    """Settings of one training stage (TOML keys of ``qsmflow train`` presets).

    architecture : the model, a name of :data:`qsmflow.models.registry.MODELS` (``isdu``
        default; ``spinet``, ``lpcnn``, ``qsmnet``, ``deepqsm``, ``xqsm``).
    stage : ISDU family: "k1" (one unrolled iteration, trained from scratch; the default) or
        "unrolled" (K iterations, usually initialised from a K = 1 checkpoint via
        ``init_from``). Other models: "train" (the default), from scratch or, with
        ``init_from``, from a qsmflow checkpoint of the same model.
    n_iterations : K (must be 1 for stage "k1").
    shared_weights : one denoiser for all K iterations (SW) instead of K (USW, the paper's).
    init_from : checkpoint whose (first) denoiser initialises every denoiser: a qsmflow
        checkpoint or the authors' plain WideResNet state_dict ``.pth``. A qsmflow checkpoint
        with this stage's K and weight sharing is loaded whole instead (fine-tuning: each
        denoiser, lambda and p keep their values; the architecture and normalisation are the
        checkpoint's). Used only when the run does not resume.
    epochs : total number of epochs (a resumed run continues up to this number).
    patches_per_epoch : random subset (RS) size per epoch; 0 or None: all patches.
    batch_size : patches per step and process.
    lr : Adam learning rate.
    loss : "combined" (L1 + 0.5 Sobel-edge L1 + 0.5 model loss; the paper's), "combined_l2"
        (the authors' L2 variant) or "mse" (voxel MSE).
    seed : seeds model initialisation, dropout, RS sampling and augmentation.
    num_workers : DataLoader worker processes.
    amp : CUDA mixed precision (ignored on CPU); amp_dtype "bfloat16" or "float16".
    device : "auto" (CUDA if available), "cpu", "cuda" or "cuda:N".
    output_dir : run folder (see the module docstring).
    log_csv : CSV log file name inside ``output_dir``.
    tensorboard : also log to ``output_dir/tensorboard`` (needs the tensorboard package).
    progress : tqdm progress bars (rank 0 only).
    keep_checkpoints : keep only the newest N epoch checkpoints (0: keep all).
    max_grad_norm : clip the global gradient norm (0 or None: off; the paper does not clip).
    out_mean, out_std : susceptibility statistics (ppm) for the denoiser normalisation; None:
        from ``init_from``'s model, else from the dataset's ``normalisation``, else the
        authors' tr-stats values.
    cg_max_iter : CG update cap per unrolled iteration.
    kernel_dc_value : the dipole kernel's value at k = 0 in the dataset's kernels (1/3, the
        ISDU convention, :data:`~qsmflow.models.kernels.ISDU_KERNEL_K0`); checked against the
        dataset and recorded for inference. (The name is a TOML key and is stored in training
        checkpoints; "dc" here is the kernel's k = 0 value, not data consistency.)
    model : further keyword arguments of the model: ISDU family
        :class:`~qsmflow.models.isdu.ISDUQSMNet` (``width``, ``n_blocks``, ``dropout``,
        ``dc_mode``, ``learn_p``, ``denoiser``, ...); others their class's (e.g. LPCNN's
        ``n_iterations``, ``alpha_init``; the data-driven nets' ``in_mean`` ...).
    deterministic : request deterministic CUDA kernels (cudnn.deterministic, no benchmark).
    channels_last : keep the denoisers' convolution weights (and so their feature maps) in the
        ``channels_last_3d`` layout: the same model, ~25 % faster steps on the CPU (oneDNN) and
        usually on CUDA with ``amp``; results differ from ``false`` by float rounding only.
    resume : continue from the newest checkpoint in ``output_dir``.
    """

    architecture: str = "isdu"
    stage: str = ""
    n_iterations: int = 1
    shared_weights: bool = False
    init_from: str | None = None
    epochs: int = 1
    patches_per_epoch: int | None = None
    batch_size: int = 2
    lr: float = 1e-4
    loss: str = "combined"
    seed: int = 0
    num_workers: int = 0
    amp: bool = False
    amp_dtype: str = "bfloat16"
    device: str = "auto"
    output_dir: str = ""
    log_csv: str = "train_log.csv"
    tensorboard: bool = False
    progress: bool = True
    keep_checkpoints: int = 0
    max_grad_norm: float | None = None
    out_mean: float | None = None
    out_std: float | None = None
    cg_max_iter: int = 30
    kernel_dc_value: float = ISDU_KERNEL_K0
    model: dict[str, Any] = dc_field(default_factory=dict)
    deterministic: bool = False
    channels_last: bool = False
    resume: bool = False

    def validate(self, source: str | None = None) -> TrainConfig:
        """Check every setting; raise :class:`QSMInputError` naming ``source``."""

        def bad(msg: str) -> QSMInputError:
            return QSMInputError(msg, source)

        from ..models.registry import ISDU_FAMILY, MODELS

        if self.architecture not in MODELS:
            raise bad(f"architecture = {self.architecture!r}; choose from {', '.join(MODELS)}")
        isdu_family = self.architecture in ISDU_FAMILY
        if not self.stage:
            self.stage = (
                "k1"
                if isdu_family and self.n_iterations == 1
                else ("unrolled" if isdu_family else "train")
            )
        if self.stage not in STAGES:
            raise bad(f"stage = {self.stage!r}; choose from {', '.join(STAGES)}")
        if isdu_family == (self.stage == "train"):
            raise bad(
                f"stage {self.stage!r} does not fit architecture {self.architecture!r} "
                "(isdu/spinet: k1 or unrolled; the other models: train)"
            )
        if self.loss not in LOSSES:
            raise bad(f"loss = {self.loss!r}; choose from {', '.join(LOSSES)}")
        for key in ("n_iterations", "epochs", "batch_size", "cg_max_iter"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(f"{key} must be an integer >= 1, got {v!r}")
        for key in ("num_workers", "keep_checkpoints", "seed"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise bad(f"{key} must be an integer >= 0, got {v!r}")
        if self.stage == "k1" and self.n_iterations != 1:
            raise bad(f"stage 'k1' trains one iteration, got n_iterations = {self.n_iterations}")
        if self.stage == "k1" and self.init_from:
            raise bad("stage 'k1' is trained from scratch; init_from is for stage 'unrolled'")
        ppe = self.patches_per_epoch
        if ppe is not None and (isinstance(ppe, bool) or not isinstance(ppe, int) or ppe < 0):
            raise bad(f"patches_per_epoch must be an integer >= 0 (0: all), got {ppe!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise bad(f"lr must be a positive number, got {self.lr!r}")
        if self.amp_dtype not in AMP_DTYPES:
            raise bad(f"amp_dtype = {self.amp_dtype!r}; choose bfloat16 or float16")
        for key in ("amp", "shared_weights", "channels_last", "deterministic", "tensorboard"):
            if not isinstance(getattr(self, key), bool):
                raise bad(f"{key} must be true or false, got {getattr(self, key)!r}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(self.device)):
            raise bad(f"device = {self.device!r}; use auto, cpu, cuda or cuda:N")
        if self.max_grad_norm is not None and not (
            isinstance(self.max_grad_norm, (int, float)) and self.max_grad_norm >= 0
        ):
            raise bad(f"max_grad_norm must be >= 0, got {self.max_grad_norm!r}")
        if self.out_std is not None and not float(self.out_std) > 0:
            raise bad(f"out_std must be positive, got {self.out_std!r}")
        if not isinstance(self.model, dict):
            raise bad("model must be a table of ISDUQSMNet keyword arguments")
        reserved = {"n_iterations", "shared_weights", "out_mean", "out_std", "cg_max_iter"}
        if not isdu_family:
            reserved = {"out_mean", "out_std"}
        clash = reserved & set(self.model)
        if clash:
            raise bad(f"set {', '.join(sorted(clash))} at the top level, not in [model]")
        if not self.output_dir:
            raise bad("output_dir is not set (use --output)")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON values (checkpoints, ``train_config.json``)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def train_config_from_dict(values: dict[str, Any], source: str | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from a dict (e.g. a TOML table); unknown keys are errors."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise QSMInputError(
            f"unknown training setting(s) {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(sorted(known))})",
            source,
        )
    values = dict(values)
    if values.get("patches_per_epoch") == 0:
        values["patches_per_epoch"] = None
    if values.get("max_grad_norm") == 0:
        values["max_grad_norm"] = None
    if "lr" in values and isinstance(values["lr"], int) and not isinstance(values["lr"], bool):
        values["lr"] = float(values["lr"])
    return TrainConfig(**values)


@dataclass
class TrainPreset:
    """A ``qsmflow train`` preset: shared settings, stages, data and simulation tables."""

    stages: list[tuple[str, dict[str, Any]]]
    data: dict[str, Any]
    simulate: dict[str, Any]
    source: str | None = None
    phantoms: dict[str, Any] = dc_field(default_factory=dict)


_DATA_KEYS = frozenset({"patches", "val_patches", "augment"})
#: Keys of a dataset table beside the constructor's keyword arguments.
_COUNT_KEYS = frozenset({"count", "val_count"})
#: The recipe sets the kernel value at k = 0 (``kernel_dc_value``) and the item count itself.
_SET_BY_RECIPE = frozenset({"length", "kernel_k0"})


def dataset_table_keys(dataset_class: type) -> frozenset[str]:
    """Keys of a ``[simulate]``/``[phantoms]`` table: the dataset constructor's arguments
    (less those the recipe sets) plus ``count`` and ``val_count``."""
    params = inspect.signature(dataset_class.__init__).parameters
    return (frozenset(params) - {"self"} - _SET_BY_RECIPE) | _COUNT_KEYS


def load_train_preset(path: str | os.PathLike) -> TrainPreset:
    """Read a training preset TOML (see ``workflows/train-isdu.toml``); errors name the file.

    Top-level keys are :class:`TrainConfig` settings shared by all stages; ``[[stages]]``
    entries (each with a ``name``) override them per stage and run in order (no ``[[stages]]``:
    one stage named "train"); ``init_from = "previous"`` takes the previous stage's
    ``final.pt``. ``[data]`` (``patches``, ``val_patches``, ``augment``), ``[simulate]``
    (:class:`~qsmflow.training.dataset.SimulatedPatchDataset` options plus ``count`` and
    ``val_count``) and ``[phantoms]`` (:class:`~qsmflow.training.synthetic.PhantomPatchDataset`
    options plus ``count`` and ``val_count``) describe the training data.
    """
    import tomllib

    p = Path(path)
    src = str(p)
    if not p.is_file():
        raise QSMInputError("config file not found", src)
    try:
        values = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise QSMInputError(f"not valid TOML ({exc})", src) from exc
    data = values.pop("data", {})
    simulate = values.pop("simulate", {})
    phantoms = values.pop("phantoms", {})
    stages_raw = values.pop("stages", None)
    from .dataset import SimulatedPatchDataset
    from .synthetic import PhantomPatchDataset

    for name, table, keys in (
        ("data", data, _DATA_KEYS),
        ("simulate", simulate, dataset_table_keys(SimulatedPatchDataset)),
        ("phantoms", phantoms, dataset_table_keys(PhantomPatchDataset)),
    ):
        if not isinstance(table, dict):
            raise QSMInputError(f"[{name}] must be a table", src)
        unknown = sorted(set(table) - keys)
        if unknown:
            raise QSMInputError(
                f"unknown [{name}] key(s) {', '.join(unknown)} (known: {', '.join(sorted(keys))})",
                src,
            )
    shared = values
    train_config_from_dict({**shared, "output_dir": "x"}, src)  # check keys early
    stages: list[tuple[str, dict[str, Any]]] = []
    if stages_raw is None:
        stages.append(("train", dict(shared)))
    else:
        if not isinstance(stages_raw, list) or not stages_raw:
            raise QSMInputError("stages must be a non-empty array of tables ([[stages]])", src)
        seen = set()
        for i, st in enumerate(stages_raw):
            if not isinstance(st, dict):
                raise QSMInputError(f"stages[{i}] is not a table", src)
            st = dict(st)
            name = st.pop("name", f"stage{i + 1}")
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise QSMInputError(f"stages[{i}].name {name!r} is not a plain folder name", src)
            if name in seen:
                raise QSMInputError(f"duplicate stage name {name!r}", src)
            seen.add(name)
            merged = {**shared, **st}
            if merged.get("init_from") == "previous" and i == 0:
                raise QSMInputError("the first stage cannot use init_from = 'previous'", src)
            merged_model = {**shared.get("model", {}), **st.get("model", {})}
            if merged_model:
                merged["model"] = merged_model
            check = {**merged, "output_dir": "x"}
            if check.get("init_from") == "previous":
                check["init_from"] = "x"
            train_config_from_dict(check, src).validate(src)
            stages.append((name, merged))
    return TrainPreset(
        stages=stages,
        data=dict(data),
        simulate=dict(simulate),
        source=src,
        phantoms=dict(phantoms),
    )


__all__ = [
    "LOSSES",
    "STAGES",
    "TrainConfig",
    "TrainPreset",
    "dataset_table_keys",
    "load_train_preset",
    "train_config_from_dict",
]
