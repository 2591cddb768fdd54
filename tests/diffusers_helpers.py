"""diffusers' own schedulers run as diffusers runs them, on a tiny seeded UNet, for parity tests.

diffusers keeps its tables in float32 (``alphas_cumprod``, DPM-Solver's ``sigmas``) and
DPM-Solver/UniPC cast the state to float32 inside ``step``; ``float64_scheduler`` lifts both,
so the remaining gap to scoresolve is float64 rounding (~1e-15) rather than float32 (~1e-7).
"""

from __future__ import annotations

import inspect
import textwrap

import torch

diffusers = __import__("pytest").importorskip("diffusers")


def tiny_unet(channels: int = 3, size: int = 8, seed: int = 0, **kw) -> diffusers.UNet2DModel:
    """A seeded random ``UNet2DModel`` in float64, small enough for CI."""
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=(8, 16),
        layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, **kw).double().eval()


def _without_float32_cast(cls):
    """``cls`` with the ``sample = sample.to(torch.float32)`` line of ``step`` removed (None if absent)."""
    src = textwrap.dedent(inspect.getsource(cls.step))
    line = "sample = sample.to(torch.float32)"
    if line not in src:
        return None
    ns = dict(vars(inspect.getmodule(cls)))
    exec(src.replace(line, "pass"), ns)  # noqa: S102 - the library's own code, one line changed
    return type(cls.__name__ + "64", (cls,), {"step": ns["step"]})


def float64_scheduler(sched):
    """Make an already configured scheduler compute in float64 (call before ``set_timesteps``)."""
    cls = _without_float32_cast(type(sched)) if "sample.to(torch.float32)" in inspect.getsource(type(sched).step) \
        else type(sched)
    if cls is None:
        return None
    new = cls.from_config(sched.config)
    new.alphas_cumprod = new.alphas_cumprod.double()
    if isinstance(getattr(new, "final_alpha_cumprod", None), torch.Tensor) and not new.config.set_alpha_to_one:
        new.final_alpha_cumprod = new.alphas_cumprod[0]  # DDIM's ᾱ below timestep 0 (ᾱ_0 when not 1)
    return new


def set_timesteps64(sched, n: int) -> None:
    """``set_timesteps``, then (for σ-based schedulers) the σ table recomputed in float64."""
    sched.set_timesteps(n)
    if getattr(sched, "sigmas", None) is not None and sched.alphas_cumprod.dtype == torch.float64:
        ac = sched.alphas_cumprod
        sig = ((1 - ac) / ac).sqrt()
        last = sig[:1] if float(sched.sigmas[-1]) > 0 else sig.new_zeros(1)  # final_sigmas_type sigma_min / zero
        tau = sched.timesteps.to(torch.float64)  # fractional for Euler/Heun/LMS "linspace": σ linear in τ
        lo = tau.floor().long().clamp(max=len(sig) - 2)
        sched.sigmas = torch.cat([sig[lo] + (tau - lo) * (sig[lo + 1] - sig[lo]), last])


def run_diffusers(unet, sched, x_T: torch.Tensor, n: int, f64: bool = False, step_kwargs: dict | None = None,
                  **model_kwargs):
    """diffusers' sampling loop: (x_0, number of UNet calls); ``step_kwargs`` go to ``sched.step``
    (e.g. DDIM's ``use_clipped_model_output``)."""
    if f64:
        set_timesteps64(sched, n)
    else:
        sched.set_timesteps(n)
    x = x_T.clone() * sched.init_noise_sigma
    calls = 0
    with torch.no_grad():
        for tau in sched.timesteps:
            out = unet(sched.scale_model_input(x, tau), tau, **model_kwargs).sample
            calls += 1
            x = sched.step(out, tau, x, **(step_kwargs or {})).prev_sample
    return x, calls


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b|."""
    return float((a - b).abs().max() / b.abs().max())
