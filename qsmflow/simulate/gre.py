"""Multi-echo complex gradient-echo simulation with known truth.

Signal model per (sub-)voxel and echo (echo time TE in seconds, B0 in tesla):

    S(TE) = M0 * exp(-R2* TE) * exp(i * (2 pi gamma_bar B0 * 1e-6 * field_ppm * TE + phi0))
            + complex Gaussian noise

with ``field_ppm`` the total field of the whole-head susceptibility map (sinus air and bone
included) computed by :func:`qsmflow.physics.forward.forward_field` (zero-padded to twice the
size, dipole kernel with D(0) = ``dc_value``, B0 direction ``b0_dir`` in array axes) and
``phi0`` a smooth phase offset (receiver phase; rad). The phase is returned wrapped to
(-pi, pi]. Everything is zero outside the head (no signal, no noise) unless
``background_noise=True``. Noise: independent N(0, sigma^2) on the real and imaginary parts,
sigma = mean(|S(TE_1)|) over the brain mask / ``snr``.

The true local field is ``forward_field(chi inside the brain mask)`` restricted to the brain
mask; ``total_field - local_field`` inside the brain is the background field.

Supersampling (``supersample=s``, default 2; 1 = everything straight on the target grid)
------------------------------------------------------------------------------------------
The head is realised on a grid ``s`` times finer (voxel ``voxel_size / s``, shape ``s`` times
the target shape, same centre, so that the ``s^3`` sub-voxels ``s i .. s i + s - 1`` of each
axis make up target voxel ``i`` exactly), the fields are computed there and every target voxel
gets the mean over its sub-voxels:

* ``total_field`` / ``local_field``: block averages of the fine fields (the local one of the
  fine chi inside the fine brain mask);
* the signal: the mean of the sub-voxels' complex signals (M0, R2* and phase of each
  sub-voxel), which also models the dephasing between sub-voxels (signal loss near air, a
  phase that is not exactly linear in TE where the field varies within a voxel);
* ``chi``: block average (partial volume); ``m0``: block average; ``r2star``: M0-weighted
  block average (the initial decay rate); ``labels``: the most frequent label of the head
  sub-voxels (0 only where all are outside, so ``head_mask = labels > 0`` marks every voxel
  with signal); ``brain_mask``: at least half the sub-voxels in the fine brain mask.

Why: the k-space forward model reads a voxel-sharp map as band-limited, so each staircase edge
of a strong source (bone -2.1, air +9.2 ppm) rings, and with B0 oblique to the grid (a tilted
head or an oblique acquisition) that ringing becomes a *non-harmonic* field error inside the
brain that no background-field removal can remove. On the built-in phantom at 2 mm with B0
tilted 25 degrees, V-SHARP applied to the background field alone leaves 0.0155 ppm rms with
``supersample=1`` and 0.00017 ppm with 2 (0.0008 / 0.00015 with B0 along z). Sources
(:class:`~qsmflow.simulate.phantom.BuiltinPhantom`,
:class:`~qsmflow.simulate.head_source.HeadModelSource`) realise the finer grid from their
definition; a plain :class:`HeadModel` array is upsampled by repetition (each voxel a uniform
box), so ``chi`` is returned unchanged and only the fields and signal change. Even factors
measured best (``s=3`` leaves 0.0005 ppm there; the 2-sub-voxel mean has a zero at the fine
grid's Nyquist frequency, where the fine grid's own ringing sits). Cost at 2 mm (192 x 224 x
192 fine grid): about 3 s and 1.2 GB per orientation on 2 cores.

Head orientations (two ways; every orientation keeps the same array shape):

(a) ``rotation=R`` -- the head is rotated in the scanner. The phantom is rebuilt (or resampled)
    with the head rotated by ``R`` about the array centre (point p of the canonical head ->
    ``R @ p`` in this array), B0 is along array axis 2 and the NIfTI affine is plain axial
    (``diag(voxel_size)`` centred on the array centre), exactly as a scanner acquiring an axial
    slab would write it: **the affine does not reveal the head rotation**; registration of the
    magnitudes has to find it. The true rotation and the B0 direction it implies in the
    canonical head frame, ``R.T @ z``, are recorded (``GREData.rotation``,
    ``GREData.b0_dir_canonical``).
(b) ``b0_dir=b`` -- the head stays fixed in the array and the acquisition is oblique: the field
    is simulated with B0 along ``b`` (array axes) and the affine is ``[R @ diag(voxel_size), t]``
    with ``R`` the smallest rotation with ``R.T @ z = b``, so that
    :func:`qsmflow.physics.geometry.b0_dir_from_affine` returns ``b``. Use it to apply
    measured B0 directions (e.g. the LPCNN 7T ones) to one phantom without registration.

Realism (all off by default; :mod:`qsmflow.simulate.realism`): WM susceptibility anisotropy
from a source that provides it (its STI field is added on the supersampled grid to the total and
the local field) and a residual non-harmonic background field (``residual_background_ppm``,
total field only).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.fft as sfft

from ..errors import QSMInputError
from ..physics import _fft, units
from ..physics.kernel import dipole_kernel, normalise_b0_dir
from .head import SimulatedHead, exterior_mask, rotate_model, smooth_random_field, tissue_parameters
from .head_model import HeadModel
from .realism import FibreAnisotropy, apply_sti_kernel, residual_background_field
from .sampling import (
    block_average,
    check_supersample,
    downsample_head,
    sub_voxel_blocks,
    upsample_head,
)

log = logging.getLogger(__name__)

#: Default echo times (s).
DEFAULT_TE_S = (0.005, 0.010, 0.015, 0.020)

Z = np.array([0.0, 0.0, 1.0])


@dataclass
class GREData:
    """One simulated multi-echo GRE acquisition and its truth (arrays in the acquisition grid).

    magnitude, phase : (X, Y, Z, E) float32; phase in rad, wrapped to (-pi, pi].
    total_field : (X, Y, Z) ppm, field of the whole head's chi, zero outside the head.
    local_field : (X, Y, Z) ppm, field of chi inside the brain mask, zero outside it.
    chi, labels, brain_mask, head_mask : the truth in this orientation (chi in ppm).
    m0, r2star : (X, Y, Z) M0 and R2* (1/s) used.
    phase_offset : (X, Y, Z) rad, the phase at TE = 0 (before wrapping).
    te_s, b0_tesla, voxel_size : echo times (s), field strength (T), voxel size (mm).
    b0_dir : B0 direction in this array's axes (equals b0_dir_from_affine(affine)).
    rotation : head rotation canonical -> this array (identity in oblique mode).
    b0_dir_canonical : B0 direction in the canonical head frame, ``rotation.T @ b0_dir``.
    affine : the NIfTI affine a scanner would write.
    noise_sigma : standard deviation of the real and imaginary noise (0: noise-free).
    snr : requested SNR (None: noise-free).
    mode : "rotate" (head rotated, axial affine) or "oblique" (head fixed, oblique affine).
    supersample : sub-voxels per axis the fields and signal were computed on (see above).
    extra : further truth of the realism options (:mod:`qsmflow.simulate.realism`):
        "anisotropy_field" (WM anisotropy's part of the local and total field, ppm, brain),
        "residual_background_field" (added to the total field only, ppm, head), "phantom" (what
        the source added) and "realism" (preset parameters of :func:`simulate_realistic`).
    """

    magnitude: np.ndarray
    phase: np.ndarray
    total_field: np.ndarray
    local_field: np.ndarray
    chi: np.ndarray
    labels: np.ndarray
    brain_mask: np.ndarray
    head_mask: np.ndarray
    m0: np.ndarray
    r2star: np.ndarray
    phase_offset: np.ndarray
    te_s: tuple[float, ...]
    b0_tesla: float
    voxel_size: tuple[float, float, float]
    b0_dir: np.ndarray
    rotation: np.ndarray
    b0_dir_canonical: np.ndarray
    affine: np.ndarray
    noise_sigma: float
    snr: float | None
    mode: str
    dc_value: float = 0.0
    description: str = ""
    supersample: int = 1
    extra: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.chi.shape)

    @property
    def background_field(self) -> np.ndarray:
        """Total minus local field inside the brain mask (ppm), 0 elsewhere."""
        return np.where(self.brain_mask, self.total_field - self.local_field, 0).astype(np.float32)

    @property
    def complex_signal(self) -> np.ndarray:
        return self.magnitude * np.exp(1j * self.phase)


# --------------------------------------------------------------------------- geometry


def rotation_to_z(b: Sequence[float]) -> np.ndarray:
    """The smallest rotation R with ``R @ b = z`` (so ``R.T @ z = b``), b normalised first."""
    b = normalise_b0_dir(b)
    v = np.cross(b, Z)
    s, c = np.linalg.norm(v), float(np.dot(b, Z))
    if s < 1e-12:
        if c > 0:
            return np.eye(3)
        return np.diag([1.0, -1.0, -1.0])  # 180 degrees about x
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]]) / s
    angle = np.arctan2(s, c)
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def centred_affine(shape, voxel_size, rotation=None) -> np.ndarray:
    """NIfTI affine ``[R @ diag(voxel_size), t]`` mapping the array centre to world (0, 0, 0)."""
    r = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    m = r @ np.diag(np.asarray(voxel_size, dtype=np.float64))
    c = (np.asarray(shape, dtype=np.float64) - 1) / 2.0
    a = np.eye(4)
    a[:3, :3] = m
    a[:3, 3] = -m @ c
    return a


def oblique_affine(b0_dir: Sequence[float], shape, voxel_size) -> np.ndarray:
    """Affine of an oblique acquisition whose B0 direction in array axes is ``b0_dir``."""
    return centred_affine(shape, voxel_size, rotation_to_z(b0_dir))


def head_rotations(n: int, max_rotation_deg: float = 25.0, seed=0) -> list[np.ndarray]:
    """``n`` head rotations: the identity (reference) and ``n - 1`` tilts spread around.

    Tilt axes lie in the axial plane at evenly spread azimuths (plus jitter), tilt angles are
    60-100 % of ``max_rotation_deg``, and a small yaw (about z, +-5 degrees) is added, like a
    subject tilting the head in the coil for COSMOS. B0 in the head frame of orientation k is
    ``R_k.T @ z``, at the tilt angle from the head's z axis.
    """
    from ..physics.geometry import rotation_matrix

    if n < 1:
        raise QSMInputError(f"number of orientations must be >= 1, got {n}")
    if not 0 <= max_rotation_deg <= 90:
        raise QSMInputError(f"maximum head rotation must be 0-90 degrees, got {max_rotation_deg}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x0127]))
    out = [np.eye(3)]
    for k in range(1, n):
        az = 2 * np.pi * (k - 1) / max(n - 1, 1) + rng.uniform(-0.3, 0.3)
        axis = (np.cos(az), np.sin(az), 0.0)
        tilt = max_rotation_deg * rng.uniform(0.6, 1.0)
        yaw = rng.uniform(-5.0, 5.0) if max_rotation_deg > 0 else 0.0
        out.append(rotation_matrix(axis, tilt) @ rotation_matrix((0, 0, 1), yaw))
    return out


# --------------------------------------------------------------------------- tissue maps


def tissue_maps(
    labels: np.ndarray,
    b0_tesla: float = 3.0,
    *,
    texture: np.ndarray | None = None,
    texture_level: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """M0 and R2* (1/s) maps from a label map (see :data:`head.TISSUE_PARAMETERS`).

    ``texture`` (unit-variance smooth field) modulates M0 by ``1 + 0.5 level t`` and R2* by
    ``1 + 2 level t`` (2.5 % and 10 % std at the default 5 %).
    """
    m0_t, r2s_t = tissue_parameters(b0_tesla)
    labels = np.asarray(labels)
    if labels.max(initial=0) > 16:
        raise QSMInputError(f"label map has labels > 16 (max {labels.max()})")
    m0 = m0_t[labels].astype(np.float32)
    r2s = r2s_t[labels].astype(np.float32)
    if texture is not None and texture_level > 0:
        t = np.asarray(texture, dtype=np.float32)
        m0 *= np.clip(1 + 0.5 * texture_level * t, 0.5, 1.5)
        r2s *= np.clip(1 + 2.0 * texture_level * t, 0.5, 1.5)
    return m0, r2s


def smooth_phase_offset(shape, voxel_size, seed=0, amplitude_rad: float = 1.0) -> np.ndarray:
    """A smooth receiver phase offset (rad): a random constant in (-pi, pi] plus a slowly
    varying field (correlation length 60 mm, std ``amplitude_rad``)."""
    from .head import grid_coords

    rng = np.random.default_rng(np.random.SeedSequence([int(np.sum(np.atleast_1d(seed))), 0x0FF]))
    const = rng.uniform(-np.pi, np.pi)
    p = grid_coords(tuple(shape), np.asarray(voxel_size, float), np.eye(3))
    f = smooth_random_field(p, seed=rng.integers(0, 2**31), correlation_mm=60.0, n_waves=12)
    return (const + amplitude_rad * f).astype(np.float32)


# --------------------------------------------------------------------------- simulation


def _accepts_supersample(realise) -> bool:
    try:
        return "supersample" in inspect.signature(realise).parameters
    except (TypeError, ValueError):
        return False


def _realise(model, rotation, supersample: int = 1) -> SimulatedHead:
    """The head (rotated by ``rotation``) on the grid ``supersample`` times finer than the target
    grid: sources realise it there directly, plain models are upsampled (nearest)."""
    s = supersample
    if hasattr(model, "realise"):
        if s == 1:
            return model.realise(rotation)
        if _accepts_supersample(model.realise):
            return model.realise(rotation, supersample=s)
        log.info("%s cannot realise a finer grid; upsampling its head", type(model).__name__)
        return upsample_head(model.realise(rotation), s)
    if not isinstance(model, HeadModel):
        raise QSMInputError(f"cannot simulate from {type(model).__name__}: need a HeadModel")
    if rotation is None or np.allclose(rotation, np.eye(3)):
        if isinstance(model, SimulatedHead):
            head = model
        else:
            head = SimulatedHead(
                chi=model.chi,
                labels=model.labels,
                brain_mask=model.brain_mask,
                voxel_size=model.voxel_size,
                chiref=model.chiref,
            )
    else:
        head = rotate_model(model, rotation)
    return head if s == 1 else upsample_head(head, s)


def _zero_exterior(m: SimulatedHead) -> SimulatedHead:
    ext = exterior_mask(m.labels)
    if not (ext & (m.labels > 0)).any() and not np.any(m.chi[ext]):
        return m
    log.debug("treating %d exterior air voxels as outside the head (chi 0)", int(ext.sum()))
    return replace(
        m,
        chi=np.where(ext, 0, m.chi).astype(np.float32),
        labels=np.where(ext, 0, m.labels).astype(np.uint8),
        brain_mask=m.brain_mask & ~ext,
    )


def _seed_sequence(seed) -> np.random.SeedSequence:
    if isinstance(seed, np.random.SeedSequence):
        return seed
    return np.random.SeedSequence([int(s) for s in np.atleast_1d(seed)])


def _rfftn_padded(x: np.ndarray, shape) -> np.ndarray:
    """rfftn of ``x`` zero-padded (at the end of every axis) to ``shape``, one axis at a time so
    that the all-zero lines of the padding are never transformed."""
    a = sfft.rfft(x, n=shape[2], axis=2, workers=_fft.WORKERS)
    a = sfft.fft(a, n=shape[1], axis=1, workers=_fft.WORKERS, overwrite_x=True)
    return sfft.fft(a, n=shape[0], axis=0, workers=_fft.WORKERS, overwrite_x=True)


def _irfftn_cropped(spec: np.ndarray, n_last: int, out_shape) -> np.ndarray:
    """irfftn of ``spec`` (last axis of length ``n_last``) cropped to ``[:out_shape]``, one axis
    at a time so that lines outside the crop are never transformed."""
    a = sfft.ifft(spec, axis=0, workers=_fft.WORKERS)[: out_shape[0]]
    a = sfft.ifft(a, axis=1, workers=_fft.WORKERS, overwrite_x=True)[:, : out_shape[1]]
    a = sfft.irfft(a, n=n_last, axis=2, workers=_fft.WORKERS)[:, :, : out_shape[2]]
    return np.ascontiguousarray(a, dtype=np.float32)


def _box_filter(n: int, s: int) -> np.ndarray:
    """DFT (length n) of the s-tap moving average f[i] -> mean_j f[i + j]."""
    m = np.arange(n)[:, None] * np.arange(s)[None, :]
    return np.mean(np.exp(2j * np.pi * m / n), axis=1).astype(np.complex64)


def _fold_to_coarse(spec: np.ndarray, s: int, p_c) -> np.ndarray:
    """The s-voxel block average along the first two axes of a padded fine half spectrum, as the
    spectrum of the s times coarser grid there (box filter, then the aliases folded); ``spec``
    is left unchanged and no full-size temporary is made."""
    px, py = int(p_c[0]), int(p_c[1])
    bx, by = _box_filter(spec.shape[0], s), _box_filter(spec.shape[1], s)
    out = np.zeros((px, py, spec.shape[2]), np.complex64)
    for a in range(s):
        for c in range(s):
            w = bx[a * px : (a + 1) * px, None, None] * by[None, c * py : (c + 1) * py, None]
            out += spec[a * px : (a + 1) * px, c * py : (c + 1) * py] * w
    out *= np.float32(1.0 / s**2)
    return out


def _anisotropy_spectrum(anisotropy: FibreAnisotropy, shape, voxel_size, b, dc_value):
    """sum_i rfft(v_i) K_i (padded ``shape``): the spectrum of the field of the anisotropic WM
    susceptibility (STI forward model, :mod:`qsmflow.simulate.realism`)."""
    v = anisotropy.source_components(b)
    acc = None
    for i in range(3):
        spec = _rfftn_padded(anisotropy.dense(v[i]), shape)
        apply_sti_kernel(spec, shape, voxel_size, b, i, dc_value=dc_value)
        if acc is None:
            acc = spec
        else:
            acc += spec
        del spec
    return acc


def _fields(chi, brain, voxel_size, b0_dir, s, pad_factor, dc_value):
    """(total, local) of :func:`_fields_and_anisotropy` without anisotropy."""
    total, local, _ = _fields_and_anisotropy(
        chi, brain, voxel_size, b0_dir, s, pad_factor, dc_value
    )
    return total, local


def _fields_and_anisotropy(
    chi, brain, voxel_size, b0_dir, s, pad_factor, dc_value, anisotropy=None
):
    """Fields of the fine-grid ``chi`` (voxel ``voxel_size``): the total field on the fine grid
    and the local field (of ``chi`` inside ``brain``) averaged over ``s^3`` blocks.

    Same model as :func:`forward_field` (zero padding to about ``pad_factor`` times the size,
    here of the coarse grid, times ``s``; one kernel shared by both fields). The block average of
    the local field is taken in k-space (the box filter and the aliasing fold onto the coarse
    grid on the first two axes), so only the total field is transformed back at full size.

    ``anisotropy`` (a :class:`FibreAnisotropy` on the fine grid, sources inside ``brain``): its
    STI field is added to both fields (in k-space) and also returned alone, block-averaged
    (third value; None without anisotropy).
    """
    if not np.all(np.isfinite(chi)):
        raise QSMInputError("susceptibility map has non-finite values")
    n_f = np.asarray(chi.shape)
    n_c = n_f // s
    extra = np.maximum(np.ceil((pad_factor - 1.0) * n_c / 2), 0).astype(int)
    p_c = np.asarray(_fft.fast_shape(n_c, extra) if pad_factor > 1 else n_c)
    shape = tuple(int(n) for n in s * p_c)  # the fine array sits at index 0 (shift-invariant)
    aniso_spec = aniso_local = None
    if anisotropy is not None:
        if tuple(anisotropy.shape) != tuple(chi.shape):
            raise QSMInputError(
                f"anisotropy grid {anisotropy.shape} differs from the head's {chi.shape}"
            )
        aniso_spec = _anisotropy_spectrum(anisotropy, shape, voxel_size, b0_dir, dc_value)
        folded = aniso_spec if s == 1 else _fold_to_coarse(aniso_spec, s, p_c)
        aniso_local = _irfftn_cropped(folded, shape[2], (n_c[0], n_c[1], n_f[2]))
        del folded
        if s > 1:
            aniso_local = aniso_local.reshape(*aniso_local.shape[:2], -1, s).mean(
                axis=-1, dtype=np.float32
            )
    d = dipole_kernel(shape, voxel_size, b0_dir, dc_value=dc_value, half=True, dtype=np.float32)

    spec = _rfftn_padded(chi.astype(np.float32, copy=False), shape)
    spec *= d
    if aniso_spec is not None:
        spec += aniso_spec
    total = _irfftn_cropped(spec, shape[2], n_f)
    del spec
    spec = _rfftn_padded(np.where(brain, chi, 0).astype(np.float32), shape)
    spec *= d
    del d
    if aniso_spec is not None:
        spec += aniso_spec
        del aniso_spec
    if s > 1:
        spec *= _box_filter(shape[0], s)[:, None, None]
        spec *= _box_filter(shape[1], s)[None, :, None]
        px, py = int(p_c[0]), int(p_c[1])
        spec = spec.reshape(s, px, s, py, spec.shape[2]).sum(axis=(0, 2))
        spec *= np.float32(1.0 / s**2)
    local = _irfftn_cropped(spec, shape[2], (n_c[0], n_c[1], n_f[2]))
    del spec
    if s > 1:  # the block average along the last axis, in image space
        local = local.reshape(*local.shape[:2], -1, s).mean(axis=-1, dtype=np.float32)
    return total, local, aniso_local


def _sub_voxels(a: np.ndarray, s: int, sel: np.ndarray) -> np.ndarray:
    """(N, s^3): the sub-voxels of the N coarse voxels selected by ``sel``."""
    return sub_voxel_blocks(a, s)[sel].reshape(-1, s**3)


def simulate_gre(
    model,
    *,
    te_s: Sequence[float] = DEFAULT_TE_S,
    b0_tesla: float = 3.0,
    rotation=None,
    b0_dir: Sequence[float] | None = None,
    snr: float | None = 100.0,
    phase_offset: None | float | np.ndarray | str = None,
    seed=0,
    dephasing: bool = False,
    background_noise: bool = False,
    pad_factor: float = 2.0,
    dc_value: float = 0.0,
    supersample: int = 2,
    residual_background_ppm: float = 0.0,
) -> GREData:
    """Simulate multi-echo complex GRE data of ``model`` (see the module docstring).

    Parameters
    ----------
    model : a :class:`HeadModel` (e.g. from ``load_head_model`` or ``make_phantom``) or a
        phantom source with ``realise(rotation, supersample=s)`` (:class:`phantom.BuiltinPhantom`,
        :class:`head_source.HeadModelSource`), which builds rotated heads without interpolation, on
        any grid. Air connected to the array border is treated as outside the head (chi 0).
    te_s : echo times in seconds (e.g. 0.005 for 5 ms; milliseconds are refused).
    b0_tesla : field strength in tesla.
    rotation : 3x3 head rotation, mode (a); mutually exclusive with ``b0_dir``.
    b0_dir : B0 direction in array axes with the head fixed, mode (b).
    snr : mean first-echo brain magnitude / noise sigma; None or inf = noise-free.
    phase_offset : None (0), a constant (rad), an (X, Y, Z) map (rad) or "smooth"
        (:func:`smooth_phase_offset`).
    seed : int or sequence of ints; seeds the noise and a "smooth" phase offset.
    dephasing : multiply each (sub-)voxel's magnitude by the intravoxel-dephasing factor
        prod_i sinc(gamma_bar B0 dfield/dx_i * voxel_i * TE) of the total-field gradient
        (signal loss near the sinuses; with supersampling this adds to the dephasing between
        sub-voxels, which the complex average models anyway).
    background_noise : add noise outside the head too (default: exactly 0 there).
    pad_factor, dc_value : as in :func:`forward_field` (on the supersampled grid).
    supersample : sub-voxels per axis (default 2; 1 = fields and signal straight on the
        target grid). See the module docstring, "Supersampling".
    residual_background_ppm : rms (ppm, inside the brain) of a smooth non-harmonic field added
        to the total field only, in the scanner frame, seeded by ``seed`` (0 = off; see
        :func:`~qsmflow.simulate.realism.residual_background_field`); it is returned in
        ``extra["residual_background_field"]``.

    A source that realises a :class:`~qsmflow.simulate.realism.RealisticHead` with WM
    anisotropy (``HeadModelSource(wm_anisotropy_ppm=...)``) gets the anisotropic field added to
    the total and the local field, on the supersampled grid (``extra["anisotropy_field"]``:
    that part alone, block-averaged, in the brain; ``chi`` stays the isotropic truth).
    """
    te = tuple(float(t) for t in np.atleast_1d(np.asarray(te_s, dtype=np.float64)))
    if len(te) == 0:
        raise QSMInputError("at least one echo time is needed")
    for t in te:
        units.ppm_to_rad(0.0, t, b0_tesla)  # validates TE (seconds) and B0 (tesla)
    if any(b > a for a, b in zip(te[1:], te[:-1], strict=True)):
        raise QSMInputError(f"echo times must increase, got {te}")
    if rotation is not None and b0_dir is not None:
        raise QSMInputError("give either a head rotation or an oblique B0 direction, not both")
    if snr is not None and not (snr > 0):
        raise QSMInputError(f"SNR must be positive (or None for noise-free), got {snr}")
    s = check_supersample(supersample)
    if isinstance(residual_background_ppm, bool) or not (
        np.isfinite(residual_background_ppm) and residual_background_ppm >= 0
    ):
        raise QSMInputError(
            f"residual_background_ppm must be a finite rms >= 0 (ppm), got "
            f"{residual_background_ppm!r}"
        )

    if b0_dir is not None:
        mode = "oblique"
        b = normalise_b0_dir(b0_dir)
        fine = _realise(model, None, s)
        if not np.allclose(fine.rotation, np.eye(3)):
            raise QSMInputError("oblique mode needs a model in its canonical orientation")
        rot = np.eye(3)
    else:
        mode = "rotate"
        fine = _realise(model, rotation, s)
        b = Z.copy()
        rot = np.asarray(fine.rotation, dtype=np.float64)
    fine = _zero_exterior(fine)
    anisotropy = getattr(fine, "anisotropy", None)
    extra: dict = {}
    if getattr(fine, "realism", None):
        extra["phantom"] = dict(fine.realism)
    if anisotropy is not None:  # fine-grid data: not for the coarse truth
        fine = replace(fine, anisotropy=None)
    head = downsample_head(fine, s)  # the truth on the target grid
    shape, vox = head.chi.shape, head.voxel_size
    affine = oblique_affine(b, shape, vox) if mode == "oblique" else centred_affine(shape, vox)
    head_mask = head.labels > 0  # every voxel with a sub-voxel in the head
    brain = head.brain_mask.astype(bool)

    # fields on the fine grid, averaged over each voxel
    total_f, local, aniso = _fields_and_anisotropy(
        fine.chi, fine.brain_mask, fine.voxel_size, b, s, pad_factor, dc_value, anisotropy
    )
    del anisotropy
    ss = _seed_sequence(seed)
    noise_ss, offset_ss, residual_ss = ss.spawn(3)
    if residual_background_ppm > 0:
        residual_f = residual_background_field(
            fine.chi.shape,
            fine.voxel_size,
            fine.brain_mask,
            residual_background_ppm,
            seed=int(residual_ss.generate_state(1)[0]),
        )
        total_f += residual_f
        extra["residual_background_field"] = np.where(
            head_mask, block_average(residual_f, s), 0
        ).astype(np.float32)
        del residual_f
    total = np.where(head_mask, block_average(total_f, s), 0).astype(np.float32)
    local = np.where(brain, local, 0).astype(np.float32)
    if aniso is not None:
        extra["anisotropy_field"] = np.where(brain, aniso, 0).astype(np.float32)
        del aniso

    # tissue maps on the fine grid; the voxel's signal is the mean of its sub-voxels' signals
    head_f = fine.labels > 0
    m0_f, r2s_f = tissue_maps(
        fine.labels, b0_tesla, texture=fine.tissue_texture, texture_level=fine.texture_level
    )
    m0_f[~head_f] = 0
    r2s_f[~head_f] = 0
    m0 = block_average(m0_f, s).astype(np.float32)
    if s == 1:
        r2s = r2s_f
    else:  # M0-weighted mean: the initial decay rate of the voxel's magnitude
        w = block_average(m0_f * r2s_f, s)
        plain = block_average(r2s_f, s) / np.maximum(block_average(head_f, s), 1e-6)
        r2s = np.where(m0 > 0, w / np.where(m0 > 0, m0, 1), plain).astype(np.float32)
    sel = head_mask
    hz = _sub_voxels(units.ppm_to_hz(total_f, b0_tesla).astype(np.float32), s, sel)
    grads = None
    if dephasing:
        hz_f = units.ppm_to_hz(total_f, b0_tesla).astype(np.float32)
        # Hz per sub-voxel, from the field itself (not cut to 0 outside the head)
        grads = [_sub_voxels(np.gradient(hz_f, axis=i), s, sel) for i in range(3)]
        del hz_f
    del total_f
    m0_g, r2s_g = _sub_voxels(m0_f, s, sel), _sub_voxels(r2s_f, s, sel)
    del m0_f, r2s_f

    if phase_offset is None:
        phi0 = np.zeros(shape, np.float32)
    elif isinstance(phase_offset, str):
        if phase_offset != "smooth":
            raise QSMInputError(
                f"phase_offset must be None, a number, a map or 'smooth', got {phase_offset!r}"
            )
        phi0 = smooth_phase_offset(shape, vox, seed=offset_ss.generate_state(1)[0])
    else:
        phi0 = np.broadcast_to(np.asarray(phase_offset, dtype=np.float32), shape).copy()
    phi0 = np.where(head_mask | background_noise, phi0, 0).astype(np.float32)
    rot0 = np.exp(1j * phi0).astype(np.complex64)

    rng = np.random.default_rng(noise_ss)
    mags, phases = [], []
    sigma = 0.0
    for e, t in enumerate(te):
        amp = m0_g * np.exp(-r2s_g * np.float32(t))
        if grads is not None:
            for g in grads:
                amp *= np.abs(np.sinc(g * np.float32(t)))
        ph = hz * np.float32(2 * np.pi * t)
        sig = np.zeros(shape, np.complex64)
        sig.real[sel] = np.mean(amp * np.cos(ph), axis=1)
        sig.imag[sel] = np.mean(amp * np.sin(ph), axis=1)
        del amp, ph
        sig *= rot0
        if e == 0 and snr is not None and np.isfinite(snr):
            if not brain.any():
                raise QSMInputError("brain mask is empty; cannot set the noise level from SNR")
            sigma = float(np.mean(np.abs(sig[brain]))) / float(snr)
        if sigma > 0:
            noise = rng.standard_normal((2, *shape), dtype=np.float32) * np.float32(sigma)
            noise = noise[0] + 1j * noise[1]
            if not background_noise:
                noise[~head_mask] = 0
            sig = sig + noise
        ph = np.angle(sig).astype(np.float32)
        ph[ph <= -np.pi] += np.float32(2 * np.pi)
        mags.append(np.abs(sig).astype(np.float32))
        phases.append(ph)

    return GREData(
        magnitude=np.stack(mags, axis=-1),
        phase=np.stack(phases, axis=-1),
        total_field=total,
        local_field=local,
        chi=head.chi,
        labels=head.labels,
        brain_mask=brain,
        head_mask=head_mask,
        m0=m0,
        r2star=np.where(head_mask, r2s, 0).astype(np.float32),
        phase_offset=phi0,
        te_s=te,
        b0_tesla=float(b0_tesla),
        voxel_size=tuple(float(v) for v in vox),
        b0_dir=b,
        rotation=rot,
        b0_dir_canonical=rot.T @ b,
        affine=affine,
        noise_sigma=float(sigma),
        snr=None if snr is None or not np.isfinite(snr) else float(snr),
        mode=mode,
        dc_value=float(dc_value),
        description=head.description,
        supersample=s,
        extra=extra,
    )
