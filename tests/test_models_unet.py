"""The ablation denoisers of models/unet.py: parameter counts (meta device, nothing allocated),
shapes, input checks, layer settings and a functional re-implementation of a tiny U-Net."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qsmflow.errors import QSMInputError
from qsmflow.models.unet import SimpleCNN, UNet3d, deepqsm_unet, qsmnet_unet


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------ counts


@pytest.mark.parametrize(
    ("factory", "channels", "expected"),
    [
        (qsmnet_unet, 1, 99_453_985),
        (qsmnet_unet, 2, 99_458_018),
        (deepqsm_unet, 1, 5_647_857),
        (deepqsm_unet, 2, 5_648_306),
    ],
)
def test_unet_parameter_counts(factory, channels, expected):
    with torch.device("meta"):
        net = factory(channels, channels)
    assert n_params(net) == expected
    assert net.size_multiple == 16


def test_simple_cnn_parameter_count():
    with torch.device("meta"):
        net = SimpleCNN()
    assert n_params(net) == 339_462
    assert net.receptive_radius == 5
    assert SimpleCNN.__init__.__defaults__ == (2, 2, 64, 4)


# ------------------------------------------------------------------------------ layers


def test_qsmnet_layers():
    with torch.device("meta"):
        net = qsmnet_unet()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv3d)]
    assert len(convs) == 19  # 9 levels x 2, plus the 1^3 head
    assert all(c.kernel_size == (5, 5, 5) and c.padding == (2, 2, 2) for c in convs[:-1])
    assert net.head.kernel_size == (1, 1, 1)
    assert all(c.bias is not None for c in convs)
    acts = [m for m in net.modules() if isinstance(m, nn.ReLU | nn.LeakyReLU)]
    assert len(acts) == 18
    assert all(isinstance(a, nn.LeakyReLU) and a.negative_slope == 0.1 for a in acts)
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm3d)]
    assert len(norms) == 18
    assert all(bn.eps == 1e-3 and bn.momentum == 0.01 for bn in norms)
    ups = [m for m in net.modules() if isinstance(m, nn.ConvTranspose3d)]
    assert [(u.in_channels, u.out_channels) for u in ups] == [
        (512, 256),
        (256, 128),
        (128, 64),
        (64, 32),
    ]
    assert all(u.kernel_size == (2, 2, 2) and u.stride == (2, 2, 2) for u in ups)
    assert all(u.bias is not None for u in ups)


def test_deepqsm_layers():
    with torch.device("meta"):
        net = deepqsm_unet()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv3d)]
    assert all(c.kernel_size == (3, 3, 3) for c in convs[:-1])
    acts = [m for m in net.modules() if isinstance(m, nn.ReLU | nn.LeakyReLU)]
    assert len(acts) == 18 and all(type(a) is nn.ReLU for a in acts)
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm3d)]
    assert all(bn.eps == 1e-5 and bn.momentum == 0.1 for bn in norms)


# ------------------------------------------------------------------------------ shapes, input


def test_small_unet_shape():
    net = UNet3d(1, 1, widths=(4, 8, 16), kernel_size=3)
    assert net.size_multiple == 4
    x = torch.randn(2, 1, 16, 16, 8)
    assert net(x).shape == (2, 1, 16, 16, 8)
    two = UNet3d(2, 3, widths=(4, 8), kernel_size=3).eval()
    assert two(torch.randn(1, 2, 6, 4, 2)).shape == (1, 3, 6, 4, 2)


def test_deepqsm_forward_backward():
    torch.manual_seed(0)
    net = deepqsm_unet(1, 1).train()
    # Batch 2: a 16^3 input reaches the bottleneck as 1 voxel, and training-mode BatchNorm
    # needs more than one value per channel.
    x = torch.randn(2, 1, 16, 16, 16)
    y = net(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


def test_size_not_multiple_raises():
    net = UNet3d(1, 1, widths=(4, 8, 16))
    with pytest.raises(QSMInputError, match=r"multiples of 4.*\[10\]"):
        net(torch.zeros(1, 1, 16, 10, 8))
    with pytest.raises(QSMInputError, match="multiples of 16"):
        deepqsm_unet()(torch.zeros(1, 1, 16, 16, 24, device="meta"))
    with pytest.raises(QSMInputError, match="expected input of shape"):
        net(torch.zeros(1, 2, 16, 16, 8))
    with pytest.raises(QSMInputError, match="expected input of shape"):
        net(torch.zeros(1, 16, 16, 8))


def test_bad_arguments_raise():
    with pytest.raises(QSMInputError, match="activation"):
        UNet3d(widths=(2, 4), activation="gelu")
    with pytest.raises(QSMInputError, match="odd"):
        UNet3d(widths=(2, 4), kernel_size=4)
    with pytest.raises(QSMInputError, match="widths"):
        UNet3d(widths=(2,))
    with pytest.raises(QSMInputError, match="in_channels"):
        SimpleCNN(2, 1)
    with pytest.raises(AttributeError):
        UNet3d(widths=(2, 4)).size_multiple = 4


# ------------------------------------------------------------------------------ SimpleCNN


def test_simple_cnn_global_residual():
    torch.manual_seed(0)
    net = SimpleCNN(2, 2, width=8, n_layers=2)
    for bn in net.modules():
        if isinstance(bn, nn.BatchNorm3d):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    net.eval()
    x = torch.randn(1, 2, 7, 5, 6)
    with torch.no_grad():
        f = net.out_norm(net.out_conv(net.body(x)))
        y = net(x)
        assert y.shape == x.shape
        assert f.abs().max() > 0.1
        torch.testing.assert_close(y, x + f, rtol=0, atol=0)
        net.out_norm.weight.zero_()
        net.out_norm.bias.zero_()
        assert torch.equal(net(x), x)


# ------------------------------------------------------------------------------ golden


def _block(x: torch.Tensor, blk: nn.Module) -> torch.Tensor:
    """conv (3^3, padding 1, bias) -> eval-mode batch norm -> relu, with blk's tensors."""
    conv, bn = blk.conv, blk.norm
    y = F.conv3d(x, conv.weight, conv.bias, padding=1)
    y = F.batch_norm(
        y, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps
    )
    return F.relu(y)


def _reference_tiny_unet(net: UNet3d, x: torch.Tensor, skip_first: bool = True) -> torch.Tensor:
    """UNet3d(widths=(2, 4)) written out with torch.nn.functional calls."""
    enc, bott, dec = net.encoders[0], net.bottleneck, net.decoders[0]
    s = _block(_block(x, enc.block1), enc.block2)  # (B, 2, X, Y, Z)
    d = F.max_pool3d(s, kernel_size=2, stride=2)  # (B, 2, X/2, Y/2, Z/2)
    d = _block(_block(d, bott.block1), bott.block2)  # (B, 4, X/2, Y/2, Z/2)
    u = F.conv_transpose3d(d, dec.up.weight, dec.up.bias, stride=2)  # (B, 2, X, Y, Z)
    joined = torch.cat([s, u] if skip_first else [u, s], dim=1)  # (B, 4, X, Y, Z)
    y = _block(_block(joined, dec.convs.block1), dec.convs.block2)
    return F.conv3d(y, net.head.weight, net.head.bias)


def test_tiny_unet_matches_functional_reference():
    torch.manual_seed(0)
    net = UNet3d(1, 1, widths=(2, 4), kernel_size=3).double()
    with torch.no_grad():
        for bn in net.modules():
            if isinstance(bn, nn.BatchNorm3d):
                bn.running_mean.uniform_(-0.3, 0.3)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.2, 0.2)
    net.eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 6, 4, 8, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = net(x)
        ref = _reference_tiny_unet(net, x)
        swapped = _reference_tiny_unet(net, x, skip_first=False)
    assert y.shape == (2, 1, 6, 4, 8)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    # The check is sensitive to the concatenation order.
    assert (swapped - ref).abs().max() > 1e-3
