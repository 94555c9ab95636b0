"""PhantomPatchDataset: the augmented patch-by-patch training data of the shipped weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from qsmflow.errors import QSMInputError
from qsmflow.models.kernels import isdu_kernel
from qsmflow.physics.kernel import dipole_kernel
from qsmflow.training.synthetic import PhantomPatchDataset


def _independent_field(chi: np.ndarray, voxel, b0) -> np.ndarray:
    """Periodic dipole field of ``chi`` from the textbook formula (float64, D(0) = 0)."""
    ks = np.meshgrid(
        *[np.fft.fftfreq(n, d) for n, d in zip(chi.shape, voxel, strict=True)], indexing="ij"
    )
    b = np.asarray(b0, float) / np.linalg.norm(b0)
    k2 = ks[0] ** 2 + ks[1] ** 2 + ks[2] ** 2
    # qsmflow's kernel averages (k.b)^2 over both signs of a Nyquist frequency (real, even D)
    terms = [k * bi for k, bi in zip(ks, b, strict=True)]
    nyq = [np.isclose(np.abs(k), 0.5 / d) for k, d in zip(ks, voxel, strict=True)]
    regular = sum(np.where(n, 0.0, t) for n, t in zip(nyq, terms, strict=True))
    kb2 = regular**2 + sum(np.where(n, t, 0.0) ** 2 for n, t in zip(nyq, terms, strict=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        d = 1.0 / 3.0 - kb2 / k2
    d[0, 0, 0] = 0.0
    return np.fft.ifftn(d * np.fft.fftn(chi.astype(np.float64))).real


def _builtin(length: int = 12, **kw) -> PhantomPatchDataset:
    opts = dict(head_model_dir="", n_builtin=2, builtin_voxel=3.0, patch_size=16)
    opts.update(kw)
    return PhantomPatchDataset(length, **opts)


def test_fields_follow_the_forward_model_and_kernels_the_isdu_convention():
    ds = _builtin(noise_std_ppm=(0.0, 0.0), max_tilt_deg=40.0)
    for i in range(len(ds)):
        s = ds.sample(i)
        want = _independent_field(s["chi"], s["voxel_size"], s["b0_dir"]) * s["mask"]
        scale = np.abs(want).max()
        assert scale > 1e-4
        assert np.abs(s["phi"] - want).max() < 1e-5 * scale
        tilt = np.degrees(np.arccos(np.clip(s["b0_dir"][2], -1, 1)))
        assert tilt <= 40.0 + 1e-9
        assert np.count_nonzero(s["mask"]) / s["mask"].size > 0.125
        assert np.all(s["chi"][~s["mask"]] == 0)
        item = ds[i]
        assert item["phi"].shape == (1, 16, 16, 16) and item["phi"].dtype == torch.float32
        kern = dipole_kernel((16,) * 3, s["voxel_size"], s["b0_dir"], dc_value=1 / 3)
        np.testing.assert_allclose(item["kernel"][0].numpy(), kern, atol=1e-6)
        # exactly the kernel inference builds (models.kernels.isdu_kernel)
        want = isdu_kernel((16,) * 3, s["voxel_size"], s["b0_dir"])[0].numpy()
        np.testing.assert_array_equal(item["kernel"].numpy(), want)
        np.testing.assert_array_equal(item["phi"][0].numpy(), s["phi"])


def test_noise_level_and_randomness_are_reproducible():
    ds = _builtin(noise_std_ppm=(0.003, 0.003), length=6)
    stds = []
    for i in range(len(ds)):
        s = ds.sample(i)
        clean = _independent_field(s["chi"], s["voxel_size"], s["b0_dir"]) * s["mask"]
        stds.append(np.std((s["phi"] - clean)[s["mask"]]))
    assert np.mean(stds) == pytest.approx(0.003, rel=0.05)

    a, b = _builtin(length=4), _builtin(length=4)
    for i in range(4):
        np.testing.assert_array_equal(a[i]["phi"], b[i]["phi"])
    first = a[0]["chi"].clone()
    a.set_epoch(1)
    assert not torch.equal(a[0]["chi"], first)  # new patches every epoch
    a.set_epoch(0)
    assert torch.equal(a[0]["chi"], first)
    other_seed = _builtin(length=4, seed=5)
    assert not torch.equal(other_seed[0]["chi"], first)
    with pytest.raises(IndexError):
        a[4]


def _head_only(shared_data, **kw) -> PhantomPatchDataset:
    """Noise- and texture-free head-model patches at two coarse voxel sizes."""
    return PhantomPatchDataset(
        8,
        16,
        head_model_dir=shared_data / "qsm2_head_model",
        head_model_voxels=[(3.0, 3.0, 3.0), (2.5, 2.5, 4.0)],
        head_model_weight=1.0,
        n_builtin=0,
        texture_std_ppm=(0.0, 0.0),
        noise_std_ppm=(0.0, 0.0),
        **kw,
    )


def test_head_model_sources(shared_data):
    ds = _head_only(shared_data, contrast=0.0, label_offset_ppm=0.0)
    names = {ds.sample(i)["source"] for i in range(len(ds))}
    assert names <= {"head_model@3x3x3mm", "head_model@2.5x2.5x4mm"} and names
    for i in range(len(ds)):
        s = ds.sample(i)
        vals = s["chi"][s["mask"]]
        # unmodified head-model values, smoothed: within the brain labels' range
        assert vals.min() >= -3.3 - 1e-6 and vals.max() <= 0.19 + 1e-6
        want = _independent_field(s["chi"], s["voxel_size"], s["b0_dir"]) * s["mask"]
        assert np.abs(s["phi"] - want).max() < 1e-5 * np.abs(want).max()
    # per-label contrast: the same crops (the random stream is the same) with other values
    varied = _head_only(shared_data, contrast=0.5, label_offset_ppm=0.01)
    for i in range(len(ds)):
        s0, s1 = ds.sample(i), varied.sample(i)
        assert s0["source"] == s1["source"]
        np.testing.assert_array_equal(s0["mask"], s1["mask"])
        assert np.mean(np.abs(s1["chi"] - s0["chi"])[s0["mask"]]) > 0.002
    stats = ds.normalisation["chi"]
    assert 0.005 < stats["std"] < 0.2 and abs(stats["mean"]) < 0.05


def test_bad_settings_are_errors():
    for kw in (
        {"contrast": 1.5},
        {"max_tilt_deg": 100},
        {"noise_std_ppm": (0.01, 0.0)},
        {"head_model_weight": 2.0},
        {"n_builtin": 0},
        {"patch_size": 4},
    ):
        with pytest.raises(QSMInputError):
            _builtin(**kw)


def test_train_cli_with_phantoms_preset(shared_data, tmp_path):
    from qsmflow.cli.main import main
    from qsmflow.training.trainer import read_log

    preset = tmp_path / "p.toml"
    preset.write_text(
        f"""
batch_size = 2
lr = 1e-3
device = "cpu"
progress = false
out_mean = 0.0
out_std = 0.04
[model]
width = 4
n_blocks = 1
dropout = 0.0
[phantoms]
count = 4
val_count = 2
patch_size = 16
head_model_dir = "{shared_data / "qsm2_head_model"}"
head_model_voxels = [[3.0, 3.0, 3.0]]
builtin_voxel = 3.0
n_builtin = 1
[[stages]]
name = "k1"
stage = "k1"
epochs = 2
"""
    )
    assert main(["train", "--config", str(preset), "--output", str(tmp_path / "run")]) == 0
    rows = read_log(tmp_path / "run" / "train_log.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(np.isfinite(float(r["val_loss"])) for r in rows)
    cfg = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert "phantom-patches" in json.dumps(cfg)
    # an unknown [phantoms] key names the preset
    preset.write_text(preset.read_text().replace("n_builtin = 1", "n_builtins = 1"))
    assert main(["train", "--config", str(preset), "--output", str(tmp_path / "r2")]) == 2
