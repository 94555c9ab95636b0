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

import copy

import torch
from torch import Tensor, nn

__all__ = [
    "FusedWideResNet",
    "WideBasicBlock",
    "WideResNet",
    "fold_batchnorm",
    "to_channels_last_3d",
]


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
    scalars : whether the network carries ``lambda_val`` and ``p`` (True: a denoiser of an
        unrolled model; False: a plain network, e.g. LPCNN's proximal operator, 1 -> 1
        channels, 446,336 weights).

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
        scalars: bool = True,
    ) -> None:
        super().__init__()
        # Registered before ``gen`` so that the state_dict order matches the authors' files.
        if scalars:
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


# --------------------------------------------------------------------------------------------
# Inference form: BatchNorm folded into the convolutions


def fold_batchnorm(conv: nn.Conv3d, bn: nn.BatchNorm3d) -> nn.Conv3d:
    """A biased Conv3d equal to ``bn(conv(x))`` with ``bn`` in eval mode (running statistics).

    ``bn(y) = gamma (y - mean) / sqrt(var + eps) + beta`` is a per-channel affine map, so it
    scales the convolution's output filters and adds a bias: W' = s W, b' = beta - s mean
    (+ s b), s = gamma / sqrt(var + eps). Computed in float64, stored in the conv's dtype.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm3d without running statistics cannot be folded")
    w = conv.weight.detach().double()
    ones = torch.ones(conv.out_channels, dtype=torch.float64, device=w.device)
    gamma = ones if bn.weight is None else bn.weight.detach().double()
    beta = 0 * ones if bn.bias is None else bn.bias.detach().double()
    scale = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
    bias = beta - scale * bn.running_mean.double()
    if conv.bias is not None:
        bias = bias + scale * conv.bias.detach().double()
    fused = copy.deepcopy(conv).requires_grad_(False)
    with torch.no_grad():
        fused.weight.copy_(w * scale.view(-1, 1, 1, 1, 1))
        fused.bias = nn.Parameter(bias.to(conv.weight), requires_grad=False)
    return fused


class _FusedBlock(nn.Module):
    """Eval-mode :class:`WideBasicBlock` with BatchNorm folded: relu(x + c2(relu(c1(x))))."""

    def __init__(self, block: WideBasicBlock) -> None:
        super().__init__()
        self.conv1 = fold_batchnorm(block.conv1, block.bn1)
        self.conv2 = fold_batchnorm(block.conv2, block.bn2)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu_(self.conv1(x))
        out = self.conv2(out)
        return torch.relu_(out.add_(x))


class _InputConv(nn.Module):
    """The first 3^3 convolution with its few input channels zero-padded to
    :data:`INPUT_CHANNELS_PADDED`: oneDNN has no fast channels-last kernel for 2 input channels
    (PyTorch falls back to im2col, ~1.7x slower); the added zero channels change no sum."""

    def __init__(self, conv: nn.Conv3d) -> None:
        super().__init__()
        cin = conv.in_channels
        self.extra = max(0, INPUT_CHANNELS_PADDED - cin)
        w = conv.weight.detach()
        pad = w.new_zeros((w.shape[0], self.extra, *w.shape[2:]))
        self.conv = _copy_conv(conv)
        self.conv.in_channels = cin + self.extra
        self.conv.weight = nn.Parameter(torch.cat([w, pad], dim=1), requires_grad=False)

    @property
    def weight(self) -> Tensor:
        """The padded weights (their dtype is the denoiser's, as ``gen[0].weight`` elsewhere)."""
        return self.conv.weight

    def forward(self, x: Tensor) -> Tensor:
        if self.extra:
            zeros = x.new_zeros((x.shape[0], self.extra, *x.shape[2:]))
            x = torch.cat([x, zeros], dim=1).contiguous(memory_format=torch.channels_last_3d)
        return self.conv(x)


class _PointwiseHead(nn.Module):
    """The three 1^3 convolutions (and their ReLUs) as matrix products over the channel axis:
    on a channels-last feature map they are plain GEMMs, ~4x faster than PyTorch's 1^3 conv3d
    path (no oneDNN kernel; an im2col copy instead). Same values up to float rounding."""

    def __init__(self, *convs: nn.Conv3d) -> None:
        super().__init__()
        for c in convs:
            if tuple(c.kernel_size) != (1, 1, 1) or c.bias is not None:
                raise TypeError("expected bias-free 1^3 convolutions")
        self.weights = nn.ParameterList(
            [
                nn.Parameter(c.weight.detach()[:, :, 0, 0, 0].clone(), requires_grad=False)
                for c in convs
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        v = x.permute(0, 2, 3, 4, 1)  # (B, X, Y, Z, C): a view, contiguous for channels-last x
        last = len(self.weights) - 1
        for i, w in enumerate(self.weights):
            v = torch.nn.functional.linear(v, w)
            if i < last:
                v = torch.relu_(v)
        return v.permute(0, 4, 1, 2, 3)


#: Input channels of the first convolution in :class:`FusedWideResNet` (zero-padded).
INPUT_CHANNELS_PADDED = 8


class FusedWideResNet(nn.Module):
    """Inference-only copy of a :class:`WideResNet`: BatchNorm folded, no dropout.

    Equal to ``net.eval()(x)`` up to float rounding (the folded weights are computed in
    float64), with two BatchNorm passes fewer per block, in-place activations (one feature map
    less alive at a time) and, with ``channels_last=True``, the ``channels_last_3d`` memory
    layout, which oneDNN (CPU) and cuDNN convolve faster. The gradient-free copy shares nothing
    with ``net``: build it again after changing ``net``'s weights. Exposes ``gen`` (its layers,
    ``gen[0]`` the first convolution), ``lambda_val`` and ``p`` (``net``'s own parameters), as
    :class:`~qsmflow.models.isdu.ISDUQSMNet` reads them from a denoiser.

    Shapes: (B, in_channels, X, Y, Z) -> (B, out_channels, X, Y, Z), contiguous output.
    """

    def __init__(self, net: WideResNet, *, channels_last: bool = True) -> None:
        super().__init__()
        gen = net.gen
        self.lambda_val = net.lambda_val
        self.p = net.p
        self.channels_last = bool(channels_last)
        layers = [
            _InputConv(gen[0]) if self.channels_last else _copy_conv(gen[0]),
            nn.ReLU(inplace=True),
            nn.Sequential(*[_FusedBlock(b) for b in gen[2]]),
            _PointwiseHead(gen[3], gen[5], gen[7]),
        ]
        self.gen = nn.Sequential(*layers).requires_grad_(False).eval()
        if self.channels_last:
            to_channels_last_3d(self.gen)

    def train(self, mode: bool = True) -> FusedWideResNet:
        if mode:
            raise RuntimeError("FusedWideResNet is for inference only (BatchNorm is folded)")
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_channels, X, Y, Z) -> (B, out_channels, X, Y, Z)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return self.gen(x).contiguous()


def to_channels_last_3d(module: nn.Module) -> nn.Module:
    """Store every 5-D parameter of ``module`` in the ``channels_last_3d`` layout, in place.

    The values do not change; convolutions then produce channels-last outputs, which oneDNN
    (CPU) and cuDNN run faster (~2x for the eval-mode denoiser, ~25 % for a training step on
    2 CPU cores). Returns ``module``.
    """
    for param in module.parameters():
        if param.dim() == 5:
            param.data = param.data.contiguous(memory_format=torch.channels_last_3d)
    return module


def _copy_conv(conv: nn.Module) -> nn.Conv3d:
    """A gradient-free copy of a Conv3d (same settings and weights)."""
    if not isinstance(conv, nn.Conv3d):
        raise TypeError(f"expected a Conv3d, got {type(conv).__name__}")
    return copy.deepcopy(conv).requires_grad_(False)
