"""Rigid (6-dof) registration of 3-D images in world (mm) coordinates, with SimpleITK.

Conventions
-----------
* Every image is a numpy array indexed ``[i, j, k]`` plus a 4x4 NIfTI affine ``A`` that maps the
  voxel index (i, j, k, 1) to world coordinates in mm, **RAS+** (+x = Right, +y = Anterior, +z =
  Superior).
* SimpleITK / ITK physical space is **LPS+** (+x = Left, +y = Posterior, +z = Superior).  The two
  differ by ``F = diag(-1, -1, 1)``: ``p_lps = F @ p_ras``.  An array with affine ``A = [M | o]``
  becomes a SimpleITK image (index order i, j, k) with spacing ``|M[:, c]|`` (column norms, mm),
  direction ``F @ M / spacing`` and origin ``F @ o``.
* A world transform is a 4x4 matrix ``T`` acting on homogeneous RAS mm points.  The result of
  :func:`register_arrays` stores ``T = reference_to_moving``: for a point ``p`` in the reference
  image's world, ``T @ p`` is the corresponding anatomical point in the moving image's world (ITK's
  fixed-to-moving convention; it is exactly the map needed to pull the moving image onto the
  reference grid).  Its inverse ``moving_to_reference`` is the direction of an FSL FLIRT matrix
  (see :mod:`qsmflow.registration.fsl`).
* ``T[:3, :3]`` is a proper rotation (det +1) and ``T[:3, 3]`` a translation in mm.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..errors import QSMInputError
from ..physics.geometry import (
    check_affine,
    rotation_angle_deg,
    rotation_axis,
    rotation_from_affine,
)

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (its own inverse), homogeneous


def _check_volume(array, name: str) -> np.ndarray:
    a = np.asarray(array)
    if a.ndim != 3:
        raise QSMInputError(f"expected a 3-D volume, got {a.ndim}-D shape {a.shape}", name)
    if min(a.shape) < 2:
        raise QSMInputError(f"volume too small: shape {a.shape}", name)
    if np.iscomplexobj(a):
        raise QSMInputError("expected a real (magnitude) volume, got complex data", name)
    a = np.nan_to_num(a.astype(np.float32, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
    if not np.any(a != a.flat[0]):
        raise QSMInputError("volume is empty (constant everywhere)", name)
    return a


def _check_transform(transform) -> np.ndarray:
    t = np.asarray(transform, dtype=np.float64)
    if t.shape != (4, 4) or not np.all(np.isfinite(t)):
        raise QSMInputError(
            f"transform must be a finite 4x4 matrix, got shape {t.shape}", "transform"
        )
    return t


def array_to_sitk(array: np.ndarray, affine: np.ndarray, name: str = "image"):
    """numpy volume + RAS affine -> SimpleITK float32 image in LPS physical space.

    SimpleITK index (i, j, k) addresses ``array[i, j, k]`` and its physical point (LPS mm) is
    ``F @ (A @ [i, j, k, 1])`` with ``F = diag(-1, -1, 1)``.  Sheared affines are rejected.
    """
    sitk = _sitk()
    a = check_affine(affine, name)
    rot = rotation_from_affine(a, name)  # orthonormal, may have det -1
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    img = sitk.GetImageFromArray(
        np.ascontiguousarray(np.asarray(array, np.float32).transpose(2, 1, 0))
    )
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(v) for v in (LPS[:3, :3] @ a[:3, 3])])
    img.SetDirection([float(v) for v in (LPS[:3, :3] @ rot).ravel()])
    return img


def _sitk():
    try:
        import SimpleITK as sitk
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("qsmflow.registration needs SimpleITK (pip install SimpleITK)") from e
    return sitk


@dataclass
class RigidResult:
    """Outcome of a rigid registration: :func:`register_arrays`, or files (module `files`).

    Attributes
    ----------
    transform : (4, 4) float64
        World (RAS mm) transform **reference -> moving**: ``p_moving = transform @ p_reference``.
    reference_shape, reference_affine, moving_affine :
        Geometry the transform was estimated for (used by :meth:`resample`).
    metric : float
        Final Mattes mutual-information value (negative; lower is better).
    iterations : int
        Optimiser iterations at the last (finest) level.
    seconds : float
        Wall time of the registration (s).
    moving_shape, backend, fsl_matrix, attempts :
        Filled in by the file-level driver :func:`qsmflow.registration.files.register_files`:
        the moving grid, the backend that ran (``"python"`` or ``"fsl"``), the same
        registration as a FLIRT matrix (moving ``-in`` -> reference ``-ref``) and the attempts
        the python backend needed (FSL: 1, ``iterations`` 0 and ``metric`` NaN: not reported).
    """

    transform: np.ndarray
    reference_shape: tuple[int, int, int]
    reference_affine: np.ndarray
    moving_affine: np.ndarray
    metric: float = float("nan")
    iterations: int = 0
    seconds: float = 0.0
    stop_condition: str = field(default="", repr=False)
    moving_shape: tuple[int, int, int] | None = None
    backend: str = "python"
    fsl_matrix: np.ndarray | None = field(default=None, repr=False)
    attempts: int = 1

    @property
    def rotation(self) -> np.ndarray:
        """3x3 rotation part of :attr:`transform` (reference world -> moving world)."""
        return self.transform[:3, :3].copy()

    @property
    def translation(self) -> np.ndarray:
        """Translation part of :attr:`transform` in mm (RAS)."""
        return self.transform[:3, 3].copy()

    @property
    def moving_to_reference(self) -> np.ndarray:
        """Inverse world transform (moving world -> reference world); FLIRT's direction."""
        return np.linalg.inv(self.transform)

    @property
    def angle_deg(self) -> float:
        """Total rotation angle in degrees (the same in both directions)."""
        return rotation_angle_deg(self.rotation)

    @property
    def axis(self) -> np.ndarray:
        """Unit rotation axis (RAS) of the reference -> moving rotation ((0, 0, 1) if none)."""
        return rotation_axis(self.rotation)

    def resample(self, moving_array: np.ndarray, order: int = 1, cval: float = 0.0) -> np.ndarray:
        """Resample ``moving_array`` (on the moving grid) onto the reference grid."""
        return resample_to_reference(
            moving_array,
            self.moving_affine,
            self.reference_shape,
            self.reference_affine,
            self.transform,
            order=order,
            cval=cval,
        )

    def b0_to_reference(self, b0_moving: Sequence[float]) -> np.ndarray:
        """See :func:`b0_to_reference`."""
        return b0_to_reference(b0_moving, self.moving_affine, self.reference_affine, self.transform)


def voxel_map(moving_affine, reference_affine, transform) -> np.ndarray:
    """4x4 map from reference voxel indices to moving voxel indices.

    ``v_moving = A_moving^-1 @ T @ A_reference @ v_reference`` with ``T`` = reference->moving
    world.
    """
    am = check_affine(moving_affine, "moving_affine")
    ar = check_affine(reference_affine, "reference_affine")
    return np.linalg.inv(am) @ _check_transform(transform) @ ar


def resample_to_reference(
    array: np.ndarray,
    moving_affine: np.ndarray,
    reference_shape: Sequence[int],
    reference_affine: np.ndarray,
    transform: np.ndarray | None = None,
    order: int = 1,
    cval: float = 0.0,
) -> np.ndarray:
    """Pull a moving-grid volume onto the reference grid (``scipy.ndimage.affine_transform``).

    Parameters
    ----------
    array : 3-D (or 4-D with trailing extra axis, e.g. echoes) array on the moving grid.
    moving_affine, reference_affine : 4x4 RAS voxel->mm affines.
    reference_shape : 3-D output shape.
    transform : 4x4 world transform reference -> moving (RAS mm); ``None`` = identity (pure
        regridding between the two affines).
    order : spline order (0 nearest, 1 trilinear, 3 cubic).
    cval : value outside the moving field of view.

    Returns float32 (or the input's float dtype) on the reference grid.
    """
    a = np.asarray(array)
    if a.ndim not in (3, 4):
        raise QSMInputError(f"expected a 3-D or 4-D volume, got shape {a.shape}", "array")
    shape = tuple(int(s) for s in reference_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise QSMInputError(f"reference_shape must be 3 positive ints, got {reference_shape}")
    t = np.eye(4) if transform is None else transform
    m = voxel_map(moving_affine, reference_affine, t)
    out_dtype = a.dtype if np.issubdtype(a.dtype, np.floating) else np.float32
    if a.ndim == 4:
        return np.stack(
            [
                resample_to_reference(
                    a[..., e], moving_affine, shape, reference_affine, t, order, cval
                )
                for e in range(a.shape[3])
            ],
            axis=-1,
        )
    return ndimage.affine_transform(
        a.astype(out_dtype, copy=False),
        m[:3, :3],
        offset=m[:3, 3],
        output_shape=shape,
        order=order,
        mode="constant",
        cval=cval,
        prefilter=order > 1,
    )


def b0_to_reference(
    b0_moving: Sequence[float],
    moving_affine: np.ndarray,
    reference_affine: np.ndarray,
    transform: np.ndarray,
) -> np.ndarray:
    """Carry a direction from the moving image's array axes into the reference image's array axes.

    Used for COSMOS (algorithms.md 2.4): ``b0_moving`` is the unit B0 direction of orientation n in
    its own array axes (``qsmflow.physics.geometry.b0_dir_from_affine(moving_affine)``); the result
    is the direction, relative to the same anatomy, in the reference image's array axes, i.e. the
    b-vector of the dipole kernel for the field map after it has been resampled onto the reference
    grid.

    Maths: with ``R_m``, ``R_r`` the orthonormal parts of the moving/reference affines and ``Q``
    the rotation part of ``transform`` (reference world -> moving world):

    * moving array axes -> moving world:  ``w_m = R_m b``
    * moving world -> reference world (directions follow the inverse rotation):
      ``w_r = Q^T w_m``
    * reference world -> reference array axes: ``b_ref = R_r^T w_r``

    so ``b_ref = R_r^T Q^T R_m b`` (normalised; the sign is irrelevant to the dipole kernel).
    """
    b = np.asarray(b0_moving, dtype=np.float64).reshape(3)
    nb = np.linalg.norm(b)
    if not np.isfinite(nb) or nb < 1e-12:
        raise QSMInputError(f"B0 direction must be a non-zero 3-vector, got {b0_moving}", "b0")
    rm = rotation_from_affine(check_affine(moving_affine, "moving_affine"), "moving_affine")
    rr = rotation_from_affine(
        check_affine(reference_affine, "reference_affine"), "reference_affine"
    )
    q = _check_transform(transform)[:3, :3]
    out = rr.T @ q.T @ rm @ (b / nb)
    return out / np.linalg.norm(out)


def _euler_to_world(tx) -> np.ndarray:
    """ITK rigid transform (LPS fixed->moving) -> 4x4 RAS world matrix."""
    m = np.eye(4)
    m[:3, :3] = np.asarray(tx.GetMatrix(), dtype=np.float64).reshape(3, 3)
    c = np.asarray(tx.GetCenter(), dtype=np.float64)
    t = np.asarray(tx.GetTranslation(), dtype=np.float64)
    m[:3, 3] = t + c - m[:3, :3] @ c
    return LPS @ m @ LPS


def register_arrays(
    moving: np.ndarray,
    moving_affine: np.ndarray,
    reference: np.ndarray,
    reference_affine: np.ndarray,
    *,
    reference_mask: np.ndarray | None = None,
    moving_mask: np.ndarray | None = None,
    shrink_factors: Sequence[int] = (4, 2, 1),
    smoothing_sigmas_mm: Sequence[float] = (2.0, 1.0, 0.0),
    histogram_bins: int = 32,
    sampling_fraction: float = 0.05,
    iterations: int = 200,
    initialise: str = "moments",
    initial_transform: np.ndarray | None = None,
    seed: int = 12345,
    threads: int | None = None,
) -> RigidResult:
    """Estimate the rigid world transform that aligns ``moving`` to ``reference``.

    Mattes mutual information (``histogram_bins``) on a random ``sampling_fraction`` of the voxels
    drawn with a fixed ``seed`` (reproducible to ~1e-12 for a fixed thread count, ~1e-8 across
    thread counts: threaded sums differ only in rounding order); a multi-resolution pyramid
    (``shrink_factors`` with Gaussian ``smoothing_sigmas_mm`` in mm); a 6-dof Euler3D transform
    initialised by aligning centres of mass (``initialise="moments"``; ``"geometry"`` aligns the
    field-of-view centres; ``"identity"`` starts from ``initial_transform`` or the identity);
    regular-step gradient descent with parameter scales from physical shift.  Images are float32;
    geometry is taken from the NIfTI (RAS) affines and converted to ITK's LPS internally.

    Parameters
    ----------
    moving, reference : 3-D real volumes (e.g. GRE magnitudes); NaN/inf are set to 0.
    moving_affine, reference_affine : 4x4 RAS voxel->mm affines.
    reference_mask, moving_mask : optional boolean masks (same shape as their image) restricting
        where the metric is sampled.
    initial_transform : optional 4x4 RAS world transform reference->moving to start from
        (used with ``initialise="identity"``).
    iterations : maximum optimiser iterations per level.
    threads : ITK worker threads for the registration and its pyramid filters (None:
        SimpleITK's default). Only a fixed count of 1 is run-to-run reproducible: threaded
        metric sums are reduced in scheduling order.

    Returns
    -------
    RigidResult whose ``transform`` maps reference-world points (RAS mm) to moving-world points.
    Typical cost: ~5-20 s for a 176x176x160 1 mm pair on 2 cores.
    """
    sitk = _sitk()
    mov = _check_volume(moving, "moving")
    ref = _check_volume(reference, "reference")
    am = check_affine(moving_affine, "moving_affine")
    ar = check_affine(reference_affine, "reference_affine")
    if len(shrink_factors) != len(smoothing_sigmas_mm) or len(shrink_factors) == 0:
        raise QSMInputError(
            "shrink_factors and smoothing_sigmas_mm must be equally long, >= 1 level"
        )
    if not 0 < sampling_fraction <= 1:
        raise QSMInputError(f"sampling_fraction must be in (0, 1], got {sampling_fraction}")
    if initialise not in ("moments", "geometry", "identity"):
        raise QSMInputError(f"initialise must be moments/geometry/identity, got {initialise!r}")

    t0 = time.perf_counter()
    fixed_img = array_to_sitk(ref, ar, "reference")
    moving_img = array_to_sitk(mov, am, "moving")

    reg = sitk.ImageRegistrationMethod()
    previous_threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    if threads is not None:
        # the pyramid's smoothing/shrinking filters use the global default, not reg's count
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
        reg.SetNumberOfThreads(int(threads))
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=int(histogram_bins))
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(float(sampling_fraction), int(seed))
    for mask, img_shape, setter, name, a in (
        (reference_mask, ref.shape, reg.SetMetricFixedMask, "reference_mask", ar),
        (moving_mask, mov.shape, reg.SetMetricMovingMask, "moving_mask", am),
    ):
        if mask is None:
            continue
        mk = np.asarray(mask)
        if mk.shape != img_shape:
            raise QSMInputError(f"mask shape {mk.shape} != image shape {img_shape}", name)
        if not mk.any():
            raise QSMInputError("mask is empty", name)
        setter(sitk.Cast(array_to_sitk(mk.astype(np.float32), a, name) > 0.5, sitk.sitkUInt8))
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0,
        minStep=1e-4,
        numberOfIterations=int(iterations),
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-8,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([int(s) for s in shrink_factors])
    reg.SetSmoothingSigmasPerLevel([float(s) for s in smoothing_sigmas_mm])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()

    if initialise == "identity":
        init = sitk.Euler3DTransform()
        if initial_transform is not None:
            t_lps = LPS @ _check_transform(initial_transform) @ LPS
            init.SetMatrix([float(v) for v in t_lps[:3, :3].ravel()], 1e-4)
            init.SetTranslation([float(v) for v in t_lps[:3, 3]])
    else:
        mode = (
            sitk.CenteredTransformInitializerFilter.MOMENTS
            if initialise == "moments"
            else sitk.CenteredTransformInitializerFilter.GEOMETRY
        )
        init = sitk.CenteredTransformInitializer(
            fixed_img, moving_img, sitk.Euler3DTransform(), mode
        )
    reg.SetInitialTransform(init, inPlace=False)
    try:
        out = reg.Execute(fixed_img, moving_img)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous_threads)
    # Execute returns a composite wrapping the optimised Euler3D transform.
    if out.GetName() == "CompositeTransform":
        out = sitk.CompositeTransform(out)
        out.FlattenTransform()
        out = out.GetNthTransform(out.GetNumberOfTransforms() - 1)
    tx = sitk.Euler3DTransform(out)
    world = _euler_to_world(tx)
    return RigidResult(
        transform=world,
        reference_shape=tuple(int(s) for s in ref.shape),
        reference_affine=ar.copy(),
        moving_affine=am.copy(),
        metric=float(reg.GetMetricValue()),
        iterations=int(reg.GetOptimizerIteration()),
        seconds=time.perf_counter() - t0,
        stop_condition=reg.GetOptimizerStopConditionDescription(),
    )
