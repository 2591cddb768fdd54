"""Reference score networks in plain PyTorch: an MLP for low-dimensional data and a small
U-Net for images, both conditioned on the continuous time t ∈ [0, T] by a sinusoidal embedding.

Every network maps (x, t) -> a tensor shaped like x, exposes ``data_shape`` (None for free
sizes) so the trainer can reject mismatched data, and ``config()`` so a run can rebuild it
(``net_from_config``).

Reference: Vaswani et al. 2017 (sinusoidal embedding); Ho et al. 2020, Appendix B (U-Net with
time-conditioned residual blocks and GroupNorm); Ronneberger et al. 2015 (U-Net).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SinusoidalEmbedding", "ScoreMLP", "UNet", "NETS", "net_from_config", "net_config"]


class SinusoidalEmbedding(nn.Module):
    """e(t) = [sin(ω_k t), cos(ω_k t)], ω_k log-spaced in [1, max_freq]: shape (B,) -> (B, dim)."""

    def __init__(self, dim: int, max_freq: float = 1000.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"embedding dim must be an even integer >= 2, got {dim}")
        half = dim // 2
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(max_freq), half)), persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        a = t.reshape(-1, 1).to(self.freqs.dtype) * self.freqs
        return torch.cat([a.sin(), a.cos()], dim=1)


def _time_mlp(embed_dim: int, out: int) -> nn.Sequential:
    return nn.Sequential(SinusoidalEmbedding(embed_dim), nn.Linear(embed_dim, out), nn.SiLU(), nn.Linear(out, out))


class _ResLinear(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.lin1, self.lin2, self.temb = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return h + self.lin2(F.silu(self.lin1(F.silu(h)) + self.temb(emb)))


class ScoreMLP(nn.Module):
    """Residual MLP on R^dim: h = W x + e(t); h ← h + W₂ φ(W₁ φ(h) + V e(t)) (``depth`` times);
    out = W_o φ(h), with φ = SiLU and e a sinusoidal time embedding through a 2-layer MLP.

    Args:
        dim: data dimension d (inputs (B, d)).
        hidden: width.
        depth: residual blocks.
        embed_dim: sinusoidal embedding size.
    """

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, embed_dim: int = 64):
        super().__init__()
        for name, v in (("dim", dim), ("hidden", hidden), ("depth", depth)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self._cfg = dict(dim=dim, hidden=hidden, depth=depth, embed_dim=embed_dim)
        self.data_shape: tuple[int | None, ...] = (dim,)
        self.embed = _time_mlp(embed_dim, hidden)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_ResLinear(hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self.embed(t.to(x.dtype))
        h = self.inp(x) + emb
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(h))

    def config(self) -> dict:
        return {"name": "mlp", **self._cfg}


def _groups(ch: int) -> int:
    return math.gcd(ch, 8)


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv, + time projection, GroupNorm-SiLU-Dropout-Conv, with a skip."""

    def __init__(self, cin: int, cout: int, emb: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(emb, cout)
        self.norm2, self.conv2 = nn.GroupNorm(_groups(cout), cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.temb(emb)[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class UNet(nn.Module):
    """A small time-conditioned U-Net for (B, C, H, W) images of any size (odd sizes too: each
    up-sampling returns to the size of its skip connection, so 28 -> 14 -> 7 -> 14 -> 28 works).

    Args:
        in_channels: C.
        channels: base width; level i has channels · channel_mults[i].
        channel_mults: one entry per resolution; len − 1 down-samplings by 2.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        dropout: in the residual blocks.
        embed_dim: sinusoidal embedding size (the embedding MLP has 4 · channels units).
    """

    def __init__(self, in_channels: int = 1, channels: int = 32, channel_mults: tuple[int, ...] = (1, 2),
                 num_res_blocks: int = 1, dropout: float = 0.0, embed_dim: int = 64):
        super().__init__()
        channel_mults = tuple(int(c) for c in channel_mults)
        if not channel_mults or min(channel_mults) < 1:
            raise ValueError(f"channel_mults must be positive integers, got {channel_mults}")
        self._cfg = dict(in_channels=in_channels, channels=channels, channel_mults=list(channel_mults),
                         num_res_blocks=num_res_blocks, dropout=dropout, embed_dim=embed_dim)
        self.data_shape: tuple[int | None, ...] = (in_channels, None, None)
        emb = 4 * channels
        self.embed = _time_mlp(embed_dim, emb)
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down, skips, ch = nn.ModuleList(), [channels], channels
        last = len(channel_mults) - 1
        for i, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.down.append(_ResBlock(ch, channels * mult, emb, dropout))
                ch = channels * mult
                skips.append(ch)
            if i != last:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid = nn.ModuleList([_ResBlock(ch, ch, emb, dropout), _ResBlock(ch, ch, emb, dropout)])
        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(channel_mults))):
            for _ in range(num_res_blocks + 1):
                self.up.append(_ResBlock(ch + skips.pop(), channels * mult, emb, dropout))
                ch = channels * mult
            if i != 0:
                self.up.append(nn.Conv2d(ch, ch, 3, padding=1))  # after nearest up-sampling
        self.norm_out = nn.GroupNorm(_groups(ch), ch)
        self.conv_out = nn.Conv2d(ch, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self.embed(t.to(x.dtype))
        hs = [self.conv_in(x)]
        for layer in self.down:
            hs.append(layer(hs[-1], emb) if isinstance(layer, _ResBlock) else layer(hs[-1]))
        h = hs[-1]
        for block in self.mid:
            h = block(h, emb)
        for layer in self.up:
            if isinstance(layer, _ResBlock):
                h = layer(torch.cat([h, hs.pop()], dim=1), emb)
            else:
                h = layer(F.interpolate(h, size=hs[-1].shape[-2:], mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))

    def config(self) -> dict:
        return {"name": "unet", **self._cfg}


NETS: dict[str, type[nn.Module]] = {"mlp": ScoreMLP, "unet": UNet}


def net_config(model: nn.Module) -> dict:
    """The model's ``config()``, or for other modules its class and parameter shapes (enough to
    tell two architectures apart when a checkpoint is resumed)."""
    if hasattr(model, "config") and callable(model.config):
        return model.config()
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    return {"name": f"{type(model).__module__}.{type(model).__qualname__}", "shapes": shapes}


def net_from_config(cfg: dict) -> nn.Module:
    """Rebuild a reference network from ``model.config()``."""
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in NETS:
        raise ValueError(f"cannot rebuild network {name!r}: only the reference networks "
                         f"({', '.join(NETS)}) can be loaded from a config")
    return NETS[name](**cfg)
