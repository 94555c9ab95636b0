"""The denoisers an unrolled ISDU-QSMNet can use (the supplement's denoiser ablation).

Every denoiser maps the 2-channel (real, imaginary) estimate to 2 channels and carries the
scalars of its unrolled step: ``lambda_val`` (the data-consistency weight lambda_k) and ``p``
(the l_p exponent of the majorised prior). :class:`~qsmflow.models.isdu.ISDUQSMNet` builds its
denoisers through :func:`build_denoiser`.

=============  ==============================================  ===========================
name           network                                         parameters (with lambda, p)
=============  ==============================================  ===========================
wideresnet     :class:`~.wideresnet.WideResNet` ("WideResNet-18", the paper's)   447,234
simple-cnn     :class:`~.unet.SimpleCNN`, 4 x [3^3 conv 64 + BN + ReLU], residual  339,464
unet-mini      :func:`~.unet.deepqsm_unet` (3^3 U-Net, widths 16-256)           5,648,308
unet-heavy     :func:`~.unet.qsmnet_unet` (5^3 U-Net, widths 32-512)           99,458,020
=============  ==============================================  ===========================

(isdu_qsmnet_spec.md section 3, the authors' ``qsm_dw_models``; counts for 2 -> 2 channels and
the default width.) Only ``wideresnet`` loads the authors' weights, has the inference fast path
(BatchNorm folding, cropping, tiling; :mod:`qsmflow.models.inference`) and a finite receptive
field; the U-Nets need every spatial size to be a multiple of 16.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import QSMInputError
from .wideresnet import WideResNet

__all__ = ["DENOISERS", "ScalarDenoiser", "build_denoiser", "denoiser_size_multiple"]

#: Denoiser names, the ``denoiser`` argument of ISDUQSMNet (first: the default).
DENOISERS = ("wideresnet", "simple-cnn", "unet-mini", "unet-heavy")


class ScalarDenoiser(nn.Module):
    """A 2 -> 2 channel network ``net`` with its unrolled step's ``lambda_val`` and ``p``.

    Shapes: (B, 2, X, Y, Z) -> (B, 2, X, Y, Z), as ``net``.
    """

    def __init__(self, net: nn.Module, *, lambda_init: float, p_init: float, learn_p: bool) -> None:
        super().__init__()
        self.lambda_val = nn.Parameter(torch.tensor([float(lambda_init)]))
        self.p = nn.Parameter(torch.tensor([float(p_init)]), requires_grad=bool(learn_p))
        self.net = net

    @property
    def size_multiple(self) -> int:
        """Every spatial size must be a multiple of this (1: any size)."""
        return int(getattr(self.net, "size_multiple", 1))

    def forward(self, x: Tensor) -> Tensor:
        """(B, 2, X, Y, Z) -> (B, 2, X, Y, Z)."""
        return self.net(x)


def build_denoiser(
    name: str = "wideresnet",
    *,
    width: int = 32,
    n_blocks: int = 8,
    dropout: float = 0.5,
    lambda_init: float = 0.5,
    p_init: float = 2.0,
    learn_p: bool = False,
) -> nn.Module:
    """The 2 -> 2 channel denoiser ``name`` (:data:`DENOISERS`) with ``lambda_val`` and ``p``.

    ``width``, ``n_blocks`` and ``dropout`` shape the WideResNet only; the other denoisers have
    the fixed sizes of the authors' modules (module docstring).
    """
    if name == "wideresnet":
        return WideResNet(
            2,
            2,
            width=int(width),
            n_blocks=int(n_blocks),
            dropout=float(dropout),
            lambda_init=lambda_init,
            p_init=p_init,
            learn_p=learn_p,
        )
    from . import unet

    if name == "simple-cnn":
        net: nn.Module = unet.SimpleCNN(2, 2)
    elif name == "unet-mini":
        net = unet.deepqsm_unet(2, 2)
    elif name == "unet-heavy":
        net = unet.qsmnet_unet(2, 2)
    else:
        raise QSMInputError(f"unknown denoiser {name!r}; choose from {', '.join(DENOISERS)}")
    return ScalarDenoiser(net, lambda_init=lambda_init, p_init=p_init, learn_p=learn_p)


def denoiser_size_multiple(net: nn.Module) -> int:
    """The multiple every spatial size must be for ``net`` (1 for the WideResNet)."""
    return int(getattr(net, "size_multiple", 1))
