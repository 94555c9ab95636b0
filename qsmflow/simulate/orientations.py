"""Head-orientation geometry for multi-orientation (COSMOS) simulations.

* :func:`read_b0_dirs` reads B0 direction files (3 numbers per direction);
  :func:`read_b0_dir_txt` / :func:`load_lpcnn_orientations` read the measured B0 directions
  shipped with the LPCNN 7T data (``SubXXX/oriN/SubXXX_oriN.txt``: three numbers, the unit B0
  vector in the subject's reference image axes, e.g. Sub001 ori1 = (-0.141, 0.106, 0.984)).
* :func:`spread_b0_dirs` gives a well-spread synthetic set: neutral, then +-angle about two
  axes (default 25 degrees about array axes 0 and 1).
* :func:`tilt_deg` gives the angle of each direction from a reference direction.

All directions are unit 3-vectors in array-axis coordinates, as the dipole kernel expects.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import QSMInputError
from ..physics.geometry import rotation_matrix
from ..physics.kernel import normalise_b0_dir

__all__ = [
    "read_b0_dirs",
    "read_b0_dir_txt",
    "load_lpcnn_orientations",
    "spread_b0_dirs",
    "tilt_deg",
]


def read_b0_dirs(path: str | os.PathLike) -> np.ndarray:
    """Read B0 directions from a text file: 3 numbers per direction (whitespace/comma
    separated, any line layout; e.g. LPCNN's ``SubXXX_oriN.txt`` holds one, one number per
    line). Returns an (N, 3) float64 array of unit vectors in the file's order.

    Raises :class:`QSMInputError` naming the file if it is missing, does not hold a positive
    multiple of three finite numbers, or a vector is not close to unit length
    (|norm - 1| > 0.05).
    """
    p = Path(path)
    if not p.is_file():
        raise QSMInputError("B0 direction file not found", str(p))
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise QSMInputError(f"cannot read B0 direction file ({exc})", str(p)) from exc
    tokens = [t for t in re.split(r"[\s,;\[\]]+", text) if t]
    try:
        values = np.array([float(t) for t in tokens], dtype=np.float64)
    except ValueError as exc:
        raise QSMInputError(f"B0 direction file must hold 3 numbers ({exc})", str(p)) from exc
    if values.size == 0 or values.size % 3 or not np.all(np.isfinite(values)):
        raise QSMInputError(
            f"B0 direction file must hold 3 finite numbers per direction, got {len(tokens)}",
            str(p),
        )
    dirs = values.reshape(-1, 3)
    for d in dirs:
        if abs(float(np.linalg.norm(d)) - 1.0) > 0.05:
            raise QSMInputError(f"B0 direction {d.tolist()} is not a unit vector", str(p))
    return np.stack([normalise_b0_dir(d) for d in dirs])


def read_b0_dir_txt(path: str | os.PathLike) -> np.ndarray:
    """Read the one B0 direction of a text file of three numbers (see :func:`read_b0_dirs`,
    e.g. LPCNN's ``SubXXX_oriN.txt``); returns a float64 unit 3-vector."""
    dirs = read_b0_dirs(path)
    if dirs.shape != (1, 3):
        raise QSMInputError(
            f"B0 direction file must hold exactly 3 finite numbers, got {dirs.size}", str(path)
        )
    return dirs[0]


def load_lpcnn_orientations(subject_dir: str | os.PathLike) -> np.ndarray:
    """All B0 directions of one LPCNN subject folder, ordered by orientation number.

    ``subject_dir`` holds ``ori1/, ori2/, ...`` each with one ``*_oriN.txt`` file. Returns an
    (N, 3) float64 array of unit vectors (row n-1 = orientation n).
    """
    d = Path(subject_dir)
    if not d.is_dir():
        raise QSMInputError("LPCNN subject folder not found", str(d))
    found: list[tuple[int, Path]] = []
    for sub in d.iterdir():
        m = re.fullmatch(r"ori(\d+)", sub.name)
        if not (m and sub.is_dir()):
            continue
        txt = sorted(sub.glob(f"*ori{m.group(1)}.txt"))
        if len(txt) != 1:
            raise QSMInputError(
                f"expected one *ori{m.group(1)}.txt file, found {len(txt)}", str(sub)
            )
        found.append((int(m.group(1)), txt[0]))
    if not found:
        raise QSMInputError("no oriN/ folders with B0 direction files", str(d))
    found.sort()
    return np.stack([read_b0_dir_txt(p) for _, p in found])


def spread_b0_dirs(
    angle_deg: float = 25.0,
    axes: Sequence[Sequence[float]] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    neutral: Sequence[float] = (0.0, 0.0, 1.0),
) -> np.ndarray:
    """A well-spread orientation set: ``neutral``, then ``neutral`` rotated by +angle and
    -angle about each of ``axes`` (right-handed, degrees). Default: (5, 3) = neutral z and
    +-25 degrees about array axes 0 and 1."""
    b = np.asarray(neutral, dtype=np.float64)
    if b.shape != (3,) or np.linalg.norm(b) < 1e-9:
        raise QSMInputError(f"neutral B0 direction must be a nonzero 3-vector, got {neutral!r}")
    b = b / np.linalg.norm(b)
    dirs = [b]
    for ax in axes:
        for sign in (1.0, -1.0):
            dirs.append(rotation_matrix(ax, sign * angle_deg) @ b)
    return np.stack(dirs)


def tilt_deg(b0_dirs: np.ndarray, reference: Sequence[float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """Angle (degrees, 0..90) between each direction and ``reference``; sign-insensitive."""
    d = np.atleast_2d(np.asarray(b0_dirs, dtype=np.float64))
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    r = np.asarray(reference, dtype=np.float64)
    r = r / np.linalg.norm(r)
    return np.degrees(np.arccos(np.clip(np.abs(d @ r), 0.0, 1.0)))
