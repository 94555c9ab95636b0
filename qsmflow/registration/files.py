"""Rigid registration of magnitude *files* (FSL FLIRT or SimpleITK) and the transform file format.

:func:`register_files` is the file-level driver: it reads the images (4-D: first volume) and
masks, picks the backend (:func:`qsmflow.backends.resolve_backend`), and for the python
backend runs :func:`qsmflow.registration.register_arrays` with a retry loop and a convergence
decision. The array-level functions live in :mod:`qsmflow.registration.rigid`.

Transform files
---------------
* ``transform`` (qsmflow's convention, text from ``np.savetxt`` with ``#`` comment lines): a 4x4
  matrix ``T`` on homogeneous **RAS+ world coordinates in mm** (the NIfTI affine space) mapping
  **reference-world points to moving-world points**, ``p_moving = T @ p_reference``; this is
  :attr:`qsmflow.registration.RigidResult.transform`, exactly what pulls the moving image onto
  the reference grid. ``T[:3, :3]`` is a proper rotation, ``T[:3, 3]`` a translation in mm.
* ``fsl_matrix``: the same registration as an FSL FLIRT ``.mat`` of the moving image (``-in``)
  onto the reference (``-ref``) in FSL scaled-mm coordinates, usable with ``flirt -applyxfm
  -init`` or ``convert_xfm``; written by both backends
  (:func:`qsmflow.registration.fsl.world_to_flirt`). Both files refer to the geometry (shape,
  affine) of the moving and reference files given; for a 4-D moving image that of its first
  volume, which is the same.

Backends: ``"fsl"`` runs ``flirt -dof 6`` (cost ``mutualinfo`` by default) and converts its
matrix with :func:`qsmflow.registration.fsl.flirt_to_world`; ``"python"`` runs
:func:`qsmflow.registration.register_arrays` (SimpleITK, Mattes mutual information; ``cost``
ignored); ``"auto"`` uses FSL when ``flirt`` is on PATH.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..backends import (
    FLIRT_COSTS,
    FSL_OUTPUT_EXT,
    flirt_interface,
    fsl_input_file,
    resolve_backend,
    run_fsl,
    working_directory,
)
from ..errors import QSMInputError
from ..io.atomic import atomic_path
from ..io.nifti import Volume, load_first_volume, load_volume
from ..physics.geometry import b0_dir_from_affine, check_affine
from ..physics.validation import check_same_affine, check_same_grid
from .fsl import flirt_to_world, read_flirt_mat, world_to_flirt, write_flirt_mat
from .rigid import RigidResult, b0_to_reference, register_arrays

log = logging.getLogger("qsmflow.registration")

#: Python backend: optimiser iterations per pyramid level. register_arrays' default (200) stops
#: short of convergence on smooth low-resolution images (simulated head phantom at 2-3 mm, 15
#: deg: 13 of 45 rotations ended at the cap with 0.4-3.5 deg error); with 1000 all 45 converged
#: (worst 0.11 deg) in the same time, as converged runs stop on the step tolerance first.
PYTHON_MAX_ITERATIONS = 1000
#: ITK threads of the Python registration. Threaded Mattes-MI sums are reduced in a
#: scheduling-dependent order, so with more than one thread two runs on the same images differ
#: by ~1e-6 in the transform (and optimiser paths can drift to ~1e-4); one thread makes every
#: run, Linear or MultiProc, bit-for-bit reproducible. Override with QSMFLOW_REGISTRATION_THREADS.
REGISTRATION_THREADS = int(os.environ.get("QSMFLOW_REGISTRATION_THREADS", "1"))

#: Python backend: voxels sampled by the Mattes MI metric, as a count. A fixed 5 % fraction
#: is enough at 176x176x160 (0.014 deg on the real SNU pair) but too few on 2 mm images of the
#: built-in phantom: 10 of 20 registrations (96x112x96, 20 deg) then stopped at the iteration cap
#: 1.6-13 deg off; with 20 % (~200k samples) all 20 converged in 21-89 iterations to <= 0.1 deg.
PYTHON_TARGET_SAMPLES = 200_000
#: Attempts (doubling the samples, new seed) before a non-converging registration is an error.
PYTHON_ATTEMPTS = 3
#: Seed of the first attempt's metric sampling (attempt k uses PYTHON_SEED + k).
PYTHON_SEED = 12345

TRANSFORM_HEADER = (
    "qsmflow rigid transform: 4x4 matrix on homogeneous RAS+ world coordinates (mm).\n"
    "Maps REFERENCE-world points to MOVING-world points: p_moving = T @ p_reference\n"
    "(pulls the moving image onto the reference grid; inverse = moving -> reference).\n"
    "Not an FSL/ITK/ANTs matrix: see the FLIRT .mat written alongside for FSL tools."
)


def python_sampling_fraction(n_voxels: int) -> float:
    """Sampling fraction giving about :data:`PYTHON_TARGET_SAMPLES` samples, in [0.05, 1]."""
    return float(min(1.0, max(0.05, PYTHON_TARGET_SAMPLES / max(1, n_voxels))))


def write_transform(
    path: str | os.PathLike,
    transform: np.ndarray,
    *,
    moving: str | None = None,
    reference: str | None = None,
) -> Path:
    """Write a qsmflow world transform (reference -> moving, RAS mm) as text with a header."""
    t = check_affine(transform, str(path))
    header = TRANSFORM_HEADER
    if moving is not None:
        header += f"\nmoving: {moving}"
    if reference is not None:
        header += f"\nreference: {reference}"
    with atomic_path(path, Path(path).suffix or ".txt") as tmp:
        np.savetxt(tmp, t, fmt="%.12f", header=header)
    return Path(path)


def write_fsl_matrix(path: str | os.PathLike, fsl_matrix: np.ndarray) -> Path:
    """Write a FLIRT ``.mat`` atomically."""
    with atomic_path(path, Path(path).suffix or ".mat") as tmp:
        write_flirt_mat(tmp, fsl_matrix)
    return Path(path)


def read_transform(path: str | os.PathLike) -> np.ndarray:
    """Read a transform written by :func:`write_transform`; check it is a finite rigid 4x4."""
    p = Path(path)
    if not p.is_file():
        raise QSMInputError("transform file not found", str(p))
    try:
        t = np.loadtxt(p, dtype=np.float64, comments="#", ndmin=2)
    except ValueError as exc:
        raise QSMInputError(f"cannot read a 4x4 matrix ({exc})", str(p)) from exc
    if t.shape != (4, 4) or not np.all(np.isfinite(t)):
        raise QSMInputError(f"transform must be a finite 4x4 matrix, got shape {t.shape}", str(p))
    r = t[:3, :3]
    if (
        not np.allclose(t[3], [0, 0, 0, 1], atol=1e-9)
        or not np.allclose(r.T @ r, np.eye(3), atol=1e-4)
        or np.linalg.det(r) < 0
    ):
        raise QSMInputError("transform is not rigid (proper rotation + translation)", str(p))
    return t


def as_transform(transform: str | os.PathLike | np.ndarray | None) -> np.ndarray:
    """A transform file (:func:`read_transform`), a 4x4 array, or None (identity)."""
    if transform is None:
        return np.eye(4)
    if isinstance(transform, np.ndarray):
        return transform
    return read_transform(transform)


def image_grid(
    path: str | os.PathLike, role: str = "reference"
) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape (first three axes) and affine of a 3-D/4-D image, read from its header only."""
    import nibabel as nib

    p = Path(path)
    if not p.exists():
        raise QSMInputError("file not found", str(p))
    try:
        img = nib.load(str(p))
    except Exception as exc:  # nibabel raises many exception types for broken files
        raise QSMInputError(f"cannot read as NIfTI ({exc})", str(p)) from exc
    if len(img.shape) not in (3, 4):
        raise QSMInputError(f"{role} must be 3-D or 4-D, got shape {img.shape}", str(p))
    affine = check_affine(img.affine, str(p))
    return tuple(int(s) for s in img.shape[:3]), affine


def _load_mask(path: str | os.PathLike, vol: Volume, role: str) -> np.ndarray:
    """A registration mask (> 0 = in) on its image's grid (shape and affine)."""
    mvol = load_volume(path, ndim=3)
    what = f"{role} vs its image {vol.path}"
    check_same_grid(mvol.data.shape, vol.data.shape, what, mvol.path)
    check_same_affine(mvol.affine, vol.affine, what, mvol.path)
    mask = np.nan_to_num(mvol.data) > 0
    if not mask.any():
        raise QSMInputError(f"{role} is empty", mvol.path)
    return mask


def _flirt(
    moving: tuple[str, Volume, int],
    reference: tuple[str, Volume, int],
    *,
    cost: str,
    moving_mask: str | os.PathLike | None,
    reference_mask: str | os.PathLike | None,
    workdir: Path,
) -> tuple[np.ndarray, np.ndarray]:
    """Run FLIRT; return (transform reference -> moving world, FLIRT matrix).

    ``moving``/``reference``: (file, first volume, number of volumes).
    """
    moving_file, mov, n_mov = moving
    reference_file, ref, n_ref = reference
    flt = flirt_interface(
        fsl_input_file(moving_file, mov, n_mov, workdir),
        fsl_input_file(reference_file, ref, n_ref, workdir),
        str(workdir / f"flirt_moving_in_reference{FSL_OUTPUT_EXT}"),
        str(workdir / "flirt_moving_to_reference.mat"),
        cost=cost,
        in_weight=None if moving_mask is None else str(Path(moving_mask).resolve()),
        ref_weight=None if reference_mask is None else str(Path(reference_mask).resolve()),
    )
    mat = read_flirt_mat(run_fsl(flt, workdir).out_matrix_file)
    world = flirt_to_world(mat, mov.data.shape, mov.affine, ref.data.shape, ref.affine)
    return np.linalg.inv(world), mat


def _register_python(
    mov: Volume, ref: Volume, mmask: np.ndarray | None, rmask: np.ndarray | None
) -> RigidResult:
    """SimpleITK registration; retried with twice the samples (new seed) until it converges."""
    for vol in (mov, ref):
        if not np.any(np.nan_to_num(vol.data) != np.nan_to_num(vol.data.flat[0])):
            raise QSMInputError("image is empty (constant everywhere)", vol.path)
    fraction = python_sampling_fraction(ref.data.size)
    for attempt in range(PYTHON_ATTEMPTS):
        result = register_arrays(
            mov.data,
            mov.affine,
            ref.data,
            ref.affine,
            moving_mask=mmask,
            reference_mask=rmask,
            iterations=PYTHON_MAX_ITERATIONS,
            threads=REGISTRATION_THREADS,
            sampling_fraction=fraction,
            seed=PYTHON_SEED + attempt,
        )
        if result.iterations < PYTHON_MAX_ITERATIONS:  # stopped on the step tolerance
            return replace(result, attempts=attempt + 1)
        log.warning(
            "registration of %s did not converge in %d iterations with %.0f %% of the "
            "voxels sampled; retrying with more samples",
            mov.path,
            PYTHON_MAX_ITERATIONS,
            100 * fraction,
        )
        fraction = min(1.0, 2 * fraction)
    raise QSMInputError(
        f"rigid registration to {ref.path} did not converge "
        f"({PYTHON_ATTEMPTS} attempts); check that both images show the same head",
        mov.path,
    )


def register_files(
    moving_file: str | os.PathLike,
    reference_file: str | os.PathLike,
    *,
    moving_mask: str | os.PathLike | None = None,
    reference_mask: str | os.PathLike | None = None,
    backend: str = "auto",
    cost: str = "mutualinfo",
    workdir: str | os.PathLike | None = None,
) -> RigidResult:
    """Rigid (6-dof) registration of the moving magnitude file to the reference magnitude file.

    Files may be 3-D or 4-D (first volume used). Masks (3-D, on their image's grid, > 0 = in)
    restrict the cost/metric (FLIRT ``-inweight``/``-refweight``). ``workdir`` holds FLIRT's
    files (temporary when None). Returns one :class:`RigidResult` for both backends, with
    ``backend``, ``moving_shape`` and ``fsl_matrix`` filled in. The python backend runs up to
    :data:`PYTHON_MAX_ITERATIONS` iterations per pyramid level and :data:`PYTHON_ATTEMPTS`
    attempts.
    """
    if cost not in FLIRT_COSTS:
        raise QSMInputError(f"unknown FLIRT cost {cost!r}; choose one of {FLIRT_COSTS}", "cost")
    used = resolve_backend(backend, "flirt")
    mov, n_mov = load_first_volume(moving_file, "moving image")
    ref, n_ref = load_first_volume(reference_file, "reference image")
    mmask = None if moving_mask is None else _load_mask(moving_mask, mov, "moving mask")
    rmask = None if reference_mask is None else _load_mask(reference_mask, ref, "reference mask")
    geometry = {
        "reference_shape": tuple(int(s) for s in ref.data.shape),
        "reference_affine": ref.affine,
        "moving_affine": mov.affine,
        "moving_shape": tuple(int(s) for s in mov.data.shape),
    }
    if used == "fsl":
        with working_directory(workdir) as wd:
            transform, fsl_matrix = _flirt(
                (str(moving_file), mov, n_mov),
                (str(reference_file), ref, n_ref),
                cost=cost,
                moving_mask=moving_mask,
                reference_mask=reference_mask,
                workdir=wd,
            )
        return RigidResult(transform=transform, backend="fsl", fsl_matrix=fsl_matrix, **geometry)
    result = _register_python(mov, ref, mmask, rmask)
    fsl_matrix = world_to_flirt(
        np.linalg.inv(result.transform), mov.data.shape, mov.affine, ref.data.shape, ref.affine
    )
    return replace(result, backend="python", fsl_matrix=fsl_matrix, **geometry)


def b0_dir_from_files(
    transform: str | os.PathLike | np.ndarray,
    moving_file: str | os.PathLike,
    reference_file: str | os.PathLike,
) -> list[float]:
    """B0 direction of the moving acquisition, as a unit vector in the reference's array axes.

    B0 (world +z of the moving scan) in the moving array axes is
    ``b0_dir_from_affine(moving affine)``; :func:`qsmflow.registration.b0_to_reference` carries
    it through the rotation of the transform (reference -> moving world) into the reference
    array axes: the dipole-kernel direction of a moving-space field map after it has been
    resampled onto the reference grid (COSMOS). The sign is irrelevant to the kernel.
    """
    t = as_transform(transform)
    _, mov_affine = image_grid(moving_file, "moving image")
    _, ref_affine = image_grid(reference_file)
    b_mov = b0_dir_from_affine(mov_affine, source=str(moving_file))
    return [float(v) for v in b0_to_reference(b_mov, mov_affine, ref_affine, t)]
