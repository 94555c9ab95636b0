"""NIfTI reading and atomic writing with clear errors."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import QSMInputError
from .atomic import atomic_path, nifti_extension, nifti_stem, writable_parent


@dataclass
class Volume:
    """An image array with its affine and the file it came from."""

    data: np.ndarray
    affine: np.ndarray
    path: str | None = None

    @property
    def voxel_size(self) -> np.ndarray:
        from ..physics.geometry import voxel_size_from_affine

        return voxel_size_from_affine(self.affine)

    @property
    def b0_dir(self) -> np.ndarray:
        from ..physics.geometry import b0_dir_from_affine

        return b0_dir_from_affine(self.affine, source=self.path)


def load_volume(path: str | os.PathLike, *, dtype=np.float32, ndim: int | None = 3) -> Volume:
    """Read a NIfTI file; raise :class:`QSMInputError` naming the file on any problem.

    A trailing singleton 4th axis is dropped when ``ndim == 3``.
    """
    import nibabel as nib

    p = Path(path)
    if not p.exists():
        raise QSMInputError("file not found", str(p))
    try:
        img = nib.load(str(p))
        data = np.asarray(img.dataobj)
    except Exception as exc:  # nibabel raises many exception types for broken files
        raise QSMInputError(f"cannot read as NIfTI ({exc})", str(p)) from exc
    if ndim == 3 and data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if ndim is not None and data.ndim != ndim:
        raise QSMInputError(f"expected a {ndim}-D image, got shape {data.shape}", str(p))
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    return Volume(data=data, affine=np.asarray(img.affine, dtype=np.float64), path=str(p))


@dataclass(frozen=True)
class ImageHeader:
    """Shape and affine (mm) of a NIfTI read from its header; :meth:`data` reads the voxels."""

    shape: tuple[int, ...]
    affine: np.ndarray
    image: Any
    path: str

    def data(self, dtype=np.float32) -> np.ndarray:
        """The voxel array in :attr:`shape` (raises QSMInputError naming the file)."""
        try:
            return np.asarray(self.image.dataobj, dtype=dtype).reshape(self.shape)
        except Exception as exc:  # nibabel raises many exception types for broken files
            raise QSMInputError(f"cannot read the image data ({exc})", self.path) from exc


def read_header(path: str | os.PathLike) -> ImageHeader:
    """Shape and affine of a NIfTI without reading its data; a trailing singleton 4th axis is
    dropped from the shape. Raise :class:`QSMInputError` naming the file when unreadable."""
    import nibabel as nib

    p = str(path)
    try:
        img = nib.load(p)
        shape = tuple(int(n) for n in img.shape)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises many exception types for broken files
        raise QSMInputError(f"cannot read as NIfTI ({exc})", p) from exc
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    return ImageHeader(shape=shape, affine=affine, image=img, path=p)


def save_volume(
    path: str | os.PathLike,
    data: np.ndarray,
    affine: np.ndarray,
    *,
    dtype=np.float32,
    sidecar: dict[str, Any] | None = None,
) -> Path:
    """Write a NIfTI atomically (temporary file, then rename); optionally a JSON sidecar."""
    import nibabel as nib

    p = writable_parent(path)
    arr = np.asarray(data)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm", "sec")
    suffix = nifti_extension(p) or ".nii"
    with atomic_path(p, suffix) as tmp:
        nib.save(img, tmp)
    if sidecar is not None:
        write_json(sidecar_path(p), sidecar)
    return p


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar beside a NIfTI (or any) file: ``<folder>/<nifti_stem>.json``."""
    p = Path(path)
    return p.with_name(nifti_stem(p) + ".json")


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON atomically (numpy scalars and arrays converted)."""

    def default(o):
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"not JSON serialisable: {type(o)}")

    p = writable_parent(path)
    text = json.dumps(obj, indent=2, default=default) + "\n"
    with atomic_path(p, ".json") as tmp:
        Path(tmp).write_text(text)
    return p


def load_first_volume(path: str | os.PathLike, role: str = "image") -> tuple[Volume, int]:
    """Read a 3-D image, or the first volume (echo) of a 4-D one.

    Returns ``(volume, n_volumes)``: 3-D float32 data and the number of volumes in the file (1
    for 3-D). Errors name the file; the affine must not be sheared (FSL and the registration
    need orthogonal voxel axes).
    """
    vol = load_volume(path, ndim=None)
    data = vol.data
    if data.ndim == 4:
        n = int(data.shape[3])
        if n < 1:
            raise QSMInputError(f"{role} has no volumes (shape {data.shape})", vol.path)
        vol.data = np.ascontiguousarray(data[..., 0])
    elif data.ndim == 3:
        n = 1
    else:
        raise QSMInputError(
            f"{role} must be a 3-D image or 4-D (echoes last), got shape {data.shape}", vol.path
        )
    if min(vol.data.shape) < 2:
        raise QSMInputError(f"{role} is too small: shape {vol.data.shape}", vol.path)
    from ..physics.geometry import rotation_from_affine

    rotation_from_affine(vol.affine, source=vol.path)
    return vol, n
