"""Brain mask of a magnitude *file*, and the FSL command-line plumbing shared with registration.

:func:`compute_brain_mask` reads a 3-D magnitude, or a 4-D multi-echo magnitude (echoes last)
of which the first echo (best SNR, least dephasing) is used, and returns the mask on the input
grid from one of two backends (:func:`qsmflow.backends.resolve_backend`):

* ``"python"``: qsmflow's own threshold-and-morphology method,
  :func:`qsmflow.masking.brain_mask` (no parameter of BET's);
* ``"fsl"``: FSL BET, ``bet IN OUT -f FRAC -m`` (``frac``: fractional intensity threshold, 0-1,
  smaller = larger brain).

FSL runs through Nipype's BET wrapper (:func:`qsmflow.backends.bet_interface`,
:func:`qsmflow.backends.run_fsl`) on the first volume of the magnitude.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..backends import (
    DEFAULT_BET_FRAC,
    FSL_OUTPUT_EXT,
    bet_interface,
    fsl_input_file,
    resolve_backend,
    run_fsl,
    working_directory,
)
from ..errors import QSMInputError
from ..io.nifti import Volume, load_first_volume, load_volume


@dataclass(frozen=True)
class MaskOutcome:
    """Result of :func:`compute_brain_mask`: the mask on the magnitude's grid."""

    mask: np.ndarray  #: bool, True inside the brain
    affine: np.ndarray  #: the magnitude's affine
    voxel_size: np.ndarray  #: mm
    backend: str  #: "fsl" or "python": the one that ran


def _bet_mask(magnitude_file: str, vol: Volume, n_volumes: int, frac: float, workdir: Path):
    """Run FSL BET on the (first-echo) magnitude; return its mask as bool on the input grid."""
    in_file = fsl_input_file(magnitude_file, vol, n_volumes, workdir)
    brain = str(workdir / f"bet_brain{FSL_OUTPUT_EXT}")
    mask_file = run_fsl(bet_interface(in_file, brain, frac), workdir).mask_file
    mvol = load_volume(mask_file, ndim=3)
    if mvol.data.shape != vol.data.shape:
        raise RuntimeError(
            f"BET mask {mask_file} has shape {mvol.data.shape}, input {vol.data.shape}"
        )
    return np.nan_to_num(mvol.data) > 0


def compute_brain_mask(
    magnitude_file: str | os.PathLike,
    *,
    backend: str = "auto",
    frac: float = DEFAULT_BET_FRAC,
    workdir: str | os.PathLike | None = None,
) -> MaskOutcome:
    """Brain mask of a magnitude image (module docstring); nothing is written but FSL's files.

    ``workdir`` holds FSL's intermediate files (a temporary folder when None). Raises
    :class:`QSMInputError` naming the file for unreadable, 2-D/5-D, sheared or unusable input,
    for ``frac`` outside (0, 1), for ``backend="fsl"`` without FSL and for an empty mask.
    """
    from .brain_mask import brain_mask

    if not 0.0 < float(frac) < 1.0:
        raise QSMInputError(f"frac must be in (0, 1), got {frac}", "frac")
    used = resolve_backend(backend, "bet")
    vol, n_volumes = load_first_volume(magnitude_file, "magnitude")
    if used == "fsl":
        with working_directory(workdir) as wd:
            mask = _bet_mask(str(magnitude_file), vol, n_volumes, frac, wd)
    else:
        try:
            mask = brain_mask(vol.data, vol.voxel_size)
        except QSMInputError as exc:
            if exc.source is None:
                raise QSMInputError(str(exc), vol.path) from exc
            raise
    if not mask.any():
        raise QSMInputError(f"the {used} brain mask is empty", vol.path)
    return MaskOutcome(mask=mask, affine=vol.affine, voxel_size=vol.voxel_size, backend=used)
