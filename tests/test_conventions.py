"""Conventions at the boundary: B0 direction from (oblique, anisotropic) affines, units of echo
time and phase, non-finite values and masks. Tests of the existing physics/io functions."""

from __future__ import annotations

import numpy as np
import pytest

from qsmflow.errors import QSMInputError
from qsmflow.io.nifti import load_volume, save_volume
from qsmflow.physics import units
from qsmflow.physics.forward import forward_field
from qsmflow.physics.geometry import b0_dir_from_affine
from qsmflow.physics.validation import check_finite, check_mask, phase_to_radians
from qsmflow.simulate.gre import oblique_affine, simulate_gre
from qsmflow.simulate.phantom import make_phantom

Z = np.array([0.0, 0.0, 1.0])


def _direction(tilt_deg, azimuth_deg):
    t, a = np.deg2rad(tilt_deg), np.deg2rad(azimuth_deg)
    return np.array([np.sin(t) * np.cos(a), np.sin(t) * np.sin(a), np.cos(t)])


def _angle_deg(a, b):
    return float(np.degrees(np.arccos(np.clip(np.dot(a, b), -1, 1))))


@pytest.fixture(scope="module")
def phantom4():
    return make_phantom(4.0)


# --------------------------------------------------------------------------- (a) B0 direction


TILTS = [(0.0, 0.0), (12.0, 30.0), (25.0, 200.0), (45.0, 300.0), (90.0, 90.0)]


@pytest.mark.parametrize(("tilt", "azimuth"), TILTS)
def test_b0_dir_from_oblique_affine_roundtrip(tmp_path, phantom4, tilt, azimuth):
    """Head fixed, B0 tilted by a known angle; the written affine gives that direction back."""
    b = _direction(tilt, azimuth)
    d = simulate_gre(phantom4, b0_dir=b, te_s=(0.005, 0.01), snr=None, supersample=1)
    path = save_volume(tmp_path / "phase_e1.nii.gz", d.phase[..., 0], d.affine)
    vol = load_volume(path)
    assert np.allclose(vol.b0_dir, b, atol=1e-6)
    assert _angle_deg(vol.b0_dir, Z) == pytest.approx(tilt, abs=1e-4)
    assert np.allclose(vol.voxel_size, 4.0, atol=1e-6)
    # the pipeline, reading B0 from the affine, gets the kernel that generated the data
    f = forward_field(d.chi, vol.voxel_size, vol.b0_dir)
    assert np.allclose(d.total_field[d.head_mask], f[d.head_mask], atol=1e-5)


def test_b0_dir_anisotropic_oblique_affine(tmp_path):
    """0.8 x 0.8 x 2 mm oblique voxels: the column-normalised R^T z is right; inverting the
    un-normalised matrix (the naive way) is wrong by many degrees."""
    vox = (0.8, 0.8, 2.0)
    b = _direction(30.0, 40.0)
    p = make_phantom(vox, shape=(64, 64, 24))  # a central block of the head
    d = simulate_gre(p, b0_dir=b, te_s=(0.005,), snr=None)
    assert np.allclose(d.affine, oblique_affine(b, p.chi.shape, vox))
    path = save_volume(tmp_path / "aniso.nii.gz", d.magnitude[..., 0], d.affine)
    vol = load_volume(path)
    assert np.allclose(vol.voxel_size, vox, atol=1e-6)
    assert np.allclose(vol.b0_dir, b, atol=1e-6)
    assert _angle_deg(vol.b0_dir, Z) == pytest.approx(30.0, abs=1e-4)
    m = vol.affine[:3, :3]
    naive = np.linalg.inv(m) @ Z
    naive /= np.linalg.norm(naive)
    assert _angle_deg(naive, b) > 10.0  # about 25 degrees off here
    # isotropic voxels: the naive inverse happens to agree
    iso = oblique_affine(b, (8, 8, 8), (1.0, 1.0, 1.0))
    n_iso = np.linalg.inv(iso[:3, :3]) @ Z
    assert np.allclose(n_iso / np.linalg.norm(n_iso), b, atol=1e-12)


def test_b0_dir_sign_and_world_direction():
    """A flipped axis (LPS-like affine) flips b; its sign is irrelevant to the kernel."""
    a = np.diag([-1.0, -1.0, 1.0, 1.0])
    assert np.allclose(b0_dir_from_affine(a), Z)
    a = np.diag([1.0, 1.0, -2.0, 1.0])
    b = b0_dir_from_affine(a)
    assert np.allclose(b, -Z)
    from qsmflow.physics.kernel import dipole_kernel

    assert np.array_equal(dipole_kernel((8, 8, 8), b0_dir=b), dipole_kernel((8, 8, 8), b0_dir=Z))


# --------------------------------------------------------------------------- (b) units


@pytest.mark.parametrize(
    "call",
    [
        lambda: units.ppm_to_rad(1.0, 20.0, 3.0),
        lambda: units.rad_to_ppm(1.0, 5.0, 3.0),
        lambda: units.rad_to_hz(1.0, 12.5),
        lambda: units.hz_to_rad(1.0, 30),
    ],
)
def test_echo_time_in_ms_is_refused(call):
    with pytest.raises(QSMInputError, match="milliseconds"):
        call()


def test_unit_conversions_numbers():
    assert units.ppm_to_hz(1.0, 3.0) == pytest.approx(127.73, abs=0.01)
    assert units.ppm_to_rad(1.0, 0.020, 3.0) == pytest.approx(16.05, abs=0.01)
    x = np.array([-0.3, 0.0, 1.7])
    assert np.allclose(units.rad_to_ppm(units.ppm_to_rad(x, 0.012, 7.0), 0.012, 7.0), x)
    for bad in (3000.0, 0.0, float("nan")):
        with pytest.raises(QSMInputError, match="tesla"):
            units.ppm_to_hz(1.0, bad)
    with pytest.raises(QSMInputError):
        units.rad_to_hz(1.0, -0.01)


def test_phase_in_siemens_units_is_scaled():
    raw = np.arange(-4096, 4096, dtype=np.float32).reshape(16, 16, 32)
    rad, detected = phase_to_radians(raw)
    assert detected == "siemens"
    assert np.allclose(rad, raw * np.pi / 4096, atol=1e-6)
    assert rad.min() == pytest.approx(-np.pi) and rad.max() == pytest.approx(np.pi * 4095 / 4096)


def test_simulated_phase_roundtrip_through_siemens_units(tmp_path, phantom4):
    d = simulate_gre(phantom4, te_s=(0.01,), snr=50)
    ph = d.phase[..., 0]
    path = save_volume(tmp_path / "ph.nii.gz", ph, d.affine)
    rad, detected = phase_to_radians(load_volume(path).data, str(path))
    assert detected == "rad" and np.array_equal(rad, ph)
    siemens = np.clip(np.round(ph * 4096 / np.pi), -4096, 4095)
    back, detected = phase_to_radians(siemens)
    assert detected == "siemens"
    diff = np.angle(np.exp(1j * (back - ph)))
    assert np.abs(diff).max() <= np.pi / 4096 + 1e-6


@pytest.mark.parametrize(
    "values",
    [np.linspace(0, 10000, 512), np.linspace(-5000, 5000, 512), np.linspace(0, 2 * np.pi, 512)],
)
def test_phase_outside_known_ranges_is_an_error(values):
    with pytest.raises(QSMInputError, match="neither radians") as exc:
        phase_to_radians(values.reshape(8, 8, 8), "sub-01_part-phase.nii.gz")
    assert "sub-01_part-phase.nii.gz" in str(exc.value)


@pytest.mark.parametrize("values", [np.linspace(-180, 180, 512), np.linspace(-7, 7, 512)])
def test_small_range_phase_is_not_mistaken_for_siemens_units(values):
    with pytest.raises(QSMInputError):
        phase_to_radians(values.reshape(8, 8, 8))


# --------------------------------------------------------------------------- (b) finite, masks


def test_nan_inside_mask_is_an_error_naming_the_source():
    field = np.zeros((10, 10, 10), np.float32)
    mask = np.zeros_like(field, dtype=bool)
    mask[2:8, 2:8, 2:8] = True
    field[5, 5, 5] = np.nan
    field[4, 4, 4] = np.inf
    with pytest.raises(QSMInputError, match="2 NaN/inf") as exc:
        check_finite(field, "local field", "sub-01_desc-local_fieldmap.nii.gz", mask)
    assert "sub-01_desc-local_fieldmap.nii.gz" in str(exc.value)


def test_nan_outside_mask_is_zeroed():
    field = np.ones((10, 10, 10), np.float32)
    mask = np.zeros_like(field, dtype=bool)
    mask[2:8, 2:8, 2:8] = True
    field[0, 0, 0] = np.nan
    field[9, 9, 9] = -np.inf
    out = check_finite(field, "field", "f.nii.gz", mask)
    assert np.all(np.isfinite(out)) and out[0, 0, 0] == 0 and out[9, 9, 9] == 0
    assert out[5, 5, 5] == 1 and out.dtype == np.float32
    assert np.isnan(field[0, 0, 0])  # the input is not modified


@pytest.mark.shared_data
def test_romeo_phase_with_nans(shared_data):
    """Real data with NaNs: outside a mask that excludes them they are zeroed."""
    p = shared_data / "romeo_small" / "small" / "phase_with_nan.nii"
    vol = load_volume(p, ndim=4)
    ph = vol.data[..., 0]
    bad = ~np.isfinite(ph)
    assert bad.sum() > 0
    with pytest.raises(QSMInputError, match=str(p.name)):
        check_finite(ph, "phase", str(p))
    out = check_finite(ph, "phase", str(p), mask=~bad)
    assert np.all(np.isfinite(out))


def test_mask_errors_name_the_file(tmp_path):
    empty = save_volume(tmp_path / "empty_mask.nii.gz", np.zeros((6, 6, 6)), np.eye(4))
    vol = load_volume(empty)
    with pytest.raises(QSMInputError, match="empty") as exc:
        check_mask(vol.data, (6, 6, 6), vol.path)
    assert "empty_mask.nii.gz" in str(exc.value)
    other = save_volume(tmp_path / "other_grid_mask.nii.gz", np.ones((6, 6, 5)), np.eye(4))
    vol = load_volume(other)
    with pytest.raises(QSMInputError, match="does not match") as exc:
        check_mask(vol.data, (6, 6, 6), vol.path)
    assert "other_grid_mask.nii.gz" in str(exc.value)
    m = np.ones((6, 6, 6), np.float32)
    m[0, 0, 0] = np.nan
    with pytest.raises(QSMInputError, match="NaN"):
        check_mask(m, (6, 6, 6), "m.nii.gz")
    ok = check_mask(np.full((6, 6, 6), 0.9), (6, 6, 6))
    assert ok.dtype == bool and ok.all()
    with pytest.raises(QSMInputError, match="missing.nii.gz"):
        load_volume(tmp_path / "missing.nii.gz")


def test_atomic_outputs_get_the_umask_mode_not_private(tmp_path):
    """mkstemp/mkdtemp make private files; written outputs must be readable as the umask says."""
    import os
    from pathlib import Path

    from qsmflow.io.atomic import atomic_dir, atomic_path, write_text_atomic

    old = os.umask(0o027)
    try:
        f = write_text_atomic(tmp_path / "a.json", "{}")
        with atomic_path(tmp_path / "b.nii.gz") as tmp:
            Path(tmp).write_bytes(b"x")
        with atomic_dir(tmp_path / "figures") as d:
            (d / "c.png").write_bytes(b"y")
    finally:
        os.umask(old)
    assert oct(f.stat().st_mode & 0o777) == "0o640"
    assert oct((tmp_path / "b.nii.gz").stat().st_mode & 0o777) == "0o640"
    assert oct((tmp_path / "figures").stat().st_mode & 0o777) == "0o750"
