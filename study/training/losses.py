"""Distillation losses, a registry users pick by name (`kd_loss` in a trial config).

Convention for every loss here (torchdistill's `KDLoss` for "kd"):
    L = alpha * CE(s, y) + (1 - alpha) * D(s, t)
alpha weighs the hard-label term; alpha = 1 is plain cross-entropy. RepDistiller / mdistiller weigh CE 0.1 and
KD 0.9, i.e. their setting is our alpha = 0.1. The distillation terms D (all architecture-agnostic, so they work
for channel-pruned students):
    kd     T^2 * KL(softmax(t/T) || softmax(s/T))                       (Hinton et al. 2015)
    kd_ls  kd on z-score standardised logits                             (logit standardisation, Sun et al. 2024)
    dkd    T^2 * [KL of target/non-target mass + beta * KL among non-target classes]  (DKD, Zhao et al. 2022)
    ce     no distillation term (the no-KD baseline; no teacher is run)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from study.core.errors import UserError
from study.core.registry import Registry


def _kl(log_p_s: torch.Tensor, log_p_t: torch.Tensor) -> torch.Tensor:
    """KL(p_t || p_s), mean over the batch."""
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)


def kd_term(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, temperature: float, **_: float) -> torch.Tensor:
    """Hinton KD: KL(teacher || student) of the logits softened by `temperature`, times temperature^2."""
    return _kl(F.log_softmax(s / temperature, 1), F.log_softmax(t / temperature, 1)) * temperature**2


def _standardise(z: torch.Tensor) -> torch.Tensor:
    return (z - z.mean(1, keepdim=True)) / (z.std(1, keepdim=True) + 1e-7)


def kd_ls_term(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, temperature: float, **_: float) -> torch.Tensor:
    """kd_term on logits standardised per image (zero mean, unit std): logit-standardised KD."""
    return kd_term(_standardise(s), _standardise(t), y, temperature)


def dkd_term(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, temperature: float, dkd_beta: float = 8.0,
             **_: float) -> torch.Tensor:
    """Decoupled KD: target-class KD (binary target vs rest) + beta * non-target-class KD."""
    gt = F.one_hot(y, s.shape[1]).bool()
    p_s = F.softmax(s / temperature, 1)
    p_t = F.softmax(t / temperature, 1)
    # binary distributions (p_target, p_rest)
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * ~gt).sum(1)], 1).clamp_min(1e-12)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * ~gt).sum(1)], 1).clamp_min(1e-12)
    tckd = _kl(b_s.log(), b_t.log())
    # distributions over the non-target classes only (target logit masked out)
    masked = -1000.0 * gt
    nckd = _kl(F.log_softmax(s / temperature + masked, 1), F.log_softmax(t / temperature + masked, 1))
    return (tckd + dkd_beta * nckd) * temperature**2


def _python_loss(obj: object, name: str) -> Callable[..., torch.Tensor]:
    if not callable(obj):
        raise UserError(f"kd_loss {name!r}: {type(obj).__name__} is not callable; point the import string at a "
                        "function term(student_logits, teacher_logits, targets, temperature, **kw) -> loss.")
    return obj


# term(student_logits, teacher_logits, targets, temperature, **kw) -> scalar; None: no distillation term
KD_LOSSES: Registry[Callable[..., torch.Tensor] | None] = Registry("kd_loss", _python_loss)
for _name, _term in (("kd", kd_term), ("kd_ls", kd_ls_term), ("dkd", dkd_term), ("ce", None)):
    KD_LOSSES.register(_name, _term)


def register_kd_loss(name: str, term: Callable[..., torch.Tensor] | None = None, *, overwrite: bool = False):
    """Register a distillation term D (used as alpha * CE + (1 - alpha) * D), or decorate one."""
    return KD_LOSSES.register(name, *(() if term is None else (term,)), overwrite=overwrite)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, targets: torch.Tensor,
            temperature: float, alpha: float, label_smoothing: float = 0.0, kind: str = "kd",
            dkd_beta: float = 8.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (total, ce, distillation term) with total = alpha * ce + (1 - alpha) * term. Computed in fp32."""
    term_fn = KD_LOSSES.resolve(kind)
    s = student_logits.float()
    ce = F.cross_entropy(s, targets, label_smoothing=label_smoothing)
    if teacher_logits is None or alpha >= 1.0 or term_fn is None:
        return ce, ce, torch.zeros((), device=s.device)
    term = term_fn(s, teacher_logits.float(), targets, temperature, dkd_beta=dkd_beta)
    return alpha * ce + (1.0 - alpha) * term, ce, term
