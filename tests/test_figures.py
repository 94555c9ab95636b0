"""Figures (qsmflow.evaluation.figures): panels, windows, orientation, metric text, QC, files.

Everything is checked numerically against :func:`three_views` and the inputs, on small
synthetic volumes (24 x 28 x 20).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest
from matplotlib.path import Path as MplPath
from scipy import ndimage

from qsmflow.errors import QSMInputError
from qsmflow.evaluation import figures as F
from qsmflow.evaluation.metrics import score

SHAPE = (24, 28, 20)
RAS_AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def _maps(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    mask = ((x - 11.5) / 9) ** 2 + ((y - 14) / 11) ** 2 + ((z - 9) / 7) ** 2 < 1
    ref = np.where(mask, 0.1 * np.sin(x / 3.0) * np.cos(y / 4.0) + 0.02 * (z - 9) / 7, 0.0)
    a = ref + np.where(mask, rng.normal(0, 0.01, SHAPE), 0.0)
    b = 0.8 * ref
    return ref, a, b, mask


def _index_volume() -> np.ndarray:
    """vol[x, y, z] = 10000 x + 100 y + z: every value names its voxel."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    return (10000 * x + 100 * y + z).astype(np.float64)


def _contour_vertices(cs) -> np.ndarray:
    """(n, 2) vertices (x = column, y = row) of a contour set, closing codes dropped."""
    out = []
    for path in cs.get_paths():
        verts = path.vertices
        if path.codes is not None:
            verts = verts[path.codes != MplPath.CLOSEPOLY]
        out.append(verts)
    return np.concatenate(out)


def _sample(panel: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Bilinear values of a panel at contour vertices."""
    return ndimage.map_coordinates(
        np.asarray(panel, float), [verts[:, 1], verts[:, 0]], order=1, mode="nearest"
    )


def _shown(ax) -> np.ndarray:
    return np.ma.getdata(ax.images[0].get_array())


# --------------------------------------------------------------------------- slicing


def test_three_views_orientation():
    """Reading order: sagittal anterior left / superior top, coronal and axial neurological."""
    vol = _index_volume()
    p = (5, 7, 9)
    sag, cor, axi = F.three_views(vol, p)
    nx, ny, nz = SHAPE
    assert sag.shape == (nz, ny) and cor.shape == (nz, nx) and axi.shape == (ny, nx)
    assert sag[0, 0] == 10000 * 5 + 100 * (ny - 1) + (nz - 1)  # superior, anterior
    assert sag[-1, -1] == 10000 * 5 + 0 + 0  # inferior, posterior
    assert cor[0, 0] == 0 + 100 * 7 + (nz - 1)  # superior, patient left (x = 0)
    assert cor[0, -1] == 10000 * (nx - 1) + 100 * 7 + (nz - 1)  # right on the right
    assert axi[0, 0] == 0 + 100 * (ny - 1) + 9  # anterior top, left
    assert axi[-1, -1] == 10000 * (nx - 1) + 0 + 9
    np.testing.assert_array_equal(sag[::-1, ::-1].T, vol[5])
    with pytest.raises(QSMInputError, match="outside the volume"):
        F.three_views(vol, (24, 0, 0))
    with pytest.raises(QSMInputError, match="3-D"):
        F.three_views(vol[0], (1, 1, 1))


def test_slice_point():
    mask = np.zeros(SHAPE, bool)
    mask[2:7, 10:13, 4:15] = True  # centre (4, 11, 9.5) -> rint 9.5 = 10 (even)
    com = np.argwhere(mask).mean(axis=0)
    assert F.slice_point(mask) == tuple(int(v) for v in np.rint(com))
    assert F.slice_point(shape=SHAPE) == (12, 14, 10)
    with pytest.raises(QSMInputError, match="empty"):
        F.slice_point(np.zeros(SHAPE))
    with pytest.raises(QSMInputError):
        F.slice_point()


# --------------------------------------------------------------------------- map figures


def test_three_view_figure_panels_window_colorbar_aspect():
    ref, a, _b, mask = _maps()
    vox = (1.0, 1.0, 2.0)
    point = (10, 12, 8)
    fig = F.three_view_figure(
        {"COSMOS": ref, "TKD": a}, voxel_size=vox, point=point, window=(-0.1, 0.2), unit="ppm"
    )
    lay = F.figure_layout(fig)
    assert lay is fig.qsmflow_layout
    assert lay.rows == ["COSMOS", "TKD"] and lay.point == point
    for r, vol in enumerate((ref, a)):
        views = F.three_views(vol, point)
        for v in range(3):
            ax = lay.panels[r][v]
            np.testing.assert_array_equal(_shown(ax), views[v])
            assert ax.images[0].get_clim() == (-0.1, 0.2)
        assert lay.panels[r][0].get_ylabel() == lay.rows[r]
    assert len(lay.colorbars) == 1
    assert lay.colorbars[0].ax.get_ylabel() == "ppm"
    assert lay.colorbars[0].mappable.get_clim() == (-0.1, 0.2)
    # aspect: row spacing / column spacing of each view (sagittal z/y, coronal z/x, axial y/x)
    assert [ax.get_aspect() for ax in lay.panels[0]] == [2.0, 2.0, 1.0]
    # and each axes box has the physical proportions (height / width in inches)
    w_in, h_in = fig.get_size_inches()
    nx, ny, nz = SHAPE
    physical = [(nz * 2.0) / ny, (nz * 2.0) / nx, ny / nx]
    for ax, ratio in zip(lay.panels[1], physical, strict=True):
        pos = ax.get_position()
        assert (pos.height * h_in) / (pos.width * w_in) == pytest.approx(ratio, rel=1e-9)
    # row labels override keys; the mask gives the default point
    fig2 = F.three_view_figure({"x": ref}, voxel_size=vox, mask=mask, row_labels=["chi"])
    lay2 = F.figure_layout(fig2)
    assert lay2.rows == ["chi"] and lay2.keys == ["x"]
    assert lay2.point == F.slice_point(mask)


def test_isotropic_and_anisotropic_aspect_differ():
    ref, *_ = _maps()
    iso = F.figure_layout(F.three_view_figure({"m": ref}, voxel_size=1.0))
    aniso = F.figure_layout(F.three_view_figure({"m": ref}, voxel_size=(0.5, 1.0, 3.0)))
    assert [ax.get_aspect() for ax in iso.panels[0]] == [1.0, 1.0, 1.0]
    assert [ax.get_aspect() for ax in aniso.panels[0]] == [3.0, 6.0, 2.0]


def _lps_and_transposed():
    """The same image as RAS (diag 1,1,2), LPS-flipped and z,y,x-transposed + LPS."""
    vol = _index_volume()
    lps = vol[::-1, ::-1, :]
    a_lps = np.diag([-1.0, -1.0, 2.0, 1.0])
    a_lps[:3, 3] = [SHAPE[0] - 1, SHAPE[1] - 1, 0.0]  # same world position of every voxel
    zyx = np.transpose(lps, (2, 1, 0))
    a_zyx = np.zeros((4, 4))
    a_zyx[:3, 0] = a_lps[:3, 2]
    a_zyx[:3, 1] = a_lps[:3, 1]
    a_zyx[:3, 2] = a_lps[:3, 0]
    a_zyx[:, 3] = a_lps[:, 3]
    return vol, (lps, a_lps), (zyx, a_zyx)


def test_reorient_to_ras_and_ras_point():
    vol, (lps, a_lps), (zyx, a_zyx) = _lps_and_transposed()
    for data, aff in ((lps, a_lps), (zyx, a_zyx)):
        ras, vox = F.reorient_to_ras(data, aff)
        np.testing.assert_array_equal(ras, vol)
        assert vox == (1.0, 1.0, 2.0)
        canonical = nib.as_closest_canonical(nib.Nifti1Image(data, aff))
        np.testing.assert_array_equal(np.asarray(canonical.dataobj), ras)
        assert tuple(float(v) for v in canonical.header.get_zooms()) == vox
    assert F.ras_point((3, 4, 5), lps.shape, a_lps) == (SHAPE[0] - 4, SHAPE[1] - 5, 5)
    assert F.ras_point((5, 4, 3), zyx.shape, a_zyx) == (SHAPE[0] - 4, SHAPE[1] - 5, 5)


def test_flipped_affine_gives_the_canonical_display():
    vol, (lps, a_lps), (zyx, a_zyx) = _lps_and_transposed()
    p_ras = (10, 12, 8)
    canon = F.figure_layout(F.three_view_figure({"m": vol}, voxel_size=(1, 1, 2), point=p_ras))
    p_lps = (SHAPE[0] - 1 - 10, SHAPE[1] - 1 - 12, 8)
    for data, aff, p in ((lps, a_lps, p_lps), (zyx, a_zyx, p_lps[::-1])):
        lay = F.figure_layout(F.three_view_figure({"m": data}, affine=aff, point=p))
        assert lay.point == p_ras and lay.voxel_size == (1.0, 1.0, 2.0)
        for v in range(3):
            np.testing.assert_array_equal(_shown(lay.panels[0][v]), _shown(canon.panels[0][v]))
            assert lay.panels[0][v].get_aspect() == canon.panels[0][v].get_aspect()
    # the default point comes from the reoriented mask: the same for every input order
    mask = np.zeros(SHAPE, bool)
    mask[3:10, 5:20, 2:9] = True
    lay_ras = F.figure_layout(F.three_view_figure({"m": vol}, voxel_size=(1, 1, 2), mask=mask))
    lay_lps = F.figure_layout(
        F.three_view_figure({"m": lps}, affine=a_lps, mask=mask[::-1, ::-1, :])
    )
    assert lay_ras.point == lay_lps.point


def test_blank_outside_and_nan_outside_mask():
    ref, _a, _b, mask = _maps()
    m = ref.copy()
    m[~mask] = np.nan  # NaN outside the mask is allowed: shown as 0 ...
    point = F.slice_point(mask)
    lay = F.figure_layout(F.three_view_figure({"m": m}, voxel_size=1, mask=mask))
    np.testing.assert_array_equal(_shown(lay.panels[0][1]), F.three_views(ref, point)[1])
    # ... or blanked (masked pixels, drawn in the colour map's bad colour)
    lay = F.figure_layout(
        F.three_view_figure({"m": m}, voxel_size=1, mask=mask, blank_outside=True)
    )
    shown = lay.panels[0][2].images[0].get_array()
    outside = ~F.three_views(mask, point)[2]
    assert np.ma.getmaskarray(shown)[outside].all()
    assert not np.ma.getmaskarray(shown)[~outside].any()


def test_comparison_figure_rows_and_metric_text():
    ref, a, b, mask = _maps()
    metrics = {
        "TKD": {"ssim": 0.91234, "psnr": 41.26, "hfen": 35.21},
        "ISDU": {"ssim": 0.95, "psnr": float("inf"), "hfen": float("nan")},
    }
    fig = F.comparison_figure(
        ref, {"TKD": a, "ISDU": b}, voxel_size=(1, 1, 2), metrics=metrics, mask=mask
    )
    lay = F.figure_layout(fig)
    assert lay.rows == ["COSMOS", "TKD", "ISDU"]
    point = F.slice_point(mask)
    for r, vol in enumerate((ref, a, b)):
        for v, view in enumerate(F.three_views(vol, point)):
            np.testing.assert_array_equal(_shown(lay.panels[r][v]), view)
            assert lay.panels[r][v].images[0].get_clim() == (-0.15, 0.15)
        assert lay.panels[r][0].get_ylabel() == lay.rows[r]
    assert lay.metric_labels == {
        "TKD": "SSIM 0.912  PSNR 41.3 dB  HFEN 35.2 %",
        "ISDU": "SSIM 0.950  PSNR inf dB  HFEN n/a",
    }
    assert "COSMOS" not in lay.metric_labels
    fig_texts = [t.get_text() for t in fig.texts]
    for r, key in ((1, "TKD"), (2, "ISDU")):
        text = lay.metric_texts[key]
        assert text.get_text() in fig_texts
        # under its own row: below the row's lowest panel, above the next row's highest
        y = text.get_position()[1]
        assert y < min(ax.get_position().y0 for ax in lay.panels[r])
        if r + 1 < len(lay.panels):
            assert y > max(ax.get_position().y1 for ax in lay.panels[r + 1])
    assert lay.colorbars[0].ax.get_ylabel() == "ppm"


def test_metric_label_from_score_results():
    """The keys of qsmflow.evaluation.metrics.score: bare names take the challenge family."""
    ref, a, _b, mask = _maps()
    res = score(a, ref, mask)
    ch, qc = res["challenge"], res["qsmci"]
    assert F.metric_label(res) == (
        f"SSIM {ch['ssim']:.3f}  PSNR {ch['psnr']:.1f} dB  HFEN {ch['hfen']:.1f} %"
    )
    label = F.metric_label(res, ("xsim", "qsmci.xsim", "qsmci.hfen", "nrmse", "correlation"))
    assert label == (
        f"XSIM {ch['xsim']:.3f}  XSIM (QSM-CI) {qc['xsim']:.3f}  HFEN (QSM-CI) {qc['hfen']:.1f} %"
        f"  NRMSE {qc['nrmse']:.1f} %  r {qc['correlation']:.3f}"
    )
    flat = F.flatten_metrics(res)
    assert flat["hfen"] == ch["hfen"] and flat["qsmci.hfen"] == qc["hfen"]
    assert F.metric_label({"ssim": 0.5}, ("ssim", "missing")) == "SSIM 0.500  missing n/a"
    fig = F.comparison_figure(ref, {"TKD": a}, voxel_size=1, metrics={"TKD": res})
    assert F.figure_layout(fig).metric_labels["TKD"] == F.metric_label(res)


# --------------------------------------------------------------------------- QC figures


def test_mask_qc_contour_follows_the_mask():
    ref, _a, _b, mask = _maps()
    mag = np.where(mask, 1.0, 0.1) + np.abs(ref)
    fig = F.mask_qc_figure(mag, mask, voxel_size=(1, 1, 2))
    lay = F.figure_layout(fig)
    point = F.slice_point(mask)
    assert lay.point == point
    mask_views = F.three_views(mask.astype(float), point)
    for v in range(3):
        np.testing.assert_array_equal(_shown(lay.panels[0][v]), F.three_views(mag, point)[v])
        verts = _contour_vertices(lay.contours[0][v])
        assert len(verts) > 8
        # every vertex lies on the 0.5 iso-line of the mask slice ...
        np.testing.assert_allclose(_sample(mask_views[v], verts), 0.5, atol=1e-9)
        # ... and the outline spans the mask's extent (pixel centres +- 0.5)
        rows, cols = np.nonzero(mask_views[v])
        assert verts[:, 0].min() == pytest.approx(cols.min() - 0.5, abs=0.51)
        assert verts[:, 0].max() == pytest.approx(cols.max() + 0.5, abs=0.51)
        assert verts[:, 1].min() == pytest.approx(rows.min() - 0.5, abs=0.51)
        assert verts[:, 1].max() == pytest.approx(rows.max() + 0.5, abs=0.51)
    lo, hi = lay.panels[0][0].images[0].get_clim()
    assert (lo, hi) == pytest.approx(tuple(np.percentile(mag, (0.5, 99.5))))


def test_field_qc_windows_and_colorbars():
    ref, a, _b, mask = _maps()
    total = 100.0 * a + 5.0  # Hz
    fig = F.field_qc_figure(total, a, mask, voxel_size=(1, 1, 2), units=("Hz", "ppm"))
    lay = F.figure_layout(fig)
    assert lay.rows == ["total field", "local field"]
    assert [cb.ax.get_ylabel() for cb in lay.colorbars] == ["Hz", "ppm"]
    point = F.slice_point(mask)
    for r, vol in enumerate((total, a)):
        w = float(np.percentile(np.abs(vol[mask]), 99.0))
        assert lay.windows[r] == pytest.approx((-w, w))
        assert lay.panels[r][1].images[0].get_clim() == pytest.approx((-w, w))
        assert lay.colorbars[r].mappable.get_clim() == pytest.approx((-w, w))
        shown = lay.panels[r][2].images[0].get_array()
        expected = F.three_views(np.where(mask, vol, np.nan), point)[2]
        np.testing.assert_array_equal(np.ma.filled(shown, np.nan), expected)
    assert lay.windows[0] != lay.windows[1]
    with pytest.raises(QSMInputError, match="mask"):
        F.field_qc_figure(total, a, None, voxel_size=1)


def test_registration_checkerboard_alternates():
    ref, a, _b, _mask = _maps()
    mag1 = np.abs(ref) + 0.05
    mag2 = np.roll(mag1, 2, axis=0) * 3.0
    tile = 4
    lay = F.figure_layout(F.registration_qc_figure(mag1, mag2, voxel_size=(1, 1, 2), tile=tile))
    point = F.slice_point(shape=SHAPE)
    n1 = F.three_views(F.normalise_intensity(mag1), point)
    n2 = F.three_views(F.normalise_intensity(mag2), point)
    for v in range(3):
        shown = _shown(lay.panels[0][v])
        rows, cols = np.indices(shown.shape)
        even = ((rows // tile) + (cols // tile)) % 2 == 0
        np.testing.assert_array_equal(shown[even], n1[v][even])
        np.testing.assert_array_equal(shown[~even], n2[v][~even])
        assert shown[0, 0] == n1[v][0, 0] and shown[0, tile] == n2[v][0, tile]
        assert shown[tile, tile] == n1[v][tile, tile]
        assert lay.panels[0][v].images[0].get_clim() == (0.0, 1.0)
    assert np.all((F.normalise_intensity(mag2) >= 0) & (F.normalise_intensity(mag2) <= 1))


def test_registration_contour_mode():
    ref, _a, _b, mask = _maps()
    mag1 = np.where(mask, 1.0, 0.0) + np.abs(ref)
    mag2 = np.roll(mag1, 1, axis=1)
    lay = F.figure_layout(
        F.registration_qc_figure(mag1, mag2, voxel_size=1, mode="contour", contour_level=0.5)
    )
    point = F.slice_point(shape=SHAPE)
    n1 = F.three_views(F.normalise_intensity(mag1), point)
    n2 = F.three_views(F.normalise_intensity(mag2), point)
    for v in range(3):
        np.testing.assert_array_equal(_shown(lay.panels[0][v]), n1[v])
        verts = _contour_vertices(lay.contours[0][v])
        np.testing.assert_allclose(_sample(n2[v], verts), 0.5, atol=1e-9)
    with pytest.raises(QSMInputError, match="mode"):
        F.registration_qc_figure(mag1, mag2, voxel_size=1, mode="blend")


# --------------------------------------------------------------------------- saving


@pytest.mark.parametrize("dpi", [100, 50])
def test_save_png_pixel_size(tmp_path, dpi):
    ref, a, _b, _mask = _maps()
    fig = F.comparison_figure(ref, {"TKD": a}, voxel_size=(1, 1, 2), title="sub-01")
    out = F.save_figure(fig, tmp_path / "new" / "dir" / "cmp.png", dpi=dpi)
    assert out == tmp_path / "new" / "dir" / "cmp.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(out)
    w_in, h_in = fig.get_size_inches()
    # figsize * dpi pixels (matplotlib truncates a fraction of a pixel)
    for n_px, inches in zip(img.shape[:2], (h_in, w_in), strict=True):
        assert -1e-6 <= inches * dpi - n_px < 1.0
    if dpi == 100:  # sizes are whole hundredths of an inch: exact
        assert img.shape[:2] == (round(h_in * 100), round(w_in * 100))
    assert img[..., :3].std() > 0.05  # not blank
    assert [p.name for p in out.parent.iterdir()] == ["cmp.png"]  # no temporary left


def test_save_svg(tmp_path):
    ref, *_ = _maps()
    fig = F.three_view_figure({"COSMOS": ref}, voxel_size=1)
    out = F.save_figure(fig, tmp_path / "v.svg")
    root = ET.parse(out).getroot()
    assert root.tag.endswith("svg")
    w_in, h_in = fig.get_size_inches()
    assert float(root.get("width").removesuffix("pt")) == pytest.approx(w_in * 72)
    assert float(root.get("height").removesuffix("pt")) == pytest.approx(h_in * 72)
    assert "COSMOS" in out.read_text()
    with pytest.raises(QSMInputError, match=r"\.png or \.svg"):
        F.save_figure(fig, tmp_path / "v.jpg")


# --------------------------------------------------------------------------- bad input


def test_bad_input_errors():
    ref, a, _b, mask = _maps()
    with pytest.raises(QSMInputError, match=r"map 'TKD'.*3-D"):
        F.three_view_figure({"COSMOS": ref, "TKD": a[0]}, voxel_size=1)
    with pytest.raises(QSMInputError, match=r"map 'TKD'.*does not match"):
        F.comparison_figure(ref, {"TKD": a[:-1]}, voxel_size=1)
    with pytest.raises(QSMInputError, match="empty"):
        F.three_view_figure({"m": ref}, voxel_size=1, mask=np.zeros(SHAPE))
    with pytest.raises(QSMInputError, match="mask grid"):
        F.three_view_figure({"m": ref}, voxel_size=1, mask=mask[:-1])
    bad = a.copy()
    bad[12, 14, 9] = np.nan
    with pytest.raises(QSMInputError, match=r"map 'TKD'.*NaN"):
        F.comparison_figure(ref, {"TKD": bad}, voxel_size=1, mask=mask)
    with pytest.raises(QSMInputError, match="NaN"):
        F.three_view_figure({"TKD": bad}, voxel_size=1)
    with pytest.raises(QSMInputError, match="not one of the maps"):
        F.comparison_figure(ref, {"TKD": a}, voxel_size=1, metrics={"TDK": {"ssim": 1.0}})
    with pytest.raises(QSMInputError, match="named like the reference"):
        F.comparison_figure(ref, {"COSMOS": a}, voxel_size=1)
    with pytest.raises(QSMInputError, match="vmin < vmax"):
        F.three_view_figure({"m": ref}, voxel_size=1, window=(0.1, -0.1))
    with pytest.raises(QSMInputError, match="voxel sizes"):
        F.three_view_figure({"m": ref}, voxel_size=(1, 0, 1))
    with pytest.raises(QSMInputError, match="not both"):
        F.three_view_figure({"m": ref}, voxel_size=1, affine=RAS_AFFINE)
    with pytest.raises(QSMInputError, match="voxel_size"):
        F.three_view_figure({"m": ref})
    with pytest.raises(QSMInputError, match="outside the volume"):
        F.three_view_figure({"m": ref}, voxel_size=1, point=(0, 0, 99))
    with pytest.raises(QSMInputError, match="no maps"):
        F.three_view_figure({}, voxel_size=1)
    with pytest.raises(QSMInputError, match="row labels"):
        F.three_view_figure({"m": ref}, voxel_size=1, row_labels=["a", "b"])
    with pytest.raises(QSMInputError, match="colour map"):
        F.three_view_figure({"m": ref}, voxel_size=1, cmap="no-such-map")


# --------------------------------------------------------------------------- files


def _save(path, data, affine):
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine), str(path))
    return path


def test_figure_files_reorient_and_match_arrays(tmp_path):
    ref, a, _b, mask = _maps()
    ref, a = ref.astype(np.float32), a.astype(np.float32)  # what the NIfTI holds
    a_lps = np.diag([-1.0, -1.0, 2.0, 1.0])
    a_lps[:3, 3] = [SHAPE[0] - 1, SHAPE[1] - 1, 0.0]
    flip = (slice(None, None, -1), slice(None, None, -1), slice(None))
    p_ref = _save(tmp_path / "cosmos.nii.gz", ref[flip], a_lps)
    p_a = _save(tmp_path / "tkd.nii.gz", a[flip], a_lps)
    p_mask = _save(tmp_path / "mask.nii.gz", mask[flip], a_lps)
    metrics = {"TKD": {"ssim": 0.9, "psnr": 40.0, "hfen": 30.0}}
    fig = F.comparison_figure_files(p_ref, {"TKD": p_a}, metrics=metrics, mask_path=p_mask)
    expected = F.comparison_figure(
        ref, {"TKD": a}, voxel_size=(1, 1, 2), metrics=metrics, mask=mask
    )
    lay, exp = F.figure_layout(fig), F.figure_layout(expected)
    assert lay.rows == exp.rows and lay.point == exp.point
    assert lay.metric_labels == exp.metric_labels
    for r in range(2):
        for v in range(3):
            np.testing.assert_array_equal(_shown(lay.panels[r][v]), _shown(exp.panels[r][v]))
    fig = F.three_view_figure_files({"COSMOS": p_ref}, mask_path=p_mask)
    assert F.figure_layout(fig).point == exp.point
    fig = F.mask_qc_figure_files(p_ref, p_mask)
    assert len(F.figure_layout(fig).contours[0]) == 3
    fig = F.field_qc_figure_files(p_ref, p_a, p_mask)
    assert F.figure_layout(fig).rows == ["total field", "local field"]
    fig = F.registration_qc_figure_files(p_ref, p_a, tile=4)
    assert F.figure_layout(fig).point == F.slice_point(shape=SHAPE)


def test_figure_files_errors_name_the_file(tmp_path):
    ref, a, _b, mask = _maps()
    p_ref = _save(tmp_path / "cosmos.nii.gz", ref, RAS_AFFINE)
    p_small = _save(tmp_path / "small.nii.gz", a[:-2], RAS_AFFINE)
    shifted = RAS_AFFINE.copy()
    shifted[0, 3] = 5.0
    p_shift = _save(tmp_path / "shifted.nii.gz", a, shifted)
    with pytest.raises(QSMInputError, match=r"small\.nii\.gz.*does not match"):
        F.comparison_figure_files(p_ref, {"TKD": p_small})
    with pytest.raises(QSMInputError, match=r"shifted\.nii\.gz.*affines differ"):
        F.three_view_figure_files({"COSMOS": p_ref, "TKD": p_shift})
    nan_map = a.copy()
    nan_map[mask] = np.nan
    p_nan = _save(tmp_path / "nan.nii.gz", nan_map, RAS_AFFINE)
    p_mask = _save(tmp_path / "mask.nii.gz", mask, RAS_AFFINE)
    with pytest.raises(QSMInputError, match=r"nan\.nii\.gz.*NaN"):
        F.comparison_figure_files(p_ref, {"TKD": p_nan}, mask_path=p_mask)
    p_empty = _save(tmp_path / "empty.nii.gz", np.zeros(SHAPE), RAS_AFFINE)
    with pytest.raises(QSMInputError, match=r"empty\.nii\.gz.*empty"):
        F.three_view_figure_files({"COSMOS": p_ref}, mask_path=p_empty)
    with pytest.raises(QSMInputError, match=r"missing\.nii\.gz.*not found"):
        F.three_view_figure_files({"COSMOS": tmp_path / "missing.nii.gz"})
    assert math.isfinite(float(np.nanmax(a)))
