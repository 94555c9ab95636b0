"""Metrics: agreement with qsm-ci 0.6.2 and with the ISDU golden metrics.json, properties, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from qsmflow import evaluation as M
from qsmflow.errors import QSMInputError
from qsmflow.evaluation import _filters as filters
from qsmflow.evaluation import challenge2016, qsmci
from qsmflow.evaluation.rois import load_label_names, roi_mean_agreement, roi_stats

QSMCI_KEYS_SEG = (
    "nrmse",
    "nrmse_detrend",
    "nrmse_tissue",
    "nrmse_blood",
    "nrmse_dgm",
    "dgm_linearity",
    "calc_moment_dev",
    "calc_streak",
    "correlation",
    "xsim",
    "hfen",
    "coverage",
)
QSMCI_KEYS_NOSEG = ("nrmse", "nrmse_detrend", "hfen", "correlation", "xsim", "coverage")
CHALLENGE_KEYS = ("ssim", "psnr", "rmse", "hfen", "xsim")


def _close(a: float, b: float, rtol: float = 1e-9, atol: float = 1e-12) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return abs(a - b) <= atol + rtol * abs(b)


# --------------------------------------------------------------------------------------------
# a small head-like phantom with every label the region metrics use
# --------------------------------------------------------------------------------------------

CHIREF = np.array(
    [0, 0.06, 0.12, 0.05, 0.09, 0.08, 0.11, 0.02, -0.03, 0.01, 0.0, 0.3, 0, 0, 0, 0, -0.5]
)


def _phantom(n: int = 64, seed: int = 1):
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*[np.arange(n)] * 3, indexing="ij")
    c = n // 2
    s = n / 64.0

    def ball(centre, radius):
        ci, cj, ck = (v * s for v in centre)
        return (i - ci) ** 2 + (j - cj) ** 2 + (k - ck) ** 2 <= (radius * s) ** 2

    brain = ball((32, 32, 32), 26)
    seg = np.zeros(brain.shape, np.int32)
    seg[brain] = 8
    seg[brain & (k < 24 * s)] = 9
    seg[ball((32, 32, 32), 7)] = 7
    dgm = [((24, 26, 30), 4), ((40, 26, 30), 4), ((24, 38, 34), 3), ((40, 38, 34), 3),
           ((32, 20, 40), 2), ((32, 44, 40), 3)]  # fmt: skip
    for label, (centre, radius) in enumerate(dgm, 1):
        seg[ball(centre, radius)] = label
    seg[(abs(i - c) <= 1) & (abs(j - 50 * s) <= 1) & brain] = 11
    seg[ball((20, 32, 44), 2)] = 16
    seg[~brain & ball((32, 32, 32), 29)] = 10  # CSF rim outside the evaluation mask
    truth = CHIREF[seg] * brain
    # a streaky, offset, noisy "reconstruction" with a dropped voxel and a NaN inside the mask
    recon = 0.85 * truth + 0.015 + 0.01 * rng.standard_normal(truth.shape)
    recon += 0.01 * np.sin(0.4 * i) * np.cos(0.3 * k)
    recon[c, c, c] = np.nan
    recon[c + 3, c, c] = 0.0
    return recon, truth, brain.astype(np.uint8), seg


@pytest.fixture(scope="module")
def phantom():
    return _phantom()


@pytest.fixture(scope="module")
def isdu(reference_isdu):
    inp = np.load(reference_isdu / "inputs.npz")
    k1 = np.load(reference_isdu / "k1.npz")
    recons = {"primary": k1["chi_hat"].astype(np.float64)}
    for name in ("sw_k4", "usw_init_k4", "spinet_k3"):
        recons[f"{name}.npz chi_hat"] = np.load(reference_isdu / f"{name}.npz")["chi_hat"].astype(
            np.float64
        )
    recons["x0 masked = k1.npz x0_real * mask (floor)"] = (
        k1["x0_real"].astype(np.float64) * inp["mask"]
    )
    return {
        "truth": inp["chi_true"].astype(np.float64),
        "mask": inp["mask"],
        "labels": inp["labels"],
        "recons": recons,
        "golden": json.loads((reference_isdu / "metrics.json").read_text()),
    }


# --------------------------------------------------------------------------------------------
# separable filters == their 3-D definitions
# --------------------------------------------------------------------------------------------


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def test_separable_filters_match_direct_3d_correlation():
    rng = np.random.default_rng(0)
    vol = rng.standard_normal((19, 21, 23))
    r = np.arange(-7, 8, dtype=np.float64)
    x, y, z = np.meshgrid(r, r, r, indexing="ij")
    rr = x**2 + y**2 + z**2
    s = 1.5
    # 2016 LoG, written exactly as the MATLAB code builds it
    h = np.exp(-rr / (2 * s * s))
    h /= h.sum()
    H = (rr / s**4 - 3 / s**2) * h
    H -= H.mean()
    direct = ndimage.correlate(vol, H, mode="constant", cval=0.0)
    assert _rel(challenge2016._log_2016(vol), direct) < 1e-12
    # 2016 SSIM window (5^3) and FANSI imgaussfilt3 window (7^3, replicate)
    for radius, mode in ((2, "constant"), (3, "nearest")):
        rw = np.arange(-radius, radius + 1, dtype=np.float64)
        gx, gy, gz = np.meshgrid(rw, rw, rw, indexing="ij")
        w = np.exp(-(gx**2 + gy**2 + gz**2) / (2 * s * s))
        w /= w.sum()
        g = filters.gauss1d(s, radius)
        assert (
            _rel(filters.separable(vol, (g, g, g), mode), ndimage.correlate(vol, w, mode=mode))
            < 1e-13
        )
    # QSM-CI LoG: scipy's gaussian_laplace (sigma 1.5, truncate 5 -> 17^3, mirror boundary)
    ours = qsmci._log_qsmci(vol, 1.5, 5.0)
    assert _rel(ours, ndimage.gaussian_laplace(vol, 1.5, truncate=5.0)) < 1e-12
    r8 = np.arange(-8, 9, dtype=np.float64)
    x, y, z = np.meshgrid(r8, r8, r8, indexing="ij")
    g = filters.gauss1d(s, 8)
    g2 = filters.gauss1d_d2(s, 8)
    L = (
        g2[:, None, None] * g[None, :, None] * g[None, None, :]
        + g[:, None, None] * g2[None, :, None] * g[None, None, :]
        + g[:, None, None] * g[None, :, None] * g2[None, None, :]
    )
    assert _rel(ours, ndimage.correlate(vol, L, mode="reflect")) < 1e-12
    # QSM-CI truncated 5^3 box: exact in-bounds counts
    cnt = ndimage.correlate(np.ones(vol.shape), np.ones((5, 5, 5)), mode="constant")
    prod = (
        qsmci._box_counts(19, 2)[:, None, None]
        * qsmci._box_counts(21, 2)[None, :, None]
        * qsmci._box_counts(23, 2)[None, None, :]
    )
    np.testing.assert_array_equal(prod, cnt)


# --------------------------------------------------------------------------------------------
# agreement with qsm-ci 0.6.2 score_arrays
# --------------------------------------------------------------------------------------------


def _assert_agrees_with_qsmci(recon, truth, mask, seg, *, rtol=1e-9):
    qsm_eval = pytest.importorskip("qsm_ci.qsm_eval")
    ref_seg, _ = qsm_eval.score_arrays(recon, truth, mask, kind="chi", seg=seg)
    ref_noseg, _ = qsm_eval.score_arrays(recon, truth, mask, kind="chi")
    assert set(ref_seg) == set(QSMCI_KEYS_SEG)
    assert set(ref_noseg) == set(QSMCI_KEYS_NOSEG)
    ours = M.score(recon, truth, mask, seg)["qsmci"]
    ours_noseg = M.score(recon, truth, mask)["qsmci"]
    assert set(ours_noseg) == set(QSMCI_KEYS_NOSEG)
    for key in QSMCI_KEYS_SEG:
        assert _close(ours[key], float(ref_seg[key]), rtol), (key, ours[key], ref_seg[key])
    for key in QSMCI_KEYS_NOSEG:
        assert _close(ours_noseg[key], float(ref_noseg[key]), rtol), key
    # the public single-metric functions give the same numbers
    singles = {
        "nrmse": M.nrmse(recon, truth, mask),
        "nrmse_detrend": M.nrmse_detrend(recon, truth, mask),
        "correlation": M.correlation(recon, truth, mask),
        "xsim": M.xsim_qsmci(recon, truth, mask),
        "hfen": M.hfen_qsmci(recon, truth, mask),
        "nrmse_tissue": M.nrmse_tissue(recon, truth, mask, seg),
        "nrmse_blood": M.nrmse_blood(recon, truth, mask, seg),
        "nrmse_dgm": M.nrmse_dgm(recon, truth, mask, seg),
        "dgm_linearity": M.dgm_linearity(recon, truth, mask, seg),
    }
    dev, streak = M.calcification_metrics(recon, truth, mask, seg)
    singles["calc_moment_dev"], singles["calc_streak"] = dev, streak
    for key, value in singles.items():
        assert _close(value, float(ref_seg[key]), rtol), (key, value, ref_seg[key])
    return ours, ref_seg


def test_qsmci_agreement_synthetic_phantom(phantom):
    recon, truth, mask, seg = phantom
    ours, ref = _assert_agrees_with_qsmci(recon, truth, mask, seg)
    # every metric is defined on this phantom (calcification included)
    assert all(math.isfinite(v) for v in ours.values())
    assert ours["coverage"] == pytest.approx(1.0 - 2.0 / mask.sum())
    assert 0.0 < ours["xsim"] < 1.0 and ours["calc_streak"] > 0


def test_qsmci_agreement_isdu_reference(isdu):
    recon = isdu["recons"]["primary"]
    ours, ref = _assert_agrees_with_qsmci(recon, isdu["truth"], isdu["mask"], isdu["labels"])
    assert ours["nrmse"] == pytest.approx(44.4065263420, abs=1e-8)
    assert ours["xsim"] == pytest.approx(0.636319102961, abs=1e-10)
    assert ours["hfen"] == pytest.approx(38.1493963217, abs=1e-8)


# --------------------------------------------------------------------------------------------
# agreement with the ISDU golden metrics (authors' MATLAB code under Octave, and a port)
# --------------------------------------------------------------------------------------------


def test_challenge_metrics_match_golden_json(isdu):
    golden = isdu["golden"]
    y = isdu["truth"]
    worst = dict.fromkeys(CHALLENGE_KEYS, 0.0)
    for name, x in isdu["recons"].items():
        entry = golden["primary"] if name == "primary" else golden["other_reconstructions"][name]
        got = {
            "ssim": M.ssim_2016(x, y),
            "psnr": M.psnr_2016(x, y),
            "rmse": M.rmse_2016(x, y),
            "hfen": M.hfen_2016(x, y),
            "xsim": M.xsim(x, y),
        }
        for source in ("python_port", "octave_with_shims"):
            for key in CHALLENGE_KEYS:
                rel = abs(got[key] / entry[source][key] - 1.0)
                worst[key] = max(worst[key], rel)
                assert rel < 1e-9, (name, source, key, got[key], entry[source][key])
        for key in ("ssim", "psnr", "rmse"):  # these ran unmodified in Octave
            assert abs(got[key] / entry["octave_unmodified_scripts"][key] - 1.0) < 1e-9
    assert max(worst.values()) < 1e-11  # observed: <= 1.1e-12


def test_score_challenge_family_matches_golden(isdu):
    """score() masks both maps; the golden maps are already 0 outside the mask."""
    x = isdu["recons"]["primary"]
    res = M.score(x, isdu["truth"], isdu["mask"], isdu["labels"])
    for key in CHALLENGE_KEYS:
        want = isdu["golden"]["primary"]["octave_with_shims"][key]
        assert abs(res["challenge"][key] / want - 1.0) < 1e-9, key


# --------------------------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------------------------


def test_perfect_reconstruction(phantom):
    _, truth, mask, seg = phantom
    res = M.score(truth.copy(), truth, mask, seg)
    q, c = res["qsmci"], res["challenge"]
    assert q["nrmse"] == pytest.approx(0.0, abs=1e-12)
    assert q["nrmse_detrend"] == pytest.approx(0.0, abs=1e-12)
    assert q["correlation"] == pytest.approx(1.0, abs=1e-12)
    assert q["xsim"] == pytest.approx(1.0, abs=1e-12)
    assert q["hfen"] == pytest.approx(0.0, abs=1e-12)
    assert q["dgm_linearity"] == pytest.approx(0.0, abs=1e-12)
    assert c["rmse"] == 0.0 and c["hfen"] == 0.0
    assert c["psnr"] == math.inf
    assert c["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert c["xsim"] == pytest.approx(1.0, abs=1e-12)
    assert M.ssim_2016(truth, truth) == pytest.approx(1.0, abs=1e-12)
    assert M.xsim(truth, truth) == pytest.approx(1.0, abs=1e-12)
    assert M.xsim_qsmci(truth, truth, mask) == pytest.approx(1.0, abs=1e-12)
    for row in res["rois"]:
        assert row["recon_mean"] == row["ref_mean"]


def test_offset_and_scale_invariance(phantom):
    recon, truth, mask, _ = phantom
    recon = np.nan_to_num(recon)
    m = mask > 0
    base = M.nrmse(recon, truth, mask)
    shifted = recon + 0.37 * m
    assert M.nrmse(shifted, truth, mask) == pytest.approx(base, rel=1e-10)
    assert M.nrmse(recon + 5.0, truth, mask) == pytest.approx(base, rel=1e-10)  # zeroed outside
    affine = 2.5 * recon - 0.1
    assert M.nrmse_detrend(affine, truth, mask) == pytest.approx(
        M.nrmse_detrend(recon, truth, mask), rel=1e-9
    )
    assert M.correlation(affine, truth, mask) == pytest.approx(
        M.correlation(recon, truth, mask), rel=1e-12
    )
    # the non-demeaned definitions are not offset invariant
    plain = M.nrmse(recon, truth, mask, demean=False)
    assert M.nrmse(shifted, truth, mask, demean=False) > 2 * plain
    assert M.rmse_2016(shifted, truth) > 2 * M.rmse_2016(recon * m, truth)


def test_nrmse_keeps_its_signature():
    t = np.array([1.0, 2.0, 3.0, 4.0])
    r = t + np.array([0.1, -0.1, 0.1, -0.1])
    assert M.nrmse(r, t) == pytest.approx(100 * 0.2 / np.linalg.norm(t - 2.5))
    assert M.nrmse(r, t, demean=False) == pytest.approx(100 * 0.2 / np.linalg.norm(t))
    assert M.nrmse(r, t, np.array([1, 1, 1, 0]), demean=False) == pytest.approx(
        100 * np.sqrt(0.03) / np.sqrt(14)
    )


def test_rescale_and_small_hand_values():
    x = np.array([0.0, -1.0, 1.0, 3.0])
    y = np.array([0.0, 1.0, 2.0, -1.0])
    xs, ys = M.challenge_rescale(x, y)
    np.testing.assert_allclose(xs, [0.0, 0.0, 127.5, 255.0])
    np.testing.assert_allclose(ys, [0.0, 127.5, 191.25, 0.0])
    assert M.psnr_2016(x, y) == pytest.approx(
        10 * np.log10(255**2 / np.mean((xs - ys) ** 2)), rel=1e-14
    )
    assert M.rmse_2016(x, y) == pytest.approx(100 * np.sqrt(4 + 1 + 16) / np.sqrt(6), rel=1e-14)


# --------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------


def test_input_validation(phantom):
    recon, truth, mask, seg = phantom
    with pytest.raises(QSMInputError, match="truth"):
        M.score(recon, truth[:-1], mask)
    with pytest.raises(QSMInputError, match="mask"):
        M.score(recon, truth, mask[:, :-1])
    with pytest.raises(QSMInputError, match="mask: mask is empty"):
        M.score(recon, truth, np.zeros_like(mask))
    with pytest.raises(QSMInputError, match="mask is empty"):
        M.nrmse(recon, truth, np.zeros_like(mask))
    with pytest.raises(QSMInputError, match="labels"):
        M.score(recon, truth, mask, seg[1:])
    with pytest.raises(QSMInputError, match="not integer"):
        M.score(recon, truth, mask, seg + 0.5)
    bad_truth = truth.copy()
    bad_truth[32, 32, 32] = np.nan
    with pytest.raises(QSMInputError, match="truth: reference contains NaN"):
        M.score(recon, bad_truth, mask)
    outside = truth.copy()
    outside[0, 0, 0] = np.nan  # outside the mask: ignored (zeroed) as in QSM-CI
    assert M.nrmse(recon, outside, mask) == M.nrmse(recon, truth, mask)
    # 2016 family: NaN is an error (the MATLAB code would return NaN)
    with pytest.raises(QSMInputError, match="recon: contains NaN"):
        M.ssim_2016(recon, truth)
    with pytest.raises(QSMInputError, match="recon"):
        M.hfen_2016(truth[..., 0], truth[..., 0])
    with pytest.raises(QSMInputError, match="truth"):
        M.xsim(np.zeros((8, 8, 8)), np.zeros((8, 8, 8)))  # default mask y != 0 is empty
    # QSM-CI family: non-finite recon voxels score as 0
    zeroed = np.nan_to_num(recon, nan=0.0)
    assert M.xsim_qsmci(recon, truth, mask) == M.xsim_qsmci(zeroed, truth, mask)
    res = M.score(recon, truth, mask)
    assert res["info"]["n_nonfinite_recon"] == 1
    assert res["challenge"] == M.score(zeroed, truth, mask)["challenge"]


# --------------------------------------------------------------------------------------------
# ROIs
# --------------------------------------------------------------------------------------------


def test_roi_stats(phantom):
    recon, truth, mask, seg = phantom
    r = np.nan_to_num(recon)
    m = mask > 0
    rows = roi_stats(r, truth, seg, mask)
    labels = [row["label"] for row in rows]
    assert labels == sorted(set(np.unique(seg[m])) - {0})
    assert 10 not in labels  # the CSF rim lies outside the mask
    by = {row["label"]: row for row in rows}
    sel = m & (seg == 2)
    assert by[2]["name"] == "globus_pallidus"
    assert by[2]["n"] == int(sel.sum())
    assert by[2]["recon_mean"] == pytest.approx(r[sel].mean(), rel=1e-12)
    assert by[2]["recon_sd"] == pytest.approx(r[sel].std(ddof=1), rel=1e-12)
    assert by[2]["ref_mean"] == pytest.approx(0.12, rel=1e-12)
    assert by[2]["ref_sd"] == pytest.approx(0.0, abs=1e-15)
    assert math.isnan(by[2]["pearson_r"])  # constant reference inside the ROI
    # voxelwise r where the reference varies: label 8 of the masked truth vs a noisy copy
    noisy = truth + 0.01 * np.sin(np.arange(truth.size).reshape(truth.shape))
    row = roi_stats(noisy, noisy * 2 + 1, seg, mask)[0]
    assert row["pearson_r"] == pytest.approx(1.0, abs=1e-12)
    summary = roi_mean_agreement(rows)
    x = np.array([row["ref_mean"] for row in rows])
    y = np.array([row["recon_mean"] for row in rows])
    assert summary["pearson_r"] == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-12)
    slope, intercept = np.polyfit(x, y, 1)
    assert summary["slope"] == pytest.approx(slope, rel=1e-10)
    assert summary["intercept"] == pytest.approx(intercept, rel=1e-8)
    custom = roi_stats(r, truth, seg, mask, label_names={2: "GP"})
    assert {row["label"]: row["name"] for row in custom}[2] == "GP"
    assert {row["label"]: row["name"] for row in custom}[3] == "label-3"


def test_load_label_names(tmp_path):
    j = tmp_path / "names.json"
    j.write_text('{"1": "caudate", "20": "lesion"}')
    assert load_label_names(j) == {1: "caudate", 20: "lesion"}
    t = tmp_path / "names.tsv"
    t.write_text("label\tname\n1\tcaudate nucleus\n# comment\n7, thalamus\n")
    assert load_label_names(t) == {1: "caudate nucleus", 7: "thalamus"}
    bad = tmp_path / "bad.txt"
    bad.write_text("1 a\nx b\n")
    with pytest.raises(QSMInputError, match="bad.txt"):
        load_label_names(bad)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _write(path, data, affine=None):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), path)
    return str(path)


def test_cli_evaluate(tmp_path, phantom, capsys):
    from qsmflow.cli.main import main

    recon, truth, mask, seg = phantom
    recon32 = recon.astype(np.float32)
    truth32 = truth.astype(np.float32)
    f_recon = _write(tmp_path / "recon.nii.gz", recon32)
    f_ref = _write(tmp_path / "ref.nii.gz", truth32)
    f_mask = _write(tmp_path / "mask.nii.gz", mask)
    f_lab = _write(tmp_path / "labels.nii.gz", seg.astype(np.uint8))
    out = tmp_path / "metrics.json"
    rc = main(["evaluate", f_recon, "--reference", f_ref, "--mask", f_mask, "--labels", f_lab,
               "--json", str(out)])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "QSM-CI metrics" in printed and "2016 challenge" in printed
    assert "globus_pallidus" in printed
    data = json.loads(out.read_text())
    want = M.score(recon32, truth32, mask, seg)
    for family in ("qsmci", "challenge"):
        for key, value in want[family].items():
            got = data[family][key]
            if isinstance(value, float) and not math.isfinite(value):
                assert got is None
            else:
                assert got == pytest.approx(value, rel=1e-12, abs=1e-15), (family, key)
    assert [r["label"] for r in data["rois"]] == [r["label"] for r in want["rois"]]
    assert data["rois"][0]["recon_mean"] == pytest.approx(want["rois"][0]["recon_mean"])
    assert data["files"]["labels"] == f_lab
    assert data["info"]["n_nonfinite_recon"] == 1

    # custom label names: no head-model region metrics, names in the table
    names = tmp_path / "names.json"
    names.write_text('{"8": "WM"}')
    rc = main(["evaluate", f_recon, "-r", f_ref, "-m", f_mask, "--labels", f_lab,
               "--label-names", str(names), "--json", str(out)])  # fmt: skip
    assert rc == 0
    data = json.loads(out.read_text())
    assert "nrmse_tissue" not in data["qsmci"]
    assert {r["label"]: r["name"] for r in data["rois"]}[8] == "WM"


def test_cli_evaluate_several_recons(tmp_path, capsys):
    """Several RECONs: a full report each, then a comparison table with the best marked."""
    from qsmflow.cli.evaluate import COMPARISON_COLUMNS
    from qsmflow.cli.main import main

    recon, truth, mask, _ = _phantom(n=24)
    rng = np.random.default_rng(3)
    good = truth + 0.002 * rng.standard_normal(truth.shape)
    f_ref = _write(tmp_path / "ref.nii.gz", truth.astype(np.float32))
    f_mask = _write(tmp_path / "mask.nii.gz", mask)
    f_good = _write(tmp_path / "good.nii.gz", good.astype(np.float32))
    f_bad = _write(tmp_path / "bad.nii", np.nan_to_num(recon).astype(np.float32))
    out = tmp_path / "metrics.json"
    assert main(["evaluate", f_bad, f_good, "-r", f_ref, "-m", f_mask, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("QSM-CI metrics") == 2
    table = printed[printed.index("Comparison") :].splitlines()
    rows = {ln.split()[0]: ln.split()[1:] for ln in table[4:6]}
    assert set(rows) == {"bad", "good"}
    # the near-perfect reconstruction is best in every column
    assert all(cell.endswith("*") for cell in rows["good"])
    assert not any(cell.endswith("*") for cell in rows["bad"])
    data = json.loads(out.read_text())
    assert [r["files"]["recon"] for r in data["results"]] == [f_bad, f_good]
    for r, path in zip(data["results"], (f_bad, f_good), strict=True):
        vol = nib.load(path).get_fdata()
        want = M.score(vol, truth.astype(np.float32), mask)
        for fam, key, _ in COMPARISON_COLUMNS:
            assert r[fam][key] == pytest.approx(want[fam][key], rel=1e-9), (path, fam, key)
        assert float(rows[_stem(path)][0].rstrip("*")) == pytest.approx(
            want["qsmci"]["nrmse"], abs=6e-5
        )
    # a bad RECON among several: exit 2 naming it, nothing printed for the others
    f_small = _write(tmp_path / "small.nii.gz", np.zeros((8, 8, 8), np.float32))
    assert main(["evaluate", f_good, f_small, "-r", f_ref, "-m", f_mask]) == 2
    captured = capsys.readouterr()
    assert "small.nii.gz" in captured.err and "QSM-CI metrics" not in captured.out


def test_cli_evaluate_figure(tmp_path, capsys, monkeypatch):
    """--figure: the reference row, then one row per RECON with its metrics from the JSON."""
    import matplotlib.image as mpimg

    from qsmflow.cli.main import main
    from qsmflow.evaluation import figures

    _, truth, mask, _ = _phantom(n=24)
    rng = np.random.default_rng(4)
    f_ref = _write(tmp_path / "ref.nii.gz", truth.astype(np.float32))
    f_mask = _write(tmp_path / "mask.nii.gz", mask)
    recons = {}
    for name, noise in (("low", 0.002), ("high", 0.02)):
        vol = (truth + noise * rng.standard_normal(truth.shape)).astype(np.float32)
        recons[name] = (_write(tmp_path / f"{name}.nii.gz", vol), vol)
    made = []
    save = figures.save_figure
    monkeypatch.setattr(
        figures, "save_figure", lambda fig, path: made.append(fig) or save(fig, path)
    )
    png, out = tmp_path / "cmp.png", tmp_path / "m.json"
    files = [f for f, _ in recons.values()]
    argv = ["evaluate", *files, "-r", f_ref, "-m", f_mask, "--json", str(out), "--figure", str(png)]
    assert main(argv) == 0
    assert f"wrote {png}" in capsys.readouterr().out
    layout = made[0].qsmflow_layout
    assert layout.rows[0] == "reference (ref)" and layout.rows[1:] == ["low", "high"]
    results = json.loads(out.read_text())["results"]
    point = figures.slice_point(mask=mask > 0)
    for row, (_, vol), result in zip(layout.rows[1:], recons.values(), results, strict=True):
        c = result["challenge"]
        text = layout.metric_labels[row]
        assert f"SSIM {c['ssim']:.3f}" in text and f"PSNR {c['psnr']:.1f} dB" in text
        assert f"HFEN {c['hfen']:.1f} %" in text
        r = layout.rows.index(row)
        for view, want in enumerate(figures.three_views(vol, point)):
            got = np.asarray(layout.panels[r][view].images[0].get_array())
            np.testing.assert_allclose(got, want, atol=1e-7)
    image = mpimg.imread(png)
    assert image.ndim == 3 and image[..., :3].std() > 0.05  # a picture, not a blank page


def _stem(path: str) -> str:
    return Path(path).name.removesuffix(".gz").removesuffix(".nii")


def test_cli_evaluate_grid_errors(tmp_path, capsys):
    from qsmflow.cli.main import main

    recon, truth, mask, _ = _phantom(n=24)
    f_recon = _write(tmp_path / "recon.nii", recon.astype(np.float32))
    f_ref = _write(tmp_path / "ref.nii", truth.astype(np.float32))
    f_mask_small = _write(tmp_path / "mask_small.nii", mask[:-1])
    rc = main(["evaluate", f_recon, "--reference", f_ref, "--mask", f_mask_small])
    assert rc == 2
    err = capsys.readouterr().err
    assert "mask_small.nii" in err and "grid" in err
    shifted = np.eye(4)
    shifted[0, 3] = 2.0
    f_ref_shift = _write(tmp_path / "ref_shift.nii", truth.astype(np.float32), shifted)
    f_mask = _write(tmp_path / "mask.nii", mask)
    rc = main(["evaluate", f_recon, "--reference", f_ref_shift, "--mask", f_mask])
    assert rc == 2
    assert "ref_shift.nii" in capsys.readouterr().err
    f_empty = _write(tmp_path / "empty.nii", np.zeros_like(mask))
    assert main(["evaluate", f_recon, "--reference", f_ref, "--mask", f_empty]) == 2
    assert "empty.nii: mask is empty" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing.nii"), "-r", f_ref, "-m", f_mask]) == 2
    assert "missing.nii" in capsys.readouterr().err


def test_evaluate_files_checks_every_input_before_scoring(tmp_path):
    """The file-level entry of ``qsmflow evaluate``: float labels become integers, the affine
    tolerance is the package's one, and a bad file is named before anything is scored."""
    from qsmflow.evaluation import evaluate_files
    from qsmflow.physics.validation import AFFINE_ATOL_MM

    recon, truth, mask, seg = _phantom(n=24)
    f_recon = _write(tmp_path / "recon.nii.gz", recon.astype(np.float32))
    f_ref = _write(tmp_path / "ref.nii.gz", truth.astype(np.float32))
    f_mask = _write(tmp_path / "mask.nii.gz", mask)
    f_lab = _write(tmp_path / "labels.nii.gz", seg.astype(np.float32))
    (result,) = evaluate_files([f_recon], f_ref, f_mask, labels=f_lab)
    want = M.score(recon.astype(np.float32), truth.astype(np.float32), mask, seg)
    assert result["qsmci"]["nrmse_dgm"] == pytest.approx(want["qsmci"]["nrmse_dgm"], rel=1e-12)
    assert [r["label"] for r in result["rois"]] == [r["label"] for r in want["rois"]]
    assert result["files"]["labels"] == f_lab and result["units"]["psnr"] == "dB"
    nudged = np.eye(4)
    nudged[0, 3] = 0.5 * AFFINE_ATOL_MM  # within the tolerance: the same grid
    f_near = _write(tmp_path / "near.nii.gz", mask, nudged)
    assert evaluate_files([f_recon], f_ref, f_near)[0]["info"]["n_mask"] == int(mask.sum())
    nudged[0, 3] = 2 * AFFINE_ATOL_MM
    f_far = _write(tmp_path / "far.nii.gz", mask, nudged)
    with pytest.raises(QSMInputError, match="far.nii.gz"):
        evaluate_files([f_recon], f_ref, f_far)
    f_half = _write(tmp_path / "half.nii.gz", seg + 0.5)
    with pytest.raises(QSMInputError, match="half.nii.gz: label map is not integer-valued"):
        evaluate_files([f_recon], f_ref, f_mask, labels=f_half)
