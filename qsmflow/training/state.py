"""Bookkeeping of a training run: checkpoint files, the trainer's state entry and RNG states.

A training checkpoint is a :mod:`qsmflow.models.checkpoints` file whose ``extra["training"]``
entry (:func:`training_state`) has format :data:`TRAIN_FORMAT` version
:data:`TRAIN_FORMAT_VERSION`. RNG states are stored as tensors and plain Python values so that
``torch.load(weights_only=True)`` reads them back.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

TRAIN_FORMAT = "qsmflow-train"
TRAIN_FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
FINAL_NAME = "final.pt"
_EPOCH_RE = re.compile(r"^epoch_(\d+)\.pt$")


def checkpoint_path(output_dir: str | os.PathLike, epoch: int) -> Path:
    """``output_dir/checkpoints/epoch_{epoch:04d}.pt``."""
    return Path(output_dir) / CHECKPOINT_DIR / f"epoch_{epoch:04d}.pt"


def training_state(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The trainer's entry (``extra["training"]``) of a checkpoint dict, or None."""
    extra = obj.get("extra")
    tr = extra.get("training") if isinstance(extra, dict) else None
    return tr if isinstance(tr, dict) else None


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


def capture_rng(device: torch.device) -> dict[str, Any]:
    """The torch, CUDA (on a CUDA ``device``), numpy and python RNG states of this process, as
    tensors and plain values (loadable with ``weights_only=True``)."""
    # the legacy global numpy RNG on purpose: third-party code (e.g. torch data loading helpers)
    # draws from it, so an exact resume must capture it
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
    """Put back the RNG states of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    nps = state["numpy"]
    np.random.set_state(  # noqa: NPY002 (see capture_rng)
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
    """Seed the python, numpy (legacy global) and torch RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the legacy global RNG others draw from)
    torch.manual_seed(seed)


__all__ = [
    "CHECKPOINT_DIR",
    "FINAL_NAME",
    "TRAIN_FORMAT",
    "TRAIN_FORMAT_VERSION",
    "capture_rng",
    "checkpoint_path",
    "list_checkpoints",
    "restore_rng",
    "seed_everything",
    "training_state",
]
