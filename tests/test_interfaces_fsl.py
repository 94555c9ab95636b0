"""Masking and registration interfaces: backend choice, the FSL command lines Nipype builds, the
FSL code paths end to end against a fake FSL (``bet``/``flirt`` scripts on PATH) and the python
backend on a simulated head with a known rigid motion."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from qsmflow.backends import bet_interface, flirt_interface, resolve_backend
from qsmflow.errors import QSMInputError
from qsmflow.interfaces.masking import BrainMask
from qsmflow.interfaces.registration import ResampleToReference, RigidRegistration
from qsmflow.physics.geometry import rotation_angle_deg, rotation_axis, rotation_matrix
from qsmflow.registration.files import (
    b0_dir_from_files,
    read_transform,
    write_transform,
)
from qsmflow.registration.fsl import flirt_to_world, read_flirt_mat

# ------------------------------------------------------------------------------------------------
# helpers


def _rigid(axis, angle_deg, t_mm) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rotation_matrix(axis, angle_deg)
    m[:3, 3] = t_mm
    return m


def _save(path: Path, data, affine) -> str:
    nib.save(nib.Nifti1Image(np.asarray(data), np.asarray(affine, float)), str(path))
    return str(path)


def _wd(tmp_path: Path, name: str) -> str:
    """A fresh working directory for an interface run (``run(cwd=...)`` needs it to exist)."""
    d = tmp_path / name
    d.mkdir()
    return str(d)


def _dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _move(vol, affine, t_ref_to_mov, order=1):
    """moving(u) = reference at A^-1 T^-1 A u (same grid); scipy only, per volume if 4-D."""
    m = np.linalg.inv(affine) @ np.linalg.inv(t_ref_to_mov) @ affine
    if vol.ndim == 4:
        return np.stack(
            [_move(vol[..., e], affine, t_ref_to_mov, order) for e in range(vol.shape[3])], -1
        )
    return ndimage.affine_transform(vol, m[:3, :3], offset=m[:3, 3], order=order)


@pytest.fixture(scope="module")
def phantom():
    """Built-in head phantom at 3 mm, 2 echoes (64 x 74 x 64): magnitude, affine, brain mask."""
    from qsmflow.simulate import BuiltinPhantom, simulate_gre

    g = simulate_gre(BuiltinPhantom(voxel_size=3.0), te_s=(0.005, 0.010), seed=1, supersample=1)
    return g.magnitude.astype(np.float32), g.affine, g.brain_mask


@pytest.fixture()
def no_fsl(tmp_path, monkeypatch):
    """PATH without any FSL tool (an empty folder)."""
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("FSLDIR", raising=False)


FAKE_BET = """\
import os, sys
import numpy as np, nibabel as nib
args = sys.argv[1:]
in_file, out = args[0], args[1]
frac = float(args[args.index("-f") + 1]) if "-f" in args else 0.5
ext = {"NIFTI_GZ": ".nii.gz", "NIFTI": ".nii"}[os.environ.get("FSLOUTPUTTYPE", "NIFTI")]
base = out[:-7] if out.endswith(".nii.gz") else out[:-4] if out.endswith(".nii") else out
img = nib.load(in_file)
data = np.asarray(img.dataobj, dtype=np.float32)
mask = data > frac * np.percentile(data, 99)
nib.save(nib.Nifti1Image(data * mask, img.affine), base + ext)
if "-m" in args:
    nib.save(nib.Nifti1Image(mask.astype(np.float32), img.affine), base + "_mask" + ext)
"""

FAKE_FLIRT = """\
import os, sys
import numpy as np, nibabel as nib
from qsmflow.registration import resample_to_reference
from qsmflow.registration.fsl import flirt_to_world
args = sys.argv[1:]
opt = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("-")}
mat = np.loadtxt(os.environ["FAKE_FLIRT_MAT"])
np.savetxt(opt["-omat"], mat, fmt="%.10f")
src, ref = nib.load(opt["-in"]), nib.load(opt["-ref"])
w = flirt_to_world(mat, src.shape, src.affine, ref.shape, ref.affine)
out = resample_to_reference(
    np.asarray(src.dataobj, np.float32), src.affine, ref.shape, ref.affine, np.linalg.inv(w)
)
nib.save(nib.Nifti1Image(out, ref.affine), opt["-out"])
"""


@pytest.fixture()
def fake_fsl(tmp_path, monkeypatch):
    """Executable ``bet``/``flirt`` python scripts on PATH; each logs its argv to <tool>.log."""
    fsldir = tmp_path / "fakefsl"
    (fsldir / "bin").mkdir(parents=True)
    (fsldir / "etc").mkdir()
    (fsldir / "etc" / "fslversion").write_text("6.0.7.9\n")
    for tool, body in (("bet", FAKE_BET), ("flirt", FAKE_FLIRT)):
        log = fsldir / f"{tool}.log"
        script = fsldir / "bin" / tool
        script.write_text(
            f"#!{sys.executable}\n"
            f"with open({str(log)!r}, 'a') as fh:\n"
            f"    fh.write(' '.join(__import__('sys').argv[1:]) + '\\n')\n" + body
        )
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("PATH", f"{fsldir / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FSLDIR", str(fsldir))
    monkeypatch.setenv("FSLOUTPUTTYPE", "NIFTI_GZ")
    return fsldir


# ------------------------------------------------------------------------------------------------
# backend choice and command lines


def test_resolve_backend_without_fsl(no_fsl):
    assert resolve_backend("auto", "bet") == "python"
    assert resolve_backend("python", "flirt") == "python"
    assert resolve_backend("PYTHON", "flirt") == "python"
    with pytest.raises(QSMInputError, match="'flirt' was not found on PATH"):
        resolve_backend("fsl", "flirt")
    with pytest.raises(QSMInputError, match="unknown backend 'ants'"):
        resolve_backend("ants", "bet")


def test_resolve_backend_with_fsl(fake_fsl):
    assert resolve_backend("auto", "bet") == "fsl"
    assert resolve_backend("fsl", "flirt") == "fsl"
    assert resolve_backend("python", "bet") == "python"
    # a tool that is not there still counts per tool
    assert resolve_backend("auto", "fast") == "python"


def test_nipype_command_lines(tmp_path, monkeypatch):
    monkeypatch.setenv("FSLOUTPUTTYPE", "NIFTI_GZ")
    monkeypatch.chdir(tmp_path)
    vol = np.ones((4, 4, 4), np.float32)
    for name in ("mag.nii.gz", "ref.nii.gz", "mov_mask.nii.gz", "ref_mask.nii.gz"):
        _save(tmp_path / name, vol, np.eye(4))
    bet = bet_interface(str(tmp_path / "mag.nii.gz"), "bet_brain.nii.gz", frac=0.3)
    assert bet.cmdline == "bet mag.nii.gz bet_brain.nii.gz -f 0.30 -m"
    assert bet_interface("mag.nii.gz", "b.nii.gz").cmdline == "bet mag.nii.gz b.nii.gz -f 0.50 -m"
    flt = flirt_interface("mag.nii.gz", "ref.nii.gz", "out.nii.gz", "out.mat")
    assert flt.cmdline == (
        "flirt -in mag.nii.gz -ref ref.nii.gz -out out.nii.gz -omat out.mat "
        "-cost mutualinfo -searchcost mutualinfo -dof 6"
    )
    flt = flirt_interface(
        "mag.nii.gz",
        "ref.nii.gz",
        "out.nii.gz",
        "out.mat",
        cost="corratio",
        in_weight="mov_mask.nii.gz",
        ref_weight="ref_mask.nii.gz",
    )
    assert flt.cmdline == (
        "flirt -in mag.nii.gz -ref ref.nii.gz -out out.nii.gz -omat out.mat "
        "-cost corratio -searchcost corratio -dof 6 -inweight mov_mask.nii.gz "
        "-refweight ref_mask.nii.gz"
    )
    with pytest.raises(QSMInputError, match="unknown FLIRT cost"):
        flirt_interface("mag.nii.gz", "ref.nii.gz", "o.nii.gz", "o.mat", cost="bbr")


# ------------------------------------------------------------------------------------------------
# FSL code paths against the fake FSL


def test_brain_mask_fsl_path_in_node(phantom, fake_fsl, tmp_path):
    from nipype.pipeline import engine as pe

    mag, affine, _ = phantom
    mag_file = _save(tmp_path / "mag.nii.gz", mag, affine)  # 4-D: BET gets the first echo
    node = pe.Node(BrainMask(magnitude=mag_file, frac=0.3), name="brainmask", base_dir=tmp_path)
    res = node.run()
    out = res.outputs
    assert out.backend == "fsl"
    img = nib.load(out.mask_file)
    assert Path(out.mask_file).parent == Path(node.output_dir())
    bet_log = (fake_fsl / "bet.log").read_text()
    # BET ran in the node's directory on the first echo (Nipype then removes its extra files)
    assert bet_log.startswith(f"mag_vol0.nii.gz {node.output_dir()}/bet_brain.nii.gz -f 0.30 -m")
    assert img.get_data_dtype() == np.uint8 and img.shape == mag.shape[:3]
    np.testing.assert_allclose(img.affine, affine)
    first = mag[..., 0]
    np.testing.assert_array_equal(
        np.asarray(img.dataobj) > 0, first > 0.3 * np.percentile(first, 99)
    )
    assert out.n_voxels == int((np.asarray(img.dataobj) > 0).sum())
    assert out.volume_ml == pytest.approx(out.n_voxels * 27 / 1000)
    # backend="python" ignores FSL even when it is there
    res = BrainMask(magnitude=mag_file, backend="python").run(cwd=_wd(tmp_path, "py"))
    assert res.outputs.backend == "python"


def test_rigid_registration_fsl_path_known_flirt_matrix(phantom, fake_fsl, tmp_path, monkeypatch):
    mag, affine, brain = phantom
    shape = mag.shape[:3]
    # moving stored radiologically (det < 0: x axis flipped), reference neurologically (det > 0)
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = shape[0] - 1
    mov_affine = affine @ flip
    mov_file = _save(tmp_path / "mov.nii.gz", mag[::-1, :, :, 0], mov_affine)
    ref_file = _save(tmp_path / "ref.nii.gz", mag, affine)
    mov_mask = _save(tmp_path / "mov_mask.nii.gz", brain[::-1].astype(np.uint8), mov_affine)
    ref_mask = _save(tmp_path / "ref_mask.nii.gz", brain.astype(np.uint8), affine)

    # a FLIRT matrix (moving -> reference, FSL scaled mm): 12 deg about (1, 2, 2)/3 + shift
    axis_fsl, angle = np.array([1.0, 2.0, 2.0]) / 3.0, 12.0
    m = _rigid(axis_fsl, angle, (2.0, -3.0, 4.0))
    np.savetxt(tmp_path / "known.mat", m)
    monkeypatch.setenv("FAKE_FLIRT_MAT", str(tmp_path / "known.mat"))

    res = RigidRegistration(
        moving=mov_file, reference=ref_file, moving_mask=mov_mask, reference_mask=ref_mask
    ).run(cwd=_wd(tmp_path, "work"))
    out = res.outputs
    assert out.backend == "fsl"
    log = (fake_fsl / "flirt.log").read_text()
    assert "-dof 6" in log and "-cost mutualinfo" in log
    assert f"-inweight {mov_mask}" in log and f"-refweight {ref_mask}" in log
    np.testing.assert_allclose(read_flirt_mat(out.fsl_matrix), m, atol=1e-9)

    t = read_transform(out.transform)
    assert "REFERENCE-world points to MOVING-world points" in Path(out.transform).read_text()
    # FSL scaled-mm x runs against world x for both images (x flipped), so the world rotation
    # moving -> reference is F R F (F = diag(-1, 1, 1)) = R((a, -b, -c), angle); the transform
    # stored is its inverse, R((-a, b, c), angle)
    assert rotation_angle_deg(t[:3, :3]) == pytest.approx(angle, abs=1e-6)
    assert out.rotation_deg == pytest.approx(angle, abs=1e-6)
    expected_axis = axis_fsl * [-1, 1, 1]
    np.testing.assert_allclose(rotation_axis(t[:3, :3]), expected_axis, atol=1e-9)
    np.testing.assert_allclose(out.translation_mm, t[:3, 3], atol=1e-9)
    # voxel by voxel from FLIRT's definition: reference voxel v -> FSL mm (x flipped, det > 0)
    # -> M^-1 -> moving FSL mm (no flip, det < 0) -> moving voxel -> moving world
    vox = 3.0
    for v in ([0, 0, 0], [10, 20, 30], [63, 73, 63]):
        x_ref = np.array([(shape[0] - 1 - v[0]) * vox, v[1] * vox, v[2] * vox, 1.0])
        x_mov = np.linalg.solve(m, x_ref)
        u = np.array([x_mov[0] / vox, x_mov[1] / vox, x_mov[2] / vox, 1.0])
        np.testing.assert_allclose(t @ affine @ np.array([*v, 1.0]), mov_affine @ u, atol=1e-9)
    # B0 of the moving scan (its world z) in the reference array axes: Q^T z
    np.testing.assert_allclose(out.b0_dir, t[:3, :3].T @ [0.0, 0.0, 1.0], atol=1e-9)
    np.testing.assert_allclose(
        b0_dir_from_files(out.transform, mov_file, ref_file), out.b0_dir, atol=1e-12
    )
    # the FLIRT matrix written by the python backend's conversion would give the same world map
    w = flirt_to_world(m, shape, mov_affine, shape, affine)
    np.testing.assert_allclose(np.linalg.inv(w), t, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# python backend, known motion


def test_python_registration_and_resampling(phantom, tmp_path, no_fsl):
    mag, affine, brain = phantom
    t_true = _rigid((1.0, 0.6, 0.4), 15.0, (4.0, -3.0, 5.0))  # reference -> moving world
    moving = _move(mag, affine, t_true)
    mov_file = _save(tmp_path / "mov.nii.gz", moving, affine)
    ref_file = _save(tmp_path / "ref.nii.gz", mag, affine)

    res = RigidRegistration(moving=mov_file, reference=ref_file).run(cwd=_wd(tmp_path, "reg"))
    out = res.outputs
    assert out.backend == "python"  # auto without FSL
    t = read_transform(out.transform)
    rot_err = rotation_angle_deg(t[:3, :3].T @ t_true[:3, :3])
    tr_err = float(np.linalg.norm(t[:3, 3] - t_true[:3, 3]))
    print(f"\npython backend: rotation error {rot_err:.3f} deg, translation error {tr_err:.3f} mm")
    assert rot_err < 0.5 and tr_err < 0.5
    assert out.rotation_deg == pytest.approx(15.0, abs=0.5)
    # the FLIRT matrix written alongside is the same registration in FSL's convention
    w = flirt_to_world(read_flirt_mat(out.fsl_matrix), mag.shape[:3], affine, mag.shape[:3], affine)
    np.testing.assert_allclose(np.linalg.inv(w), t, atol=1e-6)
    # B0 of the moving scan in reference axes: the head turned by Q, so b = Q^T z
    b = np.asarray(b0_dir_from_files(out.transform, mov_file, ref_file))
    expected = t_true[:3, :3].T @ [0.0, 0.0, 1.0]
    assert np.degrees(np.arccos(min(1.0, abs(b @ expected)))) < 0.5
    np.testing.assert_allclose(out.b0_dir, b, atol=1e-12)

    # resampling back: the first echo (3-D), inside the brain
    first = _save(tmp_path / "mov_e1.nii.gz", moving[..., 0], affine)
    back_file = (
        ResampleToReference(
            in_file=first, reference=ref_file, transform=out.transform, interpolation="cubic"
        )
        .run(cwd=_wd(tmp_path, "rs"))
        .outputs.out_file
    )
    back = np.asarray(nib.load(back_file).dataobj)
    assert back.shape == mag.shape[:3]
    nrmse = np.linalg.norm(back[brain] - mag[brain, 0]) / np.linalg.norm(mag[brain, 0])
    print(f"resampled back: NRMSE in brain {nrmse:.4f}")
    assert nrmse < 0.1

    # a mask carried into moving space and back: linear + 0.5 threshold, uint8
    mov_mask = _move(brain.astype(np.float32), affine, t_true) > 0.5
    mask_file = _save(tmp_path / "mov_mask.nii.gz", mov_mask.astype(np.uint8), affine)
    rs = ResampleToReference(
        in_file=mask_file, reference=ref_file, transform=out.transform, is_mask=True
    ).run(cwd=_wd(tmp_path, "rsm"))
    img = nib.load(rs.outputs.out_file)
    assert img.get_data_dtype() == np.uint8
    d = _dice(np.asarray(img.dataobj), brain)
    print(f"mask round trip Dice {d:.4f}")
    assert d > 0.97


def test_transform_file_round_trip_and_errors(tmp_path):
    t = _rigid((0.2, 1.0, -0.3), 21.0, (1.5, -2.0, 7.25))
    p = write_transform(tmp_path / "x.txt", t, moving="m.nii.gz", reference="r.nii.gz")
    text = p.read_text()
    assert text.startswith("# qsmflow rigid transform") and "# moving: m.nii.gz" in text
    np.testing.assert_allclose(read_transform(p), t, atol=1e-11)
    (tmp_path / "scaled.txt").write_text("2 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n")
    with pytest.raises(QSMInputError, match="not rigid"):
        read_transform(tmp_path / "scaled.txt")
    (tmp_path / "short.txt").write_text("1 0 0\n0 1 0\n0 0 1\n")
    with pytest.raises(QSMInputError, match="4x4"):
        read_transform(tmp_path / "short.txt")
    with pytest.raises(QSMInputError, match="not found"):
        read_transform(tmp_path / "missing.txt")


def test_python_registration_retries_then_reports_non_convergence(
    phantom, tmp_path, no_fsl, monkeypatch, caplog
):
    import qsmflow.registration.files as reg_mod

    mag, affine, _ = phantom
    moving = _move(mag, affine, _rigid((0.0, 0.0, 1.0), 20.0, (0.0, 0.0, 0.0)))
    mov_file = _save(tmp_path / "mov.nii.gz", moving, affine)
    ref_file = _save(tmp_path / "ref.nii.gz", mag, affine)
    assert reg_mod.python_sampling_fraction(64 * 74 * 64) == pytest.approx(200_000 / 303_104)
    assert reg_mod.python_sampling_fraction(176 * 176 * 160) == 0.05
    monkeypatch.setattr(reg_mod, "PYTHON_MAX_ITERATIONS", 3)  # cannot converge in 3 steps
    with pytest.raises(QSMInputError, match=r"mov\.nii\.gz.*did not converge \(3 attempts\)"):
        reg_mod.register_files(mov_file, ref_file, backend="python")
    assert caplog.text.count("retrying with more samples") == 3
