"""From DICOM frames to image volumes: series, echoes and parts, slice order, the affine and
the scaling to physical units.

Voxel order and affine are those dcm2niix writes (without its optional reorientation):

* ``i`` runs along the DICOM columns (the row direction cosine, first half of
  ImageOrientationPatient), ``j`` along the rows *reversed* (dcm2niix flips each image
  vertically), ``k`` along the slice normal ``n = row x column`` from the lowest to the highest
  position ``IPP . n`` (files, instance numbers and acquisition order do not matter).
* affine (RAS, mm) = ``diag(-1, -1, 1, 1)`` (DICOM LPS to RAS) applied to the LPS matrix with
  columns ``row * dx``, ``-column * dy``, ``n * dz`` and origin ``IPP_0 + (rows - 1) * dy *
  column``, where ``dx``/``dy`` are PixelSpacing[1]/[0] (between columns/rows), ``IPP_0`` the
  lowest slice and ``dz`` the mean distance between adjacent slices along ``n``. Its determinant
  is negative, as dcm2niix's.

Echoes are told apart by EchoTime (then EchoNumbers), never by InstanceNumber (Siemens repeats
instance numbers across echoes). Values: magnitude keeps the stored integers when there is no
rescaling, else ``stored * RescaleSlope + RescaleIntercept`` (Philips: divided by ``RescaleSlope *
(2005,100E)``, dcm2niix's default "precise" scaling); phase is converted to radians in
[-pi, pi) where the vendor's convention is known (:func:`phase_scaling`); GE B0 maps give the
field map in Hz as stored.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .read import Frame, PixelReader, is_ge_b0map, undecodable_reason

#: Two orientations/positions agree within this (direction cosines / mm).
ORIENTATION_TOL = 1e-4
#: Slice spacing may vary by this fraction of the mean spacing (rounding in the headers).
SPACING_REL_TOL = 0.01
#: Two frames share a slice position when their positions along the normal agree within (mm).
SAME_POSITION_MM = 0.01

#: BIDS ``part-`` label of each DICOM complex component ("" = unnamed: magnitude).
PART_OF_COMPONENT = {
    "MAGNITUDE": "mag",
    "": "mag",
    "PHASE": "phase",
    "REAL": "real",
    "IMAGINARY": "imag",
}
#: What dcm2niix appends to ImageType for each part (unless already present).
_IMAGE_TYPE_TAG = {
    "mag": "MAGNITUDE",
    "phase": "PHASE",
    "real": "REAL",
    "imag": "IMAGINARY",
    "fieldmap": "FIELDMAPHZ",
}


class SeriesError(Exception):
    """A series that cannot be converted; ``source`` is the file to blame."""

    def __init__(self, reason: str, source: Path | str):
        super().__init__(reason)
        self.reason = reason
        self.source = str(source)


@dataclass
class ImageVolume:
    """One 3-D image (one series, part and echo) in dcm2niix voxel order, RAS affine in mm.

    ``part``: ``mag``, ``phase`` (radians), ``real``, ``imag`` or ``fieldmap`` (Hz).
    ``echo_time_s`` in seconds; ``sidecar`` holds the BIDS metadata read from the headers.
    """

    data: np.ndarray
    affine: np.ndarray
    part: str
    echo_time_s: float | None
    echo_number: int | None
    series_uid: str
    series_number: int | None
    series_description: str
    protocol_name: str
    acquisition_time: str  #: ``HH:MM:SS.ffffff`` (BIDS), "" when unknown
    vendor: str
    sidecar: dict[str, Any] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)

    @property
    def grid_key(self) -> tuple:
        """Shape and affine rounded to 0.01 mm: volumes of one acquisition share it."""
        return (self.data.shape, tuple(np.round(self.affine[:3], 2).ravel()))


def dcm2niix_affine(
    orientation: np.ndarray,
    first_position: np.ndarray,
    pixel_spacing: tuple[float, float],
    slice_spacing: float,
    rows: int,
) -> np.ndarray:
    """RAS affine of the dcm2niix voxel order (see the module docstring)."""
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    dy, dx = pixel_spacing
    lps = np.eye(4)
    lps[:3, 0] = row_dir * dx
    lps[:3, 1] = -col_dir * dy
    lps[:3, 2] = normal * slice_spacing
    lps[:3, 3] = first_position + (rows - 1) * dy * col_dir
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def to_nifti_order(image: np.ndarray) -> np.ndarray:
    """A (rows, columns) DICOM image as the (i, j) plane of the NIfTI array (rows reversed)."""
    return np.asarray(image).T[:, ::-1]


def bids_time(tm: str) -> str:
    """DICOM TM ``HHMMSS.ffffff`` as ``HH:MM:SS.ffffff``; "" stays ""."""
    tm = tm.strip()
    if len(tm) < 6 or ":" in tm:
        return tm
    return f"{tm[:2]}:{tm[2:4]}:{tm[4:]}"


def volumes_of_series(frames: Sequence[Frame], pixels: PixelReader) -> list[ImageVolume]:
    """The image volumes of one series (all frames share SeriesInstanceUID).

    Raises :class:`SeriesError` when the series cannot be converted as a whole.
    """
    _check_series(frames)
    groups = _split_volumes(frames)
    slices = {key: _sorted_slices(group) for key, group in groups.items()}
    counts = {len(s) for s in slices.values()}
    if len(counts) > 1:
        (key_a, a), (key_b, b) = sorted(slices.items(), key=lambda kv: len(kv[1]))[::-1][:2]
        raise SeriesError(
            f"missing slice(s): {_describe(key_b)} has {len(b)} slices, {_describe(key_a)} "
            f"has {len(a)}",
            b[0].path,
        )
    tes = sorted({key[1] for key in groups if key[1] is not None})
    volumes = []
    for key, ordered in sorted(slices.items(), key=lambda kv: (kv[0][1] or 0, kv[0][0])):
        part, te = key
        volumes.append(_volume(ordered, part, te, tes, pixels))
    return volumes


def _describe(key: tuple[str, float | None]) -> str:
    part, te = key
    return f"{part} TE {te:g} ms" if te is not None else part


def _check_series(frames: Sequence[Frame]) -> None:
    first = frames[0]
    if first.header.get("Modality", "MR") != "MR":
        raise SeriesError(f"not an MR image (Modality {first.header.Modality})", first.path)
    if not all(f.shape[0] and f.shape[1] for f in frames):
        raise SeriesError("no image data (Rows/Columns missing)", first.path)
    if all(f.gradient_echo is False for f in frames):
        seq = first.header.get("ScanningSequence") or first.header.get("EchoPulseSequence")
        raise SeriesError(f"not a gradient-echo series (ScanningSequence {seq})", first.path)
    if any(f.gradient_echo is None for f in frames):
        raise SeriesError(
            "ScanningSequence/EchoPulseSequence missing: cannot tell it is gradient echo",
            first.path,
        )
    for f in (frames[0], frames[-1]):
        reason = undecodable_reason(f.header)
        if reason:
            raise SeriesError(reason, f.path)
    bad = [f for f in frames if not np.all(np.isfinite(f.position))]
    bad += [f for f in frames if not np.all(np.isfinite(f.orientation))]
    if bad:
        raise SeriesError("no ImagePositionPatient/ImageOrientationPatient", bad[0].path)
    if any(f.echo_time_ms is None for f in frames):
        raise SeriesError("no EchoTime", next(f.path for f in frames if f.echo_time_ms is None))


def _split_volumes(frames: Sequence[Frame]) -> dict[tuple[str, float | None], list[Frame]]:
    """Frames by (part, EchoTime ms); a GE B0 map's two images per slice are the field map
    (first in InstanceNumber order, as dcm2niix takes it) and the magnitude."""
    groups: dict[tuple[str, float | None], list[Frame]] = defaultdict(list)
    for f in frames:
        te = round(f.echo_time_ms, 3) if f.echo_time_ms is not None else None
        groups[(PART_OF_COMPONENT.get(f.component, "mag"), te)].append(f)
    first = frames[0]
    if is_ge_b0map(first.header, first.vendor):
        for key in [k for k in groups if k[0] == "mag"]:
            ordered = sorted(groups.pop(key), key=lambda f: f.instance_number)
            seen: set[float] = set()
            for f in ordered:
                pos = round(float(f.position @ f.normal), 2)
                part = "mag" if pos in seen else "fieldmap"
                seen.add(pos)
                groups[(part, key[1])].append(f)
    return groups


def _sorted_slices(frames: list[Frame]) -> list[Frame]:
    """Frames of one volume sorted along the slice normal, with the geometry checked."""
    first = frames[0]
    for f in frames:
        if not np.allclose(f.orientation, first.orientation, atol=ORIENTATION_TOL):
            raise SeriesError("inconsistent geometry: ImageOrientationPatient differs", f.path)
        if f.shape != first.shape:
            raise SeriesError(f"inconsistent geometry: {f.shape} vs {first.shape} pixels", f.path)
        if not np.allclose(f.pixel_spacing, first.pixel_spacing, atol=1e-4):
            raise SeriesError("inconsistent geometry: PixelSpacing differs", f.path)
    normal = first.normal
    ordered = sorted(frames, key=lambda f: float(f.position @ normal))
    heights = np.array([float(f.position @ normal) for f in ordered])
    steps = np.diff(heights)
    if np.any(steps < SAME_POSITION_MM):
        i = int(np.argmax(steps < SAME_POSITION_MM))
        raise SeriesError(
            f"two images at one slice position ({heights[i]:.2f} mm along the normal): "
            "repeated or unsplit volumes",
            ordered[i + 1].path,
        )
    if len(ordered) > 2:
        spacing = float(np.median(steps))
        off = np.abs(steps - spacing) > SPACING_REL_TOL * spacing
        if np.any(off):
            i = int(np.argmax(off))
            gap = steps[i] / spacing
            what = (
                f"missing slice(s): a gap of {steps[i]:.3g} mm ({gap:.1f} x the spacing of "
                f"{spacing:.3g} mm) after position {heights[i]:.2f} mm"
                if gap > 1.5
                else f"inconsistent geometry: slice spacing {steps[i]:.3g} mm, mostly "
                f"{spacing:.3g} mm"
            )
            raise SeriesError(what, ordered[i + 1].path)
    in_plane = np.array([f.position - (f.position @ normal) * normal for f in ordered])
    if np.max(np.abs(in_plane - in_plane[0])) > SAME_POSITION_MM * 10:
        raise SeriesError(
            "inconsistent geometry: slice positions do not lie along the slice normal "
            "(gantry tilt or a mixed series)",
            ordered[-1].path,
        )
    return ordered


def _bit_range(ds) -> tuple[int, int]:
    """Smallest and largest stored value BitsStored allows."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    if int(ds.get("PixelRepresentation", 0) or 0):
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def phase_scaling(frame: Frame) -> tuple[float, float, str] | None:
    """``(a, b, note)`` with radians = ``a * rescaled + b``, or None when the convention is
    unknown. ``rescaled`` = stored * RescaleSlope + RescaleIntercept.

    * Siemens: 12-bit phase, one cycle over 4096 levels: RescaleSlope 2 / Intercept -4096 gives
      [-4096, 4094] -> ``* pi/4096``; without rescaling [0, 4095] -> ``* pi/2048 - pi``.
    * Philips: the rescaled values are radians when the stored range maps onto a span of
      2 pi, milliradians when it maps onto 2000 pi.
    * GE: phase images (0043,102F = 1) store milliradians (``/ 1000``).
    """
    lo_s, hi_s = _bit_range(frame.header)
    lo, hi = sorted((lo_s * frame.slope + frame.intercept, hi_s * frame.slope + frame.intercept))
    if frame.vendor == "Siemens":
        if abs(lo + 4096) < 1 and abs(hi - 4094) < 2:
            return np.pi / 4096, 0.0, "Siemens 12-bit: rad = (2 * stored - 4096) * pi / 4096"
        if abs(lo) < 1 and abs(hi - 4095) < 1:
            return np.pi / 2048, -np.pi, "Siemens 12-bit: rad = stored * pi / 2048 - pi"
    elif frame.vendor == "Philips":
        span = hi - lo
        if abs(span - 2 * np.pi) < 0.01 * 2 * np.pi:
            return 1.0, 0.0, "Philips: rescaled values are radians"
        if abs(span - 2000 * np.pi) < 0.01 * 2000 * np.pi:
            return 1e-3, 0.0, "Philips: rescaled values are milliradians; rad = value / 1000"
    elif frame.vendor == "GE":
        return 1e-3, 0.0, "GE: phase stored in milliradians; rad = value / 1000"
    return None


def _values(ordered: list[Frame], part: str, pixels: PixelReader) -> tuple[np.ndarray, dict]:
    """The volume's voxel values in physical units and what the sidecar says about them."""
    stored = np.stack([to_nifti_order(pixels.stored(f)) for f in ordered], axis=-1)
    slopes = np.array([f.slope for f in ordered])[None, None, :]
    intercepts = np.array([f.intercept for f in ordered])[None, None, :]
    identity = np.all(slopes == 1) and np.all(intercepts == 0)
    first = ordered[0]
    if part == "phase":
        scaling = phase_scaling(first)
        if scaling is None:
            raise SeriesError(
                f"phase units of {first.vendor} images unknown (RescaleSlope {first.slope:g}, "
                f"RescaleIntercept {first.intercept:g}): cannot scale to radians",
                first.path,
            )
        a, b, note = scaling
        rescaled = stored.astype(np.float64) * slopes + intercepts
        rad = a * rescaled + b
        if rad.min() < -np.pi - 1e-3 or rad.max() > np.pi + 1e-3:
            raise SeriesError(
                f"phase outside [-pi, pi] after the {first.vendor} scaling ({note})", first.path
            )
        meta = {"Units": "rad", "PhaseUnits": "rad", "PhaseScaling": note}
        return rad.astype(np.float32), meta
    if part == "fieldmap":
        meta = {"Units": "Hz"}
    else:
        meta = {}
    if identity:
        return stored, meta
    values = stored.astype(np.float64) * slopes + intercepts
    ss = first.extra.get("philips_scale_slope")
    if ss and part != "fieldmap":
        values = values / (slopes * ss)
        meta["PhilipsScaling"] = "precise: (stored * RS + RI) / (RS * SS), SS = (2005,100E)"
    return values.astype(np.float32), meta


def _volume(
    ordered: list[Frame], part: str, te_ms: float | None, tes: list[float], pixels: PixelReader
) -> ImageVolume:
    first = ordered[0]
    normal = first.normal
    heights = [float(f.position @ normal) for f in ordered]
    spacing = (heights[-1] - heights[0]) / (len(ordered) - 1) if len(ordered) > 1 else None
    if spacing is None:
        spacing = float(
            first.header.get("SpacingBetweenSlices") or first.header.get("SliceThickness") or 1
        )
    affine = dcm2niix_affine(
        first.orientation, first.position, first.pixel_spacing, spacing, first.shape[0]
    )
    data, value_meta = _values(ordered, part, pixels)
    echo_numbers = {f.echo_number for f in ordered}
    echo_number = echo_numbers.pop() if len(echo_numbers) == 1 else None
    if echo_number is None and te_ms is not None:
        echo_number = tes.index(te_ms) + 1
    # dcm2niix reports the time of the first slice in its order (the lowest along the normal)
    times = [bids_time(f.acquisition_time) for f in ordered if f.acquisition_time]
    image_type = list(first.image_type)
    tag = _IMAGE_TYPE_TAG[part]
    if part == "fieldmap" and image_type and image_type[-1] == "MAGNITUDE":
        image_type = image_type[:-1]
    if tag not in image_type:
        image_type.append(tag)
    sidecar = {**header_metadata(first), "ImageType": image_type, **value_meta}
    if times:
        sidecar["AcquisitionTime"] = times[0]
    if part != "fieldmap" and te_ms is not None:
        sidecar["EchoTime"] = round(te_ms / 1000, 8)
        if echo_number is not None:
            sidecar["EchoNumber"] = echo_number
    return ImageVolume(
        data=data,
        affine=affine,
        part=part,
        echo_time_s=None if te_ms is None else te_ms / 1000,
        echo_number=echo_number,
        series_uid=first.series_uid,
        series_number=first.series_number,
        series_description=first.series_description,
        protocol_name=first.protocol_name,
        acquisition_time=times[0] if times else "",
        vendor=first.vendor,
        sidecar=sidecar,
        sources=sorted({str(f.path) for f in ordered}),
    )


def _enhanced_value(ds, group: str, attr: str):
    """``attr`` from the shared functional groups (enhanced files), else top level."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        sub = shared[0].get(group)
        if sub and attr in sub[0]:
            return sub[0].get(attr)
    return ds.get(attr)


def _number(value) -> float | int | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return int(x) if x.is_integer() else x


def header_metadata(frame: Frame) -> dict[str, Any]:
    """BIDS sidecar fields read from the header (RepetitionTime in seconds, as BIDS)."""
    ds = frame.header
    software = ds.get("SoftwareVersions")
    if software is not None and not isinstance(software, str):
        software = "\\".join(str(s) for s in software)
    tr = _enhanced_value(ds, "MRTimingAndRelatedParametersSequence", "RepetitionTime")
    flip = _enhanced_value(ds, "MRTimingAndRelatedParametersSequence", "FlipAngle")
    out: dict[str, Any] = {
        "Modality": "MR",
        "MagneticFieldStrength": _number(ds.get("MagneticFieldStrength")),
        "ImagingFrequency": _number(ds.get("ImagingFrequency")),
        "Manufacturer": frame.vendor,
        "ManufacturersModelName": str(ds.get("ManufacturerModelName", "") or "") or None,
        "SoftwareVersions": str(software) if software else None,
        "SeriesDescription": frame.series_description or None,
        "ProtocolName": frame.protocol_name or None,
        "SeriesNumber": frame.series_number,
        "MRAcquisitionType": str(ds.get("MRAcquisitionType", "") or "") or None,
        "ScanningSequence": "\\".join(str(s) for s in _list(ds.get("ScanningSequence"))) or None,
        "SequenceVariant": "\\".join(str(s) for s in _list(ds.get("SequenceVariant"))) or None,
        "SequenceName": str(ds.get("SequenceName", "") or "") or None,
        "FlipAngle": _number(flip),
        "RepetitionTime": None if _number(tr) is None else round(float(tr) / 1000, 8),
        "PatientPosition": str(ds.get("PatientPosition", "") or "") or None,
        "ConversionSoftware": "qsmflow",
    }
    return {k: v for k, v in out.items() if v is not None}


def _list(value) -> list:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    try:
        return list(value)
    except TypeError:
        return [value]
