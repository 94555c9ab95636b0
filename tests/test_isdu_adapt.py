"""ISDU-QSMNet inference on a box around the brain (CroppedDenoiser) and test-time adaptation
(qsmflow.models.adapt, ``qsmflow invert --method isdu --adapt N``).

Tiny random networks (width 4, 2 blocks: receptive radius 5) on small volumes; ~15 s.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from qsmflow.cli.main import main
from qsmflow.errors import QSMInputError
from qsmflow.io.nifti import save_volume
from qsmflow.models import ISDUQSMNet, save_isdu
from qsmflow.models.adapt import adapt_to_field, crop_centres
from qsmflow.models.inference import (
    CroppedDenoiser,
    cropped_denoisers,
    mask_box,
    predict_volume,
    receptive_radius,
)


def _tiny_model(n_iterations: int = 2, seed: int = 0) -> ISDUQSMNet:
    """Random tiny network with non-trivial eval-mode BatchNorm and normalisation."""
    torch.manual_seed(seed)
    model = ISDUQSMNet(n_iterations, False, width=4, n_blocks=2, out_mean=-0.003, out_std=0.03)
    for mod in model.modules():
        if isinstance(mod, torch.nn.Conv3d):
            torch.nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
        if isinstance(mod, torch.nn.BatchNorm3d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.1, 0.1)
    for net in model.denoisers:
        net.lambda_val.data.fill_(0.2)
    return model.eval()


def _small_brain(shape=(64, 64, 48), radius=(14, 16, 10), seed=0):
    """An ellipsoidal mask well inside a larger array and a smooth dipole field in it."""
    from scipy import ndimage

    from qsmflow.physics.forward import forward_field

    rng = np.random.default_rng(seed)
    g = np.indices(shape, dtype=np.float64)
    c = (np.array(shape) - 1)[:, None, None, None] / 2
    r2 = (((g - c) / np.array(radius, dtype=np.float64)[:, None, None, None]) ** 2).sum(0)
    mask = r2 < 1
    chi = ndimage.gaussian_filter(rng.standard_normal(shape), 2) * 0.3 * mask
    phi = forward_field(chi, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0)).astype(np.float32) * mask
    return phi, mask


def test_mask_box():
    m = np.zeros((20, 30, 40), bool)
    m[5:8, 10:12, 30:38] = True
    assert mask_box(m, 0) == (slice(5, 8), slice(10, 12), slice(30, 38))
    assert mask_box(m, 3) == (slice(2, 11), slice(7, 15), slice(27, 40))
    assert mask_box(m, None) == (slice(0, 20), slice(0, 30), slice(0, 40))
    with pytest.raises(QSMInputError, match="margin"):
        mask_box(m, -1)


def test_cropped_denoiser_far_field_constant_and_box():
    """Inside the kept box the output equals the whole-array network; elsewhere it is the
    network's response to the constant outside-mask input."""
    net = _tiny_model(1).denoisers[0]
    r = receptive_radius(_tiny_model(1))
    v = torch.full((1, 2, 40, 40, 40), 0.1)
    v[:, :, 15:25, 15:25, 15:25] = torch.randn(1, 2, 10, 10, 10)
    box = (slice(3, 37),) * 3
    with torch.no_grad():
        full = net(v)
        got = CroppedDenoiser(net, box, r)(v)
    keep = (slice(None), slice(None), *(slice(3 + r, 37 - r),) * 3)
    torch.testing.assert_close(got[keep], full[keep], rtol=0, atol=1e-6)
    # the array's interior far from the brain and the box: the far-field constant
    far = (slice(None), slice(None), 20, 20, 1)
    torch.testing.assert_close(got[far], full[(slice(None), slice(None), 20, 20, 14 - r)])


def test_cropped_inference_matches_whole_array_and_runs_less():
    model = _tiny_model(2)
    r = receptive_radius(model)
    phi, mask = _small_brain()
    args = (model, phi, mask, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0))
    whole = predict_volume(*args, device="cpu", crop_margin=None)
    seen = []
    hook = model.denoisers[0].register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].shape))
    try:
        errs = {}
        for margin in (0, r):
            seen.clear()
            got = predict_volume(*args, device="cpu", crop_margin=margin, fuse=False)
            errs[margin] = np.linalg.norm((got - whole)[mask]) / np.linalg.norm(whole[mask])
            sizes = [int(np.prod(s[2:])) for s in seen]
            # the box: mask box (28x32x20 voxels) + margin + r per side; and the (2r+1)^3 cube
            box = np.prod([28 + 2 * (margin + r), 32 + 2 * (margin + r), 20 + 2 * (margin + r)])
            assert max(sizes) == box < 64 * 64 * 48
    finally:
        hook.remove()
    # exact denoiser output up to the margin; what still differs is the zone within r of the
    # array faces, where the whole-array run's zero padding moves the output away from the
    # far-field constant (measured: 4.5e-3 at margin 0, 1.2e-3 at margin r)
    assert errs[r] < 2e-3, errs
    assert errs[0] > 3 * errs[r], errs


def test_cropped_denoisers_restores_modules():
    model = _tiny_model(2)
    originals = list(model.denoisers)
    with pytest.raises(RuntimeError, match="boom"), cropped_denoisers(model, (slice(0, 4),) * 3, 5):
        assert all(isinstance(d, CroppedDenoiser) for d in model.denoisers)
        raise RuntimeError("boom")
    assert list(model.denoisers) == originals


# ------------------------------------------------------------------ test-time adaptation


def test_crop_centres_inside_volume():
    rng = np.random.default_rng(0)
    mask = np.zeros((30, 40, 20), bool)
    mask[10:20, 5:35, 2:18] = True
    for sl in crop_centres(mask, 20, 16, rng):
        for s, n in zip(sl, mask.shape, strict=True):
            assert 0 <= s.start < s.stop <= n and s.stop - s.start == min(16, n)
        assert mask[sl].any()


def test_adapt_reduces_model_loss_and_leaves_model_alone():
    model = _tiny_model(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    phi, mask = _small_brain()
    # crops as large as the volume: every step sees the same field, so the loss must fall
    res = adapt_to_field(
        model, phi, mask, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0), steps=12, lr=3e-3, patch_size=64
    )
    assert len(res.losses) == 12 and res.seconds > 0
    assert res.losses[-1] < 0.8 * res.losses[0], res.losses
    for k, v in model.state_dict().items():  # the caller's model is untouched
        assert torch.equal(v, before[k]), k
    changed = [k for k, v in res.model.state_dict().items() if not torch.equal(v, before[k])]
    assert any("gen" in k for k in changed)
    assert all(float(d.p) == 2.0 for d in res.model.denoisers)  # p fixed: closed-form DC
    # and the adapted model's whole-volume output fits the field better
    from qsmflow.physics.forward import forward_field

    def misfit(m):
        chi = predict_volume(m, phi, mask, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0), device="cpu")
        f = forward_field(chi, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0))
        d = (f - phi)[mask]
        return np.linalg.norm(d - d.mean()) / np.linalg.norm(phi[mask])

    assert misfit(res.model) < misfit(model)


def test_adapt_zero_steps_and_bad_options():
    model = _tiny_model(1)
    phi, mask = _small_brain()
    res = adapt_to_field(model, phi, mask, (1, 1, 1), (0, 0, 1), steps=0)
    assert res.losses == [] and res.model is not model
    for bad, match in (
        ({"steps": -1}, "steps"),
        ({"steps": 1, "lr": 0.0}, "learning rate"),
        ({"steps": 1, "patch_size": 8}, "patch size"),
    ):
        with pytest.raises(QSMInputError, match=match):
            adapt_to_field(model, phi, mask, (1, 1, 1), (0, 0, 1), **bad)
    with pytest.raises(QSMInputError, match="mask"):
        adapt_to_field(model, phi, np.zeros_like(mask), (1, 1, 1), (0, 0, 1), steps=1)


def test_cli_invert_isdu_adapt_sidecar(tmp_path, capsys):
    model = _tiny_model(2)
    weights = tmp_path / "tiny.pt"
    save_isdu(weights, model)
    phi, mask = _small_brain()
    save_volume(tmp_path / "phi.nii.gz", phi, np.eye(4))
    save_volume(tmp_path / "mask.nii.gz", mask.astype(np.uint8), np.eye(4))
    common = ["invert", str(tmp_path / "phi.nii.gz"), "-m", str(tmp_path / "mask.nii.gz")]
    common += ["--method", "isdu", "--weights", str(weights), "--device", "cpu"]
    out = tmp_path / "chi.nii.gz"
    assert main([*common, "-o", str(out), "--adapt", "2", "--adapt-lr", "1e-3"]) == 0
    assert "adapted 2 steps" in capsys.readouterr().out
    side = json.loads((tmp_path / "chi.json").read_text())
    assert side["AdaptSteps"] == 2 and side["AdaptLearningRate"] == 1e-3
    assert len(side["AdaptModelLoss"]) == 2 and side["AdaptSeconds"] > 0
    assert side["CropMargin"] == 8
    assert side["InversionOptions"]["adapt"] == 2
    # --crop-margin -1: the whole array; no adaptation by default
    assert main([*common, "-o", str(tmp_path / "chi2.nii.gz"), "--crop-margin", "-1"]) == 0
    side2 = json.loads((tmp_path / "chi2.json").read_text())
    assert side2["CropMargin"] is None and side2["AdaptSteps"] == 0
    assert side2["AdaptModelLoss"] is None
    # bad values: a clear error, exit code 2
    assert main([*common, "-o", str(tmp_path / "bad.nii.gz"), "--adapt", "-1"]) == 2
    assert "adapt" in capsys.readouterr().err


def test_cli_help_states_the_adaptation_and_crop_defaults():
    """The command's help text (torch-free) names the defaults of qsmflow.models."""
    import re

    from qsmflow.cli.invert import DESCRIPTION
    from qsmflow.models.adapt import ADAPT_LR
    from qsmflow.models.inference import CROP_MARGIN

    text = " ".join(DESCRIPTION.split())
    lr = re.search(r"--adapt-lr \(default ([0-9.e-]+)\)", text)
    assert lr and float(lr.group(1)) == ADAPT_LR
    assert f"exact to N voxels beyond it, default {CROP_MARGIN};" in text
