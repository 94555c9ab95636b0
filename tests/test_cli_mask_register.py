"""``qsmflow mask`` and ``qsmflow register`` on a small simulated head: numbers and exit codes."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from qsmflow.cli.main import main
from qsmflow.physics.geometry import rotation_angle_deg, rotation_matrix
from qsmflow.registration.files import read_transform
from qsmflow.registration.fsl import flirt_to_world, read_flirt_mat


def _save(path, data, affine) -> str:
    nib.save(nib.Nifti1Image(np.asarray(data), np.asarray(affine, float)), str(path))
    return str(path)


def _dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """Built-in phantom at 3 mm, 2 echoes, and the same head turned 15 deg and shifted."""
    from qsmflow.simulate import BuiltinPhantom, simulate_gre

    g = simulate_gre(BuiltinPhantom(voxel_size=3.0), te_s=(0.005, 0.010), seed=2, supersample=1)
    d = tmp_path_factory.mktemp("head")
    mag = g.magnitude.astype(np.float32)
    t_true = np.eye(4)  # reference -> moving world
    t_true[:3, :3] = rotation_matrix((-0.4, 1.0, 0.7), 15.0)
    t_true[:3, 3] = (-3.0, 4.0, 2.5)
    m = np.linalg.inv(g.affine) @ np.linalg.inv(t_true) @ g.affine
    moving = np.stack(
        [
            ndimage.affine_transform(mag[..., e], m[:3, :3], offset=m[:3, 3], order=1)
            for e in range(mag.shape[3])
        ],
        axis=-1,
    )
    return {
        "dir": d,
        "ref": _save(d / "ref_mag.nii.gz", mag, g.affine),
        "mov": _save(d / "mov_mag.nii.gz", moving, g.affine),
        "flat": _save(d / "flat.nii.gz", mag[:, :, 30, 0], g.affine),
        "brain": g.brain_mask,
        "mag": mag,
        "affine": g.affine,
        "t_true": t_true,
    }


@pytest.fixture()
def no_fsl(tmp_path, monkeypatch):
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def test_cli_mask_python(head, tmp_path, capsys, no_fsl):
    out = tmp_path / "mask.nii.gz"
    assert main(["mask", head["ref"], "-o", str(out)]) == 0  # auto -> python without FSL
    printed = capsys.readouterr().out
    img = nib.load(out)
    mask = np.asarray(img.dataobj)
    assert img.get_data_dtype() == np.uint8 and mask.shape == head["brain"].shape
    np.testing.assert_allclose(img.affine, head["affine"])
    d = _dice(mask, head["brain"])
    print(f"\nqsmflow mask (python) Dice {d:.4f}")
    assert d >= 0.95
    n = int(mask.sum())
    assert "python backend" in printed and f"{n} voxels" in printed
    assert f"{n * 27 / 1000:.1f} mL" in printed
    sidecar = json.loads((tmp_path / "mask.json").read_text())
    assert sidecar["MaskBackend"] == "python" and sidecar["Voxels"] == n


def test_cli_register_python(head, tmp_path, capsys):
    out = tmp_path / "mov_in_ref.nii.gz"
    mat, xfm = tmp_path / "mov2ref.mat", tmp_path / "ref2mov_ras.txt"
    rc = main(
        [
            "register",
            head["mov"],
            "--reference",
            head["ref"],
            "-o",
            str(out),
            "--matrix",
            str(mat),
            "--transform",
            str(xfm),
            "--backend",
            "python",
            "--interpolation",
            "cubic",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    t_true = head["t_true"]
    t = read_transform(xfm)
    rot_err = rotation_angle_deg(t[:3, :3].T @ t_true[:3, :3])
    tr_err = float(np.linalg.norm(t[:3, 3] - t_true[:3, 3]))
    print(
        f"\nqsmflow register: rotation error {rot_err:.3f} deg, translation error {tr_err:.3f} mm"
    )
    assert rot_err < 0.5 and tr_err < 0.5
    assert (
        "python backend" in printed
        and f"rotation {rotation_angle_deg(t[:3, :3]):.2f} deg" in printed
    )
    # FLIRT matrix: the same registration, moving -> reference in FSL's convention
    shape, a = head["mag"].shape[:3], head["affine"]
    np.testing.assert_allclose(
        np.linalg.inv(flirt_to_world(read_flirt_mat(mat), shape, a, shape, a)), t, atol=1e-6
    )
    # the output is MOVING (both echoes) back on the reference grid
    back = np.asarray(nib.load(out).dataobj)
    assert back.shape == head["mag"].shape
    brain, ref = head["brain"], head["mag"]
    for e in range(2):
        nrmse = np.linalg.norm(back[brain, e] - ref[brain, e]) / np.linalg.norm(ref[brain, e])
        assert nrmse < 0.1
    assert (
        json.loads((tmp_path / "ref2mov_ras.json").read_text())["RegistrationBackend"] == "python"
    )
    sidecar = json.loads((tmp_path / "mov_in_ref.json").read_text())
    np.testing.assert_allclose(sidecar["Transform"], t, atol=1e-9)


@pytest.mark.parametrize("command", ["mask", "register"])
def test_cli_missing_file(head, tmp_path, capsys, command):
    missing = str(tmp_path / "nope.nii.gz")
    if command == "mask":
        argv = ["mask", missing, "-o", str(tmp_path / "m.nii.gz"), "--backend", "python"]
    else:
        argv = ["register", head["mov"], "-r", missing, "-o", str(tmp_path / "o.nii.gz")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert missing in err and "file not found" in err


def test_cli_2d_image(head, tmp_path, capsys):
    argv = ["mask", head["flat"], "-o", str(tmp_path / "m.nii.gz"), "--backend", "python"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert head["flat"] in err and "3-D" in err
    argv = ["register", head["flat"], "-r", head["ref"], "-o", str(tmp_path / "o.nii.gz")]
    assert main(argv) == 2
    assert head["flat"] in capsys.readouterr().err
    assert not (tmp_path / "m.nii.gz").exists() and not (tmp_path / "o.nii.gz").exists()


def test_cli_fsl_backend_without_fsl(head, tmp_path, capsys, no_fsl):
    out = tmp_path / "m.nii.gz"
    assert main(["mask", head["ref"], "-o", str(out), "--backend", "fsl"]) == 2
    err = capsys.readouterr().err
    assert "qsmflow mask: error" in err and "'bet' was not found on PATH" in err
    argv = ["register", head["mov"], "-r", head["ref"], "-o", str(out), "--backend", "fsl"]
    assert main(argv) == 2
    assert "'flirt' was not found on PATH" in capsys.readouterr().err
    assert not out.exists()


def test_cli_register_sidecar_names_must_differ(head, tmp_path, capsys):
    argv = ["register", head["mov"], "-r", head["ref"], "-o", str(tmp_path / "o.nii.gz")]
    argv += ["--transform", str(tmp_path / "x.txt"), "--matrix", str(tmp_path / "x.mat")]
    assert main(argv) == 2
    assert "sidecars would both be" in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()


def test_cli_bad_frac_and_mask_grid(head, tmp_path, capsys):
    assert main(["mask", head["ref"], "-o", str(tmp_path / "m.nii.gz"), "--frac", "1.5"]) == 2
    assert "frac must be in (0, 1)" in capsys.readouterr().err
    small = _save(tmp_path / "small_mask.nii.gz", np.ones((8, 8, 8), np.uint8), head["affine"])
    argv = ["register", head["mov"], "-r", head["ref"], "-o", str(tmp_path / "o.nii.gz")]
    argv += ["--reference-mask", small, "--backend", "python"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert small in err and "grid" in err
