"""Multi-echo field fitting, phase-offset removal, temporal unwrapping and the CLI path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qsmflow.errors import QSMInputError
from qsmflow.physics.multiecho import (
    align_echoes,
    check_echo_times,
    estimate_phase_offset,
    fit_multiecho,
    multiecho_field,
    remove_phase_offset,
    temporal_unwrap,
)
from qsmflow.physics.unwrap import wrap_to_pi

TE = np.array([0.004, 0.009, 0.015, 0.022])


def _synthetic(shape=(24, 26, 20), seed=0):
    """Known field (Hz) and offset (rad), smooth in space, and the unwrapped phase."""
    rng = np.random.default_rng(seed)
    g = np.indices(shape, dtype=np.float64)
    field = 40 * np.sin(g[0] / 7) + 25 * np.cos(g[1] / 5) + 10 * g[2] / shape[2] - 5
    offset = 1.2 * np.sin(g[1] / 11) - 0.7 * np.cos(g[2] / 9)
    phase = offset[..., None] + 2 * np.pi * field[..., None] * TE
    mag = rng.uniform(0.5, 2.0, shape + (TE.size,))
    return field, offset, phase, mag


def test_fit_recovers_field_and_offset_exactly():
    field, offset, phase, mag = _synthetic()
    f, o = fit_multiecho(phase, mag, TE, dtype=np.float64)
    np.testing.assert_allclose(f, field, atol=1e-9)
    np.testing.assert_allclose(o, offset, atol=1e-9)
    f32, o32 = fit_multiecho(phase.astype(np.float32), mag, TE)
    assert f32.dtype == np.float32 and o32.dtype == np.float32
    np.testing.assert_allclose(f32, field, atol=1e-3)
    np.testing.assert_allclose(o32, offset, atol=1e-4)
    # Equal weights give the same answer on noise-free data.
    f_eq, _ = fit_multiecho(phase, None, TE, dtype=np.float64)
    np.testing.assert_allclose(f_eq, field, atol=1e-9)


def test_fit_through_origin():
    field, offset, phase, _ = _synthetic()
    no_offset = phase - offset[..., None]
    f, o = fit_multiecho(no_offset, None, TE, intercept=False, dtype=np.float64)
    np.testing.assert_allclose(f, field, atol=1e-9)
    assert np.all(o == 0)
    # With an offset present the through-origin fit is biased, the intercept fit is not.
    f_biased, _ = fit_multiecho(phase, None, TE, intercept=False, dtype=np.float64)
    assert np.abs(f_biased - field).max() > 1.0
    # One echo: phase / (2 pi TE).
    f1, _ = fit_multiecho(no_offset[..., :1], None, TE[:1], intercept=False, dtype=np.float64)
    np.testing.assert_allclose(f1, field, atol=1e-9)


def test_fit_weights_follow_magnitude():
    field, offset, phase, mag = _synthetic()
    corrupted = phase.copy()
    corrupted[..., 3] += 1.0  # a bad last echo ...
    mag[..., 3] = 1e-6  # ... that has (almost) no signal
    f_weighted, _ = fit_multiecho(corrupted, mag, TE, dtype=np.float64)
    f_equal, _ = fit_multiecho(corrupted, None, TE, dtype=np.float64)
    assert np.abs(f_weighted - field).max() < 1e-3
    assert np.abs(f_equal - field).min() > 1.0
    # Weighted means hand-checked in one voxel: omega = sum w dT dphi / sum w dT^2.
    w, p = mag[3, 4, 5], corrupted[3, 4, 5]
    tm, pm = (w * TE).sum() / w.sum(), (w * p).sum() / w.sum()
    omega = (w * (TE - tm) * (p - pm)).sum() / (w * (TE - tm) ** 2).sum()
    assert f_weighted[3, 4, 5] == pytest.approx(omega / (2 * np.pi), rel=1e-12)


def test_fit_mask_and_zero_weights():
    field, _, phase, mag = _synthetic()
    mask = np.zeros(field.shape, bool)
    mask[4:20, 4:20, 4:16] = True
    phase = phase.copy()
    phase[0, 0, 0, 1] = np.nan  # outside the mask: ignored
    mag[5, 5, 5] = 0  # no signal at all: 0, not NaN
    f, o = fit_multiecho(phase, mag, TE, mask, dtype=np.float64)
    assert np.all(f[~mask] == 0) and np.all(o[~mask] == 0)
    assert f[5, 5, 5] == 0 and np.all(np.isfinite(f))
    sel = mask.copy()
    sel[5, 5, 5] = False
    np.testing.assert_allclose(f[sel], field[sel], atol=1e-9)


def test_echo_time_checks():
    field, _, phase, mag = _synthetic()
    with pytest.raises(QSMInputError, match="milliseconds"):
        fit_multiecho(phase, mag, TE * 1000)
    with pytest.raises(QSMInputError, match="increasing"):
        fit_multiecho(phase, mag, TE[::-1])
    with pytest.raises(QSMInputError, match="increasing"):
        check_echo_times([0.004, 0.008, 0.008])
    with pytest.raises(QSMInputError, match="3 echo time"):
        fit_multiecho(phase, mag, TE[:3])
    with pytest.raises(QSMInputError, match="positive"):
        check_echo_times([0.0, 0.01])
    with pytest.raises(QSMInputError, match="magnitude shape"):
        fit_multiecho(phase, mag[..., :2], TE)
    with pytest.raises(QSMInputError, match="negative"):
        fit_multiecho(phase, -mag, TE)
    with pytest.raises(QSMInputError, match="at least 2 echoes"):
        fit_multiecho(phase[..., :1], None, TE[:1])
    bad = phase.copy()
    bad[3, 3, 3, 0] = np.inf
    with pytest.raises(QSMInputError, match="NaN"):
        fit_multiecho(bad, mag, TE)
    np.testing.assert_array_equal(check_echo_times([0.005, 0.01], 2), [0.005, 0.01])


def _wrapped_case():
    """Wrapped multi-echo phase of a smooth field with a smooth offset, in a ball mask."""
    shape = (40, 40, 32)
    g = np.indices(shape, dtype=np.float64)
    c = np.array(shape)[:, None, None, None] / 2
    mask = np.sqrt(((g - c) ** 2).sum(0)) < 15
    field = 60 * np.exp(-((g[0] - 22) ** 2 + (g[1] - 18) ** 2 + (g[2] - 15) ** 2) / 120) - 20
    field += 1.5 * (g[1] - 20)
    offset = 1.0 * np.sin(g[0] / 13) + 0.8 * np.cos(g[2] / 10)
    te = np.array([0.003, 0.011, 0.019])
    phase = wrap_to_pi(offset[..., None] + 2 * np.pi * field[..., None] * te)
    return field, offset, phase.astype(np.float32), te, mask


def test_offset_removal_and_temporal_unwrapping():
    field, offset, phase, te, mask = _wrapped_case()
    # Without smoothing the estimate is exact on noise-free data ...
    est = estimate_phase_offset(phase, te, None, mask, sigma_mm=None)
    assert np.abs(wrap_to_pi(est - offset)[mask]).max() < 1e-3
    # ... the default 4 mm smoothing (against noise) bends it a little, most near the mask
    # edge; far below pi, which is all temporal unwrapping needs (the fit takes out the rest).
    from qsmflow.physics.masks import erode_mm

    smooth_err = np.abs(wrap_to_pi(estimate_phase_offset(phase, te, None, mask) - offset))
    assert smooth_err[erode_mm(mask, 6, (1, 1, 1))].max() < 0.15
    assert smooth_err[mask].max() < 0.5
    clean = remove_phase_offset(phase, est)
    # Echo 1 is short enough not to wrap here: its offset-free phase is already unwrapped.
    first = clean[..., 0]
    unwrapped = temporal_unwrap(clean, te, first, mask)
    truth = 2 * np.pi * field[..., None] * te
    assert np.abs((unwrapped - truth)[mask]).max() < 0.1
    f, o = fit_multiecho(unwrapped, None, te, mask)
    assert np.abs(f - field)[mask].max() < 1.0


@pytest.mark.parametrize("method", ["temporal", "lsq", "laplacian"])
def test_multiecho_field_methods(method):
    field, offset, phase, te, mask = _wrapped_case()
    f, o = multiecho_field(phase, None, te, (1, 1, 1), mask, method=method)
    if method == "laplacian":
        # Correct up to a function harmonic in the mask, which background removal takes out.
        from qsmflow.evaluation import nrmse
        from qsmflow.physics.bgremove import vsharp

        radii = [5, 4, 3, 2, 1]
        reference, eroded = vsharp(field, mask, (1, 1, 1), radii_mm=radii)
        local, _ = vsharp(f, mask, (1, 1, 1), radii_mm=radii)
        assert nrmse(local, reference, eroded) < 2.0  # measured 0.7 %
    else:
        assert np.abs(f - field)[mask].max() < 0.5
        assert np.abs(wrap_to_pi(o - offset)[mask]).max() < 0.05


def test_align_echoes_removes_2pi_steps():
    field, offset, _, te, mask = _wrapped_case()
    unwrapped = offset[..., None] + 2 * np.pi * field[..., None] * te
    shifted = unwrapped + 2 * np.pi * np.array([0, 3, -2])
    aligned = align_echoes(shifted, te, mask, offset)
    np.testing.assert_allclose(aligned[mask], unwrapped[mask], atol=1e-4)


def test_cli_multiecho_field(tmp_path):
    from qsmflow.cli.main import main
    from qsmflow.io.nifti import load_volume, save_volume

    field, offset, phase, te, mask = _wrapped_case()
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    save_volume(tmp_path / "phase.nii.gz", phase, affine)
    save_volume(tmp_path / "mask.nii.gz", mask.astype(np.uint8), affine, dtype=np.uint8)
    base = ["unwrap", str(tmp_path / "phase.nii.gz"), "-m", str(tmp_path / "mask.nii.gz")]
    tes = [str(t) for t in te]
    rc = main(
        [
            *base,
            "-o",
            str(tmp_path / "field.nii.gz"),
            "--echo-times",
            *tes,
            "--offset-out",
            str(tmp_path / "offset.nii.gz"),
        ]
    )
    assert rc == 0
    f = load_volume(tmp_path / "field.nii.gz").data
    assert np.abs(f - field)[mask].max() < 0.5
    assert np.all(f[~mask] == 0)
    o = load_volume(tmp_path / "offset.nii.gz").data
    assert np.abs(wrap_to_pi(o - offset)[mask]).max() < 0.05
    side = json.loads((tmp_path / "field.json").read_text())
    assert side["Units"] == "Hz" and side["UnwrappingMethod"] == "temporal"
    np.testing.assert_allclose(side["EchoTime"], te)
    # Without echo times: each echo unwrapped separately, output 4-D in rad.
    assert main([*base, "-o", str(tmp_path / "uw.nii.gz"), "--method", "lsq"]) == 0
    uw = load_volume(tmp_path / "uw.nii.gz", ndim=4).data
    assert uw.shape == phase.shape
    assert np.abs(wrap_to_pi(uw - phase)[mask]).max() < 1e-3
    # Echo-count mismatch and millisecond TEs: clear errors, exit code 2, no output.
    for bad in (tes[:2], [str(t * 1000) for t in te]):
        rc = main([*base, "-o", str(tmp_path / "bad.nii.gz"), "--echo-times", *bad])
        assert rc == 2
    assert not (tmp_path / "bad.nii.gz").exists()


def test_auto_unwrapping_is_temporal_for_several_echoes():
    from qsmflow.physics.multiecho import UNWRAPPING_METHODS, resolve_unwrapping

    assert resolve_unwrapping("auto", 3) == "temporal"
    assert resolve_unwrapping("auto", 1) == "laplacian"
    assert resolve_unwrapping("lsq", 3) == "lsq"
    assert UNWRAPPING_METHODS[0] == "auto"
    with pytest.raises(QSMInputError, match="unknown method"):
        resolve_unwrapping("romeo", 3)
    field, offset, phase, te, mask = _wrapped_case()
    auto = multiecho_field(phase, None, te, (1, 1, 1), mask, method="auto")
    temporal = multiecho_field(phase, None, te, (1, 1, 1), mask, method="temporal")
    np.testing.assert_array_equal(auto[0], temporal[0])
