"""The model zoo: every trainable dipole-inversion network by name, in one table.

Every model is an ``nn.Module`` with

* ``forward(phi, mask, kernel) -> chi``: phi and mask (B, 1, X, Y, Z), kernel (B or 1, 1, X,
  Y, Z) the real FFT-layout dipole kernel of :func:`~qsmflow.models.kernels.isdu_kernel`
  (D(0) = 1/3), chi (B, 1, X, Y, Z), all in ppm, chi 0 outside the mask;
* ``config``: the constructor arguments as plain values (stored in checkpoints);
* optionally ``size_multiple`` (spatial sizes must be multiples; inference pads to it) and
  ``check_geometry(voxel_size, b0_dir)`` (data-driven nets refuse geometries they were not
  trained for).

So one trainer (:mod:`qsmflow.training.trainer`), one checkpoint format
(:mod:`qsmflow.models.checkpoints`, the model name in it) and one inference path
(:mod:`qsmflow.models.inference`) serve them all. ``qsmflow models`` prints :data:`MODELS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import QSMInputError

if TYPE_CHECKING:  # torch is imported where a model is built, not by ``import registry``
    from torch import nn

__all__ = [
    "ISDU_FAMILY",
    "MODELS",
    "ModelSpec",
    "build_model",
    "denoiser_rows",
    "model_rows",
    "parameter_count",
]

#: Presets (``qsmflow train --config``) live here.
WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"


def _isdu(**kwargs: Any) -> nn.Module:
    from .isdu import ISDUQSMNet

    return ISDUQSMNet(**kwargs)


def _lpcnn(**kwargs: Any) -> nn.Module:
    from .lpcnn import LPCNN

    return LPCNN(**kwargs)


def _data_driven(architecture: str) -> Callable[..., nn.Module]:
    def build(**kwargs: Any) -> nn.Module:
        from .datadriven import DataDrivenQSM

        kwargs.pop("architecture", None)
        return DataDrivenQSM(architecture, **kwargs)

    return build


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the zoo.

    name : the ``--method`` / ``architecture`` name.
    family : "model-based" (the dipole kernel inside the network) or "data-driven".
    summary : one line: what it is, with its reference.
    build : constructor taking the model's keyword arguments.
    defaults : keyword arguments that make this entry out of ``build`` (e.g. SpiNet-QSM is the
        ISDU class with one shared denoiser, learnable p, K = 3, CG <= 25 and the authors'
        data-consistency flow, so their weights reproduce their numbers; its training preset
        switches to the batched ``dc_mode = "cg"``).
    normalisation : how the network's input and output are scaled.
    loss : default training loss (:data:`~qsmflow.training.losses.LOSSES`).
    preset : training preset under ``workflows/``.
    paper_parameters : the parameter count of the authors' module (isdu_qsmnet_spec.md), where
        the spec lists one.
    """

    name: str
    family: str
    summary: str
    build: Callable[..., nn.Module]
    defaults: dict[str, Any] = field(default_factory=dict)
    normalisation: str = ""
    loss: str = "combined"
    preset: str = ""
    paper_parameters: int | None = None

    def create(self, **kwargs: Any) -> nn.Module:
        """The model with this entry's defaults, overridden by ``kwargs``."""
        try:
            return self.build(**{**self.defaults, **kwargs})
        except TypeError as exc:
            raise QSMInputError(f"bad {self.name} model settings: {exc}") from exc


_CHI_STATS = "denoiser in/out: (x - chi_mean)/chi_sd, both channels (authors' tr-stats)"

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "isdu",
            "model-based",
            "ISDU-QSMNet: K = 4 unrolled steps, one WideResNet denoiser each (USW)",
            _isdu,
            {},
            _CHI_STATS,
            "combined",
            "train-isdu.toml",
            447_234 * 4,
        ),
        ModelSpec(
            "spinet",
            "model-based",
            "SpiNet-QSM: K = 3, one shared denoiser, learned p, majorised CG (Vaddadi 2023)",
            _isdu,
            {
                "n_iterations": 3,
                "shared_weights": True,
                "learn_p": True,
                "cg_max_iter": 25,
                "dc_mode": "reference",
            },
            _CHI_STATS,
            "combined",
            "train-spinet.toml",
            447_234,
        ),
        ModelSpec(
            "lpcnn",
            "model-based",
            "LPCNN: 3 learned proximal-gradient steps, WideResNet prox (Lai 2020)",
            _lpcnn,
            {},
            "prox in/out: (x - chi_mean)/chi_sd, masked (LPCNN's gt stats)",
            "combined",
            "train-lpcnn.toml",
            446_337,
        ),
        ModelSpec(
            "qsmnet",
            "data-driven",
            "QSMnet: 5^3 U-Net, widths 32-512 (Yoon 2018)",
            _data_driven("qsmnet"),
            {},
            "field (x - 2.5e-5)/0.011, chi x 0.028 (QSMnet's norm_factor)",
            "combined",
            "train-qsmnet.toml",
            99_453_985,
        ),
        ModelSpec(
            "deepqsm",
            "data-driven",
            "DeepQSM: 3^3 U-Net, widths 16-256 (Bollmann 2019)",
            _data_driven("deepqsm"),
            {},
            "as qsmnet",
            "mse",
            "train-deepqsm.toml",
            5_647_857,
        ),
        ModelSpec(
            "xqsm",
            "data-driven",
            "xQSM: octave-convolution U-Net, global residual (Gao 2021)",
            _data_driven("xqsm"),
            {},
            "as qsmnet",
            "mse",
            "train-xqsm.toml",
            5_215_681,
        ),
    )
}

#: Models built on :class:`~qsmflow.models.isdu.ISDUQSMNet` (unrolled, K and weight sharing).
ISDU_FAMILY = ("isdu", "spinet")


def spec_of(name: str) -> ModelSpec:
    """The :class:`ModelSpec` called ``name``; QSMInputError listing the names otherwise."""
    if name not in MODELS:
        raise QSMInputError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name]


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Model ``name`` of :data:`MODELS` with its defaults overridden by ``kwargs``."""
    return spec_of(name).create(**kwargs)


def parameter_count(model_or_name: nn.Module | str, **kwargs: Any) -> tuple[int, int]:
    """(all, trainable) parameters of a model, or of ``build_model(name, **kwargs)`` built on
    the meta device (no memory is allocated)."""
    import torch

    if isinstance(model_or_name, str):
        with torch.device("meta"):
            model = build_model(model_or_name, **kwargs)
    else:
        model = model_or_name
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def model_rows() -> list[dict[str, Any]]:
    """One row per model for ``qsmflow models``: name, family, parameters, trainable,
    paper count, normalisation, loss, preset and summary."""
    rows = []
    for spec in MODELS.values():
        total, trainable = parameter_count(spec.name)
        preset = WORKFLOWS / spec.preset
        rows.append(
            {
                "name": spec.name,
                "family": spec.family,
                "parameters": total,
                "trainable": trainable,
                "paper_parameters": spec.paper_parameters,
                "normalisation": spec.normalisation,
                "loss": spec.loss,
                "preset": f"workflows/{spec.preset}" if preset.is_file() else "",
                "summary": spec.summary,
            }
        )
    return rows


#: Parameter counts of the authors' ablation denoisers, with lambda and p (spec section 3).
PAPER_DENOISER_PARAMETERS = {
    "wideresnet": 447_234,
    "simple-cnn": 339_464,
    "unet-mini": 5_648_308,
    "unet-heavy": 99_458_020,
}


def denoiser_rows() -> list[dict[str, Any]]:
    """One row per ISDU denoiser (the ablation): name, parameters with lambda and p, paper
    count."""
    import torch

    from .denoisers import DENOISERS, build_denoiser

    rows = []
    for name in DENOISERS:
        with torch.device("meta"):
            net = build_denoiser(name)
        rows.append(
            {
                "name": name,
                "parameters": sum(p.numel() for p in net.parameters()),
                "paper_parameters": PAPER_DENOISER_PARAMETERS[name],
            }
        )
    return rows
