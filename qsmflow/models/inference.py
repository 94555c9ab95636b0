"""Whole-volume network inference: padding, dipole kernel, device, optional tiling.

:func:`predict_volume` turns a local field (ppm) and its mask on any grid into a
susceptibility map (ppm) with any model of the zoo (:mod:`qsmflow.models.registry`), with the
conventions of the trained model. Fusing, tiling and cropping below apply to ISDU-family models
with the WideResNet denoiser (finite receptive field); the other models run on the whole padded
array, and data-driven ones first check that the field's geometry is one they were trained for
(``check_geometry``):

* **Padding.** Every axis is zero-padded to a multiple of ``pad_multiple`` (16; the padding is
  split between both ends, ``(p - n) // 2`` voxels before and the rest after) and the result is
  cropped back. The field is set to zero outside the mask first (the model was trained on
  masked fields, phi = M F^-1 D F chi). With ``pad_multiple=1`` nothing is padded. The padding
  changes the FFT grid (the data-consistency step treats the padded box as periodic), so a
  padded and an unpadded run differ slightly near the box faces.
* **Kernel.** :func:`~qsmflow.models.kernels.isdu_kernel` on the padded grid: D(k) = 1/3 -
  (k.b)^2/|k|^2 with k = fftfreq(N, d=voxel) (cycles/mm), any voxel size and B0 direction, and
  D(0) = 1/3 as the authors' kernel (for even sizes, and every padded size with
  ``pad_multiple`` even is even, this is the authors' k grid).
* **Execution.** Eval mode (BatchNorm running statistics, no dropout) and ``torch.no_grad``;
  the model's training flag is restored afterwards. ``device="auto"`` picks CUDA when
  available, else the CPU; the model is moved there (in place, as ``nn.Module.to``) and stays.
  The output is masked and returned as float32 ppm on the input grid.
* **Fused denoisers** (``fuse=True``, the default): every denoiser runs as a
  :class:`~qsmflow.models.wideresnet.FusedWideResNet`, BatchNorm folded into the convolutions
  and the ``channels_last_3d`` memory layout: the same function up to float rounding (~1e-6
  relative), about 2x faster on the CPU. The model itself is not changed.
* **Tiling** (``tile_size``): bounded memory for large volumes. Each denoiser application runs
  on overlapping tiles: cubes of ``tile_size`` voxels (smaller at the far faces), each
  extended by ``halo`` voxels on every side that lies inside the volume; only the tile's own
  voxels are kept. The WideResNet's receptive field is 35^3 voxels (17 3^3 convolutions, radius
  17) and in eval mode BatchNorm is a fixed per-channel affine map, so with ``halo >= 17`` the
  tiled result equals the untiled one up to float rounding (tested to 1e-5 ppm). The FFT-based
  data-consistency step always sees the whole (padded) volume; it is cheap in memory. Cost:
  every tile computes its halo too, e.g. 160 voxels as tiles of 80 with halo 20 are 2 x 100
  voxels per axis, 1.95x the convolution work in 3-D. Axes no longer than ``tile_size`` are
  not split (no halo cost on them).

* **Cropping** (``crop_margin``, default :data:`CROP_MARGIN` = 8 voxels): the denoisers run
  only on the mask's bounding box grown by ``crop_margin`` + r voxels (r the receptive radius,
  17), see :class:`CroppedDenoiser`: exact values up to ``crop_margin`` voxels beyond the
  box, the far-field constant of the network elsewhere; the data-consistency FFTs still cover
  the whole (padded) array. Measured against the whole-array run on the realistic 1 mm head
  (164x205x205, shipped weights), relative error inside the mask: 4.0e-3 at margin 0,
  1.2e-3 at 4, 7.9e-4 at 8. It saves time where the field of view is large around the brain
  (whole-head or neck coverage); a box that covers the array changes nothing.
  ``crop_margin=None`` (``--crop-margin -1``) runs the whole array. Cropping the *field* as
  well (a smaller FFT box) was tried and rejected: the data-consistency step's periodic box
  then moves the result by 2.5 % at a 24-voxel margin.

Memory, untiled, float32, per denoiser pass: about 3-4 feature maps of 32 channels, i.e.
~0.5 GB per million voxels (160^3 ~ 2 GB); tiles of T with halo H need the same for
(T + 2H)^3 voxels.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import QSMInputError
from ..physics.kernel import check_voxel_size, normalise_b0_dir
from ..physics.validation import check_mask
from .adapt import ADAPT_LR
from .checkpoints import load_model
from .isdu import ISDUQSMNet
from .kernels import ISDU_KERNEL_K0, isdu_kernel
from .registry import ISDU_FAMILY, MODELS
from .wideresnet import FusedWideResNet, WideResNet

__all__ = [
    "DEFAULT_WEIGHTS",
    "NO_DEFAULT_WEIGHTS",
    "CROP_MARGIN",
    "RECEPTIVE_RADIUS",
    "CroppedDenoiser",
    "TiledDenoiser",
    "apply_thread_env",
    "cropped_denoisers",
    "file_sha256",
    "mask_box",
    "fused_denoisers",
    "has_fast_path",
    "invert_network",
    "network_sidecar",
    "load_inference_model",
    "pad_widths",
    "predict_volume",
    "receptive_radius",
    "resolve_device",
    "resolve_weights",
    "tiled_denoisers",
]

#: Receptive-field radius (voxels) of the default WideResNet (17 3^3 convolutions).
RECEPTIVE_RADIUS = 17
#: Default margin (voxels) around the mask's bounding box that inference runs on.
CROP_MARGIN = 8

log = logging.getLogger(__name__)


def receptive_radius(model: ISDUQSMNet) -> int:
    """Receptive-field radius of the model's denoisers: 2 n_blocks + 1 3^3 convolutions."""
    return 2 * int(model.config.get("n_blocks", 8)) + 1


def has_fast_path(model: nn.Module) -> bool:
    """Whether ``model`` is an ISDU-family model with WideResNet denoisers, for which inference
    can fuse, tile and crop (a finite receptive field, BatchNorm to fold)."""
    return isinstance(model, ISDUQSMNet) and model.denoiser_name == "wideresnet"


def resolve_device(
    device: str | torch.device = "auto", local_rank: int | None = None
) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...

    ``local_rank`` (a distributed trainer's process on this node) picks the GPU where the name
    gives none (``"auto"``, ``"cuda"``). Asking for CUDA where none is available raises
    QSMInputError.
    """
    if isinstance(device, str) and device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise QSMInputError(f"unknown device {device!r} (use auto, cpu or cuda)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise QSMInputError(f"device {device!r} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is None and local_rank is not None:
        dev = torch.device("cuda", int(local_rank))
    return dev


def pad_widths(shape: Sequence[int], multiple: int) -> list[tuple[int, int]]:
    """(before, after) zero padding per axis to the next multiple of ``multiple``."""
    out = []
    for n in shape:
        total = -int(n) % int(multiple)
        out.append((total // 2, total - total // 2))
    return out


class _DenoiserWrapper(nn.Module):
    """A module standing in for one of ``ISDUQSMNet.denoisers``: exposes what the model reads
    from a denoiser (``gen``, ``lambda_val``, ``p``) as the wrapped network's own objects."""

    net: nn.Module

    @property
    def gen(self) -> nn.Module:
        return self.net.gen

    @property
    def lambda_val(self) -> nn.Parameter:
        return self.net.lambda_val

    @property
    def p(self) -> nn.Parameter:
        return self.net.p


class TiledDenoiser(_DenoiserWrapper):
    """Runs a denoiser on overlapping tiles; drop-in for one of ``ISDUQSMNet.denoisers``.

    ``forward(v)`` with v (B, C, X, Y, Z) equals ``net(v)`` (eval mode, ``halo`` >= the
    receptive-field radius) while holding only one extended tile's feature maps at a time.
    Exposes what :class:`ISDUQSMNet` reads from a denoiser: ``gen``, ``lambda_val`` and ``p``
    (the wrapped network's own objects, so parameters are shared, not copied).
    """

    def __init__(self, net: nn.Module, tile_size: int, halo: int = 20) -> None:
        super().__init__()
        if int(tile_size) < 1 or int(halo) < 0:
            raise QSMInputError(f"need tile_size >= 1 and halo >= 0, got {tile_size}, {halo}")
        self.net = net
        self.tile_size = int(tile_size)
        self.halo = int(halo)

    def tiles(self, shape: Sequence[int]) -> Iterator[tuple[tuple[slice, ...], ...]]:
        """(core, extended, core-within-extended) slices of every tile of a spatial shape."""
        t, h = self.tile_size, self.halo
        per_axis = []
        for n in shape:
            axis = []
            for s in range(0, int(n), t):
                e0, e1 = max(s - h, 0), min(s + t + h, int(n))
                stop = min(s + t, int(n))
                axis.append((slice(s, stop), slice(e0, e1), slice(s - e0, stop - e0)))
            per_axis.append(axis)
        for combo in itertools.product(*per_axis):
            yield tuple(tuple(c[i] for c in combo) for i in range(3))

    def forward(self, v: Tensor) -> Tensor:
        spatial = tuple(v.shape[2:])
        if all(n <= self.tile_size for n in spatial):
            return self.net(v)
        out: Tensor | None = None
        lead = (slice(None), slice(None))
        for core, ext, inner in self.tiles(spatial):
            y = self.net(v[lead + ext])
            if out is None:
                out = y.new_empty((v.shape[0], y.shape[1], *spatial))
            out[lead + core] = y[lead + inner]
        assert out is not None
        return out


class CroppedDenoiser(_DenoiserWrapper):
    """Runs a denoiser on a box around the brain only; drop-in for one of ``model.denoisers``.

    The denoiser input outside the mask is one constant per channel (the unrolled model masks
    x before each denoiser), so far from the mask the output is one constant vector too:
    ``c = net(constant)``, computed on a (2 r + 1)^3 cube (r = the receptive radius). The
    network runs on ``box`` only; the voxels at least r inside the box's faces (or on the
    array's own faces) are exact, the rest of the array gets ``c``. The data consistency still
    sees the whole array. What differs from the whole-array run is the zone within r of the
    array faces (there zero padding makes the full run deviate from ``c``), far from the brain.
    """

    def __init__(self, net: nn.Module, box: tuple[slice, ...], radius: int) -> None:
        super().__init__()
        self.net = net
        self.box = tuple(box)
        self.radius = int(radius)

    def forward(self, v: Tensor) -> Tensor:
        spatial = tuple(v.shape[2:])
        lead = (slice(None), slice(None))
        r = self.radius
        # the constant input outside the mask: the value at the array corner, outside the box
        corner = tuple(0 if b.start > 0 else n - 1 for b, n in zip(self.box, spatial, strict=True))
        v0 = v[(slice(None), slice(None), *corner)]
        cube = v0[:, :, None, None, None].expand(*v0.shape, *(2 * r + 1,) * 3).contiguous()
        c = self.net(cube)[:, :, r, r, r]
        y = self.net(v[lead + self.box])
        out = c[:, :, None, None, None].expand(v.shape[0], y.shape[1], *spatial).contiguous()
        keep_in_y, keep_in_out = [], []
        for b, n, m in zip(self.box, spatial, y.shape[2:], strict=True):
            lo = 0 if b.start == 0 else r
            hi = m if b.stop == n else m - r
            keep_in_y.append(slice(lo, hi))
            keep_in_out.append(slice(b.start + lo, b.start + hi))
        out[lead + tuple(keep_in_out)] = y[lead + tuple(keep_in_y)]
        return out


@contextlib.contextmanager
def cropped_denoisers(
    model: ISDUQSMNet, box: tuple[slice, ...] | None, radius: int
) -> Iterator[ISDUQSMNet]:
    """Temporarily wrap every ``model.denoisers[i]`` in a :class:`CroppedDenoiser` (``box``
    None: nothing changes)."""
    if box is None:
        yield model
        return
    originals = list(model.denoisers)
    try:
        for i, net in enumerate(originals):
            model.denoisers[i] = CroppedDenoiser(net, box, radius)
        yield model
    finally:
        for i, net in enumerate(originals):
            model.denoisers[i] = net


@contextlib.contextmanager
def tiled_denoisers(
    model: ISDUQSMNet, tile_size: int | None, halo: int = 20
) -> Iterator[ISDUQSMNet]:
    """Temporarily replace every ``model.denoisers[i]`` by a :class:`TiledDenoiser`.

    The original modules are put back on exit, also when the body raises. ``tile_size=None``
    changes nothing.
    """
    if tile_size is None:
        yield model
        return
    originals = list(model.denoisers)
    wrappers = [TiledDenoiser(net, tile_size, halo) for net in originals]
    try:
        for i, w in enumerate(wrappers):
            model.denoisers[i] = w
        yield model
    finally:
        for i, net in enumerate(originals):
            model.denoisers[i] = net


@contextlib.contextmanager
def fused_denoisers(model: ISDUQSMNet, enabled: bool = True) -> Iterator[ISDUQSMNet]:
    """Temporarily replace every ``model.denoisers[i]`` by its :class:`FusedWideResNet`.

    For inference (eval mode, no gradients): BatchNorm folded, channels_last_3d. The original
    modules are put back on exit, also when the body raises; ``enabled=False`` changes
    nothing, and so does a model whose denoisers are not plain :class:`WideResNet` modules.
    """
    originals = list(model.denoisers)
    if not enabled or not all(isinstance(net, WideResNet) for net in originals):
        yield model
        return
    try:
        for i, net in enumerate(originals):
            model.denoisers[i] = FusedWideResNet(net)
        yield model
    finally:
        for i, net in enumerate(originals):
            model.denoisers[i] = net


def predict_volume(
    model: nn.Module,
    phi_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    b0_dir: Sequence[float],
    *,
    device: str | torch.device = "auto",
    tile_size: int | None = None,
    halo: int = 20,
    pad_multiple: int = 16,
    dtype: torch.dtype = torch.float32,
    fuse: bool = True,
    crop_margin: int | None = CROP_MARGIN,
    check_geometry: bool = True,
) -> np.ndarray:
    """Susceptibility (ppm) of a whole local field with an ISDU-QSMNet model.

    Parameters
    ----------
    model : any model of :mod:`qsmflow.models.registry` (e.g. from
        :func:`~qsmflow.models.checkpoints.load_model`).
    phi_ppm : local field (X, Y, Z), ppm of B0; finite inside the mask (zeroed outside).
    mask : (X, Y, Z) bool or numeric (> 0.5 is inside); must not be empty.
    voxel_size : mm per array axis; b0_dir : B0 direction in array axes (normalised here).
    device : "auto" (CUDA when available), "cpu", "cuda", ... (the model is moved there).
    tile_size : None (whole volume at once) or the tile edge in voxels for the denoisers.
    halo : tile overlap in voxels per side (>= 17 for a result equal to the untiled one).
    pad_multiple : pad every axis to a multiple of this (16; 1 = no padding); raised to a
        multiple of the model's ``size_multiple`` (the U-Nets need 16).
    dtype : float32 or float64 for the field, kernel and data-consistency step; the denoisers
        run in their parameters' dtype (``model.double()`` for a float64 network).
    fuse : run the denoisers with BatchNorm folded and channels_last_3d (faster, equal up to
        float rounding; see :func:`fused_denoisers`).
    crop_margin : exact denoiser output up to this many voxels beyond the mask's bounding box,
        the network's far-field constant elsewhere (module docstring, "Cropping"); None = run
        the denoisers on the whole array. WideResNet denoisers only (ignored otherwise).
    check_geometry : let a data-driven model refuse a B0 direction it was not trained for
        (:meth:`~qsmflow.models.datadriven.DataDrivenQSM.check_geometry`).

    Returns
    -------
    chi (X, Y, Z) float32 ppm, 0 outside the mask. See the module docstring for the
    conventions (padding, kernel, tiling).
    """
    if not isinstance(model, nn.Module):
        raise QSMInputError(f"model must be a torch module, got {type(model).__name__}")
    phi = np.asarray(phi_ppm)
    if phi.ndim != 3 or min(phi.shape) < 1:
        raise QSMInputError(f"field must be a 3-D array, got shape {phi.shape}")
    if not np.issubdtype(phi.dtype, np.floating) and not np.issubdtype(phi.dtype, np.integer):
        raise QSMInputError(f"field must be real numbers (ppm), got dtype {phi.dtype}")
    m = check_mask(mask, phi.shape)
    bad = ~np.isfinite(phi) & m
    if bad.any():
        raise QSMInputError(f"field has {int(bad.sum())} NaN/inf voxel(s) inside the mask")
    vox = check_voxel_size(voxel_size)
    b0 = normalise_b0_dir(b0_dir)
    if tile_size is not None and int(tile_size) < 1:
        raise QSMInputError(f"tile_size must be >= 1 or None, got {tile_size}")
    if int(halo) < 0:
        raise QSMInputError(f"halo must be >= 0, got {halo}")
    if int(pad_multiple) < 1:
        raise QSMInputError(f"pad_multiple must be >= 1, got {pad_multiple}")
    if dtype not in (torch.float32, torch.float64):
        raise QSMInputError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    dev = resolve_device(device)
    fast = has_fast_path(model)
    if tile_size is not None and not fast:
        raise QSMInputError("tiling needs WideResNet denoisers (a finite receptive field)")
    geometry_check = getattr(model, "check_geometry", None)
    if check_geometry and callable(geometry_check):
        geometry_check(vox, b0)
    size_multiple = int(getattr(model, "size_multiple", 1))
    pad_multiple = math.lcm(int(pad_multiple), size_multiple)
    if tile_size is not None and int(halo) < receptive_radius(model):
        log.warning(
            "tile halo %d < the denoiser's receptive radius %d: tiled and whole-volume results "
            "will differ",
            int(halo),
            receptive_radius(model),
        )

    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    field = np.where(m, phi, 0).astype(np_dtype)
    widths = pad_widths(phi.shape, int(pad_multiple))
    if any(a or b for a, b in widths):
        field = np.pad(field, widths)
        m_pad = np.pad(m, widths)
    else:
        m_pad = m
    padded = field.shape
    crop = tuple(slice(a, a + n) for (a, _), n in zip(widths, phi.shape, strict=True))

    radius = receptive_radius(model) if fast else 0
    was_training = model.training
    model.eval()
    model.to(dev)
    try:
        kernel = isdu_kernel(padded, vox, b0, device=dev).to(dtype)
        phi_t = torch.from_numpy(np.ascontiguousarray(field))[None, None].to(dev)
        mask_t = torch.from_numpy(np.ascontiguousarray(m_pad))[None, None].to(dev, dtype)
        box = mask_box(m_pad, None if crop_margin is None else int(crop_margin) + radius)
        whole = all(b.start == 0 and b.stop == n for b, n in zip(box, padded, strict=True))
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            if fast:
                assert isinstance(model, ISDUQSMNet)
                stack.enter_context(fused_denoisers(model, bool(fuse)))
                stack.enter_context(tiled_denoisers(model, tile_size, int(halo)))
                stack.enter_context(cropped_denoisers(model, None if whole else box, radius))
            chi_t = model(phi_t, mask_t, kernel)
        chi = chi_t[0, 0].detach().to("cpu", torch.float32).numpy()
    finally:
        model.train(was_training)
    chi = np.ascontiguousarray(chi[crop])
    chi[~m] = 0.0
    return chi


def mask_box(mask: np.ndarray, margin: int | None) -> tuple[slice, ...]:
    """The mask's bounding box grown by ``margin`` voxels per side (clipped to the array);
    the whole array for ``margin=None``."""
    if margin is None:
        return tuple(slice(0, n) for n in mask.shape)
    if int(margin) < 0:
        raise QSMInputError(f"crop margin must be >= 0 voxels or None, got {margin}")
    out = []
    for ax, n in enumerate(mask.shape):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))
        out.append(slice(max(0, int(hit[0]) - int(margin)), min(n, int(hit[-1]) + 1 + int(margin))))
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Weights and the command-line / pipeline entry point

#: The shipped default weights (workflows/train-isdu-cpu.toml, then train-isdu-realistic.toml);
#: a build without them needs --weights.
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "data" / "isdu_default.pt"

NO_DEFAULT_WEIGHTS = (
    "no shipped ISDU-QSMNet weights in this build; pass --weights FILE "
    "(pipeline presets: [inversion.options.isdu] weights = FILE)"
)

#: Environment variables giving the torch thread count of one pipeline node (first set wins).
THREAD_ENV_VARS = ("QSMFLOW_TORCH_THREADS", "OMP_NUM_THREADS")


def resolve_weights(weights: str | os.PathLike | None, method: str = "isdu") -> Path:
    """``weights`` as a Path, or the shipped default (``isdu`` only); QSMInputError when
    neither exists."""
    if weights is None or str(weights) == "":
        if method != "isdu":
            preset = MODELS[method].preset if method in MODELS else ""
            raise QSMInputError(
                f"no shipped weights for {method}; pass --weights FILE (train them with "
                f"qsmflow train --config workflows/{preset}; pipeline presets: "
                f"[inversion.options.{method}] weights = FILE)"
            )
        if not DEFAULT_WEIGHTS.is_file():
            raise QSMInputError(NO_DEFAULT_WEIGHTS)
        return DEFAULT_WEIGHTS
    path = Path(weights)
    if not path.is_file():
        raise QSMInputError(f"{method} weights file not found", str(path))
    return path


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_inference_model(
    weights: str | os.PathLike | None = None,
    *,
    method: str = "isdu",
    iterations: int | None = None,
    shared_weights: bool | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a model with :func:`~qsmflow.models.checkpoints.load_model` (``weights_only``).

    ``method``: the model's registry name; a qsmflow checkpoint must hold that model (isdu and
    spinet may stand for each other). ``weights``: a qsmflow checkpoint or, for the ISDU family,
    the authors' single-denoiser ``.pth`` (every one of the K denoisers a copy; ``isdu``: K = 4
    unshared, ``spinet``: K = 3 shared, unless ``iterations``/``shared_weights`` say otherwise)
    or their unshared ``model_*.pt`` dict; None = the shipped default (:data:`DEFAULT_WEIGHTS`,
    isdu only). ``iterations`` (K) and ``shared_weights`` (ISDU family only) override the
    file's where it allows; a checkpoint that fixes them otherwise is an error. Returns
    ``(model, info)`` with info = {method, architecture, weights, weights_sha256, iterations,
    shared_weights, default_weights}.
    """
    path = resolve_weights(weights, method)
    if method not in ISDU_FAMILY and (iterations is not None or shared_weights is not None):
        raise QSMInputError(f"iterations and shared_weights apply to isdu and spinet, not {method}")
    overrides: dict[str, Any] = {}
    if iterations is not None:
        if int(iterations) < 1:
            raise QSMInputError(f"iterations must be >= 1, got {iterations}")
        overrides["n_iterations"] = int(iterations)
    if shared_weights is not None:
        overrides["shared_weights"] = bool(shared_weights)
    architecture, model = load_model(path, method, **overrides)
    if not isinstance(model, ISDUQSMNet):
        info = {
            "method": method,
            "architecture": architecture,
            "weights": str(path),
            "weights_sha256": file_sha256(path),
            "iterations": getattr(model, "config", {}).get("n_iterations"),
            "shared_weights": None,
            "default_weights": False,
        }
        return model, info
    if iterations is not None and model.n_iterations != int(iterations):
        raise QSMInputError(
            f"this checkpoint fixes K = {model.n_iterations}; cannot run K = {iterations}",
            str(path),
        )
    if shared_weights is not None and model.shared_weights != bool(shared_weights):
        raise QSMInputError(
            f"this checkpoint has shared_weights = {model.shared_weights}", str(path)
        )
    info = {
        "method": method,
        "architecture": architecture,
        "weights": str(path),
        "weights_sha256": file_sha256(path),
        "iterations": model.n_iterations,
        "shared_weights": model.shared_weights,
        "default_weights": weights is None or str(weights) == "",
    }
    return model, info


def network_sidecar(info: dict[str, Any]) -> dict[str, Any]:
    """The JSON sidecar entries describing a network run (from :func:`invert_network`'s info)."""
    return {
        "Network": info.get("architecture", "isdu"),
        "Weights": info["weights"],
        "WeightsSHA256": info["weights_sha256"],
        "Iterations": info["iterations"],
        "SharedWeights": info["shared_weights"],
        "Device": info["device"],
        "TileSize": info["tile_size"],
        "CropMargin": info.get("crop_margin"),
        "AdaptSteps": info.get("adapt", 0),
        "AdaptLearningRate": info.get("adapt_lr") if info.get("adapt") else None,
        "AdaptModelLoss": info.get("adapt_loss"),
        "AdaptSeconds": info.get("adapt_seconds"),
        "DipoleKernelK0": ISDU_KERNEL_K0,
    }


def apply_thread_env() -> int | None:
    """``torch.set_num_threads(n)`` from ``$QSMFLOW_TORCH_THREADS`` or ``$OMP_NUM_THREADS``.

    ``qsmflow run --plugin MultiProc`` sets OMP_NUM_THREADS=1 for its workers, so each ISDU
    node uses one torch thread there; with neither variable set torch's default is kept.
    Returns the thread count set, or None.
    """
    for var in THREAD_ENV_VARS:
        value = os.environ.get(var, "").strip()
        if value:
            try:
                n = int(value)
            except ValueError:
                continue
            if n >= 1:
                torch.set_num_threads(n)
                return n
    return None


def invert_network(
    phi_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    b0_dir: Sequence[float],
    *,
    method: str = "isdu",
    weights: str | os.PathLike | None = None,
    iterations: int | None = None,
    shared_weights: bool | None = None,
    device: str = "auto",
    tile_size: int | None = None,
    halo: int = 20,
    pad_multiple: int = 16,
    float64: bool = False,
    adapt: int = 0,
    adapt_lr: float = ADAPT_LR,
    crop_margin: int | None = CROP_MARGIN,
    check_geometry: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Load the weights of model ``method`` (:data:`~qsmflow.models.registry.MODELS`) and run
    :func:`predict_volume`: what ``qsmflow invert --method <model>`` and the pipeline's network
    nodes do. ``float64`` runs the whole network in float64.
    ``adapt`` > 0 first adapts the weights to this field by that many steps of
    :func:`~qsmflow.models.adapt.adapt_to_field` (test-time data consistency, FINE) with
    learning rate ``adapt_lr``.

    Returns ``(chi float32 ppm, info)``; info holds the weights file and its sha256, K, shared,
    the device used, tile_size, halo, pad_multiple, crop_margin, the dtype and the adaptation
    (steps, learning rate, model loss before and after, seconds) for the JSON sidecar.
    """
    dev = resolve_device(device)  # before loading: a missing GPU fails fast
    model, info = load_inference_model(
        weights, method=method, iterations=iterations, shared_weights=shared_weights
    )
    if int(adapt) > 0 and not isinstance(model, ISDUQSMNet):
        raise QSMInputError(f"adapt applies to the ISDU family (isdu, spinet), not {method}")
    dtype = torch.float64 if float64 else torch.float32
    if float64:
        model = model.double()
    adapted = None
    if int(adapt) > 0:
        from .adapt import adapt_to_field

        m = check_mask(mask, np.shape(phi_ppm))
        adapted = adapt_to_field(
            model,
            np.asarray(phi_ppm),
            m,
            voxel_size,
            b0_dir,
            steps=int(adapt),
            lr=adapt_lr,
            device=dev,
        )
        model = adapted.model
    chi = predict_volume(
        model,
        phi_ppm,
        mask,
        voxel_size,
        b0_dir,
        device=dev,
        tile_size=None if tile_size is None else int(tile_size),
        halo=halo,
        pad_multiple=pad_multiple,
        dtype=dtype,
        crop_margin=crop_margin,
        check_geometry=check_geometry,
    )
    info.update(
        device=str(dev),
        tile_size=None if tile_size is None else int(tile_size),
        halo=int(halo),
        pad_multiple=int(pad_multiple),
        crop_margin=crop_margin,
        dtype="float64" if float64 else "float32",
        adapt=int(adapt),
        adapt_lr=float(adapt_lr),
        adapt_loss=None
        if adapted is None
        else [round(adapted.losses[0], 6), round(adapted.losses[-1], 6)],
        adapt_seconds=None if adapted is None else round(adapted.seconds, 2),
    )
    return chi, info
