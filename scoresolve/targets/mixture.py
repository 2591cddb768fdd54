"""Gaussian mixtures whose diffused density, score and samples are exact under any linear SDE.

If p_0 = Σ_k w_k N(μ_k, Σ_k) and the SDE has marginal (m(t), σ(t)), then
p_t = Σ_k w_k N(m μ_k, m² Σ_k + σ² I).  With Σ_k = U_k diag(λ_k) U_kᵀ precomputed, the
covariance at any t is U_k diag(m² λ_k + σ²) U_kᵀ, so log p_t and ∇ log p_t cost no
factorisation per call and work for a different t per sample.  When the whole batch shares one t
(every sampler, the likelihood) the score forms the K precisions once per call and has a
hand-written vector-Jacobian product (its Jacobian is symmetric and known in closed form), which
makes the d VJPs of an exact likelihood trace several times cheaper than autograd.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..sde import SDE

__all__ = ["GaussianMixture"]


def _as64(x) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float64).clone()


@dataclass(frozen=True, eq=False)
class GaussianMixture:
    """p_0(x) = Σ_k w_k N(x; μ_k, Σ_k) in R^d.

    Args:
        weights: (K,) positive, normalised on construction.
        means: (K, d).
        covs: (K, d, d) full covariances, (K, d) diagonal variances, or a scalar/ (K,)
            isotropic variance.
    """

    weights: Tensor
    means: Tensor
    covs: Tensor
    _eig: tuple[Tensor, Tensor | None] = field(init=False, repr=False)
    _cache: dict = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self):
        w, mu = _as64(self.weights).flatten(), _as64(self.means)
        if mu.ndim != 2:
            raise ValueError(f"means must have shape (K, d), got {tuple(mu.shape)}")
        k, d = mu.shape
        if w.shape != (k,) or not bool((w > 0).all()):
            raise ValueError(f"weights must be {k} positive numbers, got {w.tolist()}")
        c = _as64(self.covs)
        if c.ndim == 0 or c.ndim == 1:
            c = c.expand(k).reshape(k, 1).expand(k, d).clone()
        if c.shape == (k, d):
            if not bool((c > 0).all()):
                raise ValueError("diagonal covariances must be positive")
            eig = (c, None)
        elif c.shape == (k, d, d):
            c = 0.5 * (c + c.transpose(1, 2))
            lam, u = torch.linalg.eigh(c)
            if not bool((lam > 0).all()):
                raise ValueError("covariances must be positive definite")
            eig = (lam, u)
        else:
            raise ValueError(
                f"covs must have shape (K, d, d), (K, d) or (K,) for K={k}, d={d}; "
                f"got {tuple(c.shape)}"
            )
        object.__setattr__(self, "weights", w / w.sum())
        object.__setattr__(self, "means", mu)
        object.__setattr__(self, "covs", c)
        object.__setattr__(self, "_eig", eig)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def ring(cls, k: int = 8, radius: float = 2.0, std: float = 0.1) -> GaussianMixture:
        """k equal-weight isotropic components on a circle of the given radius (2-D)."""
        a = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
        means = radius * torch.stack([a.cos(), a.sin()], 1)
        return cls(torch.ones(k), means, torch.full((k,), std**2))

    @classmethod
    def grid(cls, n: int = 3, spacing: float = 2.0, std: float = 0.1) -> GaussianMixture:
        """n×n equal-weight isotropic components on a centred square grid (2-D)."""
        c = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * spacing
        means = torch.cartesian_prod(c, c)
        return cls(torch.ones(n * n), means, torch.full((n * n,), std**2))

    @classmethod
    def unequal(
        cls, weights: Sequence[float] = (0.8, 0.2), separation: float = 4.0, std: float = 0.5,
        dim: int = 2,
    ) -> GaussianMixture:
        """Components with the given weights along the first axis, ``separation`` apart."""
        k = len(weights)
        means = torch.zeros(k, dim, dtype=torch.float64)
        means[:, 0] = (torch.arange(k, dtype=torch.float64) - (k - 1) / 2) * separation
        return cls(torch.as_tensor(weights), means, torch.full((k,), std**2))

    @classmethod
    def random(
        cls, dim: int, k: int, *, seed: int = 0, spread: float = 3.0,
        std_range: tuple[float, float] = (0.1, 0.5), anisotropic: bool = True,
        unequal_weights: bool = True,
    ) -> GaussianMixture:
        """A random mixture in R^dim: means ~ N(0, spread² I), per-direction stds uniform in
        ``std_range`` along random orthogonal axes (``anisotropic``) or the coordinate axes,
        weights uniform in [0.5, 1.5] before normalising (``unequal_weights``)."""
        g = torch.Generator().manual_seed(seed)
        means = spread * torch.randn(k, dim, generator=g, dtype=torch.float64)
        lo, hi = std_range
        stds = lo + (hi - lo) * torch.rand(k, dim, generator=g, dtype=torch.float64)
        if anisotropic:
            q, r = torch.linalg.qr(torch.randn(k, dim, dim, generator=g, dtype=torch.float64))
            q = q * torch.sign(torch.diagonal(r, dim1=1, dim2=2)).unsqueeze(1)
            covs = q @ torch.diag_embed(stds**2) @ q.transpose(1, 2)
        else:
            covs = stds**2
        w = 0.5 + torch.rand(k, generator=g, dtype=torch.float64) if unequal_weights else None
        return cls(w if w is not None else torch.ones(k), means, covs)

    # ------------------------------------------------------------------ basic properties
    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def _params(self, device, dtype):
        key = (str(device), dtype)
        if key not in self._cache:
            lam, u = self._eig
            self._cache[key] = (
                self.weights.log().to(device, dtype),
                self.means.to(device, dtype),
                lam.to(device, dtype),
                None if u is None else u.to(device, dtype),
            )
        return self._cache[key]

    def _scales(self, t, sde, n, device, dtype):
        if sde is None or t is None:
            one = torch.ones(n, device=device, dtype=dtype)
            return one, torch.zeros_like(one)
        t = torch.as_tensor(t, device=device, dtype=torch.float64)
        t = t.expand(n) if t.ndim == 0 else t
        m, s = sde.marginal(t)
        return m.to(dtype), s.to(dtype)

    # ------------------------------------------------------------------ exact p_t quantities
    def _check_x(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != self.dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (B, {self.dim}) for this {self.dim}-d mixture (data items "
                             f"flattening to {self.dim} numbers), got {got}")

    def _whitened(self, x: Tensor, t, sde):
        self._check_x(x)
        """y = U_kᵀ (x − m μ_k) and the component variances m² λ + σ², per sample."""
        logw, mu, lam, u = self._params(x.device, x.dtype)
        m, s = self._scales(t, sde, x.shape[0], x.device, x.dtype)
        diff = x.unsqueeze(1) - m[:, None, None] * mu  # (B, K, d)
        y = diff if u is None else torch.einsum("bkd,kde->bke", diff, u)
        var = (m * m)[:, None, None] * lam + (s * s)[:, None, None]  # (B, K, d)
        return y, var, logw, u

    def component_log_prob(self, x: Tensor, t=None, sde: SDE | None = None) -> Tensor:
        """log w_k + log N(x; m μ_k, m² Σ_k + σ² I): shape (B, K)."""
        y, var, logw, _ = self._whitened(x, t, sde)
        d = x.shape[1]
        quad = (y * y / var).sum(-1)
        return logw - 0.5 * (quad + var.log().sum(-1) + d * math.log(2 * math.pi))

    def log_prob(self, x: Tensor, t=None, sde: SDE | None = None) -> Tensor:
        """log p_t(x) for x of shape (B, d); t a float or (B,) tensor (None means t = 0
        without any smoothing)."""
        return self.component_log_prob(x, t, sde).logsumexp(-1)

    def responsibilities(self, x: Tensor, t=None, sde: SDE | None = None) -> Tensor:
        """p_t(k | x): shape (B, K)."""
        return _softmax(self.component_log_prob(x, t, sde))

    def score(self, x: Tensor, t=None, sde: SDE | None = None) -> Tensor:
        """∇_x log p_t(x) = −Σ_k p_t(k|x) C_k(t)^{-1} (x − m μ_k),  C_k(t) = m² Σ_k + σ² I.

        x of shape (B, d); t None (t = 0, no smoothing), a float, or a (B,) tensor.  When every
        row shares one t (as in all samplers) the K precisions are formed once per call and
        applied in one batched matmul (``_score_shared``); otherwise each row gets its own
        variances in the eigenbasis.
        """
        self._check_x(x)
        if x.dtype in (torch.float16, torch.bfloat16):  # exp/log-sum-exp overflow there: compute in float32
            t = t.float() if isinstance(t, Tensor) else t
            return self.score(x.float(), t, sde).to(x.dtype)
        ms = self._shared_scales(t, sde, x)
        if ms is not None:
            return self._score_shared(x, *ms)
        y, var, logw, u = self._whitened(x, t, sde)
        d = x.shape[1]
        lp = logw - 0.5 * ((y * y / var).sum(-1) + var.log().sum(-1) + d * math.log(2 * math.pi))
        r = _softmax(lp).unsqueeze(-1)  # (B, K, 1)
        g = r * (y / var)
        if u is None:
            return -g.sum(1)
        return -torch.einsum("bke,kde->bd", g, u)

    def _shared_scales(self, t, sde, x: Tensor) -> tuple[Tensor, Tensor] | None:
        """(m, σ) as 0-d tensors in x's dtype if all rows share one time, else None."""
        if sde is None or t is None:
            one = torch.ones((), device=x.device, dtype=x.dtype)
            return one, torch.zeros_like(one)
        t = torch.as_tensor(t, device=x.device, dtype=torch.float64)
        if t.ndim > 1 or (t.ndim == 1 and t.numel() > 1 and not bool((t == t[0]).all())):
            return None
        m, s = sde.marginal(t.reshape(-1)[0])
        return (torch.as_tensor(m, device=x.device).to(x.dtype), torch.as_tensor(s, device=x.device).to(x.dtype))

    def _precisions(self, m: Tensor, s: Tensor, device, dtype) -> tuple[Tensor, Tensor, Tensor]:
        """Means m μ_k (K, d), precisions C_k^{-1} = U_k diag(1/(m² λ_k + σ²)) U_kᵀ (K, d, d;
        diagonal covariances: (K, d)) and log w_k − ½ log det C_k (K,)."""
        logw, mu, lam, u = self._params(device, dtype)
        var = (m * m) * lam + s * s  # (K, d)
        prec = 1.0 / var if u is None else (u / var.unsqueeze(1)) @ u.transpose(1, 2)
        return m * mu, prec, logw - 0.5 * var.log().sum(-1)

    def _score_shared(self, x: Tensor, m: Tensor, s: Tensor) -> Tensor:
        """The score at one time for the whole batch, differentiable with an exact hand-written
        vector-Jacobian product (``_SharedTimeScore``)."""
        a, prec, c = self._precisions(m, s, x.device, x.dtype)
        return _SharedTimeScore.apply(x, a, prec, c)[0]

    def score_fn(self, sde: SDE):
        """The exact score (x, t) -> ∇ log p_t(x) under ``sde``; x of shape (B, d) or (B, ...)
        flattening to d, t of shape (B,)."""

        def score_fn(x: Tensor, t: Tensor) -> Tensor:
            return self.score(x.reshape(x.shape[0], -1), t, sde).reshape(x.shape)

        score_fn.__qualname__ = f"GaussianMixture.score_fn({type(sde).__name__})"
        return score_fn

    def sample(
        self, n: int, t=None, sde: SDE | None = None, *, generator: torch.Generator | None = None,
        device=None, dtype: torch.dtype = torch.float32, return_labels: bool = False,
    ):
        """Exact samples of p_t (shape (n, d)); with ``return_labels`` also their components."""
        logw, mu, lam, u = self._params(device or "cpu", torch.float64)
        k = torch.multinomial(logw.exp(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64, device=device)
        m, s = self._scales(t, sde, n, z.device, torch.float64)
        sd = ((m * m)[:, None] * lam[k] + (s * s)[:, None]).sqrt()
        e = sd * z
        if u is not None:
            e = torch.einsum("bkd,bd->bk", u[k], e)
        x = (m[:, None] * mu[k] + e).to(dtype)
        return (x, k) if return_labels else x

    def diffused(self, t: float, sde: SDE) -> GaussianMixture:
        """p_t itself as a mixture: means m μ_k, covariances m² Σ_k + σ² I."""
        m, s = sde.marginal(float(t))
        eye = torch.eye(self.dim, dtype=torch.float64)
        lam, u = self._eig
        covs = m * m * lam + s * s if u is None else m * m * self.component_covs() + s * s * eye
        return GaussianMixture(self.weights, m * self.means, covs)

    def mean(self) -> Tensor:
        return self.weights @ self.means

    def component_covs(self) -> Tensor:
        """(K, d, d) full covariances."""
        lam, u = self._eig
        if u is None:
            return torch.diag_embed(lam)
        return u @ torch.diag_embed(lam) @ u.transpose(1, 2)

    def cov(self) -> Tensor:
        mu = self.means - self.mean()
        return torch.einsum("k,kde->de", self.weights, self.component_covs()) + torch.einsum(
            "k,kd,ke->de", self.weights, mu, mu
        )


def _softmax(z: Tensor) -> Tensor:
    """Softmax over the last (component) axis, written out: torch's CPU kernel is slow on a short last
    axis (K = 8, 10k rows: 1.4 ms against 0.25 ms), and it ran in every score call."""
    e = (z - z.amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)


# per-row Jacobians (B, d, d) are kept for the next VJP when they are at most this many times
# the size of the (B, K, d) projections the forward pass saves anyway, or at most this many numbers
_JAC_REL, _JAC_ABS = 4, 1 << 22


class _SharedTimeScore(torch.autograd.Function):
    """s(x) = −Σ_k r_k(x) g_k(x) for a batch at one time, with an exact hand-written VJP.

    With δ_k = x − a_k, g_k = P_k δ_k and r = softmax_k(c_k − ½ δ_kᵀ g_k), the Jacobian of each
    row is symmetric,

        ∇s = −Σ_k r_k P_k + Σ_k r_k g_k g_kᵀ − s sᵀ,

    so the VJP vᵀ∇s equals ∇s v.  When the (B, d, d) Jacobians are small enough to keep
    (``_JAC_REL``, ``_JAC_ABS``) they are formed at the first VJP and reused by the following
    ones (the d VJPs of an exact trace, the K probes of Hutchinson's), otherwise each VJP applies
    the formula directly (O(B K d²)).  Either way a VJP costs a few passes over (B, K, d) data,
    where autograd through the same forward takes about ten.  Not twice differentiable (double
    backward raises).  Its backward is vmap-compatible (``generate_vmap_rule``), so batched
    cotangents (``torch.autograd.grad(..., is_grads_batched=True)``) run as one call.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, a: Tensor, prec: Tensor, c: Tensor):
        diff = x.unsqueeze(1) - a  # δ_k, (B, K, d)
        g = diff * prec if prec.ndim == 2 else torch.bmm(diff.transpose(0, 1), prec).transpose(0, 1)
        r = _softmax(c - 0.5 * (diff * g).sum(-1))  # (B, K)
        return -(r.unsqueeze(1) @ g).squeeze(1), r, g

    @staticmethod
    def setup_context(ctx, inputs, output):
        s, r, g = output
        ctx.save_for_backward(s, r, g, inputs[2])
        ctx.mark_non_differentiable(r, g)
        ctx.set_materialize_grads(False)  # r and g carry no gradient: skip their zero cotangents
        ctx.jac = None

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, v: Tensor | None, _r, _g):
        if v is None:
            return None, None, None, None
        s, r, g, prec = ctx.saved_tensors
        b, k, d = g.shape
        if ctx.jac is None and b * d * d <= max(_JAC_REL * b * k * d, _JAC_ABS):
            ctx.jac = _jacobians(s, r, g, prec)
        out = (ctx.jac @ v.unsqueeze(-1)).squeeze(-1) if ctx.jac is not None else _jvp_direct(s, r, g, prec, v)
        return out, None, None, None


def _jacobians(s: Tensor, r: Tensor, g: Tensor, prec: Tensor) -> Tensor:
    """∇s per row, (B, d, d): −Σ_k r_k P_k + Σ_k r_k g_k g_kᵀ − s sᵀ."""
    b, k, d = g.shape
    mixed = (r @ prec.reshape(k, -1)).view(b, d, d) if prec.ndim == 3 else torch.diag_embed(r @ prec)
    jac = torch.baddbmm(mixed, (g * r.unsqueeze(-1)).transpose(1, 2), g, beta=-1)
    return jac - s.unsqueeze(2) * s.unsqueeze(1)


def _jvp_direct(s: Tensor, r: Tensor, g: Tensor, prec: Tensor, v: Tensor) -> Tensor:
    """∇s v = −Σ_k r_k P_k v + Σ_k r_k (g_kᵀ v) g_k − (sᵀ v) s without forming ∇s."""
    b, k, d = g.shape
    if prec.ndim == 2:
        pv = v.unsqueeze(1) * prec
    else:  # P_k symmetric: row k of v @ [P_1 … P_K] is P_k v
        pv = (v @ prec.transpose(0, 1).reshape(d, k * d)).view(b, k, d)
    gv = (g @ v.unsqueeze(-1)).squeeze(-1)  # (B, K)
    return ((r * gv).unsqueeze(1) @ g - r.unsqueeze(1) @ pv).squeeze(1) - (s * v).sum(-1, keepdim=True) * s
