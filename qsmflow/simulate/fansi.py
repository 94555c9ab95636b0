"""The FANSI analytic brain phantom (Milovic et al.; after Langkammer et al. and Wisnieff et al.).

256 x 256 x 98 voxels of 0.9375 x 0.9375 x 1.5 mm, susceptibility in ppm (-0.44 ... 0.21) inside
a brain mask, zero outside. qsmflow uses it as a held-out test phantom: it is never used to
train the shipped ISDU-QSMNet weights (see ``benchmarks/isdu_heldout.py``). It is not shipped:
pass the folder holding ``chi_phantom.mat``, ``mask_phantom.mat`` and
``spatial_res_phantom.mat`` (in the test data: ``$QSMFLOW_TEST_DATA/fansi_phantom``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import QSMInputError

__all__ = ["FansiPhantom", "default_fansi_dir", "load_fansi_phantom", "simulate_local_field"]


@dataclass(frozen=True)
class FansiPhantom:
    """chi (X, Y, Z) float32 ppm (0 outside the mask), mask (X, Y, Z) bool, voxel size in mm.

    Array axes are the scanner axes of the original data; B0 is along axis 2 unless a tilted
    direction is simulated.
    """

    chi: np.ndarray
    mask: np.ndarray
    voxel_size: tuple[float, float, float]

    @property
    def affine(self) -> np.ndarray:
        """Axis-aligned affine of this grid (B0 along array axis 2)."""
        return np.diag([*self.voxel_size, 1.0])


def default_fansi_dir() -> Path:
    """``$QSMFLOW_TEST_DATA/fansi_phantom`` (default ``../shared/data`` beside the repo)."""
    root = os.environ.get("QSMFLOW_TEST_DATA")
    base = Path(root) if root else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return base / "fansi_phantom"


def _read(path: Path, key: str) -> np.ndarray:
    import scipy.io as sio

    if not path.is_file():
        raise QSMInputError("FANSI phantom file not found", str(path))
    try:
        m = sio.loadmat(str(path))
    except Exception as exc:  # corrupt or not a MATLAB v5 file
        raise QSMInputError(f"cannot read MATLAB file ({exc})", str(path)) from exc
    if key not in m:
        raise QSMInputError(f"no variable {key!r} in the file", str(path))
    return np.asarray(m[key])


def load_fansi_phantom(directory: str | os.PathLike | None = None) -> FansiPhantom:
    """Load the phantom; every problem raises QSMInputError naming the file."""
    d = Path(directory) if directory is not None else default_fansi_dir()
    chi = _read(d / "chi_phantom.mat", "chi").astype(np.float32)
    mask = _read(d / "mask_phantom.mat", "mask_use") > 0
    vox = _read(d / "spatial_res_phantom.mat", "spatial_res").astype(np.float64).ravel()
    if chi.ndim != 3:
        raise QSMInputError(f"chi must be 3-D, got shape {chi.shape}", str(d / "chi_phantom.mat"))
    if mask.shape != chi.shape:
        raise QSMInputError(
            f"mask shape {mask.shape} differs from chi shape {chi.shape}",
            str(d / "mask_phantom.mat"),
        )
    if vox.shape != (3,) or not np.all(vox > 0):
        raise QSMInputError(
            f"spatial_res must be 3 positive sizes (mm), got {vox}",
            str(d / "spatial_res_phantom.mat"),
        )
    if not np.all(np.isfinite(chi[mask])):
        raise QSMInputError("chi has NaN/inf inside the mask", str(d / "chi_phantom.mat"))
    chi = np.where(mask, chi, 0).astype(np.float32)
    return FansiPhantom(chi=chi, mask=mask, voxel_size=tuple(float(v) for v in vox))


def simulate_local_field(
    phantom: FansiPhantom,
    *,
    noise_ppm: float = 0.002,
    tilt_deg: float = 0.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Noisy local field (ppm, float32, 0 outside the mask) of the phantom, and the B0 direction.

    The field is the dipole forward model (zero-padded, D(0) = 0) of the susceptibility inside
    the mask, with B0 tilted by ``tilt_deg`` from array axis 2 towards axis 1, plus white
    Gaussian noise of std ``noise_ppm`` (ppm of B0; 0.002 ppm ~ single-echo phase noise at 3 T,
    TE 20 ms, magnitude SNR 40).
    """
    from ..physics.forward import forward_field

    if not noise_ppm >= 0:
        raise QSMInputError(f"noise_ppm must be >= 0, got {noise_ppm!r}")
    t = np.deg2rad(float(tilt_deg))
    b0 = np.array([0.0, np.sin(t), np.cos(t)])
    field = forward_field(phantom.chi, phantom.voxel_size, b0).astype(np.float64)
    rng = np.random.default_rng(seed)
    field += float(noise_ppm) * rng.standard_normal(field.shape)
    return (field * phantom.mask).astype(np.float32), b0
