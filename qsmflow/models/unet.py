"""3-D U-Nets (QSMnet, DeepQSM; the ablation's UNet-heavy, UNet-mini) and a residual CNN.

:class:`UNet3d` is an encoder-decoder with skip connections (Ronneberger et al. 2015, in 3-D).
With ``len(widths) = L`` it has L - 1 encoder levels and a bottleneck; every level is two
[Conv3d (bias) -> BatchNorm3d -> activation] blocks, the encoder goes down by 2x2x2 max pooling,
the decoder goes up by a 2x2x2 stride-2 transposed convolution, concatenates ``[skip, upsampled]``
along the channels and applies two more blocks; a linear 1x1x1 convolution gives the output.
There is no global residual. Two factories give the published configurations:

* :func:`qsmnet_unet` -- QSMnet (Yoon et al. 2018): widths 32..512, 5^3 kernels, LeakyReLU 0.1,
  BatchNorm eps 1e-3 / momentum 0.01. 99,453,985 parameters with 1 -> 1 channels, 99,458,018
  with 2 -> 2 (the ISDU ablation's "UNet-heavy").
* :func:`deepqsm_unet` -- DeepQSM (Bollmann et al. 2019) as re-implemented for the ISDU-QSMNet
  ablation: widths 16..256, 3^3 kernels, ReLU, BatchNorm defaults. 5,647,857 parameters with
  1 -> 1 channels, 5,648,306 with 2 -> 2 ("UNet-mini").

Input-size rule: every spatial size of a :class:`UNet3d` input must be a multiple of
``size_multiple = 2 ** (len(widths) - 1)`` (16 for both factories); other sizes raise
:class:`~qsmflow.errors.QSMInputError`. Pad (and crop the output) in the caller.

:class:`SimpleCNN` is the authors' ``Dw`` ("simple Wide ResNet CNN"): ``n_layers`` x
[Conv3d 3^3 (bias) -> BatchNorm3d -> ReLU], then Conv3d 3^3 (bias) -> BatchNorm3d, added to its
input (global residual). 339,462 parameters with the defaults (2 -> 64 -> 2 channels, 4 layers).
It accepts any spatial size.

All three are plain image-to-image maps ``(B, C_in, X, Y, Z) -> (B, C_out, X, Y, Z)``: input
normalisation, masking, and the per-iteration ``lambda_val`` / ``p`` scalars of an unrolled
network are added by the callers (the authors' modules carry those two scalars, which is why
isdu_qsmnet_spec.md section 3 lists counts two higher than the ones above).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import QSMInputError

__all__ = [
    "ConvNormAct3d",
    "DoubleConv3d",
    "SimpleCNN",
    "UNet3d",
    "UpLevel3d",
    "deepqsm_unet",
    "qsmnet_unet",
]

_ACTIVATIONS = ("relu", "leaky_relu")


def _make_activation(name: str, negative_slope: float = 0.1) -> nn.Module:
    """``nn.ReLU`` for ``"relu"``, ``nn.LeakyReLU(negative_slope)`` for ``"leaky_relu"``."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "leaky_relu":
        return nn.LeakyReLU(negative_slope, inplace=True)
    raise QSMInputError(f"activation must be one of {_ACTIVATIONS}, got {name!r}")


class ConvNormAct3d(nn.Sequential):
    """Conv3d (stride 1, "same" zero padding, with bias) -> BatchNorm3d -> activation.

    Shapes: (B, in_channels, X, Y, Z) -> (B, out_channels, X, Y, Z); ``kernel_size`` must be
    odd so that the padding ``kernel_size // 2`` keeps the size. Children: ``conv``, ``norm``,
    ``act``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        activation: str = "relu",
        negative_slope: float = 0.1,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise QSMInputError(f"kernel_size must be a positive odd number, got {kernel_size}")
        super().__init__()
        self.conv = nn.Conv3d(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=True
        )
        self.norm = nn.BatchNorm3d(out_channels, eps=bn_eps, momentum=bn_momentum)
        self.act = _make_activation(activation, negative_slope)


class DoubleConv3d(nn.Sequential):
    """Two :class:`ConvNormAct3d` blocks: in_channels -> out_channels -> out_channels.

    Shapes: (B, in_channels, X, Y, Z) -> (B, out_channels, X, Y, Z). Children: ``block1``,
    ``block2``; the keyword arguments go to both blocks.
    """

    def __init__(self, in_channels: int, out_channels: int, **block_kwargs: float | int | str):
        super().__init__()
        self.block1 = ConvNormAct3d(in_channels, out_channels, **block_kwargs)
        self.block2 = ConvNormAct3d(out_channels, out_channels, **block_kwargs)


class UpLevel3d(nn.Module):
    """One decoder level: upsample the deeper features, join the skip, two conv blocks.

    ``up``: ConvTranspose3d(in_channels -> out_channels, kernel 2, stride 2, with bias);
    ``convs``: :class:`DoubleConv3d` (2 * out_channels -> out_channels -> out_channels) applied
    to ``cat([skip, up(x)], dim=1)`` (skip first).
    """

    def __init__(self, in_channels: int, out_channels: int, **block_kwargs: float | int | str):
        super().__init__()
        self.up = nn.ConvTranspose3d(in_channels, out_channels, kernel_size=2, stride=2, bias=True)
        self.convs = DoubleConv3d(2 * out_channels, out_channels, **block_kwargs)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        """x (B, in_channels, X/2, Y/2, Z/2), skip (B, out_channels, X, Y, Z)
        -> (B, out_channels, X, Y, Z)."""
        return self.convs(torch.cat([skip, self.up(x)], dim=1))


class UNet3d(nn.Module):
    """A 3-D U-Net with ``len(widths) - 1`` down/up levels and a bottleneck.

    Parameters
    ----------
    in_channels, out_channels : channels of the input and output images.
    widths : feature channels of each level, shallowest first; the last is the bottleneck's.
        At least two entries.
    kernel_size : odd edge length of every convolution of the conv blocks.
    activation : ``"relu"`` or ``"leaky_relu"``.
    negative_slope : slope of LeakyReLU for negative inputs (ignored for ReLU).
    bn_eps, bn_momentum : BatchNorm3d settings (PyTorch momentum = 1 - TensorFlow decay).

    Children: ``encoders`` (``len(widths) - 1`` :class:`DoubleConv3d`, shallowest first),
    ``pool`` (MaxPool3d 2), ``bottleneck`` (:class:`DoubleConv3d`), ``decoders``
    (:class:`UpLevel3d`, deepest first), ``head`` (Conv3d 1^3 with bias, linear).

    Shapes: (B, in_channels, X, Y, Z) float -> (B, out_channels, X, Y, Z); X, Y and Z must be
    multiples of :attr:`size_multiple`. In training mode BatchNorm also needs more than one
    value per channel at the bottleneck, i.e. ``B * X * Y * Z / size_multiple**3 > 1``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        widths: Sequence[int] = (16, 32, 64, 128, 256),
        kernel_size: int = 3,
        activation: str = "relu",
        negative_slope: float = 0.1,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2 or min(widths) < 1:
            raise QSMInputError(f"widths needs at least two positive entries, got {widths}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.widths = widths
        self._size_multiple = 2 ** (len(widths) - 1)
        block_kwargs: dict[str, float | int | str] = {
            "kernel_size": kernel_size,
            "activation": activation,
            "negative_slope": negative_slope,
            "bn_eps": bn_eps,
            "bn_momentum": bn_momentum,
        }
        level_inputs = (self.in_channels, *widths[:-2])
        self.encoders = nn.ModuleList(
            DoubleConv3d(cin, w, **block_kwargs)
            for cin, w in zip(level_inputs, widths[:-1], strict=True)
        )
        self.pool = nn.MaxPool3d(kernel_size=2, stride=2)
        self.bottleneck = DoubleConv3d(widths[-2], widths[-1], **block_kwargs)
        self.decoders = nn.ModuleList(
            UpLevel3d(deeper, w, **block_kwargs)
            for deeper, w in zip(widths[:0:-1], widths[-2::-1], strict=True)
        )
        self.head = nn.Conv3d(widths[0], self.out_channels, kernel_size=1, bias=True)

    @property
    def size_multiple(self) -> int:
        """Every spatial size of the input must be a multiple of this (2 ** levels)."""
        return self._size_multiple

    def check_input(self, x: Tensor) -> None:
        """Raise :class:`QSMInputError` unless x is (B, in_channels, X, Y, Z) with X, Y and Z
        multiples of :attr:`size_multiple`."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise QSMInputError(
                f"expected input of shape (B, {self.in_channels}, X, Y, Z), got {tuple(x.shape)}"
            )
        spatial = tuple(int(n) for n in x.shape[2:])
        bad = [n for n in spatial if n % self._size_multiple]
        if bad:
            raise QSMInputError(
                f"U-Net spatial sizes {spatial} must all be multiples of {self._size_multiple} "
                f"(2**{len(self.widths) - 1}); {bad} are not: pad the input"
            )

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_channels, X, Y, Z) -> (B, out_channels, X, Y, Z); linear output."""
        self.check_input(x)
        skips: list[Tensor] = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for decoder, skip in zip(self.decoders, reversed(skips), strict=True):
            x = decoder(x, skip)
        return self.head(x)


def qsmnet_unet(in_channels: int = 1, out_channels: int = 1) -> UNet3d:
    """The QSMnet U-Net (Yoon J, Gong E, Chatnuntawech I, et al. Quantitative susceptibility
    mapping using deep neural network: QSMnet. NeuroImage 2018;179:199-206).

    Widths 32/64/128/256/512 (4 pools; inputs a multiple of 16), 5^3 convolutions, LeakyReLU
    0.1, BatchNorm eps 1e-3 and momentum 0.01 (TensorFlow decay 0.99). 99,453,985 parameters
    for 1 -> 1 channels, 99,458,018 for 2 -> 2 (the ISDU-QSMNet ablation's denoiser).
    """
    return UNet3d(
        in_channels,
        out_channels,
        widths=(32, 64, 128, 256, 512),
        kernel_size=5,
        activation="leaky_relu",
        negative_slope=0.1,
        bn_eps=1e-3,
        bn_momentum=0.01,
    )


def deepqsm_unet(in_channels: int = 1, out_channels: int = 1) -> UNet3d:
    """The DeepQSM U-Net (Bollmann S, Rasmussen KGB, Kristensen M, et al. DeepQSM - using deep
    learning to solve the dipole inversion for quantitative susceptibility mapping. NeuroImage
    2019;195:373-383), in the configuration of the ISDU-QSMNet paper's ``DeepQSM`` module.

    Widths 16/32/64/128/256 (4 pools; inputs a multiple of 16), 3^3 convolutions, ReLU,
    BatchNorm defaults (eps 1e-5, momentum 0.1). 5,647,857 parameters for 1 -> 1 channels,
    5,648,306 for 2 -> 2.
    """
    return UNet3d(
        in_channels,
        out_channels,
        widths=(16, 32, 64, 128, 256),
        kernel_size=3,
        activation="relu",
        bn_eps=1e-5,
        bn_momentum=0.1,
    )


class SimpleCNN(nn.Module):
    """The ISDU ablation's "simple Wide ResNet CNN" (the authors' ``Dw``): x + f(x).

    f = ``n_layers`` x [Conv3d 3^3 (padding 1, bias) -> BatchNorm3d -> ReLU] (in_channels ->
    width, then width -> width), then Conv3d 3^3 (bias) width -> out_channels -> BatchNorm3d.

    Parameters
    ----------
    in_channels, out_channels : must be equal (global residual); 2 = real and imaginary part.
    width : feature channels of the hidden layers (64).
    n_layers : number of hidden conv-BN-ReLU layers (4).

    Children: ``body`` (:class:`ConvNormAct3d` x ``n_layers``), ``out_conv``, ``out_norm``.
    Shapes: (B, in_channels, X, Y, Z) float -> (B, out_channels, X, Y, Z); any X, Y, Z
    (receptive radius :attr:`receptive_radius` voxels). 339,462 parameters with the defaults.
    """

    def __init__(
        self, in_channels: int = 2, out_channels: int = 2, width: int = 64, n_layers: int = 4
    ) -> None:
        super().__init__()
        if in_channels != out_channels:
            raise QSMInputError(
                f"SimpleCNN adds its input to its output, so in_channels ({in_channels}) must "
                f"equal out_channels ({out_channels})"
            )
        if n_layers < 1:
            raise QSMInputError(f"n_layers must be at least 1, got {n_layers}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.n_layers = int(n_layers)
        self.body = nn.Sequential(
            *(
                ConvNormAct3d(in_channels if i == 0 else width, width, kernel_size=3)
                for i in range(n_layers)
            )
        )
        self.out_conv = nn.Conv3d(width, out_channels, kernel_size=3, padding=1, bias=True)
        self.out_norm = nn.BatchNorm3d(out_channels)

    @property
    def receptive_radius(self) -> int:
        """Voxels from the centre to the edge of the receptive field (one per 3^3 conv)."""
        return self.n_layers + 1

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, X, Y, Z) -> (B, C, X, Y, Z): x + bn(conv(body(x)))."""
        return x + self.out_norm(self.out_conv(self.body(x)))
