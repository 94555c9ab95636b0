"""Brain-mask step: magnitude file -> uint8 brain mask (1 = brain) on the input grid."""

from __future__ import annotations

import os

import numpy as np

from ..backends import DEFAULT_BET_FRAC
from ..io.nifti import save_volume
from ..masking.files import compute_brain_mask
from . import StepResult, sources


def brain_mask_file(
    magnitude: str | os.PathLike,
    out_file: str | os.PathLike,
    *,
    backend: str = "auto",
    frac: float = DEFAULT_BET_FRAC,
    workdir: str | os.PathLike | None = None,
) -> StepResult:
    """Brain mask of ``magnitude`` (3-D, or 4-D with echoes last: first echo used).

    ``backend``: ``"auto"`` | ``"fsl"`` (BET) | ``"python"`` (:mod:`qsmflow.masking.files`);
    ``frac``: BET's fractional intensity threshold (0-1; recorded only when BET ran).
    ``workdir`` keeps FSL's intermediate files (a temporary folder when None).

    Writes ``out_file`` (uint8) and its sidecar: ``Type`` ("Brain"), ``MaskBackend`` (the
    backend that ran), ``Voxels`` (count), ``VolumeML`` (mL), ``BETFractionalIntensity``.
    Outputs: ``mask``.
    """
    outcome = compute_brain_mask(magnitude, backend=backend, frac=frac, workdir=workdir)
    n_voxels = int(outcome.mask.sum())
    sidecar: dict = {
        "Sources": sources(magnitude),
        "Type": "Brain",
        "MaskBackend": outcome.backend,
        "Voxels": n_voxels,
        "VolumeML": n_voxels * float(np.prod(outcome.voxel_size)) / 1000.0,
    }
    if outcome.backend == "fsl":
        sidecar["BETFractionalIntensity"] = float(frac)
    out = save_volume(
        out_file, outcome.mask.astype(np.uint8), outcome.affine, dtype=np.uint8, sidecar=sidecar
    )
    return StepResult(outputs={"mask": out}, sidecar=sidecar)
