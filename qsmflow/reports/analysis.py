"""Numbers of a subject's report: map comparisons (metrics) and the ROI table.

Which comparisons (:func:`plan_comparisons`), each on one grid:

1. the reference orientation's maps against **COSMOS** when both exist;
2. else the reference orientation's maps (or COSMOS alone) against the **simulation truth** of
   the reference orientation, when it exists;
3. optionally (``all_orientations``) every other orientation's maps against its own truth.

**Metric mask**: the orientation's V-SHARP mask (``desc-vsharp_mask``, where its local field
and so its maps are defined; the brain mask when that is missing), intersected with the COSMOS
mask (``desc-cosmos_mask``) whenever COSMOS is one of the compared maps, as ``qsmflow demo``
scores them. Metrics are :func:`qsmflow.evaluation.metrics.score` of each map (recon) against
the reference (truth) in that mask, both families.

**ROI table**: the first comparison of the reference orientation (COSMOS as the reference when
present, else the truth), over the same mask, with a label image on the reference grid
(:func:`qsmflow.evaluation.roi_table.roi_table`, SD with ddof 1).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import QSMInputError
from ..evaluation.metrics import score
from ..evaluation.roi_table import RoiTable, SubjectMaps, read_label_names, roi_table
from ..io.nifti import Volume, load_volume
from ..physics.validation import check_same_affine
from .collect import Orientation, SubjectFiles

__all__ = [
    "COSMOS",
    "TRUTH",
    "Comparison",
    "ComparisonPlan",
    "compute_comparison",
    "label_names_for",
    "method_order",
    "plan_comparisons",
    "subject_roi_table",
]

#: Row names of the two kinds of reference.
COSMOS = "COSMOS"
TRUTH = "truth"


def method_order(methods: Mapping[str, Any]) -> list[str]:
    """Method names in the pipeline's order (``tkd tsvd cfl2 ndi star tv isdu``), then others."""
    from ..steps.inversion import INVERSION_METHODS

    known = [m for m in INVERSION_METHODS if m in methods]
    return known + sorted(m for m in methods if m not in INVERSION_METHODS)


@dataclass
class ComparisonPlan:
    """What to compare: ``maps`` (name -> file) against ``reference`` in the given masks."""

    orientation: Orientation
    reference_name: str
    reference: Path
    maps: dict[str, Path]
    masks: list[Path]
    mask_description: str


@dataclass
class Comparison:
    """A computed comparison: data (float64, file voxel order), mask, affine and metrics."""

    plan: ComparisonPlan
    reference: np.ndarray
    maps: dict[str, np.ndarray]
    mask: np.ndarray
    affine: np.ndarray
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def n_mask(self) -> int:
        """Voxels in the metric mask."""
        return int(np.count_nonzero(self.mask))


def _metric_masks(ori: Orientation, cosmos_mask: Path | None) -> tuple[list[Path], str]:
    own = ori.derivatives.get("local_mask")
    what = "V-SHARP mask (desc-vsharp_mask)"
    if own is None:
        own, what = ori.derivatives.get("brain_mask"), "brain mask (desc-brain_mask)"
    masks = [own] if own is not None else []
    if cosmos_mask is not None:
        masks.append(cosmos_mask)
        what += " x COSMOS mask (desc-cosmos_mask)"
    return masks, f"{ori.name} {what}"


def plan_comparisons(
    files: SubjectFiles, *, all_orientations: bool = False
) -> list[ComparisonPlan]:
    """The comparisons a report shows, reference orientation first.

    Reference orientation: its maps against COSMOS when both exist, else its maps (and COSMOS)
    against the simulation truth. With ``all_orientations`` also every other orientation's
    maps against its own truth. Comparisons without a metric mask are left out.
    """
    plans: list[ComparisonPlan] = []
    cosmos = files.derivatives.get("cosmos_chi")
    cosmos_mask = files.derivatives.get("cosmos_mask")
    for i, ori in enumerate(files.orientations):
        if i > 0 and not all_orientations:
            break
        maps = {m: ori.chi[m] for m in method_order(ori.chi)}
        if i == 0 and cosmos is not None and maps:
            masks, what = _metric_masks(ori, cosmos_mask)
            plans.append(ComparisonPlan(ori, COSMOS, cosmos, maps, masks, what))
            continue
        if i == 0 and cosmos is not None:
            maps[COSMOS] = cosmos
        if ori.truth is not None and maps:
            use_cosmos_mask = cosmos_mask if COSMOS in maps else None
            masks, what = _metric_masks(ori, use_cosmos_mask)
            plans.append(ComparisonPlan(ori, TRUTH, ori.truth, maps, masks, what))
    return [p for p in plans if p.masks]


def _check_grid(vol: Volume, ref: Volume, role: str) -> None:
    if vol.data.shape[:3] != ref.data.shape[:3]:
        raise QSMInputError(
            f"{role} grid {vol.data.shape} does not match the reference grid "
            f"{ref.data.shape} ({ref.path})",
            vol.path,
        )
    check_same_affine(vol.affine, ref.affine, f"{role} vs reference ({ref.path})", vol.path)


def compute_comparison(plan: ComparisonPlan) -> Comparison:
    """Load the plan's files (one grid, errors name the file) and score every map.

    ``metrics[name]`` is :func:`qsmflow.evaluation.metrics.score` ``(map, reference, mask)``.
    """
    ref = load_volume(plan.reference, dtype=np.float64)
    maps: dict[str, np.ndarray] = {}
    for name, path in plan.maps.items():
        vol = load_volume(path, dtype=np.float64)
        _check_grid(vol, ref, f"map {name!r}")
        maps[name] = vol.data
    mask = np.ones(ref.data.shape, dtype=bool)
    for path in plan.masks:
        mvol = load_volume(path, dtype=None)
        _check_grid(mvol, ref, "mask")
        mask &= np.asarray(mvol.data) > 0
    if not mask.any():
        raise QSMInputError("the metric mask is empty", str(plan.masks[0]))
    if not np.all(np.isfinite(ref.data[mask])):
        raise QSMInputError("reference contains NaN or inf inside the mask", str(plan.reference))
    out = Comparison(plan=plan, reference=ref.data, maps=maps, mask=mask, affine=ref.affine)
    for name, data in maps.items():
        out.metrics[name] = score(data, ref.data, mask)
    return out


def label_names_for(
    labels: str | os.PathLike, names: str | os.PathLike | Mapping[int, str] | None = None
) -> dict[int, str] | None:
    """Names of a label image's labels: ``names`` (a mapping or a file) when given, else a
    BIDS ``<stem>.tsv`` beside the image, else a ``dseg.tsv`` in its folder or the folders
    above it up to the dataset root (the first holding ``dataset_description.json``); None
    when none is found (:func:`~qsmflow.evaluation.roi_table.roi_table` then uses the head
    model's names)."""
    if isinstance(names, Mapping):
        return {int(k): str(v) for k, v in names.items()}
    if names is not None:
        return read_label_names(names)
    p = Path(labels)
    stem = p.name.split(".")[0]
    candidates = [p.with_name(f"{stem}.tsv")]
    for folder in [p.parent, *p.parent.parents][:6]:
        candidates.append(folder / "dseg.tsv")
        if (folder / "dataset_description.json").is_file():
            break
    for c in candidates:
        if c.is_file():
            return read_label_names(c)
    return None


def subject_roi_table(
    comparison: Comparison,
    subject: str,
    labels: str | os.PathLike,
    label_names: str | os.PathLike | Mapping[int, str] | None = None,
) -> RoiTable:
    """The Table-1 ROI statistics of a comparison's maps in the label image ``labels`` (on the
    reference's grid; errors name the file), inside the comparison's mask."""
    ref = Volume(comparison.reference, comparison.affine, str(comparison.plan.reference))
    lab = load_volume(labels, dtype=None)
    _check_grid(lab, ref, "labels")
    subject_maps = SubjectMaps(
        reference=comparison.reference,
        maps=comparison.maps,
        labels=lab.data,
        mask=comparison.mask,
        label_names=label_names_for(labels, label_names),
        reference_name=comparison.plan.reference_name,
    )
    return roi_table({subject: subject_maps})
