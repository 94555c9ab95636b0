"""Realistic-acquisition simulation: WM anisotropy (STI forward model), sub-voxel texture, veins,
residual background field, presets and ``qsmflow simulate --realism``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qsmflow.errors import QSMInputError
from qsmflow.physics.bgremove import vsharp
from qsmflow.physics.forward import forward_field
from qsmflow.physics.geometry import rotation_matrix
from qsmflow.physics.kernel import dipole_kernel
from qsmflow.physics.masks import erode_mm
from qsmflow.simulate.gre import simulate_gre
from qsmflow.simulate.head import (
    SimulatedHead,
    grid_coords,
    rotate_model,
    smooth_random_field,
)
from qsmflow.simulate.head_source import HeadModelSource
from qsmflow.simulate.realism import (
    FIBRE_DIRECTIONS,
    REALISM_PRESETS,
    Vessel,
    anisotropy_field,
    fibre_directions,
    plane_wave_field,
    rasterise_vessels,
    simulate_realistic,
    sti_kernel_component,
)

TE = (0.004, 0.008)
TILT = rotation_matrix((1.0, 0.4, 0.0), 20.0)


def _rms(a, mask):
    return float(np.sqrt(np.mean(a[mask] ** 2)))


# --------------------------------------------------------------------------- STI forward model


def test_sti_kernel_components_sum_to_the_dipole_kernel():
    """sum_i b_i K_i = D = 1/3 - (k.b)^2/k^2 (Nyquist and DC included), odd and even axes."""
    b = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    for shape, vox in (((12, 10, 8), (1.0, 0.9, 1.8)), ((9, 11, 7), (0.5, 0.5, 0.5))):
        for dc in (0.0, 1 / 3):
            k = sum(b[i] * sti_kernel_component(shape, vox, b, i, dc_value=dc) for i in range(3))
            d = dipole_kernel(shape, vox, b, dc_value=dc, half=True)
            assert np.abs(k - d).max() < 1e-6


def test_anisotropic_gaussian_ball_has_the_closed_form_dipole_field():
    """Outside a Gaussian ball of uniform dchi (n n^T - I/3) the field is that of the point
    dipole m = Q dchi (n (n.b) - b/3): B = (3 (b.r)(m.r) - b.m) / (4 pi r^3). With n at 45
    degrees to B0 this is not the field of any isotropic chi (checked too)."""
    size, sigma, dchi = 40, 1.5, 0.02
    x = np.indices((size,) * 3) - (size - 1) / 2.0
    r = np.sqrt(np.sum(x**2, axis=0))
    ball = np.exp(-(r**2) / (2 * sigma**2))
    n = np.array([np.sqrt(0.5), 0.0, np.sqrt(0.5)])
    field_n = np.broadcast_to(n[:, None, None, None], (3, *ball.shape))
    shell = (r > 8) & (r < 11)
    unit = x / np.where(r > 0, r, 1)
    for b in (
        np.array([0.0, 0.0, 1.0]),
        np.array([0.3, -0.2, 0.93]) / np.linalg.norm([0.3, -0.2, 0.93]),
    ):
        got = anisotropy_field(field_n, dchi * ball, (1.0, 1.0, 1.0), b)
        m = ball.sum() * dchi * (n * (n @ b) - b / 3)
        br, mr = np.tensordot(b, unit, 1), np.tensordot(m, unit, 1)
        want = (3 * br * mr - b @ m) / (4 * np.pi * np.where(r > 0, r, 1) ** 3)
        scale = np.abs(want[shell]).max()
        assert np.abs(got - want)[shell].max() < 2e-3 * scale
        # the isotropic chi with the same b^T X b is a different field
        iso = forward_field(dchi * ball * ((n @ b) ** 2 - 1 / 3), (1.0, 1.0, 1.0), b)
        assert np.abs(iso - want)[shell].max() > 0.3 * scale


def test_fibres_parallel_or_perpendicular_to_b0_act_as_isotropic_chi():
    """n || B0: the field of chi + 2/3 dchi; n perpendicular: chi - 1/3 dchi."""
    rng = np.random.default_rng(1)
    shape, vox = (20, 18, 16), (0.9, 0.9, 1.8)
    dchi = (0.015 * rng.random(shape)).astype(np.float32)
    b = np.array([0.2, -0.3, 0.93]) / np.linalg.norm([0.2, -0.3, 0.93])
    perp = np.cross(b, [1.0, 0.0, 0.0])
    perp /= np.linalg.norm(perp)
    for n, factor in ((b, 2 / 3), (perp, -1 / 3)):
        nf = np.broadcast_to(n[:, None, None, None], (3, *shape))
        got = anisotropy_field(nf, dchi, vox, b)
        want = forward_field(factor * dchi, vox, b)
        assert np.abs(got - want).max() < 1e-5 * np.abs(want).max()


def test_plane_wave_field_is_smooth_random_field_on_the_grid():
    shape, vox = (14, 16, 12), (0.7, 0.8, 1.1)
    fast = plane_wave_field(shape, vox, TILT, seed=5, correlation_mm=3.0, n_waves=64)
    slow = smooth_random_field(
        grid_coords(shape, vox, TILT), seed=5, correlation_mm=3.0, n_waves=64
    )
    assert np.abs(fast - slow).max() < 1e-4 and 0.5 < fast.std() < 1.5


def test_fibre_directions_follow_the_tracts():
    # points 40 mm either side of a midline at x = 2 mm, and a short line in remaining WM
    pts = np.array([[42.0, 0, 0], [-38.0, 0, 0]]).T
    for p, want in FIBRE_DIRECTIONS.items():
        n = fibre_directions(np.array([p, p]), pts, midline_x_mm=2.0)
        assert np.allclose(n[0], want, atol=1e-6)
        assert np.allclose(n[1], np.array(want) * [-1, 1, 1], atol=1e-6)  # mirrored LR
    assert np.degrees(np.arccos(FIBRE_DIRECTIONS[4][1])) == pytest.approx(31.0, abs=1.0)
    line = np.stack([np.linspace(0, 10, 11), np.zeros(11), np.zeros(11)])
    n = fibre_directions(np.full(11, 11), line, seed=3)
    assert np.allclose(np.linalg.norm(n, axis=1), 1, atol=1e-5)
    assert np.min(np.abs(np.sum(n[1:] * n[:-1], axis=1))) > 0.95  # smooth at 1 mm steps
    given = fibre_directions(np.full(11, 11), line, directions={11: (0, 0, 2)})
    assert np.allclose(given, [0, 0, 1])
    with pytest.raises(QSMInputError, match="parcel 12"):
        fibre_directions(np.array([1]), np.zeros((3, 1)), directions={12: (1, 0, 0)})


# --------------------------------------------------------------------------- veins


def test_rasterised_vein_has_its_volume_and_value_in_any_orientation():
    """A straight vein 20 mm long: the voxel fractions add up to its volume pi r^2 L (+ the
    round ends) on fine and coarse, rotated and anisotropic grids, and it carries its chi."""
    pts = np.stack([np.zeros(81), np.zeros(81), np.linspace(-10, 10, 81)], axis=1)
    grids = ((None, (0.5, 0.5, 0.5)), (TILT, (0.5, 0.5, 0.5)), (TILT, (0.4, 0.4, 0.8)))
    grids += ((TILT, (1.5, 1.5, 1.5)),)
    for radius in (0.25, 0.75):
        vein = Vessel(pts, radius, 0.4, "cortical")
        want = np.pi * radius**2 * 20 + 4 / 3 * np.pi * radius**3
        for rot, vox in grids:
            idx, frac, chi = rasterise_vessels([vein], (60, 60, 60), vox, rot)
            assert frac.sum() * np.prod(vox) == pytest.approx(want, rel=0.05)
            assert np.allclose(chi, 0.4) and frac.max() <= 1.0
    # the core of a vein wider than the voxels is all vein
    _, frac, _ = rasterise_vessels([Vessel(pts, 0.75, 0.4, "deep")], (60, 60, 60), (0.5,) * 3)
    assert (frac == 1.0).sum() >= 2 * 40


@pytest.fixture(scope="module")
def head_dir(shared_data):
    return shared_data / "qsm2_head_model"


@pytest.mark.shared_data
def test_veins_are_thin_venous_curves_inside_the_brain_that_rotate_with_the_head(head_dir):
    src = HeadModelSource(head_dir, voxel_size=2.0, vessels=True)
    veins = src.vessel_centrelines()
    kinds = [v.kind for v in veins]
    assert kinds.count("cortical") == 48 and kinds.count("deep") == 3
    assert all(0.25 <= v.radius_mm <= 0.75 and 0.30 <= v.chi_ppm <= 0.45 for v in veins)
    assert sum(v.length_mm for v in veins) > 1500
    plain_src = HeadModelSource(head_dir, voxel_size=2.0)
    plain, ref = plain_src.realise(), src.realise()
    assert ref.realism["vessels"]["cortical"] == 48
    # chi = (1 - f) chi_tissue + f chi_vein with f the vein fraction of the voxel
    idx, frac, chi_v = rasterise_vessels(veins, ref.chi.shape, ref.voxel_size)
    base = plain.chi.reshape(-1)[idx]
    assert np.allclose(ref.chi.reshape(-1)[idx], base + frac * (chi_v - base), atol=1e-6)
    assert np.all((chi_v >= 0.3) & (chi_v <= 0.45))
    was_blood = plain.labels.reshape(-1)[idx] == 11
    assert np.array_equal(ref.labels.reshape(-1)[idx] == 11, (frac >= 0.5) | was_blood)
    # the veins' volume, inside the head and the brain
    volume = sum(np.pi * v.radius_mm**2 * v.length_mm for v in veins)
    assert frac.sum() * 2.0**3 == pytest.approx(volume, rel=0.15)
    inside = plain.labels.reshape(-1)[idx] > 0
    assert inside.all() and plain.brain_mask.reshape(-1)[idx].mean() > 0.98
    # cortical veins run in the CSF beside grey matter
    c = (np.asarray(plain.labels.shape) - 1) / 2.0
    pts = np.concatenate([v.points for v in veins if v.kind == "cortical"])
    near = np.round(pts / 2.0 + c).astype(int)
    assert np.isin(plain.labels[tuple(near.T)], (9, 10, 11)).mean() > 0.85
    # rotated head: the veins move with it (same chi excess, its centre rotated)
    rot, plain_rot = src.realise(TILT), plain_src.realise(TILT)
    excess = [h.chi - p.chi for h, p in ((ref, plain), (rot, plain_rot))]
    assert excess[1].sum() == pytest.approx(excess[0].sum(), rel=0.02)
    grid = [grid_coords(ref.chi.shape, ref.voxel_size, np.eye(3)).reshape(3, -1)]
    centres = [g @ e.reshape(-1) / e.sum() for g, e in zip(grid * 2, excess, strict=True)]
    assert np.linalg.norm(centres[1] - TILT @ centres[0]) < 0.3  # mm
    # the truth of the rotated head is the rotated truth, up to the interpolation error the
    # head model has without veins
    errors = []
    for head, direct in ((ref, rot), (plain, plain_rot)):
        resampled = rotate_model(head, TILT)
        brain = direct.brain_mask & resampled.brain_mask
        errors.append(np.mean(np.abs(direct.chi - resampled.chi)[brain]))
    assert errors[0] < 1.2 * errors[1]


# --------------------------------------------------------------------------- whole simulation


@pytest.fixture(scope="module")
def sims(head_dir):
    """3 mm head model, 2x supersampled, noise-free: plain, WM anisotropy, residual field."""
    kw = dict(te_s=TE, snr=None, supersample=2)
    plain = simulate_gre(HeadModelSource(head_dir, 3.0), **kw)
    aniso = simulate_gre(HeadModelSource(head_dir, 3.0, wm_anisotropy_ppm=0.015), **kw)
    resid = simulate_gre(HeadModelSource(head_dir, 3.0), residual_background_ppm=0.02, **kw)
    return plain, aniso, resid


@pytest.mark.shared_data
def test_realism_off_is_the_plain_simulation(head_dir, sims):
    plain, _, _ = sims
    off = HeadModelSource(head_dir, 3.0, wm_anisotropy_ppm=0.0, subvoxel_texture_level=0.0)
    assert type(off.realise()) is SimulatedHead
    d = simulate_gre(off, te_s=TE, snr=None, supersample=2, residual_background_ppm=0.0)
    for name in ("total_field", "local_field", "chi", "labels", "magnitude", "phase"):
        assert np.array_equal(getattr(d, name), getattr(plain, name)), name
    assert d.extra == {}


@pytest.mark.shared_data
def test_wm_anisotropy_adds_its_field_to_total_and_local(sims):
    plain, aniso, _ = sims
    brain = plain.brain_mask
    part = aniso.extra["anisotropy_field"]
    assert np.array_equal(aniso.chi, plain.chi)  # the truth stays the isotropic chi
    assert np.abs(aniso.local_field - plain.local_field - part)[brain].max() < 2e-6
    assert np.abs(aniso.total_field - plain.total_field - part)[brain].max() < 2e-6
    # a few ppb: about 1e-3 ppm rms for dchi 0.015 ppm, i.e. ~10 % of the local field
    assert 5e-4 < _rms(part, brain) < 2e-3
    assert aniso.extra["phantom"]["wm_anisotropy"]["dchi_ppm"] == 0.015


@pytest.mark.shared_data
def test_head_fibres_along_b0_in_a_tilted_head_add_two_thirds_dchi(head_dir):
    """Every WM fibre set along B0 (in the tilted head's canonical frame) or perpendicular to
    it: the anisotropic field is forward_field(2/3 dchi) or (-1/3 dchi) over the WM voxels."""
    b_canonical = TILT.T @ [0.0, 0.0, 1.0]
    perp = np.cross(b_canonical, [1.0, 0.0, 0.0])
    for n, factor in ((b_canonical, 2 / 3), (perp, -1 / 3)):
        fibres = {p: tuple(n) for p in range(1, 12)}
        src = HeadModelSource(head_dir, 3.0, wm_anisotropy_ppm=0.015, fibre_directions=fibres)
        d = simulate_gre(src, te_s=TE, snr=None, supersample=1, rotation=TILT)
        a = src.realise(TILT).anisotropy
        assert np.allclose(a.direction @ [0, 0, 1], 1.0 if factor > 0 else 0.0, atol=1e-5)
        want = forward_field(factor * a.dense(a.dchi), d.voxel_size, (0, 0, 1))
        b = d.brain_mask
        assert np.abs(d.extra["anisotropy_field"] - want)[b].max() < 1e-3 * np.abs(want[b]).max()


@pytest.mark.shared_data
def test_anatomical_fibre_directions_rotate_with_the_head(head_dir):
    """The mean fibre tensor <n n^T> over WM of the tilted head is R <n n^T> R^T."""
    src = HeadModelSource(head_dir, 3.0, wm_anisotropy_ppm=0.015)
    ref, rot = src.realise().anisotropy, src.realise(TILT).anisotropy
    assert rot.index.size == pytest.approx(ref.index.size, rel=0.02)
    t_ref = ref.direction.T @ ref.direction / ref.index.size
    t_rot = rot.direction.T @ rot.direction / rot.index.size
    assert np.abs(t_rot - TILT @ t_ref @ TILT.T).max() < 0.01
    assert np.allclose(np.linalg.norm(ref.direction, axis=1), 1, atol=1e-5)


@pytest.mark.shared_data
def test_residual_background_is_in_the_total_field_only(sims):
    plain, _, resid = sims
    brain = plain.brain_mask
    part = resid.extra["residual_background_field"]
    assert np.array_equal(resid.local_field, plain.local_field)
    assert np.abs(resid.total_field - plain.total_field - part)[plain.head_mask].max() < 2e-6
    assert _rms(part, brain) == pytest.approx(0.02, rel=0.03)
    assert abs(part[brain].mean()) < 1e-3
    # not harmonic: V-SHARP leaves about a fifth of it (measured 0.0043 ppm rms); a harmonic
    # field would be removed down to ~1e-4 ppm
    left, eroded = vsharp(np.where(brain, part, 0), brain, resid.voxel_size)
    inner = erode_mm(eroded, 4.0, resid.voxel_size)
    assert _rms(left, inner) > 0.15 * 0.02


@pytest.mark.shared_data
@pytest.mark.parametrize("preset", ["3t", "7t"])
def test_presets_give_their_b0_echoes_and_snr(head_dir, preset):
    p = REALISM_PRESETS[preset]
    kw = dict(voxel_size=4.0, directory=head_dir, supersample=1, seed=0)
    d = simulate_realistic(preset, **kw)
    clean = simulate_realistic(preset, snr=float("inf"), **kw)
    assert d.b0_tesla == p["b0_tesla"] and d.te_s == p["te_s"] and len(d.te_s) in (4, 5)
    assert d.extra["realism"]["preset"] == preset and d.extra["realism"]["snr"] == p["snr"]
    assert set(d.extra["phantom"]) == {"subvoxel_texture", "vessels", "wm_anisotropy"}
    # noise measured against the noise-free run of the same seed: no background needed
    noise = (d.complex_signal - clean.complex_signal)[d.head_mask]
    sigma = np.std(np.concatenate([noise.real, noise.imag]))
    assert sigma == pytest.approx(d.noise_sigma, rel=0.03)
    first = np.mean(np.abs(clean.complex_signal[..., 0])[d.brain_mask])
    assert first / sigma == pytest.approx(p["snr"], rel=0.03)
    assert np.array_equal(clean.local_field, d.local_field)


@pytest.mark.shared_data
def test_anisotropic_voxels_with_supersampling(head_dir):
    d = simulate_realistic("3t", voxel_size=(3.0, 3.0, 6.0), directory=head_dir, snr=None)
    assert d.voxel_size == (3.0, 3.0, 6.0) and d.shape == (55, 68, 34) and d.supersample == 2
    b = d.brain_mask
    assert np.all(np.isfinite(d.total_field)) and 0 < _rms(d.extra["anisotropy_field"], b) < 3e-3
    assert _rms(d.extra["residual_background_field"], b) == pytest.approx(0.02, rel=0.05)


def test_bad_realism_options(tmp_path):
    with pytest.raises(QSMInputError, match="unknown realism preset"):
        simulate_realistic("5t")
    with pytest.raises(QSMInputError, match="unknown realism option"):
        simulate_realistic("3t", wm_anisotropy=0.01)
    with pytest.raises(QSMInputError, match="wm_anisotropy_ppm"):
        HeadModelSource(tmp_path, wm_anisotropy_ppm=-0.01).realise()
    with pytest.raises(QSMInputError, match="vessel_diameter_mm"):
        HeadModelSource(tmp_path, vessels=True, vessel_diameter_mm=(1.5, 0.5)).realise()
    with pytest.raises(QSMInputError, match="residual_background_ppm"):
        simulate_gre(HeadModelSource(tmp_path), residual_background_ppm=-0.02)
    with pytest.raises(QSMInputError, match="fibre directions must be"):
        anisotropy_field(np.zeros((2, 4, 4, 4)), 0.01)


# --------------------------------------------------------------------------- CLI


@pytest.mark.shared_data
def test_cli_realism_writes_and_records_the_preset(tmp_path, head_dir, capsys):
    from qsmflow.cli.main import main

    out = tmp_path / "real"
    args = ["simulate", str(out), "--phantom", "head-model", "--head-model-dir", str(head_dir)]
    args += ["--voxel-size", "4", "--orientations", "1", "--realism", "3t", "--snr", "55"]
    assert main(args) == 0
    assert "realism 3t" in capsys.readouterr().out
    params = json.loads((out / "derivatives/qsmflow-simulation/simulation.json").read_text())[
        "Parameters"
    ]
    assert params["realism"] == "3t" and params["snr"] == 55.0  # the explicit flag wins
    assert params["echo_times_s"] == list(REALISM_PRESETS["3t"]["te_s"])
    assert params["b0_tesla"] == 3.0 and params["texture"] and params["dephasing"]
    rp = params["realism_parameters"]
    assert rp["wm_anisotropy_ppm"] == 0.015 and rp["vessels"] is True
    assert rp["residual_background_ppm"] == 0.02 and rp["subvoxel_texture_level"] == 0.1
    side = json.loads((out / "sub-01/anat/sub-01_echo-5_part-phase_MEGRE.json").read_text())
    assert side["EchoTime"] == 0.028 and side["MagneticFieldStrength"] == 3.0

    bad = tmp_path / "bad"
    assert main(["simulate", str(bad), "--realism", "7t"]) == 2
    assert "needs --phantom head-model" in capsys.readouterr().err
    assert not bad.exists()
