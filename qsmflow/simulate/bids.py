"""Write simulated GRE data as a BIDS dataset, with the truth as a BIDS derivative.

Layout (``[_acq-<label>]`` only when a subject has several head orientations)::

    OUTPUT/
      dataset_description.json   (DatasetType "raw"), README, participants.tsv/.json
      sub-01/anat/sub-01[_acq-ori1]_echo-1_part-mag_MEGRE.nii.gz (+ .json)
      sub-01/anat/sub-01[_acq-ori1]_echo-1_part-phase_MEGRE.nii.gz (+ .json, "Units": "rad")
      derivatives/qsmflow-simulation/
        dataset_description.json (DatasetType "derivative", GeneratedBy qsmflow), README
        .bidsignore               simulation.json and *_fieldmap.* (see below)
        dseg.tsv                  label index -> name
        simulation.json           parameters and the list of files written (the manifest)
        sub-01/anat/sub-01[_acq-ori1]_Chimap.nii.gz            chi, ppm
                    ..._desc-brain_mask.nii.gz / _desc-head_mask.nii.gz
                    ..._dseg.nii.gz                             labels
                    ..._desc-local_fieldmap.nii.gz              true local field, ppm
                    ..._desc-total_fieldmap.nii.gz              true total field, ppm
                    ..._R2starmap.nii.gz (1/s), ..._M0map.nii.gz

Raw sidecars carry what a scanner would write (EchoTime in seconds, MagneticFieldStrength in
tesla, EchoNumber, ...); the geometry truth of each orientation is in the derivative sidecars:
``B0Direction`` (array axes of this image; equals ``b0_dir_from_affine``), ``HeadRotation``
(canonical head frame -> this array), ``RotationToReference`` (3x3 ``M`` with
``p_ref = M @ p`` for points p in mm about the array centre ``RotationCentreVoxel``; this is what
registration to the reference orientation must find), ``B0DirectionReference`` (``M @ b``, the
B0 direction to use for this orientation in COSMOS in the reference frame).

BIDS validity: the raw dataset passes ``bids-validator`` without errors. The derivative passes
too when validated as a dataset of its own (``bids-validator derivatives/qsmflow-simulation``),
with its ``.bidsignore`` hiding the two kinds of file BIDS has no name for: the manifest
``simulation.json`` and the true field maps in ppm (BIDS ``fieldmap`` files belong in ``fmap/``
with a magnitude image and Hz/rad/s/T units). Image derivatives carry the required
``SkullStripped`` (true only for the local field, which is zero outside the brain); the head
mask is ``"Type": "ROI"`` (BIDS mask types are Brain, Lesion, Face and ROI).

All files are written atomically. The writer refuses a non-empty folder that is not a BIDS
dataset, and a BIDS dataset it did not create unless ``force=True``; rewriting an earlier
simulation first removes the files listed in its manifest.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import QSMInputError
from ..io.atomic import write_text_atomic
from ..io.nifti import save_volume, sidecar_path, write_json
from ..physics.geometry import rotation_angle_deg
from ..physics.units import GAMMA_BAR_HZ_PER_T
from .gre import GREData
from .head_model import LABEL_NAMES

log = logging.getLogger(__name__)

BIDS_VERSION = "1.9.0"
DERIVATIVE_NAME = "qsmflow-simulation"
GENERATOR = "qsmflow"


def _label_ok(value: str, what: str) -> str:
    value = str(value)
    if not value or not value.isalnum():
        raise QSMInputError(f"BIDS {what} label must be alphanumeric, got {value!r}")
    return value


def run_prefix(subject: str, acq: str | None = None) -> str:
    """``sub-<subject>[_acq-<acq>]``."""
    out = f"sub-{_label_ok(subject, 'subject')}"
    if acq is not None:
        out += f"_acq-{_label_ok(acq, 'acquisition')}"
    return out


def _read_description(root: Path) -> dict | None:
    p = root / "dataset_description.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise QSMInputError(f"cannot read dataset_description.json ({exc})", str(p)) from exc


def _made_by_us(desc: dict | None) -> bool:
    if not desc:
        return False
    gen = desc.get("GeneratedBy") or []
    return any(isinstance(g, dict) and g.get("Name") == GENERATOR for g in gen)


class BIDSWriter:
    """Write simulated runs into a BIDS dataset at ``root``.

    Use :meth:`write_run` for every (subject, orientation), then :meth:`finish`. The first run of
    a subject is its reference orientation unless ``reference=True`` is passed for another.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        force: bool = False,
        name: str = "qsmflow simulated multi-echo GRE",
        parameters: dict[str, Any] | None = None,
    ):
        self.root = Path(root)
        self.deriv = self.root / "derivatives" / DERIVATIVE_NAME
        self.parameters = dict(parameters or {})
        self.files: list[Path] = []
        self.subjects: dict[str, dict[str, Any]] = {}
        self._reference: dict[str, tuple[str | None, np.ndarray]] = {}
        self._check_target(force)
        self._write_descriptions(name)

    # -- target folder -------------------------------------------------------------------
    def _check_target(self, force: bool) -> None:
        root = self.root
        if root.exists() and not root.is_dir():
            raise QSMInputError("output path exists and is not a folder", str(root))
        if not root.exists() or not any(root.iterdir()):
            return
        desc = _read_description(root)
        if desc is None:
            raise QSMInputError(
                "output folder is not empty and is not a BIDS dataset (no "
                "dataset_description.json); refusing to write into it - choose a new or empty "
                "folder",
                str(root),
            )
        if not _made_by_us(desc) and not force:
            raise QSMInputError(
                "output folder is a BIDS dataset not made by qsmflow simulate; refusing to "
                "overwrite it (use --force to write into it anyway)",
                str(root),
            )
        self._remove_previous()

    def _remove_previous(self) -> None:
        manifest = self.deriv / "simulation.json"
        if not manifest.is_file():
            return
        try:
            files = json.loads(manifest.read_text()).get("Files", [])
        except (OSError, ValueError):
            log.warning("could not read the previous manifest %s; keeping old files", manifest)
            return
        root = self.root.resolve()
        n = 0
        for rel in files:
            p = (self.root / rel).resolve()
            if root in p.parents and p.is_file() and not p.is_symlink():
                p.unlink()
                n += 1
        log.info("removed %d files of the previous simulation in %s", n, self.root)

    def _write_descriptions(self, name: str) -> None:
        gen = {
            "Name": GENERATOR,
            "Version": __version__,
            "Description": "qsmflow simulate: forward-simulated multi-echo GRE with known truth",
        }
        self._json(
            self.root / "dataset_description.json",
            {
                "Name": name,
                "BIDSVersion": BIDS_VERSION,
                "DatasetType": "raw",
                "License": "CC0",
                "GeneratedBy": [gen],
            },
        )
        readme = self.root / "README"
        write_text_atomic(
            readme,
            f"{name}\n\nSimulated with qsmflow {__version__} (`qsmflow simulate`). Multi-echo "
            "GRE magnitude and phase (rad) per echo; head orientations as acq-<label> entities. "
            f"The ground truth is in derivatives/{DERIVATIVE_NAME}/ (susceptibility and fields "
            "in ppm, labels, masks, each orientation's rotation and B0 direction).\n",
        )
        self.files.append(readme)
        self._json(
            self.deriv / "dataset_description.json",
            {
                "Name": f"{name}: ground truth",
                "BIDSVersion": BIDS_VERSION,
                "DatasetType": "derivative",
                "GeneratedBy": [{**gen, "Name": DERIVATIVE_NAME}],
            },
        )
        write_text_atomic(
            self.deriv / "README",
            f"{name}: ground truth of the simulation (qsmflow {__version__}). Susceptibility "
            "(Chimap) and true local/total fields in ppm, tissue labels (dseg.tsv), brain and "
            "head masks, R2* (1/s) and M0; each sidecar holds the orientation's geometry. "
            "simulation.json lists the parameters and every file written.\n",
        )
        self.files.append(self.deriv / "README")
        write_text_atomic(self.deriv / ".bidsignore", "simulation.json\n*_fieldmap.*\n")
        self.files.append(self.deriv / ".bidsignore")
        rows = ["index\tname"] + [f"{k}\t{v}" for k, v in sorted(LABEL_NAMES.items())]
        write_text_atomic(self.deriv / "dseg.tsv", "\n".join(rows) + "\n")
        self.files.append(self.deriv / "dseg.tsv")

    # -- helpers -------------------------------------------------------------------------
    def _json(self, path: Path, obj: Any) -> Path:
        p = write_json(path, obj)
        self.files.append(p)
        return p

    def _nii(self, path: Path, data, affine, sidecar, dtype=np.float32) -> Path:
        p = save_volume(path, data, affine, dtype=dtype, sidecar=sidecar)
        self.files.append(p)
        if sidecar is not None:
            self.files.append(sidecar_path(p))
        return p

    # -- runs ----------------------------------------------------------------------------
    def write_run(
        self,
        subject: str,
        data: GREData,
        *,
        acq: str | None = None,
        reference: bool = False,
        participant: dict[str, Any] | None = None,
    ) -> list[Path]:
        """Write one orientation's raw echoes and truth; returns the paths written."""
        n0 = len(self.files)
        prefix = run_prefix(subject, acq)
        if subject not in self._reference or reference:
            self._reference[subject] = (acq, np.asarray(data.rotation, dtype=np.float64))
        ref_acq, ref_rot = self._reference[subject]
        info = self.subjects.setdefault(subject, {"runs": []})
        info["runs"].append(acq)
        if participant:
            info.update(participant)

        anat = self.root / f"sub-{subject}" / "anat"
        n_echo = data.magnitude.shape[-1]
        common = {
            "MagneticFieldStrength": data.b0_tesla,
            "ImagingFrequency": round(GAMMA_BAR_HZ_PER_T * data.b0_tesla * 1e-6, 6),
            "Manufacturer": "qsmflow (simulated)",
            "MRAcquisitionType": "3D",
            "ScanningSequence": "GR",
            "SequenceVariant": "SP",
            "FlipAngle": 15,
            "RepetitionTime": round(max(data.te_s) + 0.01, 6),
            "PhaseEncodingDirection": "j",
        }
        for e in range(n_echo):
            base = f"{prefix}_echo-{e + 1}"
            echo = {"EchoTime": data.te_s[e], "EchoNumber": e + 1, **common}
            self._nii(
                anat / f"{base}_part-mag_MEGRE.nii.gz",
                data.magnitude[..., e],
                data.affine,
                {**echo, "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"]},
            )
            self._nii(
                anat / f"{base}_part-phase_MEGRE.nii.gz",
                data.phase[..., e],
                data.affine,
                {**echo, "ImageType": ["ORIGINAL", "PRIMARY", "P", "ND"], "Units": "rad"},
            )

        # truth
        to_ref = ref_rot @ np.asarray(data.rotation).T
        geometry = {
            "Orientation": acq,
            "ReferenceOrientation": ref_acq,
            "SimulationMode": data.mode,
            "B0Direction": np.asarray(data.b0_dir).tolist(),
            "B0DirectionReference": (to_ref @ data.b0_dir).tolist(),
            "HeadRotation": np.asarray(data.rotation).tolist(),
            "RotationToReference": to_ref.tolist(),
            "RotationAngleToReferenceDeg": rotation_angle_deg(to_ref),
            "RotationCentreVoxel": ((np.asarray(data.shape) - 1) / 2).tolist(),
            "MagneticFieldStrength": data.b0_tesla,
            "EchoTime": list(data.te_s),
            "NoiseSigma": data.noise_sigma,
            "SNR": data.snr,
            "DipoleKernelK0": data.dc_value,
            "Supersampling": data.supersample,
            "Phantom": data.description,
            "RawFiles": [
                f"sub-{subject}/anat/{prefix}_echo-{e + 1}_part-{p}_MEGRE.nii.gz"
                for e in range(n_echo)
                for p in ("mag", "phase")
            ],
        }
        d_anat = self.deriv / f"sub-{subject}" / "anat"
        a = data.affine
        self._nii(
            d_anat / f"{prefix}_Chimap.nii.gz",
            data.chi,
            a,
            {
                **geometry,
                "Units": "ppm",
                "SkullStripped": False,
                "Description": "true magnetic susceptibility relative to water; 0 outside the "
                "head (air inside the head +9.2, bone -2.1 ppm); mean over each voxel's "
                "Supersampling^3 sub-voxels (partial volume)",
            },
        )
        self._nii(
            d_anat / f"{prefix}_desc-brain_mask.nii.gz",
            data.brain_mask,
            a,
            {**geometry, "Type": "Brain", "Description": "true brain mask"},
            dtype=np.uint8,
        )
        self._nii(
            d_anat / f"{prefix}_desc-head_mask.nii.gz",
            data.head_mask,
            a,
            {**geometry, "Type": "ROI", "Description": "voxels inside the head"},
            dtype=np.uint8,
        )
        self._nii(
            d_anat / f"{prefix}_dseg.nii.gz",
            data.labels,
            a,
            {
                **geometry,
                "Description": "tissue labels, see dseg.tsv (QSM Challenge 2.0 numbering)",
            },
            dtype=np.uint8,
        )
        self._nii(
            d_anat / f"{prefix}_desc-local_fieldmap.nii.gz",
            data.local_field,
            a,
            {
                **geometry,
                "Units": "ppm",
                "SkullStripped": True,
                "Description": "true local field: forward field of chi inside the brain "
                "(on the supersampled grid), averaged over each voxel, restricted to the brain "
                "mask",
            },
        )
        self._nii(
            d_anat / f"{prefix}_desc-total_fieldmap.nii.gz",
            data.total_field,
            a,
            {
                **geometry,
                "Units": "ppm",
                "SkullStripped": False,
                "Description": "true total field of the whole head's chi (on the supersampled "
                "grid), averaged over each voxel, zero outside the head",
            },
        )
        self._nii(
            d_anat / f"{prefix}_R2starmap.nii.gz",
            data.r2star,
            a,
            {
                **geometry,
                "Units": "1/s",
                "SkullStripped": False,
                "Description": "R2* used in the simulation",
            },
        )
        self._nii(
            d_anat / f"{prefix}_M0map.nii.gz",
            data.m0,
            a,
            {
                **geometry,
                "Units": "arbitrary",
                "SkullStripped": False,
                "Description": "M0 used in the simulation",
            },
        )
        return self.files[n0:]

    def finish(self) -> dict[str, Any]:
        """Write participants.tsv/.json and the manifest; return a summary."""
        cols = sorted({k for v in self.subjects.values() for k in v if k != "runs"})
        lines = ["\t".join(["participant_id", *cols])]
        for sub, info in sorted(self.subjects.items()):
            lines.append("\t".join([f"sub-{sub}", *[str(info.get(c, "n/a")) for c in cols]]))
        write_text_atomic(self.root / "participants.tsv", "\n".join(lines) + "\n")
        self.files.append(self.root / "participants.tsv")
        pj = {"participant_id": {"Description": "simulated subject"}}
        pj.update({c: {"Description": c.replace("_", " ")} for c in cols})
        self._json(self.root / "participants.json", pj)
        manifest = self.deriv / "simulation.json"
        rel = sorted(
            {str(p.relative_to(self.root)) for p in self.files}
            | {str(manifest.relative_to(self.root))}
        )
        write_json(
            manifest,
            {
                "GeneratedBy": GENERATOR,
                "Version": __version__,
                "Parameters": self.parameters,
                "Subjects": {k: v["runs"] for k, v in self.subjects.items()},
                "Files": rel,
            },
        )
        return {
            "root": str(self.root),
            "subjects": len(self.subjects),
            "runs": sum(len(v["runs"]) for v in self.subjects.values()),
            "files": len(rel),
        }


def write_bids_dataset(
    root: str | os.PathLike,
    runs: dict[str, Sequence[tuple[str | None, GREData]]],
    *,
    force: bool = False,
    parameters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``{subject: [(acq or None, GREData), ...]}`` (first run = reference) to ``root``."""
    w = BIDSWriter(root, force=force, parameters=parameters)
    for sub, items in runs.items():
        for acq, data in items:
            w.write_run(sub, data, acq=acq)
    return w.finish()
