"""xQSM: an octave-convolution U-Net that maps a local field to a susceptibility map.

Y. Gao, X. Zhu, B. A. Moffat, R. Glarin, A. H. Wilman, G. B. Pike, S. Crozier, F. Liu, H. Sun,
"xQSM: quantitative susceptibility mapping with octave convolutional and noise-regularized
neural networks", NMR in Biomedicine 34(3):e4461, 2021. doi:10.1002/nbm.4461

Written here from the paper and from reading the authors' PyTorch module (``xQSM.py`` and
``xQSM_blocks.py`` in github.com/sunhongfu/deepMRI); no code is taken from it and the module
names are ours. The architecture follows that PyTorch module (its MATLAB version is shallower
at the full-resolution level, so it has fewer parameters).

Octave convolution (Chen et al., ICCV 2019) keeps every feature map as two groups: a
high-frequency group at the full resolution of its level and a low-frequency group at half of
it. One :class:`OctaveConv` has up to four paths, each a 3^3 convolution followed by its own
BatchNorm3d (BN)::

    high -> high   conv                                  y_high = relu(HH + LH)
    low  -> high   conv, then ConvTranspose3d (2^3, stride 2)
    low  -> low    conv                                  y_low  = relu(LL + HL)
    high -> low    AvgPool3d(2), then conv

Network (``depth`` = D = 2, ``base_width`` = b = 64, ``alpha`` = 0.5; widths are
high + low channels, R the input resolution)::

    input     1 -> (32 + 32) -> (32 + 32)            high at R,      low at R/2
    enc 1     64 -> 64 -> 64        (skip 1), max-pool both groups
    enc 2     64 -> 128 -> 128      (skip 2), max-pool both groups
    middle    128 -> 256 -> 128                      high at R/4,    low at R/8
    dec 2     up(128), concat skip 2 -> 256 -> 128 -> 64
    dec 1     up(64),  concat skip 1 -> 128 -> 64  -> 64
    output    (32 + 32) -> 64 high only, ReLU, 1^3 conv -> 1 channel
    residual  output + input (the local field itself)

The octave up-sampling (:class:`OctaveUp`) doubles the resolution of both groups with
transposed convolutions (high->high 2^3 stride 2, low->high 4^3 stride 4, low->low 2^3 stride 2)
plus a 3^3 convolution high->low, then sums per group, BN, ReLU. Every convolution has a bias.

Parameter count with 1 input / 1 output channel and the defaults: **5,215,681**, the number of
the authors' ``xQSM(2)``. With halves h = l = c/2, an :class:`OctaveConv` c -> k has four 3^3
convolutions (27 ck weights + 2k biases), the low->high transposed convolution (2k^2 + k/2) and
four BNs (4k): 27ck + 2k^2 + 6.5k; an :class:`OctaveUp` of width c has 107 h^2 + 8h. Hence::

    input      1 -> 64 (1,920: two paths only) + 64 -> 64 (119,200)          121,120
    encoder 1  64 -> 64 + 64 -> 64                     2 x 119,200              238,400
    encoder 2  64 -> 128 (254,784) + 128 -> 128 (475,968)                     730,752
    middle     128 -> 256 (1,017,472) + 256 -> 128 (918,336)                1,935,808
    decoder 2  up 128 (438,784) + 256 -> 128 (918,336) + 128 -> 64 (229,792)  1,586,912
    decoder 1  up 64 (109,824) + 128 -> 64 (229,792) + 64 -> 64 (119,200)      458,816
    output     64 -> 64 high only (143,808) + 1^3 head 64 -> 1 (65)           143,873
    total                                                                   5,215,681

i.e. 5,206,784 convolution weights and 3,521 biases (69 convolutions) plus 5,376 BatchNorm
scales and shifts (52 BNs, 2,688 channels; their running statistics are buffers). The modules
correspond one to one to the authors' (``InputOct.EncodeConv1/2`` -> ``input.convert/conv``,
``EncodeConvs.i`` -> ``encoders.i``, ``MidConv1`` -> ``middle``, ``DecodeConvs.i`` ->
``decoders.i``, ``FinalOct`` -> ``output.merge`` + ``output.head``; inside an octave conv
``convHH, BN_HH, convLH, up, BN_LH, convLL, BN_LL, convHL, BN_HL`` -> ``hh.0, hh.1, lh.0,
lh.1, lh.2, ll.0, ll.1, hl.1, hl.2``), so their state_dicts can be renamed onto this one.

Initialisation (:meth:`XQSM.init_weights`, called by the constructor): every Conv3d and
ConvTranspose3d weight ~ N(0, 0.01^2), every bias 0, every BatchNorm3d scale 1, shift 0 and
running statistics reset (mean 0, variance 1), as the authors' training script.

Training (not part of this module): the authors' PyTorch script uses MSE with
``reduction="sum"`` between prediction and label and Adam with learning rate 1e-3 (PyTorch
defaults otherwise), batch 32, 100 epochs, learning rate divided by 10 after epochs 50 and 80.
The "noise-regularized" xQSM of the paper passes every training input through a noise-adding
layer (Gaussian noise at a given SNR, kept inside the brain mask; training only, no
parameters); that is a training-time augmentation, not a layer of this network.

Shapes: (B, in_channels, X, Y, Z) -> (B, out_channels, X, Y, Z); X, Y and Z must be multiples
of :attr:`XQSM.size_multiple` (8 for depth 2: the low-frequency group of the middle level is at
1/8 of the input resolution); pad the volume first otherwise.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import QSMInputError

__all__ = [
    "XQSM",
    "DecoderLevel",
    "EncoderLevel",
    "OctaveConv",
    "OctaveInput",
    "OctaveOutput",
    "OctaveUp",
    "octave_split",
]

#: Standard deviation of the normal initialisation of every convolution weight.
INIT_STD = 0.01


def octave_split(channels: int, alpha: float) -> tuple[int, int]:
    """(high, low) channel counts of ``channels`` features, ``int(alpha * channels)`` low.

    Raises ValueError when either group would be empty.
    """
    low = int(alpha * channels)
    high = channels - low
    if high < 1 or low < 1:
        raise ValueError(
            f"alpha={alpha} splits {channels} channels into {high} high + {low} low; "
            "both groups need at least one channel"
        )
    return high, low


def _conv3(cin: int, cout: int) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, kernel_size=3, padding=1, bias=True)


class OctaveConv(nn.Module):
    """One octave convolution: (high, low) -> (high, low), each path conv + its own BN, ReLU.

    ``in_low = 0`` gives the first conversion (a plain feature map becomes two groups: paths
    high->high and high->low only); ``out_low = 0`` gives the last one (paths high->high and
    low->high only, the output is high only). Paths (3^3 convolutions, zero padding 1, bias):

    * ``hh``: conv(in_high -> out_high), BN
    * ``lh``: conv(in_low -> out_high) at the low resolution, ConvTranspose3d(out_high ->
      out_high, 2^3, stride 2), BN
    * ``ll``: conv(in_low -> out_low), BN
    * ``hl``: AvgPool3d(2), conv(in_high -> out_low), BN

    then ``y_high = relu(hh + lh)`` and ``y_low = relu(ll + hl)``. Parameters:
    27 i o + o for a conv, 8 o^2 + o for the transposed conv, 2 o per BN; e.g. (32 + 32) ->
    (32 + 32): 4 x 27,680 + 8,224 + 4 x 64 = 119,200.

    Shapes: x_high (B, in_high, X, Y, Z), x_low (B, in_low, X/2, Y/2, Z/2) or None ->
    y_high (B, out_high, X, Y, Z), y_low (B, out_low, X/2, Y/2, Z/2) or None; X, Y, Z even.
    """

    def __init__(self, in_high: int, in_low: int, out_high: int, out_low: int) -> None:
        super().__init__()
        if in_high < 1 or out_high < 1 or in_low < 0 or out_low < 0:
            raise ValueError(f"bad octave widths {in_high}+{in_low} -> {out_high}+{out_low}")
        self.in_low = in_low
        self.out_low = out_low
        self.hh = nn.Sequential(_conv3(in_high, out_high), nn.BatchNorm3d(out_high))
        self.lh: nn.Sequential | None = None
        self.ll: nn.Sequential | None = None
        self.hl: nn.Sequential | None = None
        if in_low:
            self.lh = nn.Sequential(
                _conv3(in_low, out_high),
                nn.ConvTranspose3d(out_high, out_high, kernel_size=2, stride=2, bias=True),
                nn.BatchNorm3d(out_high),
            )
        if out_low:
            if in_low:
                self.ll = nn.Sequential(_conv3(in_low, out_low), nn.BatchNorm3d(out_low))
            self.hl = nn.Sequential(
                nn.AvgPool3d(kernel_size=2), _conv3(in_high, out_low), nn.BatchNorm3d(out_low)
            )

    def forward(self, x_high: Tensor, x_low: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """(high, low) -> (high, low); see the class docstring for the shapes."""
        if (x_low is None) != (self.lh is None):
            raise ValueError("the low-frequency input must be given exactly when in_low > 0")
        y_high = self.hh(x_high)
        if self.lh is not None:
            y_high = y_high + self.lh(x_low)
        if self.hl is None:
            return torch.relu(y_high), None
        y_low = self.hl(x_high)
        if self.ll is not None:
            y_low = y_low + self.ll(x_low)
        return torch.relu(y_high), torch.relu(y_low)


class OctaveUp(nn.Module):
    """Octave up-sampling: both groups at twice the resolution, widths unchanged.

    ``y_high = relu(BN(T2(high) + T4(low)))``, ``y_low = relu(BN(T2'(low) + conv(high)))``:
    T2, T2' transposed convolutions 2^3 stride 2, T4 one 4^3 stride 4 (low -> high, from half
    to double the high resolution), conv a 3^3 convolution high -> low at the old high
    resolution (which is the new low resolution). Every one with a bias; one BN per group.

    Shapes: (B, h, X, Y, Z), (B, l, X/2, Y/2, Z/2) -> (B, h, 2X, 2Y, 2Z), (B, l, X, Y, Z).
    """

    def __init__(self, high: int, low: int) -> None:
        super().__init__()
        self.hh = nn.ConvTranspose3d(high, high, kernel_size=2, stride=2, bias=True)
        self.lh = nn.ConvTranspose3d(low, high, kernel_size=4, stride=4, bias=True)
        self.ll = nn.ConvTranspose3d(low, low, kernel_size=2, stride=2, bias=True)
        self.hl = _conv3(high, low)
        self.bn_high = nn.BatchNorm3d(high)
        self.bn_low = nn.BatchNorm3d(low)

    def forward(self, x_high: Tensor, x_low: Tensor) -> tuple[Tensor, Tensor]:
        """(high, low) -> (high, low) at twice the resolution."""
        y_high = self.bn_high(self.hh(x_high) + self.lh(x_low))
        y_low = self.bn_low(self.ll(x_low) + self.hl(x_high))
        return torch.relu(y_high), torch.relu(y_low)


class OctaveInput(nn.Module):
    """First conversion, plain map -> octave pair: OctaveConv(in -> b) then OctaveConv(b -> b).

    Shapes: (B, in_channels, X, Y, Z) -> (B, h, X, Y, Z), (B, l, X/2, Y/2, Z/2) with
    (h, l) = ``octave_split(width, alpha)``.
    """

    def __init__(self, in_channels: int, width: int, alpha: float) -> None:
        super().__init__()
        high, low = octave_split(width, alpha)
        self.convert = OctaveConv(in_channels, 0, high, low)
        self.conv = OctaveConv(high, low, high, low)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, in_channels, X, Y, Z) -> (high, low)."""
        y_high, y_low = self.conv(*self.convert(x))
        assert y_low is not None
        return y_high, y_low


class OctaveOutput(nn.Module):
    """Last conversion, octave pair -> plain map: OctaveConv((h + l) -> width high only, with
    ReLU), then a 1^3 convolution width -> out_channels (linear, with bias).

    Shapes: (B, h, X, Y, Z), (B, l, X/2, Y/2, Z/2) -> (B, out_channels, X, Y, Z).
    """

    def __init__(self, in_high: int, in_low: int, width: int, out_channels: int) -> None:
        super().__init__()
        self.merge = OctaveConv(in_high, in_low, width, 0)
        self.head = nn.Conv3d(width, out_channels, kernel_size=1, bias=True)

    def forward(self, x_high: Tensor, x_low: Tensor) -> Tensor:
        """(high, low) -> (B, out_channels, X, Y, Z)."""
        y, _ = self.merge(x_high, x_low)
        return self.head(y)


class EncoderLevel(nn.Module):
    """Two octave convolutions, ``in_width -> width -> out_width`` (``out_width`` defaults to
    ``width``). In an encoder level the caller keeps the output as the skip connection and
    max-pools both groups; the middle level is ``EncoderLevel(w, 2 w, w)``.

    Shapes: (B, ih, X, Y, Z), (B, il, X/2, Y/2, Z/2) -> (B, h, X, Y, Z), (B, l, X/2, Y/2, Z/2).
    """

    def __init__(
        self, in_width: int, width: int, alpha: float, out_width: int | None = None
    ) -> None:
        super().__init__()
        in_high, in_low = octave_split(in_width, alpha)
        high, low = octave_split(width, alpha)
        out_high, out_low = octave_split(width if out_width is None else out_width, alpha)
        self.conv1 = OctaveConv(in_high, in_low, high, low)
        self.conv2 = OctaveConv(high, low, out_high, out_low)

    def forward(self, x_high: Tensor, x_low: Tensor) -> tuple[Tensor, Tensor]:
        """(high, low) -> (high, low) at the same resolution."""
        y_high, y_low = self.conv2(*self.conv1(x_high, x_low))
        assert y_low is not None
        return y_high, y_low


class DecoderLevel(nn.Module):
    """:class:`OctaveUp` of the coarser level's output, concatenation with the skip connection
    group by group (up-sampled first), then two octave convolutions
    ``in_width + skip_width -> in_width -> out_width``.

    Shapes: coarse (B, ih, X/2, ...), (B, il, X/4, ...) and skip (B, sh, X, ...),
    (B, sl, X/2, ...) -> (B, h, X, Y, Z), (B, l, X/2, Y/2, Z/2).
    """

    def __init__(self, in_width: int, skip_width: int, out_width: int, alpha: float) -> None:
        super().__init__()
        in_high, in_low = octave_split(in_width, alpha)
        skip_high, skip_low = octave_split(skip_width, alpha)
        high, low = octave_split(out_width, alpha)
        self.up = OctaveUp(in_high, in_low)
        self.conv1 = OctaveConv(in_high + skip_high, in_low + skip_low, in_high, in_low)
        self.conv2 = OctaveConv(in_high, in_low, high, low)

    def forward(
        self, x_high: Tensor, x_low: Tensor, skip_high: Tensor, skip_low: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(coarse high, coarse low, skip high, skip low) -> (high, low) at the skip's size."""
        up_high, up_low = self.up(x_high, x_low)
        y_high, y_low = self.conv1(
            torch.cat([up_high, skip_high], dim=1), torch.cat([up_low, skip_low], dim=1)
        )
        y_high, y_low = self.conv2(y_high, y_low)
        assert y_low is not None
        return y_high, y_low


class XQSM(nn.Module):
    """The xQSM network (module docstring: architecture, parameter count, training).

    Parameters
    ----------
    in_channels, out_channels : 1 each (local field in, susceptibility out).
    base_width : channels of the full-resolution levels (64); level i (1-based) has
        ``base_width * 2**(i - 1)``, the middle level twice the deepest one inside.
    depth : number of max-poolings of the U-Net ("EncodingDepth", 2).
    alpha : fraction of every level's channels in the low-frequency group (0.5; as in Chen
        et al. The authors' code instead passes the high-frequency fraction, the same at 0.5).
    residual : add the input to the output (the authors' global skip). Needs
        ``in_channels == out_channels``.

    The weights are initialised by :meth:`init_weights` (N(0, 0.01^2) convolution weights,
    zero biases, BN at identity) in the constructor.

    Shapes: (B, in_channels, X, Y, Z) float -> (B, out_channels, X, Y, Z); X, Y, Z multiples
    of :attr:`size_multiple` (2**(depth + 1)), else :class:`~qsmflow.errors.QSMInputError`.
    In training mode a single volume of exactly ``size_multiple`` voxels along every axis
    fails in BatchNorm (the middle level's low-frequency group is then one voxel, one value
    per channel); eval mode has no such limit.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_width: int = 64,
        depth: int = 2,
        alpha: float = 0.5,
        *,
        residual: bool = True,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha}")
        if residual and in_channels != out_channels:
            raise ValueError(
                f"the global residual needs in_channels == out_channels "
                f"(got {in_channels} and {out_channels}); pass residual=False"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.depth = depth
        self.alpha = alpha
        self.residual = residual
        widths = [base_width * 2**i for i in range(depth)]  # level 1..D

        self.input = OctaveInput(in_channels, base_width, alpha)
        self.encoders = nn.ModuleList(
            EncoderLevel(base_width if i == 0 else widths[i - 1], widths[i], alpha)
            for i in range(depth)
        )
        self.middle = EncoderLevel(widths[-1], 2 * widths[-1], alpha, out_width=widths[-1])
        # Coarsest first; level i goes back to the width of level i - 1 (level 1 keeps its own).
        self.decoders = nn.ModuleList(
            DecoderLevel(widths[i], widths[i], widths[max(i - 1, 0)], alpha)
            for i in reversed(range(depth))
        )
        out_high, out_low = octave_split(base_width, alpha)
        self.output = OctaveOutput(out_high, out_low, base_width, out_channels)
        self.init_weights()

    @property
    def size_multiple(self) -> int:
        """Spatial sizes must be multiples of this: 2**depth max-poolings of the
        high-frequency group, and the low-frequency group is at half of that resolution."""
        return 2 ** (self.depth + 1)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> XQSM:
        """Re-initialise in place: Conv3d / ConvTranspose3d weights ~ N(0, 0.01^2), biases 0,
        BatchNorm3d scale 1, shift 0, running mean 0, variance 1. ``generator`` (on the
        parameters' device) makes it reproducible. Returns ``self``."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d | nn.ConvTranspose3d):
                nn.init.normal_(m.weight, mean=0.0, std=INIT_STD, generator=generator)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm3d):
                m.reset_parameters()
        return self

    def check_input(self, x: Tensor) -> None:
        """Raise QSMInputError unless ``x`` is (B, in_channels, X, Y, Z) with X, Y, Z
        multiples of :attr:`size_multiple`."""
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise QSMInputError(
                f"xQSM expects a (B, {self.in_channels}, X, Y, Z) tensor, got {tuple(x.shape)}"
            )
        sizes = tuple(x.shape[2:])
        m = self.size_multiple
        if any(s % m or s == 0 for s in sizes):
            raise QSMInputError(
                f"xQSM needs spatial sizes that are multiples of {m} (depth {self.depth}), "
                f"got {sizes}; pad the volume, e.g. to "
                f"{tuple(max(m, -(-s // m) * m) for s in sizes)}"
            )

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_channels, X, Y, Z) -> (B, out_channels, X, Y, Z)."""
        self.check_input(x)
        pool = nn.functional.max_pool3d
        high, low = self.input(x)
        skips: list[tuple[Tensor, Tensor]] = []
        for level in self.encoders:
            high, low = level(high, low)
            skips.append((high, low))
            high, low = pool(high, 2), pool(low, 2)
        high, low = self.middle(high, low)
        for level, (skip_high, skip_low) in zip(self.decoders, reversed(skips), strict=True):
            high, low = level(high, low, skip_high, skip_low)
        y = self.output(high, low)
        return y + x if self.residual else y
