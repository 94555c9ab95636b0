"""ISDU-QSMNet model, solvers, checkpoints and losses (small volumes; no reference needed
except for the strict loading of the authors' three .pth files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from qsmflow.errors import QSMInputError
from qsmflow.models import (
    ISDUQSMNet,
    WideResNet,
    conjugate_gradient,
    isdu_kernel,
    load_denoiser_state,
    load_isdu,
    normal_operator,
    reference_kernel,
    save_isdu,
    solve_consistency_closed_form,
)
from qsmflow.models.checkpoints import FORMAT, VERSION
from qsmflow.training.losses import combined_l1_loss, combined_l2_loss, mse_loss, sobel_filters

TINY = {"width": 4, "n_blocks": 1}
N_PARAMS = 447_234

AUTHORS_PTH = {
    "k1_full_Spinet_QSM_model_26_.pth": (0.113444, 2.0),
    "sw_k4_full_Spinet_QSM_model_28_.pth": (0.156546, 2.0),
    "spinet_model_weights.pth": (0.037812, 1.583847),
}


def n_params(module: torch.nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


def volume(shape=(15, 12, 9), batch=1, seed=0, voxel=(0.8, 1.0, 1.6), b0=(0.2, 0.3, 0.93)):
    """A smooth random susceptibility blob, its field (D(0) = 1/3) and a mask; float32."""
    g = torch.Generator().manual_seed(seed)
    chi = torch.randn((batch, 1, *shape), generator=g, dtype=torch.float64) * 0.05
    freqs = np.meshgrid(*[np.fft.fftfreq(n) for n in shape], indexing="ij")
    lowpass = torch.from_numpy(np.exp(-20 * sum(f**2 for f in freqs)))
    chi = torch.fft.ifftn(lowpass * torch.fft.fftn(chi, dim=(-3, -2, -1)), dim=(-3, -2, -1)).real
    kernel = isdu_kernel(shape, voxel, b0).double()
    mask = torch.zeros((batch, 1, *shape), dtype=torch.uint8)
    mask[..., 2:-2, 2:-2, 1:-1] = 1
    chi = chi * mask
    phi = torch.fft.ifftn(kernel * torch.fft.fftn(chi, dim=(-3, -2, -1)), dim=(-3, -2, -1)).real
    return chi.float(), (phi * mask).float(), mask, kernel.float()


# ------------------------------------------------------------------------------ denoiser


def test_parameter_count():
    net = WideResNet()
    assert n_params(net) == N_PARAMS
    assert n_params(net, trainable=True) == N_PARAMS - 1  # p frozen
    assert not net.p.requires_grad and net.lambda_val.requires_grad
    assert n_params(WideResNet(learn_p=True), trainable=True) == N_PARAMS
    assert net.gen[0].weight.numel() == 1728
    assert n_params(net.gen[2][0]) == 55_424
    keys = list(net.state_dict())
    assert keys[:3] == ["lambda_val", "p", "gen.0.weight"]
    assert "gen.2.7.bn2.num_batches_tracked" in keys and "gen.7.weight" in keys
    assert net(torch.zeros(1, 2, 5, 6, 7)).shape == (1, 2, 5, 6, 7)


@pytest.mark.parametrize("name", sorted(AUTHORS_PTH))
def test_strict_loading_of_authors_weights(reference_isdu, name):
    state = load_denoiser_state(reference_isdu / name)
    net = WideResNet(learn_p=name.startswith("spinet"))
    result = net.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    lam, p = AUTHORS_PTH[name]
    assert net.lambda_val.item() == pytest.approx(lam, abs=1e-6)
    assert net.p.item() == pytest.approx(p, abs=1e-6)
    assert all(t.device.type == "cpu" for t in state.values())  # saved from CUDA tensors
    model = load_isdu(reference_isdu / name)  # the ISDU initialisation: K = 4 copies
    assert len(model.denoisers) == 4 and not model.training
    for d in model.denoisers:
        torch.testing.assert_close(d.state_dict(), state, rtol=0, atol=0)


# ------------------------------------------------------------------------------ checkpoints


def _save_state(path: Path, state) -> Path:
    torch.save(state, path)
    return path


def test_corrupt_and_missing_files_name_the_file(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    good = _save_state(tmp_path / "good.pth", WideResNet().state_dict())
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for path in (garbage, truncated, tmp_path / "absent.pth"):
        with pytest.raises(QSMInputError, match=path.name) as info:
            load_denoiser_state(path)
        assert info.value.source == str(path)
        with pytest.raises(QSMInputError, match=path.name):
            load_isdu(path)


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_arbitrary_objects_are_not_unpickled(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"lambda_val": _Evil()}, path)
    with pytest.raises(QSMInputError, match="evil.pth"):
        load_denoiser_state(path)
    assert "unpickled!" not in capsys.readouterr().out


def test_wrong_keys_and_shapes_name_the_file(tmp_path):
    state = WideResNet().state_dict()
    missing = dict(state)
    del missing["gen.2.3.conv1.weight"]
    missing["gen.9.weight"] = torch.zeros(1)
    path = _save_state(tmp_path / "keys.pth", missing)
    with pytest.raises(QSMInputError, match="keys.pth") as info:
        load_denoiser_state(path)
    assert "gen.2.3.conv1.weight" in str(info.value) and "gen.9.weight" in str(info.value)

    path = _save_state(tmp_path / "narrow.pth", WideResNet(width=16).state_dict())
    with pytest.raises(QSMInputError, match="narrow.pth") as info:
        load_isdu(path)
    assert "shape mismatch" in str(info.value) and "gen.0.weight" in str(info.value)

    path = _save_state(tmp_path / "list.pth", [1, 2, 3])
    with pytest.raises(QSMInputError, match="list.pth"):
        load_denoiser_state(path)

    # a qsmflow checkpoint loaded with an architecture override that does not fit it
    save_isdu(tmp_path / "ours.pt", ISDUQSMNet(n_iterations=2, **TINY))
    with pytest.raises(QSMInputError, match="ours.pt"):
        load_isdu(tmp_path / "ours.pt", width=8)


def test_from_k1_denoiser_gives_independent_copies():
    source = WideResNet(**TINY, lambda_init=0.25)
    with torch.no_grad():
        source.gen[0].weight.normal_()
    state = source.state_dict()
    model = ISDUQSMNet.from_k1_denoiser(state, n_iterations=4, **TINY)
    assert len(model.denoisers) == 4
    for d in model.denoisers:
        torch.testing.assert_close(d.state_dict(), state, rtol=0, atol=0)
    with torch.no_grad():
        model.denoisers[0].lambda_val.fill_(9.0)
        model.denoisers[0].gen[0].weight.add_(1.0)
    for d in model.denoisers[1:]:
        assert d.lambda_val.item() == 0.25
        torch.testing.assert_close(d.gen[0].weight, source.gen[0].weight, rtol=0, atol=0)
        assert d.gen[0].weight.data_ptr() != model.denoisers[0].gen[0].weight.data_ptr()
    shared = ISDUQSMNet.from_k1_denoiser(state, n_iterations=4, shared_weights=True, **TINY)
    assert len(shared.denoisers) == 1 and shared.denoiser(3) is shared.denoiser(0)


def test_shared_and_unshared_parameter_counts():
    assert n_params(ISDUQSMNet(n_iterations=4, shared_weights=True)) == N_PARAMS
    assert n_params(ISDUQSMNet(n_iterations=4)) == 4 * N_PARAMS
    assert n_params(ISDUQSMNet(n_iterations=4), trainable=True) == 4 * (N_PARAMS - 1)
    # normalisation constants are buffers, not parameters
    model = ISDUQSMNet(n_iterations=1, **TINY)
    assert {"out_mean", "out_std"} <= set(model.state_dict())
    assert all(not name.startswith("out_") for name, _ in model.named_parameters())


def test_save_load_round_trip_exact(tmp_path):
    torch.manual_seed(1)
    model = ISDUQSMNet(n_iterations=3, dc_mode="cg", cg_max_iter=7, learn_p=True, **TINY)
    with torch.no_grad():
        for i, d in enumerate(model.denoisers):
            d.lambda_val.fill_(0.1 * (i + 1))
            d.p.fill_(1.5)
            d.gen[2][0].bn1.running_mean.normal_()
    path = tmp_path / "sub" / "model.pt"
    extra = {"epoch": 3, "val_loss": [0.5, 0.25], "note": "x"}
    assert save_isdu(path, model, extra=extra) == path
    save_isdu(path, model, extra=extra)  # overwriting is fine
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # no temporaries
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == FORMAT and raw["version"] == VERSION and raw["extra"] == extra
    loaded = load_isdu(path)
    assert loaded.config == model.config
    torch.testing.assert_close(loaded.state_dict(), model.state_dict(), rtol=0, atol=0)
    assert loaded.denoiser(2).p.requires_grad
    _, phi, mask, kernel = volume()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(phi, mask, kernel), model(phi, mask, kernel), rtol=0, atol=0
        )
    assert load_isdu(path, dc_mode="reference").dc_mode == "reference"

    raw["version"] = 99
    torch.save(raw, tmp_path / "v99.pt")
    with pytest.raises(QSMInputError, match="v99.pt"):
        load_isdu(tmp_path / "v99.pt")
    raw["format"] = "other"
    torch.save(raw, tmp_path / "other.pt")
    with pytest.raises(QSMInputError, match="format"):
        load_isdu(tmp_path / "other.pt")


def test_authors_unshared_checkpoint_dict(tmp_path):
    states = []
    for k in range(2):
        net = WideResNet(lambda_init=0.1 + k)
        states.append(net.state_dict())
    path = _save_state(
        tmp_path / "model_5.pt",
        {"K_unrolling": 2, "epoch_no": 5, "model_0": states[0], "model_1": states[1]},
    )
    model = load_isdu(path)
    assert model.n_iterations == 2 and not model.shared_weights
    assert [d.lambda_val.item() for d in model.denoisers] == pytest.approx([0.1, 1.1])


# ------------------------------------------------------------------------------ forward


@pytest.mark.parametrize("shape", [(15, 12, 9), (16, 10, 8)])
def test_forward_anisotropic_oblique_odd_shapes(shape):
    torch.manual_seed(0)
    chi, phi, mask, kernel = volume(shape, batch=2)
    model = ISDUQSMNet(n_iterations=2, **TINY).eval()
    with torch.no_grad():
        out, it = model(phi, mask, kernel, return_intermediates=True)
        out_b = model(phi, mask.bool(), kernel.expand(2, -1, -1, -1, -1).contiguous())
        ref = ISDUQSMNet(n_iterations=2, dc_mode="reference", **TINY)
        ref.load_state_dict(model.state_dict())
        out_ref = ref.eval()(phi, mask, kernel)
    assert out.shape == phi.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all() and (out[mask == 0] == 0).all()
    assert it.solvers == ["closed_form", "closed_form"]
    torch.testing.assert_close(out_b, out, rtol=0, atol=0)
    assert out_ref.dtype == torch.float64
    err = (out_ref - out.double()).norm() / out_ref.norm()
    assert err < 1e-4  # early-stopped complex128 CG vs exact float32 closed form


def test_forward_input_validation():
    _, phi, mask, kernel = volume()
    model = ISDUQSMNet(n_iterations=1, **TINY)
    with pytest.raises(QSMInputError, match="phi"):
        model(phi[0], mask[0], kernel)
    with pytest.raises(QSMInputError, match="mask"):
        model(phi, mask[..., :-1], kernel)
    with pytest.raises(QSMInputError, match="kernel"):
        model(phi, mask, kernel[..., :-1])
    with pytest.raises(QSMInputError, match="kernel"):
        model(phi, mask, kernel.to(torch.complex64))
    with pytest.raises(QSMInputError, match="dc_mode"):
        ISDUQSMNet(dc_mode="nope", **TINY)
    model = ISDUQSMNet(n_iterations=1, dc_mode="closed_form", p_init=1.5, **TINY)
    with pytest.raises(QSMInputError, match="p == 2"):
        model(phi, mask, kernel)


def test_gradients_reach_lambda_and_weights():
    chi, phi, mask, kernel = volume(batch=2)
    model = ISDUQSMNet(n_iterations=2, **TINY).train()
    out = model(phi, mask, kernel)
    loss = combined_l1_loss(out, chi, phi, mask, kernel)["total"]
    loss.backward()
    for d in model.denoisers:
        assert d.lambda_val.grad is not None and d.lambda_val.grad.abs().item() > 0
        assert d.gen[0].weight.grad.abs().sum().item() > 0
        assert d.gen[2][0].bn1.weight.grad.abs().sum().item() > 0
        assert d.p.grad is None  # frozen in ISDU

    # learnable p (SpiNet): "auto" switches to CG so that p gets a gradient
    model = ISDUQSMNet(n_iterations=1, learn_p=True, p_init=1.6, **TINY).train()
    out, it = model(phi, mask, kernel, return_intermediates=True)
    assert it.solvers == ["cg"]
    mse_loss(out, chi).backward()
    assert model.denoisers[0].p.grad.abs().item() > 0
    assert model.denoisers[0].lambda_val.grad.abs().item() > 0


def test_closed_form_solves_normal_equations():
    _, phi, mask, kernel = volume(batch=2)
    phi, kernel = phi.double(), kernel.double()
    g = torch.Generator().manual_seed(3)
    z = torch.complex(
        torch.randn(phi.shape, generator=g, dtype=torch.float64),
        torch.randn(phi.shape, generator=g, dtype=torch.float64),
    )
    lam = torch.tensor([0.11], dtype=torch.float64)
    phi_hat_d = kernel * torch.fft.fftn(phi, dim=(-3, -2, -1))
    x = solve_consistency_closed_form(phi_hat_d, z, kernel * kernel, lam)
    b = torch.fft.ifftn(phi_hat_d, dim=(-3, -2, -1)) + lam * z
    residual = normal_operator(x, kernel * kernel, lam, None) - b
    assert (residual.abs().norm() / b.abs().norm()).item() < 1e-12
    # float32 (the default compute dtype)
    x32 = solve_consistency_closed_form(
        phi_hat_d.to(torch.complex64), z.to(torch.complex64), kernel.float() ** 2, lam.float()
    )
    assert ((x32 - x).abs().norm() / x.abs().norm()).item() < 1e-5


def test_cg_with_eps_weights_converges_for_p_not_2():
    _, phi, mask, kernel = volume(batch=2)
    phi, kernel = phi.double(), kernel.double()
    g = torch.Generator().manual_seed(4)
    x_k = torch.randn(phi.shape, generator=g, dtype=torch.float64) * 0.05 * mask
    z = torch.randn(phi.shape, generator=g, dtype=torch.float64).to(torch.complex128) * 0.05
    z[0, 0, 3, 3, 3] = x_k[0, 0, 3, 3, 3]  # x == z somewhere: finite weight thanks to eps
    p, lam, eps = 1.4, torch.tensor([0.05], dtype=torch.float64), 1e-6
    w_sq = ((x_k - z).abs() ** 2 + eps) ** ((p - 2) / 2)
    assert torch.isfinite(w_sq).all() and w_sq.max() <= eps ** ((p - 2) / 2) + 1e-9
    b = torch.fft.ifftn(kernel * torch.fft.fftn(phi, dim=(-3, -2, -1)), dim=(-3, -2, -1))
    b = b + lam * w_sq * z

    def apply_a(u):
        return normal_operator(u, kernel * kernel, lam, w_sq)

    res = conjugate_gradient(apply_a, b, max_iter=500, rel_tol=1e-8)
    assert all(n < 500 for n in res.iterations)
    rel_res = (apply_a(res.x) - b).abs().flatten(1).norm(dim=1) / b.abs().flatten(1).norm(dim=1)
    assert (rel_res < 1e-7).all()
    assert all(len(r) == n + 1 for r, n in zip(res.residuals, res.iterations, strict=True))
    # samples are solved independently: the batch gives the per-sample answers
    single = conjugate_gradient(
        lambda u: normal_operator(u, kernel * kernel, lam, w_sq[1:]),
        b[1:],
        max_iter=500,
        rel_tol=1e-8,
    )
    assert single.iterations == res.iterations[1:]
    torch.testing.assert_close(single.x, res.x[1:], rtol=1e-10, atol=1e-12)
    # the authors' absolute rules and the cap
    capped = conjugate_gradient(apply_a, b, max_iter=3, abs_tol=1e-30)
    assert capped.iterations == [3, 3] and all(len(r) == 3 for r in capped.residuals)


def test_default_cg_path_in_model():
    chi, phi, mask, kernel = volume()
    model = ISDUQSMNet(n_iterations=2, dc_mode="cg", p_init=1.5, cg_max_iter=200, **TINY).eval()
    with torch.no_grad():
        out, it = model(phi, mask, kernel, return_intermediates=True)
    assert it.solvers == ["cg", "cg"] and torch.isfinite(out).all()
    for iters, logs in zip(it.cg_iterations, it.cg_residuals, strict=True):
        assert 0 < iters[0] < 200
        assert logs[0][-1] <= model.cg_tol**2 * logs[0][0]
    assert all(w is not None and (w > 0).all() for w in it.weights_squared)
    # p = 2 through CG equals the closed form
    cg2 = ISDUQSMNet(n_iterations=1, dc_mode="cg", cg_tol=1e-7, cg_max_iter=200, **TINY).eval()
    cf2 = ISDUQSMNet(n_iterations=1, **TINY).eval()
    cf2.load_state_dict(cg2.state_dict())
    with torch.no_grad():
        a, b = cg2(phi.double(), mask, kernel), cf2(phi.double(), mask, kernel)
    assert ((a - b).norm() / b.norm()).item() < 1e-6


def test_config_rebuilds_model():
    model = ISDUQSMNet(n_iterations=3, shared_weights=True, cg_tol=1e-4, **TINY)
    clone = ISDUQSMNet(**model.config)
    assert clone.config == model.config
    assert clone.state_dict().keys() == model.state_dict().keys()


def test_reference_kernel_properties():
    d = reference_kernel((7, 8, 6))
    assert d.dtype == np.float32 and d[0, 0, 0] == np.float32(1 / 3)
    assert d.min() >= -2 / 3 - 1e-6 and d.max() <= 1 / 3 + 1e-6
    np.testing.assert_allclose(d, d[(-np.arange(7)) % 7][:, (-np.arange(8)) % 8], atol=0)
    with pytest.raises(QSMInputError):
        isdu_kernel((8, 8, 8), b0_dir=(0, 1, 1), reference=True)


# ------------------------------------------------------------------------------ losses


def test_losses_basic_properties():
    chi, phi, mask, kernel = volume(batch=2)
    for fn in (combined_l1_loss, combined_l2_loss):
        terms = fn(chi, chi, phi, mask, kernel)
        assert terms["voxel"].item() == 0 and terms["sobel"].item() == 0
        assert terms["total"].item() < 1e-9  # phi is consistent with chi: model term ~ 0
    other = chi + 0.01
    l1 = combined_l1_loss(other, chi, phi, mask, kernel)
    assert l1["voxel"].item() == pytest.approx(0.01, rel=1e-4)
    assert l1["sobel"].item() > 0  # a constant offset is seen only at the zero-padded border
    assert set(combined_l2_loss(other, chi, phi, mask, kernel)) == {
        "voxel",
        "sobel",
        "model_not_added",
        "total",
    }
    s = sobel_filters(torch.float64)
    assert s.shape == (3, 1, 3, 3, 3) and s.sum().item() == 0
    ramp = torch.arange(5.0, dtype=torch.float64)[:, None, None].expand(5, 5, 5)[None, None]
    resp = torch.nn.functional.conv3d(ramp, s)[0, :, 0, 0, 0]  # interior, cross-correlation
    assert resp.tolist() == [-32.0, 0.0, 0.0]  # channel 0 differentiates along axis 0
