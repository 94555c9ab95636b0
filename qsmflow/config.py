"""Pipeline settings: one typed object, read from TOML presets and command-line options.

The command line turns its options into a :class:`PipelineConfig`; workflow factories take
plain typed arguments taken from it (never the argparse namespace). Presets live in the
repository's top-level ``workflows/`` folder; a preset is a TOML file whose tables mirror the
dataclasses below, e.g.::

    pipeline = "cosmos"

    [masking]
    backend = "python"

    [cosmos]
    method = "lsq"
    lam = 1e-3

Units: radii in mm, echo times in seconds, susceptibility and fields in ppm.
Unknown keys are errors (a typo must not be silently ignored).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

from .errors import QSMInputError

PIPELINES = ("qsm", "cosmos", "training-data")
BACKENDS = ("auto", "fsl", "python")
UNWRAPPING = ("auto", "laplacian", "lsq", "temporal")
INVERSIONS = ("tkd", "tsvd", "cfl2", "ndi", "star", "isdu")
#: Options of the ``isdu`` inversion (keywords of qsmflow.models.inference.invert_isdu):
#: weights (checkpoint file; relative paths are taken from the directory ``qsmflow run`` is
#: started in; default: the shipped qsmflow/data/isdu_default.pt), iterations (K),
#: shared_weights (bool), device (auto, cpu, cuda), tile_size (voxels) and halo (voxels).
ISDU_OPTIONS = ("weights", "iterations", "shared_weights", "device", "tile_size", "halo")


@dataclass
class MaskingConfig:
    """Brain extraction from the first-echo magnitude."""

    backend: str = "auto"  #: auto (FSL BET if found, else python), fsl or python
    frac: float = 0.5  #: BET fractional intensity threshold (FSL backend only)


@dataclass
class FieldConfig:
    """Multi-echo phase -> field map (Hz)."""

    phase_units: str = "auto"  #: auto, rad, siemens, siemens-raw
    #: auto (temporal with >= 2 echoes, else laplacian), laplacian, lsq or temporal
    #: (see qsmflow.physics.multiecho.multiecho_field)
    unwrapping: str = "auto"


@dataclass
class BackgroundConfig:
    """V-SHARP background field removal (Hz in, ppm out)."""

    radii_mm: list[float] | None = None  #: None: 12..1 mm less single-voxel spheres
    threshold: float = 0.05
    deconvolution: str = "per_radius"  #: per_radius or largest (classic V-SHARP)


@dataclass
class InversionConfig:
    """Single-orientation dipole inversion(s) of the ``qsm`` pipeline."""

    methods: list[str] = dc_field(default_factory=lambda: ["tkd"])
    #: extra keyword options per method, e.g. {"tkd": {"threshold": 0.15}} or
    #: {"isdu": {"weights": "isdu_k4.pt", "tile_size": 96}} (see ISDU_OPTIONS)
    options: dict[str, dict[str, Any]] = dc_field(default_factory=dict)


@dataclass
class RegistrationConfig:
    """Rigid registration of each orientation's magnitude to the reference orientation."""

    backend: str = "auto"  #: auto (FSL FLIRT if found, else python/SimpleITK), fsl or python


@dataclass
class CosmosConfig:
    """Multi-orientation inversion (see qsmflow.physics.cosmos.cosmos)."""

    method: str = "lsq"  #: lsq (masked regularised least squares) or closed
    lam: float | None = None  #: None: the method's default (1e-3 for lsq, 0 for closed)
    iterations: int = 30


@dataclass
class TrainingDataConfig:
    """Patches of training pairs (see qsmflow.training.patches)."""

    patch_size: int = 64
    stride: int = 32
    min_mask_fraction: float = 0.125


@dataclass
class ExecutionConfig:
    """How Nipype runs the graph."""

    plugin: str = "Linear"
    nprocs: int | None = None
    plugin_args: dict[str, Any] = dc_field(default_factory=dict)


@dataclass
class PipelineConfig:
    """Everything a ``qsmflow run`` needs besides the input/output folders."""

    pipeline: str = "qsm"
    masking: MaskingConfig = dc_field(default_factory=MaskingConfig)
    field: FieldConfig = dc_field(default_factory=FieldConfig)
    background: BackgroundConfig = dc_field(default_factory=BackgroundConfig)
    inversion: InversionConfig = dc_field(default_factory=InversionConfig)
    registration: RegistrationConfig = dc_field(default_factory=RegistrationConfig)
    cosmos: CosmosConfig = dc_field(default_factory=CosmosConfig)
    training: TrainingDataConfig = dc_field(default_factory=TrainingDataConfig)
    execution: ExecutionConfig = dc_field(default_factory=ExecutionConfig)

    def validate(self, source: str | None = None) -> PipelineConfig:
        """Check every choice; raise QSMInputError naming ``source`` (the preset file)."""
        checks = [
            ("pipeline", self.pipeline, PIPELINES),
            ("masking.backend", self.masking.backend, BACKENDS),
            ("registration.backend", self.registration.backend, BACKENDS),
            ("field.unwrapping", self.field.unwrapping, UNWRAPPING),
            (
                "field.phase_units",
                self.field.phase_units,
                ("auto", "rad", "siemens", "siemens-raw"),
            ),
            ("background.deconvolution", self.background.deconvolution, ("per_radius", "largest")),
            ("cosmos.method", self.cosmos.method, ("lsq", "closed")),
        ]
        for key, value, allowed in checks:
            if value not in allowed:
                raise QSMInputError(f"{key} = {value!r}; choose from {', '.join(allowed)}", source)
        if not self.inversion.methods:
            raise QSMInputError("inversion.methods is empty", source)
        for m in [*self.inversion.methods, *self.inversion.options]:
            if m not in INVERSIONS:
                raise QSMInputError(
                    f"unknown inversion method {m!r}; choose from {', '.join(INVERSIONS)}", source
                )
        if "isdu" in self.inversion.options:
            check_isdu_options(self.inversion.options["isdu"], source)
        t = self.training
        if t.patch_size < 8 or t.stride < 1 or not 0 <= t.min_mask_fraction < 1:
            raise QSMInputError(
                "training: need patch_size >= 8, stride >= 1, 0 <= min_mask_fraction < 1", source
            )
        if self.execution.nprocs is not None and self.execution.nprocs < 1:
            raise QSMInputError("execution.nprocs must be >= 1", source)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_isdu_options(options: Any, source: str | None = None) -> dict[str, Any]:
    """Return the ``isdu`` options as a dict; unknown keys or bad values raise QSMInputError."""
    if not isinstance(options, dict):
        raise QSMInputError("inversion.options.isdu must be a table", source)
    opts = dict(options)
    unknown = sorted(set(opts) - set(ISDU_OPTIONS))
    if unknown:
        raise QSMInputError(
            f"unknown isdu option(s) {', '.join(unknown)}; known: {', '.join(ISDU_OPTIONS)}",
            source,
        )
    for key in ("iterations", "tile_size", "halo"):
        value = opts.get(key)
        low = 0 if key == "halo" else 1
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise QSMInputError(f"isdu option {key} must be an integer, got {value!r}", source)
        if value is not None and value < low:
            raise QSMInputError(f"isdu option {key} must be >= {low}, got {value}", source)
    if opts.get("shared_weights") is not None and not isinstance(opts["shared_weights"], bool):
        raise QSMInputError("isdu option shared_weights must be true or false", source)
    if opts.get("device", "auto") not in ("auto", "cpu", "cuda"):
        raise QSMInputError(
            f"isdu option device must be auto, cpu or cuda, got {opts['device']!r}", source
        )
    if opts.get("weights") is not None and not isinstance(opts["weights"], (str, os.PathLike)):
        raise QSMInputError("isdu option weights must be a file path", source)
    return opts


def _update(obj: Any, values: dict[str, Any], where: str, source: str | None) -> None:
    known = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in known:
            raise QSMInputError(
                f"unknown setting {where}{key!r} (known: {', '.join(known)})", source
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise QSMInputError(f"{where}{key} must be a table", source)
            _update(current, value, f"{where}{key}.", source)
        else:
            setattr(obj, key, value)


def config_from_dict(values: dict[str, Any], source: str | None = None) -> PipelineConfig:
    cfg = PipelineConfig()
    _update(cfg, values, "", source)
    return cfg.validate(source)


def load_config(path: str | Path) -> PipelineConfig:
    """Read a TOML preset (see the module docstring); errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise QSMInputError("config file not found", str(p))
    try:
        values = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise QSMInputError(f"not valid TOML ({exc})", str(p)) from exc
    return config_from_dict(values, str(p))
