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

__all__ = ["Schedule", "schedule", "scaled_denoised", "exp_moments", "exp_weights",
           "exp_pc_weights", "lincomb", "Rows", "words", "gather_rows", "copy_rows", "lanes", "unlane", "row_coef"]


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
# per-sample steps switch lower: the recursion's relative error at h = 0.02 is ≲ 1e-10 for n ≤ 3,
# far below a float32 state's rounding, and rows below 0.25 occur at most steps (each running
# the 22-operation series on the few rows concerned) while rows below 0.02 are rare
_PS_SERIES_H = 0.02


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
    """
    return torch.stack(_moment_rows(h.reshape(-1), n), -1).reshape(h.shape + (n + 1,))


def _moment_rows(h: Tensor, n: int, scaled: bool = False, switch: float = _SERIES_H) -> list[Tensor]:
    """``exp_moments`` for a 1-D h as n + 1 tensors shaped like h, one per k, or with ``scaled`` the
    M_k = h Ĵ_k (M_0 = 1 − e^{−h}, M_k = 1 − k M_{k−1}/h).  The series only where some h needs it
    (one host sync).  ``switch``: the h below which the series is used (the recursion's relative
    error there is ≲ 1e-16·n!/h^n).  Separate rows: each later use reads one of them, contiguous."""
    hr = h.clamp(min=switch)
    rows = [-torch.expm1(-hr)]
    for kk in range(1, n + 1):
        rows.append(torch.add(1.0, rows[-1] / hr, alpha=-kk))
    if not scaled:
        rows = [r.div_(hr) for r in rows]
    small = h < switch
    if not bool(small.any()):
        return rows
    pos = small.nonzero().squeeze(1)  # usually a few rows (a step cut short at the end)
    hs = h.index_select(0, pos)
    series = _series(hs, n)
    return [r.index_copy(0, pos, sr * hs if scaled else sr) for r, sr in zip(rows, series)]


def _series(h: Tensor, n: int) -> Tensor:
    """Ĵ_0..Ĵ_n by the series (Horner), shape (n+1,) + h.shape; for h < ``_SERIES_H``."""
    coef = _series_coefficients(n, h.ndim, h.device, h.dtype)
    neg, series = -h, coef[-1]
    for j in range(_SERIES_TERMS - 2, -1, -1):
        series = torch.addcmul(coef[j], series, neg)
    return series


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


def exp_pc_weights(h: Tensor, past: list[Tensor]) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """Per-sample weights of an exponential Adams predictor and its corrector one order higher.

    h (b,) float64 steps; the k nodes are the step's start v_0 = 0 and ``past``, k − 1 tensors
    (b,) of offsets u_j/h < 0 (distinct), in units of the step.  With P the interpolant through
    the nodes and Q(v) = v R(v) = Π_j (v − v_j), returns the k weights w_j, the k values l_j and ω:
      Σ_j w_j y_j = ∫_0^h e^{−(h−u)} P(u) du,   Σ_j l_j y_j = P(h),   ω = ∫_0^h e^{−(h−u)} Q(u/h)/Q(1) du,
    so that the corrector through the nodes and the step's end (order k + 1; ``exp_weights`` with
    the node h added) is Σ_j w_j y_j + ω (y(h) − Σ_j l_j y_j): Newton's form, one node added to an
    interpolant.  The difference of the two, ω (y(h) − P(h)), is the local error estimate.
    With M_n = h Ĵ_n(h) = ∫_0^h e^{−(h−u)} (u/h)^n du and r_n the coefficients of R:
      w_0 = Σ_n r_n M_n / R(0),   w_j = Σ_n c_jn M_{n+1} / (v_j Π_{m≠0,j} (v_j − v_m))  (j ≥ 1),
    c_jn the coefficients of R(v)/(v − v_j) (synthetic division); l_j = R(1)/((1 − v_j) Q'(v_j));
    ω = Σ_n r_n M_{n+1} / R(1).  About 30 operations on (b,) rows for k = 3, where two Lagrange
    solves take ~100 on (b, k) blocks: the per-sample solver runs this on every row at every step.
    """
    k = len(past) + 1
    mom = _moment_rows(h, k, scaled=True, switch=_PS_SERIES_H)  # M_0..M_k
    r: list = []  # R's coefficients r_0..r_{k−2}, lowest first (r_{k−1} = 1)
    for j, vj in enumerate(past):
        r = [-vj] if j == 0 else [r[0] * -vj] + [torch.addcmul(r[n - 1], vj, r[n], value=-1.0)
                                                 for n in range(1, j)] + [r[j - 1] - vj]
    r_one = torch.ones_like(h) if k == 1 else sum(r[1:], r[0] + 1.0)  # R(1)
    num = mom[k - 1].clone()  # w_0's numerator Σ_n r_n M_n, and ω's Σ_n r_n M_{n+1}
    omega = mom[k].clone()
    for n, rn in enumerate(r):
        num.addcmul_(rn, mom[n])
        omega.addcmul_(rn, mom[n + 1])
    w, ell = [num / r[0] if r else num], [r_one / r[0] if r else r_one]
    for j, vj in enumerate(past):
        c, nj = None, mom[k - 1]  # c_{k−2} = 1, then c_{n−1} = r_n + v_j c_n
        for n in range(k - 2, 0, -1):
            c = vj + r[n] if c is None else torch.addcmul(r[n], vj, c)
            nj = torch.addcmul(nj, c, mom[n])
        den = vj.clone()  # Q'(v_j) = v_j Π_{m≠j} (v_j − v_m)
        for m, vm in enumerate(past):
            if m != j:
                den.mul_(vj - vm)
        w.append(nj / den)
        ell.append(r_one / (1.0 - vj).mul_(den))
    return w, ell, omega.div_(r_one)


def words(t: Tensor) -> Tensor | None:
    """A contiguous (n, …) tensor whose rows are 8 bytes (a 2-D sample in float32) as n int64
    words: gathering and scattering words is 2-3× faster than rows of two floats.  Else None."""
    if t.ndim == 0 or t.element_size() * math.prod(t.shape[1:]) != 8 or not t.is_contiguous():
        return None
    if t.storage_offset() % (8 // t.element_size()):
        return None  # a view starting mid-word
    return t.reshape(t.shape[0], 8 // t.element_size()).view(torch.int64).view(-1)


_REAL = {torch.complex64: torch.float32, torch.complex128: torch.float64}


def lanes(v: Tensor) -> Tensor:
    """v (B, …) as a tensor that a per-row coefficient (``row_coef``) scales cheaply: rows of one
    number as (B,), rows of two real numbers (a 2-D sample, on CPU) as (B,) complex, others as
    they are.  A view where v's layout allows (else a copy).  Multiplying (B, 2) by a (B, 1) column
    takes the CPU's slow broadcasting path (~9× a same-shape operation); a complex number times a
    real one is the same two products, rounded alike.  On other devices broadcasting is not slow,
    and complex support varies (MPS), so they keep the real layout."""
    b, n = v.shape[0], v[0].numel()
    if n == 1:
        return v.reshape(b)
    if n != 2 or v.dtype not in (torch.float32, torch.float64) or v.device.type != "cpu":
        return v
    v = v.reshape(b, 2)
    if v.stride() != (2, 1) or v.storage_offset() % 2:
        v = v.clone(memory_format=torch.contiguous_format)
    return torch.view_as_complex(v)


def unlane(v: Tensor, sample_shape: torch.Size) -> Tensor:
    """The inverse of ``lanes``: v as (B,) + ``sample_shape`` (a view)."""
    if v.is_complex():
        v = torch.view_as_real(v)
    return v.view(v.shape[:1] + sample_shape)


def row_coef(c: Tensor, like: Tensor) -> Tensor:
    """A per-row coefficient c (B,) (float64) shaped and typed to scale ``like``'s rows (a
    ``lanes`` view or a (B, …) tensor)."""
    c = c.to(_REAL.get(like.dtype, like.dtype))
    return c.view(c.shape + (1,) * (like.ndim - 1)) if like.ndim > 1 else c


def gather_rows(t: Tensor, index: Tensor) -> Tensor:
    """t.index_select(0, index), through ``words`` where it applies."""
    w = words(t)
    if w is None:
        return t.index_select(0, index)
    return w.index_select(0, index).view(t.dtype).view((index.numel(),) + t.shape[1:])


def copy_rows(dst: Tensor, index: Tensor, src: Tensor) -> None:
    """dst.index_copy_(0, index, src), through ``words`` where it applies."""
    wd, ws = words(dst), words(src)
    if wd is None or ws is None:
        dst.index_copy_(0, index, src)
    else:
        wd.index_copy_(0, index, ws)


class Rows:
    """The rows ``idx`` of a batch of ``n``.  When idx is every row (the usual case: all samples
    running, at full order, accepted) reads are the tensors themselves and writes rebind, so the
    per-sample bookkeeping does not gather and scatter the whole state at every step."""

    def __init__(self, idx: Tensor, n: int):
        self.idx, self.all = idx, idx.numel() == n

    def of(self, v: Tensor, dim: int = 0) -> Tensor:
        if self.all:
            return v
        return gather_rows(v, self.idx) if dim == 0 else v.index_select(dim, self.idx)

    def set(self, v: Tensor, value: Tensor) -> Tensor:
        """v with its rows idx replaced by value: value itself when idx is every row, else v
        updated in place."""
        if self.all:
            return value
        copy_rows(v, self.idx, value)
        return v

    def write(self, v: Tensor, value: Tensor) -> None:
        """Rows idx of v (a view into a buffer, say) overwritten in place."""
        if self.all:
            v.copy_(value)
        else:
            copy_rows(v, self.idx, value)

    def add(self, v: Tensor, value) -> None:
        if self.all:
            v += value
        else:
            if not isinstance(value, Tensor):
                value = v.new_full((), value).expand(self.idx.shape[0])
            v.index_add_(0, self.idx, value.to(v.dtype))


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
