"""The on-disk training patch-set format ``qsmflow-patches``: writer and checked reader.

numpy only (no torch import). The patch grid is :mod:`qsmflow.training.patch_grid`.

On-disk format ``qsmflow-patches`` version 1
---------------------------------------------
A folder holding one training pair per (orientation, patch origin), in plain ``.npy`` files (C
order, native byte order as recorded in each header) so that a torch ``Dataset`` can open them with
``np.load(..., mmap_mode="r")`` and index row ``i`` of every file:

=============== ============ ======= ==================================================
file            shape        dtype   content
=============== ============ ======= ==================================================
field.npy       (N, P, P, P) float32 local field of the row's orientation, ppm of B0,
                                     in the reference frame
chi.npy         (N, P, P, P) float32 COSMOS susceptibility, ppm, reference frame
mask.npy        (N, P, P, P) uint8   brain mask (0/1), reference frame
b0_dir.npy      (N, 3)       float32 B0 direction of the row's orientation, unit vector
                                     in the reference array axes
orientation.npy (N,)         int16   index of the orientation (0 .. K-1)
origin.npy      (N, 3)       int32   voxel index of the patch corner (lowest index) in
                                     the reference grid
patches.json    -            -       metadata (below)
=============== ============ ======= ==================================================

Rows are orientation-major: rows ``k*n .. (k+1)*n - 1`` belong to orientation ``k`` and every
orientation uses the same ``n`` origins (in the same order), so ``chi``/``mask`` rows repeat
once per orientation (simple, independent rows for a Dataset at the cost of K copies on disk).

``patches.json`` keys: ``format`` ("qsmflow-patches"), ``version`` (1), ``patch_size``,
``stride``, ``min_mask_fraction``, ``volume_shape`` (reference grid), ``voxel_size_mm``,
``units`` (per file), ``count`` (N), ``n_orientations`` (K), ``orientation_counts`` (K
integers), ``b0_dirs`` (K unit vectors), ``files`` (name -> shape and dtype),
``normalisation`` (``field`` and ``chi``: ``mean``, ``std`` (population, ddof 0) and ``count``
over the mask voxels of all N patches, computed in float64; a voxel covered by several patches
counts once per patch), ``sources`` (free-form provenance dict) and ``created_by``.

Writing is atomic (:func:`qsmflow.io.atomic.atomic_dir`): everything goes into a hidden
temporary sibling folder (``.tmp-XXXX``), which becomes the final folder only when complete; on
any error it is removed. Patches are extracted and appended to the files a few at a time, so
memory stays far below the size of the set. An existing empty folder is simply replaced; an
existing non-empty one only with ``overwrite=True``: the old folder is first renamed aside, the
new one renamed in, and the old one deleted, so a reader sees either the complete old set or the
complete new set (or, for an instant, no folder), never a half-written one. A process killed
outright (SIGKILL, power loss) can leave a hidden ``.tmp-`` folder behind; it is never mistaken
for a patch set and may be deleted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import QSMInputError
from ..io.atomic import atomic_dir
from ..io.nifti import write_json
from .patch_grid import (
    MIN_MASK_FRACTION,
    MIN_PATCH_SIZE,
    PATCH_SIZE,
    STRIDE,
    RunningStats,
    check_grid_params,
    extract_patches,
    patch_origins,
)

FORMAT_NAME = "qsmflow-patches"
FORMAT_VERSION = 1
META_FILE = "patches.json"

#: file name -> (dtype, shape tail after N as a function of the patch size)
_ARRAY_FILES: dict[str, tuple[np.dtype, str]] = {
    "field": (np.dtype(np.float32), "patch"),
    "chi": (np.dtype(np.float32), "patch"),
    "mask": (np.dtype(np.uint8), "patch"),
    "b0_dir": (np.dtype(np.float32), "vec"),
    "orientation": (np.dtype(np.int16), "scalar"),
    "origin": (np.dtype(np.int32), "vec"),
}

_UNITS = {
    "field": "ppm (local field / B0), reference frame",
    "chi": "ppm, reference frame",
    "mask": "0/1",
    "b0_dir": "unit vector in the reference array axes",
    "orientation": "index into b0_dirs",
    "origin": "voxel index of the patch corner in the reference grid",
}

_CHUNK = 8  # patches extracted at a time while writing (bounds memory to ~8 MiB per 64^3 array)


def _plain(o: Any) -> Any:
    """JSON fallback: numpy arrays and scalars as Python values, paths as strings."""
    if isinstance(o, (np.ndarray, np.generic)):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _check_voxel_size(voxel_size: float | Sequence[float]) -> list[float]:
    v = np.asarray(voxel_size, dtype=np.float64)
    if v.ndim == 0:
        v = np.repeat(v, 3)
    if v.shape != (3,) or not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise QSMInputError(f"voxel_size must be 1 or 3 positive numbers (mm), got {voxel_size!r}")
    return [float(x) for x in v]


def _validate_pair_inputs(
    field_ppm: Sequence[np.ndarray] | np.ndarray,
    chi_ppm: np.ndarray,
    mask: np.ndarray,
    b0_dirs: np.ndarray | Sequence[Sequence[float]],
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(field_ppm, np.ndarray) and field_ppm.ndim != 4:
        raise QSMInputError(
            "field_ppm must be a list of 3-D local fields (one per orientation) or a 4-D "
            f"array (orientation, x, y, z), got an array of shape {field_ppm.shape}"
        )
    fields = [np.asarray(f) for f in field_ppm]
    if not fields:
        raise QSMInputError("field_ppm is empty: need at least one orientation")
    chi = np.asarray(chi_ppm)
    if chi.ndim != 3:
        raise QSMInputError(f"chi_ppm must be 3-D, got shape {chi.shape}")
    shape = chi.shape
    m = np.asarray(mask)
    if m.shape != shape:
        raise QSMInputError(f"mask grid {m.shape} does not match chi_ppm grid {shape}")
    if m.dtype != bool:
        if np.iscomplexobj(m) or not (np.issubdtype(m.dtype, np.number) and np.all(np.isfinite(m))):
            raise QSMInputError("mask must be real and finite (0 = outside, non-zero = inside)")
        m = m != 0
    if not m.any():
        raise QSMInputError("mask is empty (no voxel is set)")
    for name, arr in [("chi_ppm", chi)] + [(f"field_ppm[{k}]", f) for k, f in enumerate(fields)]:
        if arr.shape != shape:
            raise QSMInputError(f"{name} grid {arr.shape} does not match chi_ppm grid {shape}")
        if np.iscomplexobj(arr) or not np.issubdtype(arr.dtype, np.number):
            raise QSMInputError(f"{name} must be real-valued, got dtype {arr.dtype}")
        if not np.all(np.isfinite(arr)):
            raise QSMInputError(f"{name} has {int(np.sum(~np.isfinite(arr)))} NaN/inf voxel(s)")
    b = np.asarray(b0_dirs, dtype=np.float64)
    if b.ndim == 1 and b.shape == (3,) and len(fields) == 1:
        b = b[None, :]
    if b.shape != (len(fields), 3):
        raise QSMInputError(
            f"b0_dirs must have shape ({len(fields)}, 3) (one unit vector per orientation), "
            f"got {b.shape}"
        )
    if not np.all(np.isfinite(b)):
        raise QSMInputError("b0_dirs contains NaN/inf")
    norms = np.linalg.norm(b, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > 1e-3)
    if bad.size:
        raise QSMInputError(
            f"b0_dirs[{int(bad[0])}] is not a unit vector (norm {norms[bad[0]]:.6g})"
        )
    return fields, chi, m, b / norms[:, None]


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _NpyStream:
    """Write the (N, P, P, P) voxel arrays row block by row block into ``.npy`` files.

    Each file gets a version-1.0 ``.npy`` header for its full shape, then C-order data
    appended in call order; on exit the row counts are checked and the files fsynced.
    """

    names = ("field", "chi", "mask")

    def __init__(self, folder: Path, shapes: dict[str, tuple[int, ...]]) -> None:
        self.folder, self.shapes = folder, shapes
        self.rows = dict.fromkeys(self.names, 0)
        self.fh: dict[str, Any] = {}

    def __enter__(self) -> _NpyStream:
        for name in self.names:
            fh = open(self.folder / f"{name}.npy", "wb")  # closed in __exit__
            self.fh[name] = fh
            header = {
                "descr": np.lib.format.dtype_to_descr(_ARRAY_FILES[name][0]),
                "fortran_order": False,
                "shape": self.shapes[name],
            }
            np.lib.format.write_array_header_1_0(fh, header)
        return self

    def write(self, **blocks: np.ndarray) -> None:
        for name, block in blocks.items():
            arr = np.ascontiguousarray(block, dtype=_ARRAY_FILES[name][0])
            self.fh[name].write(arr.tobytes())
            self.rows[name] += arr.shape[0]

    def __exit__(self, exc_type, exc, tb) -> None:
        for fh in self.fh.values():
            if exc_type is None:
                fh.flush()
                os.fsync(fh.fileno())
            fh.close()
        if exc_type is None:
            for name in self.names:
                if self.rows[name] != self.shapes[name][0]:  # pragma: no cover - internal bug
                    raise RuntimeError(f"{name}.npy: wrote {self.rows[name]} rows")


def _check_target(target: Path, overwrite: bool) -> None:
    """Refuse a target that is not a folder, or a non-empty one without ``overwrite``."""
    if not target.exists() and not target.is_symlink():
        return
    if not target.is_dir() or target.is_symlink():
        raise QSMInputError(
            "exists and is not a patch-set folder; refusing to replace it", str(target)
        )
    if any(target.iterdir()):
        if not overwrite:
            raise QSMInputError(
                "patch set already exists; pass overwrite=True to replace it", str(target)
            )


def write_patch_set(
    directory: str | os.PathLike,
    *,
    field_ppm: Sequence[np.ndarray] | np.ndarray,
    chi_ppm: np.ndarray,
    mask: np.ndarray,
    b0_dirs: np.ndarray | Sequence[Sequence[float]],
    voxel_size: float | Sequence[float],
    patch_size: int = PATCH_SIZE,
    stride: int = STRIDE,
    min_mask_fraction: float = MIN_MASK_FRACTION,
    sources: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Cut training pairs into patches and write them as a ``qsmflow-patches`` folder.

    ``field_ppm``: K local fields (ppm of B0), one per orientation, all resampled into the
    reference frame (list of 3-D arrays or a (K, X, Y, Z) array); ``chi_ppm``: COSMOS
    susceptibility (ppm) on the same grid; ``mask``: brain mask on that grid (non-zero =
    inside); ``b0_dirs``: (K, 3) B0 direction of each orientation as unit vectors in the
    reference array axes (renormalised; |norm - 1| <= 1e-3 required); ``voxel_size``: mm
    (recorded only). The origins come from :func:`patch_origins` on the reference mask and are
    shared by all orientations. ``sources``: JSON-serialisable provenance stored verbatim.

    The write is atomic (see the module docstring); an existing non-empty ``directory`` is
    replaced only with ``overwrite=True``. Returns the metadata written to ``patches.json``.
    Raises :class:`QSMInputError` on invalid input or when no patch passes the mask filter.
    """
    target = Path(directory)
    check_grid_params(patch_size, stride, min_mask_fraction)
    patch_size, stride = int(patch_size), int(stride)
    vox = _check_voxel_size(voxel_size)
    if sources is not None and not isinstance(sources, dict):
        raise QSMInputError(f"sources must be a dict or None, got {type(sources).__name__}")
    try:
        json.dumps(sources or {}, default=_plain)
    except (TypeError, ValueError) as exc:
        raise QSMInputError(f"sources is not JSON-serialisable ({exc})") from exc
    fields, chi, m, b0 = _validate_pair_inputs(field_ppm, chi_ppm, mask, b0_dirs)
    _check_target(target, overwrite)

    origins = patch_origins(chi.shape, patch_size, stride, m, min_mask_fraction)
    if len(origins) == 0:
        raise QSMInputError(
            f"no {patch_size}^3 patch has a mask fraction > {min_mask_fraction} "
            f"(mask has {int(m.sum())} voxels in a {chi.shape} grid)"
        )
    k_or, n = len(fields), len(origins)
    count = k_or * n
    p = patch_size

    with atomic_dir(target, fsync=True) as tmp:
        shapes = {
            "field": (count, p, p, p),
            "chi": (count, p, p, p),
            "mask": (count, p, p, p),
            "b0_dir": (count, 3),
            "orientation": (count,),
            "origin": (count, 3),
        }
        field_stats, chi_stats = RunningStats(), RunningStats()
        # stream the voxel arrays with plain sequential writes (no memmap: dirty mapped pages
        # would count as resident memory); rows are orientation-major
        with _NpyStream(tmp, shapes) as out:
            for k, f in enumerate(fields):
                for start in range(0, n, _CHUNK):
                    o = origins[start : start + _CHUNK]
                    chi_p = extract_patches(chi, o, p).astype(np.float32)
                    mask_p = extract_patches(m, o, p).astype(np.uint8)
                    f_p = extract_patches(f, o, p).astype(np.float32)
                    if k == 0:
                        chi_stats.add(chi_p, mask_p)
                    field_stats.add(f_p, mask_p)
                    out.write(field=f_p, chi=chi_p, mask=mask_p)

        small = {
            "b0_dir": np.repeat(b0.astype(np.float32), n, axis=0),
            "orientation": np.repeat(np.arange(k_or, dtype=np.int16), n),
            "origin": np.tile(origins.astype(np.int32), (k_or, 1)),
        }
        for name, arr in small.items():
            np.save(tmp / f"{name}.npy", arr)
            _fsync_file(tmp / f"{name}.npy")

        cs = chi_stats.result()  # each chi patch appears once per orientation
        cs["count"] = int(cs["count"]) * k_or
        meta: dict[str, Any] = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "patch_size": p,
            "stride": stride,
            "min_mask_fraction": float(min_mask_fraction),
            "volume_shape": [int(s) for s in chi.shape],
            "voxel_size_mm": vox,
            "units": dict(_UNITS),
            "count": count,
            "n_orientations": k_or,
            "orientation_counts": [n] * k_or,
            "b0_dirs": [[float(x) for x in row] for row in b0],
            "files": {
                name: {"shape": list(shapes[name]), "dtype": _ARRAY_FILES[name][0].name}
                for name in _ARRAY_FILES
            },
            "normalisation": {
                "field": field_stats.result(),
                "chi": cs,
                "computed_over": "mask voxels of all patches (float64, population std, ddof 0)",
            },
            "sources": sources or {},
            "created_by": _created_by(),
        }
        write_json(tmp / META_FILE, json.loads(json.dumps(meta, default=_plain)))
        _fsync_file(tmp / META_FILE)
    return meta


def _created_by() -> str:
    try:
        from .. import __version__
    except ImportError:  # pragma: no cover
        __version__ = "unknown"
    return f"qsmflow {__version__}"


@dataclass
class PatchSet:
    """A patch set read from disk (arrays memory-mapped read-only when ``mmap=True``).

    Shapes as in the module docstring: ``field``, ``chi`` (N, P, P, P) float32 ppm; ``mask``
    (N, P, P, P) uint8; ``b0_dir`` (N, 3) float32; ``orientation`` (N,) int16; ``origin``
    (N, 3) int32; ``meta`` the ``patches.json`` dict; ``path`` the folder.
    """

    path: Path
    meta: dict[str, Any]
    field: np.ndarray
    chi: np.ndarray
    mask: np.ndarray
    b0_dir: np.ndarray
    orientation: np.ndarray
    origin: np.ndarray

    def __len__(self) -> int:
        return int(self.field.shape[0])

    @property
    def patch_size(self) -> int:
        return int(self.meta["patch_size"])

    @property
    def n_orientations(self) -> int:
        return int(self.meta["n_orientations"])

    @property
    def normalisation(self) -> dict[str, Any]:
        return self.meta["normalisation"]


_REQUIRED_META = (
    "format",
    "version",
    "patch_size",
    "stride",
    "min_mask_fraction",
    "volume_shape",
    "voxel_size_mm",
    "units",
    "count",
    "n_orientations",
    "orientation_counts",
    "normalisation",
    "sources",
)


def _read_meta(folder: Path) -> dict[str, Any]:
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise QSMInputError(f"missing {META_FILE}; not a patch set", str(folder))
    try:
        with open(meta_path) as fh:
            meta = json.load(fh)
    except (OSError, ValueError) as exc:
        raise QSMInputError(f"cannot read metadata ({exc})", str(meta_path)) from exc
    src = str(meta_path)
    if not isinstance(meta, dict):
        raise QSMInputError("metadata is not a JSON object", src)
    if meta.get("format") != FORMAT_NAME:
        raise QSMInputError(f"format is {meta.get('format')!r}, expected {FORMAT_NAME!r}", src)
    if meta.get("version") != FORMAT_VERSION:
        raise QSMInputError(
            f"unsupported format version {meta.get('version')!r} (this qsmflow reads "
            f"version {FORMAT_VERSION})",
            src,
        )
    missing = [k for k in _REQUIRED_META if k not in meta]
    if missing:
        raise QSMInputError(f"metadata lacks key(s) {', '.join(missing)}", src)

    def _int(key: str, lo: int) -> int:
        v = meta[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise QSMInputError(f"{key} must be an integer >= {lo}, got {v!r}", src)
        return v

    _int("patch_size", MIN_PATCH_SIZE)
    _int("stride", 1)
    _int("count", 1)
    k = _int("n_orientations", 1)
    counts = meta["orientation_counts"]
    if (
        not isinstance(counts, list)
        or len(counts) != k
        or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in counts)
    ):
        raise QSMInputError(
            f"orientation_counts must list {k} non-negative integers, got {counts!r}", src
        )
    if sum(counts) != meta["count"]:
        raise QSMInputError(
            f"orientation_counts sum to {sum(counts)} but count is {meta['count']}", src
        )
    vs = meta["volume_shape"]
    if not (
        isinstance(vs, list)
        and len(vs) == 3
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in vs)
    ):
        raise QSMInputError(f"volume_shape must be 3 positive integers, got {vs!r}", src)
    norm = meta["normalisation"]
    for key in ("field", "chi"):
        st = norm.get(key) if isinstance(norm, dict) else None
        if not (
            isinstance(st, dict)
            and all(isinstance(st.get(s), (int, float)) for s in ("mean", "std"))
            and np.isfinite(st["mean"])
            and np.isfinite(st["std"])
            and st["std"] >= 0
        ):
            raise QSMInputError(f"normalisation.{key} must hold finite mean and std", src)
    return meta


def read_patch_set(directory: str | os.PathLike, mmap: bool = True) -> PatchSet:
    """Open a ``qsmflow-patches`` folder and check it thoroughly; see the module docstring.

    With ``mmap=True`` the voxel arrays are read-only ``np.memmap`` views (nothing is loaded
    until indexed), else they are read into memory. Checks format and version, the metadata
    keys, every file's presence, dtype and shape (N from ``count``, P from ``patch_size``), the
    orientation indices and per-orientation counts, the origins (inside ``volume_shape``) and
    the B0 unit vectors. Voxel values are not scanned. Raises :class:`QSMInputError` naming
    the folder or the offending file.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise QSMInputError("patch-set folder not found", str(folder))
    meta = _read_meta(folder)
    n, p, k = int(meta["count"]), int(meta["patch_size"]), int(meta["n_orientations"])
    tails = {"patch": (p, p, p), "vec": (3,), "scalar": ()}
    arrays: dict[str, np.ndarray] = {}
    for name, (dtype, tail) in _ARRAY_FILES.items():
        path = folder / f"{name}.npy"
        if not path.is_file():
            raise QSMInputError("missing array file", str(path))
        try:
            arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise QSMInputError(f"cannot read as .npy ({exc})", str(path)) from exc
        want = (n, *tails[tail])
        if arr.shape != want:
            raise QSMInputError(
                f"shape {arr.shape} does not match the metadata (expected {want})", str(path)
            )
        if arr.dtype != dtype:
            raise QSMInputError(f"dtype {arr.dtype} is not the expected {dtype}", str(path))
        arrays[name] = arr

    orient = np.asarray(arrays["orientation"])
    if orient.size and (orient.min() < 0 or orient.max() >= k):
        raise QSMInputError(
            f"orientation indices outside [0, {k - 1}]", str(folder / "orientation.npy")
        )
    counts = np.bincount(orient.astype(np.int64), minlength=k).tolist()
    if counts != list(meta["orientation_counts"]):
        raise QSMInputError(
            f"per-orientation counts {counts} differ from the metadata "
            f"{meta['orientation_counts']}",
            str(folder / "orientation.npy"),
        )
    origin = np.asarray(arrays["origin"]).astype(np.int64)
    vs = np.asarray(meta["volume_shape"])
    fits = np.where(vs >= p, origin + p <= vs, origin == 0)
    if np.any(origin < 0) or not np.all(fits):
        raise QSMInputError(
            f"patch origins outside the volume {tuple(vs.tolist())} for {p}^3 patches",
            str(folder / "origin.npy"),
        )
    b0 = np.asarray(arrays["b0_dir"], dtype=np.float64)
    if not np.all(np.isfinite(b0)) or np.any(np.abs(np.linalg.norm(b0, axis=1) - 1.0) > 1e-3):
        raise QSMInputError("B0 directions are not unit vectors", str(folder / "b0_dir.npy"))
    return PatchSet(path=folder, meta=meta, **arrays)
