"""BrownianMemory (RSwM) on the paths the GGF run rarely takes: a subset of the rows asked at each
step (the tail of a per-sample solve), a full memory (its farthest point dropped) and the pool of
revealed values compacted.  The revealed path must stay Brownian: W(½) and W(1) with variances ½
and 1 and covariance ½, within 5 standard errors of the sample estimates."""

from __future__ import annotations

import math

import pytest
import torch

from scoresolve.samplers.brownian import BrownianMemory


def _walk(n: int, depth: int, subset: bool, noise_dependent: bool, seed: int) -> tuple[torch.Tensor, BrownianMemory]:
    """Adaptive steps over [0, 1] with a checkpoint at ½; returns (W(½), W(1)) per row."""
    g = torch.Generator().manual_seed(seed)
    f64 = dict(dtype=torch.float64)
    mem = BrownianMemory(torch.zeros(n, 1, **f64), depth=depth)
    t, w = torch.zeros(n, **f64), torch.zeros(n, 1, **f64)
    h = torch.full((n,), 0.3, **f64)
    out = torch.zeros(n, 2, **f64)
    for k, t_end in enumerate((0.5, 1.0)):
        while bool((t < t_end).any()):
            idx = (t < t_end).nonzero().squeeze(1)
            if subset:  # some running rows sit a step out, as if the batch had other rows asked
                idx = idx[torch.rand(idx.numel(), generator=g) < 0.7]
                if not idx.numel():
                    continue
            ha = torch.minimum(h[idx], t_end - t[idx])
            w_h = mem.propose(idx, ha, torch.randn(idx.numel(), 1, generator=g, **f64))
            if noise_dependent:
                ok = (w_h[:, 0].abs() < 0.8 * ha.sqrt()) | (ha < 0.01)
            else:
                ok = (torch.rand(idx.numel(), generator=g) < 0.5) | (ha < 0.01)
            n_rej = int((~ok).sum())
            mem.resolve(idx, ha, w_h, ok, n_rej, (~ok).nonzero().squeeze(1) if n_rej else None)
            acc = idx[ok]
            t[acc] = torch.where(ha[ok] >= t_end - t[acc], torch.full_like(ha[ok], t_end), t[acc] + ha[ok])
            w[acc] += w_h[ok]
            h[idx] = torch.where(ok, ha * 1.6, ha * 0.4)
        out[:, k] = w[:, 0]
    return out, mem


@pytest.mark.parametrize("subset,depth,noise_dependent", [(True, 16, True), (False, 2, False), (True, 3, False)])
def test_brownian_memory_path_stays_brownian(subset, depth, noise_dependent):
    n = 20000
    path, mem = _walk(n, depth, subset, noise_dependent, seed=3)
    assert mem.n >= 0 and mem.bound <= depth
    got = path.T @ path / n
    want = torch.tensor([[0.5, 0.5], [0.5, 1.0]], dtype=torch.float64)
    se = ((want.diagonal()[:, None] * want.diagonal()[None, :] + want**2) / n).sqrt()
    assert bool(((got - want).abs() < 5 * se).all()), got
    assert bool((path.mean(0).abs() < 5 * want.diagonal().sqrt() / math.sqrt(n)).all()), path.mean(0)


def test_brownian_memory_is_exercised_where_the_test_means_it():
    """The depth-2 walk fills rows (the farthest point dropped) and compacts the pool."""
    _, mem = _walk(4000, 2, False, False, seed=4)
    assert mem.pool.shape[0] > 2 * 4000 or mem.top > 4000  # the pool grew or was appended to
    calls = {"compact": 0, "full": 0}
    orig_compact = BrownianMemory._compact

    def compact(self, need):
        calls["compact"] += 1
        return orig_compact(self, need)

    orig_bound = BrownianMemory.bound

    def bound(self):
        b = orig_bound.fget(self)
        calls["full"] += b >= self.depth
        return b

    BrownianMemory._compact, BrownianMemory.bound = compact, property(bound)
    try:
        _walk(4000, 2, False, False, seed=5)
    finally:
        BrownianMemory._compact, BrownianMemory.bound = orig_compact, orig_bound
    assert calls["compact"] > 0 and calls["full"] > 0, calls
