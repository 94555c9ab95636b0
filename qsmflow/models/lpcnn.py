"""LPCNN: learned proximal gradient descent for dipole inversion (Lai, Aggarwal, van Zijl,
Li & Sulam 2020), as compared in the ISDU-QSMNet supplement.

Model (isdu_qsmnet_spec.md section 8), with D the dipole kernel (the caller's, FFT layout),
M the mask, phi the local field (ppm)::

    x^0 = 0
    for t = 0 .. T-1:                                       T = 3
        v       = x^t + alpha D^H (phi - D x^t)             gradient step (x^1 = alpha D^H phi)
        x^{t+1} = M * P(v),  P(v) = prox(M (v - mean)/std) * std + mean
    chi = x^T                                               ppm, 0 outside M

D^H = D because D is real; D x = Re F^-1(D F x). ``alpha`` is one learnable scalar shared by
all iterations (initial value 4), and ``prox`` is one WideResNet with 1 input and 1 output
channel shared by all iterations: 446,336 weights, so 446,337 parameters with alpha. ``mean``
and ``std`` are the susceptibility statistics of LPCNN's training patches (gt_mean -4.350e-4,
gt_std 0.028919 ppm) unless the trainer sets those of its own data.

Differences from the authors' code: the output is de-normalised (ppm, like every qsmflow model,
so the same losses apply) where theirs returns the normalised map; one orientation per sample
(theirs sums the gradient steps of several).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import QSMInputError
from .consistency import SPATIAL_DIMS
from .wideresnet import WideResNet

__all__ = ["LPCNN", "LPCNN_GT_MEAN", "LPCNN_GT_STD"]

#: Susceptibility statistics (ppm) of LPCNN's training patches (isdu_qsmnet_spec.md section 8).
LPCNN_GT_MEAN = -4.350e-4
LPCNN_GT_STD = 0.028919


class LPCNN(nn.Module):
    """Learned proximal gradient descent with a WideResNet proximal operator.

    Parameters
    ----------
    n_iterations : T, proximal-gradient iterations (3).
    alpha_init : initial gradient step alpha (4).
    gt_mean, gt_std : susceptibility statistics (ppm) normalising the prox input and output.
    width, n_blocks, dropout : the prox WideResNet (32, 8, 0.5).

    Forward: ``model(phi, mask, kernel)``: phi (B, 1, X, Y, Z) ppm, mask (B, 1, X, Y, Z), kernel
    (B or 1, 1, X, Y, Z) real FFT-layout dipole kernel -> chi (B, 1, X, Y, Z) ppm, 0 outside the
    mask. Any voxel size and B0 direction: they enter through the kernel only.
    """

    def __init__(
        self,
        n_iterations: int = 3,
        alpha_init: float = 4.0,
        gt_mean: float = LPCNN_GT_MEAN,
        gt_std: float = LPCNN_GT_STD,
        *,
        width: int = 32,
        n_blocks: int = 8,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if int(n_iterations) < 1 or not float(gt_std) > 0:
            raise QSMInputError(
                f"LPCNN needs n_iterations >= 1 and gt_std > 0, got {n_iterations}, {gt_std}"
            )
        self._config: dict[str, Any] = {
            "n_iterations": int(n_iterations),
            "alpha_init": float(alpha_init),
            "gt_mean": float(gt_mean),
            "gt_std": float(gt_std),
            "width": int(width),
            "n_blocks": int(n_blocks),
            "dropout": float(dropout),
        }
        self.alpha = nn.Parameter(torch.tensor([float(alpha_init)]))
        self.prox = WideResNet(
            1, 1, width=int(width), n_blocks=int(n_blocks), dropout=float(dropout), scalars=False
        )
        self.register_buffer("gt_mean", torch.tensor(float(gt_mean), dtype=torch.float32))
        self.register_buffer("gt_std", torch.tensor(float(gt_std), dtype=torch.float32))

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments (plain values) that rebuild this model."""
        return dict(self._config)

    def forward(self, phi: Tensor, mask: Tensor, kernel: Tensor) -> Tensor:
        """phi (B,1,X,Y,Z) ppm, mask (B,1,X,Y,Z), kernel (B|1,1,X,Y,Z) -> chi (B,1,X,Y,Z) ppm."""
        if phi.ndim != 5 or phi.shape[1] != 1 or tuple(mask.shape) != tuple(phi.shape):
            raise QSMInputError(
                f"phi and mask must be (B, 1, X, Y, Z), got {tuple(phi.shape)}, {tuple(mask.shape)}"
            )
        dtype = self.prox.gen[0].weight.dtype
        m = mask.to(dtype)
        phi = phi.to(dtype) * m
        ker = kernel.to(dtype)
        mean, std = self.gt_mean.to(dtype), self.gt_std.to(dtype)

        def dipole(x: Tensor) -> Tensor:
            return torch.fft.ifftn(ker * torch.fft.fftn(x, dim=SPATIAL_DIMS), dim=SPATIAL_DIMS).real

        alpha = self.alpha.to(dtype)
        x = torch.zeros_like(phi)
        for t in range(self._config["n_iterations"]):
            residual = phi if t == 0 else phi - dipole(x) * m
            v = x + alpha * dipole(residual)
            u = self.prox((v - mean) / std * m)
            x = (u * std + mean) * m
        return x

    def extra_repr(self) -> str:
        return f"n_iterations={self._config['n_iterations']}"
