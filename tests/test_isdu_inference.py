"""Whole-volume ISDU-QSMNet inference (qsmflow.models.inference), ``qsmflow invert --method
isdu``, the pipeline's isdu node and its configuration.

Small and fast: the padding, tiling and pipeline checks use a tiny random network (width 4, 2
blocks, receptive radius 5); the authors' K = 1 weights run once on the 96x96x80 reference
block (~5-7 s on 2 cores) and on small crops of it. The whole file takes ~30-40 s on 2 cores.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from qsmflow.cli.main import main
from qsmflow.config import PipelineConfig, config_from_dict
from qsmflow.errors import QSMInputError
from qsmflow.io.nifti import load_volume, save_volume
from qsmflow.models import ISDUQSMNet, inference, isdu_kernel, load_isdu, save_isdu
from qsmflow.models.inference import (
    TiledDenoiser,
    fused_denoisers,
    pad_widths,
    predict_volume,
    tiled_denoisers,
)
from qsmflow.models.wideresnet import FusedWideResNet, WideResNet, fold_batchnorm
from qsmflow.physics.geometry import b0_dir_from_affine, rotation_matrix

K1_PTH = "k1_full_Spinet_QSM_model_26_.pth"


def _tiny_model(n_iterations: int = 2, shared: bool = False, seed: int = 0) -> ISDUQSMNet:
    """Random tiny network with non-trivial eval-mode BatchNorm (radius 5 voxels)."""
    torch.manual_seed(seed)
    model = ISDUQSMNet(n_iterations, shared, width=4, n_blocks=2)
    for mod in model.modules():
        if isinstance(mod, torch.nn.Conv3d):
            torch.nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
        if isinstance(mod, torch.nn.BatchNorm3d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


def _case(shape, seed=0):
    rng = np.random.default_rng(seed)
    g = np.indices(shape, dtype=np.float64)
    c = (np.array(shape, dtype=np.float64) - 1)[:, None, None, None] / 2
    r = np.sqrt((((g - c) / (0.45 * np.array(shape))[:, None, None, None]) ** 2).sum(0))
    mask = r < 1
    phi = (rng.standard_normal(shape) * 0.02).astype(np.float32) * mask
    return phi, mask


@pytest.fixture(scope="module")
def ref_inputs(reference_isdu):
    z = np.load(reference_isdu / "inputs.npz")
    return z["phi"], z["mask"].astype(bool)


@pytest.fixture(scope="module")
def k1_model(reference_isdu):
    return load_isdu(reference_isdu / K1_PTH, n_iterations=1)


# ------------------------------------------------------------------ padding, crop, checks


def test_pad_widths():
    assert pad_widths((21, 18, 13), 16) == [(5, 6), (7, 7), (1, 2)]
    assert pad_widths((96, 96, 80), 16) == [(0, 0)] * 3
    assert pad_widths((5, 6, 7), 1) == [(0, 0)] * 3


def test_padding_and_crop_odd_shape():
    shape = (21, 18, 13)
    phi, mask = _case(shape)
    phi[~mask] = np.nan  # outside the mask: ignored
    model = _tiny_model()
    vox, b0 = (1.0, 0.9, 1.3), (0.1, -0.2, 0.97)
    chi = predict_volume(model, phi, mask, vox, b0, device="cpu")
    assert chi.shape == shape and chi.dtype == np.float32
    assert np.all(chi[~mask] == 0) and np.all(np.isfinite(chi))
    assert np.abs(chi[mask]).max() > 0
    # the same as padding by hand (split padding, zero field outside the mask) and cropping
    widths = pad_widths(shape, 16)
    fpad = np.pad(np.where(mask, phi, 0).astype(np.float32), widths)
    mpad = np.pad(mask, widths)
    kernel = isdu_kernel(fpad.shape, vox, b0)
    with torch.no_grad():
        full = model(
            torch.from_numpy(fpad)[None, None], torch.from_numpy(mpad)[None, None].float(), kernel
        )
    crop = tuple(slice(a, a + n) for (a, _), n in zip(widths, shape, strict=True))
    np.testing.assert_allclose(chi, full[0, 0].numpy()[crop] * mask, rtol=0, atol=1e-7)
    # no padding: a different FFT grid, still the input shape
    chi1 = predict_volume(model, phi, mask, vox, b0, device="cpu", pad_multiple=1)
    assert chi1.shape == shape and np.all(chi1[~mask] == 0)


def test_predict_volume_restores_mode_and_checks_input():
    model = _tiny_model(1)
    model.train()
    phi, mask = _case((16, 16, 16))
    predict_volume(model, phi, mask, (1, 1, 1), (0, 0, 1), device="cpu")
    assert model.training  # restored
    bad = phi.copy()
    i, j, k = (a[0] for a in np.nonzero(mask))
    bad[i, j, k] = np.inf
    with pytest.raises(QSMInputError, match="NaN/inf"):
        predict_volume(model, bad, mask, (1, 1, 1), (0, 0, 1))
    with pytest.raises(QSMInputError, match="grid"):
        predict_volume(model, phi, mask[:-1], (1, 1, 1), (0, 0, 1))
    with pytest.raises(QSMInputError, match="empty"):
        predict_volume(model, phi, np.zeros_like(mask), (1, 1, 1), (0, 0, 1))
    with pytest.raises(QSMInputError, match="3-D"):
        predict_volume(model, phi[0], mask[0], (1, 1, 1), (0, 0, 1))
    with pytest.raises(QSMInputError, match="voxel size"):
        predict_volume(model, phi, mask, (1, 0, 1), (0, 0, 1))
    with pytest.raises(QSMInputError, match="tile_size"):
        predict_volume(model, phi, mask, (1, 1, 1), (0, 0, 1), tile_size=0)


# ------------------------------------------------------------------------------- tiling


def test_tiled_denoisers_swap_and_restore():
    model = _tiny_model(3, shared=False)
    originals = list(model.denoisers)
    with tiled_denoisers(model, 8, 5):
        assert all(isinstance(d, TiledDenoiser) for d in model.denoisers)
        wrapped = model.denoiser(1)
        assert wrapped.gen is originals[1].gen
        assert wrapped.lambda_val is originals[1].lambda_val and wrapped.p is originals[1].p
    assert list(model.denoisers) == originals
    with pytest.raises(RuntimeError, match="boom"), tiled_denoisers(model, 8, 5):
        raise RuntimeError("boom")
    assert list(model.denoisers) == originals
    with tiled_denoisers(model, None):
        assert list(model.denoisers) == originals


def test_tiled_equals_untiled_tiny_unshared():
    shape = (40, 35, 30)  # padded to 48x48x32: 3x3x2 tiles of 16
    phi, mask = _case(shape, seed=1)
    model = _tiny_model(2, shared=False, seed=1)
    a = predict_volume(model, phi, mask, (1, 1, 1.1), (0, 0.3, 1), device="cpu")
    b = predict_volume(
        model, phi, mask, (1, 1, 1.1), (0, 0.3, 1), device="cpu", tile_size=16, halo=5
    )
    assert np.abs(a).max() > 1e-3
    assert np.abs(a - b).max() < 1e-5


def test_tiled_equals_untiled_authors_weights(k1_model, ref_inputs):
    """A 64x64x48 crop (larger than one 32^3 tile), the authors' K = 1 weights."""
    assert inference.receptive_radius(k1_model) == inference.RECEPTIVE_RADIUS == 17
    phi, mask = ref_inputs
    crop = (slice(16, 80), slice(16, 80), slice(16, 64))
    phi, mask = phi[crop], mask[crop]
    a = predict_volume(k1_model, phi, mask, (1, 1, 1), (0, 0, 1), device="cpu")
    b = predict_volume(
        k1_model, phi, mask, (1, 1, 1), (0, 0, 1), device="cpu", tile_size=32, halo=20
    )
    assert np.abs(a - b).max() < 1e-5
    # a halo below the receptive radius (17) is visibly wrong: the test can see tiling errors
    c = predict_volume(
        k1_model, phi, mask, (1, 1, 1), (0, 0, 1), device="cpu", tile_size=32, halo=6
    )
    assert np.abs(a - c).max() > 1e-3


# ------------------------------------------------------------------- fused denoisers


def test_fold_batchnorm_equals_conv_then_bn():
    torch.manual_seed(3)
    for bias in (False, True):
        conv = torch.nn.Conv3d(3, 5, 3, padding=1, bias=bias).double()
        bn = torch.nn.BatchNorm3d(5).double().eval()
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.1, 3)
        bn.weight.data.uniform_(-2, 2)
        bn.bias.data.uniform_(-1, 1)
        x = torch.randn(2, 3, 7, 6, 5, dtype=torch.float64)
        with torch.no_grad():
            expected = bn(conv(x))
            got = fold_batchnorm(conv, bn)(x)
        assert got.dtype == torch.float64
        assert float((got - expected).abs().max()) < 1e-12 * float(expected.abs().max())


@pytest.mark.parametrize("channels_last", [True, False])
def test_fused_wideresnet_equals_eval_network(channels_last):
    model = _tiny_model(1, seed=4)
    net = model.denoisers[0]
    x = torch.randn(2, 2, 12, 10, 9)
    fused = FusedWideResNet(net, channels_last=channels_last)
    with torch.no_grad():
        expected, got = net(x), fused(x)
    assert got.is_contiguous() and got.shape == expected.shape
    assert float((got - expected).abs().max()) < 1e-5 * float(expected.abs().max())
    # float64 network: agreement to float64 rounding (the folding itself is exact)
    net64 = _tiny_model(1, seed=4).double().denoisers[0]
    with torch.no_grad():
        e64, g64 = (
            net64(x.double()),
            FusedWideResNet(net64, channels_last=channels_last)(x.double()),
        )
    assert float((g64 - e64).abs().max()) < 1e-12 * float(e64.abs().max())
    assert fused.lambda_val is net.lambda_val and fused.p is net.p
    assert not any(p.requires_grad for p in fused.gen.parameters())
    with pytest.raises(RuntimeError, match="inference only"):
        fused.train()


def test_fused_denoisers_swap_restore_and_equal_results():
    model = _tiny_model(3, shared=False, seed=5)
    originals = list(model.denoisers)
    with fused_denoisers(model):
        assert all(isinstance(d, FusedWideResNet) for d in model.denoisers)
    assert list(model.denoisers) == originals
    with pytest.raises(RuntimeError, match="boom"), fused_denoisers(model):
        raise RuntimeError("boom")
    assert list(model.denoisers) == originals
    with fused_denoisers(model, enabled=False):
        assert list(model.denoisers) == originals
    shape = (30, 26, 21)
    phi, mask = _case(shape, seed=5)
    args = (model, phi, mask, (1, 1, 1.2), (0.2, 0, 1))
    plain = predict_volume(*args, device="cpu", fuse=False)
    fused = predict_volume(*args, device="cpu")
    tiled = predict_volume(*args, device="cpu", tile_size=16, halo=5)
    scale = np.abs(plain).max()
    assert scale > 1e-3
    assert np.abs(fused - plain).max() < 1e-5 * scale
    assert np.abs(tiled - plain).max() < 1e-5 * scale
    assert all(isinstance(d, WideResNet) for d in model.denoisers)


# --------------------------------------------------------------------------- reference


def test_reference_block_matches_golden_k1(k1_model, ref_inputs, reference_isdu):
    """96x96x80 is a multiple of 16: no padding, so predict_volume is the default-path model
    (closed-form data consistency, float32) and matches the authors' output to 1e-5."""
    phi, mask = ref_inputs
    golden = np.load(reference_isdu / "k1.npz")["chi_hat"].astype(np.float64)
    chi = predict_volume(k1_model, phi, mask, (1, 1, 1), (0, 0, 1), device="auto")
    assert chi.shape == golden.shape and chi.dtype == np.float32
    rel = np.linalg.norm(chi - golden) / np.linalg.norm(golden)
    assert rel < 1e-5, rel


# --------------------------------------------------------------------------------- CLI


@pytest.fixture()
def nifti_block(tmp_path, ref_inputs):
    """A 36x40x30 crop of the reference block on an oblique, anisotropic grid."""
    phi, mask = ref_inputs
    crop = (slice(30, 66), slice(28, 68), slice(25, 55))
    phi, mask = phi[crop], mask[crop]
    affine = np.eye(4)
    affine[:3, :3] = rotation_matrix((1, 0, 0), 10) @ np.diag([1.0, 1.0, 1.1])
    paths = {
        "field": save_volume(tmp_path / "local.nii.gz", phi, affine),
        "mask": save_volume(tmp_path / "mask.nii.gz", mask.astype(np.uint8), affine),
    }
    return paths, phi, mask, affine


def _invert_args(paths, out, *extra):
    return [
        "invert",
        str(paths["field"]),
        "-m",
        str(paths["mask"]),
        "-o",
        str(out),
        "--method",
        "isdu",
        *extra,
    ]


def test_cli_invert_isdu_authors_weights(nifti_block, tmp_path, reference_isdu, k1_model):
    paths, phi, mask, affine = nifti_block
    out = tmp_path / "chi_isdu.nii.gz"
    weights = reference_isdu / K1_PTH
    args = ["--weights", str(weights), "--iterations", "1", "--device", "cpu", "--tile", "24"]
    assert main(_invert_args(paths, out, *args)) == 0
    vol = load_volume(out)
    b0 = b0_dir_from_affine(affine)
    expected = predict_volume(k1_model, phi, mask, (1.0, 1.0, 1.1), b0, device="cpu")
    assert np.abs(vol.data - expected).max() < 1e-5
    assert np.all(vol.data[~mask] == 0)
    side = json.loads((tmp_path / "chi_isdu.json").read_text())
    assert side["InversionMethod"] == "isdu" and side["Units"] == "ppm"
    assert side["Weights"] == str(weights)
    assert side["WeightsSHA256"] == inference.file_sha256(weights)
    assert side["Iterations"] == 1 and side["SharedWeights"] is False
    assert side["Device"] == "cpu" and side["TileSize"] == 24
    assert side["B0DirectionSource"] == "affine"
    np.testing.assert_allclose(side["B0Direction"], b0, atol=1e-6)
    np.testing.assert_allclose(side["VoxelSizeMM"], (1.0, 1.0, 1.1), atol=1e-6)
    assert side["DipoleKernelK0"] == pytest.approx(1 / 3)


def test_cli_invert_isdu_default_weights(nifti_block, tmp_path, monkeypatch, capsys):
    paths, *_ = nifti_block
    out = tmp_path / "chi.nii.gz"
    monkeypatch.setattr(inference, "DEFAULT_WEIGHTS", tmp_path / "absent" / "isdu_default.pt")
    assert main(_invert_args(paths, out)) == 2
    err = capsys.readouterr().err
    assert "no shipped ISDU-QSMNet weights in this build; pass --weights FILE" in err
    assert not out.exists()
    # a shipped file is used when present (here a tiny qsmflow checkpoint, K = 2 shared)
    shipped = save_isdu(tmp_path / "isdu_default.pt", _tiny_model(2, shared=True))
    monkeypatch.setattr(inference, "DEFAULT_WEIGHTS", shipped)
    assert main(_invert_args(paths, out, "--device", "cpu")) == 0
    side = json.loads((tmp_path / "chi.json").read_text())
    assert side["Weights"] == str(shipped) and side["Iterations"] == 2
    assert side["SharedWeights"] is True and side["TileSize"] is None


class _Evil:  # an arbitrary object: must never be unpickled
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_cli_invert_isdu_bad_weights(nifti_block, tmp_path, capsys):
    paths, *_ = nifti_block
    out = tmp_path / "chi.nii.gz"
    broken = tmp_path / "broken_weights.pth"
    broken.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    assert main(_invert_args(paths, out, "--weights", str(broken))) == 2
    assert "broken_weights.pth" in capsys.readouterr().err
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Evil()}, evil)
    assert main(_invert_args(paths, out, "--weights", str(evil))) == 2
    captured = capsys.readouterr()
    assert "evil.pt" in captured.err and "unpickled!" not in captured.out
    assert main(_invert_args(paths, out, "--weights", str(tmp_path / "nope.pt"))) == 2
    assert "nope.pt" in capsys.readouterr().err
    # a qsmflow checkpoint fixes K and sharing
    ckpt = save_isdu(tmp_path / "k2.pt", _tiny_model(2, shared=False))
    assert main(_invert_args(paths, out, "--weights", str(ckpt), "--shared-weights")) == 2
    # options of other methods, and isdu options for other methods
    assert main(_invert_args(paths, out, "--weights", str(ckpt), "--pad", "4")) == 2
    assert main(_invert_args(paths, out, "--weights", str(ckpt), "--threshold", "0.1")) == 2
    base = ["invert", str(paths["field"]), "-m", str(paths["mask"]), "-o", str(out)]
    assert main([*base, "--tile", "32"]) == 2
    assert "networks only" in capsys.readouterr().err
    assert not out.exists()


# ----------------------------------------------------------------- pipeline and config


def test_config_accepts_isdu():
    cfg = config_from_dict(
        {
            "inversion": {
                "methods": ["tkd", "isdu"],
                "options": {"isdu": {"weights": "w.pt", "iterations": 4, "tile_size": 96}},
            }
        }
    )
    assert cfg.inversion.methods == ["tkd", "isdu"]
    for bad in ({"lambda": 1}, {"iterations": 0}, {"device": "tpu"}, {"shared_weights": 1}):
        with pytest.raises(QSMInputError, match="isdu"):
            config_from_dict({"inversion": {"methods": ["isdu"], "options": {"isdu": bad}}})
    assert PipelineConfig().validate()


def test_init_qsm_wf_with_isdu(tmp_path, monkeypatch):
    from qsmflow.workflows.qsm import ISDU_NODE_MEM_GB, init_qsm_wf

    shape = (20, 22, 18)
    phi, mask = _case(shape, seed=2)
    affine = np.diag([1.0, 1.0, 1.2, 1.0])
    field = save_volume(tmp_path / "local.nii.gz", phi, affine)
    mfile = save_volume(tmp_path / "mask.nii.gz", mask.astype(np.uint8), affine)
    model = _tiny_model(2)
    ckpt = save_isdu(tmp_path / "tiny.pt", model)
    monkeypatch.chdir(tmp_path)  # the config makes a relative weights path absolute
    monkeypatch.setenv("QSMFLOW_TORCH_THREADS", str(torch.get_num_threads()))
    isdu = {"weights": "tiny.pt", "tile_size": 16, "device": "cpu"}
    cfg = config_from_dict({"inversion": {"methods": ["tkd", "isdu"], "options": {"isdu": isdu}}})
    wf = init_qsm_wf(methods=cfg.inversion.methods, options=cfg.inversion.options)
    node = wf.get_node("invert_isdu")
    assert node.mem_gb == ISDU_NODE_MEM_GB
    assert node.inputs.options["weights"] == str(ckpt)
    wf.inputs.inputnode.local_field = str(field)
    wf.inputs.inputnode.mask = str(mfile)
    wf.base_dir = str(tmp_path / "work")
    wf.config["execution"]["remove_unnecessary_outputs"] = False  # keep the JSON sidecar
    graph = wf.run(plugin="Linear")
    results = {n.name: n.result.outputs for n in graph.nodes()}
    chi_file = results["invert_isdu"].chi
    chi = load_volume(chi_file).data
    expected = predict_volume(model, phi, mask, (1.0, 1.0, 1.2), (0, 0, 1), device="cpu")
    assert np.abs(chi - expected).max() < 1e-6
    side = json.loads(open(chi_file.replace(".nii.gz", ".json")).read())
    assert side["InversionMethod"] == "isdu" and side["Weights"] == str(ckpt)
    assert side["TileSize"] == 16 and side["Iterations"] == 2


def test_apply_thread_env(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("QSMFLOW_TORCH_THREADS", raising=False)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert inference.apply_thread_env() == 1 and torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert inference.apply_thread_env() is None
    finally:
        torch.set_num_threads(before)
