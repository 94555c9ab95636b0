"""FFT helpers: scipy.fft with all cores, fast padded sizes, pad/crop.

scipy.fft (pocketfft) with ``workers`` measured faster than numpy.fft and than torch.fft on
CPU for the volume sizes we use (algorithms.md section 5), and it keeps complex64 in single
precision, so it is the numerical back-end of :mod:`qsmflow.physics`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import scipy.fft as sfft

#: Number of threads handed to scipy.fft; override with QSMFLOW_FFT_WORKERS.
WORKERS = int(os.environ.get("QSMFLOW_FFT_WORKERS", "0")) or (os.cpu_count() or 1)


def fftn(x: np.ndarray) -> np.ndarray:
    return sfft.fftn(x, workers=WORKERS)


def ifftn(x: np.ndarray) -> np.ndarray:
    return sfft.ifftn(x, workers=WORKERS)


def rfftn(x: np.ndarray) -> np.ndarray:
    return sfft.rfftn(x, workers=WORKERS)


def irfftn(x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    return sfft.irfftn(x, s=tuple(shape), workers=WORKERS)


def fast_shape(shape: Sequence[int], min_pad: int | Sequence[int] = 0) -> tuple[int, ...]:
    """Smallest FFT-friendly (5-smooth, even) shape >= ``shape + 2*min_pad`` per axis."""
    pads = np.broadcast_to(np.asarray(min_pad, dtype=int), (len(shape),))
    out = []
    for n, p in zip(shape, pads, strict=True):
        m = sfft.next_fast_len(int(n) + 2 * int(p), real=True)
        while m % 2:
            m = sfft.next_fast_len(m + 1, real=True)
        out.append(m)
    return tuple(out)


def pad_to(x: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Zero-pad ``x`` symmetrically to ``shape``; returns the padded array and the crop slices."""
    shape = tuple(int(s) for s in shape)
    if shape == x.shape:
        return x, tuple(slice(0, n) for n in x.shape)
    before = [(s - n) // 2 for s, n in zip(shape, x.shape, strict=True)]
    if any(b < 0 for b in before):
        raise ValueError(f"cannot pad shape {x.shape} to smaller shape {shape}")
    out = np.zeros(shape, dtype=x.dtype)
    crop = tuple(slice(b, b + n) for b, n in zip(before, x.shape, strict=True))
    out[crop] = x
    return out, crop
