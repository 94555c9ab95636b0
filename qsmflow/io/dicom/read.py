"""Reading DICOM files (pydicom) into one :class:`Frame` record per 2-D image.

A classic single-frame file gives one frame; an enhanced multi-frame file (Siemens XA,
Philips, GE enhanced) gives one per frame, with the per-frame functional groups taking
precedence over the shared ones. Only headers are read here; :class:`PixelReader` decodes the
pixels of the series that are converted.

Conventions: positions and orientations are DICOM patient coordinates (LPS, mm) as stored;
EchoTime stays in milliseconds here (as in DICOM); the image component (MAGNITUDE, PHASE,
REAL, IMAGINARY) comes from the enhanced frame type, the vendor field (GE (0043,102F),
Philips (2005,1011)) or the ImageType values, in that order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: ImageType tokens that name the complex component (Siemens ``M``/``P``, Philips ``M_FFE``...).
_COMPONENT_TOKENS = {
    "MAGNITUDE": "MAGNITUDE",
    "M": "MAGNITUDE",
    "PHASE": "PHASE",
    "P": "PHASE",
    "REAL": "REAL",
    "R": "REAL",
    "IMAGINARY": "IMAGINARY",
    "I": "IMAGINARY",
}
#: GE private image type (0043,102F): 0 magnitude, 1 phase, 2 real, 3 imaginary.
_GE_COMPONENT = {0: "MAGNITUDE", 1: "PHASE", 2: "REAL", 3: "IMAGINARY"}
_GE_IMAGE_TYPE = (0x0043, 0x102F)
_PHILIPS_IMAGE_TYPE = (0x2005, 0x1011)
_PHILIPS_SCALE_SLOPE = (0x2005, 0x100E)
_PHILIPS_PIXEL_GROUP = (0x2005, 0x140F)
_GE_INTERNAL_SEQUENCE = (0x0019, 0x109E)


def vendor_of(manufacturer: str) -> str:
    """``"Siemens"``, ``"GE"``, ``"Philips"``, or the Manufacturer value as written."""
    m = manufacturer.upper()
    for key, name in (("SIEMENS", "Siemens"), ("GE ", "GE"), ("PHILIPS", "Philips")):
        if key in m or m == key.strip():
            return name
    return manufacturer.strip() or "unknown"


@dataclass(eq=False)
class Frame:
    """One 2-D image of a DICOM file, with what grouping, sorting and scaling need."""

    path: Path
    index: int | None  #: frame of a multi-frame file (0-based); None for a single-frame file
    header: Any  #: the file's pydicom Dataset, without pixel data (shared by its frames)
    series_uid: str
    series_number: int | None
    series_description: str
    protocol_name: str
    vendor: str
    image_type: tuple[str, ...]
    component: str  #: MAGNITUDE, PHASE, REAL, IMAGINARY or "" (unknown: taken as magnitude)
    echo_time_ms: float | None
    echo_number: int | None
    position: np.ndarray  #: ImagePositionPatient, LPS mm
    orientation: np.ndarray  #: ImageOrientationPatient: row then column direction cosines
    pixel_spacing: tuple[float, float]  #: (between rows, between columns) in mm
    shape: tuple[int, int]  #: (rows, columns)
    slope: float
    intercept: float
    acquisition_time: str  #: DICOM TM (``HHMMSS.ffffff``), "" when absent
    instance_number: int
    gradient_echo: bool | None  #: None when the header does not say
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def normal(self) -> np.ndarray:
        """Slice normal (row x column direction), LPS."""
        return np.cross(self.orientation[:3], self.orientation[3:])


def iter_dicom_files(root: str | os.PathLike) -> Iterator[Path]:
    """Every regular file under ``root`` in name order, hidden files and DICOMDIR left out."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name.upper() != "DICOMDIR":
                yield Path(folder) / name


def read_header(path: Path):
    """The pydicom Dataset without pixel data, or None when the file is not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError):
        return None


def frames_of(path: Path, ds) -> list[Frame]:
    """The frames of one file (enhanced multi-frame files: one per frame)."""
    if "PerFrameFunctionalGroupsSequence" in ds:
        n = int(ds.get("NumberOfFrames", 1) or 1)
        return [_frame(path, ds, i) for i in range(n)]
    return [_frame(path, ds, None)]


def _functional(ds, index: int | None, group: str, attr: str, default=None):
    """``attr`` of functional group ``group`` for frame ``index`` (per-frame, then shared),
    or the top-level attribute for single-frame files and as the last resort."""
    if index is not None:
        for seq_name in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
            seq = ds.get(seq_name)
            if not seq:
                continue
            item = seq[index] if seq_name.startswith("PerFrame") else seq[0]
            sub = item.get(group)
            if sub and attr in sub[0]:
                return sub[0].get(attr)
    value = ds.get(attr)
    return default if value is None or value == "" else value


def _component(ds, index: int | None, vendor: str, image_type: tuple[str, ...]) -> str:
    comp = _functional(ds, index, "MRImageFrameTypeSequence", "ComplexImageComponent")
    if comp and str(comp).upper() in ("MAGNITUDE", "PHASE", "REAL", "IMAGINARY"):
        return str(comp).upper()
    if vendor == "GE" and _GE_IMAGE_TYPE in ds:
        value = ds[_GE_IMAGE_TYPE].value
        if isinstance(value, int) and value in _GE_COMPONENT:
            return _GE_COMPONENT[value]
    if vendor == "Philips" and _PHILIPS_IMAGE_TYPE in ds:
        token = str(ds[_PHILIPS_IMAGE_TYPE].value).strip().upper()
        if token in _COMPONENT_TOKENS:
            return _COMPONENT_TOKENS[token]
    frame_type = _functional(ds, index, "MRImageFrameTypeSequence", "FrameType")
    tokens = [str(t).upper() for t in (frame_type or image_type)]
    for token in tokens[2:] + tokens[:2]:
        base = token.split("_")[0]
        if base in _COMPONENT_TOKENS:
            return _COMPONENT_TOKENS[base]
    return ""


def _gradient_echo(ds, vendor: str) -> bool | None:
    """Whether the header names a gradient-echo acquisition (GE B0 maps count as one)."""
    scanning = [str(s).upper() for s in _as_list(ds.get("ScanningSequence"))]
    if "GR" in scanning:
        return True
    pulse = str(ds.get("EchoPulseSequence", "")).upper()
    if pulse in ("GRADIENT", "BOTH"):
        return True
    if is_ge_b0map(ds, vendor):
        return True
    if scanning or pulse:
        return False
    return None


def is_ge_b0map(ds, vendor: str) -> bool:
    """A GE B0 field-map series (internal sequence ``B0map``): field map in Hz + magnitude."""
    if vendor != "GE":
        return False
    internal = ds.get(_GE_INTERNAL_SEQUENCE)
    names = {str(internal.value).strip() if internal is not None else ""}
    names.add(str(ds.get("SequenceName", "")).strip())
    return bool(names & {"B0map", "B0rf"})


def _as_list(value) -> list:
    if value is None or value == "":
        return []
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return [value]
    return list(value)


def _float(value, default: float | None = None) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _frame(path: Path, ds, index: int | None) -> Frame:
    vendor = vendor_of(str(ds.get("Manufacturer", "")))
    image_type = tuple(str(t) for t in _as_list(ds.get("ImageType")))
    te = _functional(ds, index, "MREchoSequence", "EffectiveEchoTime")
    if te is None:
        te = ds.get("EchoTime")
    position = _functional(ds, index, "PlanePositionSequence", "ImagePositionPatient")
    orientation = _functional(ds, index, "PlaneOrientationSequence", "ImageOrientationPatient")
    spacing = _functional(ds, index, "PixelMeasuresSequence", "PixelSpacing")
    slope = _functional(ds, index, "PixelValueTransformationSequence", "RescaleSlope", 1.0)
    intercept = _functional(ds, index, "PixelValueTransformationSequence", "RescaleIntercept", 0)
    acq_time = str(ds.get("AcquisitionTime", "") or "")
    frame_dt = _functional(ds, index, "FrameContentSequence", "FrameAcquisitionDateTime")
    if index is not None and frame_dt:
        acq_time = str(frame_dt)[8:]  # DT is YYYYMMDDHHMMSS.ffffff
    elif not acq_time and ds.get("AcquisitionDateTime"):
        acq_time = str(ds.AcquisitionDateTime)[8:]
    echo_number = ds.get("EchoNumbers") if index is None else None
    series_number = ds.get("SeriesNumber")
    extra: dict[str, Any] = {}
    if vendor == "Philips":
        scale = _philips_scale_slope(ds, index)
        if scale:
            extra["philips_scale_slope"] = scale
    return Frame(
        path=path,
        index=index,
        header=ds,
        series_uid=str(ds.get("SeriesInstanceUID", path.parent)),
        series_number=int(series_number) if series_number not in (None, "") else None,
        series_description=str(ds.get("SeriesDescription", "") or ""),
        protocol_name=str(ds.get("ProtocolName", "") or ""),
        vendor=vendor,
        image_type=image_type,
        component=_component(ds, index, vendor, image_type),
        echo_time_ms=_float(te),
        echo_number=int(echo_number) if echo_number not in (None, "") else None,
        position=np.asarray([float(v) for v in position], float)
        if position
        else np.full(3, np.nan),
        orientation=(
            np.asarray([float(v) for v in orientation], float)
            if orientation
            else np.full(6, np.nan)
        ),
        pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing else (np.nan, np.nan),
        shape=(int(ds.get("Rows", 0)), int(ds.get("Columns", 0))),
        slope=_float(slope, 1.0) or 1.0,
        intercept=_float(intercept, 0.0) or 0.0,
        acquisition_time=acq_time.strip(),
        instance_number=int(ds.get("InstanceNumber", 0) or 0),
        gradient_echo=_gradient_echo(ds, vendor),
        extra=extra,
    )


def _philips_scale_slope(ds, index: int | None) -> float | None:
    """Philips private scale slope (2005,100E): top level, or in an enhanced file's per-frame
    private group (2005,140F)."""
    if index is not None and "PerFrameFunctionalGroupsSequence" in ds:
        item = ds.PerFrameFunctionalGroupsSequence[index]
        private = item.get(_PHILIPS_PIXEL_GROUP)
        if private is not None and private.value and _PHILIPS_SCALE_SLOPE in private.value[0]:
            return _float(private.value[0][_PHILIPS_SCALE_SLOPE].value)
    if _PHILIPS_SCALE_SLOPE in ds:
        return _float(ds[_PHILIPS_SCALE_SLOPE].value)
    return None


def undecodable_reason(ds) -> str | None:
    """Why pydicom cannot decode this file's pixel data (no decoder installed), else None."""
    from pydicom.pixels import get_decoder

    tsyntax = ds.file_meta.get("TransferSyntaxUID") if "file_meta" in dir(ds) else None
    if tsyntax is None or not tsyntax.is_compressed:
        return None
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        return f"compressed transfer syntax {tsyntax.name} ({tsyntax}) has no pydicom decoder"
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin available"
        return (
            f"compressed transfer syntax {tsyntax.name} ({tsyntax}) cannot be decoded here "
            f"(pydicom needs: {missing})"
        )
    return None


class PixelReader:
    """Decode and cache the pixel arrays of files (a multi-frame file is decoded once)."""

    def __init__(self) -> None:
        self._cache: dict[Path, np.ndarray] = {}

    def stored(self, frame: Frame) -> np.ndarray:
        """The stored values of ``frame`` as a (rows, columns) array (no rescaling)."""
        import pydicom

        if frame.path not in self._cache:
            self._cache[frame.path] = pydicom.dcmread(frame.path).pixel_array
        arr = self._cache[frame.path]
        return arr[frame.index] if frame.index is not None else arr

    def clear(self) -> None:
        self._cache.clear()
