"""Rigid registration of magnitudes and resampling onto a reference grid (FSL FLIRT or python).

The work is done by plain functions shared by the interfaces and the ``qsmflow register``
command: :func:`estimate_rigid`, :func:`resample_file`, :func:`b0_in_reference`,
:func:`write_transform` / :func:`read_transform`.

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
:func:`qsmflow.registration.register_rigid` (SimpleITK, Mattes mutual information; ``cost``
ignored); ``"auto"`` uses FSL when ``flirt`` is on PATH.

Resampling masks
----------------
With ``is_mask`` the mask is resampled **linearly as a 0/1 float image and thresholded at 0.5**
(written uint8): the boundary keeps sub-voxel position and the volume is unbiased, whereas
nearest-neighbour moves it by up to half a voxel and breaks thin structures under rotation.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from ..errors import QSMInputError
from .masking import default_output_name, working_directory

log = logging.getLogger("qsmflow.registration")

#: Python backend: optimiser iterations per pyramid level. register_rigid's default (200) stops
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


def python_sampling_fraction(n_voxels: int) -> float:
    """Sampling fraction giving about :data:`PYTHON_TARGET_SAMPLES` samples, in [0.05, 1]."""
    return float(min(1.0, max(0.05, PYTHON_TARGET_SAMPLES / max(1, n_voxels))))


#: Interpolation name -> spline order (scipy.ndimage).
INTERPOLATION_ORDER = {"nearest": 0, "linear": 1, "cubic": 3}

TRANSFORM_HEADER = (
    "qsmflow rigid transform: 4x4 matrix on homogeneous RAS+ world coordinates (mm).\n"
    "Maps REFERENCE-world points to MOVING-world points: p_moving = T @ p_reference\n"
    "(pulls the moving image onto the reference grid; inverse = moving -> reference).\n"
    "Not an FSL/ITK/ANTs matrix: see the FLIRT .mat written alongside for FSL tools."
)


@dataclass
class RegistrationOutcome:
    """Result of :func:`estimate_rigid` (all geometry from the files given)."""

    transform: np.ndarray  #: 4x4 RAS world, reference -> moving (mm)
    fsl_matrix: np.ndarray  #: 4x4 FLIRT matrix, moving (-in) -> reference (-ref)
    backend: str  #: "fsl" or "python"
    moving_shape: tuple[int, int, int]
    moving_affine: np.ndarray
    reference_shape: tuple[int, int, int]
    reference_affine: np.ndarray

    @property
    def rotation_deg(self) -> float:
        """Rotation angle (degrees) of the transform (the same in both directions)."""
        from ..physics.geometry import rotation_angle_deg

        return rotation_angle_deg(self.transform[:3, :3])

    @property
    def rotation_axis(self) -> np.ndarray:
        """Unit rotation axis (RAS) of the reference -> moving rotation ((0, 0, 1) if none)."""
        return rotation_axis(self.transform[:3, :3])

    @property
    def translation_mm(self) -> list[float]:
        """Translation part of :attr:`transform` (reference -> moving world), mm."""
        return [float(v) for v in self.transform[:3, 3]]


def rotation_axis(r: np.ndarray) -> np.ndarray:
    """Unit axis of the rotation matrix ``r`` (right-handed with a positive angle)."""
    r = np.asarray(r, dtype=np.float64)
    v = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    n = np.linalg.norm(v)
    if n > 1e-8:
        return v / n
    # angle 0 (any axis) or 180 deg (axis from the symmetric part)
    if np.trace(r) > 0:
        return np.array([0.0, 0.0, 1.0])
    b = (r + np.eye(3)) / 2.0
    ax = b[:, int(np.argmax(np.diag(b)))]
    return ax / np.linalg.norm(ax)


def _atomic_text(path: str | os.PathLike, write) -> Path:
    """Create ``path`` atomically via ``write(tmp_path)``."""
    from ..io.atomic import atomic_path

    p = Path(path)
    with atomic_path(p, p.suffix or ".txt") as tmp:
        write(tmp)
    return p


def write_transform(
    path: str | os.PathLike,
    transform: np.ndarray,
    *,
    moving: str | None = None,
    reference: str | None = None,
) -> Path:
    """Write a qsmflow world transform (reference -> moving, RAS mm) as text with a header."""
    from ..physics.geometry import check_affine

    t = check_affine(transform, str(path))
    header = TRANSFORM_HEADER
    if moving is not None:
        header += f"\nmoving: {moving}"
    if reference is not None:
        header += f"\nreference: {reference}"
    return _atomic_text(path, lambda tmp: np.savetxt(tmp, t, fmt="%.12f", header=header))


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


def _load_mask(path: str | os.PathLike, vol, role: str) -> np.ndarray:
    from ..io.nifti import load_volume

    mvol = load_volume(path, ndim=3)
    if mvol.data.shape != vol.data.shape:
        raise QSMInputError(
            f"{role} grid {mvol.data.shape} differs from its image {vol.data.shape} ({vol.path})",
            mvol.path,
        )
    if not np.allclose(mvol.affine, vol.affine, rtol=0.0, atol=1e-3):
        raise QSMInputError(f"{role} affine differs from its image's ({vol.path})", mvol.path)
    mask = np.nan_to_num(mvol.data) > 0
    if not mask.any():
        raise QSMInputError(f"{role} is empty", mvol.path)
    return mask


def _flirt_world(moving, reference, *, cost, moving_mask, reference_mask, wd: Path):
    """Run FLIRT; return (transform reference -> moving world, FLIRT matrix).

    ``moving``/``reference``: (file, first volume, number of volumes).
    """
    from ..registration.fsl import flirt_to_world, read_flirt_mat
    from .fsl import FSL_OUTPUT_EXT, flirt_interface, fsl_input_file, run_fsl

    moving_file, mov, n_mov = moving
    reference_file, ref, n_ref = reference

    in_file = fsl_input_file(moving_file, mov, n_mov, wd)
    ref_file = fsl_input_file(reference_file, ref, n_ref, wd)
    flt = flirt_interface(
        in_file,
        ref_file,
        str(wd / f"flirt_moving_in_reference{FSL_OUTPUT_EXT}"),
        str(wd / "flirt_moving_to_reference.mat"),
        cost=cost,
        in_weight=None if moving_mask is None else str(Path(moving_mask).resolve()),
        ref_weight=None if reference_mask is None else str(Path(reference_mask).resolve()),
    )
    outputs = run_fsl(flt, wd)
    mat = read_flirt_mat(outputs.out_matrix_file)
    world = flirt_to_world(mat, mov.data.shape, mov.affine, ref.data.shape, ref.affine)
    return np.linalg.inv(world), mat


def estimate_rigid(
    moving_file: str | os.PathLike,
    reference_file: str | os.PathLike,
    *,
    moving_mask: str | os.PathLike | None = None,
    reference_mask: str | os.PathLike | None = None,
    backend: str = "auto",
    cost: str = "mutualinfo",
    workdir: str | os.PathLike | None = None,
) -> RegistrationOutcome:
    """Rigid (6-dof) registration of the moving magnitude to the reference magnitude.

    Files may be 3-D or 4-D (first volume used). Masks (3-D, on their image's grid, > 0 = in)
    restrict the cost/metric (FLIRT ``-inweight``/``-refweight``). ``workdir`` holds FLIRT's
    files (temporary when None). Returns the transform in both conventions (module docstring).
    The python backend runs up to :data:`PYTHON_MAX_ITERATIONS` iterations per pyramid level.
    """
    from ..registration import register_rigid
    from ..registration.fsl import world_to_flirt
    from .fsl import FLIRT_COSTS, load_first_volume, resolve_backend

    if cost not in FLIRT_COSTS:
        raise QSMInputError(f"unknown FLIRT cost {cost!r}; choose one of {FLIRT_COSTS}", "cost")
    used = resolve_backend(backend, "flirt")
    mov, n_mov = load_first_volume(moving_file, "moving image")
    ref, n_ref = load_first_volume(reference_file, "reference image")
    mmask = None if moving_mask is None else _load_mask(moving_mask, mov, "moving mask")
    rmask = None if reference_mask is None else _load_mask(reference_mask, ref, "reference mask")
    if used == "fsl":
        with working_directory(workdir) as wd:
            transform, fsl_matrix = _flirt_world(
                (moving_file, mov, n_mov),
                (reference_file, ref, n_ref),
                cost=cost,
                moving_mask=moving_mask,
                reference_mask=reference_mask,
                wd=wd,
            )
    else:
        for vol in (mov, ref):
            if not np.any(np.nan_to_num(vol.data) != np.nan_to_num(vol.data.flat[0])):
                raise QSMInputError("image is empty (constant everywhere)", vol.path)
        fraction = python_sampling_fraction(ref.data.size)
        for attempt in range(PYTHON_ATTEMPTS):
            result = register_rigid(
                mov.data,
                mov.affine,
                ref.data,
                ref.affine,
                moving_mask=mmask,
                reference_mask=rmask,
                iterations=PYTHON_MAX_ITERATIONS,
                threads=REGISTRATION_THREADS,
                sampling_fraction=fraction,
                seed=12345 + attempt,
            )
            converged = result.iterations < PYTHON_MAX_ITERATIONS
            if converged:
                break
            log.warning(
                "registration of %s did not converge in %d iterations with %.0f %% of the "
                "voxels sampled; retrying with more samples",
                moving_file,
                PYTHON_MAX_ITERATIONS,
                100 * fraction,
            )
            fraction = min(1.0, 2 * fraction)
        if not converged:
            raise QSMInputError(
                f"rigid registration to {reference_file} did not converge "
                f"({PYTHON_ATTEMPTS} attempts); check that both images show the same head",
                str(moving_file),
            )
        transform = result.transform
        fsl_matrix = world_to_flirt(
            np.linalg.inv(transform), mov.data.shape, mov.affine, ref.data.shape, ref.affine
        )
    return RegistrationOutcome(
        transform=transform,
        fsl_matrix=fsl_matrix,
        backend=used,
        moving_shape=tuple(int(s) for s in mov.data.shape),
        moving_affine=mov.affine,
        reference_shape=tuple(int(s) for s in ref.data.shape),
        reference_affine=ref.affine,
    )


def _image_grid(
    path: str | os.PathLike, role: str = "reference"
) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape (first three axes) and affine of a 3-D/4-D image, read from its header."""
    import nibabel as nib

    from ..physics.geometry import check_affine

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


def resample_file(
    in_file: str | os.PathLike,
    reference_file: str | os.PathLike,
    transform: str | os.PathLike | np.ndarray | None,
    out_file: str | os.PathLike,
    *,
    interpolation: str = "linear",
    is_mask: bool = False,
) -> Path:
    """Resample ``in_file`` (3-D or 4-D, on the moving grid) onto the reference grid.

    ``transform``: a qsmflow transform file or 4x4 array (reference -> moving world), or None for
    plain regridding between the two affines. Outside the moving field of view the output is 0.
    ``is_mask``: linear interpolation of the 0/1 mask, > 0.5, written uint8 (``interpolation`` is
    then not used); otherwise float32 with ``interpolation`` nearest/linear/cubic.
    """
    from ..io.nifti import load_volume, save_volume
    from ..registration import resample_to_reference

    if interpolation not in INTERPOLATION_ORDER:
        raise QSMInputError(
            f"interpolation must be one of {tuple(INTERPOLATION_ORDER)}, got {interpolation!r}",
            "interpolation",
        )
    if transform is None:
        t = np.eye(4)
    elif isinstance(transform, np.ndarray):
        t = transform
    else:
        t = read_transform(transform)
    shape, ref_affine = _image_grid(reference_file)
    vol = load_volume(in_file, ndim=None)
    if vol.data.ndim not in (3, 4):
        raise QSMInputError(f"expected a 3-D or 4-D image, got shape {vol.data.shape}", vol.path)
    if is_mask:
        data = (np.nan_to_num(vol.data) > 0).astype(np.float32)
        out = resample_to_reference(data, vol.affine, shape, ref_affine, t, order=1) > 0.5
        return Path(save_volume(out_file, out.astype(np.uint8), ref_affine, dtype=np.uint8))
    data = vol.data
    if not np.all(np.isfinite(data)):
        raise QSMInputError("image contains NaN/inf; replace them before resampling", vol.path)
    order = INTERPOLATION_ORDER[interpolation]
    out = resample_to_reference(data, vol.affine, shape, ref_affine, t, order=order)
    return Path(save_volume(out_file, out, ref_affine))


def b0_in_reference(
    transform_file: str | os.PathLike | np.ndarray,
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
    from ..physics.geometry import b0_dir_from_affine
    from ..registration import b0_to_reference

    if isinstance(transform_file, np.ndarray):
        t = transform_file
    else:
        t = read_transform(transform_file)
    _, mov_affine = _image_grid(moving_file, "moving image")
    _, ref_affine = _image_grid(reference_file)
    b_mov = b0_dir_from_affine(mov_affine, source=str(moving_file))
    return [float(v) for v in b0_to_reference(b_mov, mov_affine, ref_affine, t)]


def write_outcome(
    outcome: RegistrationOutcome,
    *,
    transform_file: str | os.PathLike | None = None,
    fsl_matrix_file: str | os.PathLike | None = None,
    moving: str | None = None,
    reference: str | None = None,
) -> None:
    """Write the transform (ours) and/or the FLIRT matrix of ``outcome``."""
    from ..registration.fsl import write_flirt_mat

    if transform_file is not None:
        write_transform(transform_file, outcome.transform, moving=moving, reference=reference)
    if fsl_matrix_file is not None:
        _atomic_text(fsl_matrix_file, lambda tmp: write_flirt_mat(tmp, outcome.fsl_matrix))


# ------------------------------------------------------------------------------------------------
# interfaces


class _RigidRegistrationInputSpec(BaseInterfaceInputSpec):
    moving = File(exists=True, mandatory=True, desc="moving magnitude, 3-D or 4-D (first echo)")
    reference = File(
        exists=True, mandatory=True, desc="reference magnitude, 3-D or 4-D (first echo)"
    )
    moving_mask = File(exists=True, desc="mask on the moving grid restricting the cost")
    reference_mask = File(exists=True, desc="mask on the reference grid restricting the cost")
    backend = traits.Enum(
        "auto", "fsl", "python", usedefault=True, desc="auto: FSL FLIRT if on PATH, else python"
    )
    cost = traits.Enum(
        "mutualinfo",
        "corratio",
        "normmi",
        "normcorr",
        "leastsq",
        usedefault=True,
        desc="FLIRT cost (FSL backend only; python uses Mattes mutual information)",
    )


class _RigidRegistrationOutputSpec(TraitedSpec):
    transform = File(
        exists=True, desc="4x4 RAS world transform reference -> moving (mm), text (qsmflow)"
    )
    fsl_matrix = File(exists=True, desc="FLIRT .mat, moving (-in) -> reference (-ref)")
    rotation_deg = traits.Float(desc="rotation angle of the transform, degrees")
    translation_mm = traits.List(traits.Float, desc="translation of the transform, mm (RAS)")
    b0_dir = traits.List(
        traits.Float, desc="moving scan's B0 direction in the reference array axes (unit)"
    )
    backend = traits.Str(desc="backend that ran: fsl or python")


class RigidRegistration(SimpleInterface):
    """6-dof registration of a moving magnitude to a reference magnitude (FLIRT or SimpleITK).

    See :func:`estimate_rigid` and the module docstring for the transform conventions.
    """

    input_spec = _RigidRegistrationInputSpec
    output_spec = _RigidRegistrationOutputSpec

    def _run_interface(self, runtime):
        def opt(name):
            value = getattr(self.inputs, name)
            return value if isdefined(value) else None

        cwd = Path(runtime.cwd)
        res = estimate_rigid(
            self.inputs.moving,
            self.inputs.reference,
            moving_mask=opt("moving_mask"),
            reference_mask=opt("reference_mask"),
            backend=self.inputs.backend,
            cost=self.inputs.cost,
            workdir=cwd,
        )
        stem = default_output_name(self.inputs.moving, "")[: -len(".nii.gz")]
        xfm = cwd / f"{stem}_to_reference_ras.txt"
        mat = cwd / f"{stem}_to_reference_flirt.mat"
        write_outcome(
            res,
            transform_file=xfm,
            fsl_matrix_file=mat,
            moving=self.inputs.moving,
            reference=self.inputs.reference,
        )
        from ..io.nifti import write_json

        meta = {
            "RegistrationBackend": res.backend,
            "RotationAngleDeg": res.rotation_deg,
            "RotationAxis": [float(v) for v in res.rotation_axis],
            "TranslationMM": [float(v) for v in res.translation_mm],
        }
        write_json(
            xfm.with_suffix(".json"),
            {**meta, "Convention": "4x4 RAS world (mm) transform reference -> moving (qsmflow)"},
        )
        write_json(
            mat.with_suffix(".json"),
            {**meta, "Convention": "FSL FLIRT matrix, moving (-in) -> reference (-ref)"},
        )  # sidecars picked up by DerivativesDataSink
        self._results["transform"] = str(xfm)
        self._results["fsl_matrix"] = str(mat)
        self._results["rotation_deg"] = res.rotation_deg
        self._results["translation_mm"] = res.translation_mm
        self._results["b0_dir"] = b0_in_reference(
            res.transform, self.inputs.moving, self.inputs.reference
        )
        self._results["backend"] = res.backend
        return runtime


class _ResampleToReferenceInputSpec(BaseInterfaceInputSpec):
    in_file = File(
        exists=True, mandatory=True, desc="image on the moving grid (3-D map, mask or 4-D)"
    )
    reference = File(exists=True, mandatory=True, desc="image defining the target grid")
    transform = File(
        exists=True, desc="qsmflow transform (reference -> moving world); none: regrid only"
    )
    interpolation = traits.Enum(
        "linear", "nearest", "cubic", usedefault=True, desc="interpolation (not for masks)"
    )
    is_mask = traits.Bool(
        False, usedefault=True, desc="binary mask: linear then > 0.5, written uint8"
    )
    out_file = File(desc="output name (default <in_file>_resampled.nii.gz in the node dir)")


class _ResampleToReferenceOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="in_file on the reference grid (0 outside moving FOV)")


class ResampleToReference(SimpleInterface):
    """Pull an image from the moving grid onto the reference grid with a rigid transform.

    See :func:`resample_file`; masks are resampled linearly and thresholded at 0.5.
    """

    input_spec = _ResampleToReferenceInputSpec
    output_spec = _ResampleToReferenceOutputSpec

    def _run_interface(self, runtime):
        if isdefined(self.inputs.out_file):
            out = os.path.join(runtime.cwd, self.inputs.out_file)
        else:
            out = os.path.join(runtime.cwd, default_output_name(self.inputs.in_file, "_resampled"))
        transform = self.inputs.transform if isdefined(self.inputs.transform) else None
        self._results["out_file"] = str(
            resample_file(
                self.inputs.in_file,
                self.inputs.reference,
                transform,
                out,
                interpolation=self.inputs.interpolation,
                is_mask=self.inputs.is_mask,
            )
        )
        return runtime


__all__ = [
    "INTERPOLATION_ORDER",
    "RegistrationOutcome",
    "ResampleToReference",
    "RigidRegistration",
    "b0_in_reference",
    "estimate_rigid",
    "read_transform",
    "resample_file",
    "rotation_axis",
    "write_outcome",
    "write_transform",
]
