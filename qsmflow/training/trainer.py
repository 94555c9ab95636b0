"""Training of ISDU-QSMNet: K = 1 pre-training, then K unrolled iterations initialised from it.

Recipe (isdu_qsmnet_spec.md section 4): Adam (lr 1e-4, default betas, no weight decay, no
schedule, no clipping), batch 2, the combined loss (1 x L1 + 0.5 x Sobel-edge L1 + 0.5 x model
loss), 64^3 patches; a K = 1 model is trained first (27 epochs over all 16,800 patches in the
paper), then the K = 4 unshared model starts with every denoiser a copy of the K = 1 denoiser
(``stage="unrolled"``, ``init_from``) and trains on a random subset ("RS") of 4000 patches
per epoch. :func:`train` runs one stage; ``qsmflow train`` chains stages from a preset.

Output folder (``TrainConfig.output_dir``)::

    checkpoints/epoch_0001.pt ...  one per epoch (atomic), model + optimizer + RNG states
    final.pt                       the model after the last epoch (same format, no optimizer)
    train_log.csv                  epoch, train/val loss, seconds, patches/s, lambdas
    train_config.json              the settings of the run
    tensorboard/                   only with ``tensorboard = true`` and tensorboard installed

Checkpoints are :mod:`qsmflow.models.checkpoints` files (``load_isdu`` reads the model from any
of them); training checkpoints hold an ``extra["training"]`` entry: completed epochs, the
optimizer (and AMP scaler) state, the torch/CUDA/numpy/python RNG states of every rank, the
sampler state (seed and epoch: the RS permutation of epoch ``e`` is a pure function of them,
see :mod:`qsmflow.training.ddp`), the training settings and the per-epoch history. Everything is
stored as tensors and plain Python values and read back with ``torch.load(weights_only=True)``
-- never an arbitrary unpickle. ``resume=True`` continues from the newest checkpoint; a run
stopped after epoch e and resumed ends with exactly the weights of an uninterrupted run (same
device, settings and thread count; bit for bit on CPU).

Distributed: launched by ``torchrun`` (``WORLD_SIZE`` > 1) the trainer joins the process
group (NCCL on CUDA, gloo on CPU), wraps the model in ``DistributedDataParallel`` and gives
each rank ``batch_size`` patches of every global batch of ``batch_size * world_size``
(:class:`~qsmflow.training.ddp.RandomSubsetSampler`); BatchNorm statistics are per rank
(buffers broadcast from rank 0 each step) and only rank 0 writes files. ``batch_size`` is per
process.

Mixed precision (``amp = true``) uses ``torch.autocast`` on CUDA only (bfloat16 by default, or
float16 with a gradient scaler); on CPU it is ignored with a warning. The data-consistency
FFTs and the losses stay in float32.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable, Sized
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..errors import QSMInputError
from . import ddp
from .dataset import ISDU_DC_VALUE, dataset_description

log = logging.getLogger(__name__)

STAGES = ("k1", "unrolled")
LOSSES = ("combined", "combined_l2", "mse")
TRAIN_FORMAT = "qsmflow-train"
TRAIN_FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
FINAL_NAME = "final.pt"
_EPOCH_RE = re.compile(r"^epoch_(\d+)\.pt$")

#: Settings that must agree between a checkpoint and the run resuming it.
_RESUME_KEYS = (
    "stage",
    "n_iterations",
    "shared_weights",
    "patches_per_epoch",
    "batch_size",
    "lr",
    "loss",
    "seed",
    "cg_max_iter",
    "model",
    "kernel_dc_value",
    "max_grad_norm",
)

CSV_FIELDS = (
    "epoch",
    "stage",
    "train_loss",
    "val_loss",
    "seconds",
    "patches",
    "patches_per_s",
    "lr",
    "lambdas",
)


@dataclass
class TrainConfig:
    """Settings of one training stage (TOML keys of ``qsmflow train`` presets).

    stage : "k1" (one unrolled iteration, trained from scratch) or "unrolled" (K iterations,
        usually initialised from a K = 1 checkpoint via ``init_from``).
    n_iterations : K (must be 1 for stage "k1").
    shared_weights : one denoiser for all K iterations (SW) instead of K (USW, the paper's).
    init_from : checkpoint whose (first) denoiser initialises every denoiser: a qsmflow
        checkpoint or the authors' plain WideResNet state_dict ``.pth``. Used only when the run
        does not resume.
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
    kernel_dc_value : D(0) of the dataset's kernels (1/3, the ISDU convention); checked
        against the dataset and recorded for inference.
    model : further :class:`~qsmflow.models.isdu.ISDUQSMNet` keyword arguments (``width``,
        ``n_blocks``, ``dropout``, ``dc_mode``, ``learn_p``, ...).
    deterministic : request deterministic CUDA kernels (cudnn.deterministic, no benchmark).
    channels_last : keep the denoisers' convolution weights (and so their feature maps) in the
        ``channels_last_3d`` layout: the same model, ~25 % faster steps on the CPU (oneDNN) and
        usually on CUDA with ``amp``; results differ from ``false`` by float rounding only.
    resume : continue from the newest checkpoint in ``output_dir``.
    """

    stage: str = "k1"
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
    kernel_dc_value: float = ISDU_DC_VALUE
    model: dict[str, Any] = dc_field(default_factory=dict)
    deterministic: bool = False
    channels_last: bool = False
    resume: bool = False

    def validate(self, source: str | None = None) -> TrainConfig:
        """Check every setting; raise :class:`QSMInputError` naming ``source``."""

        def bad(msg: str) -> QSMInputError:
            return QSMInputError(msg, source)

        if self.stage not in STAGES:
            raise bad(f"stage = {self.stage!r}; choose from {', '.join(STAGES)}")
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
        if self.amp_dtype not in ("bfloat16", "float16"):
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
        clash = reserved & set(self.model)
        if clash:
            raise bad(f"set {', '.join(sorted(clash))} at the top level, not in [model]")
        if not self.output_dir:
            raise bad("output_dir is not set (use --output)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def config_from_dict(values: dict[str, Any], source: str | None = None) -> TrainConfig:
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


# --------------------------------------------------------------------------------------------
# checkpoint files


def _checkpoint_api():
    from ..models import checkpoints

    return checkpoints


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint dict with ``torch.load(weights_only=True)`` onto the CPU.

    Raises :class:`QSMInputError` naming the file when it is missing, unreadable or not a dict.
    """
    obj = _checkpoint_api().read_checkpoint(path)
    if not isinstance(obj, dict):
        raise QSMInputError(f"checkpoint holds a {type(obj).__name__}, not a dict", str(path))
    return obj


def training_state(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The trainer's entry (``extra["training"]``) of a checkpoint dict, or None."""
    extra = obj.get("extra")
    tr = extra.get("training") if isinstance(extra, dict) else None
    return tr if isinstance(tr, dict) else None


def _denoiser_state_from(obj: dict[str, Any], source: str) -> tuple[dict, dict | None]:
    """(WideResNet state_dict of the first denoiser, model config or None) of a checkpoint.

    Reads qsmflow checkpoints (denoiser 0), the authors' plain WideResNet state_dict and their
    unshared-weight dict (``model_0``).
    """
    if obj.get("format") == "qsmflow-isdu":
        model_sd = obj.get("model")
        if not isinstance(model_sd, dict):
            raise QSMInputError("checkpoint has no model state_dict", source)
        prefix = "denoisers.0."
        sd = {k[len(prefix) :]: v for k, v in model_sd.items() if k.startswith(prefix)}
        if not sd:
            raise QSMInputError("checkpoint model has no denoisers.0.* weights", source)
        cfg = obj.get("config") if isinstance(obj.get("config"), dict) else None
        return sd, cfg
    if "format" in obj:
        raise QSMInputError(f"unknown checkpoint format {obj.get('format')!r}", source)
    if "K_unrolling" in obj and isinstance(obj.get("model_0"), dict):
        return dict(obj["model_0"]), None
    if "lambda_val" in obj and any(k.startswith("gen.") for k in obj):
        return dict(obj), None  # the authors' plain WideResNet state_dict
    raise QSMInputError(
        "neither a qsmflow-isdu checkpoint nor a WideResNet state_dict (lambda_val, gen.*)",
        source,
    )


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``[(epoch, path), ...]`` of the epoch checkpoints in ``output_dir``, oldest first."""
    folder = Path(output_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _EPOCH_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


# --------------------------------------------------------------------------------------------
# RNG states as tensors / plain values (weights_only-loadable)


def capture_rng(device: torch.device) -> dict[str, Any]:
    key, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": str(key),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": list(internal), "gauss_next": gauss_next},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    nps = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            nps["key"],
            nps["keys"].numpy().astype(np.uint32),
            nps["pos"],
            nps["has_gauss"],
            nps["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------
# losses


def make_loss(name: str) -> Callable[..., torch.Tensor]:
    """``loss(chi_hat, chi, phi, mask, kernel) -> scalar`` for ``name`` in :data:`LOSSES`.

    "combined": the authors' L1 training loss (:func:`~qsmflow.training.losses.combined_l1_loss`
    total); "combined_l2": their L2 variant; "mse": plain voxel MSE.
    """
    from . import losses

    if name == "mse":

        def mse(chi_hat, chi, phi, mask, kernel):
            return losses.mse_loss(chi_hat, chi)

        return mse
    if name == "combined":

        def combined(chi_hat, chi, phi, mask, kernel):
            return losses.combined_l1_loss(chi_hat, chi, phi, mask, kernel)["total"]

        return combined
    if name == "combined_l2":

        def combined_l2(chi_hat, chi, phi, mask, kernel):
            return losses.combined_l2_loss(chi_hat, chi, phi, mask, kernel)["total"]

        return combined_l2
    raise QSMInputError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")


# --------------------------------------------------------------------------------------------
# the trainer


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise QSMInputError(f"device {name!r} requested but CUDA is not available")
        if name == "cuda":
            return torch.device("cuda", local_rank)
    return torch.device(name)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


class Trainer:
    """One training stage; :meth:`fit` runs it and returns the final checkpoint's path.

    ``dataset`` / ``val_dataset``: map-style datasets of dicts (phi, chi, mask, kernel) as
    produced by :mod:`qsmflow.training.dataset`.
    """

    def __init__(
        self,
        config: TrainConfig,
        dataset: Dataset,
        val_dataset: Dataset | None = None,
        *,
        keep_process_group: bool = False,
    ) -> None:
        self.cfg = config.validate()
        self.keep_process_group = bool(keep_process_group)
        self.dataset = dataset
        self.val_dataset = val_dataset
        self.out = Path(self.cfg.output_dir)
        self.log_path = self.out / self.cfg.log_csv
        self._check_dataset(dataset, "dataset")
        if val_dataset is not None:
            self._check_dataset(val_dataset, "validation dataset")

        pref = self.cfg.device
        dev_type = (
            "cuda"
            if pref.startswith("cuda") or (pref == "auto" and torch.cuda.is_available())
            else "cpu"
        )
        self.dist = ddp.init_distributed(dev_type)
        try:
            self._setup()
        except BaseException:
            self._shutdown()
            raise

    # ------------------------------------------------------------------------- setup
    def _check_dataset(self, ds: Dataset, what: str) -> None:
        try:
            n = len(cast(Sized, ds))
        except TypeError as exc:
            raise QSMInputError(f"the {what} has no length (map-style dataset needed)") from exc
        if n < 1:
            raise QSMInputError(f"the {what} is empty")
        kern = getattr(ds, "kernels", None)
        dc = getattr(kern, "dc_value", None)
        if dc is not None and abs(float(dc) - float(self.cfg.kernel_dc_value)) > 1e-9:
            raise QSMInputError(
                f"the {what}'s kernels have D(0) = {dc}, the config says kernel_dc_value = "
                f"{self.cfg.kernel_dc_value}"
            )

    def _setup(self) -> None:
        cfg, info = self.cfg, self.dist
        self.device = resolve_device(cfg.device, info.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = not cfg.deterministic
            torch.backends.cudnn.deterministic = bool(cfg.deterministic)
        self.use_amp = bool(cfg.amp) and self.device.type == "cuda"
        if cfg.amp and not self.use_amp:
            log.warning("amp = true is ignored on %s (CUDA only)", self.device)
        self.amp_dtype = torch.bfloat16 if cfg.amp_dtype == "bfloat16" else torch.float16
        self.scaler = (
            torch.amp.GradScaler("cuda")
            if self.use_amp and self.amp_dtype == torch.float16
            else None
        )

        resume_from = self._find_resume()
        ckpt = None
        if resume_from is not None:
            ckpt = read_checkpoint(resume_from)
            self._check_resume(ckpt, resume_from)

        # model: identical initialisation on every rank (DDP also broadcasts rank 0's)
        seed_everything(cfg.seed)
        self.model = self._build_model(ckpt, resume_from).to(self.device)
        if cfg.channels_last:
            from ..models.wideresnet import to_channels_last_3d

            to_channels_last_3d(self.model)
        # per-rank stream for dropout, independent of the model initialisation
        seed_everything(ddp.derive_seed(cfg.seed, "train", info.rank) % 2**62)

        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr)
        self.loss_fn = make_loss(cfg.loss)
        self.sampler = ddp.RandomSubsetSampler(
            len(cast(Sized, self.dataset)),
            cfg.batch_size,
            cfg.patches_per_epoch,
            seed=cfg.seed,
            rank=info.rank,
            world_size=info.world_size,
        )
        self.start_epoch = 0
        self.history: list[dict[str, Any]] = []
        if ckpt is not None:
            self._restore(ckpt, resume_from)
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp_model: nn.Module = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        else:
            self.ddp_model = self.model

    def _find_resume(self) -> Path | None:
        found = list_checkpoints(self.out)
        if not self.cfg.resume:
            if found:
                raise QSMInputError(
                    f"{len(found)} checkpoint(s) of an earlier run are here; resume it "
                    "(resume = true, --resume) or choose a new output folder",
                    str(self.out / CHECKPOINT_DIR),
                )
            return None
        if not found:
            log.info("no checkpoint in %s: starting from scratch", self.out)
            return None
        return found[-1][1]

    def _check_resume(self, ckpt: dict[str, Any], path: Path) -> None:
        src = str(path)
        tr = training_state(ckpt)
        if ckpt.get("format") != "qsmflow-isdu" or tr is None:
            raise QSMInputError("not a qsmflow training checkpoint", src)
        if tr.get("format") != TRAIN_FORMAT or tr.get("version") != TRAIN_FORMAT_VERSION:
            raise QSMInputError(
                f"training state format {tr.get('format')!r} v{tr.get('version')!r} is not "
                f"{TRAIN_FORMAT!r} v{TRAIN_FORMAT_VERSION}",
                src,
            )
        for key in ("epoch", "optimizer", "rng", "config"):
            if key not in tr:
                raise QSMInputError(f"training state lacks {key!r}", src)
        old = tr["config"]
        new = self.cfg.to_dict()
        diffs = [
            f"{k}: checkpoint {old.get(k)!r}, now {new.get(k)!r}"
            for k in _RESUME_KEYS
            if old.get(k) != new.get(k)
        ]
        if tr.get("world_size", 1) != self.dist.world_size:
            diffs.append(
                f"world_size: checkpoint {tr.get('world_size')}, now {self.dist.world_size}"
            )
        n = len(cast(Sized, self.dataset))
        if tr.get("dataset_length") != n:
            diffs.append(f"dataset length: checkpoint {tr.get('dataset_length')}, now {n}")
        if diffs:
            raise QSMInputError(
                "cannot resume, settings differ (" + "; ".join(diffs) + "); use a new output "
                "folder or the checkpoint's settings",
                src,
            )

    def _model_kwargs(self, base: dict[str, Any] | None) -> dict[str, Any]:
        cfg = self.cfg
        kw: dict[str, Any] = {}
        if base:
            # architecture of the initialising model (so that its weights fit)
            for k in ("width", "n_blocks", "dropout", "learn_p", "out_mean", "out_std"):
                if k in base:
                    kw[k] = base[k]
        kw.update(cfg.model)
        kw["cg_max_iter"] = cfg.cg_max_iter
        if cfg.out_mean is not None:
            kw["out_mean"] = float(cfg.out_mean)
        if cfg.out_std is not None:
            kw["out_std"] = float(cfg.out_std)
        if "out_mean" not in kw or "out_std" not in kw:
            from ..models.isdu import OUT_MEAN, OUT_STD

            stats = None
            norm = getattr(self.dataset, "normalisation", None)
            if isinstance(norm, dict) and "chi" in norm:
                stats = norm["chi"]
            if stats is not None and float(stats.get("std", 0)) > 0:
                kw.setdefault("out_mean", float(stats["mean"]))
                kw.setdefault("out_std", float(stats["std"]))
            else:
                kw.setdefault("out_mean", OUT_MEAN)
                kw.setdefault("out_std", OUT_STD)
        return kw

    def _build_model(self, ckpt: dict[str, Any] | None, ckpt_path: Path | None) -> nn.Module:
        from ..models.isdu import ISDUQSMNet

        api = _checkpoint_api()
        cfg = self.cfg
        if ckpt is not None:
            src = str(ckpt_path)
            mcfg = ckpt.get("config")
            if not isinstance(mcfg, dict) or not isinstance(ckpt.get("model"), dict):
                raise QSMInputError("checkpoint lacks the model 'config' or 'model'", src)
            try:
                model = ISDUQSMNet(**mcfg)
            except TypeError as exc:
                raise QSMInputError(f"bad model config ({exc})", src) from exc
            sd = api.check_state_dict(ckpt["model"], model.state_dict(), src, "model state_dict")
            model.load_state_dict(sd, strict=True)
            return model
        if cfg.init_from:
            src = str(cfg.init_from)
            sd, base = _denoiser_state_from(read_checkpoint(src), src)
            kwargs = self._model_kwargs(base)
            try:
                template = ISDUQSMNet(n_iterations=1, **kwargs).denoisers[0].state_dict()
            except TypeError as exc:
                raise QSMInputError(f"bad model settings ({exc})", src) from exc
            sd = api.check_state_dict(sd, template, src, "K=1 denoiser state_dict")
            model = ISDUQSMNet.from_k1_denoiser(sd, cfg.n_iterations, cfg.shared_weights, **kwargs)
            log.info("initialised %d denoiser(s) from %s", len(model.denoisers), src)
            return model
        if cfg.stage == "unrolled":
            log.warning(
                "stage 'unrolled' without init_from: training K=%d from scratch", cfg.n_iterations
            )
        return ISDUQSMNet(
            n_iterations=cfg.n_iterations,
            shared_weights=cfg.shared_weights,
            **self._model_kwargs(None),
        )

    def _restore(self, ckpt: dict[str, Any], path: Path | None) -> None:
        tr = training_state(ckpt)
        assert tr is not None
        src = str(path)
        try:
            self.optimizer.load_state_dict(tr["optimizer"])
            if self.scaler is not None and tr.get("scaler"):
                self.scaler.load_state_dict(tr["scaler"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise QSMInputError(f"optimizer state does not fit the model ({exc})", src) from exc
        rngs = tr["rng"]
        if not isinstance(rngs, list) or len(rngs) != self.dist.world_size:
            raise QSMInputError("RNG states do not match the number of processes", src)
        try:
            restore_rng(rngs[self.dist.rank], self.device)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise QSMInputError(f"invalid RNG state ({exc})", src) from exc
        self.start_epoch = int(tr["epoch"])
        self.history = list(tr.get("history", []))
        log.info("resuming from %s after epoch %d", src, self.start_epoch)

    # ------------------------------------------------------------------------- helpers
    def _loader(self, dataset: Dataset, sampler, batch_size: int, gen: torch.Generator):
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.cfg.num_workers,
            pin_memory=self.device.type == "cuda",
            drop_last=False,
            generator=gen,
        )

    def _to_device(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        nb = self.device.type == "cuda"
        return tuple(
            batch[k].to(self.device, non_blocking=nb) for k in ("phi", "chi", "mask", "kernel")
        )

    def _forward_loss(self, model: nn.Module, batch) -> torch.Tensor:
        phi, chi, mask, kernel = self._to_device(batch)
        if self.use_amp:
            with torch.autocast(device_type="cuda", dtype=self.amp_dtype):
                chi_hat = model(phi, mask, kernel)
        else:
            chi_hat = model(phi, mask, kernel)
        return self.loss_fn(chi_hat.float(), chi, phi, mask, kernel)

    def lambdas(self) -> list[float]:
        m = _unwrap(self.model)
        return [float(d.lambda_val.detach().reshape(-1)[0]) for d in m.denoisers]

    def _set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        for ds in (self.dataset, self.val_dataset):
            fn = getattr(ds, "set_epoch", None)
            if callable(fn):
                fn(epoch)

    # ------------------------------------------------------------------------- epochs
    def train_epoch(self, epoch: int) -> dict[str, float]:
        from tqdm.auto import tqdm

        cfg, info = self.cfg, self.dist
        self._set_epoch(epoch)
        gen = torch.Generator()
        gen.manual_seed(ddp.derive_seed(cfg.seed, "loader", epoch, info.rank))
        loader = self._loader(self.dataset, self.sampler, cfg.batch_size, gen)
        self.ddp_model.train()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        steps = 0
        t0 = time.perf_counter()
        bar = tqdm(
            total=len(loader),
            desc=f"{cfg.stage} epoch {epoch + 1}/{cfg.epochs}",
            unit="batch",
            disable=not (cfg.progress and info.is_main),
            leave=False,
            dynamic_ncols=True,
        )
        params = [p for p in self.model.parameters() if p.requires_grad]
        for batch in loader:
            loss = self._forward_loss(self.ddp_model, batch)
            if self.scaler is None and not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite training loss at epoch {epoch + 1}, step {steps + 1}; lower "
                    f"lr or resume from the last checkpoint in {self.out / CHECKPOINT_DIR}"
                )
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                if cfg.max_grad_norm:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                self.optimizer.step()
            total += loss.detach().to(torch.float64)
            steps += 1
            bar.update(1)
            if steps % 10 == 1 and bar.disable is False:
                bar.set_postfix(loss=f"{float(loss.detach()):.4g}")
        bar.close()
        # BatchNorm running statistics were last updated by each rank's own batch: take rank
        # 0's (what DDP's buffer broadcast would do at the next step) so all ranks agree
        ddp.broadcast_buffers(info, self.model)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        loss_sum, n_steps = ddp.all_reduce_sum(info, [float(total), steps], self.device)
        patches = int(n_steps) * cfg.batch_size
        return {
            "train_loss": loss_sum / max(n_steps, 1),
            "seconds": seconds,
            "patches": patches,
            "patches_per_s": patches / seconds if seconds > 0 else float("nan"),
        }

    @torch.no_grad()
    def validate(self) -> float | None:
        if self.val_dataset is None:
            return None
        info = self.dist
        n = len(cast(Sized, self.val_dataset))
        indices = list(range(info.rank, n, info.world_size))
        model = _unwrap(self.model)
        model.eval()
        total, count = 0.0, 0
        gen = torch.Generator()
        gen.manual_seed(0)
        loader = self._loader(self.val_dataset, indices, self.cfg.batch_size, gen)
        for batch in loader:
            b = int(batch["phi"].shape[0])
            loss = self._forward_loss(model, batch)
            total += float(loss) * b
            count += b
        model.train()
        total, count = ddp.all_reduce_sum(info, [total, count], self.device)
        return total / count if count else None

    # ------------------------------------------------------------------------- files
    def _training_state(self, epoch: int, rngs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "format": TRAIN_FORMAT,
            "version": TRAIN_FORMAT_VERSION,
            "epoch": int(epoch),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rngs,
            "sampler": self.sampler.state_dict(),
            "config": self.cfg.to_dict(),
            "world_size": self.dist.world_size,
            "dataset_length": len(cast(Sized, self.dataset)),
            "dataset": dataset_description(self.dataset),
            "history": [dict(h) for h in self.history],
            "torch_version": str(torch.__version__),
        }

    def _summary(self, epoch: int) -> dict[str, Any]:
        return {
            "format": TRAIN_FORMAT,
            "version": TRAIN_FORMAT_VERSION,
            "epoch": int(epoch),
            "config": self.cfg.to_dict(),
            "world_size": self.dist.world_size,
            "dataset_length": len(cast(Sized, self.dataset)),
            "dataset": dataset_description(self.dataset),
            "history": [dict(h) for h in self.history],
            "kernel_dc_value": float(self.cfg.kernel_dc_value),
            "final": True,
        }

    def save_checkpoint(self, epoch: int) -> Path | None:
        """Write ``checkpoints/epoch_{epoch:04d}.pt`` (rank 0; all ranks contribute RNG)."""
        rngs = ddp.all_gather_objects(self.dist, capture_rng(self.device))
        if not self.dist.is_main:
            return None
        path = self.out / CHECKPOINT_DIR / f"epoch_{epoch:04d}.pt"
        _checkpoint_api().save_isdu(
            path, _unwrap(self.model), extra={"training": self._training_state(epoch, rngs)}
        )
        keep = self.cfg.keep_checkpoints
        if keep:
            for _, old in list_checkpoints(self.out)[:-keep]:
                old.unlink(missing_ok=True)
        return path

    def save_final(self, epoch: int) -> Path:
        path = self.out / FINAL_NAME
        if self.dist.is_main:
            _checkpoint_api().save_isdu(
                path, _unwrap(self.model), extra={"training": self._summary(epoch)}
            )
        return path

    def _write_csv(self) -> None:
        """Rewrite the CSV log from the history (atomic; also drops rows past a resume)."""
        from ..io.atomic import atomic_path

        with atomic_path(self.log_path) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
            w.writeheader()
            for row in self.history:
                w.writerow({k: _fmt(row.get(k)) for k in CSV_FIELDS})

    def _write_config(self) -> None:
        info = {
            "config": self.cfg.to_dict(),
            "model": dict(_unwrap(self.model).config),
            "dataset": json.loads(dataset_description(self.dataset)),
            "val_dataset": (
                json.loads(dataset_description(self.val_dataset))
                if self.val_dataset is not None
                else None
            ),
            "world_size": self.dist.world_size,
            "device": str(self.device),
            "torch_version": str(torch.__version__),
        }
        (self.out / "train_config.json").write_text(json.dumps(info, indent=2) + "\n")

    # ------------------------------------------------------------------------- main loop
    def fit(self) -> Path:
        cfg, info = self.cfg, self.dist
        writer = None
        try:
            if info.is_main:
                self.out.mkdir(parents=True, exist_ok=True)
                self._write_config()
                if cfg.tensorboard:
                    writer = _tensorboard(self.out / "tensorboard")
            ddp.barrier(info)
            for epoch in range(self.start_epoch, cfg.epochs):
                stats = self.train_epoch(epoch)
                val = self.validate()
                row = {
                    "epoch": epoch + 1,
                    "stage": cfg.stage,
                    "train_loss": stats["train_loss"],
                    "val_loss": val,
                    "seconds": stats["seconds"],
                    "patches": stats["patches"],
                    "patches_per_s": stats["patches_per_s"],
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "lambdas": ";".join(f"{v:.6g}" for v in self.lambdas()),
                }
                self.history.append(row)
                self.save_checkpoint(epoch + 1)
                if info.is_main:
                    self._write_csv()
                    log.info(
                        "%s epoch %d/%d: loss %.5g%s, %.1f s, %.2f patches/s",
                        cfg.stage,
                        epoch + 1,
                        cfg.epochs,
                        stats["train_loss"],
                        "" if val is None else f", val {val:.5g}",
                        stats["seconds"],
                        stats["patches_per_s"],
                    )
                    if writer is not None:
                        writer.add_scalar("loss/train", stats["train_loss"], epoch + 1)
                        if val is not None:
                            writer.add_scalar("loss/val", val, epoch + 1)
                        writer.add_scalar("patches_per_s", stats["patches_per_s"], epoch + 1)
                        writer.flush()
                ddp.barrier(info)
            final = self.save_final(max(cfg.epochs, self.start_epoch))
            if info.is_main and not self.log_path.exists():
                self._write_csv()
            ddp.barrier(info)
            return final
        finally:
            if writer is not None:
                writer.close()
            self._shutdown()

    def _shutdown(self) -> None:
        if not self.keep_process_group:
            ddp.shutdown(self.dist)


def _fmt(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.8g}"
    return v


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard = true but the tensorboard package is not installed; skipped")
        return None
    return SummaryWriter(str(folder))


def train(
    config: TrainConfig,
    dataset: Dataset,
    val_dataset: Dataset | None = None,
    *,
    keep_process_group: bool = False,
) -> Path:
    """Run one training stage (see the module docstring); returns the final checkpoint path.

    Under ``torchrun`` the process group is created on first use and destroyed at the end,
    unless ``keep_process_group`` (several stages in one process: a group cannot be re-created
    on torchrun's store, so destroy it once at the end with :func:`ddp.shutdown_all`).
    """
    return Trainer(config, dataset, val_dataset, keep_process_group=keep_process_group).fit()


def read_log(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a ``train_log.csv`` as dicts of strings."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------------------------
# presets


@dataclass
class TrainPreset:
    """A ``qsmflow train`` preset: shared settings, stages, data and simulation tables."""

    stages: list[tuple[str, dict[str, Any]]]
    data: dict[str, Any]
    simulate: dict[str, Any]
    source: str | None = None
    phantoms: dict[str, Any] = dc_field(default_factory=dict)


_DATA_KEYS = {"patches", "val_patches", "augment"}
_SIMULATE_KEYS = {
    "count",
    "val_count",
    "patch_size",
    "seed",
    "n_subjects",
    "n_orientations",
    "max_tilt_deg",
    "voxel_size",
    "phantom_shape",
    "texture",
    "noise_std_ppm",
    "min_mask_fraction",
}
_PHANTOMS_KEYS = {
    "count",
    "val_count",
    "patch_size",
    "seed",
    "head_model_dir",
    "head_model_voxels",
    "n_builtin",
    "builtin_voxel",
    "head_model_weight",
    "max_tilt_deg",
    "contrast",
    "label_offset_ppm",
    "texture_std_ppm",
    "noise_std_ppm",
    "min_mask_fraction",
}


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
    for name, table, keys in (
        ("data", data, _DATA_KEYS),
        ("simulate", simulate, _SIMULATE_KEYS),
        ("phantoms", phantoms, _PHANTOMS_KEYS),
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
    config_from_dict({**shared, "output_dir": "x"}, src)  # check keys early
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
            config_from_dict(check, src).validate(src)
            stages.append((name, merged))
    return TrainPreset(
        stages=stages,
        data=dict(data),
        simulate=dict(simulate),
        source=src,
        phantoms=dict(phantoms),
    )


__all__ = [
    "CSV_FIELDS",
    "LOSSES",
    "STAGES",
    "TrainConfig",
    "TrainPreset",
    "Trainer",
    "capture_rng",
    "config_from_dict",
    "list_checkpoints",
    "load_train_preset",
    "make_loss",
    "read_checkpoint",
    "read_log",
    "restore_rng",
    "train",
]
