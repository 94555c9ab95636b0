"""One step, one sidecar: ``qsmflow mask``/``register``/``cosmos`` and the Nipype interfaces the
pipeline runs (configured from ``PipelineConfig()`` defaults) write the same sidecars (apart
from ``Sources``) and the same voxels on the same small simulated input."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from qsmflow.cli.main import main
from qsmflow.config import PipelineConfig
from qsmflow.interfaces.cosmos import Cosmos
from qsmflow.interfaces.masking import BrainMask
from qsmflow.interfaces.registration import ResampleToReference, RigidRegistration
from qsmflow.io.nifti import save_volume, sidecar_path
from qsmflow.physics.forward import forward_field
from qsmflow.physics.geometry import rotation_matrix
from qsmflow.physics.masks import erode_mm
from qsmflow.registration import resample_to_reference
from qsmflow.registration.files import read_transform


def _sidecar(path) -> dict:
    side = json.loads(sidecar_path(path).read_text())
    assert side.pop("Sources"), path
    return side


def _voxels(path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def _wd(tmp_path: Path, name: str) -> str:
    d = tmp_path / name
    d.mkdir()
    return str(d)


@pytest.fixture()
def no_fsl(tmp_path, monkeypatch):
    """PATH without any FSL tool, so that backend "auto" (the default) is the python one."""
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """Built-in phantom at 5 mm, 2 echoes, and the same head turned 12 deg and shifted."""
    from qsmflow.simulate import BuiltinPhantom, simulate_gre

    g = simulate_gre(BuiltinPhantom(voxel_size=5.0), te_s=(0.005, 0.010), seed=3, supersample=1)
    mag, shape = g.magnitude.astype(np.float32), g.magnitude.shape[:3]
    t = np.eye(4)  # reference -> moving world
    t[:3, :3] = rotation_matrix((0.3, 1.0, 0.5), 12.0)
    t[:3, 3] = (2.0, -3.0, 1.5)
    # moving(u) = reference(A^-1 T^-1 A u): the head turned by T, both echoes
    moving = resample_to_reference(mag, g.affine, shape, g.affine, np.linalg.inv(t))
    d = tmp_path_factory.mktemp("heads")
    return {
        "ref": str(save_volume(d / "ref_mag.nii.gz", mag, g.affine)),
        "mov": str(save_volume(d / "mov_mag.nii.gz", moving, g.affine)),
    }


def test_mask_cli_and_interface_agree(heads, tmp_path, no_fsl):
    cfg = PipelineConfig()
    cli_out = tmp_path / "cli_mask.nii.gz"
    assert main(["mask", heads["ref"], "-o", str(cli_out)]) == 0
    node = BrainMask(magnitude=heads["ref"], backend=cfg.masking.backend, frac=cfg.masking.frac)
    res = node.run(cwd=_wd(tmp_path, "node"))
    assert _sidecar(cli_out) == _sidecar(res.outputs.mask_file)
    assert _sidecar(cli_out)["MaskBackend"] == "python"
    np.testing.assert_array_equal(_voxels(cli_out), _voxels(res.outputs.mask_file))


def test_register_and_resample_cli_and_interfaces_agree(heads, tmp_path, no_fsl):
    cfg = PipelineConfig()
    out, xfm, mat = tmp_path / "mov_in_ref.nii.gz", tmp_path / "xfm.txt", tmp_path / "flirt.mat"
    argv = ["register", heads["mov"], "-r", heads["ref"], "-o", str(out)]
    assert main([*argv, "--transform", str(xfm), "--matrix", str(mat)]) == 0
    reg = RigidRegistration(
        moving=heads["mov"], reference=heads["ref"], backend=cfg.registration.backend
    ).run(cwd=_wd(tmp_path, "register"))
    assert _sidecar(xfm) == _sidecar(reg.outputs.transform)
    assert _sidecar(mat) == _sidecar(reg.outputs.fsl_matrix)
    side = _sidecar(xfm)
    assert side["RegistrationBackend"] == "python" and side["RotationAngleDeg"] > 10
    np.testing.assert_array_equal(read_transform(xfm), read_transform(reg.outputs.transform))
    np.testing.assert_array_equal(np.loadtxt(mat), np.loadtxt(reg.outputs.fsl_matrix))
    # --output: MOVING resampled as the pipeline resamples a local field
    node = ResampleToReference(
        in_file=heads["mov"],
        reference=heads["ref"],
        transform=reg.outputs.transform,
        interpolation="linear",
    ).run(cwd=_wd(tmp_path, "resample"))
    assert _sidecar(out) == _sidecar(node.outputs.out_file)
    np.testing.assert_array_equal(_voxels(out), _voxels(node.outputs.out_file))


@pytest.fixture(scope="module")
def local_fields(tmp_path_factory):
    """Three local fields (ppm) of an ellipsoid with spheres on one 4 mm grid, with masks that
    differ per orientation, and B0 directions exactly representable in 9 decimals."""
    shape, vox = (30, 28, 26), (4.0, 4.0, 4.0)
    g = np.indices(shape, dtype=np.float64)
    c = [(n - 1) / 2 for n in shape]
    inside = sum(((g[i] - c[i]) / (0.4 * shape[i])) ** 2 for i in range(3)) <= 1
    chi = np.where(inside, 0.03 * np.sin(g[0] / 3.0), 0.0)
    chi[(g[0] - 12) ** 2 + (g[1] - 15) ** 2 + (g[2] - 12) ** 2 <= 9] = 0.2
    dirs = [[0.0, 0.0, 1.0], [0.0, 0.422618262, 0.906307787], [0.5, 0.0, 0.866025404]]
    affine = np.diag([*vox, 1.0])
    d = tmp_path_factory.mktemp("cosmos")
    fields, masks = [], []
    for n, b in enumerate(dirs):
        fields.append(str(save_volume(d / f"field{n}.nii.gz", forward_field(chi, vox, b), affine)))
        m = erode_mm(inside, 4.0 * n, vox).astype(np.uint8)  # a different mask per orientation
        masks.append(str(save_volume(d / f"mask{n}.nii.gz", m, affine, dtype=np.uint8)))
    return fields, masks, dirs


def test_cosmos_cli_and_interface_agree(local_fields, tmp_path):
    cfg = PipelineConfig()
    fields, masks, dirs = local_fields
    out = tmp_path / "chi.nii.gz"
    b0 = ["[" + ",".join(repr(x) for x in b) + "]" for b in dirs]
    assert main(["cosmos", *fields, "-m", *masks, "-o", str(out), "--b0-dirs", *b0]) == 0
    node = Cosmos(
        local_fields=fields,
        masks=masks,
        b0_dirs=dirs,
        method=cfg.cosmos.method,
        lam=cfg.cosmos.lam,
        iterations=cfg.cosmos.iterations,
    ).run(cwd=_wd(tmp_path, "cosmos"))
    side = _sidecar(out)
    assert side == _sidecar(node.outputs.chi)
    assert side["Regularisation"] == 1e-3 and side["CosmosSolver"] == "lsq"
    assert side["NumberOfOrientations"] == 3 and side["B0DirectionSource"] == "given"
    np.testing.assert_array_equal(_voxels(out), _voxels(node.outputs.chi))
    # one common mask: the intersection of the per-orientation masks
    common = np.logical_and.reduce([_voxels(m) > 0 for m in masks])
    np.testing.assert_array_equal(_voxels(node.outputs.mask) > 0, common)
    assert np.all(_voxels(out)[~common] == 0)


def test_resampling_keeps_the_units_of_the_values(heads, tmp_path):
    from qsmflow.steps.registration import resample_file

    field = save_volume(
        tmp_path / "field.nii.gz", np.ones((6, 7, 8)), np.eye(4), sidecar={"Units": "ppm"}
    )
    out = resample_file(field, heads["ref"], tmp_path / "on_ref.nii.gz").sidecar
    assert out["Units"] == "ppm" and out["Interpolation"] == "linear"
    np.testing.assert_array_equal(out["Transform"], np.eye(4))
    mask = resample_file(field, heads["ref"], tmp_path / "mask_on_ref.nii.gz", is_mask=True)
    assert "Units" not in mask.sidecar and mask.sidecar["MaskThreshold"] == 0.5
