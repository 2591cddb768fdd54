"""Training score models for the samplers: denoising score matching for VP, sub-VP and VE,
reference networks, and a trainer whose checkpoints resume exactly.

    from scoresolve import train
    model = train.ScoreMLP(dim=2)
    loss = train.dsm_loss(sde, weighting="likelihood", t_sampling="importance", eps=1e-5)
    state = train.fit(model, loss, data, steps=5_000, ema=0.999, checkpoint="run/ckpt.pt")
    res = scoresolve.sample(state.score_fn(ema=True), sde, (10_000, 2), method="pc")

``fit`` trains on the data exactly as given (no hidden rescaling), so ``state.score_fn`` is the
score of the diffused *training data*; the bundled sets (``train.data.load_dataset``) are scaled to
[−1, 1] and ``train.data.to_raw`` maps samples back.
"""

from . import data
from .checkpoint import (
    ConfigMismatchError,
    CorruptCheckpointError,
    load_checkpoint,
    load_latest_checkpoint,
    save_checkpoint,
)
from .losses import (
    LOSSES,
    DenoisingLoss,
    SlicedScoreLoss,
    TimeSampler,
    ddpm_loss,
    dsm_loss,
    loss_from_config,
    ncsn_loss,
    ssm_loss,
)
from .nets import NETS, ScoreMLP, SinusoidalEmbedding, UNet, net_from_config
from .parameterization import PARAMETERIZATIONS, Parameterization
from .run import Run, load_run
from .trainer import TrainState, fit

__all__ = [
    "fit", "TrainState", "ConfigMismatchError", "load_run", "Run",
    "dsm_loss", "ncsn_loss", "ddpm_loss", "ssm_loss", "loss_from_config", "LOSSES",
    "DenoisingLoss", "SlicedScoreLoss", "TimeSampler", "Parameterization", "PARAMETERIZATIONS",
    "ScoreMLP", "UNet", "SinusoidalEmbedding", "NETS", "net_from_config",
    "save_checkpoint", "load_checkpoint", "load_latest_checkpoint", "CorruptCheckpointError", "data",
]
