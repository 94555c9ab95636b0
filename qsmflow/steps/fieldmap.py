"""Field-map steps: echo stacking with phase scaling, multi-echo field fit, spatial unwrapping.

``qsmflow unwrap`` and the pipeline's ``MergeEchoes`` / ``MultiEchoField`` nodes call these.
Units: phase in rad (Siemens units are scaled on input), echo times in seconds, field maps in
Hz. Every output is written atomically; the sidecar beside the primary output records
``Sources``, ``Units`` and the effective parameters (see :mod:`qsmflow.steps`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from ..errors import QSMInputError
from ..io.nifti import Volume, load_volume, save_volume
from ..physics.multiecho import check_echo_times, multiecho_field, resolve_unwrapping
from ..physics.unwrap import SPATIAL_METHODS, unwrap_echoes
from ..physics.validation import (
    check_mask,
    check_same_affine,
    check_same_grid,
    phase_to_radians,
)
from . import StepResult, sources

PathLike = str | os.PathLike

log = logging.getLogger("qsmflow.steps.fieldmap")

#: What :func:`merge_echoes` stacks: phase is scaled to radians, magnitude kept as is.
ECHO_KINDS = ("magnitude", "phase")


def load_mask(mask: PathLike, image: Volume, what: str = "image") -> np.ndarray:
    """Return the mask file ``mask`` as bool after checking it against ``image``'s grid and
    affine (the one mask check and the one affine tolerance); errors name the mask file."""
    mvol = load_volume(mask, ndim=3)
    checked = check_mask(mvol.data, image.data.shape[:3], mvol.path)
    check_same_affine(mvol.affine, image.affine, f"mask vs {what} ({image.path})", mvol.path)
    return checked


def load_field_and_mask(
    field: PathLike, mask: PathLike, what: str = "field"
) -> tuple[Volume, np.ndarray]:
    """Return the 3-D ``field`` volume and its mask (bool), checked by :func:`load_mask`."""
    vol = load_volume(field, ndim=3)
    return vol, load_mask(mask, vol, what)


def merge_echoes(
    in_files: Sequence[PathLike],
    output: PathLike,
    *,
    kind: str,
    phase_units: str = "auto",
    first_echo_output: PathLike | None = None,
) -> StepResult:
    """Stack one 3-D image per echo (in echo order) into a 4-D image, echoes last.

    Every echo must be on the first echo's grid (shape and affine). With ``kind="phase"`` each
    echo is scaled to radians (``phase_units``, see
    :func:`qsmflow.physics.validation.phase_to_radians`; checked per file, errors name it).
    Writes ``output`` (float32) and, when given, ``first_echo_output`` (the first echo, 3-D).
    Outputs ``merged`` and ``first_echo``; value ``units``: the units found in the input
    (``rad``, ``siemens``, ``siemens-raw``, or ``a.u.`` for magnitude).
    """
    if kind not in ECHO_KINDS:
        raise QSMInputError(f"unknown echo image kind {kind!r} (use {', '.join(ECHO_KINDS)})")
    vols = [load_volume(f, ndim=3) for f in in_files]
    if not vols:
        raise QSMInputError("no echo images given")
    first = vols[0]
    units = "a.u."
    data = []
    for v in vols:
        check_same_grid(v.data.shape, first.data.shape, "echo grids", v.path)
        check_same_affine(
            v.affine, first.affine, f"affine vs the first echo's ({first.path})", v.path
        )
        arr = v.data
        if kind == "phase":
            arr, units = phase_to_radians(v.data, v.path, units=phase_units)
        data.append(np.asarray(arr, dtype=np.float32))
    stack = np.stack(data, axis=-1)
    sidecar = {"Sources": sources(*in_files), "Units": "rad" if kind == "phase" else "a.u."}
    if kind == "phase":
        sidecar["PhaseUnitsIn"] = units
    outputs = {"merged": save_volume(output, stack, first.affine, sidecar=sidecar)}
    if first_echo_output is not None:
        outputs["first_echo"] = save_volume(first_echo_output, stack[..., 0], first.affine)
    return StepResult(outputs, sidecar, {"units": units})


def _load_phase(
    phase: PathLike, mask: PathLike | None, phase_units: str
) -> tuple[Volume, np.ndarray, str, np.ndarray]:
    """Phase (3-D or 4-D) in rad, the units found, and the mask: the given one, or else the
    voxels finite in every echo (with a warning when some are not)."""
    vol = load_volume(phase, ndim=None)
    if vol.data.ndim not in (3, 4):
        raise QSMInputError(f"phase must be 3-D or 4-D, got shape {vol.data.shape}", vol.path)
    phase_rad, units = phase_to_radians(vol.data, vol.path, units=phase_units)
    log.info("phase units: %s", units)
    grid = phase_rad.shape[:3]
    if mask is not None:
        return vol, phase_rad, units, load_mask(mask, vol, "phase")
    finite = np.isfinite(phase_rad)
    finite = np.all(finite, axis=3) if phase_rad.ndim == 4 else finite
    if not finite.all():
        log.warning("%d non-finite voxel(s) left out of the mask", int((~finite).sum()))
    return vol, phase_rad, units, check_mask(finite, grid, vol.path)


def fit_field(
    phase: PathLike,
    output: PathLike,
    *,
    echo_times: Sequence[float],
    magnitude: PathLike | None = None,
    mask: PathLike | None = None,
    method: str = "auto",
    phase_units: str = "auto",
    offset_output: PathLike | None = None,
) -> StepResult:
    """Fit the field map (Hz) of wrapped multi-echo phase, unwrapping it spatially.

    ``phase`` is 3-D (one echo) or 4-D (echoes last), in rad or Siemens units
    (``phase_units``); ``echo_times`` in seconds, one per echo; ``magnitude`` (same shape)
    weighs the fit; ``mask`` defaults to the voxels finite in every echo. ``method`` is one of
    :data:`qsmflow.physics.multiecho.UNWRAPPING_METHODS` (``"auto"``: temporal for several
    echoes, laplacian for one). Writes the field map (Hz, 0 outside the mask) to ``output`` and,
    when given, the fitted phase offset at TE = 0 (rad) to ``offset_output``.
    """
    vol, phase_rad, units, mask_arr = _load_phase(phase, mask, phase_units)
    weights = None
    if magnitude is not None:
        mag = load_volume(magnitude, ndim=None)
        check_same_grid(mag.data.shape, vol.data.shape, "magnitude vs phase", mag.path)
        weights = mag.data
    n_echoes = phase_rad.shape[3] if phase_rad.ndim == 4 else 1
    te = check_echo_times(echo_times, n_echoes)
    used = resolve_unwrapping(method, n_echoes)
    field, offset = multiecho_field(phase_rad, weights, te, vol.voxel_size, mask_arr, method=used)
    sidecar = {
        "Sources": sources(phase, magnitude, mask),
        "Units": "Hz",
        "EchoTime": te.tolist(),
        "UnwrappingMethod": used,
        "PhaseUnitsIn": units,
    }
    outputs = {"field_hz": save_volume(output, field, vol.affine, sidecar=sidecar)}
    if offset_output is not None:
        offset_meta = {"Sources": sidecar["Sources"], "Units": "rad"}
        outputs["offset_rad"] = save_volume(offset_output, offset, vol.affine, sidecar=offset_meta)
    return StepResult(outputs, sidecar, {"unwrapping": used})


def unwrap_phase(
    phase: PathLike,
    output: PathLike,
    *,
    mask: PathLike | None = None,
    method: str = SPATIAL_METHODS[0],
    phase_units: str = "auto",
) -> StepResult:
    """Spatially unwrap a phase image (3-D, or 4-D with each echo unwrapped on its own).

    ``method`` is one of :data:`qsmflow.physics.unwrap.SPATIAL_METHODS` (temporal unwrapping
    needs echo times: :func:`fit_field`). Writes the unwrapped phase in rad (0 outside the
    mask, which defaults to the finite voxels) to ``output``.
    """
    if method not in SPATIAL_METHODS:
        hint = "; temporal unwrapping needs echo times" if method == "temporal" else ""
        raise QSMInputError(
            f"unknown spatial unwrapping method {method!r} (use {', '.join(SPATIAL_METHODS)})"
            + hint
        )
    vol, phase_rad, units, mask_arr = _load_phase(phase, mask, phase_units)
    unwrapped = unwrap_echoes(phase_rad, vol.voxel_size, mask=mask_arr, method=method)
    sidecar = {
        "Sources": sources(phase, mask),
        "Units": "rad",
        "UnwrappingMethod": method,
        "PhaseUnitsIn": units,
    }
    out = save_volume(output, unwrapped, vol.affine, sidecar=sidecar)
    return StepResult({"unwrapped": out}, sidecar)
