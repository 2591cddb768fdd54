"""Brownian increments for adaptive SDE steps that stay unbiased under rejections.

Redrawing the noise after a rejected step biases an adaptive SDE solver: the error estimate
depends on the draw, so the accepted increments are not Brownian any more (with a step size
per sample GGF's samples came out ~40 % too wide on a 2-D mixture).  Instead every rejected
proposal's value W(h) is remembered, and later proposals are drawn from the Brownian bridge
between the revealed points (Rackauckas & Nie 2017, "Adaptive methods for stochastic
differential equations via natural embeddings and rejection sampling with memory", RSwM).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..sde import append_dims
from ._common import gather_rows
from ._common import words as word_view

__all__ = ["BrownianMemory"]

_FAR = 2.0**60  # an index past every point (float64 index arithmetic is exact below 2**53)


class BrownianMemory:
    """Per-sample revealed future of the Brownian path: up to ``depth`` points (τ, W(τ)),
    τ > 0 measured from the sample's current time, W relative to its current value.

    ``propose(idx, h, xi)`` gives W(h) for the rows ``idx`` from one standard-normal draw ``xi``
    (a bridge between the neighbouring revealed points, or a fresh increment beyond them);
    ``resolve(idx, h, w, ok)`` then forgets the path up to h where accepted and remembers
    (h, W(h)) where rejected.  When a row's memory is full its farthest point is dropped.
    ``resolve`` reuses the search of the ``propose`` just before it when given the same idx and h.

    Layout.  About one point per sample is held on average (a third hold none, a few a dozen),
    so the points of all samples sit in one flat list sorted by sample, then τ, and every
    operation is a few passes over about a batch's worth of numbers, however deep the deepest
    sample: entries ``b + 1 + off[r] : … + count[r]`` of ``tau`` (τ) and ``slot`` are sample r's
    points.  Entry r < b is sample r's origin (τ = 0) and entry b is "none" (τ = ∞), so the left
    neighbour of h is an origin and the right one "none" where there is no point, with the same
    arithmetic (a fresh increment) and no branch per sample.  The values W are absolute (since
    the start) in ``pool``: its row r < b is sample r's W at its current time, ``slot`` the row of
    each point's W.  Accepting a step moves one origin; the list is rebuilt every resolve
    without moving any W, new points' W are appended to the pool, compacted when it is full.
    Index arithmetic is in float64 (exact, and faster than int64 on CPU) with 0/1 masks.
    """

    def __init__(self, x: Tensor, depth: int = 16):
        b, dev = x.shape[0], x.device
        self.depth, self.b, self.n = depth, b, 0  # n: points held (on the host)
        f64 = dict(dtype=torch.float64, device=dev)
        self.pool = torch.zeros((2 * b,) + tuple(x.shape[1:]), dtype=x.dtype, device=dev)
        # tau, slot, row: entries (origins, "none", points; row is the points' sample), and a
        # second set the next resolve rebuilds the list into
        self.tau, self.slot, self._row_list = self._lists(b + 2)
        self.row = self._row_list[b + 1:b + 1]
        self._spare = self._lists(2 * b + 2)
        self.count = torch.zeros(b, **f64)  # points held per sample
        self.start = torch.full((b,), b + 1.0, **f64)  # entry of its first point
        self.top = b  # the pool's first free row
        self.most = 0  # no sample holds more points than this (on the host)
        self._every = (None, -1)  # the last idx found to be every sample, and its version
        self._found = None  # the last propose's search, for the resolve that follows it
        self._arange = torch.arange(b + 1, 2 * b + 2, **f64)  # entry numbers of the points
        self._none = torch.tensor(float(b), **f64)
        self._samples = torch.arange(b, **f64)

    def _lists(self, size: int) -> tuple[Tensor, Tensor, Tensor]:
        """Empty entry lists for ``size`` − b − 1 points, the origins and "none" filled in."""
        b, dev = self.b, self.pool.device
        tau = torch.empty(size, dtype=torch.float64, device=dev)
        slot = torch.empty(size, dtype=torch.long, device=dev)
        tau[:b], tau[b] = 0.0, torch.inf
        slot[:b + 1] = torch.arange(b + 1, device=dev)
        slot[b] = 0  # "none": any finite W (row 0's origin)
        return tau, slot, torch.empty(size, dtype=torch.long, device=dev)

    @property
    def bound(self) -> int:
        """No row holds more revealed points than this (one host sync)."""
        return int(self.count.max()) if self.n else 0

    def _is_every(self, idx: Tensor) -> bool:
        """Whether idx is 0, 1, …, b − 1 (checked once per index tensor, unless it changes)."""
        if idx is self._every[0] and idx._version == self._every[1]:
            return True
        if idx.numel() != self.b or not bool((idx == torch.arange(self.b, device=idx.device)).all()):
            return False
        self._every = (idx, idx._version)
        return True

    def _entries(self, n: int) -> Tensor:
        """The entry numbers b + 1 … b + n (float64) of the points."""
        if self._arange.numel() < n:
            self._arange = torch.arange(self.b + 1, self.b + 1 + 2 * n, dtype=torch.float64, device=self.tau.device)
        return self._arange[:n]

    def _search(self, idx: Tensor, h: Tensor, every: bool) -> tuple:
        """For the rows idx (float64): i (points strictly before h), the row's count and first
        entry, the left neighbour's entry (its origin when i = 0) and the right one's ("none"
        when i = count)."""
        n, b, rows = self.n, self.b, self.row
        hb = h if every else h.new_zeros(b).index_copy_(0, idx, h)  # rows not asked: no point before 0
        before = torch.lt(self.tau[b + 1:b + 1 + n], hb.index_select(0, rows), out=hb.new_empty(n))
        i = h.new_zeros(b).index_add_(0, rows, before)
        cnt, start = self.count, self.start
        if every:
            idx_f = self._samples
        else:
            i, cnt, start = i.index_select(0, idx), cnt.index_select(0, idx), start.index_select(0, idx)
            idx_f = idx.double()
        at = start + i  # the right neighbour, if i < count
        left = torch.lerp(idx_f, at - 1.0, torch.gt(i, 0.0, out=torch.empty_like(i)))
        right = torch.lerp(at, self._none, torch.ge(i, cnt, out=torch.empty_like(i)))
        return i, cnt, start, left, right

    def propose(self, idx: Tensor, h: Tensor, xi: Tensor) -> Tensor:
        if self.n == 0:
            self._found = None
            return append_dims(h.sqrt(), xi.ndim).to(xi.dtype) * xi  # a fresh increment
        every = self._is_every(idx)
        i, cnt, start, left, right = self._search(idx, h, every)
        k = h.numel()
        lr = torch.cat([left, right]).long()
        t = self.tau.index_select(0, lr)
        w = gather_rows(self.pool, self.slot.index_select(0, lr))  # W (absolute) at both neighbours
        t_l, t_r, w_l, w_r = t[:k], t[k:], w[:k], w[k:]
        dl = h - t_l  # > 0
        frac = dl / (t_r - t_l)  # ≤ 1; 0 beyond the last point (t_r = ∞, whose W is any finite value)
        sd = (1.0 - frac).mul_(dl).sqrt_()  # the bridge's std; √(h − t_l) beyond the last point
        self._found = (idx, h, i, cnt, start, t_r, every)
        c = torch.stack([frac, sd]).to(xi.dtype)
        w_0 = self.pool[:self.b] if every else gather_rows(self.pool, idx)  # W at the origin
        out = (w_l - w_0).addcmul_(append_dims(c[0], xi.ndim), w_r.sub_(w_l))
        return out.addcmul_(append_dims(c[1], xi.ndim), xi)

    def resolve(self, idx: Tensor, h: Tensor, w_h: Tensor, ok: Tensor, n_rejected: int | None = None,
                rejected: Tensor | None = None) -> None:
        """Forget the path up to h where accepted, remember (h, W(h)) where rejected (unless
        W(h) was revealed already).  ``n_rejected`` (the number of False in ``ok``) lets the
        case with no points and no rejection return at once, and ``rejected`` (their positions,
        ascending) saves finding them, if the caller knows them."""
        n, b, depth, dev = self.n, self.b, self.depth, h.device
        if n == 0 and n_rejected == 0:
            return
        found, self._found = self._found, None
        if found is not None and found[0] is idx and found[1] is h:
            i, cnt, start, t_r, every = found[2:]
        elif n:
            every = self._is_every(idx)
            i, cnt, start, _, right = self._search(idx, h, every)
            t_r = self.tau.index_select(0, right.long())
        else:
            every = self._is_every(idx)
            i = cnt = h.new_zeros(h.shape)
            start = torch.full_like(h, b + 1.0)
            t_r = torch.full_like(h, torch.inf)
        if self.most >= depth:
            self.most = self.bound  # some row may be full: check
        full = self.most >= depth
        okd = ok.to(torch.float64)
        # rejected rows insert (h, W(h)) at their place i unless W(h) is revealed already (or h
        # lies beyond a full row's farthest point); accepted rows drop their points up to h
        exact = torch.eq(t_r, h, out=torch.empty_like(h))
        rej = 1.0 - okd
        ins = rej - exact * rej
        if full:
            ins.mul_(torch.lt(i, depth, out=torch.empty_like(i)))
        drop = (i + exact).mul_(okd)
        cnt_new = (cnt - drop).add_(ins)
        if full:
            cnt_new.clamp_(max=depth)
        cnt_b = cnt_new if every else self.count.index_copy(0, idx, cnt_new)
        ends = cnt_b.cumsum(0)
        n_new, n_ins = (int(v) for v in torch.stack([ends[-1], ins.sum()]).tolist())
        start_b = ends.sub_(cnt_b).add_(b + 1)  # the new first entries
        every_rejected = rejected is not None and n_ins == rejected.numel()  # all rejected rows insert
        new = rejected if every_rejected else ins.nonzero().squeeze(1)
        kk = new.numel()
        if self.top + kk > self.pool.shape[0]:
            self._compact(kk)
        tau, slot, row = self._spare  # entry b + 1 + n_new: where dropped points go
        if tau.numel() < b + 2 + n_new:
            tau, slot, row = self._lists(b + 2 + 2 * n_new)
        if n:
            # each old point's new entry: j + (new start − old start) − (points dropped before
            # it) + (1 if at or past the inserted point); dropped if j < old start + dropped
            gap = torch.addcmul(start + i, 1.0 - ins, torch.full_like(i, _FAR))
            if every:
                shift, keep_from, moved = start_b - start - drop, start + drop, h * okd
            else:
                drop_b = h.new_zeros(b).index_copy_(0, idx, drop)
                shift, keep_from = start_b - self.start - drop_b, self.start + drop_b
                gap = torch.full_like(self.start, _FAR).index_copy_(0, idx, gap)
                moved = h.new_zeros(b).index_copy_(0, idx, h * okd)
            rows, j = self.row, self._entries(n)
            dest = torch.ge(j, gap.index_select(0, rows), out=torch.empty_like(j))
            dest.add_(j).add_(shift.index_select(0, rows))
            keep = torch.ge(j, keep_from.index_select(0, rows), out=torch.empty_like(j))
            if full:  # a full row's farthest point goes when one is inserted before it
                pos = dest - start_b.index_select(0, rows)
                keep.mul_(torch.lt(pos, depth, out=torch.empty_like(pos)))
            dest = torch.lerp(self._none.new_full((), b + 1.0 + n_new), dest, keep).long()
            tau.index_copy_(0, dest, self.tau[b + 1:b + 1 + n].sub(moved.index_select(0, rows)))
            slot.index_copy_(0, dest, self.slot[b + 1:b + 1 + n])
            row.index_copy_(0, dest, rows)
        # the origins of the accepted rows move to W(h); the new points' W (absolute) are appended
        w_0 = self.pool[:b] if every else gather_rows(self.pool, idx)
        w_abs = w_0 + w_h
        words = word_view(self.pool) if every and every_rejected else None
        if words is not None:  # short rows: the rejected rows' origins put back (cheaper than a blend)
            kept = words.index_select(0, new)
            words[:b] = word_view(w_abs)
            words.index_copy_(0, new, kept)
        elif every:
            self.pool[:b].addcmul_(append_dims(okd, w_h.ndim).to(w_h.dtype), w_h)
        else:
            self.pool.index_add_(0, idx, w_h * append_dims(okd, w_h.ndim).to(w_h.dtype))
        if kk:
            top = self.top
            self.pool[top:top + kk] = gather_rows(w_abs, new)
            at = (start_b if every else start_b.index_select(0, idx)) + i
            dest = at.index_select(0, new).long()
            tau.index_put_((dest,), h.index_select(0, new))
            slot.index_put_((dest,), torch.arange(top, top + kk, device=dev))
            row.index_put_((dest,), new if every else idx.index_select(0, new))
            self.top = top + kk
        self._spare = self.tau, self.slot, self._row_list
        self.tau, self.slot, self._row_list, self.row = tau, slot, row, row[b + 1:b + 1 + n_new]
        self.count, self.start, self.n = cnt_b, start_b, n_new
        self.most = min(self.most + (kk > 0), depth + 1)

    def _compact(self, need: int) -> None:
        """A new pool with the origins, the held points' W and room for (at least) ``need`` more."""
        b, n = self.b, self.n
        cap = max(2 * b, b + 4 * (n + need))
        pool = self.pool.new_empty((cap,) + self.pool.shape[1:])
        pool[:b] = self.pool[:b]
        torch.index_select(self.pool, 0, self.slot[b + 1:b + 1 + n], out=pool[b:b + n])
        self.slot[b + 1:b + 1 + n] = torch.arange(b, b + n, device=pool.device)
        self.pool, self.top = pool, b + n
