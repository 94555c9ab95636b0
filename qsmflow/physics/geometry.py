"""Geometry: B0 direction from NIfTI affines, rotations, voxel sizes.

The scanner's B0 points along world +z (RAS+ / scanner coordinates of the NIfTI affine). For an
affine A with 3x3 part M = R @ diag(voxel_size), the B0 direction in array-axis coordinates is
b = R^T z, where R is M with its columns normalised (algorithms.md section 1). The sign of b is
irrelevant to the dipole kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import QSMInputError


def check_affine(affine, name: str = "affine") -> np.ndarray:
    """Return ``affine`` as a float64 4x4 array; raise if it is not finite 4x4 or is singular."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise QSMInputError(f"expected a finite 4x4 matrix, got shape {a.shape}", name)
    if abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise QSMInputError("matrix is singular", name)
    return a


def voxel_size_from_affine(affine: np.ndarray) -> np.ndarray:
    """Voxel edge lengths (mm) = column norms of the affine's 3x3 part."""
    m = np.asarray(affine, dtype=np.float64)[:3, :3]
    return np.linalg.norm(m, axis=0)


def rotation_from_affine(affine: np.ndarray, source: str | None = None) -> np.ndarray:
    """The orthonormal part R of the affine (columns of the 3x3 part normalised).

    Raises if the affine is singular or sheared (columns not orthogonal within 1e-3).
    """
    m = np.asarray(affine, dtype=np.float64)[:3, :3]
    vox = np.linalg.norm(m, axis=0)
    if np.any(vox < 1e-9) or not np.all(np.isfinite(m)):
        raise QSMInputError("affine is singular or not finite", source)
    r = m / vox
    gram = r.T @ r
    if np.max(np.abs(gram - np.eye(3))) > 1e-3:
        raise QSMInputError(
            "affine is sheared (voxel axes not orthogonal); resample the image first", source
        )
    return r


def b0_dir_from_affine(
    affine: np.ndarray, b0_world: Sequence[float] = (0.0, 0.0, 1.0), source: str | None = None
) -> np.ndarray:
    """Unit B0 direction in array-axis coordinates, b = R^T b0_world (oblique affines included)."""
    r = rotation_from_affine(affine, source)
    b = r.T @ np.asarray(b0_world, dtype=np.float64)
    return b / np.linalg.norm(b)


def rotation_matrix(axis: Sequence[float], angle_deg: float) -> np.ndarray:
    """Right-handed rotation by ``angle_deg`` degrees about ``axis`` (Rodrigues' formula)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    t = np.deg2rad(angle_deg)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)


def rotation_angle_deg(r: np.ndarray) -> float:
    """Angle (degrees) of the rotation matrix ``r``."""
    c = (np.trace(np.asarray(r, dtype=np.float64)) - 1) / 2
    return float(np.rad2deg(np.arccos(np.clip(c, -1.0, 1.0))))


def rotation_axis(r: np.ndarray) -> np.ndarray:
    """Unit axis of the rotation matrix ``r`` (right-handed with a positive angle).

    ``(0, 0, 1)`` for the identity (any axis will do); for 180 degrees the axis comes from the
    symmetric part ``(r + I) / 2``.
    """
    r = np.asarray(r, dtype=np.float64)
    v = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    n = np.linalg.norm(v)
    if n > 1e-8:
        return v / n
    if np.trace(r) > 0:
        return np.array([0.0, 0.0, 1.0])
    b = (r + np.eye(3)) / 2.0
    ax = b[:, int(np.argmax(np.diag(b)))]
    return ax / np.linalg.norm(ax)
