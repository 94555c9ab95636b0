"""Boundary checks for arrays entering the numerics: finite values, masks, grids, phase units.

Every check raises :class:`qsmflow.errors.QSMInputError` naming the offending file. The ones
named ``check_*`` that *return* something return the checked, converted array (say, a bool
mask or a field with NaN outside the mask zeroed): use the return value.
"""

from __future__ import annotations

import numpy as np

from ..errors import QSMInputError


def check_volume(
    x: np.ndarray, name: str = "image", source: str | None = None, *, ndim: int = 3
) -> np.ndarray:
    """Raise unless ``x`` is a real ``ndim``-D array; return it as a float array."""
    x = np.asarray(x)
    if x.ndim != ndim:
        raise QSMInputError(f"{name} must be {ndim}-D, got shape {x.shape}", source)
    if np.iscomplexobj(x):
        raise QSMInputError(f"{name} must be real-valued, got {x.dtype}", source)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    return x


def check_finite(
    x: np.ndarray,
    name: str = "image",
    source: str | None = None,
    mask: np.ndarray | None = None,
    *,
    fix: bool = False,
) -> np.ndarray:
    """Return ``x`` with its non-finite voxels outside ``mask`` set to 0; raise on any inside.

    Non-finite voxels inside ``mask`` (everywhere when no mask) are an error naming ``source``;
    outside the mask they carry no information and are zeroed. With ``fix=True`` non-finite
    voxels inside the mask are also set to 0 instead of raising.
    """
    bad = ~np.isfinite(x)
    if not bad.any():
        return x
    inside = bad if mask is None else bad & mask
    n_inside = int(inside.sum())
    if n_inside and not fix:
        raise QSMInputError(
            f"{name} has {n_inside} NaN/inf voxel(s)"
            + (" inside the mask" if mask is not None else "")
            + "; mask them out or pass a mask that excludes them",
            source,
        )
    x = np.where(bad, 0, x).astype(x.dtype, copy=False)
    return x


def check_mask(
    mask: np.ndarray, shape: tuple[int, ...], source: str | None = None, name: str = "mask"
) -> np.ndarray:
    """Return ``mask`` as bool (values > 0.5) after checking its grid, that it is finite and
    that it is not empty; errors name ``source``. The one mask check of the package."""
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise QSMInputError(
            f"{name} grid {mask.shape} does not match the image grid {tuple(shape)}", source
        )
    if mask.dtype != bool:
        if not np.all(np.isfinite(mask)):
            raise QSMInputError(f"{name} contains NaN/inf", source)
        mask = mask > 0.5
    if not mask.any():
        raise QSMInputError(f"{name} is empty (no voxel is set)", source)
    return mask


def check_same_grid(
    a_shape: tuple[int, ...], b_shape: tuple[int, ...], what: str, source: str | None = None
) -> None:
    if tuple(a_shape) != tuple(b_shape):
        raise QSMInputError(f"{what}: grids differ, {tuple(a_shape)} vs {tuple(b_shape)}", source)


#: Largest difference (mm, any affine entry) between two affines that still means "same grid":
#: the one tolerance for echoes, masks, orientations and BIDS validation.
AFFINE_ATOL_MM = 1e-3

#: Phase units understood by :func:`phase_to_radians` (the choices of every phase-units option).
PHASE_UNITS = ("auto", "rad", "siemens", "siemens-raw")


def check_same_affine(
    affine: np.ndarray, reference: np.ndarray, what: str, source: str | None = None
) -> None:
    """Raise unless ``affine`` equals ``reference`` within :data:`AFFINE_ATOL_MM` (mm)."""
    diff = float(np.max(np.abs(np.asarray(affine) - np.asarray(reference))))
    if not diff <= AFFINE_ATOL_MM:
        raise QSMInputError(
            f"{what}: affines differ by up to {diff:.3g} mm (tolerance {AFFINE_ATOL_MM} mm)",
            source,
        )


def phase_to_radians(
    phase: np.ndarray, source: str | None = None, *, units: str = "auto"
) -> tuple[np.ndarray, str]:
    """Scale a phase image to radians in [-pi, pi).

    ``units``:

    * ``"rad"``: already radians in [-pi, pi] (checked).
    * ``"siemens"``: Siemens 12-bit phase after RescaleSlope 2 / RescaleIntercept -4096, values
      in [-4096, 4095]; phi = v * pi / 4096.
    * ``"siemens-raw"``: stored 12-bit values 0..4095 without rescaling; phi = v * pi/2048 - pi.
    * ``"auto"``: radians when |phase| <= pi (+1e-3); Siemens units when the values lie in
      [-4096, 4095] and span more than 4000 (a real phase image covers almost the whole
      range); raw 12-bit when they lie in [0, 4095] and span more than 3000. Anything else
      (degrees, an unwrapped phase, arbitrary scaling) is an error, never a silent guess.

    Returns the scaled phase (float32) and the units used.
    """
    phase = np.asarray(phase, dtype=np.float32)
    finite = phase[np.isfinite(phase)]
    if finite.size == 0:
        raise QSMInputError("phase image has no finite voxel", source)
    lo, hi = float(finite.min()), float(finite.max())
    if units == "auto":
        if lo >= -np.pi - 1e-3 and hi <= np.pi + 1e-3:
            units = "rad"
        elif lo >= 0 and hi <= 4095.5 and (hi - lo) > 3000:
            units = "siemens-raw"
        elif lo >= -4096.5 and hi <= 4095.5 and (hi - lo) > 4000:
            units = "siemens"
        else:
            raise QSMInputError(
                f"phase range [{lo:.4g}, {hi:.4g}] is neither radians [-pi, pi] nor Siemens "
                "12-bit units ([-4096, 4095] or raw [0, 4095]); rescale the phase to radians "
                "or name its units",
                source,
            )
    if units == "rad":
        if lo < -np.pi - 1e-3 or hi > np.pi + 1e-3:
            raise QSMInputError(f"phase range [{lo:.4g}, {hi:.4g}] exceeds [-pi, pi]", source)
        return phase, units
    if units == "siemens":
        if lo < -4096.5 or hi > 4095.5:
            raise QSMInputError(
                f"phase range [{lo:.4g}, {hi:.4g}] exceeds Siemens units [-4096, 4095]", source
            )
        return (phase * np.float32(np.pi / 4096.0)).astype(np.float32), units
    if units == "siemens-raw":
        if lo < -0.5 or hi > 4095.5:
            raise QSMInputError(
                f"phase range [{lo:.4g}, {hi:.4g}] exceeds raw 12-bit values [0, 4095]", source
            )
        return (phase * np.float32(np.pi / 2048.0) - np.float32(np.pi)).astype(np.float32), units
    raise QSMInputError(f"unknown phase units {units!r} (use {', '.join(PHASE_UNITS)})", source)
