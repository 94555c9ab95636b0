"""The checks of one run's files (echo pairs, sidecars, echo order, image grids and phase
units) and of a subject/session's orientations. Each reports every problem it finds and goes
on; see :mod:`qsmflow.io.bids` for the rules."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import QSMInputError
from ...physics.validation import AFFINE_ATOL_MM, phase_to_radians
from ..nifti import ImageHeader, read_header, sidecar_path
from .records import MIN_ORIENTATIONS, RunScan, SessionProblems

#: EchoTime above this (seconds) is taken for milliseconds.
MAX_ECHO_TIME_S = 1.0
#: Plausible MagneticFieldStrength range (tesla).
MAX_FIELD_STRENGTH_T = 25.0
#: Two sidecars of one echo agree on EchoTime within this (seconds).
ECHO_TIME_ATOL_S = 1e-6

#: ``{echo index: {"mag"|"phase": path}}`` of one run.
EchoSlots = dict[int, dict[str, Path]]


def _sibling(path: Path, echo: int, part: str) -> Path:
    """The name the ``echo``/``part`` file of the same run would have."""
    name = re.sub(r"_echo-[0-9a-zA-Z]+", f"_echo-{echo}", path.name)
    if "_part-" in name:
        name = re.sub(r"_part-[0-9a-zA-Z]+", f"_part-{part}", name)
    else:
        name = name.replace("_MEGRE", f"_part-{part}_MEGRE")
    return path.with_name(name)


def _sidecar(path: Path) -> Path:
    """The same-name JSON sidecar when it exists, else the image (metadata may be inherited)."""
    js = sidecar_path(path)
    return js if js.is_file() else path


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def check_echo_pairs(by_echo: EchoSlots, report: SessionProblems) -> None:
    """Every echo has magnitude and phase, and echo indices run 1, 2, ... without gaps."""
    for echo in sorted(by_echo):
        slot = by_echo[echo]
        for part, other in (("phase", "mag"), ("mag", "phase")):
            if part not in slot:
                report.add(
                    _sibling(slot[other], echo, part),
                    f"missing: {'phase' if part == 'phase' else 'magnitude'} image of echo "
                    f"{echo} (there is {slot[other].name})",
                )
    echoes = sorted(by_echo)
    any_file = next(iter(by_echo[echoes[0]].values()))
    for e in (e for e in range(1, echoes[-1] + 1) if e not in by_echo):
        report.add(
            _sibling(any_file, e, "phase"),
            f"missing: echo {e} (neither magnitude nor phase); echoes found: "
            f"{', '.join(map(str, echoes))}",
        )


@dataclass
class EchoMetadata:
    """What the sidecars of one run say: EchoTime (s) per echo with the sidecar it came from,
    and the files per MagneticFieldStrength value (tesla)."""

    echo_time_s: dict[int, float] = field(default_factory=dict)
    echo_time_file: dict[int, Path] = field(default_factory=dict)
    field_strengths_t: dict[float, list[Path]] = field(default_factory=dict)

    @property
    def field_strength_t(self) -> float | None:
        """The run's field strength when all its files agree, else ``None``."""
        return next(iter(self.field_strengths_t)) if len(self.field_strengths_t) == 1 else None


def read_echo_metadata(by_echo: EchoSlots, layout, report: SessionProblems) -> EchoMetadata:
    """EchoTime and MagneticFieldStrength of every file (BIDS inheritance through pybids),
    each checked for presence, type, unit and agreement between the two parts of an echo."""
    meta_out = EchoMetadata()
    no_te, no_b0 = [], []
    for echo in sorted(by_echo):
        for part in ("phase", "mag"):
            if part not in by_echo[echo]:
                continue
            path = by_echo[echo][part]
            side = _sidecar(path)
            try:
                meta = layout.get_metadata(str(path))
            except Exception as exc:  # malformed JSON somewhere in the inheritance chain
                report.add(side, f"cannot read the JSON sidecar ({exc})")
                continue
            if "EchoTime" not in meta:
                no_te.append(side)
            else:
                _echo_time(meta["EchoTime"], echo, side, meta_out, report)
            if "MagneticFieldStrength" not in meta:
                no_b0.append(side)
                continue
            b = _number(meta["MagneticFieldStrength"])
            if b is None or not 0 < b <= MAX_FIELD_STRENGTH_T:
                report.add(
                    side,
                    f"MagneticFieldStrength {meta['MagneticFieldStrength']!r} is not a field "
                    "strength in tesla",
                )
            else:
                meta_out.field_strengths_t.setdefault(b, []).append(side)
    report.add_grouped(no_te, "no EchoTime (seconds) in the JSON sidecar")
    report.add_grouped(no_b0, "no MagneticFieldStrength (tesla) in the JSON sidecar")
    return meta_out


def _echo_time(
    value: Any, echo: int, side: Path, meta: EchoMetadata, report: SessionProblems
) -> None:
    t = _number(value)
    if t is None:
        report.add(side, f"EchoTime {value!r} is not a number (seconds)")
    elif t <= 0:
        report.add(side, f"EchoTime {t:g} is not positive (BIDS EchoTime is in seconds)")
    elif t > MAX_ECHO_TIME_S:
        report.add(
            side,
            f"EchoTime {t:g} looks like milliseconds; BIDS EchoTime is in seconds "
            f"(e.g. {t / 1000:g})",
        )
    elif echo in meta.echo_time_s:
        if abs(meta.echo_time_s[echo] - t) > ECHO_TIME_ATOL_S:
            report.add(
                side,
                f"EchoTime {t:g} s differs from {meta.echo_time_s[echo]:g} s of the same echo's "
                f"{meta.echo_time_file[echo].name}",
            )
    else:
        meta.echo_time_s[echo], meta.echo_time_file[echo] = t, side


def check_echo_order(meta: EchoMetadata, report: SessionProblems) -> None:
    """Echo times increase with the echo index."""
    te, prev = meta.echo_time_s, None
    for echo in sorted(te):
        if prev is not None and te[echo] <= te[prev]:
            report.add(
                meta.echo_time_file[echo],
                f"EchoTime {te[echo]:g} s of echo {echo} is not larger than {te[prev]:g} s of "
                f"echo {prev}; echo times must increase with the echo index",
            )
        prev = echo


def check_one_field_strength(meta: EchoMetadata, first_file: Path, report: SessionProblems):
    """All images of one run were acquired at one MagneticFieldStrength."""
    if len(meta.field_strengths_t) > 1:
        values = ", ".join(
            f"{b:g} T ({paths[0].name})" for b, paths in sorted(meta.field_strengths_t.items())
        )
        report.add(
            first_file, f"MagneticFieldStrength differs between the images of one run: {values}"
        )


def _header(path: Path, report: SessionProblems) -> ImageHeader | None:
    """The header of a 3-D image, or None after reporting why not."""
    try:
        header = read_header(path)
    except QSMInputError as exc:
        report.add(path, str(exc).removeprefix(f"{exc.source}: "))
        return None
    if len(header.shape) != 3:
        report.add(path, f"expected a 3-D image (one echo per file), got shape {header.shape}")
        return None
    return header


def _grid_difference(a: ImageHeader, b: ImageHeader) -> str | None:
    if a.shape != b.shape:
        return f"shape {a.shape} vs {b.shape}"
    d = float(np.abs(a.affine - b.affine).max())
    if d > AFFINE_ATOL_MM:
        return f"affines differ by up to {d:.4g} mm"
    return None


def check_images(by_echo: EchoSlots, layout, report: SessionProblems) -> None:
    """From the headers: every image 3-D, magnitude and phase of each echo and every echo on
    one grid; from the data: the phase units."""
    echoes = sorted(by_echo)
    headers: dict[tuple[int, str], ImageHeader] = {}
    for echo in echoes:
        for part in ("phase", "mag"):
            if part in by_echo[echo]:
                header = _header(by_echo[echo][part], report)
                if header is not None:
                    headers[(echo, part)] = header
    # magnitude vs phase of each echo
    for echo in echoes:
        hp, hm = headers.get((echo, "phase")), headers.get((echo, "mag"))
        if hp is not None and hm is not None:
            diff = _grid_difference(hp, hm)
            if diff:
                report.add(
                    by_echo[echo]["phase"],
                    f"magnitude/phase grid mismatch with {by_echo[echo]['mag'].name}: {diff}",
                )
    # every echo vs the first echo (phase, else magnitude)
    for part in ("phase", "mag"):
        first = next((e for e in echoes if (e, part) in headers), None)
        if first is None:
            continue
        for echo in echoes:
            header = headers.get((echo, part))
            if header is None or echo == first:
                continue
            diff = _grid_difference(header, headers[(first, part)])
            if diff:
                report.add(
                    by_echo[echo][part],
                    f"echo {echo} is on a different grid than echo {first} "
                    f"({by_echo[first][part].name}): {diff}",
                )
    for echo in echoes:
        if (echo, "phase") in headers:
            _check_phase_units(headers[(echo, "phase")], layout, report)


def _check_phase_units(header: ImageHeader, layout, report: SessionProblems) -> None:
    path = Path(header.path)
    try:
        data = header.data()
    except QSMInputError as exc:
        report.add(path, str(exc).removeprefix(f"{exc.source}: "))
        return
    try:
        units = layout.get_metadata(str(path)).get("Units")
    except Exception:  # already reported with the sidecar checks
        units = None
    try:
        phase_to_radians(data, units="rad" if units == "rad" else "auto")
    except QSMInputError as exc:
        extra = ' (the sidecar says "Units": "rad")' if units == "rad" else ""
        report.add(path, f"{exc}{extra}")


def check_orientations(runs: Sequence[RunScan], pipeline: str, report: SessionProblems) -> None:
    """Enough head orientations for ``pipeline`` (:data:`MIN_ORIENTATIONS`), and for a
    multi-orientation pipeline all on one field strength."""
    need = MIN_ORIENTATIONS[pipeline]
    if not runs:
        return
    first = runs[0].first_file
    if len(runs) < need:
        found = ", ".join(r.label or "no acq-/run- entity" for r in runs)
        report.add(
            first,
            f"{pipeline} needs at least {need} head orientations (acq-/run- entities), found "
            f"{len(runs)}: {first} ({found})",
        )
    if need > 1:
        fields = {r.field_strength_t for r in runs if r.field_strength_t is not None}
        if len(fields) > 1:
            values = ", ".join(
                f"{r.label} {r.field_strength_t:g} T" for r in runs if r.field_strength_t
            )
            report.add(
                first, f"orientations on different field strengths ({values}); {pipeline} needs one"
            )
