"""Single-orientation dipole inversion: local field (ppm) -> susceptibility (ppm).

Every function here takes

* ``field_ppm`` : (X, Y, Z) local (tissue) field in ppm of B0, after background removal;
* ``mask`` : (X, Y, Z) region where the field is valid (bool or 0/1); the field is set to 0
  outside it and the returned map is 0 outside it;
* ``voxel_size`` : three voxel edge lengths in mm, per array axis;
* ``b0_dir`` : B0 direction as a 3-vector in array-axis coordinates (normalised here; the sign
  does not matter),

and returns an (X, Y, Z) susceptibility map in ppm, float32 by default (``dtype=np.float64`` on
request). The dipole kernel is D(k) = 1/3 - (k.b)^2/|k|^2 with D(0) = 0 (:mod:`.kernel`), so the
mean susceptibility in the mask is not determined by the data: demean before comparing maps.

Zero padding (``pad``, default 12 voxels per side, then rounded up to a fast FFT size) keeps the
periodic FFT from wrapping the field of sources across the box; ``pad=0`` means no padding
(periodic boundaries on the input grid). All FFTs are real-to-complex (half spectra).

Methods (algorithms.md section 2.5-2.8):

* :func:`tkd` - truncated k-space division (Shmueli 2009), 2 FFTs.
* :func:`tsvd` - truncated SVD (kernel zeroed where |D| <= t), 2 FFTs.
* :func:`cfl2` - closed-form L2 / Tikhonov (Bilgic 2014), 2 FFTs.
* :func:`ndi` - nonlinear dipole inversion by gradient descent (Polak 2020), 2 FFTs/iteration.
* :func:`star_qsm` - two-level sparse (l1) inversion in the spirit of STAR-QSM (Wei 2015).
* :func:`tv` - total-variation regularised inversion by ADMM (Bilgic 2014), optional MEDI-style
  magnitude edge weights, 2 FFTs/iteration.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import QSMInputError
from .kernel import check_voxel_size, kspace_grid
from .ndi import ndi
from .padded import (
    DEFAULT_PAD,
    PaddedField,
    irfftn_owned,
    padded_shape,
)
from .star import star_qsm
from .tv import tv

__all__ = [
    "METHODS",
    "cfl2",
    "gradient_symbol",
    "invert",
    "irfftn_owned",
    "method_options",
    "methods_taking",
    "ndi",
    "padded_shape",
    "resolve_options",
    "star_qsm",
    "tkd",
    "tkd_kernel",
    "tsvd",
    "tv",
]

#: Method names accepted by :func:`invert` (and the ``qsmflow invert`` command).
METHODS = ("tkd", "tsvd", "cfl2", "ndi", "star", "tv")


# --------------------------------------------------------------------------------------------
# direct (2-FFT) inversions
# --------------------------------------------------------------------------------------------


def tkd_kernel(d: np.ndarray, threshold: float) -> np.ndarray:
    """Truncated inverse kernel: 1/D where |D| > t, sign(D)/t elsewhere (sign(0) = +1)."""
    _check_threshold(threshold)
    t = d.dtype.type(threshold)
    # 1 / (D clipped away from 0 to +-t): equals 1/D where |D| > t and sign(D)/t elsewhere.
    inv = np.where(d < 0, np.minimum(d, -t), np.maximum(d, t))
    np.divide(d.dtype.type(1), inv, out=inv)
    return inv


def _check_threshold(threshold: float) -> None:
    if not (np.isfinite(threshold) and 0 < threshold < 2.0 / 3.0):
        raise QSMInputError(f"kernel threshold must be in (0, 2/3), got {threshold!r}")


def tkd(
    field_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    *,
    threshold: float = 0.3,
    pad: int | Sequence[int] = DEFAULT_PAD,
    dtype=np.float32,
) -> np.ndarray:
    """Truncated k-space division (TKD; Shmueli et al. 2009).

    chi = F^-1[K . F(field)], K = 1/D where |D| > ``threshold`` and sign(D)/``threshold``
    elsewhere. As in QSM.rs and QSM.jl, k = 0 (where D(0) = 0) and the cone D = 0 map to
    +1/threshold, so the mean field in the padded box scales the mean of chi by 1/threshold; the
    mean susceptibility is arbitrary anyway (demean before scoring). No correction for the
    underestimation that truncation causes is applied.

    Parameters
    ----------
    field_ppm : (X, Y, Z) local field, ppm of B0.
    mask : (X, Y, Z) brain mask; the field is zeroed outside it, the output is 0 outside it.
    voxel_size : mm per array axis.
    b0_dir : B0 direction in array-axis coordinates.
    threshold : t in (0, 2/3). Default 0.3, chosen on the realistic-acquisition benchmark
        (``benchmarks/realistic.py``: 3 T, 1 mm, NRMSE 65.9 % at 0.3 against 72.2 % at 0.15
        and 67.1 % at 0.4; on the measured 2016-challenge field 0.4 scores 62.9 % and 0.15
        99.0 %). QSM.rs, QSM.jl and SEPIA default to 0.15, which amplifies noise and model
        error in the cone of the kernel.
    pad : zero voxels added per side (then rounded to a fast FFT size); 0 = periodic.
    dtype : float32 (default) or float64 arithmetic and output.

    Returns
    -------
    (X, Y, Z) susceptibility in ppm.
    """
    p = PaddedField(field_ppm, mask, voxel_size, b0_dir, pad, dtype)
    return p.apply(tkd_kernel(p.kernel(), threshold))


def tsvd(
    field_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    *,
    threshold: float = 0.15,
    pad: int | Sequence[int] = DEFAULT_PAD,
    dtype=np.float32,
) -> np.ndarray:
    """Truncated SVD: chi = F^-1[K . F(field)], K = 1/D where |D| > ``threshold``, else 0.

    (SEPIA's ``qsmTKD`` is this method.) k = 0 maps to 0, so the padded box mean of chi is 0.
    Arguments and units as :func:`tkd`; returns (X, Y, Z) susceptibility in ppm.
    """
    _check_threshold(threshold)
    p = PaddedField(field_ppm, mask, voxel_size, b0_dir, pad, dtype)
    d = p.kernel()
    k = np.zeros_like(d)
    big = np.abs(d) > d.dtype.type(threshold)
    np.divide(1, d, out=k, where=big)
    return p.apply(k)


def gradient_symbol(
    shape: Sequence[int], voxel_size: Sequence[float], *, half: bool = True, dtype=np.float32
) -> np.ndarray:
    """|G(k)|^2 = sum_i 4 sin^2(pi k_i voxel_i) / voxel_i^2 (1/mm^2): the k-space symbol of
    the forward-difference gradient's normal operator (grad^T grad) on a periodic grid."""
    vox = check_voxel_size(voxel_size)
    axes = kspace_grid(shape, vox, half=half)
    g = np.zeros([a.shape[i] for i, a in enumerate(axes)], dtype=np.float64)
    for a, d in zip(axes, vox, strict=True):
        g = g + 4.0 * np.sin(np.pi * a * d) ** 2 / d**2
    return g.astype(dtype, copy=False)


def cfl2(
    field_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    *,
    lam: float = 0.01,
    regulariser: str = "identity",
    pad: int | Sequence[int] = DEFAULT_PAD,
    dtype=np.float32,
) -> np.ndarray:
    """Closed-form L2 (Tikhonov) inversion (Bilgic et al. 2014).

    chi = F^-1[ D / (D^2 + lam . Gamma) . F(field) ], i.e. the minimiser of
    ||D chi - field||^2 + lam ||R chi||^2 on the periodic padded grid, with

    * ``regulariser="identity"``: Gamma = 1 (R = identity; QSM.rs / QSM.jl default, lam 0.01);
    * ``regulariser="gradient"``: Gamma = sum_i 4 sin^2(pi k_i voxel_i)/voxel_i^2 in 1/mm^2
      (R = forward-difference gradient; lam then has units mm^2 and typically needs to be
      smaller, e.g. 1e-3 at 1 mm).

    At k = 0 the kernel is 0 (D(0) = 0), so the padded box mean of chi is 0. Arguments and
    units otherwise as :func:`tkd`; returns (X, Y, Z) susceptibility in ppm.
    """
    if not (np.isfinite(lam) and lam > 0):
        raise QSMInputError(f"regularisation weight lambda must be > 0, got {lam!r}")
    p = PaddedField(field_ppm, mask, voxel_size, b0_dir, pad, dtype)
    d = p.kernel()
    if regulariser == "identity":
        reg = p.dtype.type(lam)
    elif regulariser == "gradient":
        reg = gradient_symbol(p.pshape, p.voxel_size, dtype=p.dtype)
        reg *= p.dtype.type(lam)
    else:
        raise QSMInputError(f"regulariser must be 'identity' or 'gradient', got {regulariser!r}")
    denom = d * d
    denom += reg
    k = np.divide(d, denom, out=np.zeros_like(d), where=denom > 0)
    return p.apply(k)


_FUNCTIONS = {"tkd": tkd, "tsvd": tsvd, "cfl2": cfl2, "ndi": ndi, "star": star_qsm, "tv": tv}

#: Arguments of the inversion functions that are not method options (set by the caller).
_NOT_OPTIONS = ("dtype",)


def _function(method: str):
    if method not in _FUNCTIONS:
        raise QSMInputError(f"unknown inversion method {method!r}; choose from {METHODS}")
    return _FUNCTIONS[method]


def method_options(method: str) -> dict[str, Any]:
    """Return the keyword options of ``method`` with their defaults.

    Read from the signature of the method's function, so the defaults live once (there);
    ``dtype`` is left out (it is the caller's precision, not an option of the method).
    """
    params = inspect.signature(_function(method)).parameters.values()
    return {
        p.name: p.default
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _NOT_OPTIONS
    }


def methods_taking(option: str) -> tuple[str, ...]:
    """Return the methods (of :data:`METHODS`) that take the keyword option ``option``."""
    return tuple(m for m in METHODS if option in method_options(m))


def resolve_options(method: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Return ``options`` with the defaults of ``method`` filled in: the values it will use.

    An option the method does not take is an error naming the methods that take it.
    """
    known = method_options(method)
    given = dict(options or {})
    for option in given:
        if option not in known:
            takers = methods_taking(option)
            where = f"it applies to {', '.join(takers)}" if takers else "unknown option"
            raise QSMInputError(
                f"option {option} does not apply to {method} ({where}; {method} takes "
                f"{', '.join(known)})"
            )
    return {**known, **given}


def invert(
    method: str,
    field_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    **options,
) -> np.ndarray:
    """Dispatch to :func:`tkd`, :func:`tsvd`, :func:`cfl2`, :func:`ndi` or :func:`star_qsm` by
    name (``"tkd"``, ``"tsvd"``, ``"cfl2"``, ``"ndi"``, ``"star"``)."""
    return _function(method)(field_ppm, mask, voxel_size, b0_dir, **options)
