"""``qsmflow dicom``: DICOM to BIDS, checked against dcm2niix's references (dcm_qa_fmap) and
against synthetic pydicom series whose truth is known (written here).

Geometry is checked independently of the converter's affine formula: a converted image and
its truth must agree at every voxel once the converted affine is mapped onto the truth's grid
(a signed permutation with integer offsets), i.e. both put the same value at the same world
point.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    MRImageStorage,
    generate_uid,
)

from qsmflow.cli.main import main
from qsmflow.io.dicom import convert_dicom
from qsmflow.io.dicom.dcm2niix import dcm2niix_command

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: dcm_qa_fmap reference -> our file (fmap/, acq from the series description).
QA_FMAP = {
    "Si_2_gre_field_magph_e1": "acq-grefieldmagph_magnitude1",
    "Si_2_gre_field_magph_e2": "acq-grefieldmagph_magnitude2",
    "Si_3_gre_field_magph_e2_ph": "acq-grefieldmagph_phasediff",
    "GE_6_CV_Neuro_HH_Adv": "acq-B0map_magnitude",
    "GE_6_CV_Neuro_HH_Adv_fieldmaphz": "acq-B0map_fieldmap",
}


# -- helpers -----------------------------------------------------------------------------
def _on_truth_grid(data, affine, truth_affine) -> np.ndarray:
    """``data`` resampled (by index only) onto the truth grid; fails unless the two grids are
    the same up to a permutation/flip of the axes."""
    m = np.linalg.inv(affine) @ truth_affine  # truth voxel -> converted voxel
    assert np.allclose(m[:3, :3], np.round(m[:3, :3]), atol=1e-3), m
    assert np.allclose(m[:3, 3], np.round(m[:3, 3]), atol=1e-2), m
    idx = np.indices(data.shape).reshape(3, -1)
    src = np.round(m[:3, :3]).astype(int) @ idx + np.round(m[:3, 3]).astype(int)[:, None]
    return data[tuple(src)].reshape(data.shape)


def _load(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    img = nib.load(path)
    meta = json.loads(Path(str(path).replace(".nii.gz", ".json")).read_text())
    return np.asarray(img.dataobj, dtype=np.float64), img.affine, meta


def _rotation(axis, deg) -> np.ndarray:
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    t = np.deg2rad(deg)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)


def _truth_affine(lps_rotation: np.ndarray, voxel=(2.0, 2.0, 3.0), origin=(-20, 10, -15)):
    """A RAS affine whose voxel axes are the columns of ``lps_rotation`` (LPS) scaled."""
    lps = np.eye(4)
    lps[:3, :3] = lps_rotation @ np.diag(voxel)
    lps[:3, 3] = origin
    return LPS_TO_RAS @ lps


def _geometry(truth_affine, shape):
    """DICOM geometry of an array in NIfTI (i, j, k) order: pixel (row j, column i) of slice
    k, so IOP = (axis i, axis j) and IPP of slice k = world(0, 0, k), all LPS."""
    lps = LPS_TO_RAS @ truth_affine
    dx, dy = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    iop = np.concatenate([lps[:3, 0] / dx, lps[:3, 1] / dy])
    ipps = [lps[:3, :3] @ [0, 0, k] + lps[:3, 3] for k in range(shape[2])]
    return iop, ipps, (dy, dx)


def _base(manufacturer: str, series: dict, te_ms: float, scanning: str = "GR") -> Dataset:
    ds = Dataset()
    ds.Modality = "MR"
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = "Synthetic"
    ds.SoftwareVersions = "test 1.0"
    ds.StudyInstanceUID = series["study"]
    ds.SeriesInstanceUID = series["uid"]
    ds.FrameOfReferenceUID = series["study"] + ".1"
    ds.SeriesNumber = series["number"]
    ds.SeriesDescription = series["description"]
    ds.ProtocolName = series.get("protocol", series["description"])
    ds.ScanningSequence = scanning
    ds.SequenceVariant = "SP"
    ds.MRAcquisitionType = "3D"
    ds.EchoTime = f"{te_ms:g}"
    ds.RepetitionTime = "30"
    ds.FlipAngle = "15"
    ds.MagneticFieldStrength = "3"
    ds.ImagingFrequency = "123.2"
    ds.PatientPosition = "HFS"
    ds.AcquisitionTime = series.get("time", "120000.000000")
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = series.get("bits", 12)
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    return ds


def _save(ds: Dataset, path: Path, sop_class, syntax=ExplicitVRLittleEndian) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_classic(folder: Path, series: dict, images: dict, affine, *, manufacturer="SIEMENS"):
    """One file per slice and image: ``images`` maps (part, echo, TE ms) to stored uint16
    arrays (i, j, k) plus ``{part: (slope, intercept)}`` in ``series["rescale"]``. Instance
    numbers restart for every echo (as Siemens does); file names are shuffled."""
    shape = next(iter(images.values())).shape
    iop, ipps, spacing = _geometry(affine, shape)
    names = [f"{n:04d}.dcm" for n in range(len(images) * shape[2])]
    random.Random(series["number"]).shuffle(names)
    for (part, echo, te), stored in images.items():
        for k in range(shape[2]):
            ds = _base(manufacturer, series, te, series.get("scanning", "GR"))
            ds.ImageType = ["ORIGINAL", "PRIMARY", "P" if part == "phase" else "M", "ND"]
            ds.EchoNumbers = echo
            ds.InstanceNumber = k + 1
            ds.ImagePositionPatient = [f"{v:.6f}" for v in ipps[k]]
            ds.ImageOrientationPatient = [f"{v:.8f}" for v in iop]
            ds.PixelSpacing = [f"{v:g}" for v in spacing]
            ds.SliceThickness = f"{np.linalg.norm(affine[:3, 2]):g}"
            ds.Rows, ds.Columns = shape[1], shape[0]
            if part in series.get("rescale", {}):
                slope, intercept = series["rescale"][part]
                ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", f"{intercept:.10g}"
                ds.RescaleType = "US"
            for tag, (vr, value) in series.get("private", {}).get(part, {}).items():
                ds.add_new(tag, vr, value)
            ds.PixelData = np.ascontiguousarray(stored[:, :, k].T.astype("<u2")).tobytes()
            _save(ds, folder / names.pop(), MRImageStorage)


def write_enhanced(path: Path, series: dict, images: dict, affine) -> None:
    """One Siemens-XA-style enhanced multi-frame file holding every slice of every image."""
    shape = next(iter(images.values())).shape
    iop, ipps, spacing = _geometry(affine, shape)
    ds = _base("Siemens Healthineers", series, 0)
    del ds.EchoTime, ds.ScanningSequence, ds.RepetitionTime, ds.FlipAngle
    ds.EchoPulseSequence = "GRADIENT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = shape[1], shape[0]
    shared = Dataset()
    orient, measures, timing = Dataset(), Dataset(), Dataset()
    orient.ImageOrientationPatient = [f"{v:.8f}" for v in iop]
    measures.PixelSpacing = [f"{v:g}" for v in spacing]
    measures.SliceThickness = f"{np.linalg.norm(affine[:3, 2]):g}"
    timing.RepetitionTime, timing.FlipAngle = 30, 15
    shared.PlaneOrientationSequence = [orient]
    shared.PixelMeasuresSequence = [measures]
    shared.MRTimingAndRelatedParametersSequence = [timing]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames, pixels = [], []
    order = [(key, k) for key in images for k in range(shape[2])]
    random.Random(7).shuffle(order)  # frame order carries no meaning
    for (part, _echo, te), k in order:
        item, pos, echo, ftype, pvt = Dataset(), Dataset(), Dataset(), Dataset(), Dataset()
        pos.ImagePositionPatient = [f"{v:.6f}" for v in ipps[k]]
        echo.EffectiveEchoTime = te
        ftype.FrameType = ["ORIGINAL", "PRIMARY", "P" if part == "phase" else "M", "NONE"]
        ftype.ComplexImageComponent = "PHASE" if part == "phase" else "MAGNITUDE"
        slope, intercept = series.get("rescale", {}).get(part, (1, 0))
        pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = slope, intercept, "US"
        item.PlanePositionSequence = [pos]
        item.MREchoSequence = [echo]
        item.MRImageFrameTypeSequence = [ftype]
        item.PixelValueTransformationSequence = [pvt]
        frames.append(item)
        pixels.append(images[(part, _echo, te)][:, :, k].T.astype("<u2"))
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.NumberOfFrames = len(frames)
    ds.PixelData = np.ascontiguousarray(np.stack(pixels)).tobytes()
    _save(ds, path, EnhancedMRImageStorage)


def _series(number: int, description: str, **extra) -> dict:
    return {
        "study": "1.2.3.4",
        "uid": generate_uid(),
        "number": number,
        "description": description,
        **extra,
    }


def _siemens_images(shape, tes_ms, seed=0):
    """Stored magnitude and 12-bit phase (RescaleSlope 2, Intercept -4096) with their truth."""
    rng = np.random.default_rng(seed)
    images, truth = {}, {}
    for e, te in enumerate(tes_ms, start=1):
        mag = rng.integers(0, 4000, shape).astype(np.uint16)
        phase_stored = rng.integers(0, 4096, shape).astype(np.uint16)
        images[("mag", e, te)] = mag
        images[("phase", e, te)] = phase_stored
        truth[("mag", e)] = mag.astype(np.float64)
        truth[("phase", e)] = (2.0 * phase_stored - 4096) * np.pi / 4096
    return images, truth


SIEMENS_RESCALE = {"phase": (2, -4096)}
OBLIQUE = _rotation([1, 0.5, 0.2], 25)  # voxel axes of the oblique grid (LPS)


def _check_megre(bids: Path, prefix: str, truth: dict, truth_affine, tes_ms, phase_atol=1e-6):
    """Every echo's magnitude and phase equal the truth on the truth grid."""
    anat = bids / "sub-01" / "anat"
    report = {}
    for e, te in enumerate(tes_ms, start=1):
        for part in ("mag", "phase"):
            data, affine, meta = _load(anat / f"{prefix}_echo-{e}_part-{part}_MEGRE.nii.gz")
            ours = _on_truth_grid(data, affine, truth_affine)
            diff = np.abs(ours - truth[(part, e)]).max()
            assert diff <= (phase_atol if part == "phase" else 0), (part, e, diff)
            assert meta["EchoTime"] == pytest.approx(te / 1000)
            assert meta["EchoNumber"] == e
            if part == "phase":
                assert meta["Units"] == "rad" and meta["PhaseUnits"] == "rad"
            report[(part, e)] = diff
    return report


# -- dcm_qa_fmap: real Siemens and GE against dcm2niix -------------------------------------
@pytest.fixture(scope="module")
def qa_fmap(shared_data, tmp_path_factory) -> tuple[Path, Path]:
    root = shared_data / "dcm_qa_fmap"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    out = tmp_path_factory.mktemp("qa") / "bids"
    result = convert_dicom(root / "In", out, subject="01")
    assert not result.skipped, result.skipped
    return root, out


@pytest.mark.parametrize("ref", sorted(QA_FMAP))
def test_dcm_qa_fmap_equals_dcm2niix_reference(qa_fmap, ref):
    root, bids = qa_fmap
    img = nib.load(root / "Ref" / f"{ref}.nii")
    expected = np.asarray(img.dataobj, dtype=np.float64)
    ref_meta = json.loads((root / "Ref" / f"{ref}.json").read_text())
    data, affine, meta = _load(bids / "sub-01" / "fmap" / f"sub-01_{QA_FMAP[ref]}.nii.gz")
    assert data.shape == expected.shape
    if ref.endswith("_ph"):  # Siemens 12-bit phase difference: ours in radians
        assert np.abs(data - expected * np.pi / 4096).max() < 1e-6
        assert meta["Units"] == "rad" and meta["EchoTime1"] == 0.00519
    else:
        assert np.array_equal(data, expected)  # voxel for voxel
    assert np.abs(affine - img.affine).max() < 0.01
    assert meta.get("EchoTime") == ref_meta.get("EchoTime")
    assert meta["ImageType"] == ref_meta["ImageType"]
    if "Units" in ref_meta and ref_meta["Units"] == "Hz":
        assert meta["Units"] == "Hz"


def test_dcm_qa_fmap_output_is_valid_bids(qa_fmap):
    _, bids = qa_fmap
    magnitude1 = bids / "sub-01/fmap/sub-01_acq-grefieldmagph_magnitude1.json"
    assert json.loads(magnitude1.read_text())["AcquisitionTime"] == "14:01:35.917500"
    _validate(bids)


def _validate(bids: Path) -> None:
    """bids-validator on ``bids`` when it is installed (tests/bids_validator_helper.py)."""
    from bids_validator_helper import run_bids_validator, validator_available

    if validator_available():
        ok, report = run_bids_validator(bids)
        assert ok, report


@pytest.mark.skipif(dcm2niix_command() is None, reason="dcm2niix not installed")
def test_dcm2niix_backend_agrees_with_python_backend(qa_fmap, tmp_path):
    root, ours = qa_fmap
    theirs = tmp_path / "bids"
    result = convert_dicom(root / "In", theirs, subject="01", backend="dcm2niix")
    ours_images = sorted(p.relative_to(ours) for p in ours.rglob("*.nii.gz"))
    assert sorted(result.images) == ours_images
    for rel in ours_images:
        a, aff_a, meta_a = _load(ours / rel)
        b, aff_b, meta_b = _load(theirs / rel)
        assert np.abs(a - b).max() < 1e-6, rel
        assert np.abs(aff_a - aff_b).max() < 0.01, rel
        assert meta_a.get("EchoTime") == meta_b.get("EchoTime")
        assert meta_a["ImageType"] == meta_b["ImageType"]


# -- synthetic series ------------------------------------------------------------------------
SHAPE = (16, 14, 8)
TES = (4.0, 9.5, 15.0)


def test_siemens_classic_oblique_multi_echo_round_trips(tmp_path):
    affine = _truth_affine(OBLIQUE)
    images, truth = _siemens_images(SHAPE, TES)
    mag, pha = dict(list(images.items())[::2]), dict(list(images.items())[1::2])
    write_classic(tmp_path / "dcm" / "mag", _series(5, "gre_qsm"), mag, affine)
    phase_series = _series(6, "gre_qsm", rescale=SIEMENS_RESCALE)
    write_classic(tmp_path / "dcm" / "pha", phase_series, pha, affine)
    result = convert_dicom(tmp_path / "dcm", tmp_path / "bids", subject="01")
    assert not result.skipped and [r.kind for r in result.runs] == ["megre"]
    _check_megre(tmp_path / "bids", "sub-01", truth, affine, TES)
    # B0 (world S-I) in voxel axes, from the affine: right for the oblique grid
    from qsmflow.io.nifti import load_volume

    vol = load_volume(tmp_path / "bids/sub-01/anat/sub-01_echo-1_part-mag_MEGRE.nii.gz")
    m = np.linalg.inv(vol.affine[:3, :3]) @ affine[:3, :3]  # truth axes -> our axes
    expected = np.round(m) @ (OBLIQUE.T @ [0, 0, 1])
    assert np.allclose(vol.b0_dir, expected / np.linalg.norm(expected), atol=1e-6)
    meta = json.loads(
        (tmp_path / "bids/sub-01/anat/sub-01_echo-2_part-phase_MEGRE.json").read_text()
    )
    for key in ("MagneticFieldStrength", "Manufacturer", "ManufacturersModelName"):
        assert key in meta
    assert meta["RepetitionTime"] == 0.03 and meta["FlipAngle"] == 15
    assert meta["SeriesNumber"] == 6 and meta["ImageType"][-1] == "PHASE"
    assert (tmp_path / "bids" / "dataset_description.json").is_file()


def test_enhanced_multiframe_round_trips(tmp_path):
    affine = _truth_affine(_rotation([0, 1, 0], -15), voxel=(1.5, 1.5, 2.0))
    images, truth = _siemens_images(SHAPE, TES[:2], seed=1)
    series = _series(7, "gre_xa", rescale=SIEMENS_RESCALE)
    write_enhanced(tmp_path / "dcm" / "enhanced.dcm", series, images, affine)
    result = convert_dicom(tmp_path / "dcm", tmp_path / "bids", subject="01")
    assert not result.skipped, result.skipped
    _check_megre(tmp_path / "bids", "sub-01", truth, affine, TES[:2])


def test_philips_rescale_round_trips(tmp_path):
    """Philips: phase rescaled to milliradians; magnitude with the private scale slope
    (2005,100E) taken as dcm2niix's precise value (stored * RS + RI) / (RS * SS)."""
    affine = _truth_affine(np.diag([1.0, -1.0, -1.0]))  # coronal-like flip of two axes
    rng = np.random.default_rng(2)
    slope_p, icpt_p = 2000 * np.pi / 4095, -1000 * np.pi
    images, truth = {}, {}
    for e, te in enumerate(TES[:2], start=1):
        mag = rng.integers(0, 4000, SHAPE).astype(np.uint16)
        pha = rng.integers(0, 4096, SHAPE).astype(np.uint16)
        images[("mag", e, te)], images[("phase", e, te)] = mag, pha
        truth[("mag", e)] = (mag * 1.5 + 0.0) / (1.5 * 0.25)
        truth[("phase", e)] = (pha * slope_p + icpt_p) / 1000
    private = {"mag": {0x2005100E: ("FL", 0.25)}}
    series = _series(
        3, "FFE_multi", rescale={"mag": (1.5, 0), "phase": (slope_p, icpt_p)}, private=private
    )
    write_classic(tmp_path / "dcm", series, images, affine, manufacturer="Philips Medical Systems")
    result = convert_dicom(tmp_path / "dcm", tmp_path / "bids", subject="01")
    assert not result.skipped, result.skipped
    _check_megre(tmp_path / "bids", "sub-01", truth, affine, TES[:2], phase_atol=1e-5)


def test_skipped_series_are_reported_and_the_rest_converted(tmp_path):
    dcm, bids = tmp_path / "dcm", tmp_path / "bids"
    affine = _truth_affine(np.eye(3))
    images, truth = _siemens_images(SHAPE, TES[:2])
    good = _series(2, "gre_good", rescale=SIEMENS_RESCALE)
    write_classic(dcm / "good", good, images, affine)
    # a missing slice in the middle
    write_classic(dcm / "gap", _series(3, "gre_gap", rescale=SIEMENS_RESCALE), images, affine)
    gap_files = sorted((dcm / "gap").iterdir())
    removed = next(
        p for p in gap_files if abs(float(pydicom.dcmread(p).ImagePositionPatient[2]) + 6) < 0.1
    )
    removed.unlink()
    # a spin-echo series
    one = {k: v for k, v in images.items() if k[0] == "mag"}
    write_classic(dcm / "se", _series(4, "t2_se", scanning="SE"), one, affine)
    # a compressed transfer syntax pydicom cannot decode here
    ds = _base("SIEMENS", _series(5, "gre_jpegls"), 4.0)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.Rows, ds.Columns, ds.InstanceNumber = [1, 1], 4, 4, 1
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\0" * 40])
    _save(ds, dcm / "jpegls" / "0001.dcm", MRImageStorage, JPEGLSLossless)
    (dcm / "notes.txt").write_text("not DICOM\n")

    rc = main(["dicom", str(dcm), str(bids), "--subject", "01"])
    assert rc == 1  # something was skipped, the rest written
    result = convert_dicom(dcm, tmp_path / "bids2", subject="01")
    reasons = {Path(s.source).parent.name: s.reason for s in result.skipped}
    assert "missing slice" in reasons["gap"]
    assert "not a gradient-echo" in reasons["se"]
    from pydicom.pixels import get_decoder

    decodable = get_decoder(JPEGLSLossless).is_available  # then the junk data fails to decode
    assert ("pixel data" if decodable else "compressed transfer syntax") in reasons["jpegls"]
    assert reasons["dcm"] == "not a DICOM file"
    assert [r.description for r in result.runs] == ["gre_good"]
    written = sorted(p.name for p in (bids / "sub-01" / "anat").iterdir())
    assert len(written) == 2 * 2 * 2  # 2 echoes x mag/phase x (nii.gz, json)
    assert not [p for p in bids.rglob("*") if p.name.startswith(".tmp")]
    _check_megre(bids, "sub-01", truth, affine, TES[:2])


# -- two orientations, then the COSMOS pipeline -------------------------------------------------
def _simulated_run(bids: Path, acq: str, e: int, part: str):
    img = nib.load(bids / "sub-01" / "anat" / f"sub-01_acq-{acq}_echo-{e}_part-{part}_MEGRE.nii.gz")
    return np.asarray(img.dataobj, dtype=np.float64), img.affine


def test_dicom_then_cosmos_end_to_end(simulate_bids, tmp_path):
    """A simulated 2-orientation head (4 mm, 2 echoes) written as Siemens DICOM, converted,
    checked against the simulation, then run through ``qsmflow run --pipeline cosmos``."""
    sim = simulate_bids(
        "--voxel-size", "4", "--orientations", "2", "--echo-times", "0.005", "0.015",
        "--seed", "5", "--orientation-mode", "oblique", "--snr", "200",
    )  # fmt: skip
    tes = (5.0, 15.0)
    dcm, bids = tmp_path / "dcm", tmp_path / "bids"
    truths = {}
    # the later acquisition gets the lower series numbers: acq labels follow acquisition time
    for n, (acq, time) in enumerate((("ori2", "121000.000000"), ("ori1", "120000.000000"))):
        images, truth = {}, {}
        for e, te in enumerate(tes, start=1):
            mag, affine = _simulated_run(sim, acq, e, "mag")
            phase, _ = _simulated_run(sim, acq, e, "phase")
            stored_mag = np.round(mag / mag.max() * 4000).astype(np.uint16)
            stored_phase = np.clip(np.round((phase * 4096 / np.pi + 4096) / 2), 0, 4095)
            images[("mag", e, te)] = stored_mag
            images[("phase", e, te)] = stored_phase.astype(np.uint16)
            truth[("mag", e)] = stored_mag.astype(np.float64)
            truth[("phase", e)] = (2.0 * stored_phase - 4096) * np.pi / 4096
        truths[acq] = (truth, affine)
        mag = {k: v for k, v in images.items() if k[0] == "mag"}
        pha = {k: v for k, v in images.items() if k[0] == "phase"}
        write_classic(dcm / acq / "m", _series(10 + 2 * n, "gre_qsm", time=time), mag, affine)
        phase_series = _series(11 + 2 * n, "gre_qsm", time=time, rescale=SIEMENS_RESCALE)
        write_classic(dcm / acq / "p", phase_series, pha, affine)
    assert main(["dicom", str(dcm), str(bids), "--subject", "01"]) == 0
    for acq, (truth, affine) in truths.items():
        _check_megre(bids, f"sub-01_acq-{acq}", truth, affine, tes)
    _validate(bids)
    out = tmp_path / "derivatives" / "qsmflow"
    argv = ["run", str(bids), str(out), "participant", "--pipeline", "cosmos"]
    argv += ["--mask-backend", "python", "--registration-backend", "python"]
    argv += ["--work-dir", str(tmp_path / "work")]
    assert main(argv) == 0
    chi = nib.load(out / "sub-01" / "anat" / "sub-01_desc-cosmos_Chimap.nii.gz")
    assert np.isfinite(np.asarray(chi.dataobj)).all()
