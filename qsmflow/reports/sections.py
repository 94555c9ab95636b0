"""The sections of a subject's report, each a :class:`~qsmflow.reports.page.Section`.

A figure or table that cannot be made becomes a highlighted note in its section (with the
error), so a partial output still gives a whole report.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..io.naming import DERIVATIVES
from ..io.nifti import read_header
from ..physics.geometry import b0_dir_from_affine, voxel_size_from_affine
from ..registration.files import b0_dir_from_files
from .analysis import Comparison, method_order
from .collect import Orientation, SubjectFiles, read_sidecar
from .page import Section, cell, definition_list, esc, figure, link, note, problem, table
from .plots import (
    FigureEntry,
    chimaps_figure,
    comparison_plot,
    cosmos_figure,
    fields_figure,
    mask_figure,
    registration_figures,
)

LOGGER = logging.getLogger("qsmflow.reports")

#: Metric columns of a comparison table: (key in score()'s result, header, decimals).
METRIC_COLUMNS = (
    ("qsmci.nrmse", "NRMSE % (QSM-CI)", 2),
    ("qsmci.hfen", "HFEN % (QSM-CI)", 2),
    ("qsmci.xsim", "XSIM (QSM-CI)", 4),
    ("qsmci.correlation", "r (QSM-CI)", 4),
    ("challenge.rmse", "RMSE % (2016)", 2),
    ("challenge.psnr", "PSNR dB (2016)", 2),
    ("challenge.ssim", "SSIM (2016)", 4),
    ("challenge.hfen", "HFEN % (2016)", 2),
    ("challenge.xsim", "XSIM (Challenge 2.0)", 4),
)


@dataclass
class ReportContext:
    """What the sections share: the subject's files, where figures go, the run record."""

    files: SubjectFiles
    figures_folder: Path
    figures_href: str
    window: tuple[float, float]
    record: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    n_figures: int = 0

    @property
    def output_dir(self) -> Path:
        return self.files.output_dir

    def href(self, path: str | Path | None) -> str | None:
        """``path`` relative to ``OUTPUT_DIR`` (POSIX) when it is an existing file there."""
        if path is None:
            return None
        p = Path(path)
        p = p if p.is_absolute() else self.output_dir / p
        try:
            rel = p.resolve().relative_to(self.output_dir.resolve())
        except ValueError:
            return None
        return rel.as_posix() if p.is_file() else None

    def file_link(self, path: str | Path | None, text: str | None = None) -> str:
        """A link to a file in ``OUTPUT_DIR``, or its name as text when it is not there."""
        href = self.href(path)
        label = text if text is not None else (Path(path).name if path else "n/a")
        return link(href, label) if href else esc(label)

    def fail(self, what: str, exc: BaseException) -> str:
        """Record a part of the report that could not be made; its highlighted note."""
        msg = f"{what}: could not be made ({type(exc).__name__}: {exc})"
        LOGGER.warning("%s: %s", self.files.label, msg)
        self.problems.append(msg)
        return problem(msg)

    def figures(self, what: str, make: Callable[..., Any], *args: Any) -> str:
        """Run a figure maker (``make(*args, folder, ...)``) and return the figures' HTML."""
        try:
            made = make(*args)
        except Exception as exc:  # a report shows what it can: one bad file is not fatal
            return self.fail(what, exc)
        entries = made if isinstance(made, list) else [made]
        self.n_figures += len(entries)
        return "\n".join(self._figure_html(e) for e in entries)

    def _figure_html(self, entry: FigureEntry) -> str:
        return figure(f"{self.figures_href}/{entry.name}", entry.alt, entry.caption)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def subject_status(ctx: ReportContext) -> dict[str, Any] | None:
    """This subject's entry of the run record (status, failures), or None."""
    if ctx.record is None:
        return None
    return ctx.record.get("subjects", {}).get(ctx.files.label)


def errors_section(ctx: ReportContext) -> Section | None:
    """The failed steps of the run (node, message, crash report), shown first; None if none."""
    status = subject_status(ctx) or {}
    failures = status.get("failures") or []
    problems = status.get("problems") or []
    workflow = (ctx.record or {}).get("workflow_errors") or []
    if not (failures or problems or workflow):
        return None
    run_id = (ctx.record or {}).get("run_id", "?")
    parts = [
        f'<p><strong class="status-{esc(status.get("status", "failed"))}">'
        f"{esc(str(status.get('status', 'failed')).upper())}</strong> in run {esc(run_id)}: "
        f"{len(failures)} step(s) failed. The outputs below are what exists.</p>"
    ]
    if failures:
        rows = [
            [
                f"<td><code>{esc(f.get('node', ''))}</code></td>",
                cell(f.get("message", "")),
                f"<td>{ctx.file_link(f.get('crash_file'), 'crash report')}</td>"
                if f.get("crash_file")
                else "<td>n/a</td>",
            ]
            for f in failures
        ]
        parts.append(table(["step (node)", "message", "crash report"], rows, css_class="failures"))
    if problems:
        parts.append("<p>Input problems (the subject was not run):</p>")
        parts.append("<ul>" + "".join(f"<li>{esc(p)}</li>" for p in problems) + "</ul>")
    if workflow:
        parts.append("<p>Workflow errors:</p>")
        parts.append("<ul>" + "".join(f"<li>{esc(p)}</li>" for p in workflow) + "</ul>")
    return Section("errors", "Errors", "\n".join(parts), css_class="errors")


# --------------------------------------------------------------------------------------------
# Summary and outputs
# --------------------------------------------------------------------------------------------


def _grid_file(ori: Orientation) -> Path | None:
    have = ori.derivatives
    for p in (ori.magnitude1, have.get("brain_mask"), have.get("local_field")):
        if p is not None and p.is_file():
            return p
    return None


def _vector(v: Sequence[float] | None, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    return "(" + ", ".join(f"{float(x):.{digits}f}" for x in v) + ")"


def _angle_deg(a: Sequence[float], b: Sequence[float]) -> float:
    u = np.asarray(a, dtype=np.float64)
    w = np.asarray(b, dtype=np.float64)
    c = abs(float(np.dot(u, w) / (np.linalg.norm(u) * np.linalg.norm(w))))  # sign-free
    return math.degrees(math.acos(min(1.0, c)))


def _orientation_row(ctx: ReportContext, i: int, ori: Orientation, b0_ref: list) -> list[str]:
    grid = _grid_file(ori)
    vox = shape = b0 = None
    if grid is not None:
        try:
            header = read_header(grid)
            vox = voxel_size_from_affine(header.affine)
            shape = header.shape[:3]
            b0 = b0_dir_from_affine(header.affine, source=str(grid))
        except Exception as exc:  # unreadable header: say so, keep the row
            ctx.fail(f"grid of {ori.name}", exc)
    tes = ori.echo_times_s
    field_t = ori.field_strength_t
    if field_t is None:
        field_t = read_sidecar(ori.derivatives.get("local_field")).get("MagneticFieldStrength")
    angle = None
    if i < len(b0_ref) and b0_ref[i] is not None and b0_ref[0] is not None:
        angle = _angle_deg(b0_ref[i], b0_ref[0])
    rotation = read_sidecar(ori.derivatives.get("rigid_xfm")).get("RotationAngleDeg")
    return [
        f"<td>{esc(ori.name)}{' (reference)' if i == 0 else ''}</td>",
        cell(len(ori.echoes) if ori.echoes else len(tes) or None),
        cell(", ".join(f"{t * 1e3:g}" for t in tes) if tes else None),
        cell(float(field_t) if field_t is not None else None, digits=1),
        cell(_vector(vox, 2) if vox is not None else None),
        cell(" x ".join(str(n) for n in shape) if shape else None),
        cell(_vector(b0) if b0 is not None else None),
        cell(_vector(b0_ref[i]) if i < len(b0_ref) and b0_ref[i] is not None else None),
        cell(angle, digits=1),
        cell(float(rotation) if rotation is not None else None, digits=1),
    ]


def _b0_in_reference(ctx: ReportContext) -> list[Sequence[float] | None]:
    """Each orientation's B0 direction in the reference's array axes: through its rigid
    transform (as COSMOS uses it), else the COSMOS sidecar's ``B0Directions``."""
    files = ctx.files
    cosmos = read_sidecar(files.derivatives.get("cosmos_chi")).get("B0Directions") or []
    ref_grid = _grid_file(files.reference) if files.reference else None
    out: list[Sequence[float] | None] = []
    for i, ori in enumerate(files.orientations):
        b0 = cosmos[i] if i < len(cosmos) else None
        xfm, grid = ori.derivatives.get("rigid_xfm"), _grid_file(ori)
        try:
            if i == 0 and ref_grid is not None:
                b0 = b0_dir_from_affine(read_header(ref_grid).affine)
            elif xfm is not None and grid is not None and ref_grid is not None:
                b0 = b0_dir_from_files(xfm, grid, ref_grid)
        except Exception as exc:  # unreadable transform or header: say so, keep the row
            ctx.fail(f"B0 direction of {ori.name}", exc)
        out.append(b0)
    return out


def summary_section(ctx: ReportContext) -> Section:
    """Subject, inputs, echoes and echo times, orientations, B0, voxel size, field strength."""
    files = ctx.files
    b0_ref = _b0_in_reference(ctx)
    items = [("subject", esc(files.subject))]
    if files.session:
        items.append(("session", esc(files.session)))
    items.append(("BIDS input", esc(files.bids_dir) if files.bids_dir else "not found"))
    items.append(("derivatives", esc(files.output_dir)))
    items.append(("orientations", esc(len(files.orientations))))
    parts = [definition_list(items)]
    if files.orientations:
        rows = [_orientation_row(ctx, i, o, b0_ref) for i, o in enumerate(files.orientations)]
        header = [
            "orientation",
            "echoes",
            "TE (ms)",
            "B0 (T)",
            "voxel size (mm)",
            "matrix",
            "B0 direction (own array axes)",
            "B0 direction (reference array axes)",
            "B0 angle to reference (deg)",
            "head rotation to reference (deg)",
        ]
        parts.append(table(header, rows, css_class="orientations"))
        parts.append(
            note(
                "B0 direction: unit vector in the scan's array axes, from its affine; in the "
                "reference's array axes through the rigid transform (desc-rigid_xfm), as COSMOS "
                "uses it (else the COSMOS sidecar's B0Directions). B0 angle: between that and "
                "the reference's B0. Head rotation: angle of the rigid transform (its sidecar's "
                "RotationAngleDeg)."
            )
        )
    else:
        parts.append(problem("No input or output was found for this subject."))
    parts.append(_inputs_html(ctx))
    return Section("summary", "Summary", "\n".join(parts))


def _inputs_html(ctx: ReportContext) -> str:
    files = ctx.files
    lines = []
    for ori in files.orientations:
        names: list[str] = []
        for e in ori.echoes:
            for p in (e.magnitude, e.phase):
                if p is not None:
                    names.append(_relative(p, files.bids_dir))
        if not names:
            sources = read_sidecar(ori.derivatives.get("brain_mask")).get("Sources") or []
            names = [str(s) for s in sources]
        listing = "".join(f"<li><code>{esc(n)}</code></li>" for n in names) or "<li>none found</li>"
        lines.append(f"<li>{esc(ori.name)}<ul>{listing}</ul></li>")
    body = "<ul>" + "".join(lines) + "</ul>" if lines else note("none found")
    return f"<details><summary>Input files (BIDS)</summary>{body}</details>"


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            pass
    return str(path)


def outputs_section(ctx: ReportContext) -> Section:
    """Every derivative found, linked, with its meaning (:data:`DERIVATIVES`)."""
    files = ctx.files
    meanings = {}
    for key, path in files.derivatives.items():
        meanings[path] = DERIVATIVES[key].meaning
    for ori in files.orientations:
        for key, path in ori.derivatives.items():
            meanings[path] = DERIVATIVES[key].meaning
        for method, path in ori.chi.items():
            meanings[path] = f"{DERIVATIVES['chi'].meaning}: {method}"
    rows = [[f"<td>{ctx.file_link(p, p.name)}</td>", cell(meanings[p])] for p in files.all_files()]
    if not rows:
        return Section("outputs", "Outputs", problem("No derivative of this subject was found."))
    per_ori = []
    for ori in files.orientations:
        per_ori.append(
            f"{esc(ori.name)}: {len(ori.derivatives) + len(ori.chi)} file(s)"
            + ("" if ori.derivatives else " (no output: see Errors)")
        )
    head = note("; ".join(per_ori)) if per_ori else ""
    return Section("outputs", "Outputs", head + "\n" + table(["file", "content"], rows))


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def qc_section(ctx: ReportContext) -> Section:
    """Per orientation: brain-mask outline on the magnitude, total and local field."""
    parts = []
    for ori in ctx.files.orientations:
        parts.append(f"<h3>{esc(ori.name)}</h3>")
        have = ori.derivatives
        if "brain_mask" not in have:
            parts.append(note(f"{ori.name}: no brain mask (the step did not finish)."))
        elif ori.magnitude1 is None:
            parts.append(note(f"{ori.name}: no magnitude input found to show the mask on."))
        else:
            parts.append(
                ctx.figures(f"brain mask of {ori.name}", mask_figure, ori, ctx.figures_folder)
            )
        if not {"field_hz", "local_field", "local_mask"} <= set(have):
            parts.append(note(f"{ori.name}: no total and local field (the steps did not finish)."))
        else:
            parts.append(
                ctx.figures(f"fields of {ori.name}", fields_figure, ori, ctx.figures_folder)
            )
    return Section("qc", "Quality control", "\n".join(parts) or note("nothing to show"))


def maps_section(ctx: ReportContext) -> Section:
    """Every susceptibility map, one figure per orientation (methods as rows), and COSMOS."""
    parts = []
    for ori in ctx.files.orientations:
        if not ori.chi:
            continue
        methods = method_order(ori.chi)
        parts.append(f"<h3>{esc(ori.name)}</h3>")
        parts.append(
            ctx.figures(
                f"susceptibility maps of {ori.name}",
                chimaps_figure,
                ori,
                methods,
                ctx.figures_folder,
                ctx.window,
            )
        )
    if "cosmos_chi" in ctx.files.derivatives:
        parts.append("<h3>COSMOS</h3>")
        parts.append(
            ctx.figures("COSMOS", cosmos_figure, ctx.files, ctx.figures_folder, ctx.window)
        )
    body = "\n".join(parts) or note("No susceptibility map was found.")
    return Section("maps", "Susceptibility maps", body)


def registration_section(ctx: ReportContext) -> Section | None:
    """Each registered orientation's magnitude on the reference grid (checkerboard, contour)."""
    files = ctx.files
    ref = files.reference
    moving = [o for o in files.orientations[1:] if "rigid_xfm" in o.derivatives]
    if ref is None or not moving:
        return None
    parts = []
    for ori in moving:
        side = read_sidecar(ori.derivatives["rigid_xfm"])
        items = [
            ("transform", ctx.file_link(ori.derivatives["rigid_xfm"])),
            ("backend", esc(side.get("RegistrationBackend", "n/a"))),
            ("rotation (deg)", esc(_fmt(side.get("RotationAngleDeg"), 2))),
            ("translation (mm)", esc(_vector(side.get("TranslationMM"), 2))),
        ]
        parts.append(f"<h3>{esc(ori.name)} to {esc(ref.name)}</h3>")
        parts.append(definition_list(items))
        if ori.magnitude1 is None or ref.magnitude1 is None:
            parts.append(note("No magnitude input found (BIDS folder) to show the registration."))
            continue
        parts.append(
            ctx.figures(
                f"registration of {ori.name}", registration_figures, ori, ref, ctx.figures_folder
            )
        )
    return Section("registration", "Registration", "\n".join(parts))


def _fmt(value: Any, digits: int) -> str:
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return "n/a"


def _metric_value(result: dict[str, Any], key: str) -> float | None:
    family, name = key.split(".", 1)
    value = result.get(family, {}).get(name)
    return float(value) if isinstance(value, (int, float)) else None


def metrics_table(comp: Comparison) -> str:
    """One row per map, the :data:`METRIC_COLUMNS` of its score (exact values in
    ``data-value``, keys in ``data-metric``)."""
    rows = []
    for name, result in comp.metrics.items():
        row = [f'<th scope="row" data-method="{esc(name)}">{esc(name)}</th>']
        row += [
            cell(_metric_value(result, key), digits=d, key=key) for key, _h, d in METRIC_COLUMNS
        ]
        rows.append(row)
    header = ["map", *(h for _k, h, _d in METRIC_COLUMNS)]
    plan = comp.plan
    caption = (
        f"{plan.orientation.name}: metrics against {plan.reference_name} in the "
        f"{plan.mask_description} ({comp.n_mask} voxels)"
    )
    cls = f"metrics metrics-{plan.orientation.label or 'run'}-{plan.reference_name.lower()}"
    return table(header, rows, caption=caption, css_class=cls)


def comparison_section(
    ctx: ReportContext, comparisons: Sequence[Comparison], failures: Sequence[str]
) -> Section:
    """Each comparison's figure (reference row first, metrics under each row) and its table."""
    parts = list(failures)
    for comp in comparisons:
        plan = comp.plan
        parts.append(f"<h3>{esc(plan.orientation.name)}: against {esc(plan.reference_name)}</h3>")
        parts.append(
            ctx.figures(
                f"comparison of {plan.orientation.name} with {plan.reference_name}",
                comparison_plot,
                comp,
                ctx.figures_folder,
                ctx.window,
            )
        )
        parts.append(metrics_table(comp))
    if not parts:
        parts.append(note("No reference (COSMOS or a simulation truth) on a map's grid."))
    else:
        parts.append(
            note(
                "Metrics: qsmflow.evaluation.metrics.score (as qsmflow evaluate): QSM-CI "
                "(demeaned NRMSE, HFEN, XSIM, Pearson r) and the 2016 challenge (RMSE, PSNR, "
                "SSIM, HFEN) / Challenge 2.0 XSIM, each map against the reference in the stated "
                "mask; susceptibility in ppm."
            )
        )
    return Section("comparison", "Comparison", "\n".join(parts))


def rois_section(ctx: ReportContext, html_or_note: str) -> Section:
    """The ROI table (built by the caller)."""
    return Section("rois", "Regions of interest", html_or_note)


# --------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------


def _backends_used(files: SubjectFiles) -> str:
    found: dict[str, set[str]] = {"mask": set(), "registration": set()}
    for ori in files.orientations:
        m = read_sidecar(ori.derivatives.get("brain_mask")).get("MaskBackend")
        r = read_sidecar(ori.derivatives.get("rigid_xfm")).get("RegistrationBackend")
        if m:
            found["mask"].add(str(m))
        if r:
            found["registration"].add(str(r))
    return ", ".join(f"{k}: {'/'.join(sorted(v)) or 'n/a'}" for k, v in found.items())


def _settings(ctx: ReportContext) -> tuple[Path | None, dict[str, Any] | None]:
    record = ctx.record or {}
    path = record.get("settings_file")
    if path:
        p = Path(path) if Path(path).is_absolute() else ctx.output_dir / path
    else:
        found = sorted((ctx.output_dir / "logs").glob("config_*.json"))
        p = found[-1] if found else None
    if p is None or not p.is_file():
        return p, None
    try:
        return p, json.loads(p.read_text())
    except (OSError, ValueError):
        return p, None


def _generated_by(output_dir: Path) -> dict[str, Any]:
    try:
        desc = json.loads((output_dir / "dataset_description.json").read_text())
        return {"name": desc.get("Name"), **(desc.get("GeneratedBy") or [{}])[0]}
    except (OSError, ValueError, AttributeError, IndexError, TypeError):
        return {}


def provenance_section(ctx: ReportContext) -> Section:
    """Version, pipeline, settings, command line, backends, plugin, times, subject status."""
    record = ctx.record or {}
    settings_path, settings = _settings(ctx)
    gen = _generated_by(ctx.output_dir)
    pipeline = record.get("pipeline") or (settings or {}).get("pipeline") or "n/a"
    items = [
        ("qsmflow version", esc(record.get("qsmflow_version") or gen.get("Version") or "n/a")),
        ("report made by", esc(f"qsmflow {__version__}")),
        ("pipeline", esc(pipeline)),
    ]
    if record:
        record_link = ctx.file_link(record.get("record_file"), "run record")
        plugin = str(record.get("plugin"))
        if record.get("nprocs"):
            plugin += f", {record['nprocs']} processes"
        configured = record.get("backends") or {}
        items += [
            ("run", f"{esc(record.get('run_id'))} ({record_link})"),
            ("command line", f"<code>{esc(record.get('command_line', ''))}</code>"),
            ("preset", esc(record.get("preset") or "none (defaults and options)")),
            ("plugin", esc(plugin)),
            ("start", esc(record.get("start", "n/a"))),
            ("end", esc(record.get("end", "n/a"))),
            ("duration", esc(f"{float(record.get('seconds', math.nan)):.1f} s")),
            ("log", ctx.file_link(record.get("log_file"))),
            (
                "backends configured",
                esc(", ".join(f"{k}: {v}" for k, v in configured.items()) or "n/a"),
            ),
        ]
    else:
        items.append(("run record", esc("none found (outputs of an older run)")))
    items.append(("backends used (sidecars)", esc(_backends_used(ctx.files))))
    items.append(("settings", ctx.file_link(settings_path) if settings_path else "n/a"))
    parts = [definition_list(items)]
    if settings is not None:
        parts.append(
            "<details><summary>Settings used</summary><pre>"
            + esc(json.dumps(settings, indent=2))
            + "</pre></details>"
        )
    subjects = record.get("subjects") or {}
    if subjects:
        rows = [
            [
                f"<td>{esc(label)}</td>",
                f'<td class="status-{esc(s.get("status"))}">{esc(s.get("status"))}</td>',
                cell(len(s.get("failures") or [])),
            ]
            for label, s in subjects.items()
        ]
        parts.append(table(["subject", "status", "failed steps"], rows, caption="This run"))
    return Section("provenance", "Provenance", "\n".join(parts))
