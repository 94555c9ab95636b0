"""Test-time data consistency: adapt ISDU-QSMNet's weights to one subject's field (FINE).

FINE (Zhang et al., NeuroImage 2020, "Fidelity imposed network edit") takes a trained network
and, for one subject, takes a few gradient steps on its weights that reduce the model loss: the
misfit of the dipole forward model of the network's output to the subject's own measured field
inside the mask. No truth is used. This module does that for :class:`ISDUQSMNet`::

    loss(theta) = || M (Re F^-1 D0 F chi_theta(phi_crop) - phi_crop) ||^2 / || M phi_crop ||^2

* **Crops.** Each step runs the network on one ``patch_size``^3 crop of the subject's local
  field (the network's training regime: patches, their own FFT box), centred on a random mask
  voxel (seeded), instead of the whole brain, whose backward pass would need tens of GB. The
  loss skips ``margin`` voxels at the crop faces, where the field carries sources outside the
  crop that no chi inside it can explain.
* **Kernel.** The network runs with its own kernel (D(0) = 1/3); the loss uses the physical
  kernel with D(0) = 0 (a constant in chi makes no field, and the local field's mean is
  arbitrary after background removal).
* **What changes.** Every denoiser weight and lambda (p stays), Adam with learning rate
  ``lr``; BatchNorm stays in eval mode (running statistics), so a crop's statistics do not leak
  into the weights. The caller's model is not modified: a copy is adapted and returned.
* **Cost.** One step is a forward and backward pass of the K = 4 network on one crop: about
  3-5 s at 64^3 for the shipped width-16 model on 2 CPU cores (the benchmark reports it).

The adapted model is then run on the whole volume as usual
(:func:`~qsmflow.models.inference.predict_volume`).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import QSMInputError
from ..physics.kernel import check_voxel_size, normalise_b0_dir
from .consistency import SPATIAL_DIMS
from .isdu import ISDUQSMNet
from .kernels import isdu_kernel

__all__ = ["ADAPT_LR", "ADAPT_PATCH", "AdaptResult", "adapt_to_field", "crop_centres"]

log = logging.getLogger(__name__)

#: Default Adam learning rate of the adaptation.
ADAPT_LR = 1e-5
#: Default crop edge (voxels) of one adaptation step.
ADAPT_PATCH = 64
#: Voxels at each crop face left out of the loss.
ADAPT_MARGIN = 6


@dataclass
class AdaptResult:
    """The adapted model and what happened: loss per step (relative misfit), seconds."""

    model: ISDUQSMNet
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    lr: float = ADAPT_LR
    patch_size: int = ADAPT_PATCH


def crop_centres(
    mask: np.ndarray, n: int, patch_size: int, rng: np.random.Generator
) -> list[tuple[slice, ...]]:
    """``n`` crops of ``patch_size``^3 (clipped to the volume) around random mask voxels."""
    idx = np.argwhere(mask)
    out = []
    for _ in range(n):
        c = idx[rng.integers(len(idx))]
        sl = []
        for ax, size in enumerate(mask.shape):
            p = min(patch_size, size)
            start = int(np.clip(c[ax] - p // 2, 0, size - p))
            sl.append(slice(start, start + p))
        out.append(tuple(sl))
    return out


def adapt_to_field(
    model: ISDUQSMNet,
    phi_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    b0_dir: Sequence[float],
    *,
    steps: int,
    lr: float = ADAPT_LR,
    patch_size: int = ADAPT_PATCH,
    margin: int = ADAPT_MARGIN,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> AdaptResult:
    """A copy of ``model`` adapted by ``steps`` Adam steps on the subject's model loss.

    phi_ppm : local field (X, Y, Z) in ppm of B0 (zero outside the mask is enforced);
    mask : (X, Y, Z) bool; voxel_size : mm; b0_dir : B0 direction in array axes.
    See the module docstring for the loss, crops and what is updated.
    """
    if int(steps) < 0:
        raise QSMInputError(f"adaptation steps must be >= 0, got {steps}")
    if not (np.isfinite(lr) and lr > 0):
        raise QSMInputError(f"adaptation learning rate must be > 0, got {lr}")
    if int(patch_size) < 16:
        raise QSMInputError(f"adaptation patch size must be >= 16 voxels, got {patch_size}")
    m = np.asarray(mask, bool)
    if not m.any():
        raise QSMInputError("adaptation needs a non-empty mask")
    vox = check_voxel_size(voxel_size)
    b0 = normalise_b0_dir(b0_dir)
    dev = torch.device(device)
    adapted = copy.deepcopy(model).to(dev)
    result = AdaptResult(model=adapted, steps=int(steps), lr=float(lr), patch_size=int(patch_size))
    if int(steps) == 0:
        return result
    adapted.eval()  # BatchNorm keeps its running statistics; no dropout
    for k in range(len(adapted.denoisers)):
        # p = 2 stays fixed: a p that needs gradients would switch the closed-form data
        # consistency to conjugate gradients (ISDUQSMNet._use_closed_form)
        adapted.denoisers[k].p.requires_grad_(False)
    params = [p for p in adapted.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=float(lr))
    field_np = np.where(m, np.asarray(phi_ppm, np.float32), 0).astype(np.float32)
    rng = np.random.default_rng([int(seed), 0xF1E])
    crops = crop_centres(m, int(steps), int(patch_size), rng)
    kernels: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}
    t0 = time.perf_counter()
    for crop in crops:
        phi_c = field_np[crop]
        m_c = m[crop]
        shape = phi_c.shape
        if shape not in kernels:
            net_k = isdu_kernel(shape, vox, b0, device=dev)
            phys_k = net_k.clone()
            phys_k.view(-1)[0] = 0.0  # D(0) = 0 for the loss (the field's mean is arbitrary)
            kernels[shape] = (net_k, phys_k)
        net_k, phys_k = kernels[shape]
        phi_t = torch.from_numpy(np.ascontiguousarray(phi_c))[None, None].to(dev)
        m_t = torch.from_numpy(np.ascontiguousarray(m_c))[None, None].to(dev, torch.float32)
        inner = torch.zeros_like(m_t)
        core = tuple(slice(min(margin, n // 4), n - min(margin, n // 4)) for n in shape)
        inner[(0, 0, *core)] = 1.0
        w = m_t * inner
        with torch.enable_grad():
            chi = adapted(phi_t, m_t, net_k)
            pred = torch.fft.ifftn(phys_k * torch.fft.fftn(chi, dim=SPATIAL_DIMS), dim=SPATIAL_DIMS)
            res = w * (pred.real - phi_t)
            # demeaned misfit: the local field's constant is arbitrary
            mean_res = res.sum() / w.sum().clamp_min(1.0)
            loss = (w * (res - mean_res)).square().sum() / (w * phi_t).square().sum().clamp_min(
                1e-12
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        result.losses.append(float(loss.detach()))
    result.seconds = time.perf_counter() - t0
    log.info(
        "adapted to the field in %d steps (%.1f s): model loss %.4f -> %.4f",
        steps,
        result.seconds,
        result.losses[0],
        result.losses[-1],
    )
    return result
