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

from .backends import BACKENDS, DEFAULT_BET_FRAC
from .errors import QSMInputError
from .physics.bgremove import DECONVOLUTIONS, DEFAULT_THRESHOLD
from .physics.cosmos import COSMOS_ITERATIONS, COSMOS_METHODS
from .physics.inversion import methods_taking
from .physics.multiecho import UNWRAPPING_METHODS
from .physics.validation import PHASE_UNITS
from .steps.inversion import INVERSION_METHODS, NETWORK_METHODS, check_network_options
from .training.patch_grid import MIN_MASK_FRACTION, PATCH_SIZE, STRIDE

PIPELINES = ("qsm", "cosmos", "training-data")
# The other choice lists (BACKENDS, UNWRAPPING_METHODS, PHASE_UNITS, DECONVOLUTIONS,
# INVERSION_METHODS, COSMOS_METHODS) and the network options (steps.inversion.NETWORK_OPTIONS) live
# beside their implementations, so a preset's checks, the interfaces' traits and the command
# line's choices cannot drift apart.


@dataclass
class MaskingConfig:
    """Brain extraction from the first-echo magnitude."""

    backend: str = "auto"  #: auto (FSL BET if found, else python), fsl or python
    frac: float = DEFAULT_BET_FRAC  #: BET fractional intensity threshold (FSL backend only)


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
    threshold: float = DEFAULT_THRESHOLD
    deconvolution: str = DECONVOLUTIONS[0]  #: per_radius or largest (classic V-SHARP)


@dataclass
class InversionConfig:
    """Single-orientation dipole inversion(s) of the ``qsm`` pipeline."""

    #: default: TV with magnitude weights, the most accurate on the realistic-acquisition
    #: benchmark (README "Which inversion")
    methods: list[str] = dc_field(default_factory=lambda: ["tv"])
    #: extra keyword options per method, e.g. {"tkd": {"threshold": 0.15}} or
    #: {"isdu": {"weights": "isdu_k4.pt", "tile_size": 96}} (see steps.inversion.NETWORK_OPTIONS;
    #: a relative weights path is taken from the directory ``qsmflow run`` is started in)
    options: dict[str, dict[str, Any]] = dc_field(default_factory=dict)
    #: methods that get the run's multi-echo magnitude as their weights image (methods taking
    #: ``weights``: tv edge weights as MEDI, ndi data weights); others in the list are ignored
    #: when not among ``methods``
    magnitude_weights: list[str] = dc_field(default_factory=lambda: ["tv"])


@dataclass
class RegistrationConfig:
    """Rigid registration of each orientation's magnitude to the reference orientation."""

    backend: str = "auto"  #: auto (FSL FLIRT if found, else python/SimpleITK), fsl or python


@dataclass
class CosmosConfig:
    """Multi-orientation inversion (see qsmflow.physics.cosmos.cosmos)."""

    method: str = "lsq"  #: lsq (masked regularised least squares) or closed
    lam: float | None = None  #: None: the method's default (1e-3 for lsq, 0 for closed)
    iterations: int = COSMOS_ITERATIONS  #: PCG iterations (lsq)


@dataclass
class PatchConfig:
    """Training pairs cut into patches (qsmflow.training.patch_grid; voxels)."""

    patch_size: int = PATCH_SIZE
    stride: int = STRIDE
    min_mask_fraction: float = MIN_MASK_FRACTION


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
    training: PatchConfig = dc_field(default_factory=PatchConfig)
    execution: ExecutionConfig = dc_field(default_factory=ExecutionConfig)

    def validate(self, source: str | None = None) -> PipelineConfig:
        """Check every choice; raise QSMInputError naming ``source`` (the preset file).

        A relative ISDU ``weights`` path is made absolute (from the current directory).
        """
        checks = [
            ("pipeline", self.pipeline, PIPELINES),
            ("masking.backend", self.masking.backend, BACKENDS),
            ("registration.backend", self.registration.backend, BACKENDS),
            ("field.unwrapping", self.field.unwrapping, UNWRAPPING_METHODS),
            ("field.phase_units", self.field.phase_units, PHASE_UNITS),
            ("background.deconvolution", self.background.deconvolution, DECONVOLUTIONS),
            ("cosmos.method", self.cosmos.method, COSMOS_METHODS),
        ]
        for key, value, allowed in checks:
            if value not in allowed:
                raise QSMInputError(f"{key} = {value!r}; choose from {', '.join(allowed)}", source)
        if not self.inversion.methods:
            raise QSMInputError("inversion.methods is empty", source)
        for m in [*self.inversion.methods, *self.inversion.options]:
            if m not in INVERSION_METHODS:
                raise QSMInputError(
                    f"unknown inversion method {m!r}; choose from {', '.join(INVERSION_METHODS)}",
                    source,
                )
        takers = methods_taking("weights")
        for m in self.inversion.magnitude_weights:
            if m not in takers:
                raise QSMInputError(
                    f"inversion.magnitude_weights: {m!r} takes no weights; choose from "
                    f"{', '.join(takers)}",
                    source,
                )
        for net in NETWORK_METHODS:
            if net in self.inversion.options:
                opts = check_network_options(self.inversion.options[net], net, source)
                if opts.get("weights"):  # nodes run in their own folders
                    opts["weights"] = os.path.abspath(os.fspath(opts["weights"]))
                self.inversion.options[net] = opts
        for m in self.inversion.methods:  # only isdu has shipped weights
            if m in NETWORK_METHODS and m != "isdu":
                if not self.inversion.options.get(m, {}).get("weights"):
                    raise QSMInputError(
                        f"{m} has no shipped weights; set [inversion.options.{m}] weights = "
                        f"FILE (a qsmflow train checkpoint of {m})",
                        source,
                    )
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
