"""Registration steps: rigid registration of magnitude files, resampling onto the reference grid,
and an orientation's B0 direction in the reference frame.

Conventions of the transform files: :mod:`qsmflow.registration.files`.

Resampling masks: with ``is_mask`` the mask is resampled **linearly as a 0/1 float image and
thresholded at 0.5** (written uint8): the boundary keeps sub-voxel position and the volume is
unbiased, whereas nearest-neighbour moves it by up to half a voxel and breaks thin structures
under rotation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import QSMInputError
from ..io.nifti import load_volume, save_volume, sidecar_path, write_json
from ..registration.files import (
    as_transform,
    b0_dir_from_files,
    image_grid,
    register_files,
    write_fsl_matrix,
    write_transform,
)
from ..registration.rigid import resample_to_reference
from . import StepResult, sources

PathLike = str | os.PathLike

#: Interpolation name -> spline order (scipy.ndimage); the choices of every interpolation option.
INTERPOLATION_ORDER = {"linear": 1, "nearest": 0, "cubic": 3}
#: Masks: linear interpolation of the 0/1 image, then this threshold.
MASK_THRESHOLD = 0.5

TRANSFORM_CONVENTION = "RAS mm world, reference -> moving (p_moving = T p_reference)"
CONVENTIONS = {
    "transform": "4x4 RAS world (mm) transform reference -> moving (qsmflow)",
    "fsl_matrix": "FSL FLIRT matrix, moving (-in) -> reference (-ref)",
}


def register_file(
    moving: PathLike,
    reference: PathLike,
    *,
    transform_file: PathLike | None = None,
    fsl_matrix_file: PathLike | None = None,
    moving_mask: PathLike | None = None,
    reference_mask: PathLike | None = None,
    backend: str = "auto",
    cost: str = "mutualinfo",
    workdir: PathLike | None = None,
) -> StepResult:
    """Rigid (6-dof) registration of the ``moving`` magnitude to the ``reference`` magnitude.

    See :func:`qsmflow.registration.files.register_files` for the inputs. Writes the qsmflow
    transform to ``transform_file`` and the FLIRT matrix to ``fsl_matrix_file`` (each when
    given), each with a sidecar: ``RegistrationBackend``, ``RotationAngleDeg`` (degrees),
    ``RotationAxis`` (RAS unit vector), ``TranslationMM`` (mm), for the python backend
    ``RegistrationIterations`` and ``RegistrationAttempts``, for FSL ``RegistrationCost``, and
    the file's ``Convention``. Values: ``transform`` (4x4 array), ``b0_dir`` (the moving scan's
    B0 direction in the reference array axes), ``rotation_deg``, ``translation_mm``,
    ``backend``.
    """
    if transform_file is not None and fsl_matrix_file is not None:
        if sidecar_path(transform_file) == sidecar_path(fsl_matrix_file):
            raise QSMInputError(
                "the transform and the FLIRT matrix need different file names: their JSON "
                f"sidecars would both be {sidecar_path(transform_file)}",
                str(fsl_matrix_file),
            )
    result = register_files(
        moving,
        reference,
        moving_mask=moving_mask,
        reference_mask=reference_mask,
        backend=backend,
        cost=cost,
        workdir=workdir,
    )
    sidecar: dict[str, Any] = {
        "Sources": sources(moving, reference, moving_mask, reference_mask),
        "RegistrationBackend": result.backend,
        "RotationAngleDeg": result.angle_deg,
        "RotationAxis": [float(v) for v in result.axis],
        "TranslationMM": [float(v) for v in result.translation],
    }
    if result.backend == "python":
        sidecar["RegistrationIterations"] = result.iterations
        sidecar["RegistrationAttempts"] = result.attempts
    else:
        sidecar["RegistrationCost"] = cost
    outputs: dict[str, Path] = {}
    if transform_file is not None:
        outputs["transform"] = write_transform(
            transform_file, result.transform, moving=str(moving), reference=str(reference)
        )
    if fsl_matrix_file is not None:
        outputs["fsl_matrix"] = write_fsl_matrix(fsl_matrix_file, result.fsl_matrix)
    for key, path in outputs.items():
        write_json(sidecar_path(path), {**sidecar, "Convention": CONVENTIONS[key]})
    values = {
        "transform": result.transform,
        "b0_dir": b0_dir_from_files(result.transform, moving, reference),
        "rotation_deg": result.angle_deg,
        "translation_mm": [float(v) for v in result.translation],
        "backend": result.backend,
    }
    if outputs:
        primary = next(iter(outputs))
        sidecar = {**sidecar, "Convention": CONVENTIONS[primary]}
    return StepResult(outputs=outputs, sidecar=sidecar, values=values)


def resample_file(
    in_file: PathLike,
    reference: PathLike,
    out_file: PathLike,
    *,
    transform: PathLike | np.ndarray | None = None,
    interpolation: str = "linear",
    is_mask: bool = False,
) -> StepResult:
    """Resample ``in_file`` (3-D or 4-D, on the moving grid) onto ``reference``'s grid.

    ``transform``: a qsmflow transform file or 4x4 array (reference -> moving world), or None for
    plain regridding between the two affines. Outside the moving field of view the output is 0.
    ``is_mask``: linear interpolation of the 0/1 mask, > :data:`MASK_THRESHOLD`, written uint8
    (``interpolation`` is then linear whatever is asked); otherwise float32 with
    ``interpolation`` nearest/linear/cubic. Sidecar: ``Interpolation``, ``MaskThreshold``
    (masks), ``Transform`` (the 4x4 applied), ``TransformConvention`` and, for images whose
    own sidecar names them, their ``Units``.
    """
    if interpolation not in INTERPOLATION_ORDER:
        raise QSMInputError(
            f"interpolation must be one of {tuple(INTERPOLATION_ORDER)}, got {interpolation!r}",
            "interpolation",
        )
    t = as_transform(transform)
    shape, ref_affine = image_grid(reference)
    vol = load_volume(in_file, ndim=None)
    if vol.data.ndim not in (3, 4):
        raise QSMInputError(f"expected a 3-D or 4-D image, got shape {vol.data.shape}", vol.path)
    transform_file = None if isinstance(transform, np.ndarray) else transform
    sidecar: dict[str, Any] = {"Sources": sources(in_file, reference, transform_file)}
    units = _input_units(in_file)
    if units is not None and not is_mask:
        sidecar["Units"] = units  # resampling keeps the unit of the values
    if is_mask:
        data = (np.nan_to_num(vol.data) > 0).astype(np.float32)
        moved = resample_to_reference(data, vol.affine, shape, ref_affine, t, order=1)
        out, dtype = moved > MASK_THRESHOLD, np.uint8
        sidecar.update(Interpolation="linear", MaskThreshold=MASK_THRESHOLD)
    else:
        if not np.all(np.isfinite(vol.data)):
            raise QSMInputError("image contains NaN/inf; replace them before resampling", vol.path)
        order = INTERPOLATION_ORDER[interpolation]
        out = resample_to_reference(vol.data, vol.affine, shape, ref_affine, t, order=order)
        dtype = np.float32
        sidecar["Interpolation"] = interpolation
    sidecar.update(Transform=t.tolist(), TransformConvention=TRANSFORM_CONVENTION)
    path = save_volume(out_file, out, ref_affine, dtype=dtype, sidecar=sidecar)
    return StepResult(outputs={"out_file": path}, sidecar=sidecar)


def _input_units(in_file: PathLike) -> str | None:
    """``Units`` of the JSON sidecar beside ``in_file``, if there is one that names them."""
    side = sidecar_path(in_file)
    if not side.is_file():
        return None
    try:
        units = json.loads(side.read_text()).get("Units")
    except (OSError, ValueError, AttributeError):
        return None
    return units if isinstance(units, str) else None


def b0_direction(
    in_file: PathLike, *, transform: PathLike | None = None, reference: PathLike | None = None
) -> list[float]:
    """Unit B0 direction of an orientation: in its own array axes (from ``in_file``'s affine),
    or, with ``transform`` and ``reference``, in the reference grid's array axes."""
    if transform is not None:
        if reference is None:
            raise QSMInputError("a B0 direction through a transform needs the reference image")
        return b0_dir_from_files(transform, in_file, reference)
    return [float(v) for v in load_volume(in_file, ndim=None).b0_dir]
