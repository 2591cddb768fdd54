"""Shared pieces of the fast samplers: the half log-SNR schedule of a grid, the data prediction,
exponential-integrator weights, and a fused linear combination.

Every exponential integrator here integrates the probability-flow ODE written in the half
log-SNR λ = log(m/σ) with the data prediction x̂_0(x, t) = (x + σ² s(x, t)) / m:
    x(λ_t) = (σ_t/σ_s) x(λ_s) + σ_t ∫_{λ_s}^{λ_t} e^λ x̂_0(λ) dλ,
so all coefficients come from ``sde.marginal`` / ``log_snr`` / ``t_from_log_snr`` and VE (m = 1,
λ = −log σ) is handled like VP.  Reference: Lu et al. 2022b (DPM-Solver++), eqs. 8-9.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch import Tensor

from ..sde import SDE

__all__ = ["Schedule", "schedule", "scaled_denoised", "exp_moments", "exp_moments_t", "exp_weights",
           "exp_weights_t", "lincomb", "Rows"]


class Schedule(NamedTuple):
    """Per grid time (Python float64 lists): m(t), σ(t) and the half log-SNR λ = log(m/σ)."""

    t: list[float]
    alpha: list[float]
    sigma: list[float]
    lam: list[float]


def schedule(sde: SDE, ts: list[float]) -> Schedule:
    alpha, sigma = zip(*(sde.marginal(t) for t in ts))
    lam = [0.5 * sde.log_snr(t) for t in ts]
    return Schedule(list(ts), list(alpha), list(sigma), lam)


def scaled_denoised(score, x: Tensor, t: float, sigma: float) -> Tensor:
    """m x̂_0 = x + σ² s(x, t): one evaluation and one pass over x (the fixed-step samplers fold
    the 1/m into their Python-float weights)."""
    return torch.add(x, score(x, t), alpha=sigma * sigma)


_SERIES_H = 0.25  # below: 12-term series (error < 1e-16); above: the recursion (error < 1e-12)
_SERIES_TERMS = 12


@functools.cache
def _series_coefficients(n: int, ndim: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """C_jk = k!/(j+k+1)!, j < 12, k ≤ n, shaped (12, n+1, 1, …) to broadcast against an ndim-d h
    (cached per device and dtype: no copy per call)."""
    c = torch.tensor([[math.factorial(k) / math.factorial(j + k + 1) for k in range(n + 1)]
                      for j in range(_SERIES_TERMS)], dtype=torch.float64)
    return c.reshape(c.shape + (1,) * ndim).to(device=device, dtype=dtype)


def exp_moments(h: Tensor, n: int) -> Tensor:
    """Ĵ_k(h) = ∫_0^1 e^{−h(1−u)} u^k du for k = 0..n (n ≤ 4), h > 0 a float64 tensor: shape
    h.shape + (n+1,).  (So ∫_0^h e^{−(h−v)} v^k dv = h^{k+1} Ĵ_k.)

    The series Ĵ_k = Σ_j (−h)^j k!/(j+k+1)! (Horner) for small h (no cancellation as h → 0), else
    the recursion Ĵ_0 = (1 − e^{−h})/h, Ĵ_k = (1 − k Ĵ_{k−1})/h (relative error ≲ 1e-16·k!/h^k).
    Computed as (n+1, …) rows over h's elements (one operation per term for every k at once).
    """
    coef = _series_coefficients(n, h.ndim, h.device, h.dtype)
    neg = -h.clamp(max=_SERIES_H)
    series = coef[-1]
    for j in range(_SERIES_TERMS - 2, -1, -1):
        series = torch.addcmul(coef[j], series, neg)
    hr = h.clamp(min=_SERIES_H)
    rec = [-torch.expm1(-hr) / hr]
    for kk in range(1, n + 1):
        rec.append((1.0 - kk * rec[-1]) / hr)
    return torch.where(h < _SERIES_H, series, torch.stack(rec)).movedim(0, -1)


def _moments(h: float, n: int) -> list[float]:
    """``exp_moments`` for one float h, in pure Python (the fixed-step samplers call it per step)."""
    if h < _SERIES_H:
        out = []
        for k in range(n + 1):
            term = total = 1.0 / (k + 1)
            for j in range(1, 12):
                term *= -h / (j + k + 1)
                total += term
            out.append(total)
        return out
    out = [-math.expm1(-h) / h]
    for k in range(1, n + 1):
        out.append((1.0 - k * out[-1]) / h)
    return out


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting for the tiny (≤ 5×5) weight systems."""
    n = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(m[r][c]))
        m[c], m[p] = m[p], m[c]
        for r in range(c + 1, n):
            f = m[r][c] / m[c][c]
            for q in range(c, n + 1):
                m[r][q] -= f * m[c][q]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (m[r][n] - sum(m[r][q] * x[q] for q in range(r + 1, n))) / m[r][r]
    return x


def exp_weights(h: float, nodes: list[float], rate: float = 1.0) -> list[float]:
    """Weights w_j with Σ_j w_j y(u_j) = ∫_0^h ρ e^{−ρ(h−u)} P(u) du, P the polynomial through
    the nodes u_j (offsets in λ from the step's start; u = 0 is the start, u = h its end).

    The exact integral of the Lagrange interpolant (exponential Adams-Bashforth when all
    u_j ≤ 0, Adams-Moulton when one node is u = h); order len(nodes) for smooth y.
    ``rate`` ρ = 1 for the ODE, 1 + η for the SDE family.  Solves Vᵀ w = (∫ ρ e^{−ρ(h−u)}
    (u/h)^n du)_n with V_{jn} = (u_j/h)^n, the moments being ρ h Ĵ_n(ρh).
    """
    if not h > 0:
        raise ValueError(f"exponential weights need a step h > 0 in log-SNR, got {h}")
    k = len(nodes)
    rhs = [rate * h * m for m in _moments(rate * h, k - 1)]
    return _solve([[(u / h) ** n for u in nodes] for n in range(k)], rhs)


def exp_moments_t(h: Tensor, k: int, rate: float = 1.0) -> Tensor:
    """M_n = ρh Ĵ_n(ρh), n < k, shape (b, k): the right-hand sides of ``exp_weights_t``."""
    return (rate * h).unsqueeze(-1) * exp_moments(rate * h, k - 1)


def exp_weights_t(h: Tensor, nodes: Tensor, rate: float = 1.0, moments: Tensor | None = None) -> Tensor:
    """Batched ``exp_weights``: h (b,), nodes (b, k) float64 -> weights (b, k); ``moments`` =
    ``exp_moments_t(h, k, rate)`` if already computed (the same h serves several node sets).

    In Lagrange form, w_j = Σ_n c_jn M_n / Π_{m≠j}(v_j − v_m) with v = u/h, c_jn the monomial
    coefficients of Π_{m≠j}(v − v_m) (the roots multiplied in one at a time: no division, so no
    cancellation) and M_n = ρ h Ĵ_n(ρh): about 4k² elementwise operations on contiguous (b,) rows
    instead of a batched k×k solve (the per-sample solver calls this twice per step for every
    sample), and as accurate.
    """
    k = nodes.shape[-1]
    mom = (exp_moments_t(h, k, rate) if moments is None else moments).T.contiguous()  # rows M_n
    v = (nodes / h.unsqueeze(-1)).T.contiguous()  # rows v_j
    if k == 1:
        return mom.T
    w = []
    for j in range(k):
        others = [v[m] for m in range(k) if m != j]
        c: list = [1.0]  # c[n]: coefficient of v^n in Π_{m≠j} (v − v_m); the leading one is 1
        for r, vm in enumerate(others):
            nr = -vm
            c = [nr * c[0] if r else nr] + [torch.addcmul(c[n - 1], nr, c[n]) if n < r else c[n - 1] + nr
                                             for n in range(1, r + 1)] + [1.0]
        num = c[0] * mom[0]
        for n in range(1, k - 1):
            num.addcmul_(c[n], mom[n])
        den = v[j] - others[0]
        for vm in others[1:]:
            den = den * (v[j] - vm)
        w.append((num + mom[k - 1]) / den)
    return torch.stack(w, 1)


class Rows:
    """The rows ``idx`` of a batch of ``n``.  When idx is every row (the usual case: all samples
    running, at full order, accepted) reads are the tensors themselves and writes rebind, so the
    per-sample bookkeeping does not gather and scatter the whole state at every step."""

    def __init__(self, idx: Tensor, n: int):
        self.idx, self.all = idx, idx.numel() == n

    def of(self, v: Tensor, dim: int = 0) -> Tensor:
        return v if self.all else v.index_select(dim, self.idx)

    def set(self, v: Tensor, value: Tensor) -> Tensor:
        """v with its rows idx replaced by value: value itself when idx is every row, else v
        updated in place."""
        if self.all:
            return value
        v[self.idx] = value
        return v

    def write(self, v: Tensor, value: Tensor) -> None:
        """Rows idx of v (a view into a buffer, say) overwritten in place."""
        if self.all:
            v.copy_(value)
        else:
            v[self.idx] = value

    def add(self, v: Tensor, value) -> None:
        if self.all:
            v += value
        else:
            v[self.idx] += value


def lincomb(terms: list[tuple[float | Tensor, Tensor]], into: Tensor | None = None) -> Tensor:
    """Σ c_i x_i with one allocation (coefficients are floats or broadcastable tensors); with
    ``into`` (a buffer the caller owns) ``into + Σ c_i x_i`` in place, with none."""
    if into is None:
        (c0, x0), rest = terms[0], terms[1:]
        out = x0 * c0
    else:
        out, rest = into, terms
    for c, x in rest:
        if isinstance(c, Tensor):
            out.addcmul_(c, x)
        elif c != 0.0:
            out.add_(x, alpha=c)
    return out
