"""Simulation: procedural phantom, multi-echo GRE forward model, head rotations, BIDS output."""

from __future__ import annotations

import json
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from qsmflow.errors import QSMInputError
from qsmflow.physics import units
from qsmflow.physics.forward import forward_field
from qsmflow.physics.geometry import b0_dir_from_affine, rotation_angle_deg
from qsmflow.simulate.bids import BIDSWriter
from qsmflow.simulate.gre import head_rotations, rotation_to_z, simulate_gre
from qsmflow.simulate.head_model import LABEL_NAMES
from qsmflow.simulate.phantom import (
    CHIREF,
    LABEL,
    BuiltinPhantom,
    HeadModelSource,
    make_phantom,
    rotate_model,
    tissue_parameters,
)

Z = np.array([0.0, 0.0, 1.0])


@pytest.fixture(scope="module")
def phantom2():
    return make_phantom(2.0)


@pytest.fixture(scope="module")
def phantom4():
    return make_phantom(4.0)


def _fit_line(te, y):
    """Least-squares slope and intercept of y (..., E) against te (E,)."""
    te = np.asarray(te, dtype=np.float64)
    tc = te - te.mean()
    slope = np.tensordot(y - y.mean(-1, keepdims=True), tc, axes=([-1], [0])) / np.sum(tc**2)
    return slope, y.mean(-1) - slope * te.mean()


# --------------------------------------------------------------------------- phantom


def test_phantom_anatomy_and_values(phantom2):
    p = phantom2
    assert p.chi.shape == (96, 112, 96) and p.voxel_size == (2.0, 2.0, 2.0)
    present = set(np.unique(p.labels).tolist())
    assert present == set(range(17)) - {LABEL["fat"]}  # every label but fat, plus outside (0)
    # chi follows the Challenge 2.0 table where there is no vessel partial volume
    for name in ("globus_pallidus", "putamen", "caudate", "thalamus", "white_matter", "bone"):
        lab = LABEL[name]
        assert np.median(p.chi[p.labels == lab]) == pytest.approx(CHIREF[lab], abs=1e-6)
    assert CHIREF[LABEL["globus_pallidus"]] == pytest.approx(0.1305)
    assert CHIREF[LABEL["bone"]] == pytest.approx(-2.1) and CHIREF[LABEL["air"]] == 9.2
    assert np.all(p.chi[p.labels == 0] == 0)  # outside the head
    vessel_chi = p.chi[p.labels == LABEL["blood"]]
    assert 0.14 < np.median(vessel_chi) and vessel_chi.max() == pytest.approx(0.30, abs=1e-6)
    # sinus air is inside the head, away from the array border, and outside the brain
    air = p.labels == LABEL["air"]
    assert 5 < air.sum() * 8e-3 < 60  # ml
    assert not (air & p.brain_mask).any()
    assert not air[[0, -1]].any() and not air[:, [0, -1]].any() and not air[:, :, [0, -1]].any()
    # plausible volumes (ml) and a brain mask that holds the deep nuclei
    assert 850 < p.brain_mask.sum() * 8e-3 < 1300
    assert 250 < (p.labels == LABEL["bone"]).sum() * 8e-3 < 500
    for name in ("caudate", "globus_pallidus", "putamen", "thalamus", "red_nucleus", "sn_stn"):
        assert p.brain_mask[p.labels == LABEL[name]].all()


def test_phantom_deterministic_seeded_and_any_grid():
    a = make_phantom(4.0, seed=3)
    b = make_phantom(4.0, seed=3)
    c = make_phantom(4.0, seed=4)
    assert np.array_equal(a.chi, b.chi) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, c.labels)  # another subject
    aniso = make_phantom((1.5, 1.5, 3.0))
    assert aniso.chi.shape == (128, 150, 64)
    small = make_phantom(2.0, shape=(40, 40, 30))
    assert small.chi.shape == (40, 40, 30)
    # the same physical head on a coarser grid: brain volume within 3 %
    assert make_phantom(4.0).brain_mask.sum() * 64 == pytest.approx(
        make_phantom(2.0).brain_mask.sum() * 8, rel=0.03
    )


def test_phantom_texture_is_a_few_percent(phantom2):
    t = make_phantom(2.0, texture=True)
    wm = (phantom2.labels == LABEL["white_matter"]) & (t.labels == LABEL["white_matter"])
    diff = t.chi[wm] - phantom2.chi[wm]
    # 5 % of max(|chi|, 0.1 ppm) = 0.005 ppm std in white matter, zero mean
    assert 0.0035 < diff.std() < 0.0065
    assert abs(diff.mean()) < 0.0015
    assert t.tissue_texture is not None and np.all(t.chi[t.labels == 0] == 0)


def test_tissue_parameters_3t_and_7t():
    m0, r3 = tissue_parameters(3.0)
    _, r7 = tissue_parameters(7.0)
    wm, gm, gp, pu, csf = (
        LABEL[n] for n in ("white_matter", "grey_matter", "globus_pallidus", "putamen", "csf")
    )
    assert r3[wm] == pytest.approx(21.0) and r7[wm] == pytest.approx(33.0)
    assert r3[gp] == pytest.approx(33.0) and 55 < r7[gp] < 80
    assert r3[gp] > r3[pu] > r3[wm] > r3[gm] > r3[csf]
    assert np.all(r7 >= r3) and m0[csf] == 1.0 and m0[LABEL["air"]] == 0
    with pytest.raises(QSMInputError):
        tissue_parameters(3000)


# --------------------------------------------------------------------------- GRE signal model


def test_phase_slope_equals_field_noise_free():
    """Temporally unwrapped phase slope over TE = 2 pi gamma_bar B0 field (noise-free)."""
    te = (0.002, 0.004, 0.006, 0.008)  # short spacing: no temporal wraps below 1.96 ppm at 3 T
    d = simulate_gre(BuiltinPhantom(2.0), te_s=te, b0_tesla=3.0, snr=None)
    assert d.magnitude.shape == (96, 112, 96, 4) and d.phase.dtype == np.float32
    assert d.phase.min() > -np.pi and d.phase.max() <= np.float32(np.pi)
    b = d.brain_mask
    assert np.abs(d.total_field[b]).max() < 1.9  # precondition of the temporal unwrapping
    ph = d.phase[b].astype(np.float64)
    dph = np.angle(np.exp(1j * np.diff(ph, axis=-1)))
    unwrapped = np.concatenate([ph[:, :1], ph[:, :1] + np.cumsum(dph, axis=-1)], axis=-1)
    slope, icpt = _fit_line(te, unwrapped)
    field_est = units.hz_to_ppm(slope / (2 * np.pi), 3.0)
    err = np.abs(field_est - d.total_field[b])
    assert err.max() < 1e-5  # ppm: float32 precision
    assert np.abs(icpt).max() < 1e-5
    # 1 ppm at 3 T and TE = 20 ms is 16.05 rad (algorithms.md section 1)
    assert units.ppm_to_rad(1.0, 0.02, 3.0) == pytest.approx(16.05, abs=0.01)
    # the true local field is the forward field of chi inside the brain only
    loc = forward_field(np.where(b, d.chi, 0), d.voxel_size, Z)
    assert np.allclose(d.local_field[b], loc[b], atol=1e-6)
    assert np.all(d.local_field[~b] == 0) and np.all(d.total_field[~d.head_mask] == 0)
    # the background field (sinuses, bone) dominates inside the brain
    assert d.background_field[b].std() > 2 * d.local_field[b].std()


def test_phase_offset_is_the_intercept():
    te = (0.002, 0.004, 0.006)
    d = simulate_gre(BuiltinPhantom(4.0), te_s=te, snr=None, phase_offset="smooth", seed=5)
    b = d.brain_mask
    assert np.ptp(d.phase_offset[b]) > 0.5  # smooth but not constant
    # phase minus the known field term leaves the offset at every echo
    for e, t in enumerate(te):
        resid = d.phase[..., e] - units.ppm_to_rad(d.total_field, t, 3.0) - d.phase_offset
        assert np.abs(np.angle(np.exp(1j * resid[b]))).max() < 1e-4


def test_magnitude_decay_matches_r2star():
    te = (0.005, 0.012, 0.019, 0.026)
    for b0 in (3.0, 7.0):
        d = simulate_gre(BuiltinPhantom(4.0), te_s=te, b0_tesla=b0, snr=None)
        m0_t, r2_t = tissue_parameters(b0)
        for name in ("white_matter", "grey_matter", "globus_pallidus", "csf", "putamen"):
            sel = d.labels == LABEL[name]
            slope, icpt = _fit_line(te, np.log(d.magnitude[sel].astype(np.float64)))
            np.testing.assert_allclose(-slope, r2_t[LABEL[name]], rtol=1e-4)
            np.testing.assert_allclose(np.exp(icpt), m0_t[LABEL[name]], rtol=1e-4)
    assert np.all(d.magnitude[~d.head_mask] == 0) and np.all(d.phase[~d.head_mask] == 0)


def test_noise_level_matches_snr():
    kw = dict(te_s=(0.005, 0.015, 0.025), snr=40.0, seed=11)
    src = BuiltinPhantom(3.0)
    noisy = simulate_gre(src, **kw)
    clean = simulate_gre(src, **{**kw, "snr": None})
    head, brain = noisy.head_mask, noisy.brain_mask
    resid = noisy.complex_signal - clean.complex_signal
    sigma = noisy.noise_sigma
    assert sigma == pytest.approx(clean.magnitude[..., 0][brain].mean() / 40.0, rel=1e-6)
    for e in range(3):
        r = resid[..., e][head]
        assert r.real.std() == pytest.approx(sigma, rel=0.02)
        assert r.imag.std() == pytest.approx(sigma, rel=0.02)
        assert abs(r.real.mean()) < 0.02 * sigma
    snr_measured = clean.magnitude[..., 0][brain].mean() / resid[..., 0][head].real.std()
    assert snr_measured == pytest.approx(40.0, rel=0.03)
    # independent echoes, nothing outside the head, same seed -> same noise
    c = np.corrcoef(resid[..., 0][head].real, resid[..., 1][head].real)[0, 1]
    assert abs(c) < 0.02
    assert np.all(noisy.magnitude[~head] == 0)
    assert np.array_equal(simulate_gre(src, **kw).phase, noisy.phase)


def test_dephasing_reduces_signal_near_air():
    d0 = simulate_gre(BuiltinPhantom(2.0), snr=None)
    d1 = simulate_gre(BuiltinPhantom(2.0), snr=None, dephasing=True)
    near_air = ndimage.binary_dilation(d0.labels == LABEL["air"], iterations=2) & (
        d0.labels == LABEL["muscle"]
    )
    ratio = d1.magnitude[..., -1][near_air] / d0.magnitude[..., -1][near_air]
    assert ratio.min() < 0.5 and np.all(ratio <= 1 + 1e-6)
    deep = ndimage.binary_erosion(d0.brain_mask, iterations=8)
    assert np.median(d1.magnitude[..., 0][deep] / d0.magnitude[..., 0][deep]) > 0.99


def test_bad_arguments():
    src = BuiltinPhantom(4.0)
    with pytest.raises(QSMInputError, match="milliseconds"):
        simulate_gre(src, te_s=(5, 10))
    with pytest.raises(QSMInputError, match="not both"):
        simulate_gre(src, rotation=np.eye(3), b0_dir=(0, 0, 1))
    with pytest.raises(QSMInputError, match="rotation"):
        simulate_gre(src, rotation=np.diag([1.0, 1.0, -1.0]))  # a reflection
    with pytest.raises(QSMInputError, match="SNR"):
        simulate_gre(src, snr=0)


# --------------------------------------------------------------------------- head rotations


def test_head_rotations_spread():
    rots = head_rotations(5, 25.0, seed=2)
    assert np.allclose(rots[0], np.eye(3))
    tilts = [np.degrees(np.arccos((r.T @ Z)[2])) for r in rots[1:]]
    assert all(14.9 < t <= 25.0 + 1e-9 for t in tilts)
    for r in rots:
        assert np.allclose(r.T @ r, np.eye(3), atol=1e-12) and np.linalg.det(r) == pytest.approx(1)
    dirs = np.array([r.T @ Z for r in rots[1:]])
    az = np.degrees(np.arctan2(dirs[:, 1], dirs[:, 0]))
    assert np.ptp(np.sort(az)) > 180  # spread around the z axis
    b = np.array([-0.129, 0.581, 0.803])
    assert np.allclose(rotation_to_z(b).T @ Z, b / np.linalg.norm(b), atol=1e-12)


def test_rotated_head_matches_recorded_rotation(phantom2):
    r = head_rotations(3, 25.0, seed=0)[1]
    assert rotation_angle_deg(r) > 20
    d = simulate_gre(BuiltinPhantom(2.0), rotation=r, snr=None)
    assert np.allclose(d.rotation, r) and np.allclose(d.b0_dir, Z)
    assert np.allclose(d.b0_dir_canonical, r.T @ Z)
    # the scanner's affine is axial: it does not reveal the head rotation
    assert np.allclose(b0_dir_from_affine(d.affine), Z)
    assert np.allclose(d.affine[:3, :3], np.diag(d.voxel_size))
    brain = d.brain_mask
    nrmse = {}
    for name, m in (("R", r), ("R^T", r.T)):
        moved = rotate_model(phantom2, m)
        nrmse[name] = np.linalg.norm((moved.chi - d.chi)[brain]) / np.linalg.norm(d.chi[brain])
        agree = np.mean(moved.labels[brain] == d.labels[brain])
        if name == "R":
            assert agree > 0.9
    # the recorded rotation maps the reference chi onto the rotated one (2 mm, nearest-label
    # edges dominate the residual); the inverse rotation does not
    assert nrmse["R"] < 0.5
    assert nrmse["R^T"] > 10 * nrmse["R"]


def test_rotated_field_equals_reference_field_with_rotated_b0(phantom4):
    """COSMOS convention: the field acquired with the head rotated by R (B0 = z), moved back to
    the reference frame, is the reference chi's field for B0 direction R^T z."""
    r = head_rotations(3, 25.0, seed=0)[2]
    smooth = replace(phantom4, chi=ndimage.gaussian_filter(phantom4.chi_brain, 1.5))
    d = simulate_gre(rotate_model(smooth, r, order=3), snr=None)
    assert np.allclose(d.b0_dir_canonical, r.T @ Z)
    vox = np.asarray(d.voxel_size)
    c = (np.asarray(d.shape) - 1) / 2
    m = ndimage.binary_erosion(smooth.brain_mask, iterations=2)
    err = {}
    for name, b in (("R^T z", d.b0_dir_canonical), ("z", Z)):
        matrix = r * vox[None, :] / vox[:, None]  # reference voxel -> rotated voxel
        back = ndimage.affine_transform(d.total_field, matrix, c - matrix @ c, order=3)
        ref = forward_field(smooth.chi, smooth.voxel_size, b)
        err[name] = np.linalg.norm((back - ref)[m]) / np.linalg.norm(ref[m])
    assert err["R^T z"] < 0.02
    assert err["z"] > 0.5


def test_oblique_mode_keeps_the_head_and_tilts_b0(phantom4):
    b = np.array([-0.129, 0.581, 0.803])
    b = b / np.linalg.norm(b)
    d = simulate_gre(phantom4, b0_dir=b, snr=None)
    assert d.mode == "oblique" and np.allclose(d.rotation, np.eye(3))
    assert np.array_equal(d.chi, phantom4.chi)
    assert np.allclose(b0_dir_from_affine(d.affine), b, atol=1e-12)
    f = forward_field(phantom4.chi, phantom4.voxel_size, b)
    assert np.allclose(d.total_field[d.head_mask], f[d.head_mask], atol=1e-6)


# --------------------------------------------------------------------------- BIDS


def _write_small(root, n_ori=2, **kw):
    src = BuiltinPhantom(4.0)
    w = BIDSWriter(root, **kw)
    te = (0.004, 0.009, 0.014)
    for k, r in enumerate(head_rotations(n_ori, 20.0, seed=1)):
        acq = f"ori{k + 1}" if n_ori > 1 else None
        w.write_run("01", simulate_gre(src, te_s=te, rotation=r, seed=k, snr=80), acq=acq)
    return w.finish()


def test_bids_dataset_entities_and_sidecars(tmp_path):
    import bids

    root = tmp_path / "ds"
    summary = _write_small(root)
    assert summary["runs"] == 2
    desc = json.loads((root / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "raw" and desc["BIDSVersion"] and desc["Name"]
    deriv = root / "derivatives" / "qsmflow-simulation"
    ddesc = json.loads((deriv / "dataset_description.json").read_text())
    assert ddesc["DatasetType"] == "derivative" and ddesc["GeneratedBy"][0]["Name"]
    assert (root / "participants.tsv").read_text().startswith("participant_id")

    layout = bids.BIDSLayout(root, derivatives=True)
    files = layout.get(suffix="MEGRE", extension=".nii.gz")
    assert len(files) == 2 * 3 * 2  # orientations x echoes x parts
    assert layout.get_acquisitions() == ["ori1", "ori2"]
    for f in files:
        ent = f.get_entities()
        assert ent["subject"] == "01" and ent["datatype"] == "anat"
        assert ent["part"] in ("mag", "phase")
        meta = f.get_metadata()
        assert meta["EchoTime"] == (0.004, 0.009, 0.014)[int(ent["echo"]) - 1]  # seconds
        assert meta["MagneticFieldStrength"] == 3.0 and meta["EchoNumber"] == int(ent["echo"])
        if ent["part"] == "phase":
            assert meta["Units"] == "rad"
    ph = nib.load(layout.get(part="phase", echo=2, acquisition="ori2", extension=".nii.gz")[0])
    data = np.asarray(ph.dataobj)
    assert data.shape == (48, 56, 48) and data.min() > -np.pi and data.max() <= np.float32(np.pi)
    assert np.allclose(b0_dir_from_affine(ph.affine), Z)  # axial: the rotation is hidden

    truth = layout.derivatives.get_pipeline("qsmflow-simulation")
    maps = [("Chimap", {}), ("mask", {"desc": "brain"}), ("dseg", {})]
    maps += [("fieldmap", {"desc": "local"}), ("fieldmap", {"desc": "total"})]
    for suffix, extra in maps:
        got = truth.get(suffix=suffix, extension=".nii.gz", **extra)
        assert len(got) == 2, (suffix, extra)
    meta = truth.get(suffix="fieldmap", desc="local", acquisition="ori2", extension=".nii.gz")[0]
    m = meta.get_metadata()
    assert m["Units"] == "ppm" and m["ReferenceOrientation"] == "ori1"
    rot = np.array(m["HeadRotation"])
    to_ref = np.array(m["RotationToReference"])
    assert np.allclose(to_ref, rot.T) and rotation_angle_deg(rot) > 10
    assert np.allclose(m["B0DirectionReference"], rot.T @ Z)
    chi_meta = json.loads((deriv / "sub-01/anat/sub-01_acq-ori1_Chimap.json").read_text())
    assert chi_meta["Units"] == "ppm" and np.allclose(chi_meta["RotationToReference"], np.eye(3))
    assert "index\tname" in (deriv / "dseg.tsv").read_text()
    assert len(LABEL_NAMES) == 16
    manifest = json.loads((deriv / "simulation.json").read_text())
    assert len(manifest["Files"]) == summary["files"]
    assert all((root / f).is_file() for f in manifest["Files"])
    assert not list(root.rglob(".tmp-*"))  # atomic writes left nothing behind


def test_bids_single_orientation_has_no_acq(tmp_path):
    _write_small(tmp_path / "one", n_ori=1)
    names = sorted(p.name for p in (tmp_path / "one/sub-01/anat").glob("*.nii.gz"))
    assert names[0] == "sub-01_echo-1_part-mag_MEGRE.nii.gz" and len(names) == 6


def test_bids_writer_refuses_foreign_folders(tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("keep me")
    with pytest.raises(QSMInputError, match="not a BIDS dataset") as exc:
        BIDSWriter(junk)
    assert str(junk) in str(exc.value)
    assert sorted(p.name for p in junk.iterdir()) == ["notes.txt"]

    other = tmp_path / "other"
    other.mkdir()
    (other / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    with pytest.raises(QSMInputError, match="--force"):
        BIDSWriter(other)
    BIDSWriter(other, force=True)  # allowed when asked


def test_bids_rewrite_replaces_previous_simulation(tmp_path):
    root = tmp_path / "ds"
    _write_small(root, n_ori=3)
    assert len(list((root / "sub-01/anat").glob("*acq-ori3*"))) == 12
    (root / "sub-01/anat/my_notes.txt").write_text("not ours")
    _write_small(root, n_ori=2)  # rewriting our own dataset is allowed
    assert not list(root.rglob("*acq-ori3*"))  # stale orientation removed
    assert (root / "sub-01/anat/my_notes.txt").exists()  # files we did not write are kept


# --------------------------------------------------------------------------- CLI


def test_cli_default_run(tmp_path, capsys):
    import time

    from qsmflow.cli.main import main

    out = tmp_path / "sim"
    t0 = time.perf_counter()
    assert main(["simulate", str(out)]) == 0
    elapsed = time.perf_counter() - t0
    assert elapsed < 45  # "well under a minute" on 2 cores (about 4 s measured)
    text = capsys.readouterr().out
    assert "wrote 3 run(s) of 1 subject(s)" in text and "sub-01_acq-ori3" in text
    megre = sorted((out / "sub-01/anat").glob("*_MEGRE.nii.gz"))
    assert len(megre) == 3 * 4 * 2
    img = nib.load(megre[0])
    assert img.shape == (96, 112, 96)
    side = json.loads(megre[0].with_name(megre[0].name.replace(".nii.gz", ".json")).read_text())
    assert side["EchoTime"] == 0.005


def test_cli_options_and_errors(tmp_path, capsys):
    from qsmflow.cli.main import main

    bad = tmp_path / "bad"
    assert main(["simulate", str(bad), "--echo-times", "5", "10"]) == 2
    assert "milliseconds" in capsys.readouterr().err
    assert not bad.exists()  # nothing written before the arguments were checked

    dirs = tmp_path / "dirs.txt"
    dirs.write_text("0 0 1\n-0.129 0.581 0.803\n0.3 0 0.95\n")
    out = tmp_path / "obl"
    args = [
        "simulate",
        str(out),
        "--voxel-size",
        "4",
        "--b0-dirs-file",
        str(dirs),
        "--orientation-mode",
        "oblique",
        "--echo-times",
        "0.004",
        "0.008",
        "--b0",
        "7",
        "--snr",
        "inf",
        "--seed",
        "3",
        "--texture",
        "--phase-offset",
        "none",
    ]
    assert main(args) == 0
    img = nib.load(out / "sub-01/anat/sub-01_acq-ori2_echo-1_part-phase_MEGRE.nii.gz")
    b = np.array([-0.129, 0.581, 0.803])
    assert np.allclose(b0_dir_from_affine(img.affine), b / np.linalg.norm(b), atol=1e-6)
    side = json.loads((out / "sub-01/anat/sub-01_acq-ori2_echo-2_part-mag_MEGRE.json").read_text())
    assert side["MagneticFieldStrength"] == 7.0 and side["EchoTime"] == 0.008
    # the same folder again is fine (our own simulation), a foreign one is refused
    assert main(args) == 0
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.txt").write_text("x")
    assert main(["simulate", str(junk)]) == 2
    assert "not a BIDS dataset" in capsys.readouterr().err


# --------------------------------------------------------------------------- head model


@pytest.mark.shared_data
def test_head_model_fields_are_plausible(shared_data):
    src = HeadModelSource(shared_data / "qsm2_head_model", voxel_size=2.0)
    d = simulate_gre(src, snr=None)
    head, brain = d.head_mask, d.brain_mask
    assert d.shape == (82, 102, 102)
    # exterior air (9.2 ppm in the model) is outside the head: chi 0, no signal
    assert d.labels[0, 0, 0] == 0 and d.chi[0, 0, 0] == 0
    air = d.labels == LABEL["air"]
    assert air.sum() > 50 and np.median(d.chi[air]) == pytest.approx(9.2)
    # several ppm next to the sinuses / air cells, much less in the brain
    near_air = ndimage.binary_dilation(air, iterations=2) & head & ~air
    assert np.abs(d.total_field[near_air]).max() > 3.0
    assert np.percentile(np.abs(d.total_field[brain]), 99.9) < 1.5
    assert np.percentile(np.abs(d.local_field[brain]), 99.9) < 0.2
    assert d.background_field[brain].std() > 3 * d.local_field[brain].std()
    # nuclei: GP chi and R2* as tabulated
    gp = d.labels == LABEL["globus_pallidus"]
    assert np.median(d.chi[gp]) == pytest.approx(0.1305, abs=1e-4)
    assert np.median(d.r2star[gp]) == pytest.approx(33.0)
    # a rotated head: same brain volume, nothing clipped with a 10 mm margin
    src_m = HeadModelSource(shared_data / "qsm2_head_model", voxel_size=2.0, margin_mm=10)
    r = head_rotations(2, 25.0, seed=0)[1]
    ref, rot = src_m.realise(), src_m.realise(r)
    assert rot.brain_mask.sum() == pytest.approx(ref.brain_mask.sum(), rel=0.01)
    assert np.allclose(rot.rotation, r)


@pytest.mark.shared_data
def test_plain_head_model_exterior_air_is_outside(shared_data):
    from qsmflow.simulate.head_model import load_head_model

    # by default the air around the head is relabelled outside (chi 0), internal air is kept
    default = load_head_model(shared_data / "qsm2_head_model", voxel_size=3.0)
    assert default.chi[0, 0, 0] == 0 and default.labels[0, 0, 0] == 0
    assert (default.labels == 14).sum() > 100
    hm = load_head_model(shared_data / "qsm2_head_model", voxel_size=3.0, exterior="air")
    assert hm.chi[0, 0, 0] == pytest.approx(9.2)  # the model's exterior is air at 9.2 ppm
    d = simulate_gre(hm, te_s=(0.004, 0.008), snr=None)
    assert d.chi[0, 0, 0] == 0 and not d.head_mask[0, 0, 0]
    assert np.all(d.magnitude[~d.head_mask] == 0)
