"""Image volumes to BIDS runs: which volumes form one acquisition, what kind of run it is,
and the file name of each image.

Volumes belong to one acquisition when they share the protocol (ProtocolName, else
SeriesDescription) and the grid (shape and affine): Siemens writes magnitude and phase as two
series of one acquisition. Repeats on one grid are split by series number. Kinds:

* ``fieldmap`` (GE B0 map): ``fmap/<prefix>_magnitude`` and ``_fieldmap`` (Hz).
* ``phasediff`` (two magnitude echoes and one phase image at the second echo, the Siemens
  field-map sequence): ``fmap/<prefix>_magnitude1``/``2`` and ``_phasediff`` (rad, with
  EchoTime1/EchoTime2).
* ``megre`` (everything else): ``anat/<prefix>_echo-<n>_part-<mag|phase>_MEGRE`` with echoes
  numbered 1.. by EchoTime; real/imaginary pairs without magnitude/phase become magnitude and
  phase (``angle(real + i imag)``, radians).

``<prefix>`` is ``sub-<s>[_ses-<t>][_acq-<a>]``; ``acq-`` only where a subject/session has
several runs of one kind (head orientations for COSMOS): the series descriptions made
alphanumeric when they differ, else ``ori1``, ``ori2``... by acquisition time.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .series import ImageVolume


@dataclass
class Run:
    """One acquisition as BIDS files: ``images`` maps a name tail (``echo-1_part-mag_MEGRE``,
    ``phasediff``...) to its volume and extra sidecar fields."""

    kind: str  #: "megre", "phasediff" or "fieldmap"
    images: dict[str, tuple[ImageVolume, dict[str, Any]]]
    description: str
    acquisition_time: str
    series_numbers: tuple[int, ...]
    acq: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def datatype(self) -> str:
        return "anat" if self.kind == "megre" else "fmap"


def assemble_runs(volumes: Sequence[ImageVolume]) -> list[Run]:
    """The BIDS runs of ``volumes``, ordered by acquisition time then series number."""
    groups: dict[tuple, list[ImageVolume]] = defaultdict(list)
    for v in volumes:
        groups[(v.protocol_name or v.series_description, v.grid_key)].append(v)
    runs = []
    for members in groups.values():
        for bucket in _split_repeats(members):
            runs.append(_make_run(bucket))
    runs.sort(key=lambda r: (r.acquisition_time, r.series_numbers))
    return runs


def _split_repeats(members: list[ImageVolume]) -> list[list[ImageVolume]]:
    """Series in series-number order; a series whose (part, echo time) slots are already
    taken starts a new acquisition."""
    by_series: dict[str, list[ImageVolume]] = defaultdict(list)
    for v in members:
        by_series[v.series_uid].append(v)
    order = sorted(by_series.values(), key=lambda vs: (vs[0].series_number or 0, vs[0].sources))
    buckets: list[list[ImageVolume]] = []
    slots: list[set] = []
    for series in order:
        keys = {(v.part, _te_key(v)) for v in series}
        if not buckets or keys & slots[-1]:
            buckets.append([])
            slots.append(set())
        buckets[-1].extend(series)
        slots[-1] |= keys
    return buckets


def _te_key(v: ImageVolume) -> float | None:
    return None if v.echo_time_s is None else round(v.echo_time_s * 1e6)


def _make_run(bucket: list[ImageVolume]) -> Run:
    parts: dict[str, dict[float | None, ImageVolume]] = defaultdict(dict)
    for v in bucket:
        parts[v.part][_te_key(v)] = v
    first = min(bucket, key=lambda v: v.series_number or 0)
    common = {
        "description": first.series_description or first.protocol_name,
        "acquisition_time": min(v.acquisition_time for v in bucket),
        "series_numbers": tuple(sorted({v.series_number or 0 for v in bucket})),
    }
    mags, phases = parts.get("mag", {}), parts.get("phase", {})
    if "fieldmap" in parts and mags:
        images = {
            "magnitude": (next(iter(mags.values())), {}),
            "fieldmap": (next(iter(parts["fieldmap"].values())), {}),
        }
        return Run("fieldmap", images, **common)
    if len(mags) == 2 and len(phases) == 1 and max(mags) == next(iter(phases)):
        (te1, m1), (te2, m2) = sorted(mags.items())
        ph = phases[te2]
        extra = {"EchoTime1": m1.sidecar["EchoTime"], "EchoTime2": m2.sidecar["EchoTime"]}
        images = {"magnitude1": (m1, {}), "magnitude2": (m2, {}), "phasediff": (ph, extra)}
        return Run("phasediff", images, **common)
    return _megre_run(parts, common)


def _megre_run(parts: dict[str, dict], common: dict) -> Run:
    notes = []
    mags, phases = dict(parts.get("mag", {})), dict(parts.get("phase", {}))
    for te, real in parts.get("real", {}).items():
        imag = parts.get("imag", {}).get(te)
        if imag is not None and te not in mags and te not in phases:
            mags[te], phases[te] = _from_real_imag(real, imag)
    tes = sorted(set(mags) | set(phases))
    images = {}
    for n, te in enumerate(tes, start=1):
        for part, vols in (("mag", mags), ("phase", phases)):
            if te in vols:
                images[f"echo-{n}_part-{part}_MEGRE"] = (vols[te], {"EchoNumber": n})
            else:
                notes.append(f"echo {n} has no {part} image")
    return Run("megre", images, notes=notes, **common)


def _from_real_imag(real: ImageVolume, imag: ImageVolume) -> tuple[ImageVolume, ImageVolume]:
    """Magnitude and phase (radians) of one echo from its real and imaginary images."""
    z = real.data.astype(np.float64) + 1j * imag.data.astype(np.float64)
    sources = sorted(set(real.sources) | set(imag.sources))
    base_type = [t for t in real.sidecar.get("ImageType", []) if t != "REAL"]
    base = {**real.sidecar, "ComputedFrom": "real and imaginary images"}
    mag = replace(
        real,
        data=np.abs(z).astype(np.float32),
        part="mag",
        sidecar={**base, "ImageType": [*base_type, "MAGNITUDE"]},
        sources=sources,
    )
    phase = replace(
        real,
        data=np.angle(z).astype(np.float32),
        part="phase",
        sidecar={**base, "ImageType": [*base_type, "PHASE"], "Units": "rad", "PhaseUnits": "rad"},
        sources=sources,
    )
    return mag, phase


def _label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", text)


def assign_acquisition_labels(runs: Sequence[Run]) -> None:
    """Set ``acq`` where several runs of one datatype would share a name (see module doc)."""
    by_type: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        by_type[r.datatype].append(r)
    for group in by_type.values():
        if len(group) < 2:
            continue
        labels = [_label(r.description) for r in group]
        if all(labels) and len(set(labels)) == len(labels):
            for r, lab in zip(group, labels, strict=True):
                r.acq = lab
            continue
        if len(set(labels)) == 1:
            for n, r in enumerate(group, start=1):  # group is in acquisition-time order
                r.acq = f"ori{n}"
            continue
        seen: dict[str, int] = defaultdict(int)
        for r, lab in zip(group, labels, strict=True):
            seen[lab or "run"] += 1
            r.acq = f"{lab or 'run'}{seen[lab or 'run']}"
