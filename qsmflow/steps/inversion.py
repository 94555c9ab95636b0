"""Single-orientation dipole inversion step: local field (ppm) -> susceptibility (ppm).

``qsmflow invert`` and the pipeline's ``DipoleInversion`` node call :func:`invert_file`.
Methods: those of :data:`qsmflow.physics.inversion.METHODS` (options and defaults from
:func:`qsmflow.physics.inversion.method_options`) and the networks of
:data:`qsmflow.models.registry.MODELS` (isdu, spinet, lpcnn, qsmnet, deepqsm, xqsm; options
:data:`NETWORK_OPTIONS`, keywords of :func:`qsmflow.models.inference.invert_network`).
The B0 direction (unit vector in array axes) comes from the field's affine unless given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import QSMInputError
from ..io.nifti import load_volume, save_volume
from ..models.registry import ISDU_FAMILY, MODELS
from ..physics.inversion import METHODS, invert, methods_taking, resolve_options
from ..physics.kernel import normalise_b0_dir
from ..physics.validation import check_finite, check_same_affine, check_same_grid
from . import StepResult, sources
from .fieldmap import load_field_and_mask

#: The networks (qsmflow.models.registry.MODELS).
NETWORK_METHODS = tuple(MODELS)

#: Every inversion method: the physics ones and the networks.
INVERSION_METHODS = (*METHODS, *NETWORK_METHODS)

#: Options of the network inversions (keywords of qsmflow.models.inference.invert_network):
#: weights (checkpoint file; default for isdu: the shipped qsmflow/data/isdu_default.pt),
#: iterations (K) and shared_weights (bool) of the ISDU family, device (auto, cpu, cuda),
#: tile_size (voxels), halo (voxels), adapt (test-time adaptation steps, 0 = off; ISDU family),
#: adapt_lr (its Adam learning rate), crop_margin (voxels around the mask's bounding box that
#: inference runs on), check_geometry (data-driven nets refuse a tilted B0; false = run anyway).
NETWORK_OPTIONS = (
    "weights",
    "iterations",
    "shared_weights",
    "device",
    "tile_size",
    "halo",
    "adapt",
    "adapt_lr",
    "crop_margin",
    "check_geometry",
)

#: Options of the ISDU family only.
ISDU_ONLY_OPTIONS = ("iterations", "shared_weights", "adapt", "adapt_lr")

#: Torch devices the network inversions accept.
NETWORK_DEVICES = ("auto", "cpu", "cuda")

#: Value of the dipole kernel at k = 0 used by the physics methods (ISDU-QSMNet uses 1/3 and
#: records it through qsmflow.models.inference.network_sidecar).
KERNEL_K0 = 0.0


def check_network_options(
    options: Any, method: str = "isdu", source: str | None = None
) -> dict[str, Any]:
    """Return the options of network ``method`` as a dict; unknown keys or bad values raise
    QSMInputError naming ``source`` (e.g. the preset file)."""
    if not isinstance(options, Mapping):
        raise QSMInputError(f"inversion.options.{method} must be a table", source)
    opts = dict(options)
    unknown = sorted(set(opts) - set(NETWORK_OPTIONS))
    if unknown:
        raise QSMInputError(
            f"unknown {method} option(s) {', '.join(unknown)}; known: {', '.join(NETWORK_OPTIONS)}",
            source,
        )
    if method not in ISDU_FAMILY:
        isdu_only = [k for k in ISDU_ONLY_OPTIONS if opts.get(k) not in (None, 0)]
        if isdu_only:
            raise QSMInputError(
                f"option(s) {', '.join(isdu_only)} apply to isdu and spinet, not {method}", source
            )
    for key in ("iterations", "tile_size", "halo", "adapt", "crop_margin"):
        value = opts.get(key)
        low = 0 if key in ("halo", "adapt", "crop_margin") else 1
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise QSMInputError(f"{method} option {key} must be an integer, got {value!r}", source)
        if value is not None and value < low:
            raise QSMInputError(f"{method} option {key} must be >= {low}, got {value}", source)
    lr = opts.get("adapt_lr")
    if lr is not None and (
        isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < 1
    ):
        raise QSMInputError(f"{method} option adapt_lr must be in (0, 1), got {lr!r}", source)
    if opts.get("shared_weights") is not None and not isinstance(opts["shared_weights"], bool):
        raise QSMInputError(f"{method} option shared_weights must be true or false", source)
    if opts.get("device", "auto") not in NETWORK_DEVICES:
        raise QSMInputError(
            f"{method} option device must be auto, cpu or cuda, got {opts['device']!r}", source
        )
    if opts.get("check_geometry") is not None and not isinstance(opts["check_geometry"], bool):
        raise QSMInputError(f"{method} option check_geometry must be true or false", source)
    if opts.get("weights") is not None and not isinstance(opts["weights"], (str, os.PathLike)):
        raise QSMInputError(f"{method} option weights must be a file path", source)
    return opts


def _network(
    method: str,
    field: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    b0_dir: Sequence[float],
    options: Mapping[str, Any],
    float64: bool,
) -> tuple[np.ndarray, dict[str, Any], dict[str, Any]]:
    """Run network ``method``; returns chi (ppm), the effective options and the sidecar
    entries."""
    from ..models.inference import apply_thread_env, invert_network, network_sidecar

    opts = check_network_options(options, method)
    apply_thread_env()
    chi, info = invert_network(
        field, mask, voxel_size, b0_dir, method=method, float64=float64, **opts
    )
    keys = [k for k in NETWORK_OPTIONS if k != "check_geometry"]
    used = {key: info[key] for key in (*keys, "pad_multiple")}
    used["check_geometry"] = opts.get("check_geometry", True)
    return chi, {**used, "float64": float64}, network_sidecar(info)


def _weights_volume(path: str | os.PathLike, method: str, vol, mask: np.ndarray) -> np.ndarray:
    """The magnitude weights image of ``path`` as one 3-D volume on the field's grid.

    A 4-D (multi-echo) magnitude is combined as the root-mean-square over echoes (as SEPIA).
    """
    takers = methods_taking("weights")
    if method not in takers:
        raise QSMInputError(
            f"a weights image applies to {', '.join(takers)} only, not {method}", str(path)
        )
    wvol = load_volume(path, ndim=None)
    data = np.asarray(wvol.data, dtype=np.float32)
    if data.ndim == 4:
        data = np.sqrt(np.mean(np.square(data), axis=3))
    elif data.ndim != 3:
        raise QSMInputError(f"weights image must be 3-D or 4-D, got shape {data.shape}", wvol.path)
    check_same_grid(data.shape, vol.data.shape, f"weights vs {vol.path}", wvol.path)
    check_same_affine(wvol.affine, vol.affine, f"weights vs {vol.path}", wvol.path)
    data = check_finite(data, "weights", wvol.path, mask=mask)
    if np.any(data[mask] < 0):
        raise QSMInputError("weights (magnitude) must be >= 0 inside the mask", wvol.path)
    return data


def invert_file(
    field: str | os.PathLike,
    mask: str | os.PathLike,
    output: str | os.PathLike,
    *,
    method: str = "tkd",
    options: Mapping[str, Any] | None = None,
    b0_dir: Sequence[float] | None = None,
    weights_image: str | os.PathLike | None = None,
    float64: bool = False,
) -> StepResult:
    """Invert the local field ``field`` (3-D, ppm of B0) inside ``mask`` to susceptibility.

    ``method`` is one of :data:`INVERSION_METHODS`; ``options`` are its keyword options
    (physics methods: :func:`qsmflow.physics.inversion.method_options`; networks:
    :data:`NETWORK_OPTIONS`); an option the method does not take is an error. ``b0_dir`` (array
    axes) overrides the direction from the affine. ``weights_image`` (methods taking
    ``weights``: ndi data weights, tv edge weights): the magnitude, 3-D or 4-D (echoes combined
    as their root-mean-square). ``float64`` computes in float64 and writes float64. Writes chi
    (ppm, 0 outside the mask) to ``output``. Value ``b0_dir``: the unit B0 direction used.
    """
    if method not in INVERSION_METHODS:
        raise QSMInputError(
            f"unknown inversion method {method!r}; choose from {', '.join(INVERSION_METHODS)}"
        )
    vol, mask_arr = load_field_and_mask(field, mask)
    data = check_finite(vol.data, "local field", vol.path, mask=mask_arr)
    b0 = vol.b0_dir if b0_dir is None else normalise_b0_dir(b0_dir)
    dtype = np.float64 if float64 else np.float32
    if method in NETWORK_METHODS:
        if weights_image is not None:
            raise QSMInputError(
                f"a weights image applies to ndi and tv only ({method} takes weights=FILE)"
            )
        chi, used, extra = _network(
            method, data, mask_arr, vol.voxel_size, b0, options or {}, float64
        )
    else:
        net_only = [k for k in options or {} if k in NETWORK_OPTIONS and not methods_taking(k)]
        if net_only:
            raise QSMInputError(f"option {', '.join(net_only)} applies to the networks only")
        used = resolve_options(method, options)
        if weights_image is not None:
            used["weights"] = _weights_volume(weights_image, method, vol, mask_arr)
        chi = invert(method, data, mask_arr, vol.voxel_size, b0, dtype=dtype, **used)
        used = {k: v for k, v in used.items() if k != "weights"}
        used["dtype"] = np.dtype(dtype).name
        extra = {"DipoleKernelK0": KERNEL_K0}
    sidecar = {
        "Sources": sources(field, mask, weights_image),
        "Units": "ppm",
        "InversionMethod": method,
        "InversionOptions": used,
        "B0Direction": [float(x) for x in b0],
        "B0DirectionSource": "affine" if b0_dir is None else "given",
        "VoxelSizeMM": [float(x) for x in vol.voxel_size],
        **extra,
    }
    out = save_volume(output, chi, vol.affine, dtype=dtype, sidecar=sidecar)
    return StepResult({"chi": out}, sidecar, {"b0_dir": [float(x) for x in b0]})
