"""Conditional scores from an unconditional one: classifier guidance and classifier-free
guidance.  Both return a score callable (x, t) -> Tensor to pass to ``sample`` or any other
entry point.

Bayes' rule at every noise level: ∇ log p_t(x | y) = ∇ log p_t(x) + ∇ log p_t(y | x).
Reference: Song et al. 2021, §5 and Appendix I.1; Dhariwal & Nichol 2021 (guidance scale);
Ho & Salimans 2022 (classifier-free guidance).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..score import ScoreFn

__all__ = ["guided", "classifier_free", "GuidedScore", "ClassifierFreeScore"]


def _check_scale(scale) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise TypeError(f"scale must be a finite number >= 0, got {scale!r}")
    if scale < 0:
        raise ValueError(f"guidance scale must be >= 0 (0 = unguided, 1 = exact posterior), got {scale}")
    return float(scale)


def _autograd(log_likelihood: Callable[[Tensor, Tensor], Tensor], x: Tensor, t: Tensor) -> Tensor:
    """∇_x Σ_i log p_t(y_i | x_i): each sample's value must depend on its own row only."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        ll = log_likelihood(xg, t)
        if not isinstance(ll, Tensor) or ll.shape != (x.shape[0],):
            got = tuple(ll.shape) if isinstance(ll, Tensor) else type(ll).__name__
            raise ValueError(f"log_likelihood must return shape (B,) = ({x.shape[0]},), got {got}")
        (grad,) = torch.autograd.grad(ll.sum(), xg)
    return grad


def _classifier_log_likelihood(classifier, y) -> Callable[[Tensor, Tensor], Tensor]:
    def log_likelihood(x: Tensor, t: Tensor) -> Tensor:
        logits = classifier(x, t)
        if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != x.shape[0]:
            got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"classifier must return logits of shape (B, n_classes), got {got}")
        labels = torch.as_tensor(y, device=x.device, dtype=torch.long).expand(x.shape[0])
        return logits.log_softmax(-1).gather(1, labels[:, None]).squeeze(1)

    return log_likelihood


@dataclass(frozen=True, eq=False)
class GuidedScore:
    """s(x, t) + scale · ∇_x log p_t(y | x); see ``guided``."""

    score_fn: ScoreFn
    grad_fn: Callable[[Tensor, Tensor], Tensor] | None
    log_likelihood: Callable[[Tensor, Tensor], Tensor] | None
    scale: float

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        s = self.score_fn(x, t)
        if self.scale == 0:
            return s
        if self.grad_fn is not None:
            g = self.grad_fn(x, t)
            if not isinstance(g, Tensor) or g.shape != x.shape:
                got = tuple(g.shape) if isinstance(g, Tensor) else type(g).__name__
                raise ValueError(f"log_likelihood_grad must return a tensor shaped like x "
                                 f"{tuple(x.shape)}, got {got}")
        else:
            g = _autograd(self.log_likelihood, x, t)
        return s + self.scale * g.to(s.dtype)


def guided(
    score_fn: ScoreFn,
    log_likelihood_grad: Callable[[Tensor, Tensor], Tensor] | None = None,
    *,
    log_likelihood: Callable[[Tensor, Tensor], Tensor] | None = None,
    classifier: Callable[[Tensor, Tensor], Tensor] | None = None,
    y: int | Tensor | None = None,
    scale: float = 1.0,
) -> GuidedScore:
    """Classifier guidance: s̃(x, t) = ∇ log p_t(x) + scale · ∇_x log p_t(y | x).

    With scale = 1 this is the score of p_t(x | y) (exact if both terms are), so any sampler
    draws from p_0(x | y); scale > 1 sharpens towards p(y | x)^scale.  Give the likelihood
    term exactly one way:

    Args:
        score_fn: the unconditional score (x, t) -> ∇ log p_t(x).
        log_likelihood_grad: (x, t) -> ∇_x log p_t(y | x), shaped like x.
        log_likelihood: (x, t) -> log p_t(y | x) of shape (B,), differentiated by autograd
            (each row must depend on its own sample only: no batch statistics).
        classifier: a time-dependent classifier (x, t) -> logits (B, n_classes), used with
            ``y`` (an int or (B,) labels) through log_softmax and autograd.
        y: the labels for ``classifier``.
        scale: guidance scale >= 0 (Dhariwal & Nichol 2021).

    Returns:
        A score callable.  The likelihood term is not a score evaluation: ``sample`` counts one
        NFE per call, whatever the classifier costs.

    Raises:
        ValueError: no likelihood term or more than one, labels missing, scale < 0.
    Reference: Song et al. 2021, eq. 14 and Appendix I.1.
    """
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable (x, t) -> score, got {type(score_fn).__name__}")
    given = [n for n, v in (("log_likelihood_grad", log_likelihood_grad),
                            ("log_likelihood", log_likelihood), ("classifier", classifier))
             if v is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of log_likelihood_grad=, log_likelihood= or classifier= "
                         f"(got {', '.join(given) if given else 'none'})")
    if (classifier is None) != (y is None):
        raise ValueError("y= (the labels) goes with classifier= and only with it")
    for name, fn in (("log_likelihood_grad", log_likelihood_grad), ("log_likelihood", log_likelihood),
                     ("classifier", classifier)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be callable (x, t) -> Tensor, got {type(fn).__name__}")
    scale = _check_scale(scale)
    if classifier is not None:
        log_likelihood = _classifier_log_likelihood(classifier, y)
    return GuidedScore(score_fn, log_likelihood_grad, log_likelihood, scale)


@dataclass(frozen=True, eq=False)
class ClassifierFreeScore:
    """s_u + scale · (s_c − s_u); see ``classifier_free``."""

    cond_score: ScoreFn
    uncond_score: ScoreFn
    scale: float

    @property
    def evaluations_per_call(self) -> int:
        """Score-model evaluations per call: 2, or 1 when scale is 0 or 1."""
        return 1 if self.scale in (0.0, 1.0) else 2

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        if self.scale == 1.0:
            return self.cond_score(x, t)
        if self.scale == 0.0:
            return self.uncond_score(x, t)
        su = self.uncond_score(x, t)
        return su + self.scale * (self.cond_score(x, t) - su)


def classifier_free(cond_score: ScoreFn, uncond_score: ScoreFn, scale: float = 1.0) -> ClassifierFreeScore:
    """Classifier-free guidance: s̃ = s(x, t) + scale · (s(x, t | y) − s(x, t)).

    scale = 1 gives the conditional score, 0 the unconditional one, scale > 1 the guided score
    of p_t(x) p_t(y | x)^scale (Ho & Salimans' w is scale − 1: s̃ = (1 + w) s_c − w s_u).

    Args:
        cond_score: (x, t) -> ∇ log p_t(x | y) (bind the label, e.g. a model with a class input).
        uncond_score: (x, t) -> ∇ log p_t(x) (e.g. the same model with the null label).
        scale: >= 0.

    Returns:
        A score callable.  It evaluates both scores per call (``evaluations_per_call`` = 2)
        while ``sample`` counts one NFE per call: double ``nfe`` for the model cost.
    Reference: Ho & Salimans 2022, eq. 6.
    """
    for name, fn in (("cond_score", cond_score), ("uncond_score", uncond_score)):
        if not callable(fn):
            raise TypeError(f"{name} must be callable (x, t) -> score, got {type(fn).__name__}")
    return ClassifierFreeScore(cond_score, uncond_score, _check_scale(scale))
