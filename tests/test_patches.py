"""Patch grid, extraction and the on-disk patch-set format (qsmflow.training.patch_grid and
patch_store)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from qsmflow.errors import QSMInputError
from qsmflow.training import patch_store as pt
from qsmflow.training.patch_grid import (
    axis_starts,
    extract_patches,
    mask_fractions,
    normalisation_stats,
    patch_origins,
)
from qsmflow.training.patch_store import read_patch_set, write_patch_set

# --------------------------------------------------------------------------------------------
# grid
# --------------------------------------------------------------------------------------------


def test_module_does_not_import_torch():
    import subprocess

    code = (
        "import sys, qsmflow.training.patch_grid, qsmflow.training.patch_store; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (160, [0, 32, 64, 96]),  # exact fit: last start 96 ends at 160
        (176, [0, 32, 64, 96, 112]),  # clamped last start 176 - 64
        (64, [0]),
        (65, [0, 1]),
        (40, [0]),  # shorter than a patch: single start, zero-padded
    ],
)
def test_axis_starts(n, expected):
    assert axis_starts(n, 64, 32).tolist() == expected


def test_origins_count_and_order():
    o = patch_origins((176, 176, 160))
    assert o.shape == (5 * 5 * 4, 3)
    assert o[0].tolist() == [0, 0, 0]
    assert o[-1].tolist() == [112, 112, 96]  # every final patch ends at the edge
    assert np.all(o + 64 <= np.array([176, 176, 160]))
    # C order: axis 0 slowest
    assert o[1].tolist() == [0, 0, 32] and o[4].tolist() == [0, 32, 0]


def test_origins_with_short_axis():
    o = patch_origins((30, 50, 20), patch_size=16, stride=8)
    assert sorted(set(o[:, 0].tolist())) == [0, 8, 14]
    assert sorted(set(o[:, 1].tolist())) == [0, 8, 16, 24, 32, 34]
    assert sorted(set(o[:, 2].tolist())) == [0, 4]
    o = patch_origins((10, 50, 20), patch_size=16, stride=8)
    assert set(o[:, 0].tolist()) == {0}


def _random_mask(shape, seed=0, p=0.02):
    rng = np.random.default_rng(seed)
    return rng.random(shape) < p


def test_coverage_every_mask_voxel_in_a_kept_patch():
    shape, P = (37, 29, 21), 8
    mask = np.zeros(shape, bool)  # a few scattered voxels, including the far corner and edges
    for v in [(0, 0, 0), (36, 28, 20), (18, 3, 20), (36, 0, 10), (7, 27, 1), (20, 14, 10)]:
        mask[v] = True
    o = patch_origins(shape, P, 5, mask, min_mask_fraction=0.0)
    covered = np.zeros(shape, bool)
    for a, b, c in o:
        covered[a : a + P, b : b + P, c : c + P] = True
    assert np.all(covered[mask])
    # every kept patch touches the mask, every dropped one does not
    assert np.all(mask_fractions(mask, o, P) > 0)
    full = patch_origins(shape, P, 5)
    kept = {tuple(r) for r in o.tolist()}
    dropped = np.array([r for r in full.tolist() if tuple(r) not in kept])
    assert len(dropped) and np.all(mask_fractions(mask, dropped, P) == 0)
    # the unfiltered grid covers the whole volume
    covered[:] = False
    for a, b, c in full:
        covered[a : a + P, b : b + P, c : c + P] = True
    assert covered.all()


def test_filter_threshold_is_strict():
    P = 16
    mask = np.zeros((P, P, P), bool)
    flat = mask.reshape(-1)
    flat[: P**3 // 8] = True  # exactly 1/8: not kept (LPCNN: sum > 32768 for 64^3)
    assert patch_origins(mask.shape, P, 8, mask).shape == (0, 3)
    flat[P**3 // 8] = True  # one voxel more: kept
    assert patch_origins(mask.shape, P, 8, mask).tolist() == [[0, 0, 0]]


def test_filter_matches_brute_force_and_counts_padding_as_outside():
    shape, P = (20, 26, 11), 8
    mask = _random_mask(shape, seed=3, p=0.2)
    full = patch_origins(shape, P, 4)
    frac = mask_fractions(mask, full, P)
    for t in (0.0, 0.1, 0.2, 0.3):
        assert patch_origins(shape, P, 4, mask, t).tolist() == full[frac > t].tolist()
    # volume (6, 8, 8) fully inside the mask, patch 8: fraction 6/8 because of the padding
    m = np.ones((6, 8, 8), bool)
    assert mask_fractions(m, np.zeros((1, 3), int), 8)[0] == pytest.approx(0.75)
    assert len(patch_origins(m.shape, 8, 8, m, 0.74)) == 1
    assert len(patch_origins(m.shape, 8, 8, m, 0.75)) == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patch_size": 4}, "patch_size must be >= 8"),
        ({"patch_size": 8.5}, "patch_size must be an integer"),
        ({"stride": 0}, "stride"),
        ({"patch_size": 16, "stride": 17}, "stride"),
        ({"min_mask_fraction": 1.0}, "min_mask_fraction"),
        ({"min_mask_fraction": -0.1}, "min_mask_fraction"),
    ],
)
def test_grid_parameter_validation(kwargs, match):
    with pytest.raises(QSMInputError, match=match):
        patch_origins((32, 32, 32), **kwargs)


def test_origins_input_validation():
    with pytest.raises(QSMInputError, match="shape"):
        patch_origins((32, 32))
    with pytest.raises(QSMInputError, match="mask grid"):
        patch_origins((32, 32, 32), 16, 8, np.ones((32, 32, 31)))
    with pytest.raises(QSMInputError, match="NaN"):
        patch_origins((16, 16, 16), 16, 8, np.full((16, 16, 16), np.nan))


# --------------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------------


def test_extract_exact_values():
    rng = np.random.default_rng(1)
    vol = rng.standard_normal((30, 25, 20)).astype(np.float32)
    o = patch_origins(vol.shape, 8, 6)
    p = extract_patches(vol, o, 8)
    assert p.shape == (len(o), 8, 8, 8) and p.dtype == np.float32
    for i, (a, b, c) in enumerate(o):
        np.testing.assert_array_equal(p[i], vol[a : a + 8, b : b + 8, c : c + 8])


def test_extract_zero_padding():
    vol = np.arange(10 * 40 * 20, dtype=np.int32).reshape(10, 40, 20) + 1
    o = patch_origins(vol.shape, 16, 8)
    p = extract_patches(vol, o, 16)
    assert p.dtype == np.int32
    for i, (a, b, c) in enumerate(o):
        assert a == 0
        np.testing.assert_array_equal(p[i, :10], vol[:, b : b + 16, c : c + 16])
        assert np.all(p[i, 10:] == 0)
    # an arbitrary origin near the corner pads on all three axes
    q = extract_patches(vol, np.array([[5, 35, 15]]), 16)[0]
    np.testing.assert_array_equal(q[:5, :5, :5], vol[5:, 35:, 15:])
    assert q.sum() == vol[5:, 35:, 15:].sum()


def test_extract_validation():
    vol = np.zeros((10, 10, 10))
    with pytest.raises(QSMInputError, match="inside the volume"):
        extract_patches(vol, np.array([[0, 0, 10]]), 8)
    with pytest.raises(QSMInputError, match="inside the volume"):
        extract_patches(vol, np.array([[-1, 0, 0]]), 8)
    with pytest.raises(QSMInputError, match=r"\(N, 3\)"):
        extract_patches(vol, np.array([0, 0, 0]), 8)
    with pytest.raises(QSMInputError, match="3-D"):
        extract_patches(np.zeros((10, 10)), np.zeros((1, 3), int), 8)


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------


def test_normalisation_stats_chunks_equal_direct():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((6, 8, 8, 8)) * 0.03 + 0.01).astype(np.float32)
    m = rng.random(x.shape) < 0.5
    direct = x[m].astype(np.float64)
    s = normalisation_stats(x, m)
    assert s["count"] == direct.size
    assert s["mean"] == pytest.approx(direct.mean(), rel=1e-12)
    assert s["std"] == pytest.approx(direct.std(), rel=1e-12)
    c = normalisation_stats([x[:1], x[1:4], x[4:]], [m[:1], m[1:4], m[4:]])
    assert c["mean"] == pytest.approx(direct.mean(), rel=1e-12)
    assert c["std"] == pytest.approx(direct.std(), rel=1e-12)
    with pytest.raises(QSMInputError, match="no mask voxel"):
        normalisation_stats(x, np.zeros_like(m))


# --------------------------------------------------------------------------------------------
# patch sets on disk
# --------------------------------------------------------------------------------------------

SHAPE = (40, 36, 24)
P, STRIDE = 16, 8


def _pair(k=3, seed=0):
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.arange(s) - s / 2 for s in SHAPE], indexing="ij")
    mask = (x / 16) ** 2 + (y / 14) ** 2 + (z / 10) ** 2 <= 1
    chi = (rng.standard_normal(SHAPE) * 0.03 * mask).astype(np.float32)
    fields = [(rng.standard_normal(SHAPE) * 0.01).astype(np.float32) for _ in range(k)]
    b0 = rng.standard_normal((k, 3))
    b0 /= np.linalg.norm(b0, axis=1, keepdims=True)
    return fields, chi, mask, b0


def _write(path, k=3, **kw):
    fields, chi, mask, b0 = _pair(k)
    args = dict(
        field_ppm=fields,
        chi_ppm=chi,
        mask=mask,
        b0_dirs=b0,
        voxel_size=(1.0, 1.0, 1.2),
        patch_size=P,
        stride=STRIDE,
    )
    args.update(kw)
    return write_patch_set(path, **args)


def test_round_trip_exact(tmp_path):
    fields, chi, mask, b0 = _pair(3)
    out = tmp_path / "sub-01_patches"
    meta = _write(out, sources={"subject": "sub-01", "chi": "cosmos.nii.gz"})
    origins = patch_origins(SHAPE, P, STRIDE, mask, 0.125)
    n = len(origins)
    assert n > 0 and meta["count"] == 3 * n
    assert meta["orientation_counts"] == [n, n, n]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub-01_patches"]
    assert sorted(p.name for p in out.iterdir()) == [
        "b0_dir.npy",
        "chi.npy",
        "field.npy",
        "mask.npy",
        "orientation.npy",
        "origin.npy",
        "patches.json",
    ]

    for mmap in (True, False):
        ps = read_patch_set(out, mmap=mmap)
        assert isinstance(ps.field, np.memmap) == mmap
        assert len(ps) == 3 * n and ps.patch_size == P and ps.n_orientations == 3
        assert ps.field.dtype == np.float32 and ps.chi.dtype == np.float32
        assert ps.mask.dtype == np.uint8 and ps.b0_dir.dtype == np.float32
        assert ps.orientation.dtype == np.int16 and ps.origin.dtype == np.int32
        chi_p = extract_patches(chi, origins, P)
        mask_p = extract_patches(mask, origins, P).astype(np.uint8)
        for k in range(3):
            rows = slice(k * n, (k + 1) * n)
            np.testing.assert_array_equal(ps.field[rows], extract_patches(fields[k], origins, P))
            np.testing.assert_array_equal(ps.chi[rows], chi_p)
            np.testing.assert_array_equal(ps.mask[rows], mask_p)
            np.testing.assert_array_equal(ps.origin[rows], origins)
            assert np.all(ps.orientation[rows] == k)
            np.testing.assert_allclose(ps.b0_dir[rows], np.broadcast_to(b0[k], (n, 3)), atol=1e-7)
        if mmap:
            with pytest.raises(ValueError):
                ps.field[0, 0, 0, 0] = 1.0  # read-only

    on_disk = json.loads((out / "patches.json").read_text())
    assert on_disk == meta
    assert meta["format"] == "qsmflow-patches" and meta["version"] == 1
    assert meta["patch_size"] == P and meta["stride"] == STRIDE
    assert meta["min_mask_fraction"] == 0.125
    assert meta["volume_shape"] == list(SHAPE)
    assert meta["voxel_size_mm"] == [1.0, 1.0, 1.2]
    assert meta["units"]["field"].startswith("ppm") and meta["units"]["chi"].startswith("ppm")
    assert meta["sources"] == {"subject": "sub-01", "chi": "cosmos.nii.gz"}
    assert meta["files"]["field"] == {"shape": [3 * n, P, P, P], "dtype": "float32"}
    np.testing.assert_allclose(meta["b0_dirs"], b0, atol=1e-12)


def test_stats_equal_direct_computation(tmp_path):
    meta = _write(tmp_path / "ps")
    ps = read_patch_set(tmp_path / "ps")
    m = np.asarray(ps.mask) != 0
    for key, arr in (("field", ps.field), ("chi", ps.chi)):
        direct = np.asarray(arr)[m].astype(np.float64)
        st = meta["normalisation"][key]
        assert st["count"] == direct.size
        assert st["mean"] == pytest.approx(direct.mean(), rel=1e-10, abs=1e-15)
        assert st["std"] == pytest.approx(direct.std(), rel=1e-10)


def test_single_orientation_and_4d_field(tmp_path):
    fields, chi, mask, b0 = _pair(2)
    meta = write_patch_set(
        tmp_path / "a",
        field_ppm=np.stack(fields),
        chi_ppm=chi,
        mask=mask,
        b0_dirs=b0,
        voxel_size=1.0,
        patch_size=P,
        stride=STRIDE,
    )
    assert meta["n_orientations"] == 2 and meta["voxel_size_mm"] == [1.0, 1.0, 1.0]
    meta = write_patch_set(
        tmp_path / "b",
        field_ppm=fields[:1],
        chi_ppm=chi,
        mask=mask,
        b0_dirs=b0[0],
        voxel_size=1.0,
        patch_size=P,
        stride=STRIDE,
    )
    assert meta["n_orientations"] == 1
    assert read_patch_set(tmp_path / "b").orientation.max() == 0


def test_refuses_to_overwrite_then_replaces(tmp_path):
    out = tmp_path / "ps"
    _write(out, k=2)
    with pytest.raises(QSMInputError, match="overwrite=True"):
        _write(out, k=3)
    assert read_patch_set(out).n_orientations == 2  # untouched
    _write(out, k=3, overwrite=True)
    assert read_patch_set(out).n_orientations == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ps"]  # no tmp/old leftovers
    # an existing empty folder is simply used
    (tmp_path / "empty").mkdir()
    _write(tmp_path / "empty", k=1)
    assert read_patch_set(tmp_path / "empty").n_orientations == 1
    # a file in the way is never replaced
    (tmp_path / "file").write_text("x")
    with pytest.raises(QSMInputError, match="not a patch-set folder"):
        _write(tmp_path / "file", overwrite=True)


def _crash_after(monkeypatch, target, attr, n_ok):
    real = getattr(target, attr)
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > n_ok:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(target, attr, flaky)
    return calls


@pytest.mark.parametrize(
    ("target", "attr", "n_ok"),
    [
        (np, "save", 1),  # after the voxel arrays and b0_dir.npy, before orientation.npy
        (pt, "extract_patches", 4),  # in the middle of streaming the voxel arrays
        (pt, "write_json", 0),  # everything but patches.json written
    ],
)
def test_atomic_write_leaves_nothing_on_crash(tmp_path, monkeypatch, target, attr, n_ok):
    calls = _crash_after(monkeypatch, target, attr, n_ok=n_ok)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _write(tmp_path / "ps")
    assert calls["n"] >= 1
    assert list(tmp_path.iterdir()) == []  # no final folder, no partial temporary folder


def test_atomic_overwrite_keeps_old_set_on_crash(tmp_path, monkeypatch):
    out = tmp_path / "ps"
    _write(out, k=2)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _crash_after(monkeypatch, np, "save", n_ok=1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _write(out, k=3, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ps"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert read_patch_set(out).n_orientations == 2


# --------------------------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda a: a.update(chi_ppm=a["chi_ppm"][:-1]), "mask grid"),
        (lambda a: a["field_ppm"].__setitem__(1, a["field_ppm"][1][:, :-1]), r"field_ppm\[1\]"),
        (lambda a: a["field_ppm"][0].__setitem__((20, 18, 12), np.nan), "NaN"),
        (lambda a: a.update(chi_ppm=np.where(a["mask"], np.inf, 0)), "chi_ppm has"),
        (lambda a: a.update(field_ppm=[]), "at least one orientation"),
        (lambda a: a.update(field_ppm=a["field_ppm"][0]), "list of 3-D"),
        (lambda a: a.update(b0_dirs=a["b0_dirs"][:2]), "b0_dirs must have shape"),
        (lambda a: a.update(b0_dirs=a["b0_dirs"] * 1.1), "not a unit vector"),
        (lambda a: a.update(mask=np.zeros(SHAPE, bool)), "mask is empty"),
        (lambda a: a.update(mask=np.full(SHAPE, np.nan)), "mask must be real and finite"),
        (lambda a: a.update(patch_size=4), "patch_size must be >= 8"),
        (lambda a: a.update(voxel_size=(1.0, 0.0, 1.0)), "voxel_size"),
        (lambda a: a.update(sources={"x": object()}), "JSON"),
        (lambda a: a.update(sources=["x"]), "sources must be a dict"),
        (lambda a: a.update(chi_ppm=a["chi_ppm"].astype(np.complex64)), "real-valued"),
        (lambda a: a.update(min_mask_fraction=0.99), "no 16\\^3 patch"),
    ],
)
def test_write_validation(tmp_path, change, match):
    fields, chi, mask, b0 = _pair(3)
    args = dict(
        field_ppm=list(fields),
        chi_ppm=chi,
        mask=mask,
        b0_dirs=b0,
        voxel_size=1.0,
        patch_size=P,
        stride=STRIDE,
    )
    change(args)
    with pytest.raises(QSMInputError, match=match):
        write_patch_set(tmp_path / "ps", **args)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# corrupt sets
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("good") / "ps"
    _write(out, k=2)
    return out


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _edit_meta(folder, fn):
    p = folder / "patches.json"
    meta = json.loads(p.read_text())
    fn(meta)
    p.write_text(json.dumps(meta))


def test_missing_folder_and_metadata(tmp_path, good_set):
    with pytest.raises(QSMInputError, match="not found") as e:
        read_patch_set(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(QSMInputError, match="missing patches.json"):
        read_patch_set(tmp_path / "empty")
    d = _copy(good_set, tmp_path / "bad_json")
    (d / "patches.json").write_text("{not json")
    with pytest.raises(QSMInputError, match="cannot read metadata") as e:
        read_patch_set(d)
    assert "patches.json" in str(e.value)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m.update(format="other"), "format is 'other'"),
        (lambda m: m.update(version=2), "unsupported format version 2"),
        (lambda m: m.pop("normalisation"), "lacks key"),
        (lambda m: m.update(count=m["count"] + 2), "orientation_counts sum"),
        (
            lambda m: m.update(
                count=m["count"] + 2,
                orientation_counts=[c + 1 for c in m["orientation_counts"]],
            ),
            r"field\.npy: shape",
        ),
        (lambda m: m.update(patch_size=8), r"field\.npy: shape"),
        (lambda m: m.update(n_orientations=3), "orientation_counts must list 3"),
        (
            lambda m: m.update(orientation_counts=[m["count"], 0]),
            "per-orientation counts",
        ),
        (lambda m: m.update(volume_shape=[20, 36, 24]), "origins outside the volume"),
        (lambda m: m["normalisation"]["chi"].update(std=None), "normalisation.chi"),
    ],
)
def test_corrupt_metadata(tmp_path, good_set, edit, match):
    d = _copy(good_set, tmp_path / "ps")
    _edit_meta(d, edit)
    with pytest.raises(QSMInputError, match=match) as e:
        read_patch_set(d)
    assert str(d) in str(e.value)


def test_corrupt_arrays(tmp_path, good_set):
    n = json.loads((good_set / "patches.json").read_text())["count"]
    d = _copy(good_set, tmp_path / "shape")
    np.save(d / "chi.npy", np.zeros((n - 1, P, P, P), np.float32))
    with pytest.raises(QSMInputError, match=r"chi\.npy: shape"):
        read_patch_set(d)
    d = _copy(good_set, tmp_path / "dtype")
    np.save(d / "mask.npy", np.zeros((n, P, P, P), np.float32))
    with pytest.raises(QSMInputError, match=r"mask\.npy: dtype"):
        read_patch_set(d)
    d = _copy(good_set, tmp_path / "missing")
    (d / "origin.npy").unlink()
    with pytest.raises(QSMInputError, match=r"origin\.npy: missing"):
        read_patch_set(d)
    d = _copy(good_set, tmp_path / "garbage")
    (d / "field.npy").write_bytes(b"not an npy file")
    with pytest.raises(QSMInputError, match=r"field\.npy: cannot read"):
        read_patch_set(d)
    d = _copy(good_set, tmp_path / "orient")
    o = np.load(d / "orientation.npy")
    o[0] = 5
    np.save(d / "orientation.npy", o)
    with pytest.raises(QSMInputError, match=r"orientation\.npy: orientation indices"):
        read_patch_set(d)
    d = _copy(good_set, tmp_path / "b0")
    b = np.load(d / "b0_dir.npy")
    b[3] *= 2
    np.save(d / "b0_dir.npy", b)
    with pytest.raises(QSMInputError, match=r"b0_dir\.npy: B0 directions"):
        read_patch_set(d)
