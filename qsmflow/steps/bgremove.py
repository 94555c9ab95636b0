"""Background field removal step: V-SHARP of a total field file.

``qsmflow bgremove`` and the pipeline's ``BackgroundRemoval`` node call :func:`vsharp_file`.
The filter is linear: the local field has the unit of the total field, or ppm of B0 when a
field strength (tesla) is given for a field in Hz. Radii in mm.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ..io.nifti import save_volume
from ..physics.bgremove import DECONVOLUTIONS, DEFAULT_THRESHOLD, vsharp, vsharp_radii
from ..physics.units import hz_to_ppm
from . import StepResult, sources
from .fieldmap import load_field_and_mask

#: ``Units`` of a local field computed without a field strength.
UNITS_OF_INPUT = "same as the input field"


def vsharp_file(
    field: str | os.PathLike,
    mask: str | os.PathLike,
    output: str | os.PathLike,
    *,
    field_strength: float | None = None,
    radii_mm: Sequence[float] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    deconvolution: str = DECONVOLUTIONS[0],
    eroded_mask_output: str | os.PathLike | None = None,
) -> StepResult:
    """Remove the background field of ``field`` (3-D, unwrapped) inside ``mask`` by V-SHARP.

    ``field_strength`` (tesla): ``field`` is in Hz and the local field is written in ppm;
    without it the local field keeps the input's unit. ``radii_mm`` (None: 12..1 mm less
    single-voxel spheres), ``threshold`` and ``deconvolution`` as
    :func:`qsmflow.physics.bgremove.vsharp`; one radius is SHARP. Writes the local field (0
    outside the eroded mask) to ``output`` and, when given, the eroded mask (uint8) to
    ``eroded_mask_output``. Value ``radii_mm``: the radii used, largest first.
    """
    vol, mask_arr = load_field_and_mask(field, mask)
    used = vsharp_radii(radii_mm, vol.voxel_size)
    local, eroded = vsharp(
        vol.data,
        mask_arr,
        vol.voxel_size,
        radii_mm=radii_mm,
        threshold=threshold,
        deconvolution=deconvolution,
    )
    units = UNITS_OF_INPUT
    if field_strength is not None:
        local = hz_to_ppm(local, field_strength).astype(np.float32)
        units = "ppm"
    sidecar = {
        "Sources": sources(field, mask),
        "Units": units,
        "BackgroundFieldRemoval": "V-SHARP" if len(used) > 1 else "SHARP",
        "RadiiMM": list(used),
        "Threshold": threshold,
        "Deconvolution": deconvolution,
        "MagneticFieldStrength": field_strength,
    }
    outputs = {"local_field": save_volume(output, local, vol.affine, sidecar=sidecar)}
    if eroded_mask_output is not None:
        outputs["eroded_mask"] = save_volume(
            eroded_mask_output, eroded.astype(np.uint8), vol.affine, dtype=np.uint8
        )
    return StepResult(outputs, sidecar, {"radii_mm": list(used)})
