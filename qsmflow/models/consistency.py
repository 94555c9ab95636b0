"""Data consistency of ISDU-QSMNet: the normal operator, its closed-form solve and batched CG.

Each unrolled iteration solves ``A x = b`` with ``A = F^-1 D^2 F + lambda w^2`` (F the 3-D FFT
over the spatial axes, D the dipole kernel, w^2 the majorisation weight of the l_p prior) and
``b = F^-1 D F phi + lambda w^2 z``; see :mod:`qsmflow.models.isdu` for the model and its
solver choice (``dc_mode``). For w^2 = 1 the solution has a closed form
(:func:`solve_consistency_closed_form`); otherwise :func:`conjugate_gradient`, a general batched
complex CG, iterates on :func:`normal_operator`. Tensors are (B, 1, X, Y, Z), fields in ppm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "REFERENCE_CG_ABS_TOL",
    "REFERENCE_CG_INCREASE_TOL",
    "CGResult",
    "conjugate_gradient",
    "normal_operator",
    "solve_consistency_closed_form",
]

#: The authors' absolute CG stopping thresholds on sum |r|^2 (ppm^2, whole volume).
REFERENCE_CG_ABS_TOL = 1e-10
REFERENCE_CG_INCREASE_TOL = 1e-6

SPATIAL_DIMS = (-3, -2, -1)


def normal_operator(u: Tensor, kernel_sq: Tensor, lam: Tensor, w_sq: Tensor | None) -> Tensor:
    """A u = F^-1(D^2 F u) + lambda w^2 u for u (B, 1, X, Y, Z); ``w_sq`` None means w^2 = 1."""
    out = torch.fft.ifftn(kernel_sq * torch.fft.fftn(u, dim=SPATIAL_DIMS), dim=SPATIAL_DIMS)
    return out + lam * (u if w_sq is None else w_sq * u)


def solve_consistency_closed_form(
    phi_hat_d: Tensor, z: Tensor, kernel_sq: Tensor, lam: Tensor
) -> Tensor:
    """Exact solution of A x = b for w^2 = 1: x = F^-1[(D F phi + lambda F z) / (D^2 + lambda)].

    ``phi_hat_d`` = D F phi (B, 1, X, Y, Z) complex, ``z`` (B, 1, X, Y, Z) complex, ``kernel_sq``
    = D^2 (B or 1, 1, X, Y, Z) real, ``lam`` > 0 a (1,) tensor. Returns x (B, 1, X, Y, Z) complex.
    """
    num = phi_hat_d + lam * torch.fft.fftn(z, dim=SPATIAL_DIMS)
    return torch.fft.ifftn(num / (kernel_sq + lam), dim=SPATIAL_DIMS)


@dataclass
class CGResult:
    """Output of :func:`conjugate_gradient`.

    ``x`` (B, ...) the solution; per sample, ``iterations`` = the number of x-updates and
    ``residuals`` = sum |r|^2 at every stopping check (entry 0 = ||b - A x_start||^2; a run that
    stopped has iterations + 1 entries, one that hit the cap has ``max_iter``).
    """

    x: Tensor
    iterations: list[int]
    residuals: list[list[float]]


def _dot(u: Tensor, v: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Per-sample sum(conj(u) v) over ``dims``: (B,)."""
    return torch.sum(torch.conj(u) * v, dim=dims)


def conjugate_gradient(
    apply_a: Callable[[Tensor], Tensor],
    b: Tensor,
    x: Tensor | None = None,
    *,
    max_iter: int = 30,
    rel_tol: float | None = None,
    abs_tol: float | None = None,
    increase_tol: float | None = None,
) -> CGResult:
    """Solve A x = b by conjugate gradients, independently for every sample of the batch axis 0.

    A must be Hermitian positive definite and act sample by sample. Before each update, sample
    i stops when sum|r_i|^2 <= rel_tol^2 sum|r_i(start)|^2, or < ``abs_tol``, or when it rose
    while the previous value was < ``increase_tol`` (the last two are the authors' absolute
    rules, ``REFERENCE_CG_*``). At most ``max_iter`` updates. Step sizes are complex scalars
    (alpha = r^H r / p^H A p, beta = r'^H r' / r^H r), as the authors. Every step is
    differentiable (autograd unrolls the iterations).

    ``x`` is the start (default zeros like ``b``); a real float64 start with a complex64 ``b``
    promotes everything to complex128 (the authors' flow).
    """
    batch = b.shape[0]
    dims = tuple(range(1, b.ndim))
    view = (batch,) + (1,) * (b.ndim - 1)
    if x is None:
        x = torch.zeros_like(b)
    r = b - apply_a(x)
    d = r
    rr = _dot(r, r, dims)
    rr_start = rr.real.detach()
    prev = rr_start.clone()
    active = torch.ones(batch, dtype=torch.bool, device=b.device)
    iterations = [0] * batch
    residuals: list[list[float]] = [[] for _ in range(batch)]
    for _ in range(max_iter):
        val = rr.real.detach()
        values = val.tolist()
        flags = active.tolist()
        for i in range(batch):
            if flags[i]:
                residuals[i].append(values[i])
        stop = torch.zeros_like(active)
        if rel_tol is not None:
            stop |= val <= (rel_tol * rel_tol) * rr_start
        if abs_tol is not None:
            stop |= val < abs_tol
        if increase_tol is not None:
            stop |= (val > prev) & (prev < increase_tol)
        active = active & ~stop
        if not bool(active.any()):
            break
        prev = torch.where(active, val, prev)
        ad = apply_a(d)
        dad = _dot(d, ad, dims)
        one = torch.ones_like(dad)
        alpha = torch.where(active, rr / torch.where(active, dad, one), torch.zeros_like(dad))
        x = x + alpha.reshape(view) * d
        r = r - alpha.reshape(view) * ad
        rr_new = _dot(r, r, dims)
        beta = torch.where(active, rr_new / torch.where(active, rr, one), torch.zeros_like(rr))
        d = r + beta.reshape(view) * d
        rr = torch.where(active, rr_new, rr)
        for i, a in enumerate(active.tolist()):
            iterations[i] += int(a)
    return CGResult(x=x, iterations=iterations, residuals=residuals)
