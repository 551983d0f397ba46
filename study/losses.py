"""Distillation losses.

Convention (same as torchdistill's KDLoss): ``L = alpha * CE(s, y) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))``.
alpha weighs the hard-label term; alpha = 1 is plain cross-entropy. Other repos weigh the terms differently
(RepDistiller: 0.1 CE + 0.9 KD), so compare alphas across projects with care.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, targets: torch.Tensor,
            temperature: float, alpha: float, label_smoothing: float = 0.0
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (total, ce, kd) where kd is already scaled by T^2 (not by 1 - alpha). Computed in fp32."""
    s = student_logits.float()
    ce = F.cross_entropy(s, targets, label_smoothing=label_smoothing)
    if teacher_logits is None or alpha >= 1.0:
        return ce, ce, torch.zeros((), device=s.device)
    t = teacher_logits.float()
    log_p_s = F.log_softmax(s / temperature, dim=1)
    log_p_t = F.log_softmax(t / temperature, dim=1)
    kd = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2
    return alpha * ce + (1.0 - alpha) * kd, ce, kd
