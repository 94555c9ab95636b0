"""Realistic-acquisition simulation: what measured data has and a clean simulation lacks.

QSM inversions tuned on clean piecewise-constant simulations fail on in-vivo data. This module
adds, each as an explicit option that is off by default, the main differences, and bundles them
in presets (:data:`REALISM_PRESETS`, :func:`simulate_realistic`):

1. **White-matter susceptibility anisotropy** (``HeadModelSource(wm_anisotropy_ppm=...)``).
   Each WM parcel of the head model (:data:`WM_PARCELS`) gets a fibre direction n in the
   canonical head frame (:data:`FIBRE_DIRECTIONS`; remaining WM: a smoothly varying random
   direction), rotated with the head. Inside WM the susceptibility is the cylindrically
   symmetric tensor ``X = chi I + dchi (n n^T - I/3)`` with ``chi`` the model's (isotropic,
   mean) susceptibility, which stays the truth, and ``dchi = chi_par - chi_perp``. Default in
   the presets 0.015 ppm: Li et al. 2012 (NeuroImage 59:2088) measured about 0.01-0.02 ppm in
   human WM tracts, Wharton & Bowtell 2012 (NeuroImage 63:1292) about 0.012 ppm (the model's WM
   chi is -0.03 ppm). The field is the STI forward model (Liu 2010)

       B = b^T F^-1[ (1/3) X_hat b - k (k^T X_hat b) / |k|^2 ]        (ppm)

   whose isotropic part is the usual dipole kernel. Only the anisotropic part
   ``A = dchi (n n^T - I/3)`` needs extra work: with ``v = A b`` (3 maps, ppm) its field is
   ``sum_i F^-1[ v_hat_i K_i ]``, ``K_i = b_i / 3 - (k . b) k_i / |k|^2``
   (:func:`sti_kernel_component`). :func:`qsmflow.simulate.gre.simulate_gre` computes it on the
   supersampled grid with the same zero padding as the isotropic field and adds it to both the
   total and the local field (WM lies inside the brain); the part it adds is returned as
   ``GREData.extra["anisotropy_field"]``.
2. **Sub-voxel texture** (``subvoxel_texture_level``): a zero-mean chi texture of correlation
   length ``subvoxel_texture_mm`` (default 0.75 mm, below the voxel) on the supersampled grid,
   amplitude ``level * max(|chiref|, 0.1)`` per tissue like the existing ``texture``, so the
   truth (the block average) has partial volume and the signal has intravoxel dephasing.
3. **Veins** (``vessels=True``): thin veins (diameter 0.5-1.5 mm) of deoxygenated venous blood
   (chi 0.30-0.45 ppm; Y about 0.6, Hct 0.4) drawn as smooth random curves, mostly along the
   cortical surface in the CSF beside grey matter (:func:`vessel_centrelines`), plus the
   internal cerebral veins and the vein of Galen. They are defined in the canonical frame
   (millimetres), rasterised with partial volume on the (rotated) supersampled grid
   (:func:`rasterise_vessels`) and become label 11 (blood) in the truth.
4. **Residual background field** (``simulate_gre(residual_background_ppm=...)``): a smooth
   random field in the scanner frame (plane waves of a Gaussian spectrum, correlation length
   :data:`RESIDUAL_BACKGROUND_MM`), zero mean and rms ``residual_background_ppm`` inside the
   brain, added to the total field only. Every plane wave is an eigenfunction of the Laplacian
   with a non-zero eigenvalue, so the field is not harmonic in the brain and background-field
   removal leaves most of it: it stands for what the dipole model of the background misses
   (imperfect shim and eddy currents, sources not in the model). Presets: 0.02 ppm (in
   ppm, so the same at 3 T and 7 T; 2.6 Hz at 3 T).

Frames as in :mod:`qsmflow.simulate.head` (canonical: axis 0 L->R, 1 P->A, 2 I->S).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import QSMInputError
from ..physics import _fft
from ..physics.kernel import check_voxel_size, kspace_grid, normalise_b0_dir
from .head import SimulatedHead, as_rotation, smooth_random_field

__all__ = [
    "FIBRE_DIRECTIONS",
    "GRE_KEYS",
    "REALISM_PRESETS",
    "RESIDUAL_BACKGROUND_MM",
    "SOURCE_KEYS",
    "WM_PARCELS",
    "FibreAnisotropy",
    "RealisticHead",
    "Vessel",
    "anisotropy_field",
    "apply_sti_kernel",
    "fibre_directions",
    "plane_wave_field",
    "rasterise_vessels",
    "realism_parameters",
    "residual_background_field",
    "simulate_realistic",
    "sti_kernel_component",
    "vessel_centrelines",
]

#: White-matter parcels of the head model's ``white_matter_mask.nii.gz`` (all inside label 8).
WM_PARCELS = {
    1: "body_cc",
    2: "splenium_cc",
    3: "genu_cc",
    4: "alic",
    5: "posterior_thalamic_radiation",
    6: "superior_corona_radiata",
    7: "posterior_corona_radiata",
    8: "anterior_corona_radiata",
    9: "plic",
    10: "slf",
    11: "remaining_wm",
}


def _unit(v: Sequence[float]) -> tuple[float, float, float]:
    a = np.asarray(v, dtype=np.float64)
    return tuple(float(x) for x in a / np.linalg.norm(a))


#: Fibre direction per WM parcel in the canonical frame (x L->R, y P->A, z I->S), for the right
#: hemisphere; the left-right component is mirrored in the left hemisphere (x below the
#: midline). CC: left-right. ALIC: anterior-posterior, turned 25 degrees laterally (its
#: antero-lateral course in the axial plane) and 20 degrees upwards, 31 degrees from AP in all.
#: PTR and SLF: anterior-posterior. SCR and PLIC: inferior-superior; ACR and PCR:
#: inferior-superior tilted 30 degrees anteriorly / posteriorly (the fan of the corona
#: radiata). Parcel 11 (remaining WM) has no fixed direction: see :func:`fibre_directions`.
FIBRE_DIRECTIONS: dict[int, tuple[float, float, float]] = {
    1: (1.0, 0.0, 0.0),
    2: (1.0, 0.0, 0.0),
    3: (1.0, 0.0, 0.0),
    4: _unit((np.tan(np.radians(25.0)), 1.0, np.tan(np.radians(20.0)))),
    5: (0.0, 1.0, 0.0),
    6: (0.0, 0.0, 1.0),
    7: _unit((0.0, -np.sin(np.radians(30.0)), np.cos(np.radians(30.0)))),
    8: _unit((0.0, np.sin(np.radians(30.0)), np.cos(np.radians(30.0)))),
    9: (0.0, 0.0, 1.0),
    10: (0.0, 1.0, 0.0),
}

#: Correlation length (mm) of the random fibre directions of the remaining WM (parcel 11).
RANDOM_FIBRE_MM = 15.0
#: Correlation length (mm) of the residual background field.
RESIDUAL_BACKGROUND_MM = 50.0


# --------------------------------------------------------------------------- random fields


def plane_wave_field(
    shape: Sequence[int],
    voxel_size: Sequence[float],
    rotation=None,
    *,
    seed,
    correlation_mm: float,
    n_waves: int = 32,
) -> np.ndarray:
    """:func:`~qsmflow.simulate.head.smooth_random_field` on a whole (rotated) grid, fast.

    Equals ``smooth_random_field(grid_coords(shape, voxel_size, R), seed=seed, ...)`` (the same
    random waves, a function of canonical position, so it rotates with the head) to float32
    rounding, but each plane wave factorises over the array axes, so the sum over waves is one
    matrix product: a few seconds for 128 waves on a 55 M-voxel grid instead of minutes.

    Returns an (X, Y, Z) float32 unit-variance field (dimensionless).
    """
    shape = tuple(int(n) for n in shape)
    vox = check_voxel_size(voxel_size)
    if not correlation_mm > 0:
        raise QSMInputError(f"correlation length must be > 0 mm, got {correlation_mm}")
    rot = as_rotation(rotation)
    rng = np.random.default_rng(seed)
    k = rng.normal(0.0, 1.0 / correlation_mm, size=(n_waves, 3)).astype(np.float32)
    ph = rng.uniform(0, 2 * np.pi, size=n_waves).astype(np.float32)
    # k . (R^T x) = (R k) . x: wave vectors in array axes
    k_arr = k.astype(np.float64) @ rot.T
    axes = [(np.arange(n) - (n - 1) / 2.0) * v for n, v in zip(shape, vox, strict=True)]
    ex = np.exp(1j * (np.outer(axes[0], k_arr[:, 0]) + ph.astype(np.float64)))  # (X, W)
    ey = np.exp(1j * np.outer(axes[1], k_arr[:, 1]))  # (Y, W)
    ez = np.exp(1j * np.outer(axes[2], k_arr[:, 2]))  # (Z, W)
    # cos(a + b + c) = Re(e^ia e^ib) Re(e^ic) - Im(e^ia e^ib) Im(e^ic)
    right = np.concatenate([ez.real.T, ez.imag.T], axis=0).astype(np.float32)  # (2W, Z)
    out = np.empty(shape, dtype=np.float32)
    rows = max(1, int(2**22 // max(shape[1] * n_waves, 1)))
    for x0 in range(0, shape[0], rows):
        exy = ex[x0 : x0 + rows, None, :] * ey[None, :, :]  # (x, Y, W)
        left = np.concatenate([exy.real, -exy.imag], axis=-1).astype(np.float32)
        out[x0 : x0 + rows] = left @ right
    out *= np.float32(np.sqrt(2.0 / n_waves))
    return out


def residual_background_field(
    shape: Sequence[int],
    voxel_size: Sequence[float],
    brain_mask: np.ndarray,
    rms_ppm: float,
    *,
    seed,
    correlation_mm: float = RESIDUAL_BACKGROUND_MM,
) -> np.ndarray:
    """A smooth non-harmonic residual background field (ppm), (X, Y, Z) float32.

    Plane waves of a Gaussian spectrum (correlation length ``correlation_mm``) in the array
    (scanner) frame, shifted to zero mean and scaled to rms ``rms_ppm`` inside ``brain_mask``.
    """
    if not (np.isfinite(rms_ppm) and rms_ppm >= 0):
        raise QSMInputError(f"residual background rms must be >= 0 ppm, got {rms_ppm}")
    brain = np.asarray(brain_mask, dtype=bool)
    if brain.shape != tuple(shape):
        raise QSMInputError(f"brain mask shape {brain.shape} differs from the grid {shape}")
    f = plane_wave_field(shape, voxel_size, None, seed=seed, correlation_mm=correlation_mm)
    if rms_ppm == 0 or not brain.any():
        return np.zeros(tuple(shape), np.float32)
    inside = f[brain].astype(np.float64)
    mean = inside.mean()
    rms = np.sqrt(np.mean((inside - mean) ** 2))
    f -= np.float32(mean)
    f *= np.float32(rms_ppm / rms)
    return f


# --------------------------------------------------------------------------- anisotropy


def fibre_directions(
    parcels: np.ndarray,
    coords_mm: np.ndarray,
    *,
    midline_x_mm: float = 0.0,
    seed=0,
    directions: Mapping[int, Sequence[float]] | None = None,
    correlation_mm: float = RANDOM_FIBRE_MM,
) -> np.ndarray:
    """Unit fibre directions (N, 3) in the canonical frame for WM voxels.

    parcels : (N,) WM parcel per voxel (1-11, :data:`WM_PARCELS`).
    coords_mm : (3, N) canonical-frame positions (mm) of the voxels.
    midline_x_mm : canonical x (mm) of the mid-sagittal plane; left of it the left-right
        component of the tabulated directions is mirrored.
    directions : per-parcel overrides of :data:`FIBRE_DIRECTIONS` (canonical frame; a parcel
        given here is used as is in both hemispheres). Parcel 11, unless given, gets
        ``normalise(f1, f2, f3)`` of three unit smooth random fields (correlation
        ``correlation_mm``, seeded), a direction that varies smoothly with position.
    """
    parcels = np.asarray(parcels)
    coords = np.asarray(coords_mm, dtype=np.float32)
    if coords.shape != (3, parcels.size):
        raise QSMInputError(f"coords must be (3, {parcels.size}), got {coords.shape}")
    if parcels.size and (parcels.min() < 1 or parcels.max() > 11):
        raise QSMInputError("WM parcels must be 1-11")
    given = {int(p): _checked_direction(p, d) for p, d in (directions or {}).items()}
    out = np.zeros((parcels.size, 3), np.float32)
    left = coords[0] < midline_x_mm
    for p in range(1, 12):
        sel = parcels == p
        if not sel.any():
            continue
        if p in given:
            out[sel] = given[p]
        elif p in FIBRE_DIRECTIONS:
            out[sel] = FIBRE_DIRECTIONS[p]
            out[sel & left, 0] *= -1
        else:
            ss = np.random.SeedSequence([int(np.sum(np.atleast_1d(seed))), 0xF1B2])
            seeds = ss.generate_state(3)
            for i in range(3):
                out[sel, i] = smooth_random_field(
                    coords[:, sel], seed=int(seeds[i]), correlation_mm=correlation_mm
                )
            norm = np.linalg.norm(out[sel], axis=1, keepdims=True)
            out[sel] /= np.maximum(norm, 1e-6)
    return out


def _checked_direction(parcel, d) -> np.ndarray:
    if int(parcel) not in WM_PARCELS:
        raise QSMInputError(f"fibre direction given for unknown WM parcel {parcel!r} (1-11)")
    a = np.asarray(d, dtype=np.float64)
    if a.shape != (3,) or not np.all(np.isfinite(a)) or np.linalg.norm(a) == 0:
        raise QSMInputError(f"fibre direction of parcel {parcel} must be 3 finite numbers, not 0")
    return (a / np.linalg.norm(a)).astype(np.float32)


@dataclass(frozen=True)
class FibreAnisotropy:
    """WM susceptibility anisotropy on a grid, stored for the WM voxels only.

    shape : the grid (X, Y, Z) the indices refer to.
    index : (N,) int64 flat (C-order) indices of the anisotropic voxels.
    direction : (N, 3) float32 unit fibre directions in the *array* frame (already rotated).
    dchi : (N,) float32 chi_par - chi_perp in ppm.
    """

    shape: tuple[int, int, int]
    index: np.ndarray
    direction: np.ndarray
    dchi: np.ndarray

    def source_components(self, b0_dir: Sequence[float]) -> np.ndarray:
        """(3, N) float32 ``v = A b = dchi (n (n . b) - b / 3)`` (ppm), the STI sources."""
        b = normalise_b0_dir(b0_dir).astype(np.float32)
        nb = self.direction @ b
        return (self.dchi * (self.direction.T * nb - b[:, None] / np.float32(3))).astype(np.float32)

    def dense(self, component: np.ndarray) -> np.ndarray:
        """An (N,) per-voxel value as an (X, Y, Z) float32 map (0 elsewhere)."""
        out = np.zeros(self.shape, np.float32)
        out.reshape(-1)[self.index] = component
        return out


@dataclass(frozen=True)
class RealisticHead(SimulatedHead):
    """A :class:`SimulatedHead` with realism extras.

    anisotropy : WM susceptibility anisotropy on this grid (or None).
    realism : what the source added (parameters and counts), recorded in ``GREData.extra``.
    """

    anisotropy: FibreAnisotropy | None = None
    realism: dict = field(default_factory=dict)


def _split_frequencies(ks, shape):
    """Per axis: the frequencies with the Nyquist entry zeroed, and the Nyquist entry alone."""
    regular, nyquist = [], []
    for axis, (k, n) in enumerate(zip(ks, shape, strict=True)):
        k = k.astype(np.float32)
        nyq = np.zeros_like(k)
        if n % 2 == 0:
            index = [0] * 3
            index[axis] = k.size - 1 if k.size == n // 2 + 1 else n // 2
            index = tuple(index)
            nyq[index], k = k[index], k.copy()
            k[index] = 0
        regular.append(k)
        nyquist.append(nyq)
    return regular, nyquist


def sti_kernel_component(
    shape: Sequence[int],
    voxel_size: Sequence[float],
    b0_dir: Sequence[float],
    i: int,
    *,
    dc_value: float = 0.0,
    rows: slice | None = None,
) -> np.ndarray:
    """``K_i(k) = b_i / 3 - (k . b) k_i / |k|^2`` on the rfft half spectrum of ``shape``.

    The field of the anisotropic sources ``v = A b`` (ppm) is ``sum_i F^-1[v_hat_i K_i]``;
    ``sum_i b_i K_i`` is the dipole kernel ``D``. Like :func:`~qsmflow.physics.kernel.
    dipole_kernel`, every Nyquist frequency stands for both signs (the cross terms with it
    average out, so the kernel is real and even) and ``K_i(0) = dc_value * b_i`` (so that
    ``sum_i b_i K_i(0) = D(0)``). ``rows`` selects a slab of the first axis (memory).
    Returns float32 of shape (rows, Y, Z // 2 + 1).
    """
    shape = tuple(int(n) for n in shape)
    b = normalise_b0_dir(b0_dir).astype(np.float32)
    ks = kspace_grid(shape, voxel_size, half=True)
    regular, nyquist = _split_frequencies(ks, shape)
    rows = rows if rows is not None else slice(0, shape[0])
    r0, q0 = regular[0][rows], nyquist[0][rows]
    r = [r0, regular[1], regular[2]]
    q = [q0, nyquist[1], nyquist[2]]
    kb = b[0] * r[0] + b[1] * r[1]
    kb = kb + b[2] * r[2]
    proj = kb * r[i]
    proj += b[i] * q[i] * q[i]
    k2 = (r[0] + q[0]) ** 2 + (r[1] + q[1]) ** 2
    k2 = k2 + (r[2] + q[2]) ** 2
    dc = k2 == 0
    k2[dc] = 1
    out = np.float32(b[i] / 3.0) - proj / k2
    out[dc] = dc_value * b[i]
    return out.astype(np.float32, copy=False)


def apply_sti_kernel(
    spec: np.ndarray, shape, voxel_size, b0_dir, i: int, *, dc_value=0.0, rows: int = 32
) -> None:
    """``spec *= K_i`` in place (half spectrum of ``shape``), a slab of ``rows`` at a time."""
    for x0 in range(0, spec.shape[0], rows):
        sl = slice(x0, min(x0 + rows, spec.shape[0]))
        spec[sl] *= sti_kernel_component(shape, voxel_size, b0_dir, i, dc_value=dc_value, rows=sl)


def anisotropy_field(
    direction: np.ndarray,
    dchi: float | np.ndarray,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    *,
    pad_factor: float = 2.0,
    dc_value: float = 0.0,
) -> np.ndarray:
    """Field (ppm) of the anisotropic susceptibility ``dchi (n n^T - I/3)`` (STI forward model).

    direction : (3, X, Y, Z) fibre directions n in array axes (normalised here; zero vectors
        mark isotropic voxels).
    dchi : chi_par - chi_perp in ppm, scalar or (X, Y, Z).
    voxel_size, b0_dir, pad_factor, dc_value : as in :func:`~qsmflow.physics.forward.
        forward_field` (same padding, so ``forward_field(chi) + anisotropy_field(n, dchi)`` is
        the field of the tensor ``chi I + dchi (n n^T - I/3)``).

    Returns (X, Y, Z) float32 field in ppm.
    """
    n = np.asarray(direction, dtype=np.float32)
    if n.ndim != 4 or n.shape[0] != 3:
        raise QSMInputError(f"fibre directions must be (3, X, Y, Z), got {n.shape}")
    if not np.all(np.isfinite(n)):
        raise QSMInputError("fibre directions have non-finite values")
    norm = np.sqrt(np.sum(n * n, axis=0))
    n = np.where(norm > 0, n / np.where(norm > 0, norm, 1), 0)
    grid = n.shape[1:]
    dchi = np.broadcast_to(np.asarray(dchi, dtype=np.float32), grid)
    b = normalise_b0_dir(b0_dir).astype(np.float32)
    nb = np.tensordot(b, n, axes=1)
    extra = np.maximum(np.ceil((pad_factor - 1.0) * np.asarray(grid) / 2), 0).astype(int)
    shape = _fft.fast_shape(grid, extra) if pad_factor > 1 else grid
    acc = None
    for i in range(3):
        v = dchi * (n[i] * nb - b[i] / np.float32(3)) * (norm > 0)
        padded, crop = _fft.pad_to(v.astype(np.float32), shape)
        spec = _fft.rfftn(padded)
        apply_sti_kernel(spec, shape, voxel_size, b, i, dc_value=dc_value)
        acc = spec if acc is None else acc + spec
    out = _fft.irfftn(acc, shape)
    return np.ascontiguousarray(out[crop], dtype=np.float32)


# --------------------------------------------------------------------------- vessels


@dataclass(frozen=True)
class Vessel:
    """A vein: centreline points (M, 3) in canonical mm, radius (mm), chi (ppm), kind."""

    points: np.ndarray
    radius_mm: float
    chi_ppm: float
    kind: str  #: "cortical" or "deep"

    @property
    def length_mm(self) -> float:
        return float(np.sum(np.linalg.norm(np.diff(self.points, axis=0), axis=1)))


#: Labels counted as tissue for the cortical surface the veins follow (not CSF, blood, ...).
_TISSUE_LABELS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 16)


def vessel_centrelines(
    labels: np.ndarray,
    brain_mask: np.ndarray,
    voxel_mm: float,
    *,
    wm_parcels: np.ndarray | None = None,
    seed=0,
    n_cortical: int = 48,
    chi_range_ppm: tuple[float, float] = (0.30, 0.45),
    diameter_range_mm: tuple[float, float] = (0.5, 1.5),
    length_range_mm: tuple[float, float] = (25.0, 90.0),
) -> tuple[Vessel, ...]:
    """Smooth random vein centrelines (canonical mm) for a segmented head.

    labels, brain_mask : the head's native segmentation (head-model numbering) and brain mask,
        isotropic ``voxel_mm``, array centre = canonical origin.
    wm_parcels : optional WM parcellation (:data:`WM_PARCELS`) to place the deep veins; without
        it only cortical veins are made.

    Cortical veins: random walks (0.5 mm steps, persistence length about 20 mm) that follow the
    iso-surface 0.3 mm outside the grey-matter surface (the CSF beside the cortex, also down
    into open sulci), from random start points on it, stopping where they would leave the brain
    mask (kept at least ``radius + 0.5`` mm inside) or the surface folds away (three times as
    many walks as veins are made; the first ``n_cortical`` reaching 15 mm are kept). Deep veins: the
    two internal cerebral veins (2.5 mm either side of the midline, over the thalami from the
    foramen of Monro to below the splenium) and the vein of Galen (from there around the back
    of the splenium, upwards), with the largest diameter of ``diameter_range_mm``. Radius and
    chi of each vein are uniform in the given ranges; all deterministic in ``seed``.
    """
    labels = np.asarray(labels)
    brain = np.asarray(brain_mask, dtype=bool)
    if labels.shape != brain.shape:
        raise QSMInputError("labels and brain mask differ in shape")
    lo_chi, hi_chi = (float(x) for x in chi_range_ppm)
    lo_d, hi_d = (float(x) for x in diameter_range_mm)
    if not (0 < lo_d <= hi_d) or not (lo_chi <= hi_chi) or n_cortical < 0:
        raise QSMInputError(
            f"bad vessel parameters: diameter {diameter_range_mm} mm, chi {chi_range_ppm} ppm, "
            f"{n_cortical} cortical veins"
        )
    rng = np.random.default_rng(np.random.SeedSequence([int(np.sum(np.atleast_1d(seed))), 0x0E1]))
    # a 2x coarser grid for the surface geometry (1.28 mm for the head model)
    f = 2
    crop = tuple(slice(0, (n // f) * f) for n in labels.shape)
    h = voxel_mm * f

    def coarse(mask):
        m = mask[crop].astype(np.float32)
        return m.reshape(m.shape[0] // f, f, m.shape[1] // f, f, m.shape[2] // f, f).mean(
            axis=(1, 3, 5)
        )

    tissue = coarse(np.isin(labels, _TISSUE_LABELS)) >= 0.5
    brain_c = coarse(brain) >= 0.5
    phi = (ndimage.distance_transform_edt(~tissue) - ndimage.distance_transform_edt(tissue)) * h
    phi = ndimage.gaussian_filter(phi.astype(np.float32), 1.0)
    grad = np.stack(np.gradient(phi, h)).astype(np.float32)
    depth = (ndimage.distance_transform_edt(brain_c) * h).astype(np.float32)
    centre = (np.asarray(labels.shape) - 1) / 2.0

    def to_index(p):  # canonical mm (N, 3) -> coarse-grid index (3, N)
        native = p / voxel_mm + centre
        return ((native - (f - 1) / 2.0) / f).T

    def sample(vol, p):
        return ndimage.map_coordinates(vol, to_index(p), order=1, mode="nearest")

    def gradient(p):
        idx = to_index(p)
        return np.stack(
            [ndimage.map_coordinates(g, idx, order=1, mode="nearest") for g in grad], axis=1
        )

    vessels: list[Vessel] = []
    target, step = 0.3, 0.5  # mm
    if n_cortical > 0:
        # walk three times as many veins as asked and keep the first n_cortical that get at
        # least min_length long (walks that hit a fold or the mask edge early are dropped)
        n_try = 3 * n_cortical
        radius = rng.uniform(lo_d, hi_d, n_try) / 2
        chi = rng.uniform(lo_chi, hi_chi, n_try)
        length = rng.uniform(*length_range_mm, n_try)
        min_length = min(15.0, length_range_mm[0])
        cand = np.argwhere((np.abs(phi - target) < 0.5 * h) & (depth > hi_d / 2 + 1.5))
        if len(cand) < n_try:
            raise QSMInputError("no cortical surface inside the brain mask to place veins on")
        pick = cand[rng.choice(len(cand), n_try, replace=False)]
        x = ((pick * f + (f - 1) / 2.0) - centre) * voxel_mm
        x += rng.uniform(-h / 2, h / 2, (n_try, 3))
        d = rng.normal(size=(n_try, 3))
        paths = [[p.copy()] for p in x]
        active = np.ones(n_try, bool)
        travelled = np.zeros(n_try)
        persistence = 20.0
        for _ in range(int(length_range_mm[1] / step) + 1):
            if not active.any():
                break
            a = np.flatnonzero(active)
            g = gradient(x[a])
            nrm = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-6)
            da = d[a] + np.sqrt(2 * step / persistence) * rng.normal(size=(a.size, 3))
            da -= np.sum(da * nrm, axis=1, keepdims=True) * nrm
            da /= np.maximum(np.linalg.norm(da, axis=1, keepdims=True), 1e-6)
            xn = x[a] + step * da
            # one Newton step back onto the iso-surface phi = target
            gn = gradient(xn)
            corr = (sample(phi, xn) - target) / np.maximum(np.sum(gn * gn, axis=1), 1e-3)
            xn -= corr[:, None] * gn
            ok = (np.abs(sample(phi, xn) - target) < 0.5) & (sample(depth, xn) > radius[a] + 0.5)
            ok &= np.linalg.norm(xn - x[a], axis=1) < 2 * step
            for j in np.flatnonzero(ok):
                paths[a[j]].append(xn[j].copy())
            x[a[ok]], d[a[ok]] = xn[ok], da[ok]
            travelled[a[ok]] += step
            active[a[~ok]] = False
            active &= travelled < length
        kept = [j for j in range(n_try) if travelled[j] >= min_length][:n_cortical]
        vessels.extend(
            Vessel(np.asarray(paths[j]), float(radius[j]), float(chi[j]), "cortical") for j in kept
        )
    if wm_parcels is not None:
        vessels.extend(_deep_veins(labels, wm_parcels, voxel_mm, rng, hi_d / 2, (lo_chi, hi_chi)))
    return tuple(vessels)


def _deep_veins(labels, parcels, voxel_mm, rng, radius, chi_range) -> list[Vessel]:
    """Internal cerebral veins (a pair) and the vein of Galen from the thalami and splenium."""
    centre = (np.asarray(labels.shape) - 1) / 2.0

    def mm(idx):
        return (idx - centre) * voxel_mm

    cc = mm(np.argwhere(np.isin(parcels, (1, 2, 3))))
    splenium = mm(np.argwhere(parcels == 2))
    thalamus = mm(np.argwhere(labels == 7))
    if len(cc) == 0 or len(splenium) == 0 or len(thalamus) == 0:
        return []
    x0 = float(np.median(cc[:, 0]))
    medial = thalamus[np.abs(thalamus[:, 0] - x0) < 8]
    y_front = np.percentile(medial[:, 1], 95)
    top = np.percentile(medial[:, 2], 98)
    spl = splenium[np.abs(splenium[:, 0] - x0) < 5]
    y_spl, z_spl_low = np.median(spl[:, 1]), np.percentile(spl[:, 2], 3)
    y_spl_back, z_spl = np.percentile(spl[:, 1], 2), np.median(spl[:, 2])
    out = []
    for side in (-1, 1):
        anchors = np.array(
            [
                [x0 + 2.5 * side, y_front, top + 1.5],
                [x0 + 2.5 * side, (y_front + y_spl) / 2, top + 2.0],
                [x0 + 1.5 * side, y_spl, z_spl_low - 2.5],
                [x0 + 0.5 * side, y_spl_back - 1.0, z_spl_low - 3.0],
            ]
        )
        anchors[1:3] += rng.uniform(-1, 1, (2, 3))
        out.append(Vessel(_smooth_curve(anchors), radius, float(rng.uniform(*chi_range)), "deep"))
    galen = np.array(
        [
            [x0, y_spl_back - 1.0, z_spl_low - 3.0],
            [x0, y_spl_back - 5.0, z_spl_low],
            [x0, y_spl_back - 6.0, z_spl],
            [x0, y_spl_back - 5.0, z_spl + 8.0],
        ]
    )
    out.append(Vessel(_smooth_curve(galen), radius, float(rng.uniform(*chi_range)), "deep"))
    return out


def _smooth_curve(anchors: np.ndarray, step_mm: float = 0.25) -> np.ndarray:
    """A Catmull-Rom spline through ``anchors`` (K, 3) sampled every ``step_mm``."""
    p = np.concatenate([anchors[:1], anchors, anchors[-1:]])
    pts = []
    for j in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[j - 1], p[j], p[j + 1], p[j + 2]
        n = max(2, int(np.ceil(np.linalg.norm(p2 - p1) / step_mm)))
        t = np.linspace(0, 1, n, endpoint=False)[:, None]
        pts.append(
            0.5
            * (
                2 * p1
                + (p2 - p0) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                + (3 * p1 - p0 - 3 * p2 + p3) * t**3
            )
        )
    pts.append(anchors[-1:])
    return np.concatenate(pts)


def _max_per_index(idx: np.ndarray, frac: np.ndarray, *values: np.ndarray) -> tuple:
    """Keep, for every index, the entry with the largest fraction (and its ``values``)."""
    order = np.lexsort((frac, idx))  # by index, largest fraction last
    idx = idx[order]
    last = np.r_[idx[1:] != idx[:-1], True]
    return (idx[last], frac[order][last], *(v[order][last] for v in values))


def _ramp_radius(radius: float, width: float) -> float:
    """The r_e whose edge profile ``clip((r_e - d) / width + 1/2, 0, 1)`` has the cross-section
    area pi radius^2 (a one-sub-voxel ramp would otherwise add about pi width^2 / 12)."""
    rho = np.linspace(0, radius + width, 2001)
    trial = np.linspace(-width / 2, radius + width / 2, 401)
    prof = np.clip((trial[:, None] - rho[None, :]) / width + 0.5, 0, 1)
    area = np.trapezoid(2 * np.pi * rho * prof, rho, axis=1)
    return float(np.interp(np.pi * radius**2, area, trial))


def rasterise_vessels(
    vessels: Sequence[Vessel],
    shape: Sequence[int],
    voxel_size: Sequence[float],
    rotation=None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Partial-volume rasterisation of veins on a (rotated) grid.

    The point ``p`` (canonical mm) lies at ``R @ p`` mm from the array centre. Each voxel is
    split into 2 x 2 x 2 sub-voxels; a sub-voxel's vessel fraction is ``clip((r - d) / w +
    1/2, 0, 1)`` with d its centre's distance (mm) to the centreline, w the mean sub-voxel edge
    (an anti-aliased edge, so rotated copies agree) and r chosen so that the profile's
    cross-section is pi radius^2 (:func:`_ramp_radius`), taking the largest over veins; the
    voxel's fraction is the mean over its sub-voxels and its vein chi the fraction-weighted
    mean of theirs. Volumes come out within about 5 % for veins of radius >= half a voxel.

    Returns the flat (C-order) voxel indices, fractions (0-1) and vein chi (ppm) of every
    touched voxel.
    """
    shape = tuple(int(n) for n in shape)
    vox = check_voxel_size(voxel_size)
    rot = as_rotation(rotation)
    sub_shape = tuple(2 * n for n in shape)
    sub_vox = vox / 2
    w = float(np.mean(sub_vox))
    centre = (np.asarray(shape) - 1) / 2.0
    idx_all, frac_all, chi_all = [], [], []
    for v in vessels:
        pts = np.asarray(v.points, dtype=np.float64)
        # resample the centreline finely: the nearest sample is then nearly the nearest point
        seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        s = np.concatenate([[0.0], np.cumsum(seg)])
        n = max(2, int(np.ceil(s[-1] / max(min(v.radius_mm, w) / 2, 0.02))) + 1)
        t = np.linspace(0, s[-1], n)
        pts = np.stack([np.interp(t, s, pts[:, i]) for i in range(3)], axis=1)
        # sub-voxel j has its centre at voxel coordinate (j - 1/2) / 2
        pos = 2 * ((pts @ rot.T) / vox + centre) + 0.5
        r_edge = _ramp_radius(v.radius_mm, w)
        reach = np.ceil((r_edge + w) / sub_vox + 0.5).astype(int)
        offs = np.stack(
            np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij"), axis=-1
        ).reshape(-1, 3)
        chunk = max(1, 2**21 // len(offs))
        parts = []
        for c0 in range(0, len(pos), chunk):
            p = pos[c0 : c0 + chunk]
            cells = np.round(p).astype(np.int64)[:, None, :] + offs[None]  # (P, O, 3)
            dist = np.linalg.norm((cells - p[:, None, :]) * sub_vox, axis=-1)
            frac = np.clip((r_edge - dist) / w + 0.5, 0, 1)
            inside = (frac > 0) & np.all((cells >= 0) & (cells < np.asarray(sub_shape)), axis=-1)
            cells, frac = cells[inside], frac[inside].astype(np.float32)
            sub_idx = np.ravel_multi_index(tuple(cells.T), sub_shape)
            parts.append(_max_per_index(sub_idx, frac))
        if parts:
            sub_idx, frac = _max_per_index(*(np.concatenate(a) for a in zip(*parts, strict=True)))
            idx_all.append(sub_idx)
            frac_all.append(frac)
            chi_all.append(np.full(frac.size, v.chi_ppm, np.float32))
    if not idx_all:
        return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.float32)
    sub_idx, frac, chi = _max_per_index(*(np.concatenate(a) for a in (idx_all, frac_all, chi_all)))
    ijk = np.unravel_index(sub_idx, sub_shape)
    voxel = np.ravel_multi_index(tuple(i // 2 for i in ijk), shape)
    uniq, inverse = np.unique(voxel, return_inverse=True)
    total = np.bincount(inverse, weights=frac, minlength=uniq.size)
    weighted = np.bincount(inverse, weights=frac * chi, minlength=uniq.size)
    return (
        uniq.astype(np.int64),
        (total / 8).astype(np.float32),
        (weighted / np.maximum(total, 1e-12)).astype(np.float32),
    )


# --------------------------------------------------------------------------- presets

_COMMON_REALISM: dict[str, Any] = {
    "wm_anisotropy_ppm": 0.015,
    "subvoxel_texture_level": 0.1,
    "subvoxel_texture_mm": 0.75,
    "vessels": True,
    "n_cortical_veins": 48,
    "texture": True,
    "texture_level": 0.05,
    "residual_background_ppm": 0.02,
    "phase_offset": "smooth",
    "dephasing": True,
}

#: Realistic-acquisition presets (parameters of :func:`simulate_realistic`). Both turn on WM
#: anisotropy (dchi 0.015 ppm), sub-voxel texture (10 % of max(|chi|, 0.1 ppm), 0.75 mm),
#: 48 cortical plus 3 deep veins, the 4 mm tissue texture (5 %), a 0.02 ppm rms residual
#: background field, a smooth receiver phase offset and intravoxel dephasing.
#:
#: * ``"3t"``: B0 3 T, 5 echoes TE 4, 10, 16, 22, 28 ms, first-echo SNR 40 (mean first-echo
#:   brain magnitude / noise sigma; in-vivo 1 mm 3 T GRE: about 20-60).
#: * ``"7t"``: B0 7 T, 4 echoes TE 4, 9, 14, 19 ms (R2* is about 1.6 times the 3 T value,
#:   :func:`~qsmflow.simulate.head.tissue_parameters`), first-echo SNR 30 (higher intrinsic
#:   SNR, spent on smaller voxels and shorter readouts).
REALISM_PRESETS: dict[str, dict[str, Any]] = {
    "3t": {
        "b0_tesla": 3.0,
        "te_s": (0.004, 0.010, 0.016, 0.022, 0.028),
        "snr": 40.0,
        **_COMMON_REALISM,
    },
    "7t": {
        "b0_tesla": 7.0,
        "te_s": (0.004, 0.009, 0.014, 0.019),
        "snr": 30.0,
        **_COMMON_REALISM,
    },
}

#: Preset keys that go to :class:`~qsmflow.simulate.head_source.HeadModelSource`.
SOURCE_KEYS = (
    "margin_mm",
    "texture",
    "texture_level",
    "chiref",
    "wm_anisotropy_ppm",
    "fibre_directions",
    "subvoxel_texture_level",
    "subvoxel_texture_mm",
    "vessels",
    "n_cortical_veins",
    "vessel_chi_ppm",
    "vessel_diameter_mm",
)
#: Preset keys that go to :func:`~qsmflow.simulate.gre.simulate_gre`.
GRE_KEYS = (
    "te_s",
    "b0_tesla",
    "b0_dir",
    "phase_offset",
    "dephasing",
    "background_noise",
    "pad_factor",
    "dc_value",
    "residual_background_ppm",
)


def realism_parameters(preset: str, **overrides) -> dict[str, Any]:
    """The preset's parameters with ``overrides`` applied (unknown keys are refused)."""
    if preset not in REALISM_PRESETS:
        raise QSMInputError(
            f"unknown realism preset {preset!r}; choose one of {sorted(REALISM_PRESETS)}"
        )
    params = dict(REALISM_PRESETS[preset])
    allowed = set(SOURCE_KEYS) | set(GRE_KEYS) | {"snr"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise QSMInputError(f"unknown realism option(s) {unknown}; allowed: {sorted(allowed)}")
    params.update(overrides)
    return params


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def simulate_realistic(
    preset: str = "3t",
    *,
    voxel_size: float | Sequence[float] = 1.0,
    directory=None,
    seed: int = 0,
    rotation=None,
    snr: float | None = None,
    supersample: int = 2,
    **overrides,
):
    """Simulate a head-model GRE acquisition that stands in for measured data.

    preset : a key of :data:`REALISM_PRESETS` ("3t" or "7t").
    voxel_size : mm, one value or three (e.g. (0.9, 0.9, 1.8)).
    directory : the head-model folder (default ``$QSMFLOW_TEST_DATA/qsm2_head_model``).
    seed : seeds the anatomy extras (fibre directions, textures, veins) and the noise.
    rotation : head rotation (3x3, canonical -> array), as in :func:`simulate_gre`.
    snr : first-echo SNR; None = the preset's, ``float("inf")`` = noise-free.
    supersample : sub-voxels per axis (default 2).
    overrides : any preset key (see :data:`SOURCE_KEYS`, :data:`GRE_KEYS`), e.g.
        ``wm_anisotropy_ppm=0`` to switch one component off.

    Returns a :class:`~qsmflow.simulate.gre.GREData`: ``chi`` is the isotropic (mean) truth,
    ``local_field`` the true local field including the anisotropy's contribution (also alone in
    ``extra["anisotropy_field"]``), ``extra["residual_background_field"]`` what was added to the
    total field only, and ``extra["realism"]`` the parameters used.
    """
    from .gre import simulate_gre
    from .head_source import HeadModelSource

    params = realism_parameters(preset, **overrides)
    if snr is not None:
        params["snr"] = snr
    noise_snr = params["snr"]
    if noise_snr is not None and not np.isfinite(noise_snr):
        noise_snr = None
    src = HeadModelSource(
        directory,
        voxel_size,
        seed=seed,
        **{k: params[k] for k in SOURCE_KEYS if k in params},
    )
    data = simulate_gre(
        src,
        rotation=rotation,
        snr=noise_snr,
        seed=seed,
        supersample=supersample,
        **{k: params[k] for k in GRE_KEYS if k in params},
    )
    record = {"preset": preset, "seed": seed, "supersample": supersample, **params}
    record["snr"] = noise_snr
    data.extra["realism"] = _jsonable(record)
    return data
