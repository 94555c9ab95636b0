"""Training losses of ISDU-QSMNet (torch).

The authors' losses (isdu_qsmnet_spec.md section 4, ../shared/reference/isdu/README.md
"loss.npz"), all in ppm and averaged over every voxel of the batch, background included:

* **L1 combined** (their training loss, :func:`combined_l1_loss`)::

      total = 1.0 * mean|chi_hat - chi|                                   "voxel"
            + 0.5 * mean|S * (chi - chi_hat)|                             "sobel"
            + 0.5 * mean|M Re F^-1(D F chi_hat) - M phi|                  "model"

  S = the 3 Sobel filters of :func:`sobel_filters`, cross-correlated (conv3d) with zero
  padding 1; the mean runs over all 3 output channels. As the authors, the Sobel difference is
  cast to float32 (``sobel_dtype``) and that term stays float32 before it joins the others.
* **L2** ("MSE" variant, :func:`combined_l2_loss`)::

      total = mean(chi_hat - chi)^2 + 0.5 * mean(S * (chi - chi_hat))^2

  computed in the promoted dtype of the inputs (float64 Sobel filters for float64 input). The
  authors also compute 0.5 * mean(M Re F^-1(D F chi_hat) - M phi)^2 but do not add it; it is
  returned as ``"model_not_added"``.
* :func:`mse_loss`: plain voxel MSE (the supplement's "MSE loss").

Shapes: chi_hat, chi, phi, mask (B, 1, X, Y, Z); kernel (B or 1, 1, X, Y, Z) real, FFT layout
(D(0) = 1/3 for ISDU). Passing the prediction as float64 and the rest as float32 reproduces the
authors' dtype flow and their loss values exactly (tests/test_isdu_conformance.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import QSMInputError
from ..models.consistency import SPATIAL_DIMS

__all__ = [
    "LOSSES",
    "combined_l1_loss",
    "combined_l2_loss",
    "model_residual",
    "make_loss",
    "mse_loss",
    "sobel_filters",
]

#: Training losses by name (the ``loss`` setting of a training preset), see :func:`make_loss`.
LOSSES = ("combined", "combined_l2", "mse")

#: ``loss(chi_hat, chi, phi, mask, kernel) -> 0-dim tensor``.
LossFunction = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


def sobel_filters(
    dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> Tensor:
    """The authors' 3-D Sobel filters, (3, 1, 3, 3, 3).

    s[a, b, c] = w_a h_b h_c with w = (1, 0, -1), h = (1, 2, 1); channel 0 = s, channel 1 =
    t[i, j, k] = s[k, i, j], channel 2 = u[i, j, k] = s[j, k, i] (differences along axes 0, 2
    and 1 respectively, in cross-correlation).
    """
    w = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    h = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    s = w[:, None, None] * h[None, :, None] * h[None, None, :]
    out = torch.stack([s, s.permute(1, 2, 0), s.permute(2, 0, 1)])[:, None]
    return out.to(dtype=dtype, device=device).contiguous()


def _sobel(diff: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, 1, X, Y, Z) -> (B, 3, X, Y, Z): Sobel responses of ``diff`` cast to ``dtype``."""
    diff = diff.to(dtype)
    return F.conv3d(diff, sobel_filters(dtype, diff.device), padding=1)


def model_residual(chi_hat: Tensor, phi: Tensor, mask: Tensor, kernel: Tensor) -> Tensor:
    """M Re F^-1(D F chi_hat) - M phi, (B, 1, X, Y, Z) (the "model loss" residual, ppm)."""
    field = torch.fft.ifftn(
        kernel * torch.fft.fftn(chi_hat, dim=SPATIAL_DIMS), dim=SPATIAL_DIMS
    ).real
    return mask * field - mask * phi


def mse_loss(chi_hat: Tensor, chi: Tensor) -> Tensor:
    """Mean squared voxel error over every voxel (ppm^2)."""
    return torch.mean((chi_hat - chi) ** 2)


def combined_l1_loss(
    chi_hat: Tensor,
    chi: Tensor,
    phi: Tensor,
    mask: Tensor,
    kernel: Tensor,
    *,
    voxel_weight: float = 1.0,
    sobel_weight: float = 0.5,
    model_weight: float = 0.5,
    sobel_dtype: torch.dtype = torch.float32,
) -> dict[str, Tensor]:
    """The authors' training loss; returns ``{"voxel", "sobel", "model", "total"}``.

    ``voxel``, ``sobel`` and ``model`` are the *weighted* terms (0-dim tensors) and
    ``total = voxel + sobel + model``. See the module docstring for the definitions.
    """
    voxel = voxel_weight * torch.mean(torch.abs(chi_hat - chi))
    sobel = sobel_weight * torch.mean(torch.abs(_sobel(chi - chi_hat, sobel_dtype)))
    model = model_weight * torch.mean(torch.abs(model_residual(chi_hat, phi, mask, kernel)))
    return {"voxel": voxel, "sobel": sobel, "model": model, "total": voxel + sobel + model}


def combined_l2_loss(
    chi_hat: Tensor,
    chi: Tensor,
    phi: Tensor,
    mask: Tensor,
    kernel: Tensor,
    *,
    sobel_weight: float = 0.5,
    model_weight: float = 0.5,
) -> dict[str, Tensor]:
    """The authors' L2 loss; returns ``{"voxel", "sobel", "model_not_added", "total"}``.

    ``total = voxel + sobel`` (voxel MSE + weighted squared Sobel term); the weighted squared
    model term is returned for inspection but, as in the authors' code, not added.
    """
    diff = chi - chi_hat
    voxel = torch.mean((chi_hat - chi) ** 2)
    sobel = sobel_weight * torch.mean(_sobel(diff, diff.dtype) ** 2)
    model = model_weight * torch.mean(model_residual(chi_hat, phi, mask, kernel) ** 2)
    return {"voxel": voxel, "sobel": sobel, "model_not_added": model, "total": voxel + sobel}


def make_loss(name: str) -> LossFunction:
    """``loss(chi_hat, chi, phi, mask, kernel) -> scalar`` for ``name`` in :data:`LOSSES`.

    "combined": the authors' L1 training loss (:func:`combined_l1_loss` total); "combined_l2":
    their L2 variant (:func:`combined_l2_loss` total); "mse": plain voxel MSE.
    """
    if name == "mse":

        def mse(chi_hat: Tensor, chi: Tensor, phi: Tensor, mask: Tensor, kernel: Tensor) -> Tensor:
            return mse_loss(chi_hat, chi)

        return mse
    terms = {"combined": combined_l1_loss, "combined_l2": combined_l2_loss}.get(name)
    if terms is None:
        raise QSMInputError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")

    def total(chi_hat: Tensor, chi: Tensor, phi: Tensor, mask: Tensor, kernel: Tensor) -> Tensor:
        return terms(chi_hat, chi, phi, mask, kernel)["total"]

    return total
