"""The ``dcm2niix`` backend: run dcm2niix (the PyPI ``dcm2niix`` wheel or one on PATH) and read
its NIfTI + JSON output as :class:`~qsmflow.io.dicom.series.ImageVolume` records, so that the
same run assembly and BIDS writer follow.

dcm2niix decides voxel order, affine and values; the part comes from the ImageType it writes
(``PHASE``, ``REAL``, ``IMAGINARY``, ``FIELDMAPHZ``, else magnitude); phase is taken to radians
from its values (radians as they are; Siemens 12-bit ``[-4096, 4095]`` ``* pi/4096`` or raw
``[0, 4095]``; milliradians ``/ 1000``). dcm2niix gives no per-file reasons for what it skips:
its warnings are returned as the skip reasons.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ...errors import QSMInputError
from ...physics.validation import phase_to_radians
from .series import ImageVolume, bids_time

_PART_OF_TAG = (("FIELDMAPHZ", "fieldmap"), ("PHASE", "phase"), ("REAL", "real"))


def dcm2niix_command() -> str | None:
    """The dcm2niix executable beside this Python (the wheel's) or on PATH, else None."""
    local = Path(sys.executable).with_name("dcm2niix")
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("dcm2niix")


def dcm2niix_volumes(dicom_dir: str | os.PathLike) -> tuple[list[ImageVolume], list[str]]:
    """Convert ``dicom_dir`` with dcm2niix; returns the volumes and dcm2niix's warnings."""
    exe = dcm2niix_command()
    if exe is None:
        raise QSMInputError("dcm2niix not found (pip install dcm2niix)")
    with tempfile.TemporaryDirectory(prefix="qsmflow-dcm2niix-") as out:
        cmd = [exe, "-b", "y", "-ba", "n", "-z", "n", "-f", "s%s_%p", "-o", out, str(dicom_dir)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        warnings = [
            line.strip()
            for line in (proc.stdout + proc.stderr).splitlines()
            if line.startswith(("Warning", "Error"))
        ]
        if proc.returncode not in (0, 2):  # 2: no DICOM found
            raise QSMInputError(f"dcm2niix failed (exit {proc.returncode}): {proc.stderr}")
        volumes = []
        for nii in sorted(Path(out).glob("*.nii")):
            sidecar = nii.with_suffix(".json")
            meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
            volume = _volume(nii, meta, warnings)
            if volume is not None:
                volumes.append(volume)
    return volumes, warnings


def _part(image_type: list[str]) -> str:
    tags = {str(t).upper() for t in image_type}
    for tag, part in _PART_OF_TAG:
        if tag in tags:
            return part
    return "imag" if "IMAGINARY" in tags else "mag"


def _volume(nii: Path, meta: dict, warnings: list[str]) -> ImageVolume | None:
    import nibabel as nib

    img = nib.load(nii)
    if len(img.shape) != 3:
        warnings.append(f"{nii.name}: {len(img.shape)}-D output not converted")
        return None
    slope, inter = img.dataobj.slope, img.dataobj.inter
    data = np.asarray(img.dataobj.get_unscaled() if (slope, inter) == (1, 0) else img.dataobj)
    part = _part(meta.get("ImageType", []))
    extra: dict = {}
    if part == "phase":
        try:
            data, units = phase_to_radians(data, str(nii))
            note = f"from dcm2niix values ({units})"
        except QSMInputError:
            if np.abs(data).max() > 1000 * np.pi + 1:
                raise
            data, note = (data / 1000.0).astype(np.float32), "milliradians / 1000"
        extra = {"Units": "rad", "PhaseUnits": "rad", "PhaseScaling": note}
    te = meta.get("EchoTime")
    number = meta.get("SeriesNumber")
    return ImageVolume(
        data=data,
        affine=np.asarray(img.affine, dtype=np.float64),
        part=part,
        echo_time_s=None if te is None else float(te),
        echo_number=meta.get("EchoNumber"),
        series_uid=f"dcm2niix-series-{number}-{meta.get('SeriesDescription', '')}",
        series_number=number,
        series_description=str(meta.get("SeriesDescription", "")),
        protocol_name=str(meta.get("ProtocolName", "")),
        acquisition_time=bids_time(str(meta.get("AcquisitionTime", ""))),
        vendor=str(meta.get("Manufacturer", "")),
        sidecar={**meta, **extra},
        sources=[nii.name],
    )
