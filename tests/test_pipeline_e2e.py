"""End to end: ``qsmflow run`` on a simulated 3-orientation BIDS dataset of the Challenge 2.0
head model (2 mm, heads rotated by about 20 degrees, SNR 100), Python backends.

One dataset, one work dir: ``--pipeline cosmos`` first, then ``--pipeline training-data``
(which reuses the cached field maps, registrations and COSMOS), then the same again (which must
execute no node).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qsmflow.cli.main import main

pytestmark = pytest.mark.shared_data

ORIS = ("ori1", "ori2", "ori3")
PYTHON = ["--mask-backend", "python", "--registration-backend", "python"]


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("e2e")
    bids, out, work = root / "bids", root / "derivatives" / "qsmflow", root / "work"
    argv = ["simulate", str(bids), "--phantom", "head-model"]
    argv += ["--head-model-dir", str(shared_data / "qsm2_head_model"), "--voxel-size", "2"]
    argv += ["--orientations", "3", "--max-rotation-deg", "25", "--seed", "1"]
    assert main(argv) == 0
    run = ["run", str(bids), str(out), "participant", *PYTHON, "--work-dir", str(work)]
    assert main([*run, "--pipeline", "cosmos"]) == 0
    return {"bids": bids, "out": out, "work": work, "run": run}


def _truth(e2e) -> Path:
    return e2e["bids"] / "derivatives" / "qsmflow-simulation" / "sub-01" / "anat"


def _true_transform(meta: dict, moving_affine, reference_affine) -> np.ndarray:
    """World transform reference -> moving from the simulation's RotationToReference."""
    m = np.asarray(meta["RotationToReference"])
    c = np.asarray(meta["RotationCentreVoxel"])
    vox = np.sqrt((np.asarray(moving_affine)[:3, :3] ** 2).sum(axis=0))
    lin = np.diag(1 / vox) @ m.T @ np.diag(vox)  # reference voxel -> moving voxel (about c)
    s = np.eye(4)
    s[:3, :3], s[:3, 3] = lin, c - lin @ c
    return moving_affine @ s @ np.linalg.inv(reference_affine)


def test_cosmos_pipeline_matches_direct_cosmos_with_true_rotations(e2e):
    from qsmflow.evaluation import nrmse
    from qsmflow.io.nifti import load_volume
    from qsmflow.physics.cosmos import cosmos
    from qsmflow.physics.geometry import rotation_angle_deg
    from qsmflow.physics.inversion import tkd
    from qsmflow.physics.masks import erode_mm
    from qsmflow.registration.rigid import resample_to_reference

    truth, anat = _truth(e2e), e2e["out"] / "sub-01" / "anat"
    ref = load_volume(anat / "sub-01_acq-ori1_desc-local_fieldmap.nii.gz")
    fields, masks, dirs = [], [], []
    for ori in ORIS:
        f = load_volume(anat / f"sub-01_acq-{ori}_desc-local_fieldmap.nii.gz")
        m = load_volume(anat / f"sub-01_acq-{ori}_desc-vsharp_mask.nii.gz")
        meta = json.loads((truth / f"sub-01_acq-{ori}_desc-local_fieldmap.json").read_text())
        t = _true_transform(meta, f.affine, ref.affine)
        fields.append(resample_to_reference(f.data, f.affine, ref.data.shape, ref.affine, t))
        mm = resample_to_reference(m.data, m.affine, ref.data.shape, ref.affine, t)
        masks.append(mm > 0.5)
        dirs.append(meta["B0DirectionReference"])
        if ori != "ori1":  # the registration found the simulated rotation
            xfm = np.loadtxt(anat / f"sub-01_acq-{ori}_desc-rigid_xfm.txt")
            err = rotation_angle_deg(t[:3, :3].T @ xfm[:3, :3])
            assert err < 0.5, (ori, err)
            side = json.loads((anat / f"sub-01_acq-{ori}_desc-rigid_xfm.json").read_text())
            assert side["RegistrationBackend"] == "python"
            assert abs(side["RotationAngleDeg"] - meta["RotationAngleToReferenceDeg"]) < 0.5
    common = np.logical_and.reduce(masks)
    direct = cosmos(np.stack(fields), np.asarray(dirs), ref.voxel_size, common)

    chi_true = load_volume(truth / "sub-01_acq-ori1_Chimap.nii.gz").data
    brain = load_volume(truth / "sub-01_acq-ori1_desc-brain_mask.nii.gz").data > 0
    piped = load_volume(anat / "sub-01_desc-cosmos_Chimap.nii.gz").data
    pmask = load_volume(anat / "sub-01_desc-cosmos_mask.nii.gz").data > 0
    ref_mask = load_volume(anat / "sub-01_acq-ori1_desc-vsharp_mask.nii.gz").data > 0
    single = tkd(ref.data, ref_mask, ref.voxel_size, ref.b0_dir)
    evaluate = pmask & common & erode_mm(brain, 1.0, ref.voxel_size)
    assert evaluate.sum() > 0.8 * pmask.sum()
    scores = {
        name: nrmse(x, chi_true, evaluate)
        for name, x in (("pipeline", piped), ("direct", direct), ("tkd", single))
    }
    print("demeaned NRMSE %:", {k: round(v, 2) for k, v in scores.items()})
    assert abs(scores["pipeline"] - scores["direct"]) <= 2.0, scores
    assert scores["pipeline"] < scores["tkd"], scores

    side = json.loads((anat / "sub-01_desc-cosmos_Chimap.json").read_text())
    assert side["Units"] == "ppm" and side["NumberOfOrientations"] == 3
    for got, want in zip(side["B0Directions"], dirs, strict=True):
        assert np.degrees(np.arccos(min(1.0, abs(np.dot(got, want))))) < 0.5
    mask_side = json.loads((anat / "sub-01_acq-ori1_desc-brain_mask.json").read_text())
    assert mask_side["MaskBackend"] == "python" and mask_side["Type"] == "Brain"
    assert any(s.startswith("bids:raw:sub-01/anat/") for s in side["Sources"])
    # Sources: every orientation's echoes for COSMOS, one orientation's for its own outputs
    assert len(side["Sources"]) == 3 * 8 and all(f"_acq-{o}_" in str(side) for o in ORIS)
    on_ref = json.loads((anat / "sub-01_acq-ori2_desc-reference_fieldmap.json").read_text())
    assert on_ref["ReferenceOrientation"] == "acq-ori1" and on_ref["Units"] == "ppm"
    assert len(on_ref["Sources"]) == 8 and all("_acq-ori2_" in s for s in on_ref["Sources"])


@pytest.fixture(scope="module")
def training(e2e):
    assert main([*e2e["run"], "--pipeline", "training-data"]) == 0
    return e2e


def test_training_data_patches(training):
    from qsmflow.io.nifti import load_volume
    from qsmflow.training.patch_grid import extract_patches, patch_origins
    from qsmflow.training.patch_store import read_patch_set

    anat = training["out"] / "sub-01" / "anat"
    ps = read_patch_set(anat / "sub-01_desc-training_patches")
    chi = load_volume(anat / "sub-01_desc-cosmos_Chimap.nii.gz")
    mask = load_volume(anat / "sub-01_desc-cosmos_mask.nii.gz").data > 0
    origins = patch_origins(chi.data.shape, 64, 32, mask, 0.125)
    assert len(origins) >= 4
    assert len(ps) == 3 * len(origins) and ps.n_orientations == 3
    assert ps.field.shape == (3 * len(origins), 64, 64, 64) and ps.field.dtype == np.float32
    np.testing.assert_array_equal(ps.origin[: len(origins)], origins)
    np.testing.assert_array_equal(ps.chi[: len(origins)], extract_patches(chi.data, origins, 64))
    fields = []
    for k, ori in enumerate(ORIS):
        f = load_volume(anat / f"sub-01_acq-{ori}_desc-reference_fieldmap.nii.gz").data
        rows = slice(k * len(origins), (k + 1) * len(origins))
        np.testing.assert_array_equal(ps.field[rows], extract_patches(f, origins, 64))
        assert np.all(ps.orientation[rows] == k)
        fields.append(ps.field[rows])
    cosmos_dirs = json.loads((anat / "sub-01_desc-cosmos_Chimap.json").read_text())
    for k in range(3):
        np.testing.assert_allclose(
            ps.b0_dir[k * len(origins)], cosmos_dirs["B0Directions"][k], atol=1e-6
        )
    m = ps.mask.astype(bool)
    stats = ps.meta["normalisation"]
    field_vals = np.asarray(ps.field, dtype=np.float64)[m]
    chi_vals = np.asarray(ps.chi, dtype=np.float64)[m]
    assert stats["field"]["mean"] == pytest.approx(field_vals.mean(), rel=1e-9, abs=1e-12)
    assert stats["field"]["std"] == pytest.approx(field_vals.std(), rel=1e-9)
    assert stats["chi"]["std"] == pytest.approx(chi_vals.std(), rel=1e-9)
    # physically sensible: brain chi spread of tens of ppb, local fields of a few ppb..ppm/100
    assert 0.01 < stats["chi"]["std"] < 0.2 and 0.002 < stats["field"]["std"] < 0.05
    frac = ps.mask.reshape(len(ps), -1).mean(axis=1)
    assert frac.min() > 0.125


def _result_files(work: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in work.rglob("result_*.pklz")}


def test_rerun_executes_no_node(training, capsys):
    work, out = training["work"], training["out"]

    def derivatives() -> dict[str, int]:
        # the report (figures, ROI table) is made again by every run; the derivatives are not
        report_files = ("figures", "sub-01_desc-rois_table")
        return {
            str(p): p.stat().st_mtime_ns
            for p in (out / "sub-01").rglob("*")
            if p.is_file() and not any(part.startswith(report_files) for part in p.parts)
        }

    before = _result_files(work)
    outputs = derivatives()
    report = out / "sub-01.html"
    report_time = report.stat().st_mtime_ns
    assert len(before) > 50 and len(outputs) > 20
    assert main([*training["run"], "--pipeline", "training-data"]) == 0
    assert _result_files(work) == before  # no node wrote a new result: all were cached
    assert derivatives() == outputs
    assert report.stat().st_mtime_ns > report_time  # the report tells of the latest run
    assert "sub-01                   ok" in capsys.readouterr().out


def test_derivatives_are_valid_bids_and_readable_by_pybids(training):
    import bids
    from bids_validator_helper import run_bids_validator, validator_available

    out, raw = training["out"], training["bids"]
    assert not list(out.rglob(".tmp-*"))
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "qsmflow"
    if not validator_available():
        pytest.skip("bids-validator-deno not installed")
    for path in (raw, out):
        ok, report = run_bids_validator(path)
        assert ok, report
    layout = bids.BIDSLayout(raw, derivatives=str(out), validate=False)
    deriv = layout.derivatives["qsmflow"]
    chi = deriv.get(suffix="Chimap", desc="cosmos", extension=".nii.gz")
    assert len(chi) == 1 and chi[0].get_metadata()["Units"] == "ppm"
    local = deriv.get(suffix="fieldmap", desc="local", extension=".nii.gz")
    assert sorted(f.entities["acquisition"] for f in local) == list(ORIS)
    assert all(f.get_metadata()["Units"] == "ppm" for f in local)
    masks = deriv.get(suffix="mask", desc="brain", extension=".nii.gz")
    assert len(masks) == 3
