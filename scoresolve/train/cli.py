"""``scoresolve train`` and ``scoresolve sample --run DIR``.

    scoresolve train --data digits --sde vp --steps 20000 --out runs/digits   # resumes if DIR has a checkpoint
    scoresolve sample --run runs/digits --method ode                          # DIR/samples_ode.png
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch

from ..cliargs import Parser, UsageError, check_float, check_int, check_out_dir, check_out_file, report
from ..sde import SDES
from ..timegrid import GRIDS
from .checkpoint import ConfigMismatchError
from .data import DATASETS, load_dataset
from .losses import LOSSES, REDUCTIONS, T_SAMPLINGS, WEIGHTINGS
from .parameterization import PARAMETERIZATIONS
from .run import CHECKPOINT, CONFIG, load_run

__all__ = ["train_main", "sample_main", "build"]

# what the command line chooses when not told: per kind of network
DEFAULTS = {"mlp": {"width": 128, "lr": 1e-3, "batch_size": 256},
            "unet": {"width": 32, "lr": 5e-4, "batch_size": 128}}
TRAIN_KEYS = ("data", "sde", "loss", "weighting", "t_sampling", "eps", "reduction", "parameterization",
              "scale_by_sigma", "net", "width", "depth", "beta_min", "beta_max", "sigma_min", "sigma_max",
              "n_levels", "n_steps", "batch_size", "lr", "warmup", "grad_clip", "ema", "seed")


def _train_parser() -> argparse.ArgumentParser:
    p = Parser(prog="scoresolve train", description=(
        "Train a score model on a bundled data set; rerunning with the same --out resumes from its checkpoint "
        "(the other options are then read from DIR/config.json unless given)."))
    a = p.add_argument
    a("--data", choices=list(DATASETS), help="data set (required for a new run)")
    a("--out", required=True, help="run directory (checkpoint, config.json)")
    a("--steps", type=int, default=20_000, help="total optimisation steps (default 20000)")
    a("--sde", choices=list(SDES), default=None, help="forward SDE (default vp)")
    a("--loss", choices=list(LOSSES), default=None, help="objective (default dsm)")
    a("--weighting", choices=WEIGHTINGS, default=None, help="dsm/ssm λ(t) (default perceptual)")
    a("--t-sampling", dest="t_sampling", choices=T_SAMPLINGS, default=None, help="default uniform")
    a("--eps", type=float, default=None, help="smallest training time (default 1e-5)")
    a("--reduction", choices=REDUCTIONS, default=None)
    a("--parameterization", choices=PARAMETERIZATIONS, default=None,
      help="network output (default epsilon; score for ncsn/ssm)")
    a("--scale-by-sigma", dest="scale_by_sigma", action=argparse.BooleanOptionalAction, default=None,
      help="NCSNv2 score = output/σ (default: on for ncsn, off otherwise)")
    a("--net", choices=["auto", "mlp", "unet"], default=None, help="auto: unet for images, mlp otherwise")
    a("--width", type=int, default=None, help="MLP hidden units / U-Net base channels")
    a("--depth", type=int, default=None, help="MLP residual blocks (default 3)")
    a("--beta-min", dest="beta_min", type=float, default=None)
    a("--beta-max", dest="beta_max", type=float, default=None)
    a("--sigma-min", dest="sigma_min", type=float, default=None)
    a("--sigma-max", dest="sigma_max", type=float, default=None,
      help="VE: default the largest distance between two training points (NCSNv2 Technique 1)")
    a("--n-levels", dest="n_levels", type=int, default=None, help="ncsn: noise levels (default 10)")
    a("--n-steps", dest="n_steps", type=int, default=None, help="ddpm: discrete steps (default 1000)")
    a("--batch-size", dest="batch_size", type=int, default=None)
    a("--lr", type=float, default=None)
    a("--warmup", type=int, default=None, help="default 100")
    a("--grad-clip", dest="grad_clip", type=float, default=None, help="default 1.0")
    a("--ema", type=float, default=None, help="default 0.999")
    a("--seed", type=int, default=None, help="default 0")
    a("--checkpoint-every", dest="checkpoint_every", type=int, default=1000)
    a("--threads", type=int, default=None, help="torch.set_num_threads")
    a("--no-progress", dest="progress", action="store_false")
    return p


def _settings(args: argparse.Namespace, saved: dict | None) -> dict:
    """The run's settings: given options, else the saved run's, else the defaults."""
    s = {k: getattr(args, k) for k in TRAIN_KEYS}
    for k, v in (saved or {}).items():
        if s.get(k) is None:
            s[k] = v
    if s["data"] is None:
        raise ValueError("--data is required for a new run (or point --out at an existing run)")
    image = len(DATASETS[s["data"]].item_shape) == 3
    s["net"] = s["net"] if s["net"] not in (None, "auto") else ("unet" if image else "mlp")
    base = {"sde": "vp", "loss": "dsm", "weighting": "perceptual", "t_sampling": "uniform", "eps": 1e-5,
            "reduction": "mean", "scale_by_sigma": s["loss"] == "ncsn", "depth": 3, "warmup": 100, "grad_clip": 1.0,
            "ema": 0.999, "seed": 0, "n_levels": 10, "n_steps": 1000,
            "parameterization": "score" if s["loss"] in ("ncsn", "ssm") else "epsilon",
            **DEFAULTS[s["net"]]}
    for k, v in base.items():
        if s.get(k) is None:
            s[k] = v
    return s


def build(s: dict, x_train: torch.Tensor):
    """(model, loss) for the settings ``s`` (``_settings``) and the training data."""
    from .. import ncsn
    from .losses import ddpm_loss, dsm_loss, ncsn_loss, ssm_loss
    from .nets import ScoreMLP, UNet

    sde_kw = {k: s[k] for k in ("beta_min", "beta_max") if s[k] is not None} if s["sde"] != "ve" else {
        "sigma_min": s["sigma_min"] if s["sigma_min"] is not None else 0.01,
        "sigma_max": s["sigma_max"] if s["sigma_max"] is not None else round(ncsn.sigma_max_from_data(x_train), 4)}
    sde = SDES[s["sde"]](**sde_kw)
    common = dict(parameterization=s["parameterization"], scale_by_sigma=s["scale_by_sigma"])
    if s["loss"] == "dsm":
        loss = dsm_loss(sde, weighting=s["weighting"], t_sampling=s["t_sampling"], eps=s["eps"],
                        reduction=s["reduction"], **common)
    elif s["loss"] == "ssm":
        loss = ssm_loss(sde, weighting=s["weighting"], t_sampling=s["t_sampling"], eps=s["eps"],
                        reduction=s["reduction"], **common)
    elif s["loss"] == "ncsn":
        loss = ncsn_loss(sde, n_levels=s["n_levels"], reduction=s["reduction"], **common)
    else:
        loss = ddpm_loss(sde, n_steps=s["n_steps"])
    item = tuple(x_train.shape[1:])
    if s["net"] == "unet":
        if len(item) != 3:
            raise ValueError(f"--net unet needs image data (C, H, W), {s['data']} has items of shape {item}")
        model = UNet(in_channels=item[0], channels=s["width"])
    else:
        model = ScoreMLP(dim=int(torch.tensor(item).prod()), hidden=s["width"], depth=s["depth"])
        if len(item) != 1:
            raise ValueError(f"--net mlp needs vector data, {s['data']} has items of shape {item}; use --net unet")
    return model, loss


def _check_settings(s: dict) -> None:
    """Every training setting in its valid range (UsageError naming the option otherwise)."""
    for key, lo in (("width", 1), ("depth", 1), ("n_levels", 2), ("n_steps", 1), ("batch_size", 1),
                    ("warmup", 0), ("seed", 0)):
        check_int("--" + key.replace("_", "-"), s[key], lo)
    check_float("--eps", s["eps"], 0.0, 1.0)
    check_float("--lr", s["lr"], 0.0)
    check_float("--grad-clip", s["grad_clip"], 0.0)
    check_float("--ema", s["ema"], 0.0, 1.0, lo_open=False)
    check_float("--beta-min", s["beta_min"], 0.0)
    check_float("--beta-max", s["beta_max"], s["beta_min"] or 0.0)
    check_float("--sigma-min", s["sigma_min"], 0.0)
    check_float("--sigma-max", s["sigma_max"], s["sigma_min"] or 0.0)
    item = DATASETS[s["data"]].item_shape
    if (s["net"] == "unet") != (len(item) == 3):
        want = "image data (C, H, W)" if s["net"] == "unet" else "vector data"
        raise UsageError(f"--net {s['net']} needs {want}; {s['data']} has items of shape {item} "
                         f"(use --net {'mlp' if s['net'] == 'unet' else 'unet'} or --net auto)")


def _saved_settings(out: Path) -> dict | None:
    if not (out / CONFIG).exists():
        return None
    try:
        return dict(json.loads((out / CONFIG).read_text())["settings"])
    except (ValueError, KeyError, TypeError) as err:
        raise UsageError(f"--out {out}: {out / CONFIG} is unreadable ({err}); repair or remove it") from None


def _prepare_train(args: argparse.Namespace):
    """(settings, saved, training data, model, loss), everything checked; nothing written yet."""
    check_int("--steps", args.steps, 0)
    check_int("--checkpoint-every", args.checkpoint_every, 1)
    check_int("--threads", args.threads, 1)
    out = Path(args.out)
    check_out_dir("--out", out)
    saved = _saved_settings(out)
    try:
        s = _settings(args, saved)
    except ValueError as e:
        raise UsageError(str(e)) from None
    _check_settings(s)
    if args.threads:
        torch.set_num_threads(args.threads)
    x_train = load_dataset(s["data"], "train")
    torch.manual_seed(s["seed"])  # the network's initial weights
    try:
        model, loss = build(s, x_train)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return s, saved, x_train, model, loss


def train_main(argv: list[str] | None = None) -> int:
    from .trainer import fit

    args = _train_parser().parse_args(argv)
    try:
        s, saved, x_train, model, loss = _prepare_train(args)
    except UsageError as e:
        return report("scoresolve train", e)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if saved is None:  # written first, so an interrupted run can be resumed with just --out
        (out / CONFIG).write_text(json.dumps({"settings": s}, indent=2) + "\n")
    start = time.perf_counter()
    try:
        state = fit(model, loss, x_train, steps=args.steps, batch_size=s["batch_size"], lr=s["lr"],
                    warmup=s["warmup"], grad_clip=s["grad_clip"], ema=s["ema"], seed=s["seed"],
                    checkpoint=out / CHECKPOINT, checkpoint_every=args.checkpoint_every, progress=args.progress,
                    meta={"dataset": s["data"]})
    except (ConfigMismatchError, ValueError) as e:  # another run's checkpoint, or none readable
        return report("scoresolve train", e)
    except FloatingPointError as e:  # the loss diverged: not a usage error
        return report("scoresolve train", e, status=1)
    (out / CONFIG).write_text(json.dumps({"settings": s, "fit": state.config}, indent=2) + "\n")
    done = f"resumed at step {state.resumed_from}, " if state.resumed_from is not None else ""
    last = f", loss {state.history[-1][1]:.4g}" if state.history else ""
    print(f"{done}trained to step {state.step} in {time.perf_counter() - start:.1f} s{last}; "
          f"checkpoint {out / CHECKPOINT}\nsample with: scoresolve sample --run {out} --method ode")
    return 0


def _sample_parser() -> argparse.ArgumentParser:
    p = Parser(prog="scoresolve sample", description=(
        "Sample a trained run and write a PNG: an image grid for image data, a scatter plot beside the "
        "training data for 2-D data."))
    a = p.add_argument
    a("--run", "--run-dir", dest="run", required=True, help="run directory written by scoresolve train (or a "
      "checkpoint file); under torchrun write --run-dir, since torchrun itself takes --run as --run-path")
    a("--method", default="ode", help="a scoresolve sampler name (default ode), optionally with sampler "
      "options: unipc:solver_order=4 or ode_adaptive_ps:rtol=0.005;atol=0.005")
    a("--n", type=int, default=None, help="samples (default 64 images / 5000 points)")
    a("--steps", type=int, default=None, help="sampler steps (default: the method's)")
    a("--nfe", type=int, default=None, help="score evaluations per sample instead of --steps (the steps derived "
      "from it; ode_adaptive_ps keeps every sample within it)")
    a("--grid", default=None, help="time grid: uniform, quadratic, log_snr, karras, or scale (the deterministic "
      "fixed-step samplers: a first step placed from the data's scale read off the score, one evaluation of 256 "
      "prior draws counted in the NFE); default: the method's")
    a("--data-mean", default=None, help="start from the prior centred at m(T) μ̂, μ̂ the data's "
      "mean read off the score at T (sample(data_mean='estimate'): the same 256 prior draws as --grid scale, one "
      "evaluation shared with it, counted in the NFE)")
    a("--seed", type=int, default=0)
    a("--out", default=None, help="PNG path (default RUN/samples_METHOD.png)")
    a("--save", default=None, help="also save the raw-coordinate samples as a .pt tensor here")
    a("--no-ema", dest="ema", action="store_false", help="use the raw weights instead of the EMA")
    a("--threads", type=int, default=None)
    a("--num", "--samples", dest="n", type=int, default=None, help="alias of --n (under torchrun write "
      "--samples: torchrun takes --n and --num as its own options)")
    a("--shard-dir", default=None, help="draw the samples in resumable chunks into this directory, spread "
      "over the ranks when started with torchrun (merged into DIR/samples.pt, bit-identical for any world size)")
    a("--chunk", type=int, default=1000, help="samples per chunk with --shard-dir")
    return p


def _grid_options(args: argparse.Namespace) -> dict:
    """``sample``'s steps (always, None for the method's), nfe, grid and data_mean (where given)."""
    return {"steps": args.steps,
            **{k: getattr(args, k) for k in ("nfe", "grid", "data_mean") if getattr(args, k) is not None}}


def _method(args: argparse.Namespace):
    """``--method``: the registered name as it is, or with options the sampler they make (a sharded job's
    manifest records it by its repr, every field)."""
    from ..registry import method_arg

    return method_arg(args.method)


def _sample_sharded(run, args, n: int) -> int:
    """``--shard-dir``: chunked, resumable sampling across torch.distributed ranks."""
    from ..distributed import process_group, sample_to_dir

    with process_group():  # torchrun's group for this command, or the caller's, left open
        try:
            path = sample_to_dir(run.score_fn, run.sde, tuple(run.data_shape), n, args.shard_dir,
                                 method=_method(args), seed=args.seed, chunk=args.chunk, **_grid_options(args),
                                 config={"run": str(Path(args.run).resolve()), "ema": args.ema,
                                         "step": run.step})
        except (ValueError, TypeError, FileNotFoundError) as e:
            return report("scoresolve sample", e)
    if path is not None:
        print(f"{n} samples with {args.method} (model coordinates; raw = data.to_raw) in {path}")
    return 0


def _check_sample_args(args: argparse.Namespace) -> None:
    """Every option of ``scoresolve sample`` that can be checked before loading the run."""
    from ..registry import method_from_spec

    check_int("--n", args.n, 1)
    check_int("--steps", args.steps, 1)
    check_int("--nfe", args.nfe, 1)
    if args.steps is not None and args.nfe is not None:
        raise UsageError("pass --steps or --nfe, not both")
    grids = [*GRIDS, "scale"]
    if args.grid is not None and args.grid not in grids:
        raise UsageError(f"--grid {args.grid!r} is unknown; valid choices: {', '.join(grids)}")
    if args.data_mean not in (None, "estimate"):
        raise UsageError(f"--data-mean {args.data_mean!r} is unknown; valid choices: estimate")
    check_int("--seed", args.seed, 0, 2**63 - 1)
    check_int("--chunk", args.chunk, 1)
    check_int("--threads", args.threads, 1)
    try:
        method_from_spec(args.method)
    except (ValueError, TypeError) as e:
        raise UsageError(f"--method: {e}") from None
    if args.shard_dir:
        check_out_dir("--shard-dir", args.shard_dir)
        for opt in ("out", "save"):
            if getattr(args, opt):
                raise UsageError(f"--{opt} does not apply with --shard-dir (the samples go to DIR/samples.pt)")
    check_out_file("--out", args.out)
    check_out_file("--save", args.save)


def _plot_path(args: argparse.Namespace) -> Path:
    base = Path(args.run) if Path(args.run).is_dir() else Path(args.run).parent
    return Path(args.out) if args.out else base / f"samples_{re.sub(r'[^A-Za-z0-9_.=-]', '_', args.method)}.png"


def sample_main(argv: list[str] | None = None) -> int:
    from ..sampling import sample

    args = _sample_parser().parse_args(argv)
    try:
        _check_sample_args(args)
        run = load_run(args.run, ema=args.ema)
        image = len(run.data_shape) == 3
        if not args.shard_dir and not args.out and (image or run.data_shape == (2,)):
            check_out_file("--out", _plot_path(args))
    except (UsageError, FileNotFoundError, ValueError) as e:
        return report("scoresolve sample", e)
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.n if args.n is not None else (64 if image else 5000)
    if args.shard_dir:
        return _sample_sharded(run, args, n)
    try:
        res = sample(run.score_fn, run.sde, (n, *run.data_shape), _method(args), **_grid_options(args),
                     generator=torch.Generator().manual_seed(args.seed))
    except (ValueError, TypeError) as e:
        return report("scoresolve sample", e)
    try:
        path = _write_samples(run, args, res, n, image)
    except OSError as e:
        return report("scoresolve sample", e, status=1)
    print(f"{n} samples with {args.method}, NFE {res.nfe:g}" + (f"; wrote {path}" if path else ""))
    return 0


def _write_samples(run, args: argparse.Namespace, res, n: int, image: bool) -> Path | None:
    """The PNG (image grid or scatter beside the training data) and, with --save, the tensor."""
    from .data import DATASETS as SPECS
    from .plots import image_grid, scatter_panels

    x = run.to_raw(res.samples)
    path = _plot_path(args)
    title = f"{run.dataset or 'run'}: {args.method}, NFE {res.nfe:g}, step {run.step}"
    if image:
        spec = SPECS.get(run.dataset)
        lo, hi = (spec.shift - spec.scale, spec.shift + spec.scale) if spec else (-1.0, 1.0)
        image_grid(x, path, vmin=lo, vmax=hi, title=title)
    elif run.data_shape == (2,):
        panels = {f"samples ({args.method})": x}
        if run.dataset:
            panels = {"training data": run.to_raw(load_dataset(run.dataset, "train")[:n]), **panels}
        scatter_panels(panels, path, title=title)
    else:
        path = None
    if args.save:
        torch.save(x, args.save)
    return path
