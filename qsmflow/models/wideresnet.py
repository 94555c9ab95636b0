"""The ISDU-QSMNet / SpiNet-QSM denoiser ("WideResNet-18", LPCNN's generator with 2 channels).

The module tree and parameter names are exactly those of the authors' ``WideResnet.py`` so that
their plain state_dict ``.pth`` files load with ``strict=True`` (isdu_qsmnet_spec.md section 3,
../shared/reference/isdu/README.md "Denoiser")::

    lambda_val                       (1,)  data-consistency weight of this unrolled step
    p                                (1,)  Schatten/l_p exponent (frozen at 2 in ISDU)
    gen.0                            Conv3d in->width, 3^3, no bias;   gen.1 ReLU
    gen.2.{0..n_blocks-1}            WideBasicBlock(width): conv1, bn1, conv2, bn2
    gen.3                            Conv3d width->width, 1^3;         gen.4 ReLU
    gen.5                            Conv3d width->width, 1^3;         gen.6 ReLU
    gen.7                            Conv3d width->out, 1^3 (linear output, no global skip)

With the defaults (2 -> 32 -> 2 channels, 8 blocks) the network has 447,232 weights plus
``lambda_val`` and ``p``: 447,234 parameters, 447,233 trainable (``p`` frozen).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["WideBasicBlock", "WideResNet"]


class WideBasicBlock(nn.Module):
    """Residual block ``relu(x + bn2(conv2(dropout(relu(bn1(conv1(x)))))))``.

    Input and output: (B, C, X, Y, Z), C = ``channels``; 3^3 convolutions, stride 1, zero
    padding 1, no bias; BatchNorm3d (eps 1e-5, momentum 0.1); channel dropout (Dropout3d),
    active only in training mode.
    """

    def __init__(self, channels: int = 32, dropout: float = 0.5) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout3d(p=dropout)
        self.conv2 = nn.Conv3d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(channels)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, X, Y, Z) -> (B, C, X, Y, Z)."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.dropout(out)
        out = self.bn2(self.conv2(out))
        return torch.relu(out + x)


class WideResNet(nn.Module):
    """The denoiser of one unrolled iteration, with its own ``lambda_val`` and ``p``.

    Parameters
    ----------
    in_channels, out_channels : 2 (real and imaginary part of the current estimate).
    width : feature channels of every hidden layer (32).
    n_blocks : number of residual blocks (8, i.e. 17 3^3 convolutions in all).
    dropout : Dropout3d probability inside each block (0.5; inactive in eval mode).
    lambda_init : initial data-consistency weight (0.5, as the authors).
    p_init : initial exponent of the l_p prior (2.0, i.e. the MoDL quadratic prior).
    learn_p : whether ``p`` is trainable (False in ISDU, True in SpiNet-QSM).

    Shapes: (B, in_channels, X, Y, Z) float -> (B, out_channels, X, Y, Z); any X, Y, Z
    (receptive field 35^3 voxels).
    """

    def __init__(
        self,
        in_channels: int = 2,
        out_channels: int = 2,
        width: int = 32,
        n_blocks: int = 8,
        dropout: float = 0.5,
        *,
        lambda_init: float = 0.5,
        p_init: float = 2.0,
        learn_p: bool = False,
    ) -> None:
        super().__init__()
        # Registered before ``gen`` so that the state_dict order matches the authors' files.
        self.lambda_val = nn.Parameter(torch.tensor([float(lambda_init)]))
        self.p = nn.Parameter(torch.tensor([float(p_init)]), requires_grad=bool(learn_p))
        self.gen = nn.Sequential(
            nn.Conv3d(in_channels, width, kernel_size=3, padding=1, bias=False),
            nn.ReLU(inplace=True),
            nn.Sequential(*[WideBasicBlock(width, dropout) for _ in range(n_blocks)]),
            nn.Conv3d(width, width, kernel_size=1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv3d(width, width, kernel_size=1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv3d(width, out_channels, kernel_size=1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_channels, X, Y, Z) -> (B, out_channels, X, Y, Z); no global skip."""
        return self.gen(x)
