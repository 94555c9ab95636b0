"""FSL FLIRT matrices <-> world (RAS mm) transforms.

FLIRT convention
----------------
A FLIRT ``.mat`` is a 4x4 matrix acting on FSL "scaled-mm" coordinates and maps the **source**
(``-in``) image onto the **reference** (``-ref``) image: ``x_ref_fsl = M @ x_src_fsl``.

FSL scaled-mm coordinates of voxel ``v = (i, j, k)`` of an image with shape ``(Nx, Ny, Nz)``, voxel
size ``(dx, dy, dz)`` mm and voxel->world affine ``A``:

* ``det(A[:3, :3]) > 0`` (neurological storage; FSL flips x):
  ``x_fsl = ((Nx - 1 - i) dx, j dy, k dz)``
* ``det(A[:3, :3]) < 0`` (radiological storage): ``x_fsl = (i dx, j dy, k dz)``

i.e. ``x_fsl = S @ v`` with ``S`` = :func:`fsl_voxel_to_scaled`.

World transforms here act on RAS mm points (NIfTI affine space), as in
:mod:`qsmflow.registration.rigid`.  With ``W`` = source world -> reference world (the same
direction as FLIRT):

    ``W = A_ref S_ref^-1 M S_src A_src^-1``    and    ``M = S_ref A_ref^-1 W A_src S_src^-1``.

:class:`qsmflow.registration.RigidResult.transform` is the inverse direction (reference -> moving);
with the moving image as FLIRT's source use ``world_to_flirt(np.linalg.inv(result.transform),
...)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import QSMInputError
from ..physics.geometry import check_affine


def fsl_voxel_to_scaled(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """4x4 matrix ``S`` mapping voxel indices (i, j, k, 1) to FSL scaled-mm coordinates.

    ``S = diag(dx, dy, dz, 1)`` and, when ``det(affine[:3, :3]) > 0``, x is flipped:
    ``x = (Nx - 1 - i) dx``.  Voxel sizes (mm) are the column norms of ``affine[:3, :3]``.
    """
    a = check_affine(affine, "affine")
    shp = tuple(int(s) for s in shape)
    if len(shp) < 3 or min(shp[:3]) < 1:
        raise QSMInputError(f"shape must have 3 positive spatial sizes, got {shape}", "shape")
    vox = np.linalg.norm(a[:3, :3], axis=0)
    s = np.diag([vox[0], vox[1], vox[2], 1.0])
    if np.linalg.det(a[:3, :3]) > 0:
        flip = np.eye(4)
        flip[0, 0] = -1.0
        flip[0, 3] = shp[0] - 1
        s = s @ flip
    return s


def _frames(
    source_shape: Sequence[int],
    source_affine: np.ndarray,
    reference_shape: Sequence[int],
    reference_affine: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(A_src, S_src, A_ref, S_ref)``: checked affines and their FSL voxel -> scaled-mm maps."""
    a_src = check_affine(source_affine, "source_affine")
    a_ref = check_affine(reference_affine, "reference_affine")
    s_src = fsl_voxel_to_scaled(source_shape, a_src)
    s_ref = fsl_voxel_to_scaled(reference_shape, a_ref)
    return a_src, s_src, a_ref, s_ref


def flirt_to_world(
    flirt_mat: np.ndarray,
    source_shape: Sequence[int],
    source_affine: np.ndarray,
    reference_shape: Sequence[int],
    reference_affine: np.ndarray,
) -> np.ndarray:
    """FLIRT matrix (source -> reference scaled-mm) -> world RAS transform source -> reference.

    ``W = A_ref S_ref^-1 M S_src A_src^-1`` (all 4x4; mm).
    """
    m = check_affine(flirt_mat, "flirt_mat")
    a_src, s_src, a_ref, s_ref = _frames(
        source_shape, source_affine, reference_shape, reference_affine
    )
    return a_ref @ np.linalg.inv(s_ref) @ m @ s_src @ np.linalg.inv(a_src)


def world_to_flirt(
    world: np.ndarray,
    source_shape: Sequence[int],
    source_affine: np.ndarray,
    reference_shape: Sequence[int],
    reference_affine: np.ndarray,
) -> np.ndarray:
    """World RAS transform source -> reference (mm) -> FLIRT matrix (inverse of flirt_to_world).

    ``M = S_ref A_ref^-1 W A_src S_src^-1``.
    """
    w = check_affine(world, "world")
    a_src, s_src, a_ref, s_ref = _frames(
        source_shape, source_affine, reference_shape, reference_affine
    )
    return s_ref @ np.linalg.inv(a_ref) @ w @ a_src @ np.linalg.inv(s_src)


def read_flirt_mat(path) -> np.ndarray:
    """Read a FLIRT ``.mat`` text file (4 rows of 4 numbers)."""
    m = np.loadtxt(path, dtype=np.float64)
    if m.shape != (4, 4):
        raise QSMInputError(f"FLIRT matrix must be 4x4, got shape {m.shape}", str(path))
    return m


def write_flirt_mat(path, mat: np.ndarray) -> None:
    """Write a 4x4 matrix in FLIRT's ``.mat`` text format."""
    m = check_affine(mat, str(path))
    np.savetxt(path, m, fmt="%.10f", delimiter="  ")
