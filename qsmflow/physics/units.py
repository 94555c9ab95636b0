"""Unit conversions between phase (rad), frequency offset (Hz) and field (ppm of B0).

One constant is used everywhere: the proton gyromagnetic ratio over 2*pi,
``GAMMA_BAR_HZ_PER_T = 42.577478518e6`` Hz/T (CODATA 2018). Other tools pin 42.576e6
(QSM.rs), 42.57747892e6 (SEPIA) or 42.58e6 (qsm-forward); the difference is < 1e-4 relative.

Sign convention: phase = +2*pi * f_Hz * TE, with f_Hz = field_ppm * 1e-6 * GAMMA_BAR * B0.
At 3 T, 1 ppm = 127.7 Hz = 16.05 rad at TE = 20 ms.
"""

from __future__ import annotations

import numpy as np

from ..errors import QSMInputError

GAMMA_BAR_HZ_PER_T: float = 42.577478518e6


def _check_b0(b0_tesla: float) -> None:
    if not np.isfinite(b0_tesla) or not (0.05 <= b0_tesla <= 25):
        raise QSMInputError(f"field strength B0 = {b0_tesla!r} T is not a plausible value in tesla")


def _check_te(te_s: float) -> None:
    te = np.asarray(te_s, dtype=float)
    if not np.all(np.isfinite(te)) or np.any(te <= 0):
        raise QSMInputError(f"echo time(s) {te_s!r} must be positive and finite, in seconds")
    if np.any(te > 0.5):
        raise QSMInputError(
            f"echo time(s) {te_s!r} look like milliseconds; qsmflow expects seconds "
            "(BIDS EchoTime convention), e.g. 0.02 for 20 ms"
        )


def hz_to_ppm(field_hz, b0_tesla: float):
    """Frequency offset (Hz) -> field in ppm of B0."""
    _check_b0(b0_tesla)
    return field_hz * (1e6 / (GAMMA_BAR_HZ_PER_T * b0_tesla))


def ppm_to_hz(field_ppm, b0_tesla: float):
    """Field in ppm of B0 -> frequency offset (Hz)."""
    _check_b0(b0_tesla)
    return field_ppm * (GAMMA_BAR_HZ_PER_T * b0_tesla * 1e-6)


def rad_to_hz(phase_rad, te_s: float):
    """Phase (rad) accumulated at echo time ``te_s`` (s) -> frequency offset (Hz)."""
    _check_te(te_s)
    return phase_rad / (2 * np.pi * te_s)


def hz_to_rad(field_hz, te_s: float):
    """Frequency offset (Hz) -> phase (rad) at echo time ``te_s`` (s)."""
    _check_te(te_s)
    return field_hz * (2 * np.pi * te_s)


def rad_to_ppm(phase_rad, te_s: float, b0_tesla: float):
    """Phase (rad) at echo time ``te_s`` (s) and field strength ``b0_tesla`` (T) -> ppm."""
    return hz_to_ppm(rad_to_hz(phase_rad, te_s), b0_tesla)


def ppm_to_rad(field_ppm, te_s: float, b0_tesla: float):
    """Field (ppm) -> phase (rad) at echo time ``te_s`` (s) and field strength ``b0_tesla`` (T)."""
    return hz_to_rad(ppm_to_hz(field_ppm, b0_tesla), te_s)
