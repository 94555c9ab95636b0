"""Reading and writing model weights: one checkpoint format for every model of the zoo.

Files are always read with ``torch.load(path, map_location="cpu", weights_only=True)``: only
tensors and plain containers are unpickled, never arbitrary objects. Three layouts are read:

1. **The authors' denoiser** (``*.pth``): a plain WideResNet state_dict (``lambda_val``, ``p``,
   ``gen.*``), e.g. the K = 1 and shared-weight K = 4 ISDU checkpoints and SpiNet-QSM's
   ``model_weights.pth``. :func:`load_isdu` builds an :class:`ISDUQSMNet` whose denoiser(s) all
   start from it (the paper's initialisation of the K = 4 model).
2. **The authors' unshared-weight dict** (``model_{epoch}.pt``): ``{"K_unrolling": K,
   "model_0": state_dict, ..., "model_{K-1}": ...}`` plus training bookkeeping.
3. **qsmflow's own format** (written by :func:`save_model`), for any model of
   :data:`qsmflow.models.registry.MODELS`::

       {"format": "qsmflow-model", "version": 1,
        "architecture": "isdu",           # the model's name in the registry
        "config": model.config (plain values: the constructor arguments),
        "model": model.state_dict(),
        "extra": {...}}                   # optional, plain values/tensors (trainer state etc.)

   Files of the earlier ISDU-only layout (``"format": "qsmflow-isdu"``, version 1, no
   ``architecture``; e.g. the shipped weights) read as ``architecture = "isdu"``.

Layouts 1 and 2 hold ISDU-family weights only (``isdu``, ``spinet``). This module is the one
place that recognises these layouts: inference reads through :func:`load_model` (ISDU code
through :func:`load_isdu`), the trainer through :func:`model_from_checkpoint` (resume) and
:func:`first_denoiser_state` (``init_from``). Writes go through
:func:`qsmflow.io.atomic.atomic_path` with ``fsync``.

Every problem (missing, unreadable or corrupt file, unknown layout, missing or unexpected keys,
shape mismatches) raises :class:`~qsmflow.errors.QSMInputError` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import QSMInputError
from ..io.atomic import atomic_path
from .isdu import ISDUQSMNet
from .registry import ISDU_FAMILY, MODELS, spec_of
from .wideresnet import WideResNet

__all__ = [
    "FORMAT",
    "LEGACY_FORMAT",
    "VERSION",
    "check_state_dict",
    "checkpoint_architecture",
    "checkpoint_extra",
    "first_denoiser_state",
    "export_weights",
    "is_qsmflow_checkpoint",
    "load_denoiser_state",
    "load_isdu",
    "load_model",
    "model_from_checkpoint",
    "read_checkpoint",
    "save_isdu",
    "save_model",
]

FORMAT = "qsmflow-model"
VERSION = 1
#: The ISDU-only format that preceded :data:`FORMAT` (read as ``architecture = "isdu"``).
LEGACY_FORMAT = "qsmflow-isdu"

_ARCH_KEYS = ("width", "n_blocks")
_MAX_LISTED = 5


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _MAX_LISTED else "")


def read_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load`` with ``weights_only=True`` on CPU; any failure -> QSMInputError."""
    path = Path(path)
    if not path.is_file():
        raise QSMInputError("checkpoint file not found", source=str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, truncated file, disallowed pickle global, ...
        raise QSMInputError(
            f"cannot read checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})",
            source=str(path),
        ) from exc


def check_state_dict(
    state: Any, expected: Mapping[str, Tensor], source: str, what: str = "state_dict"
) -> dict[str, Tensor]:
    """Check that ``state`` has exactly the keys and shapes of ``expected``; return it as a dict.

    Raises QSMInputError naming ``source`` with the missing and unexpected keys and the first
    shape mismatches.
    """
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise QSMInputError(f"{what} is not a mapping of names to tensors", source=source)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    not_tensor = [k for k in state if k in expected and not isinstance(state[k], Tensor)]
    if not_tensor:
        problems.append(f"entries that are not tensors: {_listing(not_tensor)}")
    mismatched = [
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in expected
        if isinstance(state.get(k), Tensor) and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if mismatched:
        problems.append(f"shape mismatches: {_listing(mismatched)}")
    if problems:
        raise QSMInputError(
            f"{what} does not match the model (mismatched checkpoint?): " + "; ".join(problems),
            source=source,
        )
    return dict(state)


def _denoiser_template(width: int = 32, n_blocks: int = 8) -> dict[str, Tensor]:
    with torch.device("meta"):
        return WideResNet(width=width, n_blocks=n_blocks).state_dict()


def load_denoiser_state(
    path: str | os.PathLike, *, width: int = 32, n_blocks: int = 8
) -> dict[str, Tensor]:
    """Read one authors' WideResNet state_dict (``.pth``), checked against the architecture.

    Returns the state_dict (CPU tensors) ready for ``WideResNet.load_state_dict(strict=True)``.
    """
    state = read_checkpoint(path)
    return check_state_dict(
        state, _denoiser_template(width, n_blocks), str(path), "denoiser state_dict"
    )


def _load_into(model: nn.Module, state: Any, source: str) -> nn.Module:
    checked = check_state_dict(state, model.state_dict(), source, "model state_dict")
    model.load_state_dict(checked, strict=True)
    return model


def is_qsmflow_checkpoint(obj: Any) -> bool:
    """Whether a loaded checkpoint object is in qsmflow's own format (layout 3)."""
    return isinstance(obj, Mapping) and obj.get("format") in (FORMAT, LEGACY_FORMAT)


def _check_qsmflow(obj: Mapping[str, Any], source: str) -> Mapping[str, Any]:
    """The model config of a qsmflow checkpoint dict after checking format, version and keys."""
    if obj.get("format") not in (FORMAT, LEGACY_FORMAT):
        raise QSMInputError(f"unknown checkpoint format {obj.get('format')!r}", source=source)
    if obj.get("version") != VERSION:
        raise QSMInputError(
            f"unsupported {obj.get('format')} version {obj.get('version')!r} (this is "
            f"version {VERSION})",
            source=source,
        )
    config = obj.get("config")
    if not isinstance(config, Mapping) or not isinstance(obj.get("model"), Mapping):
        raise QSMInputError("checkpoint lacks 'config' or 'model'", source=source)
    checkpoint_architecture(obj, source)
    return config


def checkpoint_architecture(obj: Mapping[str, Any], source: str) -> str:
    """The registry name of the model in a qsmflow checkpoint dict ("isdu" for the old
    ISDU-only format); QSMInputError for a name this version does not know."""
    if obj.get("format") == LEGACY_FORMAT:
        return "isdu"
    name = obj.get("architecture")
    if name not in MODELS:
        raise QSMInputError(
            f"checkpoint model {name!r} is not one of {', '.join(MODELS)}", source=source
        )
    return str(name)


def model_from_checkpoint(obj: Mapping[str, Any], source: str, **overrides: Any) -> nn.Module:
    """The model of a loaded qsmflow checkpoint dict (strict weights; train mode).

    ``overrides`` replace entries of the saved config (architecture keys must still agree with
    the saved weights). The saved config is complete, so the registry entry's defaults are not
    applied on top of it.
    """
    config = _check_qsmflow(obj, source)
    name = checkpoint_architecture(obj, source)
    try:
        model = spec_of(name).build(**{**config, **overrides})
    except TypeError as exc:
        raise QSMInputError(f"bad model config: {exc}", source=source) from exc
    return _load_into(model, obj["model"], source)


def first_denoiser_state(obj: Any, source: str) -> tuple[dict[str, Tensor], dict | None]:
    """(WideResNet state_dict of the first denoiser, model config or None) of any layout.

    Reads qsmflow checkpoints (denoiser 0 and the saved config), the authors' unshared-weight
    dict (``model_0``) and their plain WideResNet state_dict (no config). The trainer
    initialises every denoiser of an unrolled model from it.
    """
    if not isinstance(obj, Mapping):
        raise QSMInputError(f"checkpoint holds a {type(obj).__name__}, not a dict", source)
    if "format" in obj:
        config = _check_qsmflow(obj, source)
        name = checkpoint_architecture(obj, source)
        if name not in ISDU_FAMILY:
            raise QSMInputError(f"a {name} checkpoint has no ISDU denoiser", source)
        prefix = "denoisers.0."
        sd = {k[len(prefix) :]: v for k, v in obj["model"].items() if k.startswith(prefix)}
        if not sd:
            raise QSMInputError("checkpoint model has no denoisers.0.* weights", source)
        return sd, dict(config)
    if "K_unrolling" in obj and isinstance(obj.get("model_0"), Mapping):
        return dict(obj["model_0"]), None
    if "lambda_val" in obj and any(str(k).startswith("gen.") for k in obj):
        return dict(obj), None  # the authors' plain WideResNet state_dict
    raise QSMInputError(
        f"neither a {FORMAT} checkpoint nor a WideResNet state_dict (lambda_val, gen.*)", source
    )


def load_isdu(path: str | os.PathLike, **overrides: Any) -> ISDUQSMNet:
    """Build an :class:`ISDUQSMNet` from any of the three layouts (module docstring).

    ``overrides`` are constructor arguments (``n_iterations``, ``shared_weights``, ``dc_mode``,
    ``cg_max_iter``, ...). For an authors' single denoiser they default to the ISDU model (K = 4,
    unshared, every denoiser a copy of the file); for an authors' unshared dict K comes from the
    file; for our format they replace the saved config (architecture keys must then agree with
    the saved weights). The model is returned in eval mode on the CPU.
    """
    source = str(path)
    obj = read_checkpoint(path)
    if isinstance(obj, Mapping) and "format" in obj:
        _check_qsmflow(obj, source)
        name = checkpoint_architecture(obj, source)
        if name not in ISDU_FAMILY:
            raise QSMInputError(
                f"this checkpoint holds a {name} model, not an ISDU-QSMNet", source=source
            )
        model = model_from_checkpoint(obj, source, **overrides).eval()
        assert isinstance(model, ISDUQSMNet)
        return model

    if isinstance(obj, Mapping) and "K_unrolling" in obj:
        n_iter = int(obj["K_unrolling"])
        states = [obj.get(f"model_{k}") for k in range(n_iter)]
        if any(s is None for s in states):
            raise QSMInputError(f"expected model_0 ... model_{n_iter - 1}", source=source)
        arch = {k: overrides[k] for k in _ARCH_KEYS if k in overrides}
        template = _denoiser_template(**arch)
        for k, s in enumerate(states):
            check_state_dict(s, template, source, f"model_{k}")
        overrides = {**overrides, "n_iterations": n_iter, "shared_weights": False}
        model = ISDUQSMNet(**overrides)
        for net, s in zip(model.denoisers, states, strict=True):
            net.load_state_dict(s, strict=True)
        return model.eval()

    arch = {k: overrides[k] for k in _ARCH_KEYS if k in overrides}
    state = check_state_dict(obj, _denoiser_template(**arch), source, "denoiser state_dict")
    return ISDUQSMNet.from_k1_denoiser(state, **overrides).eval()


def load_model(
    path: str | os.PathLike, architecture: str | None = None, **overrides: Any
) -> tuple[str, nn.Module]:
    """(registry name, model in eval mode on the CPU) of any checkpoint layout.

    A qsmflow checkpoint names its model; ``architecture``, when given, must agree with it
    (``isdu`` and ``spinet`` are the same class and may stand for each other). The authors'
    layouts hold ISDU-family weights: they are read with that entry's defaults (``isdu`` when
    ``architecture`` is None), e.g. ``spinet`` = one shared denoiser, K = 3, CG <= 25.
    ``overrides`` replace config entries as in :func:`load_isdu`.
    """
    source = str(path)
    if architecture is not None:
        spec_of(architecture)
    obj = read_checkpoint(path)
    if is_qsmflow_checkpoint(obj):
        _check_qsmflow(obj, source)
        name = checkpoint_architecture(obj, source)
        same_family = name in ISDU_FAMILY and architecture in ISDU_FAMILY
        if architecture is not None and architecture != name and not same_family:
            raise QSMInputError(
                f"this checkpoint holds a {name} model, not {architecture}", source=source
            )
        return name, model_from_checkpoint(obj, source, **overrides).eval()
    name = architecture or "isdu"
    if name not in ISDU_FAMILY:
        raise QSMInputError(
            f"not a {FORMAT} checkpoint: {name} weights must come from qsmflow train", source
        )
    return name, load_isdu(path, **{**MODELS[name].defaults, **overrides})


def save_model(
    path: str | os.PathLike,
    model: nn.Module,
    architecture: str,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` (registry name ``architecture``) in qsmflow's format, atomically and
    flushed to disk (``atomic_path``).

    ``extra`` (epoch, losses, optimiser state, ...) must hold only tensors and plain Python
    values so that it can be read back with ``weights_only=True``. Returns the path.
    """
    spec_of(architecture)
    config = getattr(model, "config", None)
    if not isinstance(config, Mapping):
        raise QSMInputError(f"{type(model).__name__} has no config to save")
    path = Path(path)
    obj: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "architecture": architecture,
        "config": dict(config),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if extra is not None:
        obj["extra"] = dict(extra)
    with atomic_path(path, fsync=True) as tmp:
        torch.save(obj, tmp)
    return path


def save_isdu(
    path: str | os.PathLike, model: ISDUQSMNet, extra: Mapping[str, Any] | None = None
) -> Path:
    """:func:`save_model` for an ISDU-QSMNet (``architecture = "isdu"``)."""
    return save_model(path, model, "isdu", extra)


def export_weights(
    src: str | os.PathLike,
    dest: str | os.PathLike,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write an inference-only copy of a qsmflow checkpoint (config + weights + provenance).

    Optimiser, RNG and sampler states are dropped; the training summary (epochs, loss history,
    dataset description, settings) of ``src`` is kept under ``extra["training"]`` and
    ``provenance`` (plain values: recipe, source files, notes) under ``extra["provenance"]``.
    The model is rebuilt and strictly reloaded first, so a file that cannot be used for
    inference is never written. Returns ``dest``.
    """
    source = str(src)
    obj = read_checkpoint(src)
    if not is_qsmflow_checkpoint(obj):
        raise QSMInputError(f"not a {FORMAT} checkpoint (train with qsmflow first)", source)
    name, model = load_model(src)
    training = dict((obj.get("extra") or {}).get("training") or {})
    for key in ("optimizer", "scaler", "rng", "sampler"):
        training.pop(key, None)
    extra: dict[str, Any] = {"training": training}
    if provenance:
        extra["provenance"] = dict(provenance)
    return save_model(dest, model, name, extra=extra)


def checkpoint_extra(path: str | os.PathLike) -> dict[str, Any]:
    """The ``extra`` dict of a qsmflow checkpoint (training summary, provenance); {} if none."""
    obj = read_checkpoint(path)
    if is_qsmflow_checkpoint(obj):
        return dict(obj.get("extra") or {})
    return {}
