"""xQSM (octave-convolution U-Net): parameter count, shapes, gradients, residual, size check
and initialisation. The full model is used throughout (16^3 volumes, well under a second)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from qsmflow.errors import QSMInputError
from qsmflow.models.xqsm import XQSM, OctaveConv, OctaveUp, octave_split

#: The authors' xQSM(2) with 1 input and 1 output channel.
N_PARAMS = 5_215_681


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv_layers(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, nn.Conv3d | nn.ConvTranspose3d)]


# ------------------------------------------------------------------------------ structure


def test_parameter_count_and_its_decomposition():
    with torch.device("meta"):
        net = XQSM()
    assert all(p.device.type == "meta" for p in net.parameters())
    assert n_params(net) == N_PARAMS
    # The table of the module docstring.
    assert n_params(net.input) == 121_120 and n_params(net.input.convert) == 1_920
    assert [n_params(e) for e in net.encoders] == [238_400, 730_752]
    assert n_params(net.middle) == 1_935_808
    assert [n_params(d) for d in net.decoders] == [1_586_912, 458_816]
    assert n_params(net.output) == 143_873 and n_params(net.output.head) == 65
    convs = conv_layers(net)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm3d)]
    assert len(convs) == 69 and len(bns) == 52
    assert sum(m.weight.numel() for m in convs) == 5_206_784
    assert sum(m.bias.numel() for m in convs) == 3_521
    assert sum(n_params(b) for b in bns) == 5_376
    # Closed forms of the docstring: OctaveConv c -> k, OctaveUp of width 2h (halves).
    for c, k in [(64, 64), (64, 128), (256, 128), (128, 64)]:
        with torch.device("meta"):
            conv = OctaveConv(c // 2, c // 2, k // 2, k // 2)
        assert n_params(conv) == 27 * c * k + 2 * k**2 + 6.5 * k
    for h in (32, 64):
        with torch.device("meta"):
            assert n_params(OctaveUp(h, h)) == 107 * h**2 + 8 * h


def test_size_multiple_and_channel_split():
    assert [XQSM(base_width=4, depth=d).size_multiple for d in (1, 2, 3)] == [4, 8, 16]
    assert octave_split(64, 0.5) == (32, 32) and octave_split(8, 0.25) == (6, 2)
    with pytest.raises(ValueError, match="alpha"):
        XQSM(alpha=1.0)
    with pytest.raises(ValueError, match="both groups"):
        octave_split(3, 0.2)
    with pytest.raises(ValueError, match="residual"):
        XQSM(in_channels=1, out_channels=2)


# ------------------------------------------------------------------------------ forward


def test_shapes_full_model():
    torch.manual_seed(0)
    net = XQSM()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 16, 16, 16)).shape == (1, 1, 16, 16, 16)
        net.eval()
        y = net(torch.randn(2, 1, 8, 16, 24))
    assert y.shape == (2, 1, 8, 16, 24) and y.dtype == torch.float32
    assert torch.isfinite(y).all()


def test_other_depths_alphas_and_channels():
    torch.manual_seed(0)
    cases = [
        (XQSM(base_width=8, depth=1), (1, 1, 4, 8, 12), 1),
        (XQSM(base_width=8, depth=3), (1, 1, 16, 16, 32), 1),
        (XQSM(base_width=8, alpha=0.25), (2, 1, 8, 8, 16), 1),
        (XQSM(2, 3, base_width=8, residual=False), (1, 2, 8, 8, 16), 3),
    ]
    for net, shape, cout in cases:
        with torch.no_grad():
            y = net(torch.randn(shape))
        assert y.shape == (shape[0], cout, *shape[2:])


def test_forward_backward_finite_gradients():
    torch.manual_seed(1)
    net = XQSM()
    x = torch.randn(2, 1, 16, 16, 16)
    target = torch.randn_like(x)
    loss = nn.functional.mse_loss(net(x), target, reduction="sum")  # the authors' loss
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    # Biases in front of a training-mode BN get ~0 gradient; every weight gets a real one.
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv3d | nn.ConvTranspose3d | nn.BatchNorm3d):
            assert m.weight.grad.abs().max() > 0, name


def test_global_residual():
    torch.manual_seed(2)
    net = XQSM()
    with torch.no_grad():
        net.output.head.weight.zero_()
        net.output.head.bias.zero_()
    x = torch.randn(1, 1, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(net(x), x, rtol=0, atol=0)
        net.residual = False
        assert net(x).abs().max() == 0
        net.residual = True
        net.output.head.bias.fill_(0.5)
        torch.testing.assert_close(net(x), x + 0.5)


@pytest.mark.parametrize(
    "shape", [(1, 1, 16, 16, 12), (1, 1, 4, 8, 8), (1, 1, 17, 16, 16), (1, 1, 0, 8, 8)]
)
def test_wrong_spatial_size_raises(shape):
    net = XQSM(base_width=4)
    sizes = str(tuple(shape[2:]))
    with pytest.raises(QSMInputError, match="multiples of 8") as info:
        net(torch.zeros(shape))
    assert sizes in str(info.value)


def test_wrong_channels_or_rank_raises():
    net = XQSM(base_width=4)
    for shape in [(1, 2, 8, 8, 8), (1, 8, 8, 8)]:
        with pytest.raises(QSMInputError, match=r"\(B, 1, X, Y, Z\)"):
            net(torch.zeros(shape))


# ------------------------------------------------------------------------------ initialisation


def init_is_normal_001(net: nn.Module) -> bool:
    """Every conv layer with >= 4096 weights has std within 5 % of 0.01, the pooled weights
    within 1 %, and their mean |w| / std is the normal sqrt(2/pi) (a uniform gives 0.866)."""
    convs = conv_layers(net)
    for m in convs:
        w = m.weight.detach()
        if w.numel() >= 4096 and abs(w.std().item() / 0.01 - 1) > 0.05:
            return False
    pooled = torch.cat([m.weight.detach().flatten() for m in convs])
    std = pooled.std().item()
    shape = pooled.abs().mean().item() / std
    return abs(std / 0.01 - 1) < 0.01 and abs(shape - math.sqrt(2 / math.pi)) < 0.01


def test_init_normal_001_biases_zero_bn_identity():
    torch.manual_seed(3)
    net = XQSM()
    assert init_is_normal_001(net)
    for m in net.modules():
        if isinstance(m, nn.Conv3d | nn.ConvTranspose3d):
            assert m.bias is not None and not m.bias.any()
        elif isinstance(m, nn.BatchNorm3d):
            assert (m.weight == 1).all() and not m.bias.any()
            assert not m.running_mean.any() and (m.running_var == 1).all()
    # The same criterion rejects PyTorch's default (Kaiming-uniform) initialisation.
    for m in conv_layers(net):
        m.reset_parameters()
    assert not init_is_normal_001(net)
    # init_weights restores it, reproducibly with a generator.
    net.init_weights(generator=torch.Generator().manual_seed(7))
    assert init_is_normal_001(net)
    first = [p.clone() for p in net.parameters()]
    net.init_weights(generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(a, b) for a, b in zip(first, net.parameters(), strict=True))
