"""ISDU-QSMNet: unrolled MoDL/SpiNet dipole inversion with one denoiser per iteration.

Model (isdu_qsmnet_spec.md sections 1-3, algorithms.md section 2.11). With F the 3-D FFT over
the spatial axes, D the dipole kernel, M the mask, phi the local field (ppm) and the
susceptibility statistics ``out_mean``/``out_std`` of the authors' ``tr-stats.mat``::

    x_0 = F^-1 (D F phi)                                  complex, not masked
    for k = 0 .. K-1:
        x_k <- M x_k
        v    = ([Re x_k, Im x_k] - out_mean) / out_std    2 channels, both with the chi stats
        z_k  = denoiser_k(v) * out_std + out_mean         z_k = z[:, 0] + i z[:, 1], not masked
        w^2  = |x_k - z_k|^(p_k - 2)                      majorisation weight (1 for p_k = 2)
        x_k+1 = M argmin ||D x - phi||^2 + lambda_k ||w (x - z_k)||^2
              = M A^-1 b,  A = F^-1 D^2 F + lambda_k w^2,  b = F^-1 D F phi + lambda_k w^2 z_k
    chi = M Re x_K                                        (the imaginary part is discarded)

Every denoiser (by default a :class:`~qsmflow.models.wideresnet.WideResNet`; the ablation's
alternatives are in :mod:`qsmflow.models.denoisers`) carries its own
``lambda_val`` (lambda_k) and ``p`` (p_k). ``shared_weights=True`` uses one denoiser for all K
iterations (SpiNet-QSM / ISDU "SW"), otherwise K independent ones (ISDU "USW").

Data-consistency modes (``dc_mode``):

* ``"auto"`` (default): the exact closed form x = F^-1[(D F phi + lambda F z)/(D^2 + lambda)]
  (2 FFTs) where p_k == 2 and p_k needs no gradient, otherwise ``"cg"``.
* ``"closed_form"``: always the closed form (requires p_k == 2).
* ``"cg"``: conjugate gradients on A x = b with w^2 = (|x - z|^2 + weight_eps)^((p - 2)/2),
  starting from 0, stopping when ||r|| <= cg_tol ||b|| or after ``cg_max_iter`` updates.
* ``"reference"``: the authors' code path, for reproducing their numbers (the golden vectors in
  ../shared/reference/isdu, to the bit on torch 2.13 CPU with 2 threads): per-sample loop,
  complex64 x_0 and b, CG from a float64 zero start (so complex128 from then on), CG also for
  p = 2, w = (x - z)^(p/2 - 1) by complex power and w^2 = conj(w) w (no epsilon), raw lambda and
  p, absolute stopping rules (stop before an update when sum|r|^2 < 1e-10, or when it rose while
  the previous value was < 1e-6; at most ``cg_max_iter`` updates), float64 output.

Deviations of the default path from the authors' code (isdu_qsmnet_spec.md section 9), each
switched back by ``dc_mode="reference"``:

1. p = 2 (every ISDU checkpoint) is solved exactly in closed form instead of by an early-stopped
   CG (they agree to ~1e-6 relative; the closed form is exact and 2 FFTs per iteration instead
   of ~4 per CG update).
2. Compute in float32/complex64 (or float64/complex128 when phi is float64) instead of the
   complex64 -> complex128 mix; the reference README measures <= 6e-7 relative difference.
3. The majorisation weight has an epsilon and is computed from the real modulus,
   w^2 = (|x - z|^2 + eps)^((p - 2)/2), eps = 1e-8 ppm^2 by default: no NaN from complex 0^0
   and w^2 <= eps^((p - 2)/2) (48 for SpiNet's p = 1.58). On the SpiNet golden run this moves
   chi by 1.2e-5 relative (1e-6 ppm^2 would move it by 3e-4; eps = 0 by 6e-6).
4. CG stops on a relative residual (``cg_tol``) instead of absolute thresholds on sum|r|^2 in
   ppm^2, which made the iteration count depend on the volume size.
5. lambda_k is used as max(|lambda_k|, 1e-6) and p_k is clamped to [0.1, 2] (the authors apply
   no constraint; every shipped checkpoint lies inside, so nothing changes for them).
6. The denoiser sees the whole batch at once (the authors loop over samples, so in training
   mode their BatchNorm statistics come from one sample).

Kept as the authors have it (the trained weights depend on it): both channels normalised with
the susceptibility statistics, z not masked, x_0 = F^-1 D F phi (not masked), D(0) = 1/3.

The caller supplies the kernel, so any voxel size and B0 direction work::

    kernel = isdu_kernel(shape, voxel_size, b0_dir)   # models.kernels: D(0) = 1/3, float32
    chi = model(phi, mask, kernel)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..errors import QSMInputError
from .consistency import (
    REFERENCE_CG_ABS_TOL,
    REFERENCE_CG_INCREASE_TOL,
    SPATIAL_DIMS,
    conjugate_gradient,
    normal_operator,
    solve_consistency_closed_form,
)
from .denoisers import DENOISERS, build_denoiser

__all__ = [
    "CONSISTENCY_SOLVERS",
    "LAMBDA_MIN",
    "OUT_MEAN",
    "OUT_STD",
    "P_MIN",
    "ConsistencySolver",
    "ISDUIntermediates",
    "ISDUQSMNet",
]

#: Susceptibility statistics of the authors' training set (tr-stats.mat, float32 bits
#: 0xbb3124e6 and 0x3cecf8d3), used to normalise the denoiser input and output.
OUT_MEAN = -0.0027030049823224545
OUT_STD = 0.028927242383360863

#: Constraints of the default path (the reference path applies none).
LAMBDA_MIN = 1e-6
P_MIN = 0.1

#: Data-consistency solvers, the choices of the ``dc_mode`` argument (module docstring). The
#: argument keeps its name: it is stored in every checkpoint's config and in training presets.
ConsistencySolver = Literal["auto", "closed_form", "cg", "reference"]
CONSISTENCY_SOLVERS: tuple[ConsistencySolver, ...] = ("auto", "closed_form", "cg", "reference")


# --------------------------------------------------------------------------------------------
# The network


@dataclass
class ISDUIntermediates:
    """Everything a forward pass computed, per unrolled iteration k (lists of length K).

    * ``x0`` (B, 1, X, Y, Z) complex: F^-1 D F phi, not masked.
    * ``denoiser_inputs[k]`` (B, 2, X, Y, Z): the normalised denoiser input.
    * ``denoiser_outputs[k]`` (B, 1, X, Y, Z) complex: z_k, de-normalised, not masked.
    * ``weights_squared[k]`` (B, 1, X, Y, Z): w^2 (None where the closed form was used).
    * ``x[k]`` (B, 1, X, Y, Z) complex: x_{k+1}, masked.
    * ``solvers[k]``: "closed_form" or "cg"; ``cg_iterations[k]`` / ``cg_residuals[k]``: per
      sample, the CG updates and sum|r|^2 logs (:class:`CGResult`; 0 and [] for closed form).
    * ``lambdas[k]``, ``ps[k]``: lambda_k and p_k as used.
    """

    x0: Tensor
    denoiser_inputs: list[Tensor] = field(default_factory=list)
    denoiser_outputs: list[Tensor] = field(default_factory=list)
    weights_squared: list[Tensor | None] = field(default_factory=list)
    x: list[Tensor] = field(default_factory=list)
    solvers: list[str] = field(default_factory=list)
    cg_iterations: list[list[int]] = field(default_factory=list)
    cg_residuals: list[list[list[float]]] = field(default_factory=list)
    lambdas: list[float] = field(default_factory=list)
    ps: list[float] = field(default_factory=list)

    @staticmethod
    def concat(parts: Sequence[ISDUIntermediates]) -> ISDUIntermediates:
        """Join per-sample intermediates along the batch axis."""
        first = parts[0]
        n_iter = len(first.x)

        def cat(get: Callable[[ISDUIntermediates], Tensor | None]) -> Tensor | None:
            items = [get(p) for p in parts]
            return None if any(t is None for t in items) else torch.cat(items, dim=0)

        return ISDUIntermediates(
            x0=cat(lambda p: p.x0),
            denoiser_inputs=[cat(lambda p, k=k: p.denoiser_inputs[k]) for k in range(n_iter)],
            denoiser_outputs=[cat(lambda p, k=k: p.denoiser_outputs[k]) for k in range(n_iter)],
            weights_squared=[cat(lambda p, k=k: p.weights_squared[k]) for k in range(n_iter)],
            x=[cat(lambda p, k=k: p.x[k]) for k in range(n_iter)],
            solvers=list(first.solvers),
            cg_iterations=[sum((p.cg_iterations[k] for p in parts), []) for k in range(n_iter)],
            cg_residuals=[sum((p.cg_residuals[k] for p in parts), []) for k in range(n_iter)],
            lambdas=list(first.lambdas),
            ps=list(first.ps),
        )


def _config_entry(key: str, doc: str) -> Any:
    """A read-only attribute of :class:`ISDUQSMNet` backed by its constructor config."""
    return property(lambda self: self._config[key], doc=doc)


class ISDUQSMNet(nn.Module):
    """ISDU-QSMNet / SpiNet-QSM: K unrolled (denoise, data-consistency) iterations.

    Parameters
    ----------
    n_iterations : K, the number of unrolled iterations (4 for ISDU, 3 for the SpiNet demo).
    shared_weights : one denoiser for all iterations (SW) instead of K independent ones (USW).
    out_mean, out_std : susceptibility statistics (ppm) normalising the denoiser input/output;
        stored as float32 buffers (non-trainable, saved in the state_dict).
    cg_max_iter : cap on CG updates per iteration (30 as ISDU; the SpiNet demo used 25).
    cg_tol : relative residual ||r|| / ||b|| at which CG stops (not used by ``"reference"``).
    dc_mode : data-consistency solver, see the module docstring.
    weight_eps : epsilon (ppm^2) in w^2 = (|x - z|^2 + eps)^((p - 2)/2), default path only.
    learn_p : whether every denoiser's ``p`` is trainable (False in ISDU, True in SpiNet).
    width, n_blocks, dropout, lambda_init, p_init : denoiser architecture and initial values,
        see :class:`~qsmflow.models.wideresnet.WideResNet`.
    denoiser : "wideresnet" (the paper's, default), "simple-cnn", "unet-mini" or "unet-heavy"
        (the supplement's ablation, :mod:`qsmflow.models.denoisers`; width, n_blocks and
        dropout shape the WideResNet only).

    Forward: ``model(phi, mask, kernel)`` with phi (B, 1, X, Y, Z) float ppm, mask (B, 1, X, Y, Z)
    (bool or 0/1), kernel (B or 1, 1, X, Y, Z) real, D(0) = 1/3, FFT layout
    (:func:`~qsmflow.models.kernels.isdu_kernel`)
    returns chi (B, 1, X, Y, Z) ppm, float32 (float64 for float64 phi or ``dc_mode="reference"``),
    zero outside the mask.
    """

    def __init__(
        self,
        n_iterations: int = 4,
        shared_weights: bool = False,
        out_mean: float = OUT_MEAN,
        out_std: float = OUT_STD,
        cg_max_iter: int = 30,
        cg_tol: float = 1e-5,
        dc_mode: ConsistencySolver = "auto",
        weight_eps: float = 1e-8,
        learn_p: bool = False,
        *,
        width: int = 32,
        n_blocks: int = 8,
        dropout: float = 0.5,
        lambda_init: float = 0.5,
        p_init: float = 2.0,
        denoiser: str = "wideresnet",
    ) -> None:
        super().__init__()
        if denoiser not in DENOISERS:
            raise QSMInputError(f"denoiser must be one of {DENOISERS}, got {denoiser!r}")
        if int(n_iterations) < 1:
            raise QSMInputError(f"n_iterations must be >= 1, got {n_iterations}")
        if dc_mode not in CONSISTENCY_SOLVERS:
            raise QSMInputError(f"dc_mode must be one of {CONSISTENCY_SOLVERS}, got {dc_mode!r}")
        if not (float(out_std) > 0):
            raise QSMInputError(f"out_std must be positive, got {out_std}")
        if int(cg_max_iter) < 1 or not (float(cg_tol) >= 0) or not (float(weight_eps) >= 0):
            raise QSMInputError(
                f"need cg_max_iter >= 1, cg_tol >= 0, weight_eps >= 0; got {cg_max_iter}, "
                f"{cg_tol}, {weight_eps}"
            )
        # the constructor arguments as plain values, kept once: ``config`` and the read-only
        # properties below read them, checkpoints store them
        self._config: dict[str, Any] = {
            "n_iterations": int(n_iterations),
            "shared_weights": bool(shared_weights),
            "out_mean": float(out_mean),
            "out_std": float(out_std),
            "cg_max_iter": int(cg_max_iter),
            "cg_tol": float(cg_tol),
            "dc_mode": dc_mode,
            "weight_eps": float(weight_eps),
            "learn_p": bool(learn_p),
            "width": int(width),
            "n_blocks": int(n_blocks),
            "dropout": float(dropout),
            "lambda_init": float(lambda_init),
            "p_init": float(p_init),
        }
        if denoiser != "wideresnet":  # older checkpoints' configs have no such key
            self._config["denoiser"] = denoiser
        n_denoisers = 1 if shared_weights else int(n_iterations)
        self.denoisers = nn.ModuleList(
            build_denoiser(
                denoiser,
                width=int(width),
                n_blocks=int(n_blocks),
                dropout=float(dropout),
                lambda_init=lambda_init,
                p_init=p_init,
                learn_p=learn_p,
            )
            for _ in range(n_denoisers)
        )
        self.register_buffer("out_mean", torch.tensor(float(out_mean), dtype=torch.float32))
        self.register_buffer("out_std", torch.tensor(float(out_std), dtype=torch.float32))

    # ---------------------------------------------------------------- construction helpers

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments (plain Python values) that rebuild this model."""
        return dict(self._config)

    n_iterations = _config_entry("n_iterations", "K, the number of unrolled iterations.")
    shared_weights = _config_entry("shared_weights", "One denoiser for all iterations.")
    cg_max_iter = _config_entry("cg_max_iter", "Cap on CG updates per iteration.")
    cg_tol = _config_entry("cg_tol", "Relative CG residual at which CG stops (default path).")
    dc_mode = _config_entry("dc_mode", "The data-consistency solver (module docstring).")
    weight_eps = _config_entry("weight_eps", "Majorisation-weight epsilon, ppm^2 (default path).")

    @classmethod
    def from_k1_denoiser(
        cls,
        state_dict: Mapping[str, Tensor],
        n_iterations: int = 4,
        shared_weights: bool = False,
        **kwargs: Any,
    ) -> ISDUQSMNet:
        """Model whose denoiser(s) all start from one (K = 1) WideResNet state_dict.

        The paper's initialisation of the K = 4 unshared model: every denoiser (with its
        ``lambda_val`` and ``p``) is an independent copy of the K = 1 denoiser. ``kwargs`` go to
        the constructor. The state_dict must match exactly (strict loading).
        """
        model = cls(n_iterations=n_iterations, shared_weights=shared_weights, **kwargs)
        for net in model.denoisers:
            net.load_state_dict(state_dict, strict=True)
        return model

    def denoiser(self, k: int) -> nn.Module:
        """The denoiser of unrolled iteration ``k`` (0-based)."""
        return self.denoisers[0 if self.shared_weights else k]

    @property
    def denoiser_name(self) -> str:
        """The denoiser architecture (:data:`~qsmflow.models.denoisers.DENOISERS`)."""
        return str(self._config.get("denoiser", "wideresnet"))

    @property
    def size_multiple(self) -> int:
        """Every spatial size must be a multiple of this (16 for the U-Net denoisers)."""
        return int(getattr(self.denoisers[0], "size_multiple", 1))

    # ---------------------------------------------------------------------------- forward

    def forward(
        self,
        phi: Tensor,
        mask: Tensor,
        kernel: Tensor,
        *,
        return_intermediates: bool = False,
    ) -> Tensor | tuple[Tensor, ISDUIntermediates]:
        """phi (B,1,X,Y,Z) ppm, mask (B,1,X,Y,Z), kernel (B|1,1,X,Y,Z) -> chi (B,1,X,Y,Z) ppm.

        With ``return_intermediates=True`` returns ``(chi, ISDUIntermediates)``.
        """
        phi, mask, kernel = self._check_inputs(phi, mask, kernel)
        if self.dc_mode == "reference":
            outs = []
            for i in range(phi.shape[0]):
                ker = kernel[i : i + 1] if kernel.shape[0] > 1 else kernel
                outs.append(self._forward_reference(phi[i : i + 1], mask[i : i + 1], ker))
            chi = torch.cat([c for c, _ in outs], dim=0)
            inter = ISDUIntermediates.concat([it for _, it in outs])
        else:
            chi, inter = self._forward_default(phi, mask, kernel)
        return (chi, inter) if return_intermediates else chi

    def _check_inputs(self, phi: Tensor, mask: Tensor, kernel: Tensor) -> tuple[Tensor, ...]:
        phi = torch.as_tensor(phi)
        device = phi.device
        mask = torch.as_tensor(mask, device=device)
        kernel = torch.as_tensor(kernel, device=device)
        if phi.ndim != 5 or phi.shape[1] != 1:
            raise QSMInputError(f"phi must have shape (B, 1, X, Y, Z), got {tuple(phi.shape)}")
        if not phi.is_floating_point():
            raise QSMInputError(f"phi must be a real float tensor (ppm), got {phi.dtype}")
        if tuple(mask.shape) != tuple(phi.shape):
            raise QSMInputError(
                f"mask shape {tuple(mask.shape)} does not match phi shape {tuple(phi.shape)}"
            )
        spatial = tuple(phi.shape[2:])
        if (
            kernel.ndim != 5
            or kernel.shape[1] != 1
            or tuple(kernel.shape[2:]) != spatial
            or kernel.shape[0] not in (1, phi.shape[0])
        ):
            raise QSMInputError(
                f"kernel must have shape (B or 1, 1, {', '.join(map(str, spatial))}), "
                f"got {tuple(kernel.shape)}"
            )
        if kernel.is_complex() or not kernel.is_floating_point():
            raise QSMInputError(f"kernel must be a real float tensor, got {kernel.dtype}")
        return phi, mask, kernel

    def _denoise(self, k: int, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B,1,X,Y,Z) complex -> (normalised input (B,2,...), z (B,1,...) complex)."""
        net = self.denoiser(k)
        dtype = net.gen[0].weight.dtype if hasattr(net, "gen") else net.lambda_val.dtype
        v = torch.cat([x.real, x.imag], dim=1).to(dtype)
        mean, std = self.out_mean.to(dtype), self.out_std.to(dtype)
        v = (v - mean) / std
        u = net(v) * std + mean
        return v, torch.complex(u[:, 0:1], u[:, 1:2])

    def _use_closed_form(self, net: nn.Module, p: Tensor) -> bool:
        if self.dc_mode == "cg":
            return False
        is_two = bool((p.detach() == 2).all())
        if self.dc_mode == "closed_form":
            if not is_two:
                raise QSMInputError(
                    f"dc_mode='closed_form' needs p == 2, denoiser has p = {float(p)}"
                )
            return True
        return is_two and not (net.p.requires_grad and torch.is_grad_enabled())

    def _forward_default(
        self, phi: Tensor, mask: Tensor, kernel: Tensor
    ) -> tuple[Tensor, ISDUIntermediates]:
        rdtype = torch.float64 if phi.dtype == torch.float64 else torch.float32
        phi = phi.to(rdtype)
        m = mask.to(rdtype)
        ker = kernel.to(rdtype)
        ker_sq = ker * ker
        phi_hat_d = ker * torch.fft.fftn(phi, dim=SPATIAL_DIMS)
        x0 = torch.fft.ifftn(phi_hat_d, dim=SPATIAL_DIMS)
        inter = ISDUIntermediates(x0=x0)
        x = x0
        batch = phi.shape[0]
        for k in range(self.n_iterations):
            net = self.denoiser(k)
            x = x * m
            v, z = self._denoise(k, x)
            z = z.to(x0.dtype)
            lam = net.lambda_val.abs().clamp_min(LAMBDA_MIN).to(rdtype)
            p = net.p.clamp(P_MIN, 2.0).to(rdtype)
            if self._use_closed_form(net, p):
                x = solve_consistency_closed_form(phi_hat_d, z, ker_sq, lam)
                w_sq, iters, logs, solver = None, [0] * batch, [[] for _ in range(batch)], "cf"
            else:
                diff = x - z
                w_sq = (diff.real.square() + diff.imag.square() + self.weight_eps) ** ((p - 2) / 2)
                b = x0 + lam * (w_sq * z)
                res = conjugate_gradient(
                    lambda u, lam=lam, w_sq=w_sq: normal_operator(u, ker_sq, lam, w_sq),
                    b,
                    max_iter=self.cg_max_iter,
                    rel_tol=self.cg_tol,
                )
                x, iters, logs, solver = res.x, res.iterations, res.residuals, "cg"
            x = x * m
            self._record(inter, v, z, w_sq, x, solver, iters, logs, lam, p)
        chi = x.real * m
        return chi, inter

    def _forward_reference(
        self, phi: Tensor, mask: Tensor, kernel: Tensor
    ) -> tuple[Tensor, ISDUIntermediates]:
        """The authors' flow for one sample (B = 1), see the module docstring."""
        x0 = torch.fft.ifftn(kernel * torch.fft.fftn(phi, dim=SPATIAL_DIMS), dim=SPATIAL_DIMS)
        ker_sq = kernel * kernel
        inter = ISDUIntermediates(x0=x0)
        x = x0
        for k in range(self.n_iterations):
            net = self.denoiser(k)
            x = x * mask
            v, z = self._denoise(k, x)
            lam, p = net.lambda_val, net.p
            w = torch.pow(x - z, p / 2 - 1)
            w_sq = torch.conj(w) * w
            b = x0 + lam * (w_sq * z)
            start = torch.zeros(x0.shape, dtype=torch.float64, device=x0.device)
            res = conjugate_gradient(
                lambda u, lam=lam, w_sq=w_sq: normal_operator(u, ker_sq, lam, w_sq),
                b,
                start,
                max_iter=self.cg_max_iter,
                abs_tol=REFERENCE_CG_ABS_TOL,
                increase_tol=REFERENCE_CG_INCREASE_TOL,
            )
            x = res.x * mask
            self._record(inter, v, z, w_sq, x, "cg", res.iterations, res.residuals, lam, p)
        chi = x.real * mask
        return chi, inter

    @staticmethod
    def _record(inter, v, z, w_sq, x, solver, iters, logs, lam, p) -> None:
        inter.denoiser_inputs.append(v)
        inter.denoiser_outputs.append(z)
        inter.weights_squared.append(w_sq)
        inter.x.append(x)
        inter.solvers.append("closed_form" if solver == "cf" else solver)
        inter.cg_iterations.append(list(iters))
        inter.cg_residuals.append([list(r) for r in logs])
        inter.lambdas.append(float(lam.detach().reshape(-1)[0]))
        inter.ps.append(float(p.detach().reshape(-1)[0]))

    def extra_repr(self) -> str:
        return (
            f"n_iterations={self.n_iterations}, shared_weights={self.shared_weights}, "
            f"dc_mode={self.dc_mode!r}, cg_max_iter={self.cg_max_iter}"
        )
