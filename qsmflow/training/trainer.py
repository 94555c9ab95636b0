"""Training of ISDU-QSMNet (K = 1 pre-training, then K unrolled iterations initialised from
it) and of every other model of the zoo (:mod:`qsmflow.models.registry`, ``architecture``).

Recipe (isdu_qsmnet_spec.md section 4): Adam (lr 1e-4, default betas, no weight decay, no
schedule, no clipping), batch 2, the combined loss (1 x L1 + 0.5 x Sobel-edge L1 + 0.5 x model
loss), 64^3 patches; a K = 1 model is trained first (27 epochs over all 16,800 patches in the
paper), then the K = 4 unshared model starts with every denoiser a copy of the K = 1 denoiser
(``stage="unrolled"``, ``init_from``) and trains on a random subset ("RS") of 4000 patches
per epoch. Another ``architecture`` (spinet, lpcnn, qsmnet, deepqsm, xqsm) trains in one stage
(``"train"``; spinet as the ISDU stages) with the same loop, losses, checkpoints and resume;
its normalisation statistics come from the settings, else the patch set's ``normalisation``
(field and chi), else the model's defaults. :func:`train` runs one stage;
:mod:`qsmflow.training.recipe` chains the stages of a preset (``qsmflow train``); settings:
:mod:`qsmflow.training.config`; checkpoint and RNG bookkeeping: :mod:`qsmflow.training.state`.

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
import json
import logging
import os
import time
from collections.abc import Mapping, Sized
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..errors import QSMInputError
from ..models import checkpoints
from ..models.inference import resolve_device
from ..models.isdu import ISDUQSMNet
from ..models.registry import ISDU_FAMILY, MODELS
from . import ddp
from .config import TrainConfig
from .dataset import describe_dataset
from .losses import make_loss
from .state import (
    CHECKPOINT_DIR,
    FINAL_NAME,
    TRAIN_FORMAT,
    TRAIN_FORMAT_VERSION,
    capture_rng,
    checkpoint_path,
    list_checkpoints,
    restore_rng,
    seed_everything,
    training_state,
)

log = logging.getLogger(__name__)

#: Settings that must agree between a checkpoint and the run resuming it.
_RESUME_KEYS = (
    "architecture",
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

#: Columns of ``train_log.csv``.
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


def _bare_model(model: nn.Module) -> nn.Module:
    """The model itself, without DistributedDataParallel's ``.module`` wrapper."""
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
        k0 = getattr(ds, "kernel_k0", None)
        if k0 is not None and abs(float(k0) - float(self.cfg.kernel_dc_value)) > 1e-9:
            raise QSMInputError(
                f"the {what}'s kernels have D(0) = {k0}, the config says kernel_dc_value = "
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
            ckpt = checkpoints.read_checkpoint(resume_from)
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

    def _check_resume(self, ckpt: Any, path: Path) -> None:
        src = str(path)
        tr = training_state(ckpt) if checkpoints.is_qsmflow_checkpoint(ckpt) else None
        if tr is None:
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

    def _dataset_stats(self, key: str) -> dict[str, float] | None:
        """The training data's mean/std of ``key`` ("chi" or "field"), where it records them."""
        norm = getattr(self.dataset, "normalisation", None)
        stats = norm.get(key) if isinstance(norm, dict) else None
        if isinstance(stats, dict) and float(stats.get("std", 0)) > 0:
            return {"mean": float(stats["mean"]), "std": float(stats["std"])}
        return None

    def _zoo_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of a non-ISDU model: ``[model]``, then the normalisation
        statistics (settings, else the data's, else the model's defaults)."""
        cfg = self.cfg
        kw: dict[str, Any] = dict(cfg.model)
        chi = self._dataset_stats("chi")
        field = self._dataset_stats("field")
        if cfg.out_mean is not None and cfg.out_std is not None:
            chi = {"mean": float(cfg.out_mean), "std": float(cfg.out_std)}
        if cfg.architecture == "lpcnn":
            if chi is not None:
                kw.setdefault("gt_mean", chi["mean"])
                kw.setdefault("gt_std", chi["std"])
        elif MODELS[cfg.architecture].family == "data-driven":
            if chi is not None:
                kw.setdefault("out_mean", chi["mean"])
                kw.setdefault("out_std", chi["std"])
            if field is not None:
                kw.setdefault("in_mean", field["mean"])
                kw.setdefault("in_std", field["std"])
        return kw

    def _whole_model_init(self, obj: Any, src: str) -> nn.Module | None:
        """The whole model of a qsmflow checkpoint ``obj`` with this stage's K and weight
        sharing (fine-tuning: every denoiser keeps its own weights); None otherwise."""
        cfg = self.cfg
        if not checkpoints.is_qsmflow_checkpoint(obj):
            return None
        if cfg.architecture not in ISDU_FAMILY:
            name = checkpoints.checkpoint_architecture(obj, src)
            if name != cfg.architecture:
                raise QSMInputError(
                    f"init_from holds a {name} model, this stage trains {cfg.architecture}", src
                )
            log.info("fine-tuning the %s model of %s", name, src)
            return checkpoints.model_from_checkpoint(obj, src)
        if cfg.stage != "unrolled":
            return None
        config = obj.get("config") or {}
        if int(config.get("n_iterations", 1)) != cfg.n_iterations or bool(
            config.get("shared_weights", False)
        ) != bool(cfg.shared_weights):
            return None
        fixed = ("width", "n_blocks", "learn_p", "in_channels", "out_channels")
        clash = {
            k: (v, config.get(k)) for k, v in cfg.model.items() if k in fixed and v != config.get(k)
        }
        if clash:
            raise QSMInputError(
                "model settings differ from the checkpoint's: "
                + ", ".join(f"{k} = {a!r} (checkpoint {b!r})" for k, (a, b) in clash.items()),
                src,
            )
        overrides = {k: v for k, v in cfg.model.items() if k in ("dropout", "dc_mode")}
        overrides["cg_max_iter"] = cfg.cg_max_iter
        model = checkpoints.model_from_checkpoint(obj, src, **overrides)
        log.info("fine-tuning the whole K=%d model of %s", cfg.n_iterations, src)
        return model

    def _build_model(self, ckpt: Mapping[str, Any] | None, ckpt_path: Path | None) -> nn.Module:
        cfg = self.cfg
        if ckpt is not None:
            return checkpoints.model_from_checkpoint(ckpt, str(ckpt_path))
        if cfg.init_from:
            src = str(cfg.init_from)
            obj = checkpoints.read_checkpoint(src)
            whole = self._whole_model_init(obj, src)
            if whole is not None:
                return whole
            if cfg.architecture not in ISDU_FAMILY:
                raise QSMInputError(
                    f"init_from for {cfg.architecture} must be a qsmflow checkpoint of it", src
                )
            sd, base = checkpoints.first_denoiser_state(obj, src)
            kwargs = self._model_kwargs(base)
            try:
                template = ISDUQSMNet(n_iterations=1, **kwargs).denoisers[0].state_dict()
            except TypeError as exc:
                raise QSMInputError(f"bad model settings ({exc})", src) from exc
            sd = checkpoints.check_state_dict(sd, template, src, "K=1 denoiser state_dict")
            model = ISDUQSMNet.from_k1_denoiser(sd, cfg.n_iterations, cfg.shared_weights, **kwargs)
            log.info("initialised %d denoiser(s) from %s", len(model.denoisers), src)
            return model
        if cfg.architecture not in ISDU_FAMILY:
            return MODELS[cfg.architecture].create(**self._zoo_kwargs())
        if cfg.stage == "unrolled" and cfg.architecture == "isdu":
            log.warning(
                "stage 'unrolled' without init_from: training K=%d from scratch", cfg.n_iterations
            )
        if cfg.architecture == "spinet":
            kwargs = {**MODELS["spinet"].defaults, **self._model_kwargs(None)}
            kwargs.update(n_iterations=cfg.n_iterations, shared_weights=cfg.shared_weights)
            return ISDUQSMNet(**kwargs)
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
        if self.dist.rank == 0:  # visible in batch-job logs: a requeued job says where it went on
            print(f"qsmflow train: resuming after epoch {self.start_epoch} from {src}", flush=True)

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
        """lambda_k of every denoiser (data-consistency weights, as trained); LPCNN: its
        gradient step alpha; data-driven nets: none."""
        m = _bare_model(self.model)
        if hasattr(m, "denoisers"):
            return [float(d.lambda_val.detach().reshape(-1)[0]) for d in m.denoisers]
        if hasattr(m, "alpha"):
            return [float(m.alpha.detach().reshape(-1)[0])]
        return []

    def _set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        for ds in (self.dataset, self.val_dataset):
            fn = getattr(ds, "set_epoch", None)
            if callable(fn):
                fn(epoch)

    # ------------------------------------------------------------------------- epochs
    def train_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch (0-based ``epoch``) over this rank's share of the sampled patches.

        Returns ``train_loss`` (mean over all ranks' steps, the loss's unit, ppm or ppm^2),
        ``seconds``, ``patches`` (all ranks) and ``patches_per_s``.
        """
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
        """Mean loss over the validation set in eval mode (all ranks); None without one."""
        if self.val_dataset is None:
            return None
        info = self.dist
        n = len(cast(Sized, self.val_dataset))
        indices = list(range(info.rank, n, info.world_size))
        model = _bare_model(self.model)
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
            "dataset": describe_dataset(self.dataset),
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
            "dataset": describe_dataset(self.dataset),
            "history": [dict(h) for h in self.history],
            "kernel_dc_value": float(self.cfg.kernel_dc_value),
            "final": True,
        }

    def save_checkpoint(self, epoch: int) -> Path | None:
        """Write ``checkpoints/epoch_{epoch:04d}.pt`` (rank 0; all ranks contribute RNG)."""
        rngs = ddp.all_gather_objects(self.dist, capture_rng(self.device))
        if not self.dist.is_main:
            return None
        path = checkpoint_path(self.out, epoch)
        checkpoints.save_model(
            path,
            _bare_model(self.model),
            self.cfg.architecture,
            extra={"training": self._training_state(epoch, rngs)},
        )
        keep = self.cfg.keep_checkpoints
        if keep:
            for _, old in list_checkpoints(self.out)[:-keep]:
                old.unlink(missing_ok=True)
        return path

    def save_final(self, epoch: int) -> Path:
        path = self.out / FINAL_NAME
        if self.dist.is_main:
            checkpoints.save_model(
                path,
                _bare_model(self.model),
                self.cfg.architecture,
                extra={"training": self._summary(epoch)},
            )
        return path

    def _write_csv(self) -> None:
        """Rewrite the CSV log from the history (atomic; also drops rows past a resume)."""
        from ..io.atomic import atomic_path

        with atomic_path(self.log_path) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
            w.writeheader()
            for row in self.history:
                w.writerow({k: _csv_value(row.get(k)) for k in CSV_FIELDS})

    def _write_config(self) -> None:
        info = {
            "config": self.cfg.to_dict(),
            "model": dict(_bare_model(self.model).config),
            "dataset": json.loads(describe_dataset(self.dataset)),
            "val_dataset": (
                json.loads(describe_dataset(self.val_dataset))
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
        """Run the remaining epochs (checkpoint, CSV row and log line after each), write
        ``final.pt`` and return its path; the process group is released at the end unless
        ``keep_process_group``."""
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


def _csv_value(v: Any) -> Any:
    """A CSV cell: empty for None, 8 significant digits for floats."""
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


__all__ = [
    "CSV_FIELDS",
    "Trainer",
    "read_log",
    "train",
]
